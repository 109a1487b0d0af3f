//! Containers started by real runc on a real overlay over a real EROFS cache disk, with layer
//! trees made on disk the way the layer store unpacks them (overlay whiteouts, opaque xattrs);
//! and what the node does to running containers: `runc exec` (bounded output, timeouts,
//! streamed stdin/stdout/stderr),
//! sockets in a pod's network namespace, the termination message file.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imc_api::Digest;
use imc_runtime::{
    ContainerIo, ContainerSpec, ExecRequest, ExecSpawn, ExecStdio, PreparedImage, Runtime,
    SandboxConfig, StartRequest, StartTimings,
};
use imc_snapshot::{BackendChoice, BuildImage, BuildOptions, SnapshotBuilder};

fn layer_dir(root: &Path, d: &Digest) -> PathBuf {
    root.join("layers/sha256").join(d.hex())
}

/// Base layer: busybox-static and its applet symlinks, /etc/passwd.
fn base_layer(root: &Path) -> Digest {
    let d = Digest::of(b"base");
    let dir = layer_dir(root, &d);
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::create_dir_all(dir.join("tmp")).unwrap();
    fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .expect("busybox-static must be installed (/bin/busybox)");
    for applet in [
        "sh", "cat", "ls", "echo", "stat", "readlink", "id", "touch", "rm", "mkdir", "sleep",
        "test", "sync", "wc", "nc", "dd", "head", "yes", "tr",
    ] {
        symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(dir.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    d
}

/// Lower app layer: files an upper layer deletes, replaces and makes opaque.
fn lower_layer(root: &Path) -> Digest {
    let d = Digest::of(b"lower");
    let dir = layer_dir(root, &d);
    fs::create_dir_all(dir.join("data/opaque")).unwrap();
    fs::write(dir.join("data/doomed"), "doomed").unwrap();
    fs::write(dir.join("data/replaced"), "old").unwrap();
    fs::hard_link(dir.join("data/replaced"), dir.join("data/hardlink")).unwrap();
    fs::write(dir.join("data/opaque/old-entry"), "x").unwrap();
    fs::write(dir.join("data/owned"), "o").unwrap();
    std::os::unix::fs::chown(dir.join("data/owned"), Some(1000), Some(1000)).unwrap();
    fs::set_permissions(dir.join("data/owned"), fs::Permissions::from_mode(0o640)).unwrap();
    symlink("/data/replaced", dir.join("data/abs-link")).unwrap();
    d
}

/// Upper layer: whiteout, opaque dir, replaced file.
fn upper_layer(root: &Path) -> Digest {
    let d = Digest::of(b"upper");
    let dir = layer_dir(root, &d);
    fs::create_dir_all(dir.join("data/opaque")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("data/doomed"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0),
        0,
    )
    .unwrap();
    xattr::set(dir.join("data/opaque"), "trusted.overlay.opaque", b"y").unwrap();
    fs::write(dir.join("data/opaque/new-entry"), "y").unwrap();
    fs::write(dir.join("data/replaced"), "new").unwrap();
    d
}

#[tokio::test]
async fn layer_semantics_inside_a_container_started_from_a_cache_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layers = vec![base_layer(root), lower_layer(root), upper_layer(root)];
    let store = root.to_path_buf();
    let builder = SnapshotBuilder::new(move |d: &Digest| layer_dir(&store, d));
    let disk = root.join("caches/test.erofs");
    fs::create_dir_all(disk.parent().unwrap()).unwrap();
    let config = serde_json::json!({"config": {"Cmd": ["sh"], "User": "0"}});
    let image = BuildImage {
        reference: "r.example/sem:1".into(),
        manifest_digest: Digest::of(b"m"),
        config: config.clone(),
        layers: layers.clone(),
    };
    builder
        .build(
            &[image],
            &BuildOptions {
                output: disk.clone(),
                size_limit: 1 << 30,
                backend: BackendChoice::Erofs,
                work_dir: root.join("tmp"),
            },
        )
        .unwrap();

    let runtime = Runtime::new(root).unwrap();
    let sandbox = runtime
        .create_sandbox(
            &SandboxConfig::new("pod-sem", "pod-sem"),
            std::process::id(),
        )
        .await
        .unwrap();
    let (cache, attach) = runtime
        .attach_cache(&disk, "pod-sem", "main", std::process::id())
        .await
        .unwrap();
    let store = root.to_path_buf();
    let prepared = PreparedImage::locate(
        "r.example/sem:1",
        config,
        &layers,
        Some(&cache),
        &|d: &Digest| layer_dir(&store, d),
    )
    .unwrap();
    let script = [
        "test -e /data/doomed && echo doomed-present || echo doomed-absent",
        "echo opaque: $(ls /data/opaque)",
        "echo replaced: $(cat /data/replaced) hardlink: $(cat /data/hardlink)",
        "echo owned: $(stat -c '%u:%g %a' /data/owned)",
        "echo link: $(cat /data/abs-link)",
        "echo port: $PORT",
    ]
    .join("; ");
    let spec = ContainerSpec {
        name: "main".into(),
        command: Some(vec!["sh".into(), "-c".into(), script]),
        port: Some(8080),
        ..Default::default()
    };
    let container = runtime
        .start(StartRequest {
            sandbox: &sandbox,
            container: spec,
            image: prepared,
            cache: Some(cache.clone()),
            io: ContainerIo::Log,
            owner_pid: std::process::id(),
            started: Instant::now(),
            timings: StartTimings {
                attach,
                ..Default::default()
            },
        })
        .await
        .unwrap();
    let exit = container.wait().await.unwrap();
    let log = String::from_utf8(imc_runtime::log_text(
        &fs::read(&container.log_path).unwrap(),
    ))
    .unwrap();
    assert_eq!(container.timings.layers_from_cache, 3);
    container.remove().await.unwrap();
    sandbox.remove().await.unwrap();

    assert_eq!(exit.code, 0, "log: {log}");
    assert_eq!(
        log,
        "doomed-absent\nopaque: new-entry\nreplaced: new hardlink: old\nowned: 1000:1000 640\nlink: new\nport: 8080\n"
    );
    assert!(
        !cache.mount_point.exists(),
        "the cache is detached after the last container"
    );
}

/// Starts `spec` in `sandbox` from the layer store (no cache).
async fn start_in(
    runtime: &Runtime,
    sandbox: &imc_runtime::PodSandbox,
    root: &Path,
    layers: &[Digest],
    spec: ContainerSpec,
) -> imc_runtime::Container {
    let store = root.to_path_buf();
    let config = serde_json::json!({"config": {"Cmd": ["sh"]}});
    let prepared = PreparedImage::locate("r.example/net:1", config, layers, None, &|d: &Digest| {
        layer_dir(&store, d)
    })
    .unwrap();
    let container = runtime
        .start(StartRequest {
            sandbox,
            container: spec,
            image: prepared,
            cache: None,
            io: ContainerIo::Log,
            owner_pid: std::process::id(),
            started: Instant::now(),
            timings: StartTimings::default(),
        })
        .await
        .unwrap();
    assert_eq!(container.timings.layers_from_store, layers.len());
    container
}

/// A container spec running `script` with `sh -c`.
fn script_spec(name: &str, script: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..Default::default()
    }
}

/// Starts `script` as container `name` of `sandbox` from the layer store (no cache) and returns
/// its exit code and log.
async fn run_in(
    runtime: &Runtime,
    sandbox: &imc_runtime::PodSandbox,
    root: &Path,
    layers: &[Digest],
    name: &str,
    script: &str,
) -> (i32, String) {
    let container = start_in(runtime, sandbox, root, layers, script_spec(name, script)).await;
    let exit = container.wait().await.unwrap();
    let log = String::from_utf8(imc_runtime::log_text(
        &fs::read(&container.log_path).unwrap(),
    ))
    .unwrap();
    container.remove().await.unwrap();
    (exit.code, log)
}

#[tokio::test]
async fn containers_of_one_pod_share_a_private_network_namespace_with_loopback_up() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layers = vec![base_layer(root)];
    let runtime = Runtime::new(root).unwrap();
    let pod_a = runtime
        .create_sandbox(&SandboxConfig::new("pod-a", "pod-a"), std::process::id())
        .await
        .unwrap();
    let pod_b = runtime
        .create_sandbox(&SandboxConfig::new("pod-b", "pod-b"), std::process::id())
        .await
        .unwrap();
    let script = "readlink /proc/self/ns/net; cat /sys/class/net/lo/operstate; ls /sys/class/net";

    let (code_a1, a1) = run_in(&runtime, &pod_a, root, &layers, "one", script).await;
    let (code_a2, a2) = run_in(&runtime, &pod_a, root, &layers, "two", script).await;
    let (code_b, b) = run_in(&runtime, &pod_b, root, &layers, "one", script).await;
    pod_a.remove().await.unwrap();
    pod_b.remove().await.unwrap();

    assert_eq!((code_a1, code_a2, code_b), (0, 0, 0), "{a1} {a2} {b}");
    let host_ns = fs::read_link("/proc/self/ns/net")
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let ns = |log: &str| log.lines().next().unwrap().to_string();
    assert_eq!(
        ns(&a1),
        ns(&a2),
        "containers of one pod share the namespace"
    );
    assert_ne!(ns(&a1), ns(&b), "pods do not share");
    assert_ne!(ns(&a1), host_ns);
    // Loopback is the only interface, and it is up.
    assert_eq!(
        a1.lines().skip(1).collect::<Vec<_>>(),
        vec!["unknown", "lo"]
    );
}

#[tokio::test]
async fn an_image_with_more_layers_than_a_mount_option_page_holds_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut layers = vec![base_layer(root)];
    // 81 layers × ~95-byte paths: ~7.7 KB of lower dirs, over the 4 KB mount(2) option limit.
    for i in 0..80 {
        let d = Digest::of(format!("layer-{i}").as_bytes());
        let dir = layer_dir(root, &d);
        fs::create_dir_all(dir.join("l")).unwrap();
        fs::write(dir.join("l").join(format!("{i:02}")), i.to_string()).unwrap();
        // Each layer also replaces /l/top, so the topmost must win.
        fs::write(dir.join("l/top"), i.to_string()).unwrap();
        layers.push(d);
    }
    let runtime = Runtime::new(root).unwrap();
    let pod = runtime
        .create_sandbox(
            &SandboxConfig::new("pod-many", "pod-many"),
            std::process::id(),
        )
        .await
        .unwrap();

    let (code, log) = run_in(
        &runtime,
        &pod,
        root,
        &layers,
        "main",
        "ls /l | wc -l; cat /l/top",
    )
    .await;
    pod.remove().await.unwrap();

    assert_eq!(code, 0, "{log}");
    assert_eq!(log, "81\n79");
}

fn exec_request(command: &[&str], timeout: Option<u64>, limit: usize) -> ExecRequest {
    ExecRequest {
        command: command.iter().map(|s| s.to_string()).collect(),
        timeout: timeout.map(Duration::from_secs),
        output_limit: limit,
    }
}

#[tokio::test]
async fn exec_runs_in_the_container_with_its_exit_code_and_bounded_output() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layers = vec![base_layer(root)];
    let runtime = Runtime::new(root).unwrap();
    let pod = runtime
        .create_sandbox(
            &SandboxConfig::new("pod-exec", "pod-exec"),
            std::process::id(),
        )
        .await
        .unwrap();
    let container = start_in(
        &runtime,
        &pod,
        root,
        &layers,
        script_spec("main", "echo inside > /tmp/marker; exec sleep 3600"),
    )
    .await;
    let exec = container.exec_handle();

    // The command sees the container's files; stdout and stderr are kept together.
    let out = exec
        .exec(exec_request(
            &["sh", "-c", "cat /tmp/marker; echo err >&2; exit 3"],
            Some(30),
            1024,
        ))
        .await
        .unwrap();
    assert_eq!(out.exit_code, 3);
    // runc copies each stream through a pipe of its own: their relative order is not kept.
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.output)
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(lines, ["err", "inside"]);
    assert!(!out.truncated);

    // A flood of output is cut at the limit; the command still runs to its end.
    let out = exec
        .exec(exec_request(
            &[
                "sh",
                "-c",
                "dd if=/dev/zero bs=1024 count=1024 2>/dev/null; echo done > /tmp/flood",
            ],
            Some(60),
            100,
        ))
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.output.len(), 100);
    assert!(out.truncated);
    let out = exec
        .exec(exec_request(&["cat", "/tmp/flood"], Some(30), 100))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.output), "done\n");

    // A command over its timeout is killed: it is no longer in the container afterwards.
    let err = exec
        .exec(exec_request(&["sleep", "1234"], Some(1), 100))
        .await
        .unwrap_err();
    assert!(
        matches!(err, imc_runtime::RuntimeError::ExecTimeout { .. }),
        "{err}"
    );
    let out = exec
        .exec(exec_request(
            &["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"],
            Some(30),
            4096,
        ))
        .await
        .unwrap();
    let procs = String::from_utf8_lossy(&out.output).into_owned();
    assert!(
        !procs.contains("1234"),
        "the timed out command still runs: {procs}"
    );

    // A command that cannot be started is runc's error, not an exit code.
    let err = exec
        .exec(exec_request(&["/no/such/binary"], Some(30), 100))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, imc_runtime::RuntimeError::Runc { action: "exec", message, .. } if message.contains("/no/such/binary")),
        "{err}"
    );

    container.kill("KILL").await.unwrap();
    container.wait().await.unwrap();
    container.remove().await.unwrap();
    pod.remove().await.unwrap();
}

/// Whether a process with `needle` in its command line runs in the container (read with an
/// exec of its own).
async fn runs_in(exec: &imc_runtime::ContainerExec, needle: &str) -> bool {
    let out = exec
        .exec(exec_request(
            &["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"],
            Some(30),
            64 * 1024,
        ))
        .await
        .unwrap();
    String::from_utf8_lossy(&out.output).contains(needle)
}

/// Polls `check` until it holds (at most `PATIENCE`-like 60 s of 100 ms polls).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn a_spawned_exec_streams_stdin_stdout_and_stderr_and_dies_with_its_handle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layers = vec![base_layer(root)];
    let runtime = Runtime::new(root).unwrap();
    let pod = runtime
        .create_sandbox(
            &SandboxConfig::new("pod-spawn", "pod-spawn"),
            std::process::id(),
        )
        .await
        .unwrap();
    let container = start_in(
        &runtime,
        &pod,
        root,
        &layers,
        script_spec("main", "exec sleep 3600"),
    )
    .await;
    let exec = container.exec_handle();

    // What is written to its stdin comes back on stdout and stderr, each apart; its exit code
    // is the command's.
    let mut p = exec
        .spawn(ExecSpawn {
            command: [
                "sh",
                "-c",
                "while read l; do echo out:$l; echo err:$l >&2; done; exit 7",
            ]
            .map(String::from)
            .to_vec(),
            stdin: true,
            output: ExecStdio::Separate,
            tty: false,
        })
        .await
        .unwrap();
    let mut stdin = p.stdin.take().unwrap();
    stdin.write_all(b"a\nb\n").await.unwrap();
    drop(stdin);
    let (mut out, mut err) = (p.stdout.take().unwrap(), p.stderr.take().unwrap());
    let (mut o, mut e) = (String::new(), String::new());
    let (ro, re) = tokio::join!(out.read_to_string(&mut o), err.read_to_string(&mut e));
    ro.unwrap();
    re.unwrap();
    assert_eq!(o, "out:a\nout:b\n");
    assert_eq!(e, "err:a\nerr:b\n");
    assert_eq!(p.wait().await.unwrap(), 7);

    // A process dropped without being waited for is killed in the container.
    let p = exec
        .spawn(ExecSpawn {
            command: ["sleep", "4321"].map(String::from).to_vec(),
            stdin: false,
            output: ExecStdio::Combined,
            tty: false,
        })
        .await
        .unwrap();
    eventually("the spawned command runs", || runs_in(&exec, "sleep 4321")).await;
    drop(p);
    eventually("the dropped command is gone", || async {
        !runs_in(&exec, "sleep 4321").await
    })
    .await;

    container.kill("KILL").await.unwrap();
    container.wait().await.unwrap();
    container.remove().await.unwrap();
    pod.remove().await.unwrap();
}

#[tokio::test]
async fn a_socket_made_for_a_pod_connects_inside_its_network_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layers = vec![base_layer(root)];
    let runtime = Runtime::new(root).unwrap();
    let pod = runtime
        .create_sandbox(
            &SandboxConfig::new("pod-sock", "pod-sock"),
            std::process::id(),
        )
        .await
        .unwrap();
    // A listener on the host's loopback, which the pod's loopback is not.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    let container = start_in(
        &runtime,
        &pod,
        root,
        &layers,
        script_spec("main", "echo hello-from-the-pod | nc -l -p 7007"),
    )
    .await;

    let addr: std::net::SocketAddr = "127.0.0.1:7007".parse().unwrap();
    let mut reply = String::new();
    for _ in 0..200 {
        let socket = pod.tcp_socket(false).await.unwrap();
        if let Ok(stream) = socket.connect(addr).await {
            use tokio::io::AsyncBufReadExt;
            // nc keeps the connection after its input ends: one line is read, then it is
            // closed (and nc exits).
            tokio::io::BufReader::new(stream)
                .read_line(&mut reply)
                .await
                .unwrap();
            break;
        }
        // nc is not listening yet.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reply, "hello-from-the-pod\n");

    let socket = pod.tcp_socket(false).await.unwrap();
    let refused = socket
        .connect(format!("127.0.0.1:{host_port}").parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "the host's loopback is not the pod's"
    );

    container.wait().await.unwrap();
    container.remove().await.unwrap();
    pod.remove().await.unwrap();
}

#[tokio::test]
async fn the_termination_message_is_read_from_the_file_the_container_wrote() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layers = vec![base_layer(root)];
    let runtime = Runtime::new(root).unwrap();
    let pod = runtime
        .create_sandbox(
            &SandboxConfig::new("pod-term", "pod-term"),
            std::process::id(),
        )
        .await
        .unwrap();
    let with_path = |name: &str, path: &str, script: &str| ContainerSpec {
        termination_message_path: Some(path.into()),
        security: imc_runtime::SecuritySpec {
            run_as_user: Some(1000),
            ..Default::default()
        },
        ..script_spec(name, script)
    };

    // Written by a non-root user, at the default path (in the container's /dev).
    let c = start_in(
        &runtime,
        &pod,
        root,
        &layers,
        with_path(
            "short",
            "/dev/termination-log",
            "printf 'bye now' > /dev/termination-log; exit 2",
        ),
    )
    .await;
    assert_eq!(c.wait().await.unwrap().code, 2);
    assert_eq!(
        c.termination_message().await.unwrap().as_deref(),
        Some("bye now")
    );
    c.remove().await.unwrap();

    // Only its last 4 KiB are read.
    let c = start_in(
        &runtime,
        &pod,
        root,
        &layers,
        with_path(
            "long",
            "/tmp/msg",
            "yes 0123456789abcdef | head -c 5000 > /tmp/msg; printf END >> /tmp/msg",
        ),
    )
    .await;
    c.wait().await.unwrap();
    let message = c.termination_message().await.unwrap().unwrap();
    assert_eq!(message.len(), imc_runtime::MAX_TERMINATION_MESSAGE);
    assert!(message.ends_with("END"), "{message}");
    c.remove().await.unwrap();

    // Nothing written: no message.
    let c = start_in(
        &runtime,
        &pod,
        root,
        &layers,
        with_path("silent", "/dev/termination-log", "exit 0"),
    )
    .await;
    c.wait().await.unwrap();
    assert_eq!(c.termination_message().await.unwrap(), None);
    c.remove().await.unwrap();
    pod.remove().await.unwrap();
}
