//! A graceful stop of `imc server` (SIGTERM): the node stops and removes every container it
//! runs (no process, mount, loop device or runc state left under the data dir), leaves the pods
//! as they are, and the next start runs them again. Real server, registry, runc and kubectl.

mod run_support;

use std::path::Path;
use std::time::{Duration, Instant};

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::{PATIENCE, pod_running};
use imc_testkit::leftovers::{loop_devices_under, mounts_under, runc_containers, runc_root};
use imc_testkit::proxy::{Fault, Proxy};
use run_support::registry_with_images;
use serde_json::{Value, json};

const PINNED: &str = "k8s.aliyun.com/eci-image-snapshot-id";

/// Host pid of runc container `id` in the server's runc root.
fn container_pid(data_dir: &Path, id: &str) -> i64 {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(runc_root(data_dir))
        .args(["state", id])
        .output()
        .expect("runc runs");
    assert!(
        out.status.success(),
        "runc state {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: Value = serde_json::from_slice(&out.stdout).expect("runc prints JSON");
    state["pid"]
        .as_i64()
        .expect("a running container has a pid")
}

/// Whether `pid` is still the container's `sleep` (not a reused pid).
fn sleeping(pid: i64) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("sleep"))
        .unwrap_or(false)
}

#[test]
fn sigterm_removes_every_container_and_the_next_start_runs_the_pod_again() {
    let reg = registry_with_images();
    let args = vec![
        "--node-name".to_owned(),
        "imc-test-node".to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    let mut server =
        TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts");
    let data = server.data_dir().to_path_buf();

    server.create_ok(
        json!({"apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
                "metadata": {"name": "busybox"}, "spec": {"images": [reg.busybox]}}),
    );
    let cache = server.wait_for("imagecache", "busybox", "the awaited state", |o| {
        o["status"]["phase"] == "Ready"
    });
    server.assert_cache_is_erofs(&cache);
    let id = cache["status"]["imageCacheId"]
        .as_str()
        .expect("an id")
        .to_owned();
    // The pod ignores SIGTERM, so the stop has to end it with SIGKILL after the grace.
    server.create_ok(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "stubborn", "annotations": {PINNED: id}},
                "spec": {"restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
                         "containers": [{"name": "app", "image": reg.busybox,
                                         "command": ["sh", "-c", "trap '' TERM; sleep 3600 & wait; sleep 3600"]}]}}),
    );
    let before = server.wait_for("pod", "stubborn", "the awaited state", pod_running);
    let uid = before["metadata"]["uid"]
        .as_str()
        .expect("a uid")
        .to_owned();
    let containers = runc_containers(&data);
    assert_eq!(containers.len(), 1, "{containers:?}");
    let pid = container_pid(&data, &containers[0]);
    assert!(
        !mounts_under(&data).is_empty(),
        "the pod runs on mounts under the data dir"
    );
    assert_eq!(
        loop_devices_under(&data).len(),
        1,
        "the cache disk is attached"
    );

    // SIGTERM; `stop` SIGKILLs only when the server has not exited within its bound.
    assert!(
        server.stop().expect("server stops"),
        "imc server did not exit 0 after SIGTERM"
    );
    assert_eq!(
        mounts_under(&data),
        Vec::<std::path::PathBuf>::new(),
        "mounts left"
    );
    assert_eq!(
        loop_devices_under(&data),
        Vec::<std::path::PathBuf>::new(),
        "loop devices left"
    );
    assert_eq!(
        runc_containers(&data),
        Vec::<String>::new(),
        "runc containers left"
    );
    assert!(!sleeping(pid), "the pod's process {pid} still runs");
    assert!(
        !data.join("pods").join(&uid).exists(),
        "the pod dir is left"
    );

    // The pod object was left as it was: the next start runs it again.
    server.restart().expect("server restarts");
    let after = server.wait_for("pod", "stubborn", "the awaited state", pod_running);
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    let deadline = Instant::now() + PATIENCE;
    while runc_containers(&data).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        runc_containers(&data).len(),
        1,
        "the pod's container runs again"
    );
    assert_eq!(
        loop_devices_under(&data).len(),
        1,
        "the cache disk is attached again"
    );
}

#[test]
fn sigterm_during_a_cache_build_leaves_it_creating_and_the_next_start_finishes_it() {
    let reg = registry_with_images();
    // The cache's only layer trickles in, so the build is under way when the server stops.
    let proxy = Proxy::start(&reg.registry.host()).expect("proxy starts");
    proxy.add_fault(
        reg.base.digest.hex(),
        Fault::Slow {
            bytes_per_sec: 2048,
        },
    );
    let args = vec![
        "--node-name".to_owned(),
        "imc-test-node".to_owned(),
        "--plain-http".to_owned(),
        proxy.host_port(),
    ];
    let mut server =
        TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts");
    let data = server.data_dir().to_path_buf();
    let image = reg
        .busybox
        .replace(&reg.registry.host(), &proxy.host_port());
    server.create_ok(
        json!({"apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
                "metadata": {"name": "slow"}, "spec": {"images": [image]}}),
    );
    let creating = server.wait_for("imagecache", "slow", "the awaited state", |o| {
        o["status"]["phase"] == "Creating" && o["status"]["imageCacheId"].is_string()
    });
    let deadline = Instant::now() + PATIENCE;
    while !proxy
        .requests()
        .iter()
        .any(|r| r.path.contains(reg.base.digest.hex()))
    {
        assert!(Instant::now() < deadline, "the layer was never requested");
        std::thread::sleep(Duration::from_millis(50));
    }

    assert!(
        server.stop().expect("server stops"),
        "imc server did not exit 0 after SIGTERM"
    );
    let caches: Vec<String> = std::fs::read_dir(data.join("caches"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        caches,
        Vec::<String>::new(),
        "a called-off build left files"
    );
    let staging: Vec<String> = std::fs::read_dir(data.join("tmp"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        staging,
        Vec::<String>::new(),
        "a called-off build left staging"
    );

    // The status was left as it was (read from the API alone, no controller racing): Creating,
    // with the same id.
    server.set_extra_args(&["--api-only".to_owned()]);
    server.restart().expect("server restarts");
    let after = server
        .get_json("imagecache", "slow")
        .expect("the cache is still there");
    assert_eq!(after["status"]["phase"], "Creating", "{after:#}");
    assert_eq!(
        after["status"]["imageCacheId"],
        creating["status"]["imageCacheId"]
    );
    // The next full start builds it.
    assert!(server.stop().expect("server stops"));
    proxy.clear_faults();
    server.set_extra_args(&args);
    server.restart().expect("server restarts");
    let ready = server.wait_for("imagecache", "slow", "the awaited state", |o| {
        o["status"]["phase"] == "Ready" || o["status"]["phase"] == "Failed"
    });
    assert_eq!(ready["status"]["phase"], "Ready", "{ready:#}");
    server.assert_cache_is_erofs(&ready);
}

/// Everything of the node under `data`: (runc containers, mounts, loop devices, pod dirs).
fn node_leftovers(
    data: &Path,
) -> (
    Vec<String>,
    Vec<std::path::PathBuf>,
    Vec<std::path::PathBuf>,
    Vec<String>,
) {
    let pods = std::fs::read_dir(data.join("pods"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    (
        runc_containers(data),
        mounts_under(data),
        loop_devices_under(data),
        pods,
    )
}

fn server_args(reg: &run_support::Registry) -> Vec<String> {
    vec![
        "--node-name".to_owned(),
        "imc-test-node".to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ]
}

#[test]
fn sigterm_while_fifty_pods_are_being_deleted_stops_within_the_bound_and_leaves_nothing() {
    let reg = registry_with_images();
    let mut server = TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &server_args(&reg))
        .expect("imc server starts");
    let data = server.data_dir().to_path_buf();
    server.create_ok(
        json!({"apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
                "metadata": {"name": "busybox"}, "spec": {"images": [reg.busybox]}}),
    );
    let cache = server.wait_for("imagecache", "busybox", "Ready", |o| {
        o["status"]["phase"] == "Ready"
    });
    let id = cache["status"]["imageCacheId"]
        .as_str()
        .expect("an id")
        .to_owned();
    // Each pod ignores SIGTERM and has the default 30 s grace period: a deletion waits for it.
    let names: Vec<String> = (0..50).map(|i| format!("doomed-{i}")).collect();
    let stream: Vec<String> = names
        .iter()
        .map(|n| {
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": n, "annotations": {PINNED: id}},
                "spec": {"containers": [{"name": "app", "image": reg.busybox,
                         "command": ["sh", "-c", "trap '' TERM; sleep 3600 & wait; sleep 3600"]}]}})
            .to_string()
        })
        .collect();
    // A stream of JSON objects, as kubectl reads several manifests from one input.
    server.create_ok(stream.join("\n"));
    let deadline = Instant::now() + PATIENCE;
    while runc_containers(&data).len() < names.len() {
        assert!(Instant::now() < deadline, "the 50 pods never all ran");
        std::thread::sleep(Duration::from_millis(200));
    }
    for n in &names {
        server.wait_for("pod", n, "Running", pod_running);
    }
    server.kubectl_ok(&["delete", "pods", "--all", "--wait=false"]);
    // Every pod is terminating (its containers getting SIGTERM) when the server is told to stop.
    for n in &names {
        server.wait_for("pod", n, "terminating", |p| {
            p["metadata"]["deletionTimestamp"].is_string()
        });
    }
    let stopped = Instant::now();
    assert!(
        server.stop().expect("server stops"),
        "imc server did not exit 0 within its bound after SIGTERM"
    );
    assert!(
        stopped.elapsed() < imc_testkit::apiserver::STOP_WAIT,
        "the stop overran"
    );
    let (containers, mounts, loops, pods) = node_leftovers(&data);
    assert_eq!(containers, Vec::<String>::new(), "runc containers left");
    assert_eq!(mounts, Vec::<std::path::PathBuf>::new(), "mounts left");
    assert_eq!(loops, Vec::<std::path::PathBuf>::new(), "loop devices left");
    assert_eq!(
        pods,
        Vec::<String>::new(),
        "pod dirs (and their netns) left"
    );
}

#[test]
fn a_killed_server_with_a_stray_file_in_pods_restarts_clean() {
    let reg = registry_with_images();
    let mut server = TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &server_args(&reg))
        .expect("imc server starts");
    let data = server.data_dir().to_path_buf();
    server.create_ok(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "survivor"},
        "spec": {"terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "app", "image": reg.busybox, "command": ["sleep", "3600"]}]}}));
    let before = server.wait_for("pod", "survivor", "Running", pod_running);
    let old = runc_containers(&data);
    assert_eq!(old.len(), 1, "{old:?}");
    let old_pid = container_pid(&data, &old[0]);

    server.kill().expect("kill -9");
    // Strays recovery must step over, not stop at.
    std::fs::write(data.join("pods/aaa-stray-file"), "x").unwrap();
    std::fs::create_dir_all(data.join("pods/bogus-dir/nothing-here")).unwrap();
    server.restart().expect("server restarts");

    let after = server.wait_for("pod", "survivor", "Running again", |p| {
        pod_running(p)
            && p["status"]["containerStatuses"][0]["containerID"]
                != before["status"]["containerStatuses"][0]["containerID"]
            || pod_running(p) && !sleeping(old_pid)
    });
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert!(
        !sleeping(old_pid),
        "the dead server's container {old_pid} still runs"
    );
    let deadline = Instant::now() + PATIENCE;
    while runc_containers(&data).len() != 1 {
        assert!(Instant::now() < deadline, "{:?}", runc_containers(&data));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Only the live pod's own mounts: its rootfs overlay, its netns and the tmpfs of its
    // service-account token volume (kube-api-access-*, added by ServiceAccount admission).
    let uid = after["metadata"]["uid"].as_str().unwrap();
    let mounts = mounts_under(&data);
    assert!(
        mounts
            .iter()
            .all(|m| m.starts_with(data.join("pods").join(uid))),
        "mounts of the dead run left: {mounts:?}"
    );
    assert_eq!(mounts.len(), 3, "{mounts:?}");
    assert!(
        mounts
            .iter()
            .any(|m| m.to_string_lossy().contains("kube-api-access-")),
        "{mounts:?}"
    );
    assert!(
        !data.join("pods/bogus-dir").exists(),
        "the ownerless dir was removed"
    );

    // And a graceful stop then leaves nothing at all.
    assert!(server.stop().expect("server stops"));
    let (containers, mounts, loops, _) = node_leftovers(&data);
    assert!(
        containers.is_empty() && mounts.is_empty() && loops.is_empty(),
        "{containers:?} {mounts:?} {loops:?}"
    );
}
