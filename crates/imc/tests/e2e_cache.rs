//! The ImageCache lifecycle end to end (issue 5): a real `imc server` process, a real
//! docker-registry (behind the fault-injecting proxy where a test needs faults), real kubectl.
//!
//! The seed manifest is used unchanged: its images live on `registry.cn-shanghai.aliyuncs.com`,
//! which the server fetches from the test registry through `--registry-mirror`.

mod run_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imc_testkit::apiserver::TestServer;
use imc_testkit::image::{BuiltImage, BuiltLayer, Format, ImageBuilder, ImageConfig, LayerBuilder};
use imc_testkit::kubectl::PATIENCE;
use imc_testkit::proxy::{Fault, Proxy};
use imc_testkit::registry::{Auth, TestRegistry};
use run_support::{busybox_layer, imc};
use serde_json::Value;

const SEED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/imagecache-sample-test.yaml"
);
const SEED_NAME: &str = "imagecache-sample-test";
const SEED_HOST: &str = "registry.cn-shanghai.aliyuncs.com";

/// Incompressible bytes (xorshift), so layer sizes on the wire are what the test says.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn image(layers: &[&BuiltLayer]) -> BuiltImage {
    let mut b = ImageBuilder::new(Format::Oci).config(ImageConfig {
        cmd: Some(vec!["sh".to_owned()]),
        ..Default::default()
    });
    for l in layers {
        b = b.layer((*l).clone());
    }
    b.build()
}

/// The seed's images (and a few more) under `eci_open/...` in a real registry.
struct SeedRegistry {
    registry: TestRegistry,
    base: BuiltLayer,
    nginx_top: BuiltLayer,
    extra_top: BuiltLayer,
    slow_top: BuiltLayer,
}

fn seed_registry() -> SeedRegistry {
    let registry = TestRegistry::start(Auth::None);
    let base = busybox_layer();
    let nginx_top = LayerBuilder::new()
        .dir("etc")
        .dir("etc/nginx")
        .file("etc/nginx/nginx.conf", "events {}\n")
        .build();
    let extra_top = LayerBuilder::new()
        .dir("extra")
        .file("extra/data", noise(64 * 1024, 7))
        .build();
    let slow_top = LayerBuilder::new()
        .dir("slow")
        .file("slow/data", noise(3 << 20, 11))
        .build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let host = registry.host();
    for (repo, tag, img) in [
        ("eci_open/nginx", "1.14.2", image(&[&base, &nginx_top])),
        ("eci_open/busybox", "1.30", image(&[&base])),
        ("eci_open/extra", "1", image(&[&base, &extra_top])),
        ("eci_open/slow", "1", image(&[&base, &slow_top])),
    ] {
        rt.block_on(imc_testkit::image::push(&host, repo, tag, &img, None))
            .unwrap_or_else(|e| panic!("push {repo}: {e:#}"));
    }
    SeedRegistry {
        registry,
        base,
        nginx_top,
        extra_top,
        slow_top,
    }
}

fn mirror_args(upstream: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--registry-mirror".to_owned(),
        format!("{SEED_HOST}=http://{upstream}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn start_server(upstream: &str, extra: &[&str]) -> TestServer {
    TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &mirror_args(upstream, extra))
        .expect("imc server starts")
}

fn manifest(name: &str, images: &[&str], extra_spec: &str, annotations: &str) -> String {
    let images: Vec<String> = images
        .iter()
        .map(|i| format!("  - {SEED_HOST}/{i}"))
        .collect();
    format!(
        "apiVersion: eci.alibabacloud.com/v1\nkind: ImageCache\nmetadata:\n  name: {name}\n  annotations:\n    imc.test/kind: e2e\n{annotations}spec:\n  images:\n{}\n{extra_spec}",
        images.join("\n")
    )
}

fn phase(obj: &Value) -> &str {
    obj["status"]["phase"].as_str().unwrap_or("")
}

/// Waits for `want`; a Ready cache's disk must be an EROFS image (no plain-directory fallback).
fn wait_phase(server: &TestServer, name: &str, want: &str) -> Value {
    let cache = server.wait_for("imagecache", name, want, |o| phase(o) == want);
    if want == "Ready" {
        server.assert_cache_is_erofs(&cache);
    }
    cache
}

fn cache_id(obj: &Value) -> String {
    obj["status"]["imageCacheId"].as_str().unwrap().to_owned()
}

fn disk(server: &TestServer, id: &str) -> PathBuf {
    server.data_dir().join(format!("caches/{id}.erofs"))
}

fn metrics(server: &TestServer) -> String {
    server.kubectl_ok(&["get", "--raw", "/metrics"])
}

fn inspect(disk: &Path) -> Value {
    let out = imc()
        .args(["cache", "inspect", "-o", "json"])
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "imc cache inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// GET requests for a blob the proxy forwarded.
fn blob_gets(proxy: &Proxy, layer: &BuiltLayer) -> usize {
    let path = format!("/blobs/{}", layer.digest);
    proxy
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains(&path))
        .count()
}

#[test]
fn seed_manifest_becomes_ready_reuses_layers_rebuilds_and_deletes_its_disk() {
    let reg = seed_registry();
    let server = start_server(&reg.registry.host(), &[]);

    // The seed manifest, byte for byte.
    let seed = std::fs::read_to_string(SEED).unwrap();
    assert!(seed.contains("registry.cn-shanghai.aliyuncs.com/eci_open/nginx:1.14.2"));
    server.kubectl_ok(&["create", "-f", SEED]);
    let ready = server.wait_for("imagecache", SEED_NAME, "Ready", |o| {
        phase(o) == "Ready" || phase(o) == "Failed"
    });
    assert_eq!(phase(&ready), "Ready", "{ready:#?}");
    server.assert_cache_is_erofs(&ready);
    // `kubectl wait` works on the Ready condition; `imc` is the short name.
    server.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        &format!("imagecache/{SEED_NAME}"),
        "--timeout=60s",
    ]);
    let table = server.kubectl_ok(&["get", "imc", SEED_NAME]);
    let id = cache_id(&ready);
    let row = table.lines().nth(1).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[0], SEED_NAME, "{table}");
    assert_eq!(&cols[2..], [id.as_str(), "Ready", "100%"], "{table}");
    assert!(table.starts_with("NAME"), "{table}");

    // Every status field of DESIGN §3.
    let status = &ready["status"];
    assert!(id.starts_with("imc-") && id.len() == 24, "{id}");
    assert_eq!(status["progress"], "100%");
    assert_eq!(status["observedGeneration"], 1);
    let created: jiff::Timestamp = ready["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let expires: jiff::Timestamp = status["expireDateTime"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        expires.duration_since(created),
        jiff::SignedDuration::from_hours(7 * 24)
    );
    for field in ["startTime", "lastUpdatedTime"] {
        assert!(status[field].is_string(), "{field} missing: {status:#}");
    }
    let ready_condition = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready_condition["status"], "True");
    let images = status["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(
        images[0]["image"],
        format!("{SEED_HOST}/eci_open/nginx:1.14.2")
    );
    assert_eq!(
        images[0]["layers"],
        serde_json::json!([
            reg.base.digest.to_string(),
            reg.nginx_top.digest.to_string()
        ])
    );
    assert!(images[1]["digest"].as_str().unwrap().starts_with("sha256:"));
    // busybox's only layer is nginx's base: reused within the cache.
    assert_eq!(status["reusedLayers"], 1);
    assert_eq!(
        status["downloadedBytes"],
        (reg.base.blob.len() + reg.nginx_top.blob.len()) as u64
    );
    assert!(status.get("message").is_none(), "{status:#}");

    // The disk holds both images under their original names.
    let disk_path = disk(&server, &id);
    assert_eq!(
        status["size"].as_u64().unwrap(),
        std::fs::metadata(&disk_path).unwrap().len()
    );
    let index = inspect(&disk_path);
    let refs: Vec<&str> = index["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap())
        .collect();
    assert_eq!(
        refs,
        [
            format!("{SEED_HOST}/eci_open/nginx:1.14.2"),
            format!("{SEED_HOST}/eci_open/busybox:1.30")
        ]
    );
    let described = server.kubectl_ok(&["describe", "imagecache", SEED_NAME]);
    for reason in ["Created", "BuildStarted", "Ready"] {
        assert!(described.contains(reason), "{reason} missing:\n{described}");
    }

    // A second cache with the reuse annotation: the shared base is not downloaded again.
    server.create_ok(manifest(
        "reuse",
        &["eci_open/busybox:1.30", "eci_open/extra:1"],
        "",
        "    k8s.aliyun.com/imc-enable-reuse: \"true\"\n",
    ));
    let reuse = wait_phase(&server, "reuse", "Ready");
    assert_eq!(reuse["status"]["reusedLayers"], 2, "{reuse:#}");
    assert_eq!(
        reuse["status"]["downloadedBytes"],
        reg.extra_top.blob.len() as u64,
        "only the layer no cache held is downloaded"
    );
    assert_ne!(cache_id(&reuse), id);

    // A spec change on a Ready cache rebuilds into a new disk; the old one goes once unused.
    server.kubectl_ok(&[
        "patch",
        "imagecache",
        "reuse",
        "--type",
        "merge",
        "-p",
        &format!(r#"{{"spec":{{"images":["{SEED_HOST}/eci_open/extra:1"]}}}}"#),
    ]);
    let rebuilt = server.wait_for("imagecache", "reuse", "rebuilt", |o| {
        phase(o) == "Ready" && o["status"]["observedGeneration"] == 2
    });
    assert_eq!(rebuilt["status"]["images"].as_array().unwrap().len(), 1);
    server.assert_cache_is_erofs(&rebuilt);
    let reuse_id = cache_id(&rebuilt);
    // Pods open <id>.erofs, which now names generation 2; generation 1 is gone (unused).
    assert_eq!(
        std::fs::read_link(disk(&server, &reuse_id)).unwrap(),
        PathBuf::from(format!("{reuse_id}.g2.erofs"))
    );
    assert_eq!(
        inspect(&disk(&server, &reuse_id))["images"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let old = server
        .data_dir()
        .join(format!("caches/{reuse_id}.g1.erofs"));
    assert!(!old.exists(), "old disk removed");

    let m = metrics(&server);
    assert!(
        m.contains("imc_cache_builds_total{outcome=\"Ready\"} 3"),
        "{m}"
    );

    // Deleting a cache removes its disk.
    server.kubectl_ok(&["delete", "imagecache", SEED_NAME]);
    server.wait_gone("imagecache", SEED_NAME);
    assert!(!disk_path.exists(), "{} still exists", disk_path.display());
    let leftovers: Vec<_> = std::fs::read_dir(server.data_dir().join("caches"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&id))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn server_killed_mid_build_resumes_without_fetching_finished_layers_again() {
    let reg = seed_registry();
    let proxy = Proxy::start(&reg.registry.host()).unwrap();
    // The big layer trickles in (about 24 s); the base layer arrives at once.
    proxy.add_fault(
        reg.slow_top.digest.hex(),
        Fault::Slow {
            bytes_per_sec: 128 * 1024,
        },
    );
    let mut server = start_server(&proxy.host_port(), &[]);
    server.create_ok(manifest("slow", &["eci_open/slow:1"], "", ""));
    let base_tree = server
        .data_dir()
        .join(format!("layers/sha256/{}", reg.base.diff_id.hex()));
    let creating = server.wait_for(
        "imagecache",
        "slow",
        "Creating with its base layer stored",
        |o| phase(o) == "Creating" && base_tree.is_dir(),
    );
    assert_eq!(creating["status"]["conditions"][0]["status"], "False");
    // Progress rises with the slow layer's bytes and never goes back.
    let mut seen = vec![];
    let start = Instant::now();
    loop {
        let obj = server.get_json("imagecache", "slow").unwrap();
        assert_eq!(phase(&obj), "Creating", "{obj:#}");
        let text = obj["status"]["progress"].as_str().unwrap().to_owned();
        let pct: u32 = text.trim_end_matches('%').parse().unwrap();
        seen.push(pct);
        if pct >= 40 {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "progress stuck: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(seen.iter().all(|p| *p < 100), "{seen:?}");

    // A spec change while Creating is accepted; one that needs no build (retentionDays) moves
    // the expiry and leaves the build under way alone.
    server.kubectl_ok(&[
        "patch",
        "imagecache",
        "slow",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"retentionDays":3}}"#,
    ]);
    let created: jiff::Timestamp = creating["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let want = created
        .checked_add(jiff::SignedDuration::from_hours(3 * 24))
        .unwrap()
        .to_string();
    let moved = server.wait_for("imagecache", "slow", "re-dated", |o| {
        o["status"]["expireDateTime"] == want.as_str()
    });
    assert_eq!(phase(&moved), "Creating", "{moved:#}");
    let pct: u32 = moved["status"]["progress"]
        .as_str()
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(
        pct >= seen[seen.len() - 1],
        "the build went on: {pct} after {seen:?}"
    );
    let described = server.kubectl_ok(&["describe", "imagecache", "slow"]);
    assert!(!described.contains("the spec changed"), "{described}");

    server.kill().unwrap();
    let id = cache_id(&creating);
    assert!(
        !disk(&server, &id).exists(),
        "no disk before the build ends"
    );
    proxy.clear_faults();
    server.restart().unwrap();
    let ready = server.wait_for("imagecache", "slow", "Ready", |o| {
        phase(o) == "Ready" || phase(o) == "Failed"
    });
    assert_eq!(phase(&ready), "Ready", "{ready:#}");
    assert_eq!(cache_id(&ready), id, "the id survives the restart");
    server.assert_cache_is_erofs(&ready);
    assert!(disk(&server, &id).exists());
    assert_eq!(
        blob_gets(&proxy, &reg.base),
        1,
        "the finished base layer was fetched once: {:#?}",
        proxy.requests()
    );
    assert!(
        blob_gets(&proxy, &reg.slow_top) >= 2,
        "the slow layer was cut off"
    );
    assert_eq!(ready["status"]["reusedLayers"], 1);
    let described = server.kubectl_ok(&["describe", "imagecache", "slow"]);
    assert!(described.contains("BuildResumed"), "{described}");
}

#[test]
fn registry_failing_then_recovering_ends_ready() {
    let reg = seed_registry();
    let proxy = Proxy::start(&reg.registry.host()).unwrap();
    // More 500s than the registry client retries on its own: the controller retries later.
    proxy.add_fault(
        reg.extra_top.digest.hex(),
        Fault::Status {
            code: 500,
            times: 7,
        },
    );
    let server = start_server(&proxy.host_port(), &[]);
    server.create_ok(manifest("flaky", &["eci_open/extra:1"], "", ""));
    let retrying = server.wait_for("imagecache", "flaky", "retrying", |o| {
        o["status"]["reason"] == "Retrying" || phase(o) == "Ready"
    });
    assert_eq!(phase(&retrying), "Creating", "{retrying:#}");
    let message = retrying["status"]["message"].as_str().unwrap();
    assert!(message.starts_with("retrying in "), "{message}");
    assert!(message.contains("500"), "{message}");
    let ready = wait_phase(&server, "flaky", "Ready");
    assert_eq!(ready["status"]["progress"], "100%");
    assert!(ready["status"].get("message").is_none(), "{ready:#}");
    assert_eq!(proxy.stats().faults_injected, 7);
    let described = server.kubectl_ok(&["describe", "imagecache", "flaky"]);
    assert!(described.contains("RegistryUnavailable"), "{described}");
}

#[test]
fn missing_image_and_oversized_cache_fail_with_the_reason() {
    let reg = seed_registry();
    // 1 "GiB" = 10 kB: the 20 GiB default size is 200 kB, less than the busybox base unpacked.
    let server = start_server(&reg.registry.host(), &["--gib-bytes", "10000"]);
    server.create_ok(manifest("missing", &["eci_open/nope:1"], "", ""));
    server.create_ok(manifest("big", &["eci_open/busybox:1.30"], "", ""));

    let failed = wait_phase(&server, "missing", "Failed");
    let message = failed["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("eci_open/nope:1") && message.contains("404"),
        "the registry's answer: {message}"
    );
    assert_eq!(failed["status"]["reason"], "PullFailed");
    assert_eq!(failed["status"]["conditions"][0]["status"], "False");
    let described = server.kubectl_ok(&["describe", "imagecache", "missing"]);
    assert!(
        described
            .lines()
            .any(|l| l.contains("Warning") && l.contains("Failed")),
        "{described}"
    );

    let big = wait_phase(&server, "big", "Failed");
    let message = big["status"]["message"].as_str().unwrap();
    assert_eq!(big["status"]["reason"], "CacheSizeExceeded");
    assert!(
        message.contains("larger than the cache size of 200000 bytes"),
        "{message}"
    );
    assert!(
        message.contains("unpacked content of the cache is "),
        "{message}"
    );
    assert!(!disk(&server, &cache_id(&big)).exists());
    let m = metrics(&server);
    assert!(
        m.contains("imc_cache_builds_total{outcome=\"Failed\"} 2"),
        "{m}"
    );
}

#[test]
fn expired_cache_is_deleted_with_its_disk() {
    let reg = seed_registry();
    let mut server = start_server(&reg.registry.host(), &[]);
    server.create_ok(manifest(
        "short",
        &["eci_open/busybox:1.30"],
        "  retentionDays: 1\n",
        "",
    ));
    let ready = wait_phase(&server, "short", "Ready");
    let id = cache_id(&ready);
    assert!(disk(&server, &id).exists());
    let created: jiff::Timestamp = ready["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let expires: jiff::Timestamp = ready["status"]["expireDateTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        expires.duration_since(created),
        jiff::SignedDuration::from_hours(24)
    );

    // An auto-created cache expires 7 days after creation, or 30 days after its last match.
    server.create_ok("apiVersion: eci.alibabacloud.com/v1\nkind: ImageCache\nmetadata:\n  name: auto-create-for-test\n  labels:\n    imc.dev/auto-created: \"true\"\nspec:\n  images:\n  - registry.cn-shanghai.aliyuncs.com/eci_open/busybox:1.30\n",
    );
    let auto = wait_phase(&server, "auto-create-for-test", "Ready");
    let auto_created: jiff::Timestamp = auto["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let auto_expires: jiff::Timestamp = auto["status"]["expireDateTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        auto_expires.duration_since(auto_created),
        jiff::SignedDuration::from_hours(7 * 24)
    );
    // Matched 29 days ago: one day left.
    let matched_at =
        jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - 29 * 24 * 3600).unwrap();
    let matched = matched_at.to_string();
    server.kubectl_ok(&[
        "patch",
        "imagecache",
        "auto-create-for-test",
        "--subresource=status",
        "--type",
        "merge",
        "-p",
        &format!(r#"{{"status":{{"lastMatchedTime":"{matched}"}}}}"#),
    ]);
    let want = matched_at
        .checked_add(jiff::SignedDuration::from_hours(30 * 24))
        .unwrap()
        .to_string();
    let rematched = server.wait_for("imagecache", "auto-create-for-test", "re-dated", |o| {
        o["status"]["expireDateTime"] == want.as_str()
    });
    assert_eq!(rematched["status"]["lastMatchedTime"], matched.as_str());
    assert_eq!(phase(&rematched), "Ready");

    // Two days later (the controllers' clock moved forward), the cache is gone.
    server.set_extra_args(&mirror_args(
        &reg.registry.host(),
        &["--clock-offset-seconds", "172800"],
    ));
    server.restart().unwrap();
    server.wait_gone("imagecache", "short");
    assert!(!disk(&server, &id).exists());
    // Its last match is now more than 30 days ago: gone too.
    server.wait_gone("imagecache", "auto-create-for-test");
}

#[test]
fn deleting_a_cache_in_use_keeps_its_disk_until_the_last_user_detaches() {
    let reg = seed_registry();
    let server = start_server(&reg.registry.host(), &[]);
    server.create_ok(manifest("used", &["eci_open/busybox:1.30"], "", ""));
    let ready = wait_phase(&server, "used", "Ready");
    let id = cache_id(&ready);
    let disk_path = disk(&server, &id);
    // A pod's attachment, as the node makes it: the disk mounted read-only for a live user.
    let attacher = imc_snapshot::Attacher::new(server.data_dir()).unwrap();
    let attached = attacher
        .attach(
            &disk_path,
            imc_snapshot::CacheUser::current_process("pod-under-test"),
        )
        .unwrap();

    server.kubectl_ok(&["delete", "imagecache", "used", "--wait=false"]);
    let waiting = server.wait_for("imagecache", "used", "waiting for its pod", |o| {
        o["metadata"]["deletionTimestamp"].is_string()
    });
    assert!(waiting["metadata"]["finalizers"].is_array());
    let start = Instant::now();
    loop {
        let described = server.kubectl_ok(&["describe", "imagecache", "used"]);
        if described.contains("DeletionWaiting") {
            assert!(described.contains("1 pod(s) still use disk"), "{described}");
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "no DeletionWaiting event: {described}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        server.get_json("imagecache", "used").is_some(),
        "kept while in use"
    );
    assert!(disk_path.exists(), "disk kept while in use");
    assert!(
        attached.mount_point.join("index.json").exists()
            || std::fs::read_dir(&attached.mount_point).unwrap().count() > 0,
        "the pod still reads its disk"
    );

    attacher.release(&attached.id, "pod-under-test").unwrap();
    server.wait_gone("imagecache", "used");
    assert!(!disk_path.exists());
}

#[test]
fn failed_rebuild_is_update_failed_and_the_old_disk_keeps_serving() {
    let reg = seed_registry();
    let server = start_server(&reg.registry.host(), &[]);
    server.create_ok(manifest("upd", &["eci_open/busybox:1.30"], "", ""));
    let ready = wait_phase(&server, "upd", "Ready");
    let id = cache_id(&ready);
    let link = disk(&server, &id);
    let first = std::fs::read_link(&link).unwrap();

    let set_images = |image: &str| {
        server.kubectl_ok(&[
            "patch",
            "imagecache",
            "upd",
            "--type",
            "merge",
            "-p",
            &format!(r#"{{"spec":{{"images":["{SEED_HOST}/{image}"]}}}}"#),
        ]);
    };
    set_images("eci_open/nope:2");
    let failed = wait_phase(&server, "upd", "UpdateFailed");
    assert_eq!(failed["status"]["conditions"][0]["status"], "True");
    assert!(
        failed["status"]["message"]
            .as_str()
            .unwrap()
            .contains("eci_open/nope:2"),
        "{failed:#}"
    );
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        first,
        "old disk still current"
    );
    assert!(
        inspect(&link)["images"][0]["reference"]
            .as_str()
            .unwrap()
            .ends_with("busybox:1.30")
    );

    // UpdateFailed accepts another change, which rebuilds.
    set_images("eci_open/extra:1");
    let fixed = server.wait_for("imagecache", "upd", "rebuilt", |o| {
        phase(o) == "Ready" && o["status"]["observedGeneration"] == 3
    });
    assert!(fixed["status"].get("message").is_none(), "{fixed:#}");
    server.assert_cache_is_erofs(&fixed);
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        PathBuf::from(format!("{id}.g3.erofs"))
    );
    let m = metrics(&server);
    assert!(
        m.contains("imc_cache_builds_total{outcome=\"UpdateFailed\"} 1"),
        "{m}"
    );
    assert!(m.contains("imc_downloaded_bytes_total "), "{m}");
}

#[test]
fn reuse_annotation_takes_layers_the_store_lost_from_other_caches_disks() {
    let reg = seed_registry();
    let proxy = Proxy::start(&reg.registry.host()).unwrap();
    let server = start_server(&proxy.host_port(), &[]);
    server.create_ok(manifest("first", &["eci_open/busybox:1.30"], "", ""));
    let first = wait_phase(&server, "first", "Ready");
    assert_eq!(blob_gets(&proxy, &reg.base), 1);

    // The layer store forgets the image; only the first cache's disk still holds its layer.
    let out = imc()
        .args(["image", "rm", "--data-dir"])
        .arg(server.data_dir())
        .arg(format!("{SEED_HOST}/eci_open/busybox:1.30"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base_tree = server
        .data_dir()
        .join(format!("layers/sha256/{}", reg.base.diff_id.hex()));
    assert!(!base_tree.exists());

    server.create_ok(manifest(
        "reusing",
        &["eci_open/busybox:1.30", "eci_open/extra:1"],
        "",
        "    k8s.aliyun.com/eci-image-cache: \"true\"\n",
    ));
    let reusing = wait_phase(&server, "reusing", "Ready");
    assert_eq!(reusing["status"]["reusedLayers"], 2, "{reusing:#}");
    assert_eq!(
        reusing["status"]["downloadedBytes"],
        reg.extra_top.blob.len() as u64
    );
    assert_eq!(
        blob_gets(&proxy, &reg.base),
        1,
        "base taken from the first cache"
    );
    let index = inspect(&disk(&server, &cache_id(&reusing)));
    assert_eq!(index["layers"].as_array().unwrap().len(), 2, "{index:#}");

    // Without the annotation the layer is downloaded again.
    server.create_ok(manifest("plain", &["eci_open/busybox:1.30"], "", ""));
    let plain = wait_phase(&server, "plain", "Ready");
    assert_eq!(plain["status"]["reusedLayers"], 0, "{plain:#}");
    assert_eq!(
        plain["status"]["downloadedBytes"],
        reg.base.blob.len() as u64
    );
    assert_eq!(blob_gets(&proxy, &reg.base), 2);

    // The build released the first cache's disk: deleting it does not wait.
    server.kubectl_ok(&["delete", "imagecache", "first"]);
    server.wait_gone("imagecache", "first");
    assert!(!disk(&server, &cache_id(&first)).exists());
}

#[test]
fn deleting_a_cache_while_it_builds_stops_the_build_and_leaves_no_disk() {
    let reg = seed_registry();
    let proxy = Proxy::start(&reg.registry.host()).unwrap();
    proxy.add_fault(
        reg.slow_top.digest.hex(),
        Fault::Slow {
            bytes_per_sec: 128 * 1024,
        },
    );
    let server = start_server(&proxy.host_port(), &[]);
    server.create_ok(manifest("doomed", &["eci_open/slow:1"], "", ""));
    let creating = wait_phase(&server, "doomed", "Creating");
    let id = cache_id(&creating);
    server.kubectl_ok(&["delete", "imagecache", "doomed"]);
    server.wait_gone("imagecache", "doomed");
    let leftovers: Vec<String> = std::fs::read_dir(server.data_dir().join("caches"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(&id))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The name is free again and a new cache under it builds from scratch with a new id.
    proxy.clear_faults();
    server.create_ok(manifest("doomed", &["eci_open/slow:1"], "", ""));
    let again = wait_phase(&server, "doomed", "Ready");
    assert_ne!(cache_id(&again), id, "ids are never reused");
}
