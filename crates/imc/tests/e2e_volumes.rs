//! Pod volumes on the node (issues 8 and 9): `emptyDir` shared by two containers, a
//! memory-backed one with its size limit, `hostPath` where Pod Security admits it, `readOnly`
//! and `subPath`, and a `subPath` that a container points out of its volume refused. Real
//! `imc server`, kubectl, runc and mounts.

mod run_support;

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::pod_running;
use run_support::{Registry, registry_with_images};
use serde_json::{Value, json};

fn start(reg: &Registry) -> TestServer {
    let args = [
        "--node-name".to_owned(),
        "imc-volumes-node".to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts")
}

fn pod(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

#[test]
fn two_containers_share_an_empty_dir_and_a_memory_one_has_its_size() {
    let reg = registry_with_images();
    let server = start(&reg);
    server.create_ok(pod(
        "shared",
        json!({
            "volumes": [{"name": "data", "emptyDir": {}},
                        {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}}],
            "containers": [
                {"name": "writer", "image": reg.busybox,
                 "command": ["sh", "-c", "echo hello > /data/msg; sleep 3600"],
                 "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                {"name": "reader", "image": reg.busybox,
                 "command": ["sh", "-c", "until [ -f /data/msg ]; do sleep 0.1; done; cat /data/msg; df -k /mem | tail -1; touch /data/ro 2>&1 || echo data-is-read-only; sleep 3600"],
                 "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true},
                                  {"name": "mem", "mountPath": "/mem"}]}
            ]
        }),
    ));
    server.wait_for("pod", "shared", "Running", pod_running);
    let log = server.wait_for_log("shared", "reader", "data-is-read-only");
    assert!(log.starts_with("hello\n"), "{log}");
    let df = log.lines().nth(1).unwrap();
    let fields: Vec<&str> = df.split_whitespace().collect();
    assert_eq!(fields[0], "tmpfs", "{df}");
    assert_eq!(fields[1], "8192", "an 8Mi tmpfs: {df}");
    let uid = server.get_json("pod", "shared").unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let on_host = server.data_dir().join(format!(
        "pods/{uid}/volumes/kubernetes.io~empty-dir/data/msg"
    ));
    assert_eq!(std::fs::read_to_string(&on_host).unwrap(), "hello\n");

    server.kubectl_ok(&["delete", "pod", "shared", "--grace-period=1"]);
    server.wait_gone("pod", "shared");
    assert!(!on_host.exists(), "the emptyDir goes with its pod");
    assert!(
        imc_testkit::leftovers::mounts_under(server.data_dir()).is_empty(),
        "the memory emptyDir was unmounted"
    );
}

#[test]
fn host_path_is_denied_in_baseline_and_mounted_where_admitted_with_sub_path() {
    let reg = registry_with_images();
    let server = start(&reg);
    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir(host.path().join("sub")).unwrap();
    std::fs::write(host.path().join("sub/file"), "from the host\n").unwrap();
    let spec = json!({
        "restartPolicy": "Never",
        "volumes": [{"name": "h", "hostPath": {"path": host.path(), "type": "Directory"}}],
        "containers": [{"name": "app", "image": reg.busybox,
            "command": ["sh", "-c", "cat /host/file; touch /host/new 2>&1 || echo host-is-read-only"],
            "volumeMounts": [{"name": "h", "mountPath": "/host", "subPath": "sub", "readOnly": true}]}]
    });
    let (ok, out) = server.create(pod("hosty", spec.clone()));
    assert!(!ok, "{out}");
    assert!(
        out.contains("violates PodSecurity \"baseline:latest\": hostPath volumes (volume \"h\")"),
        "{out}"
    );

    server.kubectl_ok(&["create", "namespace", "ops"]);
    server.kubectl_ok(&[
        "label",
        "namespace",
        "ops",
        "pod-security.kubernetes.io/enforce=privileged",
    ]);
    let (ok, out) = server.kubectl_args_stdin(
        &["create", "-n", "ops", "-f", "-"],
        &pod("hosty", spec).to_string(),
    );
    assert!(ok, "{out}");
    server.wait_for_in("pod", "hosty", &["-n", "ops"], "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let log = server.kubectl_ok(&["logs", "-n", "ops", "hosty"]);
    assert!(log.starts_with("from the host\n"), "{log}");
    assert!(log.contains("host-is-read-only"), "{log}");
    assert!(!host.path().join("sub/new").exists());
}

#[test]
fn a_sub_path_pointed_out_of_its_volume_is_refused() {
    let reg = registry_with_images();
    let server = start(&reg);
    server.create_ok(pod(
        "escape",
        json!({
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "initContainers": [{"name": "plant", "image": reg.busybox,
                "command": ["sh", "-c", "ln -s /etc /shared/evil"],
                "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}],
            "containers": [{"name": "app", "image": reg.busybox, "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "shared", "mountPath": "/stolen", "subPath": "evil"}]}]
        }),
    ));
    let p = server.wait_for("pod", "escape", "refused", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            == "CreateContainerConfigError"
    });
    let message = p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("leaves its volume"), "{message}");
    assert!(
        server
            .events_about("escape")
            .iter()
            .any(|e| e["reason"] == "FailedMount"),
        "a FailedMount event"
    );
}
