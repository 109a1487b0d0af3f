//! Building cache disks with the real mkfs.erofs, and reading them back through a real loop mount.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use imc_api::Digest;
use imc_snapshot::{
    Backend, BackendChoice, BuildImage, BuildOptions, DiskKind, SnapshotBuilder, SnapshotDisk,
    SnapshotError,
};
use sha2::Digest as _;

/// A fake layer store: `root/layers/sha256/<hex>/` trees made directly on disk.
struct Store {
    root: PathBuf,
}

impl Store {
    fn layer(&self, name: &str, files: &[(&str, &[u8])]) -> Digest {
        let d = Digest::of(name.as_bytes());
        let dir = self.root.join("layers/sha256").join(d.hex());
        for (path, content) in files {
            let p = dir.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, content).unwrap();
        }
        fs::create_dir_all(&dir).unwrap();
        d
    }

    fn builder(&self) -> SnapshotBuilder {
        let root = self.root.clone();
        SnapshotBuilder::new(move |d: &Digest| root.join("layers/sha256").join(d.hex()))
    }

    fn options(&self, output: &Path, backend: BackendChoice) -> BuildOptions {
        BuildOptions {
            output: output.to_path_buf(),
            size_limit: 1 << 30,
            backend,
            work_dir: self.root.join("tmp"),
        }
    }
}

fn image(reference: &str, layers: &[&Digest]) -> BuildImage {
    BuildImage {
        reference: reference.to_string(),
        manifest_digest: Digest::of(reference.as_bytes()),
        config: serde_json::json!({"config": {"Cmd": ["sh"]}}),
        layers: layers.iter().map(|d| (*d).clone()).collect(),
    }
}

fn sha256_file(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(fs::read(path).unwrap()))
}

fn store() -> (tempfile::TempDir, Store) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store {
        root: tmp.path().to_path_buf(),
    };
    (tmp, store)
}

#[test]
fn erofs_disk_holds_each_layer_once_and_is_byte_identical_across_builds() {
    let (tmp, store) = store();
    let base = store.layer("base", &[("bin/tool", b"tool-v1"), ("etc/conf", b"a=1")]);
    let app1 = store.layer("app1", &[("app/one", b"one")]);
    let app2 = store.layer("app2", &[("app/two", b"two")]);
    fs::set_permissions(
        store
            .root
            .join("layers/sha256")
            .join(base.hex())
            .join("bin/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    let images = [
        image("r.example/a:1", &[&base, &app1]),
        image("r.example/b:1", &[&base, &app2]),
    ];

    let out1 = tmp.path().join("one.erofs");
    let out2 = tmp.path().join("two.erofs");
    let report = store
        .builder()
        .build(&images, &store.options(&out1, BackendChoice::Erofs))
        .unwrap();
    // Different mtime of the builder's own scratch dirs must not matter.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    store
        .builder()
        .build(&images, &store.options(&out2, BackendChoice::Erofs))
        .unwrap();

    assert_eq!(report.backend, Backend::Erofs);
    assert_eq!(report.layers, 3);
    assert_eq!(report.unpacked_size, 7 + 3 + 3 + 3);
    assert_eq!(
        sha256_file(&out1),
        sha256_file(&out2),
        "same inputs must give a byte-identical disk"
    );
    // No temporary or staging leftovers next to the output or in the work dir.
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "leftovers: {leftovers:?}");
    assert_eq!(fs::read_dir(store.root.join("tmp")).unwrap().count(), 0);

    let disk = SnapshotDisk::inspect(&out1).unwrap();
    assert_eq!(disk.kind, DiskKind::Erofs);
    assert_eq!(disk.index.disk_id, report.disk_id);
    assert_eq!(disk.index.images.len(), 2);
    assert_eq!(
        disk.index.images[1].layers,
        vec![base.clone(), app2.clone()]
    );
    assert_eq!(
        disk.index.layer_path(&app1),
        Some(format!("layers/sha256/{}", app1.hex()).as_str())
    );

    // Content and modes on the disk, read through a real loop mount.
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "erofs", "-o", "ro,loop"])
        .arg(&out1)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(status.success());
    let tool = mnt.join("layers/sha256").join(base.hex()).join("bin/tool");
    let content = fs::read(&tool);
    let mode = fs::metadata(&tool).map(|m| m.mode() & 0o7777);
    std::process::Command::new("umount")
        .arg(&mnt)
        .status()
        .unwrap();
    assert_eq!(content.unwrap(), b"tool-v1");
    assert_eq!(mode.unwrap(), 0o4755);
}

#[test]
fn oversized_content_is_refused_with_both_sizes_and_leaves_no_output() {
    let (tmp, store) = store();
    let big = store.layer("big", &[]);
    // A sparse file: 3 GiB of apparent size, no blocks.
    let f = fs::File::create(
        store
            .root
            .join("layers/sha256")
            .join(big.hex())
            .join("huge"),
    )
    .unwrap();
    f.set_len(3 << 30).unwrap();
    let out = tmp.path().join("big.erofs");
    let mut options = store.options(&out, BackendChoice::Erofs);
    options.size_limit = 2 << 30;

    let err = store
        .builder()
        .build(&[image("r.example/big:1", &[&big])], &options)
        .unwrap_err();

    assert!(
        matches!(err, SnapshotError::TooLarge { unpacked, limit } if unpacked == 3 << 30 && limit == 2 << 30)
    );
    let msg = err.to_string();
    assert!(
        msg.contains("3.00 GiB") && msg.contains("2.00 GiB"),
        "{msg}"
    );
    assert!(!out.exists());
    assert_eq!(
        fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .count(),
        0
    );
}

#[test]
fn directory_backend_writes_tree_and_index() {
    let (tmp, store) = store();
    let base = store.layer("base", &[("etc/os-release", b"ID=test")]);
    let out = tmp.path().join("dir-cache");

    let report = store
        .builder()
        .build(
            &[image("r.example/a:1", &[&base])],
            &store.options(&out, BackendChoice::Directory),
        )
        .unwrap();

    assert_eq!(report.backend, Backend::Directory);
    assert_eq!(
        fs::read(
            out.join("layers/sha256")
                .join(base.hex())
                .join("etc/os-release")
        )
        .unwrap(),
        b"ID=test"
    );
    let disk = SnapshotDisk::inspect(&out).unwrap();
    assert_eq!(disk.kind, DiskKind::Directory);
    assert_eq!(disk.index.images[0].reference, "r.example/a:1");
}

#[test]
fn missing_layer_names_image_and_digest() {
    let (tmp, store) = store();
    let ghost = Digest::of(b"ghost");
    let err = store
        .builder()
        .build(
            &[image("r.example/ghost:1", &[&ghost])],
            &store.options(&tmp.path().join("g.erofs"), BackendChoice::Erofs),
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("r.example/ghost:1") && msg.contains(ghost.hex()),
        "{msg}"
    );
}

#[test]
fn an_index_pointing_outside_the_disk_is_rejected() {
    let (tmp, store) = store();
    let base = store.layer("base", &[("f", b"x")]);
    let out = tmp.path().join("evil");
    store
        .builder()
        .build(
            &[image("r.example/a:1", &[&base])],
            &store.options(&out, BackendChoice::Directory),
        )
        .unwrap();
    let index_path = out.join("index.json");
    let text = fs::read_to_string(&index_path)
        .unwrap()
        .replace(&format!("layers/sha256/{}", base.hex()), "../../../etc");
    fs::write(&index_path, text).unwrap();

    let err = SnapshotDisk::inspect(&out).unwrap_err();

    assert!(matches!(err, SnapshotError::InvalidIndex { .. }), "{err}");
    assert!(err.to_string().contains("../../../etc"), "{err}");
}
