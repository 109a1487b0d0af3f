//! `imc cache build` / `imc cache inspect` against a real registry, real mkfs.erofs and loop
//! mounts.

mod run_support;

use std::path::Path;

use run_support::{cache_build, imc, registry_with_images, sha256};
use serde_json::Value;

fn inspect(disk: &Path) -> Value {
    let out = imc()
        .args(["cache", "inspect", "-o", "json"])
        .arg(disk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn build_holds_each_layer_once_indexes_images_and_is_reproducible() {
    let reg = registry_with_images();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let disk_a = a.path().join("cache.erofs");
    let disk_b = b.path().join("cache.erofs");

    cache_build(&reg, a.path(), &[&reg.busybox, &reg.partial], &disk_a);
    cache_build(&reg, b.path(), &[&reg.busybox, &reg.partial], &disk_b);

    assert_eq!(
        sha256(&disk_a),
        sha256(&disk_b),
        "same images, byte-identical disks"
    );
    let index = inspect(&disk_a);
    let images = index["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0]["reference"], reg.busybox.as_str());
    assert_eq!(images[1]["reference"], reg.partial.as_str());
    assert_eq!(
        images[1]["layers"],
        serde_json::json!([
            reg.base.diff_id.to_string(),
            reg.partial_top.diff_id.to_string()
        ])
    );
    assert_eq!(
        images[1]["config"]["config"]["Cmd"],
        serde_json::json!(["cat", "/app/marker"])
    );
    // The shared base layer is on the disk once.
    let layers = index["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(
        layers[0]["path"],
        format!("layers/sha256/{}", reg.base.diff_id.hex())
    );
    // No temporary files next to the output.
    let names: Vec<String> = std::fs::read_dir(a.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");
}

#[test]
fn oversized_content_is_refused_with_both_sizes() {
    let reg = registry_with_images();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("cache.erofs");

    let out = imc()
        .args(["cache", "build", "--size-gib", "0", "--data-dir"])
        .arg(tmp.path())
        .args(reg.flags())
        .args(["--image", &reg.busybox, "--output"])
        .arg(&disk)
        .output()
        .unwrap();

    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let busybox_size = std::fs::metadata("/bin/busybox").unwrap().len();
    assert!(
        stderr.contains("larger than the cache size of 0 bytes (0.00 GiB)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("unpacked content of the cache is"),
        "{stderr}"
    );
    let unpacked: u64 = stderr
        .split("unpacked content of the cache is ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(unpacked >= busybox_size, "{stderr}");
    assert!(!disk.exists());
}

#[test]
fn missing_mkfs_erofs_is_a_clear_error_or_a_logged_directory_fallback() {
    let reg = registry_with_images();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("cache.erofs");
    let build = |backend: &str| {
        imc()
            .env("PATH", "/nonexistent")
            .env("RUST_LOG", "info")
            .args(["cache", "build", "--backend", backend, "--data-dir"])
            .arg(tmp.path())
            .args(reg.flags())
            .args(["--image", &reg.busybox, "--output"])
            .arg(&disk)
            .output()
            .unwrap()
    };

    let out = build("erofs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mkfs.erofs not found in PATH (install erofs-utils"),
        "{stderr}"
    );
    assert!(!disk.exists());
    assert!(
        !tmp.path().join("blobs").exists(),
        "nothing is pulled when the disk cannot be written"
    );

    let out = build("auto");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "writing a plain-directory cache instead of EROFS: mkfs.erofs not found in PATH"
        ),
        "{stderr}"
    );
    assert!(disk.join("index.json").is_file());
    assert!(
        disk.join("layers/sha256")
            .join(reg.base.diff_id.hex())
            .join("bin/busybox")
            .is_file()
    );
    assert_eq!(
        inspect(&disk)["images"][0]["reference"],
        reg.busybox.as_str()
    );
}

#[test]
fn json_output_reports_the_build_and_reuse() {
    let reg = registry_with_images();
    let tmp = tempfile::tempdir().unwrap();
    let build = |output: &str| {
        let out = imc()
            .args(["cache", "build", "-o", "json", "--data-dir"])
            .arg(tmp.path())
            .args(reg.flags())
            .args(["--image", &reg.busybox, "--image", &reg.partial, "--output"])
            .arg(tmp.path().join(output))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };

    let first = build("one.erofs");
    let second = build("two.erofs");

    assert_eq!(first["build"]["backend"], "erofs");
    assert_eq!(first["build"]["layers"], 2);
    assert_eq!(first["build"]["images"], 2);
    assert!(first["pulls"][0]["downloadedBytes"].as_u64().unwrap() > 0);
    // The second build reuses every layer from the store: nothing downloaded.
    let downloaded: u64 = second["pulls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["downloadedBytes"].as_u64().unwrap())
        .sum();
    assert_eq!(downloaded, 0);
    assert_eq!(first["build"]["diskId"], second["build"]["diskId"]);
}
