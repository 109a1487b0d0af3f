//! DaemonSets end to end (issue 11): a real `imc server` (API server, DaemonSet controller,
//! scheduler, node with runc), a real docker-registry and the real kubectl: one pod on the
//! node with the status counts and kubectl's columns, an image update rolled out (`rollout
//! status`), `rollout history` and `rollout undo` through ControllerRevisions, and a
//! nodeSelector that matches no node until the node is labelled.

mod run_support;

use std::collections::BTreeSet;

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::pod_ready;
use run_support::{Registry, push, registry_with_images, server_image};
use serde_json::{Value, json};

const NODE: &str = "imc-test-node";

struct Setup {
    /// Kept for the test's length: the registry stops when it is dropped.
    _reg: Registry,
    server: TestServer,
    v1: String,
    v2: String,
}

fn setup() -> Setup {
    let reg = registry_with_images();
    let v1 = push(&reg, "imc/agent", &server_image("agent-v1"));
    let v2 = push(&reg, "imc/agent2", &server_image("agent-v2"));
    let args = vec![
        "--node-name".to_owned(),
        NODE.to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    let server =
        TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts");
    Setup {
        _reg: reg,
        server,
        v1,
        v2,
    }
}

fn daemon_set(name: &str, image: &str, node_selector: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"nodeSelector": node_selector,
                    "containers": [{"name": "web", "image": image}]}}}})
}

fn live(pods: &[Value]) -> Vec<Value> {
    pods.iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect()
}

fn images(pods: &[Value]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| p["spec"]["containers"][0]["image"].as_str())
        .map(str::to_owned)
        .collect()
}

fn one_ready_on(image: &str) -> impl Fn(&[Value]) -> bool + '_ {
    move |pods| {
        pods.len() == 1 && pod_ready(&pods[0]) && images(pods) == BTreeSet::from([image.to_owned()])
    }
}

fn table_row(table: &str, name: &str) -> Vec<String> {
    table
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no row {name} in {table}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn revisions(history: &str) -> Vec<String> {
    history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_daemon_set_runs_on_the_node_rolls_and_undoes() {
    let Setup {
        server,
        v1,
        v2,
        _reg,
    } = setup();
    server.create_ok(daemon_set("agent", &v1, json!({})));
    server.rollout_status("daemonset/agent");
    let pods = server.wait_for_pods("app=agent", "one Ready pod", one_ready_on(&v1));
    let pod = &pods[0];
    let ds = server.get_json("ds", "agent").expect("the daemon set");
    // The pod: `<ds>-<5 random>`, owned by the DaemonSet, pinned to the node, tolerant.
    let name = pod["metadata"]["name"].as_str().expect("a name");
    assert!(
        name.starts_with("agent-") && name.len() == "agent-".len() + 5,
        "{name}"
    );
    assert_eq!(pod["spec"]["nodeName"], NODE);
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "DaemonSet");
    assert_eq!(owner["uid"], ds["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);
    assert_eq!(owner["blockOwnerDeletion"], true);
    assert_eq!(
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchFields"],
        json!([{"key": "metadata.name", "operator": "In", "values": [NODE]}])
    );
    let tolerations = pod["spec"]["tolerations"].as_array().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/not-ready"
                && t["effect"] == "NoExecute"
                && t["operator"] == "Exists"),
        "{tolerations:?}"
    );
    let hash = pod["metadata"]["labels"]["controller-revision-hash"]
        .as_str()
        .expect("a revision hash");

    // Status and kubectl's columns.
    let ds = server.wait_for("ds", "agent", "counted", |d| {
        d["status"]["numberAvailable"] == 1
    });
    let status = &ds["status"];
    assert_eq!(status["desiredNumberScheduled"], 1);
    assert_eq!(status["currentNumberScheduled"], 1);
    assert_eq!(status["numberReady"], 1);
    assert_eq!(status["updatedNumberScheduled"], 1);
    assert_eq!(status["numberMisscheduled"], 0);
    assert_eq!(status["observedGeneration"], ds["metadata"]["generation"]);
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    let row = table_row(&server.kubectl_ok(&["get", "ds"]), "agent");
    assert_eq!(&row[1..7], &["1", "1", "1", "1", "1", "<none>"], "{row:?}");
    let wide = table_row(&server.kubectl_ok(&["get", "ds", "-o", "wide"]), "agent");
    assert_eq!(
        &wide[8..],
        &["web".to_owned(), v1.clone(), "app=agent".to_owned()],
        "{wide:?}"
    );
    assert!(
        server
            .kubectl_ok(&["get", "all"])
            .contains("daemonset.apps/agent")
    );

    // The first revision.
    let revs = server.kubectl_ok(&["get", "controllerrevisions"]);
    let rev_row = table_row(&revs, &format!("agent-{hash}"));
    assert_eq!(&rev_row[1..3], &["daemonset.apps/agent", "1"], "{revs}");

    // An image update rolls the pod.
    server.kubectl_ok(&["set", "image", "daemonset/agent", &format!("web={v2}")]);
    server.rollout_status("daemonset/agent");
    let pods = server.wait_for_pods("app=agent", "one Ready pod on v2", |p| {
        one_ready_on(&v2)(&live(p))
    });
    assert_ne!(
        pods[0]["metadata"]["labels"]["controller-revision-hash"],
        hash
    );
    let history = server.kubectl_ok(&["rollout", "history", "daemonset/agent"]);
    assert_eq!(revisions(&history), ["1", "2"], "{history}");
    let second = server.kubectl_ok(&["rollout", "history", "daemonset/agent", "--revision=2"]);
    assert!(second.contains(&v2), "{second}");

    // Undo: back to v1, whose revision becomes the newest (3).
    server.kubectl_ok(&["rollout", "undo", "daemonset/agent"]);
    server.rollout_status("daemonset/agent");
    let pods = server.wait_for_pods("app=agent", "one Ready pod on v1 again", |p| {
        one_ready_on(&v1)(&live(p))
    });
    assert_eq!(
        pods[0]["metadata"]["labels"]["controller-revision-hash"],
        hash
    );
    let history = server.kubectl_ok(&["rollout", "history", "daemonset/agent"]);
    assert_eq!(revisions(&history), ["2", "3"], "{history}");

    // Deleting the DaemonSet takes its pods and revisions along.
    server.kubectl_ok(&["delete", "daemonset", "agent"]);
    server.wait_for_pods("app=agent", "gone", <[Value]>::is_empty);
    imc_testkit::kubectl::eventually("the revisions are gone", || {
        let out = server.kubectl_ok(&[
            "get",
            "controllerrevisions",
            "-l",
            "app=agent",
            "-o",
            "name",
        ]);
        out.trim().is_empty().then_some(())
    })
    .expect("the revisions go with the daemon set");
}

#[test]
fn a_node_selector_matching_no_node_runs_nothing_until_the_node_matches() {
    let Setup {
        server, v1, _reg, ..
    } = setup();
    server.create_ok(daemon_set("picky", &v1, json!({"disk": "fast"})));
    let ds = server.wait_for("ds", "picky", "observed", |d| {
        d["status"]["observedGeneration"] == 1
    });
    assert_eq!(ds["status"]["desiredNumberScheduled"], 0);
    assert_eq!(ds["status"]["currentNumberScheduled"], 0);
    assert!(server.pods_with("app=picky").is_empty());
    let row = table_row(&server.kubectl_ok(&["get", "ds"]), "picky");
    assert_eq!(
        &row[1..7],
        &["0", "0", "0", "0", "0", "disk=fast"],
        "{row:?}"
    );
    // Labelling the node makes it match: the pod comes.
    server.kubectl_ok(&["label", "node", NODE, "disk=fast"]);
    server.wait_for_pods("app=picky", "one Ready pod", one_ready_on(&v1));
    server.wait_for("ds", "picky", "desired 1", |d| {
        d["status"]["desiredNumberScheduled"] == 1 && d["status"]["numberReady"] == 1
    });
    // And unlabelling it takes the pod away again.
    server.kubectl_ok(&["label", "node", NODE, "disk-"]);
    server.wait_for_pods("app=picky", "gone", |p| live(p).is_empty());
    server.wait_for("ds", "picky", "desired 0", |d| {
        d["status"]["desiredNumberScheduled"] == 0
    });
}
