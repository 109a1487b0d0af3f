//! `imc snapshotter` under real containerd 1.6 (Debian): images pulled the kubelet's way (CRI
//! `PullImage`, unpacking through the `imc` proxy snapshotter) from a real registry behind a
//! counting proxy, run with `ctr run --snapshotter imc` on real runc.
//!
//! containerd 1.6's `ctr images pull` fetches every blob before it unpacks (its `content.Fetch`
//! has no unpack hook), so the no-download path is the CRI one, as on a kubelet node; `ctr` is
//! used to run, list and remove.

mod run_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use imc_testkit::containerd::{Containerd, ContainerdOptions};
use imc_testkit::proxy::Proxy;
use run_support::{Registry, imc, loops_backed_by, registry_with_images};

/// A registry with the test images behind a counting proxy, a cache disk built by
/// `imc cache build --data-dir` (no `--output`), `imc snapshotter` and a containerd using it.
struct Node {
    reg: Registry,
    proxy: Proxy,
    data: PathBuf,
    socket: PathBuf,
    snapshotter: Option<Child>,
    containerd: Option<Containerd>,
    _tmp: tempfile::TempDir,
}

impl Node {
    /// Everything up, with a cache holding `cached` (names of `reg`'s images).
    fn start(cached: fn(&Registry) -> Vec<String>) -> Node {
        let reg = registry_with_images();
        let proxy = Proxy::start(&reg.registry.host()).expect("proxy");
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut build = imc();
        build
            .args(["cache", "build", "--data-dir"])
            .arg(&data)
            .args(reg.flags());
        for image in cached(&reg) {
            build.args(["--image", &image]);
        }
        let out = build.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let socket = tmp.path().join("imc-snapshotter.sock");
        let mut node = Node {
            reg,
            proxy,
            data,
            socket: socket.clone(),
            snapshotter: None,
            containerd: None,
            _tmp: tmp,
        };
        node.start_snapshotter();
        let containerd = Containerd::start_with(
            Some(node._tmp.path()),
            ContainerdOptions {
                proxy_snapshotters: vec![("imc".into(), socket)],
                cri_snapshotter: Some("imc".into()),
            },
        )
        .expect("containerd starts with the imc proxy snapshotter and CRI");
        let host = node.proxy.host_port();
        containerd.plain_http_host(&host, &host).unwrap();
        node.containerd = Some(containerd);
        node
    }

    fn containerd(&self) -> &Containerd {
        self.containerd.as_ref().unwrap()
    }

    /// The single cache disk `imc cache build` wrote.
    fn disk(&self) -> PathBuf {
        let disks: Vec<PathBuf> = std::fs::read_dir(self.data.join("caches"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "erofs"))
            .collect();
        assert_eq!(disks.len(), 1, "{disks:?}");
        disks[0].clone()
    }

    fn start_snapshotter(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let child = imc()
            .args(["snapshotter", "--data-dir"])
            .arg(&self.data)
            .arg("--socket")
            .arg(&self.socket)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.snapshotter = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket.exists() {
            assert!(Instant::now() < deadline, "imc snapshotter did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until containerd reaches the snapshotter again: after a restart of the snapshotter,
    /// containerd's proxy connection reconnects with gRPC back-off (at most 3 s apart in 1.6).
    fn wait_served(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.ctr(&["snapshots", "--snapshotter", "imc", "ls"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd does not reach the snapshotter again: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop_snapshotter(&mut self) {
        if let Some(mut child) = self.snapshotter.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let status = child.wait().unwrap();
            assert!(status.success(), "imc snapshotter exited with {status}");
        }
    }

    /// `REF` as pulled through the proxy (another reference than the cache was built from).
    fn via_proxy(&self, reference: &str) -> String {
        reference.replace(&self.reg.registry.host(), &self.proxy.host_port())
    }

    fn pull(&self, reference: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(self.containerd().cri_pull(reference))
            .unwrap_or_else(|e| {
                panic!(
                    "CRI pull of {reference}: {e:#}\ncontainerd log:\n{}",
                    self.containerd().log_tail()
                )
            });
    }

    /// Blob digests fetched through the proxy so far.
    fn blobs_fetched(&self) -> Vec<String> {
        self.proxy
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
            .filter_map(|r| r.path.rsplit('/').next().map(str::to_owned))
            .collect()
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.containerd()
            .ctr()
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .unwrap()
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\ncontainerd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.containerd().log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Mounts of the attached disk (under `DIR/run/caches/`).
    fn cache_mounts(&self) -> usize {
        let run = self.data.join("run/caches");
        run_support::mounts_under(&run).len()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Containers first (they hold overlays over the cache), then the snapshotter, then what
        // it left attached.
        drop(self.containerd.take());
        if let Some(mut child) = self.snapshotter.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(attacher) = imc_snapshot::Attacher::new(&self.data) {
            let _ = attacher.recover();
        }
    }
}

/// A container id unique on the host (runc state is shared by every containerd).
fn cid(name: &str) -> String {
    format!("imc-snap-{name}-{}", std::process::id())
}

fn layered_and_busybox(reg: &Registry) -> Vec<String> {
    vec![reg.layered.clone(), reg.busybox.clone()]
}

#[test]
fn a_cached_image_pulls_no_layer_blob_and_runs_with_layer_semantics() {
    let node = Node::start(layered_and_busybox);
    let image = node.via_proxy(&node.reg.layered);
    node.pull(&image);
    let fetched = node.blobs_fetched();
    assert_eq!(
        fetched.len(),
        1,
        "only the config blob crosses the link, no layer: {fetched:?}"
    );
    assert!(!fetched.contains(&node.reg.base.digest.to_string()));

    let script = [
        "test -e /data/doomed && echo doomed-present || echo doomed-absent",
        "echo opaque: $(ls -a /data/opaque)",
        "echo replaced: $(cat /data/replaced) hardlink: $(cat /data/hardlink)",
        "echo owned: $(stat -c '%u:%g %a' /data/owned)",
        "echo setuid: $(stat -c '%a' /data/setuid) tmp: $(stat -c '%a' /tmp)",
        "echo written > /data/new && cat /data/new",
    ]
    .join("; ");
    let out = node.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "imc",
        &image,
        &cid("layers"),
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(
        out,
        "doomed-absent\n\
         opaque: . .. new-entry\n\
         replaced: new hardlink: old\n\
         owned: 1000:1000 640\n\
         setuid: 4755 tmp: 1777\n\
         written\n"
    );
    assert_eq!(
        loops_backed_by(&node.disk()),
        1,
        "the disk is attached once"
    );

    // The layers are committed snapshots of the imc snapshotter, served from the disk.
    let listed = node.ctr_ok(&["snapshots", "--snapshotter", "imc", "ls"]);
    let committed = listed.lines().filter(|l| l.contains("Committed")).count();
    assert_eq!(committed, 3, "three layers: {listed}");
    assert!(
        !listed.contains("Active"),
        "the container's snapshot is gone: {listed}"
    );
}

#[test]
fn a_partly_cached_image_pulls_only_the_missing_layer() {
    let node = Node::start(layered_and_busybox);
    let image = node.via_proxy(&node.reg.partial);
    node.pull(&image);
    let mut fetched = node.blobs_fetched();
    fetched.sort();
    assert_eq!(
        fetched.len(),
        2,
        "config + the one missing layer: {fetched:?}"
    );
    assert!(
        fetched.contains(&node.reg.partial_top.digest.to_string()),
        "{fetched:?}"
    );
    assert!(!fetched.contains(&node.reg.base.digest.to_string()));
    let out = node.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "imc",
        &image,
        &cid("partial"),
    ]);
    assert_eq!(out, "partial-top");
}

#[test]
fn containers_survive_restarts_share_one_attachment_and_everything_is_removable() {
    let mut node = Node::start(layered_and_busybox);
    let image = node.via_proxy(&node.reg.busybox);
    node.pull(&image);
    assert_eq!(node.blobs_fetched().len(), 1, "config only");
    let ids: Vec<String> = (0..20).map(|i| cid(&format!("many{i}"))).collect();
    for id in &ids {
        node.ctr_ok(&[
            "run",
            "-d",
            "--snapshotter",
            "imc",
            &image,
            id,
            "sleep",
            "3600",
        ]);
    }
    let disk = node.disk();
    assert_eq!(
        loops_backed_by(&disk),
        1,
        "one loop device for 20 containers"
    );
    assert_eq!(node.cache_mounts(), 1, "one mount for 20 containers");
    let running = |node: &Node| {
        node.ctr_ok(&["tasks", "ls"])
            .lines()
            .filter(|l| l.contains("RUNNING"))
            .count()
    };
    assert_eq!(running(&node), 20);

    // containerd restarted: containers keep running, the snapshots are still served.
    node.containerd.as_mut().unwrap().restart().unwrap();
    assert_eq!(running(&node), 20);
    // The snapshotter restarted: its metadata and the attachment survive.
    node.stop_snapshotter();
    node.start_snapshotter();
    node.wait_served();
    assert_eq!(running(&node), 20);
    assert_eq!(loops_backed_by(&disk), 1);
    let out = node.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "imc",
        &image,
        &cid("after-restarts"),
        "sh",
        "-c",
        "echo still served",
    ]);
    assert_eq!(out, "still served\n");
    let listed = node.ctr_ok(&["snapshots", "--snapshotter", "imc", "ls"]);
    assert_eq!(
        listed.lines().filter(|l| l.contains("Active")).count(),
        20,
        "{listed}"
    );

    // Remove the containers (their snapshots go with them), then the layer snapshot itself.
    for id in &ids {
        node.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", id]);
        node.ctr_ok(&["tasks", "rm", "-f", id]);
        node.ctr_ok(&["containers", "rm", id]);
    }
    let listed = node.ctr_ok(&["snapshots", "--snapshotter", "imc", "ls"]);
    let committed: Vec<&str> = listed
        .lines()
        .filter(|l| l.contains("Committed"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(committed.len(), 1, "{listed}");
    assert_eq!(
        committed[0],
        node.reg.base.diff_id.to_string(),
        "named by chain ID"
    );
    let removed = node.ctr(&["snapshots", "--snapshotter", "imc", "rm", committed[0]]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let listed = node.ctr_ok(&["snapshots", "--snapshotter", "imc", "ls"]);
    assert_eq!(
        listed.lines().count(),
        1,
        "only the header is left: {listed}"
    );
    // containerd removes snapshots from the snapshotter in its garbage collection: run one now
    // (deleting a lease with --sync collects synchronously).
    let lease = node.ctr_ok(&["leases", "create"]);
    let lease = lease.split_whitespace().next().unwrap().to_string();
    node.ctr_ok(&["leases", "rm", "--sync", &lease]);
    assert_eq!(
        loops_backed_by(&disk),
        0,
        "the disk is released once unused"
    );
    assert_eq!(node.cache_mounts(), 0);
}

/// `imc cache ls` shows what `imc cache build --data-dir` wrote into `DIR/caches/`.
#[test]
fn cache_build_without_output_writes_into_the_data_dir_and_cache_ls_lists_it() {
    let reg = registry_with_images();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let build = |images: &[&str]| {
        let mut c = imc();
        c.args(["cache", "build", "--data-dir"])
            .arg(data)
            .args(reg.flags());
        for i in images {
            c.args(["--image", i]);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    build(&[&reg.busybox]);
    build(&[&reg.layered, &reg.busybox]);
    build(&[&reg.busybox, &reg.layered]); // same list, other order: same disk
    let out = imc()
        .args(["cache", "ls", "--data-dir"])
        .arg(data)
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let disks = listed.as_array().unwrap();
    assert_eq!(disks.len(), 2, "{listed}");
    let mut images: Vec<Vec<String>> = disks
        .iter()
        .map(|d| {
            let mut i: Vec<String> = d["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            i.sort();
            i
        })
        .collect();
    images.sort();
    let mut two = vec![reg.busybox.clone(), reg.layered.clone()];
    two.sort();
    assert_eq!(images, vec![vec![reg.busybox.clone()], two]);
    for d in disks {
        let path = Path::new(d["path"].as_str().unwrap());
        assert!(path.starts_with(data.join("caches")), "{path:?}");
        assert!(d["name"].as_str().unwrap().starts_with("cli-"), "{d}");
    }
    let table = imc()
        .args(["cache", "ls", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains(&reg.layered), "{table}");
}

/// Cluster wiring against a real API (`imc server --api-only`, no controllers, as a cluster's
/// kube-apiserver would serve it): the snapshotter labels its Node with the caches whose disks
/// it holds, and deletes the disk of an ImageCache that is gone once no snapshot uses it.
#[test]
fn the_node_is_labelled_with_held_caches_and_disks_of_deleted_caches_go() {
    use imc_testkit::apiserver::TestServer;
    use imc_testkit::kubectl::PATIENCE;

    let server = TestServer::start_api_only(env!("CARGO_BIN_EXE_imc"), None).unwrap();
    server.create_ok(serde_json::json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "snap-node"}
    }));
    let kept = "imc-aaaaaaaaaaaaaaaaaaaa";
    let gone = "imc-bbbbbbbbbbbbbbbbbbbb";
    let reg = registry_with_images();
    for (name, id) in [("kept", kept), ("later-deleted", gone)] {
        server.create_ok(serde_json::json!({
            "apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
            "metadata": {"name": name},
            "spec": {"images": [reg.busybox]}
        }));
        let status = serde_json::json!({"status": {"imageCacheId": id}}).to_string();
        server.kubectl_ok(&[
            "patch",
            "imagecache",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ]);
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let disk = |id: &str| data.join(format!("caches/{id}.erofs"));
    run_support::cache_build(&reg, &data, &[&reg.busybox], &disk(kept));
    std::fs::copy(disk(kept), disk(gone)).unwrap();
    let orphan = "imc-cccccccccccccccccccc"; // no ImageCache at all
    std::fs::copy(disk(kept), disk(orphan)).unwrap();

    let mut snapshotter = imc()
        .args(["snapshotter", "--data-dir"])
        .arg(&data)
        .arg("--socket")
        .arg(tmp.path().join("s.sock"))
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["--node-name", "snap-node"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let labels = |n: &serde_json::Value| -> Vec<String> {
        let mut keys: Vec<String> = n["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.keys()
                    .filter(|k| k.starts_with("cache.imc.dev/"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        keys
    };
    let both = vec![
        format!("cache.imc.dev/{kept}"),
        format!("cache.imc.dev/{gone}"),
    ];
    server.wait_for("node", "snap-node", "labelled with both caches", |n| {
        labels(n) == both
    });
    let wait_deleted = |path: &Path| {
        let deadline = Instant::now() + PATIENCE;
        while path.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never deleted",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_deleted(&disk(orphan));
    assert!(disk(kept).exists() && disk(gone).exists());

    server.kubectl_ok(&["delete", "imagecache", "later-deleted"]);
    let only_kept = vec![format!("cache.imc.dev/{kept}")];
    server.wait_for(
        "node",
        "snap-node",
        "labelled with the kept cache only",
        |n| labels(n) == only_kept,
    );
    wait_deleted(&disk(gone));
    assert!(
        disk(kept).exists(),
        "the cache that still exists keeps its disk"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &snapshotter.id().to_string()])
        .status();
    assert!(snapshotter.wait().unwrap().success());
}
