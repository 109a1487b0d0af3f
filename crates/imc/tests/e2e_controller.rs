//! `imc controller` (issue 13 item 2) against `imc server --api-only` acting as a bare cluster:
//! two replicas elect one leader on a Lease, only the leader builds; when the leader dies in the
//! middle of a build the other takes the Lease over and completes that build; a graceful stop
//! gives the Lease up. Real server, real kubectl, real docker-registry behind a slow link.

mod run_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::PATIENCE;
use imc_testkit::proxy::{Fault, Proxy};
use run_support::registry_with_images;
use serde_json::{Value, json};

/// One `imc controller` process with its own data dir.
struct Replica {
    child: Child,
    dir: tempfile::TempDir,
}

impl Replica {
    fn start(server: &TestServer, registry: &str) -> Replica {
        let dir = tempfile::Builder::new()
            .prefix("imc-controller-")
            .tempdir()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("controller.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_imc"))
            .arg("controller")
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--plain-http", registry])
            .args(["--leader-election-lease-duration", "4s"])
            .args(["--leader-election-renew-deadline", "3s"])
            .args(["--leader-election-retry-period", "500ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("imc controller starts");
        Replica { child, dir }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Cache disks this replica published (`DIR/caches/<id>.erofs`, a symlink to the
    /// generation it built).
    fn disks(&self) -> usize {
        let caches = self.dir.path().join("data/caches");
        std::fs::read_dir(caches)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".erofs"))
                    .count()
            })
            .unwrap_or(0)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Lease's holder, once someone holds it.
fn holder(server: &TestServer) -> Option<String> {
    let lease = server.get_json_in("lease", "imc-controller", &["-n", "imc-system"])?;
    lease["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
}

fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cache(name: &str, image: &str) -> Value {
    json!({"apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
        "metadata": {"name": name}, "spec": {"images": [image]}})
}

fn phase(server: &TestServer, name: &str) -> String {
    server
        .get_json("imagecache", name)
        .and_then(|c| c["status"]["phase"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn disk_count(replicas: &[&Replica]) -> usize {
    replicas.iter().map(|r| r.disks()).sum()
}

#[test]
fn one_leader_builds_and_a_standby_takes_over_a_build_in_flight() {
    let reg = registry_with_images();
    let proxy = Proxy::start(&reg.registry.host()).unwrap();
    let through_proxy = |image: &str| image.replacen(&reg.registry.host(), &proxy.host_port(), 1);
    let image = through_proxy(&reg.busybox);
    let server = TestServer::start_api_only(env!("CARGO_BIN_EXE_imc"), None).unwrap();
    server.kubectl_ok(&["create", "namespace", "imc-system"]);
    let a = Replica::start(&server, &proxy.host_port());
    let b = Replica::start(&server, &proxy.host_port());
    let first = wait_until("a leader", || holder(&server));
    let (leader, standby) = if first.ends_with(&format!("_{}", a.pid())) {
        (a, b)
    } else {
        assert!(first.ends_with(&format!("_{}", b.pid())), "holder {first}");
        (b, a)
    };

    // Only the leader builds.
    server.create_ok(cache("first", &image));
    wait_until("cache first Ready", || {
        (phase(&server, "first") == "Ready").then_some(())
    });
    assert_eq!(leader.disks(), 1, "{}", leader.log());
    assert_eq!(
        standby.disks(),
        0,
        "the standby built too: {}",
        standby.log()
    );
    assert!(
        standby.log().contains("waiting to become the leader"),
        "{}",
        standby.log()
    );

    // The leader dies while it downloads the second image's layers (slowed to a trickle); the
    // standby takes the Lease over and builds the cache.
    let blobs = "/v2/imc/layered/blobs/";
    proxy.add_fault(
        blobs,
        Fault::Slow {
            bytes_per_sec: 1_000,
        },
    );
    server.create_ok(cache("second", &through_proxy(&reg.layered)));
    wait_until("the leader downloading", || {
        proxy
            .requests()
            .iter()
            .any(|r| r.path.starts_with(blobs))
            .then_some(())
    });
    assert_eq!(phase(&server, "second"), "Creating");
    let mut leader = leader;
    leader.child.kill().unwrap();
    leader.child.wait().unwrap();
    proxy.clear_faults();
    let killed_at = Instant::now();
    let next = wait_until("a new leader", || holder(&server).filter(|h| *h != first));
    assert!(
        next.ends_with(&format!("_{}", standby.pid())),
        "new holder {next}"
    );
    eprintln!("failover after {:?}", killed_at.elapsed());
    wait_until("cache second Ready", || {
        (phase(&server, "second") == "Ready").then_some(())
    });
    // Each cache was built exactly once: the first by the old leader, the second by the new.
    assert_eq!(standby.disks(), 1, "{}", standby.log());
    assert_eq!(leader.disks(), 1, "the dead leader finished its build");
    assert_eq!(disk_count(&[&leader, &standby]), 2);

    // A graceful stop gives the Lease up at once.
    let status = Command::new("kill")
        .args(["-TERM", &standby.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut standby = standby;
    let exit = standby.child.wait().unwrap();
    assert!(exit.success(), "{exit}: {}", standby.log());
    assert_eq!(holder(&server), None, "the Lease is still held");
    assert!(
        standby.log().contains("released the lease"),
        "{}",
        standby.log()
    );
}
