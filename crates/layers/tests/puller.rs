//! The Puller as a library, against a real Debian docker-registry (imc_testkit): progress
//! callbacks, `skip_layer`, concurrent pulls in one process, and a registry failure mid-pull
//! leaving nothing behind.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::Mutex;

use imc_api::{Digest, Reference};
use imc_layers::{LayerStore, PullProgress, Puller};
use imc_registry::{Client, Platform, RegistryOptions};
use imc_testkit::image::{BuiltImage, Compression, Format, ImageBuilder, LayerBuilder};
use imc_testkit::registry::{Auth, TestRegistry};

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn image(seeds: &[u64]) -> BuiltImage {
    let mut b = ImageBuilder::new(Format::Oci);
    for &seed in seeds {
        b = b.layer(
            LayerBuilder::new()
                .compression(Compression::Zstd)
                .file(&format!("f{seed}"), noise(seed, 256 * 1024))
                .build(),
        );
    }
    b.build()
}

fn puller(registry: &TestRegistry, data: &Path) -> Puller {
    let client = Client::new(RegistryOptions {
        plain_http: vec![registry.host()],
        ..Default::default()
    })
    .unwrap();
    Puller::new(LayerStore::open(data).unwrap(), client, 2)
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    max_bytes: Mutex<std::collections::HashMap<Digest, u64>>,
}

impl PullProgress for Recorder {
    fn layer_started(&self, digest: &Digest, size: u64) {
        self.events
            .lock()
            .unwrap()
            .push(format!("start {digest} {size}"));
    }
    fn layer_progress(&self, digest: &Digest, bytes: u64) {
        let mut m = self.max_bytes.lock().unwrap();
        let e = m.entry(digest.clone()).or_default();
        *e = (*e).max(bytes);
    }
    fn layer_done(&self, digest: &Digest, reused: bool) {
        self.events
            .lock()
            .unwrap()
            .push(format!("done {digest} {reused}"));
    }
}

#[tokio::test]
async fn reports_progress_and_honours_skip_layer() {
    let registry = TestRegistry::start(Auth::None);
    let img = image(&[1, 2]);
    imc_testkit::image::push(&registry.host(), "lib/app", "1", &img, None)
        .await
        .unwrap();
    let reference: Reference = format!("{}/lib/app:1", registry.host()).parse().unwrap();
    let data = tempfile::tempdir().unwrap();
    let puller = puller(&registry, data.path());
    let skipped = img.layers[0].diff_id.clone();
    let recorder = Recorder::default();
    let report = puller
        .pull_with(&reference, &Platform::host(), &|d| *d == skipped, &recorder)
        .await
        .unwrap();

    assert!(report.layers[0].reused && !report.layers[1].reused);
    assert_eq!(report.downloaded_bytes, img.layers[1].blob.len() as u64);
    assert_eq!(report.reused_bytes(), img.layers[0].blob.len() as u64);
    // The skipped layer is neither downloaded nor unpacked here.
    assert!(!puller.store().has_layer(&img.layers[0].diff_id));
    assert!(!puller.store().has_blob(&img.layers[0].digest));
    assert!(puller.store().has_layer(&img.layers[1].diff_id));

    let events = recorder.events.lock().unwrap().clone();
    for (layer, reused) in img.layers.iter().zip([true, false]) {
        assert!(
            events.contains(&format!("start {} {}", layer.digest, layer.blob.len())),
            "{events:?}"
        );
        assert!(
            events.contains(&format!("done {} {reused}", layer.digest)),
            "{events:?}"
        );
    }
    let bytes = recorder.max_bytes.lock().unwrap().clone();
    assert_eq!(
        bytes.get(&img.layers[1].digest),
        Some(&(img.layers[1].blob.len() as u64))
    );
    assert_eq!(bytes.get(&img.layers[0].digest), None);

    let record = puller.store().image(&reference).unwrap().unwrap();
    assert_eq!(record.manifest_digest, img.manifest_digest);
    assert_eq!(record.layers[1].unpacked_size, 256 * 1024);
    assert_eq!(
        record.config["rootfs"]["diff_ids"][1],
        img.layers[1].diff_id.to_string()
    );
}

#[tokio::test]
async fn concurrent_pulls_in_one_process_share_the_work() {
    let registry = TestRegistry::start(Auth::None);
    let a = image(&[11, 12, 13]);
    let b = image(&[11, 12, 14]);
    imc_testkit::image::push(&registry.host(), "lib/a", "1", &a, None)
        .await
        .unwrap();
    imc_testkit::image::push(&registry.host(), "lib/b", "1", &b, None)
        .await
        .unwrap();
    let ra: Reference = format!("{}/lib/a:1", registry.host()).parse().unwrap();
    let rb: Reference = format!("{}/lib/b:1", registry.host()).parse().unwrap();
    let data = tempfile::tempdir().unwrap();
    let puller = puller(&registry, data.path());
    let platform = Platform::host();
    let progress = imc_layers::NoProgress;
    let (x, y, z) = tokio::join!(
        puller.pull(&ra, &platform, &progress),
        puller.pull(&rb, &platform, &progress),
        puller.pull(&ra, &platform, &progress),
    );
    let (x, y, z) = (x.unwrap(), y.unwrap(), z.unwrap());
    let downloaded = x.downloaded_bytes + y.downloaded_bytes + z.downloaded_bytes;
    let distinct: u64 = a
        .layers
        .iter()
        .chain(&b.layers[2..])
        .map(|l| l.blob.len() as u64)
        .sum();
    assert_eq!(
        downloaded, distinct,
        "each distinct layer is downloaded exactly once"
    );
    assert_eq!(names(&data.path().join("layers/sha256")).len(), 4);
    assert!(names(&data.path().join("tmp")).is_empty());
}

#[tokio::test]
async fn registry_failure_mid_pull_leaves_nothing_behind() {
    let registry = TestRegistry::start(Auth::None);
    let img = image(&[21, 22, 23]);
    imc_testkit::image::push(&registry.host(), "lib/broken", "1", &img, None)
        .await
        .unwrap();
    // Remove one layer's data from the registry's storage: it answers 404 for that blob.
    let missing = &img.layers[1].digest;
    let blob_dir = registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&missing.hex()[..2])
        .join(missing.hex());
    fs::remove_dir_all(&blob_dir).unwrap();
    let reference: Reference = format!("{}/lib/broken:1", registry.host()).parse().unwrap();
    let data = tempfile::tempdir().unwrap();
    let puller = puller(&registry, data.path());
    let err = puller
        .pull(&reference, &Platform::host(), &imc_layers::NoProgress)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&reference.to_string()), "{err}");
    assert!(
        err.contains("not found") && err.contains(&missing.to_string()),
        "{err}"
    );
    assert!(names(&data.path().join("layers/sha256")).is_empty());
    assert!(names(&data.path().join("images")).is_empty());
    assert!(names(&data.path().join("tmp")).is_empty());
    assert!(names(&data.path().join("blobs/sha256")).is_empty());
}

#[tokio::test]
async fn a_failing_layer_stops_the_other_downloads() {
    let registry = TestRegistry::start(Auth::None);
    let evil = LayerBuilder::new()
        .compression(Compression::Gzip)
        .hardlink("pw", "/etc/passwd")
        .build();
    let big = LayerBuilder::new()
        .compression(Compression::None)
        .file("big", noise(5, 8 << 20))
        .build();
    let img = ImageBuilder::new(Format::Oci)
        .layer(evil.clone())
        .layer(big.clone())
        .build();
    imc_testkit::image::push(&registry.host(), "lib/evil", "1", &img, None)
        .await
        .unwrap();
    // The big blob crawls (8 MiB at 256 KiB/s would take 32 s): only cancellation ends it early.
    let proxy = imc_testkit::proxy::Proxy::start(&registry.host()).unwrap();
    proxy.add_fault(
        big.digest.hex(),
        imc_testkit::proxy::Fault::Slow {
            bytes_per_sec: 256 * 1024,
        },
    );
    let client = Client::new(RegistryOptions {
        plain_http: vec![proxy.host_port()],
        ..Default::default()
    })
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let puller = Puller::new(LayerStore::open(data.path()).unwrap(), client, 4);
    let reference: Reference = format!("{}/lib/evil:1", proxy.host_port()).parse().unwrap();
    let err = puller
        .pull(&reference, &Platform::host(), &imc_layers::NoProgress)
        .await
        .unwrap_err()
        .to_string();
    // The real cause is reported, not the cancellation of the other layer.
    assert!(
        err.contains(&evil.digest.to_string()) && err.contains("\"pw\""),
        "{err}"
    );
    assert!(
        proxy.stats().bytes_to_client < big.blob.len() as u64,
        "the big layer was downloaded in full"
    );
    assert!(names(&data.path().join("layers/sha256")).is_empty());
    assert!(names(&data.path().join("blobs/sha256")).is_empty());
    assert!(names(&data.path().join("tmp")).is_empty());
}
