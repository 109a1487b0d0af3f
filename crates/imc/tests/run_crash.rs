//! After `kill -9` of imc mid-run, the next start cleans up: no stale mount, loop device, runc
//! container or pod left.

mod run_support;

use std::process::Stdio;

use run_support::{busybox_cache, imc, loops_backed_by, mounts_under, run_until_ready};

#[test]
fn next_start_after_kill_9_leaves_nothing_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, disk) = busybox_cache(tmp.path());
    let (mut victim, _out) =
        run_until_ready(tmp.path(), &disk, &reg.busybox, "echo ready; sleep 600");
    assert_eq!(loops_backed_by(&disk), 1);

    // SIGKILL: imc gets no chance to clean anything.
    victim.kill().unwrap();
    victim.wait().unwrap();
    assert!(
        !mounts_under(tmp.path()).is_empty(),
        "the crash leaves mounts behind (precondition)"
    );

    let out = imc()
        .arg("run")
        .arg("--data-dir")
        .arg(tmp.path())
        .arg("--cache")
        .arg(&disk)
        .arg(&reg.busybox)
        .args(["--", "echo", "after-crash"])
        .output()
        .unwrap();

    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "after-crash\n");
    assert_eq!(mounts_under(tmp.path()), Vec::<String>::new());
    assert_eq!(loops_backed_by(&disk), 0);
    let runc_state: Vec<_> = std::fs::read_dir(tmp.path().join("run/runc"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        runc_state.is_empty(),
        "runc containers left: {runc_state:?}"
    );
    let pods: Vec<_> = std::fs::read_dir(tmp.path().join("pods"))
        .unwrap()
        .flatten()
        .collect();
    assert!(pods.is_empty(), "pods left: {pods:?}");
}

/// Starts `imc run` of a container that prints "ready" and sleeps, waits for "ready".
fn start_sleeper(
    data: &std::path::Path,
    disk: &std::path::Path,
    image: &str,
) -> std::process::Child {
    run_until_ready(data, disk, image, "echo ready; exec sleep 600").0
}

/// Sets or clears the immutable attribute (root cannot remove an immutable file either).
fn immutable(path: &std::path::Path, on: bool) {
    let status = std::process::Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "chattr on {}", path.display());
}

#[test]
fn recovery_goes_past_strays_and_leaves_no_mount_runc_container_or_loop_device() {
    use imc_testkit::leftovers::{loop_devices_under, runc_containers};
    use std::os::unix::ffi::OsStrExt;

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (reg, disk) = busybox_cache(&data);
    let pods = data.join("pods");

    // Two pods of `imc run`s that die with -9. The second one's container also loses its record
    // (so no record names its runc container), and a stuck `runc init` (created, never started,
    // named by nothing) is added from the first one's bundle.
    let mut first = start_sleeper(&data, &disk, &reg.busybox);
    let mut second = start_sleeper(&data, &disk, &reg.busybox);
    let bundle = pods.join(format!("run-{}/main", first.id()));
    let stuck = std::process::Command::new("runc")
        .arg("--root")
        .arg(data.join("run/runc"))
        .args(["create", "--bundle"])
        .arg(&bundle)
        .arg("stuck-init")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(stuck.success(), "runc create of the stuck container");
    for victim in [&mut first, &mut second] {
        victim.kill().unwrap();
        victim.wait().unwrap();
    }
    std::fs::remove_file(pods.join(format!("run-{}/main/container.json", second.id()))).unwrap();
    assert_eq!(
        runc_containers(&data).len(),
        3,
        "precondition: three runc containers"
    );
    assert!(
        !mounts_under(&pods).is_empty(),
        "precondition: rootfs and netns mounts"
    );

    // What else may be in DIR/pods: a stray file, a bogus dir, a name that is not UTF-8, a pod
    // without owner record, an unreadable record, a symlink out of DIR/pods, and something
    // that cannot be removed.
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious"), "keep me").unwrap();
    std::fs::write(pods.join("stray-file"), "x").unwrap();
    std::fs::create_dir_all(pods.join("bogus/dir")).unwrap();
    std::fs::create_dir_all(pods.join(std::ffi::OsStr::from_bytes(b"\xff\xfe"))).unwrap();
    std::fs::create_dir_all(pods.join("no-owner/app/rootfs")).unwrap();
    std::fs::create_dir_all(pods.join("corrupt/app")).unwrap();
    std::fs::write(pods.join("corrupt/owner.json"), "{not json").unwrap();
    std::fs::write(pods.join("corrupt/app/container.json"), "[").unwrap();
    std::os::unix::fs::symlink(&outside, pods.join("escape")).unwrap();
    std::os::unix::fs::symlink(&outside, pods.join("no-owner/app/link")).unwrap();
    let stuck_file = pods.join("undeletable/app/file");
    std::fs::create_dir_all(stuck_file.parent().unwrap()).unwrap();
    std::fs::write(&stuck_file, "x").unwrap();
    immutable(&stuck_file, true);

    // The next start recovers.
    let out = imc()
        .arg("run")
        .arg("--data-dir")
        .arg(&data)
        .arg("--cache")
        .arg(&disk)
        .arg(&reg.busybox)
        .args(["--", "echo", "after-crash"])
        .output()
        .unwrap();
    immutable(&stuck_file, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "after-crash\n");

    assert_eq!(
        mounts_under(&data),
        Vec::<String>::new(),
        "no mount (rootfs, netns, cache)"
    );
    assert_eq!(
        runc_containers(&data),
        Vec::<String>::new(),
        "no runc container"
    );
    assert_eq!(loop_devices_under(&data), Vec::<std::path::PathBuf>::new());
    assert_eq!(
        std::fs::read_to_string(outside.join("precious")).unwrap(),
        "keep me",
        "nothing outside DIR/pods is touched"
    );
    let mut left: Vec<String> = std::fs::read_dir(&pods)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["undeletable"],
        "everything else in DIR/pods is removed"
    );
    // The one leftover is reported once, as a warning naming it.
    let reports: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("undeletable"))
        .collect();
    assert_eq!(reports.len(), 1, "reported once: {stderr}");
    assert!(reports[0].contains("WARN"), "{}", reports[0]);
}
