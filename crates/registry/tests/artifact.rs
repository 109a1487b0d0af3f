//! Cache artifacts through the real docker-registry behind the counting / fault proxy: a disk
//! pushed then fetched by digest round-trips byte for byte, a second push uploads no blob, a
//! corrupted download is refused and leaves nothing in the destination, and two concurrent
//! fetches of one disk make one blob GET.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use imc_api::Reference;
use imc_registry::{
    ArtifactImage, CACHE_ARTIFACT_TYPE, CacheArtifactSpec, Credentials, DiskFetcher, RegistryError,
};
use imc_testkit::proxy::{Fault, Proxy};
use imc_testkit::registry::{Auth, TestRegistry};

const DISK_BYTES: usize = 3 << 20;

struct Setup {
    _reg: TestRegistry,
    proxy: Proxy,
    dir: tempfile::TempDir,
    disk: PathBuf,
    repo: Reference,
}

/// A registry with basic auth (pushes need credentials) behind a proxy, and a 3 MiB "disk".
fn setup() -> Setup {
    let reg = TestRegistry::start(Auth::basic("pusher", "s3cret"));
    let proxy = Proxy::start(&reg.host()).expect("proxy");
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("imc-aaaaaaaaaaaaaaaaaaaa.g1.erofs");
    let bytes: Vec<u8> = (0..DISK_BYTES).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&disk, bytes).expect("write disk");
    let repo = reference(&format!("{}/imc-caches", proxy.host_port()));
    Setup {
        _reg: reg,
        proxy,
        dir,
        disk,
        repo,
    }
}

fn credentials(s: &Setup) -> Credentials {
    Credentials::basic(&s.proxy.host_port(), "pusher", "s3cret")
}

fn spec(s: &Setup) -> CacheArtifactSpec {
    CacheArtifactSpec {
        disk: s.disk.clone(),
        cache_id: "imc-aaaaaaaaaaaaaaaaaaaa".into(),
        generation: 1,
        name: "app-cache".into(),
        images: vec![ArtifactImage {
            image: "127.0.0.1:5000/app:v1".into(),
            digest: imc_api::Digest::of(b"manifest").to_string(),
        }],
    }
}

/// Requests of `method` whose path contains `part`.
fn count(proxy: &Proxy, method: &str, part: &str) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|r| r.method == method && r.path.contains(part))
        .count()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_pushed_disk_is_fetched_by_digest_byte_for_byte_and_a_second_push_skips_the_blob() {
    let s = setup();
    let client = client_for(&[&s.proxy.host_port()], credentials(&s));
    let pushed = client
        .push_cache_artifact(&s.repo, &spec(&s))
        .await
        .expect("push");
    assert!(pushed.disk_uploaded);
    assert_eq!(pushed.reference.digest(), Some(&pushed.digest));
    assert_eq!(
        count(&s.proxy, "PUT", "/blobs/uploads/"),
        2,
        "config + disk"
    );

    // The tag names the same manifest; it is a cache artifact with the images annotated.
    let by_tag = reference(&format!("{}:imc-aaaaaaaaaaaaaaaaaaaa", s.repo.name()));
    let artifact = client
        .resolve_cache_artifact(&by_tag)
        .await
        .expect("resolve by tag");
    assert_eq!(artifact.digest, pushed.digest);
    assert_eq!(artifact.images, spec(&s).images);
    assert_eq!(artifact.generation, 1);
    let artifact = client
        .resolve_cache_artifact(&pushed.reference)
        .await
        .expect("resolve by digest");
    assert_eq!(artifact.disk.size, DISK_BYTES as u64);

    // The raw manifest says what it is.
    let url = format!(
        "http://{}/v2/imc-caches/manifests/{}",
        s.proxy.host_port(),
        pushed.digest
    );
    let raw: serde_json::Value = reqwest::Client::new()
        .get(&url)
        .basic_auth("pusher", Some("s3cret"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("get manifest")
        .json()
        .await
        .expect("manifest json");
    assert_eq!(raw["artifactType"], CACHE_ARTIFACT_TYPE);
    assert_eq!(
        raw["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    assert!(
        raw["annotations"]["dev.imc.cache.images"]
            .as_str()
            .is_some_and(|t| t.contains("127.0.0.1:5000/app:v1")),
        "{raw}"
    );

    let dest = tempfile::tempdir().expect("dest");
    let fetcher = DiskFetcher::new(client.clone());
    let (path, downloaded) = fetcher
        .fetch(&pushed.reference, &artifact, dest.path(), "d.erofs")
        .await
        .expect("fetch");
    assert!(downloaded);
    assert_eq!(
        std::fs::read(&path).expect("fetched"),
        std::fs::read(&s.disk).expect("original")
    );
    assert_eq!(files_in(dest.path()), ["d.erofs"], "no temporary left");

    // A second push of the same disk uploads nothing (HEAD finds both blobs).
    let again = client
        .push_cache_artifact(&s.repo, &spec(&s))
        .await
        .expect("push again");
    assert!(!again.disk_uploaded);
    assert_eq!(again.digest, pushed.digest);
    assert_eq!(
        count(&s.proxy, "PUT", "/blobs/uploads/"),
        2,
        "no new upload"
    );
    assert_eq!(
        count(&s.proxy, "POST", "/blobs/uploads/"),
        2,
        "no new session"
    );
    drop(s.dir);
}

#[tokio::test]
async fn a_corrupted_disk_is_refused_and_nothing_is_left() {
    let s = setup();
    let client = client_for(&[&s.proxy.host_port()], credentials(&s));
    let pushed = client
        .push_cache_artifact(&s.repo, &spec(&s))
        .await
        .expect("push");
    let artifact = client
        .resolve_cache_artifact(&pushed.reference)
        .await
        .expect("resolve");
    s.proxy.add_fault(
        &artifact.disk.digest.to_string(),
        Fault::FlipByte {
            offset: 4096,
            times: 100,
        },
    );
    let dest = tempfile::tempdir().expect("dest");
    let err = DiskFetcher::new(client)
        .fetch(&pushed.reference, &artifact, dest.path(), "d.erofs")
        .await
        .expect_err("a corrupted disk must be refused");
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert!(
        files_in(dest.path()).is_empty(),
        "{:?}",
        files_in(dest.path())
    );
}

#[tokio::test]
async fn concurrent_fetches_of_one_disk_share_one_download() {
    let s = setup();
    let client = client_for(&[&s.proxy.host_port()], credentials(&s));
    let pushed = client
        .push_cache_artifact(&s.repo, &spec(&s))
        .await
        .expect("push");
    let artifact = client
        .resolve_cache_artifact(&pushed.reference)
        .await
        .expect("resolve");
    // A slow disk blob keeps the first download in flight while the second asks.
    s.proxy.add_fault(
        &artifact.disk.digest.to_string(),
        Fault::Slow {
            bytes_per_sec: 8 << 20,
        },
    );
    let dest = tempfile::tempdir().expect("dest");
    let fetcher = DiskFetcher::new(client);
    let (a, b) = tokio::join!(
        fetcher.fetch(&pushed.reference, &artifact, dest.path(), "d.erofs"),
        fetcher.fetch(&pushed.reference, &artifact, dest.path(), "d.erofs"),
    );
    let (a, b) = (a.expect("first"), b.expect("second"));
    assert_eq!(a.0, b.0);
    assert!(a.1 ^ b.1, "exactly one of them downloaded: {a:?} {b:?}");
    let gets = count(&s.proxy, "GET", &format!("/blobs/{}", artifact.disk.digest));
    assert_eq!(gets, 1, "one blob GET for two fetches");
    assert_eq!(files_in(dest.path()), ["d.erofs"]);
}
