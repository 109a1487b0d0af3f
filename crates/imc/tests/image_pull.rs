//! `imc image pull|ls|rm`, running the real `imc` binary against a real Debian docker-registry on
//! a loopback port (imc_testkit::registry), with images built and pushed in code.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use imc_api::Digest;
use imc_testkit::image::{
    BuiltImage, BuiltLayer, Compression, Format, ImageBuilder, LayerBuilder, Meta,
};
use imc_testkit::registry::{Auth, TestRegistry};
use serde_json::Value;

fn imc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imc"))
        .args(args)
        .env_remove("IMC_DATA_DIR")
        .env("HOME", "/nonexistent-imc-test-home")
        .output()
        .expect("run imc")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Incompressible bytes, deterministic per seed.
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

fn push(registry: &TestRegistry, repo: &str, tag: &str, image: &BuiltImage) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(imc_testkit::image::push(
        &registry.host(),
        repo,
        tag,
        image,
        None,
    ))
    .unwrap_or_else(|e| panic!("push {repo}:{tag}: {e:#}"));
}

fn pull_json(registry: &TestRegistry, data: &Path, reference: &str) -> Value {
    let out = imc(&[
        "image",
        "pull",
        "--data-dir",
        data.to_str().unwrap(),
        "--plain-http",
        &registry.host(),
        "-o",
        "json",
        reference,
    ]);
    assert!(
        out.status.success(),
        "imc image pull {reference} failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", text(&out.stdout)))
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn layer(seed: u64, compression: Compression) -> BuiltLayer {
    LayerBuilder::new()
        .compression(compression)
        .dir("data")
        .file(&format!("data/layer-{seed}"), noise(seed, 64 * 1024))
        .file_with(
            &format!("data/mode-{seed}"),
            b"x",
            Meta::mode(0o4750).owner(12, 34),
        )
        .build()
}

/// Checks a pull report and the store against the built image.
fn assert_pulled(
    report: &Value,
    image: &BuiltImage,
    reference: &str,
    data: &Path,
    reused: &[bool],
) {
    assert_eq!(report["reference"], reference);
    assert_eq!(report["manifestDigest"], image.manifest_digest.to_string());
    assert_eq!(report["configDigest"], image.config_digest.to_string());
    let layers = report["layers"].as_array().unwrap();
    assert_eq!(layers.len(), image.layers.len());
    let mut downloaded = 0;
    for ((got, want), reused) in layers.iter().zip(&image.layers).zip(reused) {
        assert_eq!(got["digest"], want.digest.to_string());
        assert_eq!(got["diffId"], want.diff_id.to_string());
        assert_eq!(got["size"], want.blob.len() as u64);
        assert_eq!(got["reused"], *reused);
        if !reused {
            downloaded += want.blob.len() as u64;
        }
        assert_eq!(
            fs::read(data.join("blobs/sha256").join(want.digest.hex())).unwrap(),
            want.blob
        );
        assert!(data.join("layers/sha256").join(want.diff_id.hex()).is_dir());
    }
    assert_eq!(report["downloadedBytes"], downloaded);
    assert!(report["seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        fs::read(data.join("blobs/sha256").join(image.config_digest.hex())).unwrap(),
        image.config
    );
}

#[test]
fn pulls_oci_and_docker_images_in_every_compression() {
    let registry = TestRegistry::start(Auth::None);
    let cases = [
        (Format::Oci, Compression::Gzip),
        (Format::Oci, Compression::Zstd),
        (Format::Oci, Compression::None),
        (Format::Docker, Compression::Gzip),
        (Format::Docker, Compression::None),
    ];
    for (i, (format, compression)) in cases.into_iter().enumerate() {
        let data = tempfile::tempdir().unwrap();
        let seed = 100 + 10 * i as u64;
        let image = ImageBuilder::new(format)
            .layer(layer(seed, compression))
            .layer(layer(seed + 1, compression))
            .build();
        let reference = format!("{}/fmt/app:{i}", registry.host());
        push(&registry, "fmt/app", &i.to_string(), &image);
        let report = pull_json(&registry, data.path(), &reference);
        assert_pulled(&report, &image, &reference, data.path(), &[false, false]);

        let tree = data
            .path()
            .join("layers/sha256")
            .join(image.layers[1].diff_id.hex());
        assert_eq!(
            fs::read(tree.join(format!("data/layer-{}", seed + 1))).unwrap(),
            noise(seed + 1, 64 * 1024)
        );
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(tree.join(format!("data/mode-{}", seed + 1))).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o4750, 12, 34));
        assert!(names(&data.path().join("tmp")).is_empty());
    }
}

#[test]
fn shared_layers_are_not_downloaded_again() {
    let registry = TestRegistry::start(Auth::None);
    let data = tempfile::tempdir().unwrap();
    let base = layer(1, Compression::Gzip);
    let a = ImageBuilder::new(Format::Oci)
        .layer(base.clone())
        .layer(layer(2, Compression::Gzip))
        .build();
    let b = ImageBuilder::new(Format::Docker)
        .layer(base.clone())
        .layer(layer(3, Compression::Zstd))
        .build();
    push(&registry, "dedup/a", "1", &a);
    push(&registry, "dedup/b", "1", &b);
    let ra = format!("{}/dedup/a:1", registry.host());
    let rb = format!("{}/dedup/b:1", registry.host());

    let report = pull_json(&registry, data.path(), &ra);
    assert_pulled(&report, &a, &ra, data.path(), &[false, false]);
    let report = pull_json(&registry, data.path(), &rb);
    assert_pulled(&report, &b, &rb, data.path(), &[true, false]);
    assert_eq!(report["downloadedBytes"], b.layers[1].blob.len() as u64);
    // A second run of the same pull downloads nothing.
    let report = pull_json(&registry, data.path(), &rb);
    assert_pulled(&report, &b, &rb, data.path(), &[true, true]);
    assert_eq!(report["downloadedBytes"], 0);

    // The human summary says the same.
    let out = imc(&[
        "image",
        "pull",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--plain-http",
        &registry.host(),
        &ra,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(
        summary.contains("0 B downloaded") && summary.contains("reused"),
        "{summary}"
    );
}

#[test]
fn concurrent_pulls_in_two_processes_both_succeed_and_keep_one_copy() {
    let registry = TestRegistry::start(Auth::None);
    let data = tempfile::tempdir().unwrap();
    let big = |seed| {
        LayerBuilder::new()
            .compression(Compression::Gzip)
            .file("big", noise(seed, 8 << 20))
            .build()
    };
    let image = ImageBuilder::new(Format::Oci)
        .layer(big(7))
        .layer(big(8))
        .layer(big(9))
        .build();
    push(&registry, "conc/app", "1", &image);
    let reference = format!("{}/conc/app:1", registry.host());
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_imc"))
            .args([
                "image",
                "pull",
                "--data-dir",
                data.path().to_str().unwrap(),
                "--plain-http",
                &registry.host(),
                "-o",
                "json",
                &reference,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let (first, second) = (
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    );
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(second.status.success(), "{}", text(&second.stderr));
    let reports: Vec<Value> = [&first, &second]
        .iter()
        .map(|o| serde_json::from_slice(&o.stdout).unwrap())
        .collect();
    // Between them, each layer was downloaded once.
    let downloaded: u64 = reports
        .iter()
        .map(|r| r["downloadedBytes"].as_u64().unwrap())
        .sum();
    let total: u64 = image.layers.iter().map(|l| l.blob.len() as u64).sum();
    assert_eq!(downloaded, total);

    let mut blobs: BTreeSet<String> = image
        .layers
        .iter()
        .map(|l| l.digest.hex().to_owned())
        .collect();
    blobs.insert(image.config_digest.hex().to_owned());
    assert_eq!(names(&data.path().join("blobs/sha256")), blobs);
    let layers: BTreeSet<String> = image
        .layers
        .iter()
        .map(|l| l.diff_id.hex().to_owned())
        .collect();
    assert_eq!(names(&data.path().join("layers/sha256")), layers);
    assert!(names(&data.path().join("tmp")).is_empty());
    assert_eq!(names(&data.path().join("images")).len(), 1);
}

#[test]
fn rm_collects_unshared_layers_and_keeps_shared_ones() {
    let registry = TestRegistry::start(Auth::None);
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    let base = layer(21, Compression::Gzip);
    let a = ImageBuilder::new(Format::Oci)
        .layer(base.clone())
        .layer(layer(22, Compression::Gzip))
        .build();
    let b = ImageBuilder::new(Format::Oci)
        .layer(base.clone())
        .layer(layer(23, Compression::Gzip))
        .build();
    push(&registry, "gc/a", "1", &a);
    push(&registry, "gc/b", "1", &b);
    let ra = format!("{}/gc/a:1", registry.host());
    let rb = format!("{}/gc/b:1", registry.host());
    pull_json(&registry, data.path(), &ra);
    pull_json(&registry, data.path(), &rb);

    let out = imc(&["image", "ls", "--data-dir", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ls = text(&out.stdout);
    let lines: Vec<&str> = ls.lines().collect();
    assert_eq!(lines.len(), 3, "{ls}");
    assert!(
        lines[0]
            .split_whitespace()
            .eq(["REFERENCE", "DIGEST", "SIZE", "LAYERS"]),
        "{ls}"
    );
    assert!(
        lines[1].starts_with(&ra)
            && lines[1].contains(&a.manifest_digest.short())
            && lines[1].trim_end().ends_with(" 2"),
        "{ls}"
    );
    assert!(lines[2].starts_with(&rb), "{ls}");

    let out = imc(&["image", "rm", "--data-dir", d, &ra]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!("removed {ra}")) && said.contains("freed 1 layers, 2 blobs"),
        "{said}"
    );
    let layers = names(&data.path().join("layers/sha256"));
    assert_eq!(
        layers,
        BTreeSet::from([
            base.diff_id.hex().to_owned(),
            b.layers[1].diff_id.hex().to_owned()
        ])
    );
    assert!(
        !data
            .path()
            .join("blobs/sha256")
            .join(a.layers[1].digest.hex())
            .exists()
    );
    assert!(
        data.path()
            .join("blobs/sha256")
            .join(base.digest.hex())
            .exists()
    );

    let out = imc(&["image", "ls", "--data-dir", d]);
    let ls = text(&out.stdout);
    assert!(!ls.contains(&ra) && ls.contains(&rb), "{ls}");

    let out = imc(&["image", "rm", "--data-dir", d, &rb]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(names(&data.path().join("layers/sha256")).is_empty());
    assert!(names(&data.path().join("blobs/sha256")).is_empty());

    let out = imc(&["image", "rm", "--data-dir", d, &rb]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not in the layer store"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn hostile_layer_fails_the_pull_naming_image_layer_and_entry() {
    let registry = TestRegistry::start(Auth::None);
    let data = tempfile::tempdir().unwrap();
    let good = layer(31, Compression::Gzip);
    let evil = LayerBuilder::new()
        .compression(Compression::Gzip)
        .file("ok", b"fine")
        .hardlink("passwd", "/etc/passwd")
        .build();
    let image = ImageBuilder::new(Format::Oci)
        .layer(good)
        .layer(evil.clone())
        .build();
    push(&registry, "evil/app", "1", &image);
    let reference = format!("{}/evil/app:1", registry.host());
    let passwd_before = fs::read("/etc/passwd").unwrap();
    let out = imc(&[
        "image",
        "pull",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--plain-http",
        &registry.host(),
        &reference,
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(&reference), "{err}");
    assert!(err.contains(&evil.digest.to_string()), "{err}");
    assert!(
        err.contains("\"passwd\"") && err.contains("/etc/passwd"),
        "{err}"
    );
    assert_eq!(fs::read("/etc/passwd").unwrap(), passwd_before);
    // Nothing of the failed pull is kept: no layer tree, no record, no temporaries.
    assert!(names(&data.path().join("layers/sha256")).is_empty());
    assert!(names(&data.path().join("images")).is_empty());
    assert!(names(&data.path().join("tmp")).is_empty());
    let _ = Digest::of(b"");
}

#[test]
fn platform_flag_picks_the_image_from_an_index() {
    let registry = TestRegistry::start(Auth::None);
    let amd64 = ImageBuilder::new(Format::Docker)
        .platform("linux", "amd64", None)
        .layer(layer(41, Compression::Gzip))
        .build();
    let arm64 = ImageBuilder::new(Format::Docker)
        .platform("linux", "arm64", Some("v8"))
        .layer(layer(42, Compression::Gzip))
        .build();
    let index = imc_testkit::image::IndexBuilder::new(Format::Docker)
        .image(amd64.clone())
        .image(arm64.clone())
        .build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(imc_testkit::image::push_index(
        &registry.host(),
        "multi/app",
        "1",
        &index,
        None,
    ))
    .unwrap();
    let reference = format!("{}/multi/app:1", registry.host());
    let data = tempfile::tempdir().unwrap();
    let out = imc(&[
        "image",
        "pull",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--plain-http",
        &registry.host(),
        "--platform",
        "linux/arm64/v8",
        "-o",
        "json",
        &reference,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_pulled(&report, &arm64, &reference, data.path(), &[false]);
    let report = pull_json(&registry, data.path(), &reference);
    assert_pulled(&report, &amd64, &reference, data.path(), &[false]);
}

#[test]
fn registry_mirror_flag_fetches_from_the_mirror_and_keeps_the_name() {
    let registry = TestRegistry::start(Auth::None);
    let image = ImageBuilder::new(Format::Oci)
        .layer(layer(51, Compression::Zstd))
        .build();
    push(&registry, "library/app", "1", &image);
    let data = tempfile::tempdir().unwrap();
    let mirror = format!("docker.io=http://{}", registry.host());
    let out = imc(&[
        "image",
        "pull",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--registry-mirror",
        &mirror,
        "-o",
        "json",
        "app:1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_pulled(
        &report,
        &image,
        "docker.io/library/app:1",
        data.path(),
        &[false],
    );

    let out = imc(&[
        "image",
        "pull",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--registry-mirror",
        "nonsense",
        "app:1",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("HOST=URL"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn docker_config_flag_supplies_credentials_and_secrets_stay_out_of_output() {
    let password = "s3cret-pa55word";
    let registry = TestRegistry::start(Auth::basic("alice", password));
    let image = ImageBuilder::new(Format::Oci)
        .layer(layer(61, Compression::Gzip))
        .build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(imc_testkit::image::push(
        &registry.host(),
        "private/app",
        "1",
        &image,
        Some(("alice", password)),
    ))
    .unwrap();
    let reference = format!("{}/private/app:1", registry.host());
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();

    // No credentials (HOME points nowhere, so no default config): refused, and said so.
    let out = imc(&[
        "image",
        "pull",
        "--data-dir",
        d,
        "--plain-http",
        &registry.host(),
        &reference,
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(&reference) && err.contains("401"), "{err}");

    let config = data.path().join("config.json");
    let auth = base64_encode(format!("alice:{password}").as_bytes());
    fs::write(
        &config,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            registry.host()
        ),
    )
    .unwrap();
    let out = imc(&[
        "image",
        "pull",
        "--data-dir",
        d,
        "--plain-http",
        &registry.host(),
        "--docker-config",
        config.to_str().unwrap(),
        "-v",
        &reference,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        !all.contains(password) && !all.contains(&auth),
        "secret in output"
    );
    assert!(
        data.path()
            .join("layers/sha256")
            .join(image.layers[0].diff_id.hex())
            .is_dir()
    );
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
