//! `imc run --cache` downloads nothing the cache holds: an image fully on the disk runs with the
//! registry stopped; an image whose base is on the disk pulls only its top layer.

mod run_support;

use std::path::Path;

use run_support::{cache_build, imc, registry_with_images};

fn blobs(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("blobs/sha256"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn layers(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("layers/sha256"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn image_fully_in_the_cache_runs_with_the_registry_stopped() {
    let mut reg = registry_with_images();
    let build_dir = tempfile::tempdir().unwrap();
    let disk = build_dir.path().join("bb.erofs");
    cache_build(&reg, build_dir.path(), &[&reg.busybox], &disk);
    reg.registry.stop();
    let node = tempfile::tempdir().unwrap();

    let out = imc()
        .arg("run")
        .arg("--data-dir")
        .arg(node.path())
        .arg("--cache")
        .arg(&disk)
        .args(reg.flags())
        .arg(&reg.busybox)
        .args(["--", "echo", "from-cache"])
        .output()
        .unwrap();

    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-cache\n");
    assert_eq!(
        blobs(node.path()),
        Vec::<String>::new(),
        "nothing downloaded"
    );
    assert_eq!(
        layers(node.path()),
        Vec::<String>::new(),
        "nothing unpacked"
    );
}

#[test]
fn image_with_base_in_the_cache_pulls_only_its_top_layer() {
    let reg = registry_with_images();
    let build_dir = tempfile::tempdir().unwrap();
    let disk = build_dir.path().join("bb.erofs");
    cache_build(&reg, build_dir.path(), &[&reg.busybox], &disk);
    let node = tempfile::tempdir().unwrap();

    let out = imc()
        .arg("run")
        .arg("--data-dir")
        .arg(node.path())
        .arg("--cache")
        .arg(&disk)
        .args(reg.flags())
        .arg(&reg.partial)
        .output()
        .unwrap();

    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "partial-top");
    let blobs = blobs(node.path());
    assert!(
        blobs.contains(&reg.partial_top.digest.hex().to_string()),
        "top layer downloaded: {blobs:?}"
    );
    assert!(
        !blobs.contains(&reg.base.digest.hex().to_string()),
        "base layer must not be downloaded: {blobs:?}"
    );
    assert_eq!(
        layers(node.path()),
        vec![reg.partial_top.diff_id.hex().to_string()],
        "only the top layer unpacked"
    );
}

#[test]
fn without_a_cache_the_whole_image_is_pulled_then_run() {
    let reg = registry_with_images();
    let node = tempfile::tempdir().unwrap();

    let out = imc()
        .arg("run")
        .arg("--data-dir")
        .arg(node.path())
        .args(reg.flags())
        .arg(&reg.partial)
        .output()
        .unwrap();

    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "partial-top");
    let mut layers = layers(node.path());
    layers.sort();
    let mut want = vec![
        reg.base.diff_id.hex().to_string(),
        reg.partial_top.diff_id.hex().to_string(),
    ];
    want.sort();
    assert_eq!(layers, want);
}
