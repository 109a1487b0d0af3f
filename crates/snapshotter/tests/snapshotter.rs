//! The snapshotter through containerd's interface, on a real cache disk (EROFS when this host
//! can, else a directory disk), real mounts and a real SQLite store: what containerd's unpacker
//! and runtime see, without containerd (tests/e2e_snapshotter.rs in the imc crate runs it under
//! real containerd).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Kind, Snapshotter};
use futures::StreamExt;
use imc_api::Digest;
use imc_snapshot::{BackendChoice, BuildImage, BuildOptions, SnapshotBuilder};
use imc_snapshotter::chain::chain_id;
use imc_snapshotter::{ImcSnapshotter, LABEL_SNAPSHOT_REF};

/// A data dir with one cache disk holding an image of two layers: `bin/lower` in the first,
/// `bin/upper` in the second. Returns (data dir guard, data dir, diffIDs).
fn data_dir_with_disk() -> (tempfile::TempDir, PathBuf, Vec<Digest>) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let layers = tmp.path().join("layers");
    let mut diff_ids = Vec::new();
    for (i, name) in ["lower", "upper"].iter().enumerate() {
        let diff: Digest = format!("sha256:{}", format!("{i}").repeat(64))
            .parse()
            .unwrap();
        let dir = layers.join(diff.hex());
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin").join(name), name).unwrap();
        diff_ids.push(diff);
    }
    let store = layers.clone();
    let builder = SnapshotBuilder::new(move |d| store.join(d.hex()));
    std::fs::create_dir_all(data.join("caches")).unwrap();
    std::fs::create_dir_all(data.join("tmp")).unwrap();
    builder
        .build(
            &[BuildImage {
                reference: "registry.example/app:v1".into(),
                manifest_digest: Digest::of(b"manifest"),
                config: serde_json::json!({}),
                layers: diff_ids.clone(),
            }],
            &BuildOptions {
                output: data.join("caches/app.erofs"),
                size_limit: 1 << 30,
                backend: BackendChoice::Auto,
                work_dir: data.join("tmp"),
            },
        )
        .unwrap();
    (tmp, data, diff_ids)
}

fn target(chain: &Digest) -> HashMap<String, String> {
    HashMap::from([(LABEL_SNAPSHOT_REF.to_string(), chain.to_string())])
}

/// Mounts `mounts` (one bind or overlay) at `at` and reads `files` from it.
fn read_through(mounts: &[Mount], at: &Path, files: &[&str]) -> Vec<String> {
    assert_eq!(mounts.len(), 1);
    let m = &mounts[0];
    std::fs::create_dir_all(at).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", &m.r#type, "-o", &m.options.join(","), &m.source])
        .arg(at)
        .status()
        .unwrap();
    assert!(status.success(), "mount {m:?}");
    let read = files
        .iter()
        .map(|f| std::fs::read_to_string(at.join(f)).unwrap_or_else(|e| format!("({e})")))
        .collect();
    let _ = std::process::Command::new("umount").arg(at).status();
    read
}

fn is_mounted(dir: &Path) -> bool {
    imc_snapshot::is_mount_point(dir)
}

#[tokio::test]
async fn cached_layers_are_reported_present_and_served_from_the_disk() {
    let (tmp, data, diffs) = data_dir_with_disk();
    let sn = ImcSnapshotter::open(&data).unwrap();
    let c1 = chain_id(None, &diffs[0]);
    let c2 = chain_id(Some(&c1), &diffs[1]);

    // What containerd's unpacker does per layer: Prepare with the chain ID as target.
    let e = sn
        .prepare("default/1/extract-1 c1".into(), String::new(), target(&c1))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        containerd_snapshots::tonic::Code::AlreadyExists,
        "{e}"
    );
    // ... then finds the committed snapshot by Walk with this filter.
    let filter = format!(r#"labels."{LABEL_SNAPSHOT_REF}"=={c1},parent=="""#);
    let found: Vec<_> = sn
        .list(String::new(), vec![filter])
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await;
    assert_eq!(found.len(), 1);
    let found = found.into_iter().next().unwrap().unwrap();
    assert_eq!(found.kind, Kind::Committed);
    assert_eq!(found.name, c1.to_string());
    let e = sn
        .prepare("default/2/extract-2 c2".into(), c1.to_string(), target(&c2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), containerd_snapshots::tonic::Code::AlreadyExists);
    // Another namespace pulling the same image gets the same answer, no second snapshot.
    let e = sn
        .prepare("k8s.io/9/extract-9 c1".into(), String::new(), target(&c1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), containerd_snapshots::tonic::Code::AlreadyExists);

    // A container's rootfs over the two cached layers: written in its own upper dir.
    let mounts = sn
        .prepare("default/3/ctr".into(), c2.to_string(), HashMap::new())
        .await
        .unwrap();
    assert_eq!(mounts[0].r#type, "overlay");
    let at = tmp.path().join("rootfs");
    assert_eq!(
        read_through(&mounts, &at, &["bin/lower", "bin/upper"]),
        ["lower", "upper"]
    );

    // A layer no disk holds is prepared as a normal active snapshot for containerd to apply.
    let other: Digest = format!("sha256:{}", "f".repeat(64)).parse().unwrap();
    let c3 = chain_id(Some(&c2), &other);
    let mounts = sn
        .prepare("default/4/extract-4 c3".into(), c2.to_string(), target(&c3))
        .await
        .unwrap();
    assert!(mounts[0].options.iter().any(|o| o.starts_with("upperdir=")));
    let usage = sn.usage(c1.to_string()).await.unwrap();
    assert!(usage.size > 0 && usage.inodes >= 3, "{usage:?}");

    // Restarted: everything is still there and served.
    drop(sn);
    let sn = ImcSnapshotter::open(&data).unwrap();
    let status = sn.status().unwrap();
    assert_eq!(status.snapshots.get("committed"), Some(&2), "{status:?}");
    assert_eq!(status.snapshots.get("active"), Some(&2), "{status:?}");
    let mounts = sn.mounts("default/3/ctr".into()).await.unwrap();
    assert_eq!(
        read_through(&mounts, &at, &["bin/lower", "bin/upper"]),
        ["lower", "upper"]
    );

    // The disk stays attached while a snapshot uses it, and is released after the last.
    let attached = data.join("run/caches");
    let mount_points: Vec<PathBuf> = std::fs::read_dir(&attached)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(mount_points.len(), 1, "{mount_points:?}");
    assert!(is_mounted(&mount_points[0]));
    let e = sn.remove(c2.to_string()).await.unwrap_err();
    assert_eq!(
        e.code(),
        containerd_snapshots::tonic::Code::FailedPrecondition,
        "a parent cannot go first: {e}"
    );
    for key in ["default/3/ctr", "default/4/extract-4 c3", &c2.to_string()] {
        sn.remove(key.to_string()).await.unwrap();
    }
    assert!(is_mounted(&mount_points[0]), "c1 still uses the disk");
    sn.remove(c1.to_string()).await.unwrap();
    assert!(!is_mounted(&mount_points[0]), "released once unused");
    let left: Vec<_> = sn
        .list(String::new(), vec![])
        .await
        .unwrap()
        .collect::<Vec<_>>()
        .await;
    assert!(left.is_empty());
    let dirs = std::fs::read_dir(data.join("snapshotter/snapshots"))
        .unwrap()
        .count();
    assert_eq!(dirs, 0, "local snapshot directories removed");
}

#[tokio::test]
async fn a_parent_of_unknown_content_or_an_unknown_target_unpacks_normally() {
    let (_tmp, data, diffs) = data_dir_with_disk();
    let sn = ImcSnapshotter::open(&data).unwrap();
    // A local bottom layer without a chain label: nothing on top of it can be matched.
    sn.prepare("a".into(), String::new(), HashMap::new())
        .await
        .unwrap();
    sn.commit("local".into(), "a".into(), HashMap::new())
        .await
        .unwrap();
    let c = chain_id(Some(&diffs[0]), &diffs[1]);
    let mounts = sn
        .prepare("b".into(), "local".into(), target(&c))
        .await
        .unwrap();
    assert!(mounts[0].options.iter().any(|o| o.starts_with("upperdir=")));
    // Target not a digest: normal.
    let mut odd = HashMap::new();
    odd.insert(LABEL_SNAPSHOT_REF.to_string(), "not-a-digest".to_string());
    sn.prepare("c".into(), String::new(), odd).await.unwrap();
    assert_eq!(
        sn.status().unwrap().disks_in_use.len(),
        0,
        "no disk attached"
    );
}
