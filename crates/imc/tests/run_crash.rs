//! After `kill -9` of imc mid-run, the next start cleans up: no stale mount, loop device, runc
//! container or pod left.

mod run_support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use run_support::{busybox_cache, imc, loops_backed_by, mounts_under};

#[test]
fn next_start_after_kill_9_leaves_nothing_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let (reg, disk) = busybox_cache(tmp.path());
    let mut victim = imc()
        .arg("run")
        .arg("--data-dir")
        .arg(tmp.path())
        .arg("--cache")
        .arg(&disk)
        .arg(&reg.busybox)
        .args(["--", "sh", "-c", "echo ready; sleep 600"])
        .stdout(Stdio::piped())
        // Not the test harness's own stderr: a container outliving a failed test would hold
        // that pipe open and hang the run.
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(victim.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
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
