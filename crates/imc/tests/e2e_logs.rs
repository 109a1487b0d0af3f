//! Container logs end to end (issue 8 item 6): a real `imc server`, real runc, real kubectl.
//! Output goes to CRI-format files rotated kubelet-style (`--container-log-max-size`,
//! `--container-log-max-files`); `kubectl logs` reads them with `--tail` (backwards, memory
//! bounded), `-f` (across rotations), `--timestamps`, `--since`/`--since-time` and
//! `--limit-bytes`; container names that are not the pod's are refused.

mod run_support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::{PATIENCE, pod_running};
use run_support::{Registry, registry_with_images};
use serde_json::{Value, json};

const NODE: &str = "imc-logs-node";

fn start_server(reg: &Registry, extra: &[&str]) -> TestServer {
    let mut args = vec![
        "--node-name".to_owned(),
        NODE.to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts")
}

fn pod(name: &str, image: &str, script: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "app", "image": image, "command": ["sh", "-c", script]}]}})
}

/// A shell loop waiting for the test to create `/go` in the container.
const WAIT_FOR_GO: &str = "while ! test -e /go; do sleep 0.1; done";

/// `DIR/pods/<uid>/app` of a running pod.
fn container_dir(server: &TestServer, name: &str) -> PathBuf {
    let pod = server.wait_for("pod", name, "Running", pod_running);
    let uid = pod["metadata"]["uid"].as_str().expect("a pod has a uid");
    server.data_dir().join("pods").join(uid).join("app")
}

/// Lets a container waiting in [`WAIT_FOR_GO`] go on: the file is created through the host's
/// view of its overlay rootfs.
fn release(dir: &std::path::Path) {
    std::fs::write(dir.join("rootfs/go"), "").unwrap();
}

/// `DIR/logs/<uid>/app`, where the node keeps the logs of the container whose dir is
/// `DIR/pods/<uid>/app`.
fn logs_of(container_dir: &std::path::Path) -> PathBuf {
    let pod_dir = container_dir
        .parent()
        .expect("a container dir is in its pod dir");
    let data_dir = pod_dir
        .parent()
        .and_then(|p| p.parent())
        .expect("DIR/pods/<uid>");
    data_dir
        .join("logs")
        .join(pod_dir.file_name().expect("a pod uid"))
        .join("app")
}

/// The container's log files: (name, size), sorted.
fn log_files(container_dir: &std::path::Path) -> Vec<(String, u64)> {
    let dir = logs_of(container_dir);
    let mut files: Vec<(String, u64)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("container.log"))
        .map(|n| {
            let size = std::fs::metadata(dir.join(&n)).unwrap().len();
            (n, size)
        })
        .collect();
    files.sort();
    files
}

/// Polls `kubectl logs <args>` until its output is `want` (within [`PATIENCE`]).
fn wait_for_logs(server: &TestServer, args: &[&str], want: &str) {
    let deadline = Instant::now() + PATIENCE;
    let mut last = String::new();
    while Instant::now() < deadline {
        let out = server.kubectl(args).unwrap();
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && last == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("kubectl {args:?} never printed {want:?}; last: {last:?}");
}

#[test]
fn logs_rotate_and_kubectl_follows_tails_and_filters_them() {
    let reg = registry_with_images();
    let server = start_server(&reg, &["--container-log-max-size", "64Ki"]);
    let pad = "p".repeat(500);
    // ~200 KiB of output, slowly enough (10 lines per 50 ms) that a follower polling every
    // 100 ms sees every rotation.
    let script = format!(
        "echo waiting; {WAIT_FOR_GO}; i=0; while test $i -lt 400; do echo \"line $i {pad}\"; \
         i=$((i+1)); if test $((i % 10)) -eq 0; then sleep 0.05; fi; done; echo done"
    );
    server.create_ok(pod("talker", &reg.busybox, &script));
    let dir = container_dir(&server, "talker");

    // -f from the start, across every rotation, to the container's end.
    let mut follow = server
        .kubectl_command(&["logs", "-f", "talker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "waiting");
    release(&dir);
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = follow.wait().unwrap();
    assert!(status.success(), "kubectl logs -f failed");
    let mut want: Vec<String> = (0..400).map(|i| format!("line {i} {pad}")).collect();
    want.push("done".to_owned());
    assert_eq!(rest.len(), want.len(), "every line followed once");
    assert!(rest == want, "lines followed in order");

    // Rotated: more than one file, at most 5 (the default), none over 64 KiB.
    server.wait_for("pod", "talker", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let files = log_files(&dir);
    assert!(
        files.len() >= 2 && files.len() <= 5,
        "rotated within max files: {files:?}"
    );
    assert!(
        files.iter().all(|(_, size)| *size <= 64 * 1024),
        "{files:?}"
    );

    assert_eq!(server.kubectl_ok(&["logs", "talker", "--tail=1"]), "done\n");
    let stamped = server.kubectl_ok(&["logs", "talker", "--tail=3", "--timestamps"]);
    let mut previous = None;
    let mut texts = Vec::new();
    for line in stamped.lines() {
        let (stamp, text) = line.split_once(' ').expect("timestamp, space, text");
        let t: jiff::Timestamp = stamp.parse().expect("an RFC 3339 timestamp");
        assert!(previous.is_none_or(|p| p <= t), "{stamped}");
        previous = Some(t);
        texts.push(text.to_owned());
    }
    assert_eq!(texts, want[398..].to_vec());
    assert_eq!(
        server.kubectl_ok(&["logs", "talker", "--limit-bytes=5"]),
        "waiti"
    );

    // A container that is not the pod's is refused before any path is built.
    let out = server.kubectl(&["logs", "talker", "-c", "/etc"]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("container /etc is not valid for pod talker"),
        "{out:?}"
    );
    for container in ["..", "%2Fetc", "app%2F..%2F..%2F..%2Fetc"] {
        let url = format!("/api/v1/namespaces/default/pods/talker/log?container={container}");
        let out = server.kubectl(&["get", "--raw", &url]).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{container}: {stderr}");
        assert!(
            stderr.contains("is not valid for pod talker"),
            "{container}: {stderr}"
        );
    }
}

#[test]
fn since_keeps_only_the_lines_written_after_it() {
    let reg = registry_with_images();
    let server = start_server(&reg, &[]);
    server.create_ok(pod(
        "timed",
        &reg.busybox,
        &format!("echo early; {WAIT_FOR_GO}; echo late; exec sleep 3600"),
    ));
    let dir = container_dir(&server, "timed");
    wait_for_logs(&server, &["logs", "timed"], "early\n");
    // `--since-time` has whole seconds: the next one, once it has begun.
    let now = jiff::Timestamp::now();
    let since = jiff::Timestamp::from_second(now.as_second() + 1).unwrap();
    while jiff::Timestamp::now() < since {
        std::thread::sleep(Duration::from_millis(20));
    }
    release(&dir);
    wait_for_logs(&server, &["logs", "timed"], "early\nlate\n");

    let since_time = format!("--since-time={since}");
    assert_eq!(server.kubectl_ok(&["logs", "timed", &since_time]), "late\n");
    assert_eq!(
        server.kubectl_ok(&["logs", "timed", "--since=1h"]),
        "early\nlate\n"
    );
    assert_eq!(
        server
            .kubectl_ok(&["logs", "timed", &since_time, "--timestamps"])
            .split_once(' ')
            .map(|(_, text)| text.to_owned()),
        Some("late\n".to_owned())
    );
}

#[test]
fn tail_of_a_50_mib_log_keeps_the_server_small() {
    let reg = registry_with_images();
    // The default limits: 10 MiB × 5 files.
    let server = start_server(&reg, &[]);
    let line = "x".repeat(1000);
    // 52,429 lines of 1,001 bytes: 50 MiB of output, ~52 MiB of log records.
    let script = format!(
        "{WAIT_FOR_GO}; i=0; while test $i -lt 52429; do echo {line}; i=$((i+1)); done; \
         echo last-line; exec sleep 3600"
    );
    server.create_ok(pod("flood", &reg.busybox, &script));
    let dir = container_dir(&server, "flood");
    server.reset_peak_rss().unwrap();
    let (before, _) = server.rss_kib().unwrap();

    release(&dir);
    wait_for_logs(&server, &["logs", "flood", "--tail=1"], "last-line\n");
    let (_, peak) = server.rss_kib().unwrap();

    let growth_mib = peak.saturating_sub(before) / 1024;
    assert!(
        growth_mib < 20,
        "the server grew by {growth_mib} MiB writing and tailing a 50 MiB log"
    );
    let files = log_files(&dir);
    assert_eq!(files.len(), 5, "10 MiB × 5 files kept: {files:?}");
    assert!(files.iter().all(|(_, size)| *size <= 10 << 20), "{files:?}");
}

#[test]
fn log_limits_that_keep_nothing_are_refused_before_the_server_starts() {
    let cases = [
        ("--container-log-max-files", "1", "must be at least 2"),
        ("--container-log-max-size", "0", "must be greater than 0"),
        (
            "--container-log-max-size",
            "10Qi",
            "is not a quantity of bytes",
        ),
    ];
    for (flag, value, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_imc"))
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args([flag, value])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value}: {stderr}");
        assert!(stderr.contains(message), "{flag} {value}: {stderr}");
        assert!(
            !dir.path().join("state.db").exists(),
            "{flag} {value}: nothing started"
        );
    }
}
