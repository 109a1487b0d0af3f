//! Cache disks shipped through a registry (issue 13 item 4, issue 14 item 3): `imc server
//! --cache-registry` pushes a Ready cache's disk as an OCI artifact and records it in
//! `status.artifact`; `imc snapshotter --kubeconfig --cache-registry` on a second data dir
//! fetches it once, labels its Node, and serves containerd the image with no layer blob pulled;
//! deleting the ImageCache removes the fetched disk (once unused) and the label. Real `imc
//! server`, real kubectl, real docker-registry behind counting proxies, real containerd 1.6.

mod run_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use imc_testkit::apiserver::TestServer;
use imc_testkit::containerd::{Containerd, ContainerdOptions};
use imc_testkit::kubectl::eventually;
use imc_testkit::proxy::Proxy;
use run_support::{Registry, imc, registry_with_images};
use serde_json::Value;

/// The image registry, a counting proxy in front of it for the cache artifacts
/// (`PROXY/imc-caches`) and an `imc server` pushing there.
struct Shipping {
    reg: Registry,
    artifacts: Proxy,
    server: TestServer,
}

impl Shipping {
    fn start() -> Shipping {
        let reg = registry_with_images();
        let artifacts = Proxy::start(&reg.registry.host()).expect("proxy");
        let args = vec![
            "--plain-http".to_owned(),
            reg.registry.host(),
            "--plain-http".to_owned(),
            artifacts.host_port(),
            "--cache-registry".to_owned(),
            format!("{}/imc-caches", artifacts.host_port()),
        ];
        let server =
            TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server");
        Shipping {
            reg,
            artifacts,
            server,
        }
    }

    /// Creates ImageCache `name` of the busybox image and waits until its artifact is recorded.
    fn pushed_cache(&self, name: &str) -> Value {
        self.server.create_ok(serde_json::json!({
            "apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
            "metadata": {"name": name},
            "spec": {"images": [self.reg.busybox]}
        }));
        self.server
            .wait_for("imagecache", name, "its disk pushed", |c| {
                c["status"]["artifact"]["digest"].is_string()
            })
    }

    /// GETs of the disk blob `digest` through the artifact proxy.
    fn blob_gets(&self, digest: &str) -> usize {
        self.artifacts
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/blobs/{digest}")))
            .count()
    }
}

fn get_manifest(host: &str, reference: &str) -> Value {
    imc_testkit::registry::get_manifest(host, "imc-caches", reference)
        .unwrap_or_else(|e| panic!("manifest {reference}: {e:#}"))
}

#[test]
fn a_ready_cache_is_pushed_as_an_artifact_and_recorded_in_its_status() {
    let s = Shipping::start();
    let cache = s.pushed_cache("shipped");
    let status = &cache["status"];
    let id = status["imageCacheId"].as_str().expect("id");
    let digest = status["artifact"]["digest"].as_str().expect("digest");
    assert_eq!(
        status["artifact"]["reference"].as_str(),
        Some(format!("{}/imc-caches@{digest}", s.artifacts.host_port()).as_str())
    );
    assert_eq!(status["artifact"]["generation"], 1);
    let condition = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "ArtifactPushed"))
        .cloned()
        .expect("ArtifactPushed condition");
    assert_eq!(condition["status"], "True", "{condition}");

    // The registry holds an imc cache artifact naming the image and its digest.
    let manifest = get_manifest(&s.reg.registry.host(), digest);
    assert_eq!(manifest["artifactType"], "application/vnd.imc.cache.v1");
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.imc.cache.disk.v1.erofs"
    );
    assert_eq!(manifest["layers"][0]["size"], status["size"]);
    assert_eq!(manifest["annotations"]["dev.imc.cache.id"], id);
    let images: Value = serde_json::from_str(
        manifest["annotations"]["dev.imc.cache.images"]
            .as_str()
            .expect("images annotation"),
    )
    .expect("images JSON");
    assert_eq!(images[0]["image"].as_str(), Some(s.reg.busybox.as_str()));
    assert_eq!(images[0]["digest"], status["images"][0]["digest"]);
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.title"].as_str(),
        Some(s.reg.busybox.as_str())
    );
    // The tag is the cache id.
    assert_eq!(get_manifest(&s.reg.registry.host(), id), manifest);

    // The CRD (generated from the Rust type) documents the field.
    let explained = s
        .server
        .kubectl_ok(&["explain", "imagecache.status.artifact"]);
    assert!(
        explained.contains("reference") && explained.contains("digest"),
        "{explained}"
    );

    let event = s.server.wait_for_event("shipped", "ArtifactPushed", |e| {
        e["reason"] == "ArtifactPushed"
    });
    assert!(
        event["message"]
            .as_str()
            .is_some_and(|n| n.contains(digest)),
        "{event}"
    );
}

/// `imc snapshotter` on its own data dir, wired to the server's cluster and the cache registry.
struct SnapshotterNode {
    data: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
    containerd: Option<Containerd>,
    _tmp: tempfile::TempDir,
}

impl Drop for SnapshotterNode {
    fn drop(&mut self) {
        drop(self.containerd.take());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(attacher) = imc_snapshot::Attacher::new(&self.data) {
            let _ = attacher.recover();
        }
    }
}

fn node_cache_labels(n: &Value) -> Vec<String> {
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
}

fn erofs_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn the_snapshotter_fetches_ready_caches_once_serves_them_to_containerd_and_drops_them() {
    let s = Shipping::start();
    let node = "shipped-node";
    s.server.create_ok(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": {"zone": "a"}}
    }));
    // Not for this node: its prefetch selector wants another zone.
    s.server.create_ok(serde_json::json!({
        "apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
        "metadata": {"name": "elsewhere",
                     "annotations": {"imc.dev/prefetch-node-selector": "zone=b"}},
        "spec": {"images": [s.reg.partial]}
    }));
    let cache = s.pushed_cache("for-this-node");
    let id = cache["status"]["imageCacheId"].as_str().unwrap().to_owned();
    let artifact = s
        .server
        .wait_for("imagecache", "elsewhere", "its disk pushed", |c| {
            c["status"]["artifact"]["digest"].is_string()
        });
    let manifest = get_manifest(
        &s.reg.registry.host(),
        cache["status"]["artifact"]["digest"].as_str().unwrap(),
    );
    let disk_digest = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let other_id = artifact["status"]["imageCacheId"].as_str().unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let socket = tmp.path().join("imc-snapshotter.sock");
    let child = imc()
        .args(["snapshotter", "--data-dir"])
        .arg(&data)
        .arg("--socket")
        .arg(&socket)
        .arg("--kubeconfig")
        .arg(s.server.kubeconfig())
        .args(["--node-name", node])
        .args(["--plain-http", &s.artifacts.host_port()])
        .args([
            "--cache-registry",
            &format!("{}/imc-caches", s.artifacts.host_port()),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut n = SnapshotterNode {
        data: data.clone(),
        socket: socket.clone(),
        child: Some(child),
        containerd: None,
        _tmp: tmp,
    };
    let want_label = vec![format!("cache.imc.dev/{id}")];
    s.server
        .wait_for("node", node, "labelled with the fetched cache", |n| {
            node_cache_labels(n) == want_label
        });
    let caches = data.join("caches");
    assert_eq!(
        erofs_files(&caches),
        [format!("{id}.erofs"), format!("{id}.g1.erofs")],
        "the fetched disk and its stable name; nothing of the other zone's cache ({other_id})"
    );
    assert_eq!(
        s.blob_gets(&disk_digest),
        1,
        "the disk blob was fetched once"
    );

    // containerd pulls the cached image through a counting proxy: no layer blob crosses it.
    eventually("the snapshotter serves", || n.socket.exists().then_some(()))
        .expect("imc snapshotter serves its socket");
    let pulls = Proxy::start(&s.reg.registry.host()).expect("pull proxy");
    let containerd = Containerd::start_with(
        Some(n._tmp.path()),
        ContainerdOptions {
            proxy_snapshotters: vec![("imc".into(), n.socket.clone())],
            cri_snapshotter: Some("imc".into()),
        },
    )
    .expect("containerd with the imc proxy snapshotter");
    containerd
        .plain_http_host(&pulls.host_port(), &pulls.host_port())
        .unwrap();
    let image = s
        .reg
        .busybox
        .replace(&s.reg.registry.host(), &pulls.host_port());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(containerd.cri_pull(&image))
        .unwrap_or_else(|e| panic!("CRI pull: {e:#}\n{}", containerd.log_tail()));
    let blobs: Vec<String> = pulls
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(blobs.len(), 1, "the config only, no layer blob: {blobs:?}");
    assert!(
        !blobs[0].contains(&s.reg.base.digest.to_string()),
        "{blobs:?}"
    );
    let ctr = |args: &[&str]| {
        containerd
            .ctr()
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "imc",
        &image,
        &format!("imc-ship-{}", std::process::id()),
        "cat",
        "/etc/group",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("app:x:1000:"));

    // Deleting the ImageCache drops the label at once and the disk once containerd lets go.
    s.server
        .kubectl_ok(&["delete", "imagecache", "for-this-node", "--wait=false"]);
    s.server.wait_for("node", node, "no cache label", |n| {
        node_cache_labels(n).is_empty()
    });
    assert!(
        caches.join(format!("{id}.g1.erofs")).exists(),
        "the disk stays while containerd's snapshots use it"
    );
    let ctr_ok = |args: &[&str]| {
        let out = ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ctr_ok(&["images", "rm", &image]);
    let listed = ctr_ok(&["snapshots", "--snapshotter", "imc", "ls"]);
    for snapshot in listed
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
    {
        ctr_ok(&["snapshots", "--snapshotter", "imc", "rm", snapshot]);
    }
    // containerd's garbage collection (run now by deleting a lease with --sync) tells the
    // snapshotter to let go.
    let lease = ctr_ok(&["leases", "create"]);
    let lease = lease.split_whitespace().next().unwrap().to_string();
    ctr_ok(&["leases", "rm", "--sync", &lease]);
    let gone = eventually("the fetched disk deleted", || {
        erofs_files(&caches).is_empty().then_some(())
    });
    assert!(gone.is_some(), "left: {:?}", erofs_files(&caches));
    n.containerd = Some(containerd);
    if let Some(mut child) = n.child.take() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        assert!(child.wait().unwrap().success());
    }
}

#[test]
fn a_failing_push_is_retried_and_reported_without_failing_the_cache() {
    let reg = registry_with_images();
    // Nothing listens there: every push attempt fails to connect.
    let unreachable = format!("127.0.0.1:{}", imc_testkit::registry::free_port());
    let args = vec![
        "--plain-http".to_owned(),
        reg.registry.host(),
        "--plain-http".to_owned(),
        unreachable.clone(),
        "--cache-registry".to_owned(),
        format!("{unreachable}/imc-caches"),
    ];
    let server = TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server");
    server.create_ok(serde_json::json!({
        "apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
        "metadata": {"name": "unshipped"},
        "spec": {"images": [reg.busybox]}
    }));
    let cache = server.wait_for("imagecache", "unshipped", "push failure reported", |c| {
        c["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "ArtifactPushed" && c["status"] == "False")
        })
    });
    assert_eq!(
        cache["status"]["phase"], "Ready",
        "the cache itself is fine"
    );
    assert!(cache["status"]["artifact"].is_null());
    let condition = cache["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "ArtifactPushed"))
        .cloned()
        .unwrap();
    assert_eq!(condition["reason"], "PushFailed");
    assert!(
        condition["message"]
            .as_str()
            .is_some_and(|m| m.contains(&unreachable)),
        "{condition}"
    );
    // Retried with back-off: the second failure says it waits longer.
    server.wait_for_event("unshipped", "a second failed push", |e| {
        e["reason"] == "ArtifactPushFailed"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("retrying in 10s"))
    });
}

#[test]
fn a_node_lacking_a_pinned_cache_disk_fetches_it_from_the_cache_registry() {
    let s = Shipping::start();
    let built = s.pushed_cache("shared");
    let id = built["status"]["imageCacheId"].as_str().unwrap().to_owned();
    let digest = built["status"]["artifact"]["digest"].as_str().unwrap();
    let disk_digest = get_manifest(&s.reg.registry.host(), digest)["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();

    // A second machine: its own data dir, API, controllers and node; the cache's status is the
    // first one's (B never built it).
    let args = vec![
        "--disable".to_owned(),
        "admission".to_owned(),
        "--plain-http".to_owned(),
        s.reg.registry.host(),
        "--plain-http".to_owned(),
        s.artifacts.host_port(),
        "--cache-registry".to_owned(),
        format!("{}/imc-caches", s.artifacts.host_port()),
    ];
    let other = TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("server B");
    other.create_ok(serde_json::json!({
        "apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
        "metadata": {"name": "shared"},
        "spec": {"images": [s.reg.busybox]}
    }));
    let status = serde_json::json!({"status": {
        "imageCacheId": id,
        "phase": "Ready",
        "images": built["status"]["images"],
        "artifact": built["status"]["artifact"],
        // As built: B's cache controller sees nothing to build.
        "observedGeneration": built["status"]["observedGeneration"],
        "buildSpec": built["status"]["buildSpec"],
    }})
    .to_string();
    other.kubectl_ok(&[
        "patch",
        "imagecache",
        "shared",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
    let node = eventually("server B's node registered", || {
        let nodes: Value =
            serde_json::from_str(&other.kubectl_ok(&["get", "nodes", "-o", "json"])).ok()?;
        nodes["items"][0]["metadata"]["name"]
            .as_str()
            .map(str::to_owned)
    })
    .expect("a node");
    other.create_ok(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "pinned", "namespace": "default",
                     "annotations": {"k8s.aliyun.com/eci-image-snapshot-id": id}},
        "spec": {"nodeName": node, "restartPolicy": "Never", "containers": [{
            "name": "c", "image": s.reg.busybox,
            "command": ["sh", "-c", "grep app /etc/group"]}]}
    }));
    other.wait_for("pod", "pinned", "succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let events: Vec<String> = other
        .events_about("pinned")
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect();
    assert!(
        events.iter().any(|r| r == "ImageCacheFetched")
            && events.iter().any(|r| r == "SuccessfulHitImageCache"),
        "{events:?}"
    );
    assert!(
        other
            .data_dir()
            .join(format!("caches/{id}.g1.erofs"))
            .is_file()
    );
    assert_eq!(s.blob_gets(&disk_digest), 1, "the disk was fetched once");
}
