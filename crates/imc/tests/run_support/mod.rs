//! Shared by the `run_*` tests: a busybox image on a real EROFS cache disk, the imc binary, and
//! what the host shows of mounts and loop devices.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use imc_api::Digest;
use imc_snapshot::{BackendChoice, BuildImage, BuildOptions, SnapshotBuilder};

/// The reference of the busybox image on the disk made by [`busybox_cache`].
pub const IMAGE: &str = "registry.test/imc/busybox:1";

/// Applets linked in the base layer.
pub const APPLETS: &[&str] = &[
    "sh", "cat", "ls", "echo", "stat", "readlink", "id", "touch", "rm", "mkdir", "sleep", "test",
    "sync", "find", "chmod", "ln", "mount", "true", "head", "wc", "dd",
];

/// Writes the base layer tree (Debian's busybox-static as /bin/busybox plus applet symlinks) into
/// `dir`.
pub fn busybox_tree(dir: &Path) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::create_dir_all(dir.join("tmp")).unwrap();
    fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .expect("busybox-static must be installed (/bin/busybox)");
    for applet in APPLETS {
        symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

/// Builds a data dir whose layer store holds the busybox layer, and an EROFS cache disk holding
/// the image [`IMAGE`]. Returns the disk.
pub fn busybox_cache(data_dir: &Path) -> PathBuf {
    let layer = Digest::of(b"imc-test-busybox-layer");
    let layers = data_dir.join("layers/sha256");
    busybox_tree(&layers.join(layer.hex()));
    let builder = SnapshotBuilder::new(move |d: &Digest| layers.join(d.hex()));
    let disk = data_dir.join("caches/busybox.erofs");
    fs::create_dir_all(disk.parent().unwrap()).unwrap();
    let image = BuildImage {
        reference: IMAGE.to_string(),
        manifest_digest: Digest::of(b"imc-test-busybox-manifest"),
        config: serde_json::json!({"config": {"Cmd": ["sh"]}}),
        layers: vec![layer],
    };
    let options = BuildOptions {
        output: disk.clone(),
        size_limit: 1 << 30,
        backend: BackendChoice::Erofs,
        work_dir: data_dir.join("tmp"),
    };
    builder.build(&[image], &options).unwrap();
    disk
}

/// `imc` with `--data-dir`-independent setup (RUST_LOG quiet).
pub fn imc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imc"));
    c.env("RUST_LOG", "warn");
    c
}

/// Mounts whose mount point is `path`.
pub fn mounts_at(path: &Path) -> usize {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_string_lossy().into_owned();
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(p.as_str()))
        .count()
}

/// Mounts under `dir` (any depth).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = format!("{}/", dir.to_string_lossy());
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Loop devices backed by `disk`.
pub fn loops_backed_by(disk: &Path) -> usize {
    let canonical = fs::canonicalize(disk).unwrap();
    fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("loop/backing_file")).ok())
        .filter(|b| Path::new(b.trim_end()) == canonical)
        .count()
}

/// sha256 of a file, hex.
pub fn sha256(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(fs::read(path).unwrap()))
}
