//! `imc run` forwards Ctrl-C and SIGTERM to the container, kills one that ignores them after a
//! grace period, and cleans up either way.

mod run_support;

use std::io::Read;
use std::path::Path;
use std::process::Child;

use run_support::{busybox_cache, loops_backed_by, mounts_under, run_until_ready};

fn signal(child: &Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .args(["-s", sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn assert_clean(data: &Path, disk: &Path) {
    assert_eq!(mounts_under(data), Vec::<String>::new());
    assert_eq!(loops_backed_by(disk), 0);
    assert_eq!(
        std::fs::read_dir(data.join("run/runc")).unwrap().count(),
        0,
        "runc state left"
    );
    assert_eq!(
        std::fs::read_dir(data.join("pods")).unwrap().count(),
        0,
        "pod dirs left"
    );
}

#[test]
fn ctrl_c_reaches_the_container_and_its_exit_code_is_returned() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, disk) = busybox_cache(tmp.path());
    let (mut child, mut out) = run_until_ready(
        tmp.path(),
        &disk,
        &reg.busybox,
        "trap 'echo got-int; exit 3' INT; echo ready; while :; do sleep 0.1; done",
    );

    signal(&child, "INT");
    let status = child.wait().unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();

    assert_eq!(status.code(), Some(3));
    assert_eq!(rest, "got-int\n");
    assert_clean(tmp.path(), &disk);
}

#[test]
fn sigterm_ignored_by_the_container_ends_in_a_kill_and_a_clean_host() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, disk) = busybox_cache(tmp.path());
    // As pid 1 without a handler, sh ignores SIGTERM.
    let (mut child, _out) = run_until_ready(
        tmp.path(),
        &disk,
        &reg.busybox,
        "echo ready; while :; do sleep 0.1; done",
    );

    signal(&child, "TERM");
    let status = child.wait().unwrap();

    assert_eq!(
        status.code(),
        Some(128 + 9),
        "killed after the grace period"
    );
    assert_clean(tmp.path(), &disk);
}
