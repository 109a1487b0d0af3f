//! The node honours a pod's securityContext and resources or refuses them with a reason
//! (issue 8): a real `imc server` (scheduler, node), real kubectl, real runc and cgroups,
//! busybox-based images from a real docker-registry.

mod run_support;

use std::time::Instant;

use imc_testkit::apiserver::TestServer;
use imc_testkit::image::{
    BuiltImage, Entry, Format, ImageBuilder, ImageConfig, Kind, LayerBuilder, Meta,
};
use imc_testkit::kubectl::{PATIENCE, pod_running};
use run_support::{APPLETS, Registry, registry_with_images};
use serde_json::{Value, json};

const NODE: &str = "imc-security-node";

fn start(reg: &Registry) -> TestServer {
    let args = [
        "--node-name".to_owned(),
        NODE.to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts")
}

fn pod(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

fn terminated(pod: &Value, idx: usize) -> &Value {
    &pod["status"]["containerStatuses"][idx]["state"]["terminated"]
}

fn waiting(pod: &Value, idx: usize) -> &Value {
    &pod["status"]["containerStatuses"][idx]["state"]["waiting"]
}

/// `NAME:\tvalue` of a `/proc/<pid>/status` text.
fn status_field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// Pushes a one-layer busybox image whose `/etc/passwd` is a FIFO and whose `User` is a name,
/// so resolving it would block on a naive open.
fn push_fifo_image(reg: &Registry) -> String {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static installed");
    let mut layer = LayerBuilder::new()
        .dir("bin")
        .dir("etc")
        .file_with("bin/busybox", busybox, Meta::mode(0o755))
        .entry(Entry {
            path: b"etc/passwd".to_vec(),
            kind: Kind::Fifo,
            link: Vec::new(),
            content: Vec::new(),
            meta: Meta::mode(0o644),
        });
    for applet in APPLETS {
        layer = layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    let image: BuiltImage = ImageBuilder::new(Format::Oci)
        .config(ImageConfig {
            cmd: Some(vec!["sh".into(), "-c".into(), "echo started".into()]),
            user: Some("app".into()),
            ..Default::default()
        })
        .layer(layer.build())
        .build();
    let host = reg.registry.host();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(imc_testkit::image::push(
        &host, "imc/fifo", "1", &image, None,
    ))
    .expect("push the fifo image");
    format!("{host}/imc/fifo:1")
}

#[test]
fn every_security_context_field_is_honoured() {
    let reg = registry_with_images();
    let server = start(&reg);
    let script = "id; cat /proc/self/status; touch /written 2>&1 || echo rootfs-read-only";
    server.create_ok(pod(
        "locked",
        json!({
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000,
                "supplementalGroups": [4000], "runAsNonRoot": true,
                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {"name": "locked", "image": reg.busybox, "command": ["sh", "-c", script],
                 "securityContext": {"allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}},
                {"name": "plain", "image": reg.busybox, "command": ["sh", "-c", script],
                 "securityContext": {"runAsUser": 0, "runAsNonRoot": false}}
            ]
        }),
    ));
    server.wait_for("pod", "locked", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });

    let locked = server.kubectl_ok(&["logs", "locked", "-c", "locked"]);
    let id = locked.lines().next().unwrap();
    assert!(id.starts_with("uid=1000(app) gid=3000"), "{id}");
    assert!(
        id.contains("2000") && id.contains("4000"),
        "fsGroup and supplementalGroups: {id}"
    );
    assert_eq!(status_field(&locked, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&locked, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(&locked, "NoNewPrivs"), "1");
    assert_eq!(status_field(&locked, "Seccomp"), "2");
    assert!(locked.contains("Read-only file system"), "{locked}");
    assert!(locked.contains("rootfs-read-only"), "{locked}");

    // Unset fields get the runtime's defaults: Docker's capabilities, the default seccomp
    // profile (the kubelet's --seccomp-default), privilege escalation allowed, writable rootfs.
    let plain = server.kubectl_ok(&["logs", "locked", "-c", "plain"]);
    assert!(plain.starts_with("uid=0(root) gid=3000"), "{plain}");
    assert_eq!(status_field(&plain, "CapEff"), "00000000a80425fb");
    assert_eq!(status_field(&plain, "NoNewPrivs"), "0");
    assert_eq!(status_field(&plain, "Seccomp"), "2");
    assert!(!plain.contains("rootfs-read-only"), "{plain}");
}

#[test]
fn privileged_and_host_namespaces_are_honoured_where_admitted() {
    let reg = registry_with_images();
    let server = start(&reg);
    server.kubectl_ok(&["create", "namespace", "ops"]);
    server.kubectl_ok(&[
        "label",
        "namespace",
        "ops",
        "pod-security.kubernetes.io/enforce=privileged",
    ]);
    let script = "cat /proc/self/status; cat /proc/sys/kernel/hostname; ls /proc | wc -l";
    let manifest = pod(
        "root",
        json!({
            "restartPolicy": "Never", "hostPID": true,
            "containers": [{"name": "root", "image": reg.busybox, "command": ["sh", "-c", script],
                "securityContext": {"privileged": true}}]
        }),
    );
    let (ok, out) =
        server.kubectl_args_stdin(&["create", "-n", "ops", "-f", "-"], &manifest.to_string());
    assert!(ok, "{out}");
    server.wait_for_in("pod", "root", &["-n", "ops"], "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let log = server.kubectl_ok(&["logs", "-n", "ops", "root"]);
    // Every capability the node itself holds (containerd's "all"), no seccomp filter.
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    assert_eq!(
        status_field(&log, "CapEff"),
        status_field(&own, "CapBnd"),
        "{log}"
    );
    assert_eq!(status_field(&log, "Seccomp"), "0");
    // The hostname is the pod's name; hostPID shows the host's processes.
    assert!(log.lines().any(|l| l == "root"), "{log}");
    let procs: usize = log.lines().last().unwrap().trim().parse().unwrap();
    assert!(
        procs > 20,
        "the host's pid namespace has many processes: {log}"
    );
}

#[test]
fn memory_limit_oom_kills_with_reason_oom_killed_and_limits_reach_the_cgroup() {
    let reg = registry_with_images();
    let server = start(&reg);
    server.create_ok(pod(
        "hog",
        json!({
            "restartPolicy": "Never",
            "containers": [{"name": "hog", "image": reg.busybox,
                "command": ["sh", "-c", "x=$(dd if=/dev/urandom bs=1M count=256 2>/dev/null); echo survived"],
                "resources": {"limits": {"memory": "64Mi"}}}]
        }),
    ));
    let hog = server.wait_for("pod", "hog", "ended", |p| terminated(p, 0).is_object());
    assert_eq!(terminated(&hog, 0)["reason"], "OOMKilled", "{hog:#}");
    assert_eq!(terminated(&hog, 0)["exitCode"], 137, "{hog:#}");
    assert_eq!(hog["status"]["phase"], "Failed");

    // Requests and limits of a running container are its cgroup's settings.
    server.create_ok(pod(
        "limited",
        json!({
            "containers": [{"name": "app", "image": reg.busybox, "command": ["sleep", "3600"],
                "resources": {"requests": {"cpu": "250m", "memory": "32Mi"},
                              "limits": {"cpu": "500m", "memory": "128Mi"}}}]
        }),
    ));
    let limited = server.wait_for("pod", "limited", "Running", pod_running);
    let uid = limited["metadata"]["uid"].as_str().unwrap();
    let read = |controller: &str, file: &str| {
        let unified = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let path = if unified {
            format!("/sys/fs/cgroup/imc/{uid}/app/{file}")
        } else {
            format!("/sys/fs/cgroup/{controller}/imc/{uid}/app/{file}")
        };
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_owned()
    };
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert_eq!(read("", "memory.max"), (128u64 << 20).to_string());
        assert_eq!(read("", "cpu.max"), "50000 100000");
        assert_eq!(read("", "pids.max"), "4096");
    } else {
        assert_eq!(
            read("memory", "memory.limit_in_bytes"),
            (128u64 << 20).to_string()
        );
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu", "cpu.shares"), "256");
        assert_eq!(read("pids", "pids.max"), "4096");
    }
    server.kubectl_ok(&["delete", "pod", "limited", "--grace-period=1"]);
    server.wait_gone("pod", "limited");
    // The pod's cgroups go with it.
    let pod_cgroup = if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        format!("/sys/fs/cgroup/imc/{uid}")
    } else {
        format!("/sys/fs/cgroup/memory/imc/{uid}")
    };
    assert!(
        !std::path::Path::new(&pod_cgroup).exists(),
        "{pod_cgroup} left behind"
    );
}

#[test]
fn run_as_non_root_with_a_root_image_is_a_config_error() {
    let reg = registry_with_images();
    let server = start(&reg);
    server.create_ok(pod(
        "rooted",
        json!({
            "securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "app", "image": reg.busybox, "command": ["sleep", "3600"]}]
        }),
    ));
    let p = server.wait_for("pod", "rooted", "refused", |p| {
        waiting(p, 0)["reason"] == "CreateContainerConfigError"
    });
    let message = waiting(&p, 0)["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("container has runAsNonRoot and image will run as root"),
        "{message}"
    );
    assert_eq!(p["status"]["phase"], "Pending");
    // Nothing runs for it.
    let data = server.data_dir().to_path_buf();
    assert!(
        imc_testkit::leftovers::runc_containers(&data).is_empty(),
        "a refused container must not run"
    );
}

#[test]
fn a_fifo_passwd_fails_the_pod_while_the_api_keeps_answering() {
    let reg = registry_with_images();
    let fifo = push_fifo_image(&reg);
    let server = start(&reg);
    server.create_ok(pod(
        "fifo",
        json!({"restartPolicy": "Never", "containers": [{"name": "app", "image": fifo}]}),
    ));
    let started = Instant::now();
    let p = server.wait_for("pod", "fifo", "failed", |p| terminated(p, 0).is_object());
    assert!(started.elapsed() < PATIENCE);
    let message = terminated(&p, 0)["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("/etc/passwd") && message.contains("FIFO"),
        "{p:#}"
    );
    assert_eq!(terminated(&p, 0)["exitCode"], 128);
    assert_eq!(p["status"]["phase"], "Failed");
    // The API server answers throughout (nothing blocked its threads).
    let ns = server.kubectl_ok(&["get", "ns", "-o", "name"]);
    assert!(ns.contains("namespace/default"), "{ns}");
    let events: Vec<String> = server
        .events_about("fifo")
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect();
    assert!(
        events.iter().any(|m| m.contains("is not a regular file")),
        "{events:?}"
    );
}

#[test]
fn a_changed_image_restarts_its_container() {
    let reg = registry_with_images();
    let server = start(&reg);
    server.create_ok(pod(
        "swap",
        json!({"terminationGracePeriodSeconds": 1,
               "containers": [{"name": "app", "image": reg.busybox, "command": ["sleep", "3600"]}]}),
    ));
    let before = server.wait_for("pod", "swap", "Running", pod_running);
    let first_id = before["status"]["containerStatuses"][0]["imageID"].clone();
    server.kubectl_ok(&["set", "image", "pod/swap", &format!("app={}", reg.layered)]);
    let after = server.wait_for("pod", "swap", "restarted on the new image", |p| {
        let c = &p["status"]["containerStatuses"][0];
        c["restartCount"] == 1 && c["state"]["running"].is_object() && c["image"] == reg.layered
    });
    assert_ne!(
        after["status"]["containerStatuses"][0]["imageID"], first_id,
        "{after:#}"
    );
    let killing: Vec<String> = server
        .events_about("swap")
        .iter()
        .filter(|e| e["reason"] == "Killing")
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect();
    assert!(
        killing
            .iter()
            .any(|m| m == "Container app definition changed, will be restarted"),
        "{killing:?}"
    );
}

#[test]
fn a_container_over_its_ephemeral_storage_limit_gets_its_pod_evicted() {
    let reg = registry_with_images();
    let server = start(&reg);
    server.create_ok(pod(
        "filler",
        json!({"containers": [
            {"name": "app", "image": reg.busybox,
             "command": ["sh", "-c", "dd if=/dev/zero of=/tmp/fill bs=1M count=4; sleep 3600"],
             "resources": {"limits": {"ephemeral-storage": "1Mi"}}},
            {"name": "sidecar", "image": reg.busybox, "command": ["sleep", "3600"]}
        ]}),
    ));
    // The phase turns Failed as the eviction begins; each container's end follows as it stops.
    let p = server.wait_for("pod", "filler", "evicted, every container stopped", |p| {
        p["status"]["phase"] == "Failed" && (0..2).all(|idx| terminated(p, idx).is_object())
    });
    assert_eq!(p["status"]["reason"], "Evicted", "{p:#}");
    assert_eq!(
        p["status"]["message"],
        "Container app exceeded its local ephemeral storage limit \"1Mi\". "
    );
    // Every container of the pod stopped, and none is restarted.
    for idx in 0..2 {
        assert!(terminated(&p, idx).is_object(), "{p:#}");
    }
    let evicted: Vec<Value> = server
        .events_about("filler")
        .into_iter()
        .filter(|e| e["reason"] == "Evicted")
        .collect();
    assert_eq!(evicted.len(), 1, "{evicted:#?}");
}
