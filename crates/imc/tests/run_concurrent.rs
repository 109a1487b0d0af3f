//! Twenty `imc run --cache` at once: all succeed, the disk is attached exactly once, and
//! detached after the last container exits.

mod run_support;

use std::process::Stdio;

use run_support::{busybox_cache, imc, loops_backed_by, mounts_at};

#[test]
fn twenty_containers_from_one_cache_share_one_attachment() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, disk) = busybox_cache(tmp.path());
    let id_dir = tmp.path().join("run/caches");

    let mut children: Vec<_> = (0..20)
        .map(|i| {
            imc()
                .arg("run")
                .arg("--data-dir")
                .arg(tmp.path())
                .arg("--cache")
                .arg(&disk)
                .arg(&reg.busybox)
                .args(["--", "sh", "-c", &format!("echo container-{i}; sleep 5")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();

    // Sample the host while they run: at most one mount and one loop device, ever.
    let mut max_mounts = 0;
    let mut max_loops = 0;
    let mut max_users = 0;
    while children.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        let mounts: usize = std::fs::read_dir(&id_dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| mounts_at(&e.path()))
                    .sum()
            })
            .unwrap_or(0);
        max_mounts = max_mounts.max(mounts);
        max_loops = max_loops.max(loops_backed_by(&disk));
        max_users = max_users.max(recorded_users(&id_dir));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "container {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("container-{i}\n")
        );
    }

    assert_eq!(
        max_mounts, 1,
        "the disk must be mounted exactly once while containers run"
    );
    assert_eq!(max_loops, 1, "the disk must be on exactly one loop device");
    assert_eq!(
        max_users, 20,
        "all twenty containers used the one attachment at once"
    );
    assert_eq!(
        loops_backed_by(&disk),
        0,
        "detached after the last container"
    );
    let left: Vec<_> = std::fs::read_dir(&id_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(left.is_empty(), "mount points left: {left:?}");
}

/// Users recorded in the attachments' refs files.
fn recorded_users(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".refs"))
                .filter_map(|e| std::fs::read(e.path()).ok())
                .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .map(|v| v["users"].as_array().map_or(0, |u| u.len()))
                .sum()
        })
        .unwrap_or(0)
}
