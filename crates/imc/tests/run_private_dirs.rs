//! The data dir keeps images' setuid binaries out of other users' reach (issue 8 item 5, the
//! pattern of Moby CVE-2021-41091): every directory imc keeps in it is 0700, one left 0755 by an
//! older imc is tightened at the next start, and a non-root user can reach neither the layer
//! trees, nor a running pod's rootfs, nor a cache mount. Containers still run, also as a
//! non-root user (their processes never traverse the data dir).

mod run_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use run_support::{cache_build, imc, non_root_image, push, registry_with_images, run_until_ready};

/// Every directory imc keeps directly in the data dir (and the data dir itself).
const PRIVATE: &[&str] = &[
    "",
    "blobs",
    "layers",
    "images",
    "locks",
    "tmp",
    "caches",
    "pods",
    "run",
    "run/runc",
    "run/caches",
];

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `command PATH` as user nobody: (success, stderr).
fn as_nobody(command: &str, path: &Path) -> (bool, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", command])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The unpacked layer of the store holding `rel` (the first one found).
fn in_some_layer(data: &Path, rel: &str) -> PathBuf {
    std::fs::read_dir(data.join("layers/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join(rel))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no layer holds {rel}"))
}

#[test]
fn other_users_reach_no_layer_tree_pod_rootfs_or_cache_mount() {
    let reg = registry_with_images();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // What an older imc left: everything 0755.
    for d in PRIVATE {
        let p = data.join(d);
        std::fs::create_dir_all(&p).unwrap();
        chmod(&p, 0o755);
    }
    let disk = data.join("caches/layered.erofs");
    cache_build(&reg, &data, &[&reg.layered], &disk);
    let (mut run, _out) = run_until_ready(&data, &disk, &reg.layered, "echo ready; exec sleep 600");

    for d in PRIVATE {
        assert_eq!(mode(&data.join(d)), 0o700, "DIR/{d} after the start");
    }

    // Even with the data dir (and the temp dir above it) opened up again, nobody gets further.
    chmod(tmp.path(), 0o755);
    chmod(&data, 0o755);
    let pod_rootfs = data.join(format!("pods/run-{}/main/rootfs", run.id()));
    let cache_mount = std::fs::read_dir(data.join("run/caches"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .expect("the cache disk is mounted under DIR/run/caches");
    let setuid = "data/setuid";
    assert!(
        pod_rootfs.join(setuid).exists(),
        "the pod runs (precondition)"
    );
    assert!(
        as_nobody("ls", &data).0,
        "nobody can list the data dir itself now (the test can fail)"
    );
    // Listing a directory, and going through it (`stat DIR/.`, `stat` of a file in it).
    let mut attempts: Vec<(&str, PathBuf)> = Vec::new();
    for d in ["layers", "pods", "run", "caches", "blobs", "images", "tmp"] {
        attempts.push(("ls", data.join(d)));
        attempts.push(("stat", data.join(d).join(".")));
    }
    attempts.push(("stat", in_some_layer(&data, setuid)));
    attempts.push(("stat", pod_rootfs.join(setuid)));
    attempts.push(("ls", cache_mount.clone()));
    for (command, target) in &attempts {
        let (ok, stderr) = as_nobody(command, target);
        assert!(
            !ok && stderr.contains("Permission denied"),
            "nobody could {command} {}: {stderr}",
            target.display()
        );
    }

    let _ = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status();
    run.wait().unwrap();
}

#[test]
fn a_non_root_image_runs_with_the_data_dir_private() {
    let reg = registry_with_images();
    let image = push(
        &reg,
        "imc/non-root",
        &non_root_image(&["sh", "-c", "id -u; id -g; echo hi > /tmp/f; cat /tmp/f"]),
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = imc()
        .arg("run")
        .arg("--data-dir")
        .arg(tmp.path())
        .args(reg.flags())
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1000\n1000\nhi\n");
    for d in ["", "layers", "pods", "run"] {
        assert_eq!(mode(&tmp.path().join(d)), 0o700, "DIR/{d}");
    }
}
