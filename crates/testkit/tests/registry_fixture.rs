//! The registry fixture and image builder against the real docker-registry: a pushed image's
//! manifest comes back byte-identical, under its digest, for each auth mode.

use imc_api::Digest;
use imc_testkit::image::{
    self, Compression, DOCKER_SCHEMA1_SIGNED, Format, ImageBuilder, ImageConfig, IndexBuilder,
    LayerBuilder,
};
use imc_testkit::registry::{Auth, TestRegistry};

/// GETs `path` on the registry with an Accept header, answering Basic or Bearer auth.
async fn get(
    reg: &TestRegistry,
    repo: &str,
    path: &str,
    accept: &str,
) -> (u16, Option<String>, Vec<u8>) {
    image::install_crypto_provider();
    let http = reqwest::Client::new();
    let url = format!("{}/v2/{repo}/{path}", reg.url());
    let mut rb = http.get(&url).header("accept", accept);
    match reg.auth() {
        Auth::None => {}
        Auth::Basic { user, password } => rb = rb.basic_auth(user, Some(password)),
        Auth::Token { user, password } => {
            let realm_resp = http.get(&url).send().await.expect("challenge");
            assert_eq!(realm_resp.status(), 401);
            let challenge = realm_resp.headers()["www-authenticate"]
                .to_str()
                .expect("ascii")
                .to_owned();
            let realm = challenge.split('"').nth(1).expect("realm").to_owned();
            let token_url = reqwest::Url::parse_with_params(
                &realm,
                &[
                    ("service", imc_testkit::registry::TOKEN_SERVICE),
                    ("scope", &format!("repository:{repo}:pull")),
                ],
            )
            .expect("token url");
            let tok: serde_json::Value = http
                .get(token_url)
                .basic_auth(user, Some(password))
                .send()
                .await
                .expect("token")
                .json()
                .await
                .expect("token json");
            rb = rb.bearer_auth(tok["token"].as_str().expect("token field"));
        }
    }
    let resp = rb.send().await.expect("GET");
    let status = resp.status().as_u16();
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .map(|v| v.to_str().expect("ascii").to_owned());
    (status, digest, resp.bytes().await.expect("body").to_vec())
}

fn sample(format: Format, compression: Compression) -> image::BuiltImage {
    ImageBuilder::new(format)
        .layer(
            LayerBuilder::new()
                .compression(compression)
                .dir("etc")
                .file("etc/hello", "hello world\n")
                .symlink("etc/link", "hello")
                .build(),
        )
        .config(ImageConfig {
            cmd: Some(vec!["/bin/sh".into()]),
            env: vec!["A=b".into()],
            ..Default::default()
        })
        .build()
}

async fn push_and_fetch(auth: Auth) {
    let reg = TestRegistry::start(auth.clone());
    let img = sample(Format::Oci, Compression::Gzip);
    image::push(&reg.host(), "test/app", "v1", &img, auth.credentials())
        .await
        .expect("push");
    let (status, digest, body) = get(&reg, "test/app", "manifests/v1", image::OCI_MANIFEST).await;
    assert_eq!(status, 200, "registry log:\n{}", reg.log_tail());
    assert_eq!(
        digest.as_deref(),
        Some(img.manifest_digest.to_string().as_str())
    );
    assert_eq!(Digest::of(&body), img.manifest_digest);
    let (status, _, layer) = get(
        &reg,
        "test/app",
        &format!("blobs/{}", img.layers[0].digest),
        "*/*",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(layer, img.layers[0].blob);
}

#[tokio::test]
async fn anonymous_push_then_fetch_manifest_by_digest() {
    push_and_fetch(Auth::None).await;
}

#[tokio::test]
async fn basic_auth_push_then_fetch() {
    push_and_fetch(Auth::basic("alice", "s3cret-basic")).await;
}

#[tokio::test]
async fn token_auth_push_then_fetch() {
    push_and_fetch(Auth::token("bob", "s3cret-token")).await;
}

#[tokio::test]
async fn basic_auth_refuses_anonymous() {
    let reg = TestRegistry::start(Auth::basic("alice", "pw"));
    image::install_crypto_provider();
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{}/v2/", reg.url()))
        .send()
        .await
        .expect("GET /v2/");
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn docker_manifest_list_with_two_platforms() {
    let reg = TestRegistry::start(Auth::None);
    let amd = ImageBuilder::new(Format::Docker)
        .layer(LayerBuilder::new().file("arch", "amd64").build())
        .build();
    let arm = ImageBuilder::new(Format::Docker)
        .platform("linux", "arm64", Some("v8"))
        .layer(
            LayerBuilder::new()
                .compression(Compression::Zstd)
                .file("arch", "arm64")
                .build(),
        )
        .build();
    let index = IndexBuilder::new(Format::Docker)
        .image(amd.clone())
        .image(arm.clone())
        .build();
    image::push_index(&reg.host(), "multi", "latest", &index, None)
        .await
        .expect("push index");
    let (status, digest, _) = get(
        &reg,
        "multi",
        "manifests/latest",
        image::DOCKER_MANIFEST_LIST,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(digest, Some(index.digest.to_string()));
    let (status, _, body) = get(
        &reg,
        "multi",
        &format!("manifests/{}", arm.manifest_digest),
        image::DOCKER_MANIFEST,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, arm.manifest);
}

#[tokio::test]
async fn schema1_manifest_is_accepted_by_the_registry() {
    let reg = TestRegistry::start(Auth::None);
    let img = sample(Format::Docker, Compression::Gzip);
    image::push_blobs(&reg.host(), "old", &img, None)
        .await
        .expect("push blobs");
    let m = img.schema1_manifest("old", "v1");
    image::push_manifest(&reg.host(), "old", "v1", DOCKER_SCHEMA1_SIGNED, &m, None)
        .await
        .unwrap_or_else(|e| panic!("push schema1: {e:#}\nlog:\n{}", reg.log_tail()));
    let (status, _, body) = get(&reg, "old", "manifests/v1", DOCKER_SCHEMA1_SIGNED).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["schemaVersion"], 1);
}

#[tokio::test]
async fn foreign_layer_manifest_is_accepted_by_the_registry() {
    let reg = TestRegistry::start(Auth::None);
    for format in [Format::Docker, Format::Oci] {
        let img = ImageBuilder::new(format)
            .layer(LayerBuilder::new().file("a", "a").build())
            .foreign_layer()
            .build();
        image::push(&reg.host(), "foreign", "v1", &img, None)
            .await
            .unwrap_or_else(|e| panic!("push foreign {format:?}: {e:#}\nlog:\n{}", reg.log_tail()));
    }
}

#[test]
fn stop_and_restart_keep_port_and_storage() {
    let mut reg = TestRegistry::start(Auth::None);
    let host = reg.host();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let img = sample(Format::Oci, Compression::None);
    rt.block_on(image::push(&host, "keep", "v1", &img, None))
        .expect("push");
    reg.stop();
    assert!(
        std::net::TcpStream::connect(&host).is_err(),
        "registry still listening after stop"
    );
    reg.restart();
    assert_eq!(reg.host(), host);
    let (status, digest, _) = rt.block_on(get(&reg, "keep", "manifests/v1", image::OCI_MANIFEST));
    assert_eq!(status, 200);
    assert_eq!(digest, Some(img.manifest_digest.to_string()));
}

#[test]
fn layer_tar_round_trips_through_the_tar_crate() {
    use image::Meta;
    let layer = LayerBuilder::new()
        .compression(Compression::None)
        .dir_with("d", Meta::mode(0o750).owner(1000, 1001))
        .file_with(
            "d/f",
            "data",
            Meta::mode(0o4755).mtime(1234).xattr("user.k", b"v"),
        )
        .hardlink("d/h", "d/f")
        .char_device("d/c", 1, 3)
        .whiteout("d/gone")
        .opaque("d")
        .file(&format!("{}/long", "x".repeat(120)), "long")
        .raw_file(b"../escape", "bad")
        .build();
    let mut ar = tar::Archive::new(&layer.tar[..]);
    let mut seen = Vec::new();
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        if path == "d/f" {
            assert_eq!(e.header().mode().expect("mode"), 0o4755);
            assert_eq!(e.header().mtime().expect("mtime"), 1234);
            let x: Vec<_> = e
                .pax_extensions()
                .expect("pax")
                .expect("has pax")
                .map(|p| p.expect("pax rec").key().expect("key").to_owned())
                .collect();
            assert_eq!(x, vec!["SCHILY.xattr.user.k"]);
        }
        if path == "d" {
            assert_eq!(e.header().uid().expect("uid"), 1000);
            assert_eq!(e.header().gid().expect("gid"), 1001);
        }
        seen.push(path);
    }
    assert_eq!(
        seen,
        vec![
            "d".to_owned(),
            "d/f".into(),
            "d/h".into(),
            "d/c".into(),
            "d/.wh.gone".into(),
            "d/.wh..wh..opq".into(),
            format!("{}/long", "x".repeat(120)),
            "../escape".into()
        ]
    );
    assert_eq!(layer.diff_id, Digest::of(&layer.tar));
}
