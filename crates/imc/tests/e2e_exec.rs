//! `kubectl exec`, `exec -it`, `cp` and `attach` end to end (issue 9 item 4): a real
//! `imc server`, real runc, real kubectl 1.32 speaking the WebSocket channel protocol
//! (`v5.channel.k8s.io`).

mod run_support;

use std::io::Write;
use std::process::{Command, Stdio};

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::{eventually, output_text, pod_running};
use run_support::{Registry, registry_with_images};
use serde_json::{Value, json};

const NODE: &str = "imc-exec-node";

fn start_server(reg: &Registry) -> TestServer {
    let args = [
        "--node-name".to_owned(),
        NODE.to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts")
}

/// A pod whose one container `app` sleeps.
fn sleeper(name: &str, image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "app", "image": image,
                                    "command": ["sleep", "100000"]}]}})
}

fn running_pod(server: &TestServer, reg: &Registry, name: &str) {
    server.create_ok(sleeper(name, &reg.busybox));
    server.wait_for("pod", name, "Running", pod_running);
}

#[test]
fn exec_streams_stdout_stderr_stdin_and_the_exit_code() {
    let reg = registry_with_images();
    let server = start_server(&reg);
    running_pod(&server, &reg, "shell");

    // stdout and stderr apart, the exit code is kubectl's.
    let out = server
        .kubectl(&[
            "exec",
            "shell",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ])
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("err\n"),
        "{}",
        output_text(&out)
    );

    // stdin piped in; its end is EOF to the command.
    let input = "first line\nsecond line\n".repeat(2000);
    let out = server
        .kubectl_stdin(
            &[
                "exec",
                "-i",
                "shell",
                "--",
                "sh",
                "-c",
                "cat > /tmp/in; wc -c < /tmp/in; head -n 1 /tmp/in",
            ],
            Some(&input),
        )
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\nfirst line\n", input.len())
    );

    // A command that does not exist: runc's reason, and a failure.
    let out = server
        .kubectl(&["exec", "shell", "--", "/no/such/command"])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("no such file or directory"),
        "{}",
        output_text(&out)
    );

    // A container of the pod that has ended: the kubelet's words.
    server.create_ok(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "half"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [
            {"name": "done", "image": reg.busybox, "command": ["true"]},
            {"name": "app", "image": reg.busybox, "command": ["sleep", "100000"]}]}}),
    );
    server.wait_for("pod", "half", "one container ended", |p| {
        p["status"]["containerStatuses"]
            .as_array()
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["name"] == "done" && c["state"]["terminated"].is_object())
            })
    });
    let err = server.kubectl_err(&["exec", "half", "-c", "done", "--", "true"], None);
    assert!(err.contains(r#"container not found ("done")"#), "{err}");
    server.kubectl_ok(&["exec", "half", "-c", "app", "--", "true"]);

    // A container the pod does not have.
    let err = server.kubectl_err(&["exec", "shell", "-c", "nope", "--", "true"], None);
    assert!(
        err.contains("container nope is not valid for pod shell"),
        "{err}"
    );
}

#[test]
fn exec_with_a_terminal_sees_the_clients_size() {
    let reg = registry_with_images();
    let server = start_server(&reg);
    running_pod(&server, &reg, "tty");
    // `script` gives kubectl a terminal of 33 rows and 111 columns; kubectl sends that size
    // on the resize channel. The command waits until its terminal has a size (it starts
    // with none; right at the start runc may still be setting the terminal up, and once a
    // `stty size` answered empty with two NUL bytes on the terminal: unexplained), prints it,
    // and exits with 5.
    let kubectl = format!(
        "stty rows 33 cols 111; KUBECONFIG={} HOME={} {} exec -it tty -- sh -c \
         'while :; do s=$(stty size 2>/dev/null); case \"$s\" in [1-9]*\" \"[1-9]*) break;; esac; sleep 0.1; done; echo $s; test -t 0 && echo is-a-tty; exit 5'",
        server.kubeconfig().display(),
        server.data_dir().display(),
        imc_testkit::apiserver::KUBECTL,
    );
    let out = Command::new("script")
        .args(["-qec", &kubectl, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(text.contains("33 111\nis-a-tty\n"), "{}", output_text(&out));
    assert_eq!(out.status.code(), Some(5), "{}", output_text(&out));
}

#[test]
fn cp_copies_files_both_ways() {
    let reg = registry_with_images();
    let server = start_server(&reg);
    running_pod(&server, &reg, "files");
    let local = tempfile::tempdir().unwrap();
    let content: String = (0..5000).map(|i| format!("line {i}\n")).collect();
    let source = local.path().join("in.txt");
    std::fs::write(&source, &content).unwrap();

    server.kubectl_ok(&["cp", source.to_str().unwrap(), "files:/tmp/copied.txt"]);
    let inside = server.kubectl_ok(&["exec", "files", "--", "cat", "/tmp/copied.txt"]);
    assert_eq!(inside, content);

    let back = local.path().join("back.txt");
    server.kubectl_ok(&["cp", "files:/tmp/copied.txt", back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), content);
}

#[test]
fn exec_is_refused_to_the_read_only_user_and_attach_says_why() {
    let reg = registry_with_images();
    let server = start_server(&reg);
    running_pod(&server, &reg, "guarded");
    let view = server.data_dir().join("kubeconfig-view.yaml");
    let out = server
        .kubectl(&[
            "--kubeconfig",
            view.to_str().unwrap(),
            "exec",
            "guarded",
            "--",
            "true",
        ])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains(
            r#"pods "guarded" is forbidden: User "imc-view" cannot create resource "pods/exec" in API group "" in the namespace "default""#
        ),
        "{}",
        output_text(&out)
    );

    let err = server.kubectl_err(&["attach", "guarded", "-i"], Some(""));
    assert!(err.contains("attach is not supported by imc"), "{err}");
}

#[test]
fn a_client_that_goes_away_leaves_nothing_running() {
    let reg = registry_with_images();
    let server = start_server(&reg);
    running_pod(&server, &reg, "leaver");
    let mut kubectl = server
        .kubectl_command(&[
            "exec",
            "leaver",
            "--",
            "sh",
            "-c",
            "echo started; exec sleep 4711",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = kubectl.stdout.take().unwrap();
    let mut first = [0u8; 8];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"started\n");
    assert!(
        eventually("the exec'd command running", || sleeping_4711()
            .then_some(()))
        .is_some(),
        "the exec'd command never ran"
    );
    kubectl.kill().unwrap();
    kubectl.wait().unwrap();
    assert!(
        eventually("the exec'd command killed", || (!sleeping_4711())
            .then_some(()))
        .is_some(),
        "the command outlived its client"
    );
    let _ = std::io::stdout().flush();
}

/// Whether a `sleep 4711` runs on this machine (the test's own exec).
fn sleeping_4711() -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| c == b"sleep\x004711\x00")
            .unwrap_or(false)
    })
}
