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
