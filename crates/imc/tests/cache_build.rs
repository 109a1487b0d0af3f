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

/// Whether process `pid` is gone (or a zombie nobody reaped yet: it runs no more either).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[test]
fn a_killed_build_takes_mkfs_with_it_and_the_next_build_removes_its_temporary_disk() {
    use imc_testkit::kubectl::PATIENCE;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    let reg = registry_with_images();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out_dir = tmp.path().join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let output = out_dir.join("bb.erofs");
    // A mkfs.erofs that starts writing the disk, says so, and then never ends.
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let marker = tmp.path().join("mkfs.pid");
    let fake = bin.join("mkfs.erofs");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\n# --quiet -U<uuid> OUTPUT TREE\necho half-written > \"$3\"\necho $$ > {}.tmp\nmv {}.tmp {}\nexec sleep 600\n",
            marker.display(),
            marker.display(),
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut build = imc()
        .env("PATH", path)
        .args(["cache", "build", "--backend", "erofs", "--data-dir"])
        .arg(&data)
        .args(reg.flags())
        .arg("--output")
        .arg(&output)
        .args(["--image", &reg.busybox])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let mkfs: u32 = loop {
        if let Ok(pid) = std::fs::read_to_string(&marker) {
            break pid.trim().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "mkfs.erofs never started");
        assert!(build.try_wait().unwrap().is_none(), "the build ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let temp_disks = || -> Vec<String> {
        std::fs::read_dir(&out_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".bb.erofs.imc-tmp-"))
            .collect()
    };
    assert_eq!(
        temp_disks().len(),
        1,
        "precondition: the disk is being written"
    );

    build.kill().unwrap();
    build.wait().unwrap();
    // mkfs.erofs dies with its parent.
    let deadline = Instant::now() + PATIENCE;
    while !process_gone(mkfs) {
        assert!(
            Instant::now() < deadline,
            "mkfs.erofs (pid {mkfs}) outlived the killed build"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        temp_disks().len(),
        1,
        "the killed build left its temporary disk"
    );
    assert!(!output.exists());

    // The next build (real mkfs.erofs) removes it and writes the disk.
    cache_build(&reg, &data, &[&reg.busybox], &output);
    assert_eq!(temp_disks(), Vec::<String>::new());
    assert_eq!(inspect(&output)["images"].as_array().unwrap().len(), 1);
}
