//! Scheduling end to end (issue 8 item 3): a real `imc server` (API, controllers, scheduler,
//! node), real kubectl, busybox-based images from a real docker-registry, real runc. Pods that
//! do not fit (resources, nodeSelector, node affinity, taints, a cordoned node) stay Pending
//! with `PodScheduled=False` and a `FailedScheduling` event in kube-scheduler's words, and run
//! once the node changes so that they fit; the node's allocatable is capacity less the kubelet's
//! eviction thresholds, and the node keeps the labels and taints users add.

mod run_support;

use imc_controllers::quantity::parse_bytes;
use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::pod_running;
use imc_testkit::leftovers::runc_containers;
use run_support::{Registry, registry_with_images};
use serde_json::{Value, json};

const NODE: &str = "imc-sched-node";

fn setup() -> (Registry, TestServer) {
    let reg = registry_with_images();
    let args = [
        "--node-name".to_owned(),
        NODE.to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    let server =
        TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts");
    (reg, server)
}

/// A pod sleeping in busybox, with `spec` merged into its spec.
fn sleeper(name: &str, image: &str, spec: Value) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "app", "image": image, "command": ["sleep", "3600"]}]}});
    for (k, v) in spec.as_object().cloned().unwrap_or_default() {
        pod["spec"][k] = v;
    }
    pod
}

/// The pod's `PodScheduled` condition.
fn scheduled_condition(pod: &Value) -> Value {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "PodScheduled")
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until `name` is Pending and unschedulable with exactly `message`; the pod then.
fn wait_unschedulable(server: &TestServer, name: &str, message: &str) -> Value {
    let pod = server.wait_for("pod", name, "unschedulable", |p| {
        let c = scheduled_condition(p);
        c["status"] == "False" && c["reason"] == "Unschedulable" && c["message"] == message
    });
    assert_eq!(pod["status"]["phase"], "Pending", "{pod:#}");
    assert!(pod["spec"]["nodeName"].is_null(), "{pod:#}");
    // One FailedScheduling warning from default-scheduler with the same words.
    let failed: Vec<Value> = server
        .events_about(name)
        .into_iter()
        .filter(|e| e["reason"] == "FailedScheduling")
        .collect();
    assert!(
        failed.iter().any(|e| e["type"] == "Warning"
            && e["message"] == message
            && (e["reportingComponent"] == "default-scheduler"
                || e["source"]["component"] == "default-scheduler")),
        "no FailedScheduling event saying {message:?}: {failed:#?}"
    );
    pod
}

/// Waits until `name` runs on the node, bound by the scheduler.
fn wait_running_here(server: &TestServer, name: &str) -> Value {
    let pod = server.wait_for("pod", name, "Running", pod_running);
    assert_eq!(pod["spec"]["nodeName"], NODE, "{pod:#}");
    assert_eq!(scheduled_condition(&pod)["status"], "True", "{pod:#}");
    assert!(
        server
            .events_about(name)
            .iter()
            .any(|e| e["reason"] == "Scheduled"
                && e["message"] == format!("Successfully assigned default/{name} to {NODE}")),
        "no Scheduled event for {name}"
    );
    pod
}

/// The node's `Ready` heartbeat time, to see a heartbeat pass.
fn heartbeat(node: &Value) -> Value {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["lastHeartbeatTime"].clone())
        .unwrap_or(Value::Null)
}

fn ready_node(server: &TestServer) -> Value {
    server.wait_for("node", NODE, "Ready", |n| heartbeat(n).is_string())
}

/// Waits for the next heartbeat after `node` was read; the node then.
fn after_heartbeat(server: &TestServer, node: &Value) -> Value {
    let before = heartbeat(node);
    server.wait_for("node", NODE, "heartbeat renewed", |n| {
        heartbeat(n) != before
    })
}

fn bytes(q: &Value) -> u64 {
    parse_bytes(q.as_str().expect("a quantity")).expect("a valid quantity")
}

#[test]
fn a_pod_larger_than_the_node_stays_pending_and_never_gets_a_container() {
    let (reg, server) = setup();
    let node = ready_node(&server);

    // kubectl get node: allocatable is capacity less the kubelet's eviction thresholds.
    let (cap, alloc) = (&node["status"]["capacity"], &node["status"]["allocatable"]);
    assert_eq!(
        bytes(&alloc["memory"]),
        bytes(&cap["memory"]) - (100 << 20),
        "{node:#}"
    );
    let disk = bytes(&cap["ephemeral-storage"]);
    assert_eq!(
        bytes(&alloc["ephemeral-storage"]),
        disk - disk / 10,
        "{node:#}"
    );
    assert_eq!(alloc["cpu"], cap["cpu"]);
    assert_eq!(alloc["pods"], "110");
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/hostname"], NODE);

    // One byte more memory than the node can give: it never fits.
    let memory = bytes(&alloc["memory"]);
    let wants = |m: u64| {
        json!({"containers": [{"name": "app", "image": reg.busybox,
        "command": ["sleep", "3600"], "resources": {"requests": {"memory": m.to_string()}}}]})
    };
    server.create_ok(sleeper("big", &reg.busybox, wants(memory + 1)));
    let message = "0/1 nodes are available: 1 Insufficient memory. preemption: 0/1 nodes are \
                   available: 1 No preemption victims found for incoming pod.";
    let big = wait_unschedulable(&server, "big", message);

    // Exactly what the node can give fits: the scheduler and the node work, and `big` missed
    // by one byte.
    server.create_ok(sleeper("exact", &reg.busybox, wants(memory)));
    wait_running_here(&server, "exact");

    // `big` is still unbound and nothing of it exists on the host.
    let again = server.get_json("pod", "big").expect("big exists");
    assert!(again["spec"]["nodeName"].is_null(), "{again:#}");
    assert_eq!(scheduled_condition(&again)["message"], message);
    let uid = big["metadata"]["uid"].as_str().expect("a uid");
    assert!(!server.data_dir().join("pods").join(uid).exists());
    let containers = runc_containers(server.data_dir());
    assert!(
        !containers.iter().any(|id| id.starts_with(uid)),
        "{containers:?}"
    );
    let describe = server.kubectl_ok(&["describe", "pod", "big"]);
    for needle in [
        "FailedScheduling",
        "default-scheduler",
        "Insufficient memory",
    ] {
        assert!(describe.contains(needle), "{needle} missing:\n{describe}");
    }
    let table = server.kubectl_ok(&["get", "pod", "big"]);
    assert!(table.contains("Pending"), "{table}");
}

#[test]
fn node_selector_and_affinity_wait_for_a_node_label() {
    let (reg, server) = setup();
    let node = ready_node(&server);

    server.create_ok(sleeper(
        "picky",
        &reg.busybox,
        json!({"nodeSelector": {"disk": "ssd"}}),
    ));
    let mismatch = "0/1 nodes are available: 1 node(s) didn't match Pod's node \
                    affinity/selector. preemption: 0/1 nodes are available: 1 Preemption is not \
                    helpful for scheduling.";
    wait_unschedulable(&server, "picky", mismatch);

    server.kubectl_ok(&["label", "node", NODE, "disk=ssd"]);
    wait_running_here(&server, "picky");

    // Required node affinity reads the same label: NotIn ssd now fits nowhere.
    server.create_ok(sleeper(
        "not-on-ssd",
        &reg.busybox,
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "disk", "operator": "NotIn", "values": ["ssd"]}]}]}}}}),
    ));
    wait_unschedulable(&server, "not-on-ssd", mismatch);

    // The node's heartbeat keeps the user's label (and its own).
    let node = after_heartbeat(&server, &node);
    assert_eq!(node["metadata"]["labels"]["disk"], "ssd", "{node:#}");
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/hostname"], NODE);

    // Relabelled: the affinity pod fits now (a node change retries pending pods).
    server.kubectl_ok(&["label", "node", NODE, "disk=hdd", "--overwrite"]);
    wait_running_here(&server, "not-on-ssd");
}

#[test]
fn taints_and_cordon_keep_new_pods_pending_unless_tolerated() {
    let (reg, server) = setup();
    let node = ready_node(&server);

    server.kubectl_ok(&["taint", "node", NODE, "dedicated=gpu:NoSchedule"]);
    server.create_ok(sleeper("plain", &reg.busybox, json!({})));
    wait_unschedulable(
        &server,
        "plain",
        "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}. \
         preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
    );
    server.create_ok(sleeper(
        "tolerant",
        &reg.busybox,
        json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu",
                                "effect": "NoSchedule"}]}),
    ));
    wait_running_here(&server, "tolerant");

    // The heartbeat leaves the taint alone.
    let node = after_heartbeat(&server, &node);
    let taints = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t["key"] == "dedicated" && t["value"] == "gpu"),
        "{node:#}"
    );

    // Taint removed: the waiting pod runs.
    server.kubectl_ok(&["taint", "node", NODE, "dedicated=gpu:NoSchedule-"]);
    wait_running_here(&server, "plain");

    // Cordoned: new pods wait; uncordoned: they run.
    server.kubectl_ok(&["cordon", NODE]);
    server.create_ok(sleeper("after-cordon", &reg.busybox, json!({})));
    wait_unschedulable(
        &server,
        "after-cordon",
        "0/1 nodes are available: 1 node(s) were unschedulable. preemption: 0/1 nodes are \
         available: 1 Preemption is not helpful for scheduling.",
    );
    server.kubectl_ok(&["uncordon", NODE]);
    wait_running_here(&server, "after-cordon");
}
