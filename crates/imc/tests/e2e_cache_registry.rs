//! How an ImageCache reaches its registry (DESIGN §3): `imagePullSecrets` read through the API,
//! the plain-http and insecure-registry annotations, and `imc-cpu-arch`. Real `imc server`,
//! real docker-registry (Basic auth, self-signed TLS), real kubectl.

mod run_support;

use std::time::{Duration, Instant};

use imc_testkit::apiserver::TestServer;
use imc_testkit::image::{BuiltImage, Format, ImageBuilder, ImageConfig, IndexBuilder};
use imc_testkit::kubectl::PATIENCE;
use imc_testkit::registry::{Auth, TestRegistry};
use run_support::busybox_layer;
use serde_json::Value;

const USER: &str = "imc-user";
const PASSWORD: &str = "s3cret-Pa55word";

fn busybox() -> BuiltImage {
    ImageBuilder::new(Format::Oci)
        .config(ImageConfig {
            cmd: Some(vec!["sh".to_owned()]),
            ..Default::default()
        })
        .layer(busybox_layer())
        .build()
}

/// An ImageCache manifest; `annotations` and `spec_extra` are YAML lines (indented).
fn manifest(name: &str, image: &str, annotations: &[(&str, &str)], spec_extra: &str) -> String {
    let mut m = format!(
        "apiVersion: eci.alibabacloud.com/v1\nkind: ImageCache\nmetadata:\n  name: {name}\n  annotations:\n    imc.test/kind: e2e\n"
    );
    for (k, v) in annotations {
        m.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    m.push_str(&format!("spec:\n  images:\n  - {image}\n{spec_extra}"));
    m
}

/// Polls until the cache leaves Pending/Creating; returns it.
fn settled(server: &TestServer, name: &str) -> Value {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < PATIENCE {
        let out = server
            .kubectl(&["get", "imagecache", name, "-o", "json"])
            .unwrap();
        if out.status.success() {
            let obj: Value = serde_json::from_slice(&out.stdout).unwrap();
            if matches!(obj["status"]["phase"].as_str(), Some("Ready" | "Failed")) {
                return obj;
            }
            last = Some(obj);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{name} never settled: {last:#?}");
}

fn server() -> TestServer {
    TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &[]).expect("imc server starts")
}

#[test]
fn pull_secret_and_plain_http_annotation_reach_an_authenticated_registry() {
    let reg = TestRegistry::start(Auth::basic(USER, PASSWORD));
    let host = reg.host();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(imc_testkit::image::push(
        &host,
        "eci_open/busybox",
        "1.30",
        &busybox(),
        Some((USER, PASSWORD)),
    ))
    .unwrap();
    let image = format!("{host}/eci_open/busybox:1.30");
    let server = server();
    server.kubectl_ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        "-n",
        "default",
        &format!("--docker-server={host}"),
        &format!("--docker-username={USER}"),
        &format!("--docker-password={PASSWORD}"),
    ]);
    let plain = [("k8s.aliyun.com/plain-http-registry", host.as_str())];
    server.create_ok(manifest(
        "with-secret",
        &image,
        &plain,
        "  imagePullSecrets: [\"default:regcred\"]\n",
    ));
    server.create_ok(manifest(
        "absent-secret",
        &image,
        &plain,
        "  imagePullSecrets: [\"default:absent\"]\n",
    ));
    server.create_ok(manifest("no-secret", &image, &plain, ""));

    let ok = settled(&server, "with-secret");
    assert_eq!(ok["status"]["phase"], "Ready", "{ok:#}");
    server.assert_cache_is_erofs(&ok);
    assert_eq!(ok["status"]["images"][0]["image"], image.as_str());

    let absent = settled(&server, "absent-secret");
    assert_eq!(absent["status"]["phase"], "Failed");
    assert_eq!(absent["status"]["reason"], "PullSecretInvalid");
    assert_eq!(
        absent["status"]["message"],
        "pull secret default:absent (namespace:name) of ImageCache absent-secret not found"
    );

    let denied = settled(&server, "no-secret");
    assert_eq!(denied["status"]["phase"], "Failed");
    let message = denied["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("access denied") && message.contains("401"),
        "{message}"
    );

    // The password is nowhere in what users see.
    for name in ["with-secret", "absent-secret", "no-secret"] {
        let described = server.kubectl_ok(&["describe", "imagecache", name]);
        assert!(!described.contains(PASSWORD), "{described}");
    }
    let events = server.kubectl_ok(&["get", "events", "-A", "-o", "json"]);
    assert!(!events.contains(PASSWORD));
}

#[test]
fn cpu_arch_annotation_picks_the_platform_from_an_index() {
    let reg = TestRegistry::start(Auth::None);
    let host = reg.host();
    let amd64 = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layer(busybox_layer())
        .build();
    let arm64 = ImageBuilder::new(Format::Oci)
        .platform("linux", "arm64", Some("v8"))
        .layer(
            imc_testkit::image::LayerBuilder::new()
                .file("arch", "arm64")
                .build(),
        )
        .build();
    let index = IndexBuilder::new(Format::Oci)
        .image(amd64.clone())
        .image(arm64.clone())
        .build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(imc_testkit::image::push_index(
        &host,
        "multi/app",
        "1",
        &index,
        None,
    ))
    .unwrap();
    let image = format!("{host}/multi/app:1");
    let server = server();
    server.create_ok(manifest(
        "arm",
        &image,
        &[
            ("k8s.aliyun.com/plain-http-registry", host.as_str()),
            ("k8s.aliyun.com/imc-cpu-arch", "linux/arm64/v8"),
        ],
        "",
    ));
    server.create_ok(manifest(
        "host-arch",
        &image,
        &[("k8s.aliyun.com/plain-http-registry", host.as_str())],
        "",
    ));
    let arm = settled(&server, "arm");
    assert_eq!(arm["status"]["phase"], "Ready", "{arm:#}");
    server.assert_cache_is_erofs(&arm);
    assert_eq!(
        arm["status"]["images"][0]["digest"],
        arm64.manifest_digest.to_string()
    );
    assert_eq!(
        arm["status"]["images"][0]["layers"],
        serde_json::json!([arm64.layers[0].digest.to_string()])
    );
    let native = settled(&server, "host-arch");
    assert_eq!(
        native["status"]["images"][0]["digest"],
        amd64.manifest_digest.to_string(),
        "{native:#}"
    );
}

#[test]
fn insecure_registry_annotation_accepts_a_self_signed_registry() {
    let reg = TestRegistry::start_tls(Auth::None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(imc_testkit::image::push(
        &reg.url(),
        "app",
        "1",
        &busybox(),
        None,
    ))
    .unwrap();
    let image = format!("{}/app:1", reg.host());
    let server = server();
    server.create_ok(manifest("strict", &image, &[], ""));
    server.create_ok(manifest(
        "insecure",
        &image,
        &[("k8s.aliyun.com/insecure-registry", reg.host().as_str())],
        "",
    ));
    let strict = settled(&server, "strict");
    assert_eq!(strict["status"]["phase"], "Failed");
    let message = strict["status"]["message"].as_str().unwrap();
    assert!(message.contains("certificate"), "{message}");
    let insecure = settled(&server, "insecure");
    assert_eq!(insecure["status"]["phase"], "Ready", "{insecure:#}");
    server.assert_cache_is_erofs(&insecure);
}
