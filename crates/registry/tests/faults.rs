//! Faults injected by a proxy in front of the real docker-registry: a connection reset mid-blob is
//! resumed with Range, 5xx and 429 are retried, a flipped byte is discarded and re-fetched (and
//! fails clearly when it persists), and a slow link still delivers the exact bytes.

mod common;

use std::sync::Mutex;

use common::*;
use imc_registry::{
    Client, Credentials, RegistryError, RegistryOptions, ResolvedImage, RetryPolicy,
};
use imc_testkit::image::{self, BuiltImage};
use imc_testkit::proxy::{Fault, Proxy};
use imc_testkit::registry::{Auth, TestRegistry};

const LAYER_BYTES: usize = 1 << 20;

struct Setup {
    _reg: TestRegistry,
    proxy: Proxy,
    client: Client,
    built: BuiltImage,
    resolved: ResolvedImage,
}

/// A registry holding a 1 MiB uncompressed layer, a fault proxy in front of it, and the image
/// resolved through the proxy (before any fault is added).
async fn setup(retry: RetryPolicy) -> Setup {
    let reg = TestRegistry::start(Auth::None);
    let built = big_layer_image(LAYER_BYTES);
    image::push(&reg.host(), "faulty", "v1", &built, None)
        .await
        .expect("push");
    let proxy = Proxy::start(&reg.host()).expect("proxy");
    let client = Client::new(RegistryOptions {
        plain_http: vec![proxy.host_port()],
        retry,
        ..Default::default()
    })
    .expect("client");
    let r = reference(&format!("{}/faulty:v1", proxy.host_port()));
    let resolved = client
        .resolve(&r, &amd64())
        .await
        .expect("resolve through proxy");
    Setup {
        _reg: reg,
        proxy,
        client,
        built,
        resolved,
    }
}

/// Downloads the layer, returning the result, the file's bytes and the progress calls seen.
async fn fetch(s: &Setup) -> (Result<(), RegistryError>, Vec<u8>, Vec<u64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("blob");
    let mut file = tokio::fs::File::create(&path).await.expect("create");
    let seen = Mutex::new(Vec::new());
    let result = s
        .client
        .fetch_blob_to(
            &s.resolved.reference,
            &s.resolved.layers[0].blob,
            &mut file,
            &|n| {
                if let Ok(mut v) = seen.lock() {
                    v.push(n);
                }
            },
        )
        .await;
    drop(file);
    let bytes = std::fs::read(&path).expect("read blob file");
    (result, bytes, seen.into_inner().unwrap_or_default())
}

fn layer_pattern(s: &Setup) -> String {
    format!("/blobs/{}", s.built.layers[0].digest)
}

fn layer_requests(s: &Setup) -> Vec<Option<String>> {
    let pattern = layer_pattern(s);
    s.proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains(&pattern))
        .map(|r| r.range)
        .collect()
}

#[tokio::test]
async fn reset_mid_blob_resumes_with_range() {
    let s = setup(fast_retry()).await;
    s.proxy.add_fault(
        &layer_pattern(&s),
        Fault::ResetAfter {
            bytes: 300_000,
            times: 1,
        },
    );
    let (result, bytes, _) = fetch(&s).await;
    result.expect("download survives a reset");
    assert!(
        bytes == s.built.layers[0].blob,
        "downloaded bytes differ from the pushed layer"
    );
    let ranges = layer_requests(&s);
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], None);
    let resumed_at: u64 = ranges[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("second request was not a Range resume: {ranges:?}"));
    assert!(
        resumed_at > 0 && resumed_at <= 300_000,
        "resumed at {resumed_at}"
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let s = setup(fast_retry()).await;
    s.proxy.add_fault(
        &layer_pattern(&s),
        Fault::Status {
            code: 500,
            times: 2,
        },
    );
    let (result, bytes, _) = fetch(&s).await;
    result.expect("download survives two 500s");
    assert!(bytes == s.built.layers[0].blob);
    assert_eq!(s.proxy.stats().faults_injected, 2);
    assert_eq!(layer_requests(&s).len(), 3);
}

#[tokio::test]
async fn too_many_requests_is_retried() {
    let s = setup(fast_retry()).await;
    s.proxy.add_fault(
        &layer_pattern(&s),
        Fault::Status {
            code: 429,
            times: 1,
        },
    );
    let (result, bytes, _) = fetch(&s).await;
    result.expect("download survives a 429");
    assert!(bytes == s.built.layers[0].blob);
}

#[tokio::test]
async fn persistent_server_errors_give_up_after_the_policy() {
    let s = setup(RetryPolicy {
        attempts: 3,
        ..fast_retry()
    })
    .await;
    s.proxy.add_fault(
        &layer_pattern(&s),
        Fault::Status {
            code: 503,
            times: 100,
        },
    );
    let (result, _, _) = fetch(&s).await;
    let err = result.expect_err("503 forever");
    assert_eq!(err.status(), Some(503));
    assert!(err.is_transient());
    assert_eq!(layer_requests(&s).len(), 3);
    assert!(
        err.to_string().contains(&s.resolved.reference.to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn manifest_500_then_success_resolves() {
    let s = setup(fast_retry()).await;
    s.proxy.add_fault(
        "/manifests/v1",
        Fault::Status {
            code: 500,
            times: 2,
        },
    );
    let again = s
        .client
        .resolve(&s.resolved.reference, &amd64())
        .await
        .expect("resolve");
    assert_eq!(again.manifest_digest, s.built.manifest_digest);
    assert_eq!(s.proxy.stats().faults_injected, 2);
}

#[tokio::test]
async fn flipped_byte_is_discarded_and_fetched_again() {
    let s = setup(fast_retry()).await;
    s.proxy.add_fault(
        &layer_pattern(&s),
        Fault::FlipByte {
            offset: 123_456,
            times: 1,
        },
    );
    let (result, bytes, progress) = fetch(&s).await;
    result.expect("second download is clean");
    assert!(bytes == s.built.layers[0].blob);
    assert_eq!(s.proxy.stats().faults_injected, 1);
    // The corrupt copy was thrown away: the second request starts from 0, not a Range.
    assert_eq!(layer_requests(&s), vec![None, None]);
    assert!(
        progress.contains(&0),
        "progress restarts at 0 after a discard: {progress:?}"
    );
    assert_eq!(
        progress.last().copied(),
        Some(s.built.layers[0].blob.len() as u64)
    );
}

#[tokio::test]
async fn persistent_corruption_fails_with_expected_and_actual_digest() {
    let s = setup(RetryPolicy {
        attempts: 3,
        ..fast_retry()
    })
    .await;
    s.proxy.add_fault(
        &layer_pattern(&s),
        Fault::FlipByte {
            offset: 10,
            times: 100,
        },
    );
    let (result, bytes, _) = fetch(&s).await;
    let err = result.expect_err("always corrupt");
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());
    let text = err.to_string();
    let expected = s.built.layers[0].digest.to_string();
    assert!(
        text.contains(&format!("expected digest {expected}")),
        "{text}"
    );
    assert!(text.contains(", got sha256:"), "{text}");
    assert!(text.contains(&s.resolved.reference.to_string()), "{text}");
    assert!(
        bytes.is_empty(),
        "the corrupt blob must be discarded, {} bytes left",
        bytes.len()
    );
    assert_eq!(layer_requests(&s).len(), 3);
}

#[tokio::test]
async fn slow_link_delivers_exact_bytes_with_monotonic_progress() {
    let s = setup(fast_retry()).await;
    s.proxy.add_fault(
        &layer_pattern(&s),
        Fault::Slow {
            bytes_per_sec: 2 << 20,
        },
    );
    let (result, bytes, progress) = fetch(&s).await;
    result.expect("slow download");
    assert!(bytes == s.built.layers[0].blob);
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress not monotonic"
    );
    assert_eq!(
        progress.last().copied(),
        Some(s.built.layers[0].blob.len() as u64)
    );
    assert!(progress.len() > 1, "progress reported once only");
}

#[tokio::test]
async fn unknown_blob_is_not_retried() {
    let s = setup(fast_retry()).await;
    let mut blob = s.resolved.layers[0].blob.clone();
    blob.digest = imc_api::Digest::of(b"absent");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = tokio::fs::File::create(dir.path().join("b"))
        .await
        .expect("create");
    let err = s
        .client
        .fetch_blob_to(&s.resolved.reference, &blob, &mut f, &|_| {})
        .await
        .expect_err("404");
    assert_eq!(err.status(), Some(404));
    let n = s
        .proxy
        .requests()
        .iter()
        .filter(|r| r.path.contains(&blob.digest.to_string()))
        .count();
    assert_eq!(n, 1, "a 404 must not be retried");
}

#[tokio::test]
async fn client_debug_never_shows_the_password() {
    let creds = Credentials::basic("127.0.0.1:1", "dave", "debug-secret-pw");
    let client = client_for(&["127.0.0.1:1"], creds);
    let shown = format!("{client:?}");
    assert!(shown.contains("dave"), "{shown}");
    assert!(!shown.contains("debug-secret-pw"), "{shown}");
}
