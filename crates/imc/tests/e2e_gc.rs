//! Garbage collection and deletion propagation end to end (issue 11): `kubectl delete
//! --cascade=foreground|background|orphan` of a Deployment on a real `imc server`, whose
//! ReplicaSet and pods are owned with `blockOwnerDeletion`.

mod run_support;

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::pod_ready;
use run_support::{Registry, push, registry_with_images, server_image};
use serde_json::{Value, json};

const NODE: &str = "imc-test-node";

/// A server and a Deployment `web` of 2 Ready pods whose containers ignore SIGTERM, so each pod
/// takes its grace period (4 s) to stop.
fn server_with_deployment() -> (Registry, TestServer) {
    let reg = registry_with_images();
    let image = push(&reg, "imc/web", &server_image("serving"));
    let args = vec![
        "--node-name".to_owned(),
        NODE.to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    let server =
        TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts");
    server.create_ok(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"terminationGracePeriodSeconds": 4, "containers": [{"name": "web", "image": image,
                    "command": ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]}]}}}}));
    server.rollout_status("deployment/web");
    server.wait_for_pods("app=web", "2 Ready", |p| {
        p.len() == 2 && p.iter().all(pod_ready)
    });
    (reg, server)
}

fn replica_sets(server: &TestServer) -> Vec<Value> {
    let out = server.kubectl_ok(&["get", "rs", "-l", "app=web", "-o", "json"]);
    serde_json::from_str::<Value>(&out).expect("JSON")["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn foreground_deletion_waits_for_the_pods() {
    let (_reg, server) = server_with_deployment();
    server.kubectl_ok(&[
        "delete",
        "deployment",
        "web",
        "--cascade=foreground",
        "--wait=false",
    ]);
    let d = server
        .get_json("deploy", "web")
        .expect("the deployment stays while its pods stop");
    assert!(d["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(d["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    server.wait_gone("deploy", "web");
    // Gone only after its blocking dependents: nothing of it is left.
    assert!(
        server.pods_with("app=web").is_empty(),
        "{:#?}",
        server.pods_with("app=web")
    );
    assert!(replica_sets(&server).is_empty());
}

#[test]
fn orphan_deletion_leaves_the_replica_set_and_pods() {
    let (_reg, server) = server_with_deployment();
    server.kubectl_ok(&["delete", "deployment", "web", "--cascade=orphan"]);
    server.wait_gone("deploy", "web");
    let sets = replica_sets(&server);
    assert_eq!(sets.len(), 1);
    assert!(
        sets[0]["metadata"]["ownerReferences"].is_null(),
        "{:#}",
        sets[0]
    );
    let pods = server.pods_with("app=web");
    assert_eq!(pods.len(), 2);
    assert!(pods.iter().all(pod_ready), "the pods keep running");
    assert!(
        pods.iter()
            .all(|p| p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet")
    );
}

#[test]
fn background_deletion_collects_the_dependents() {
    let (_reg, server) = server_with_deployment();
    server.kubectl_ok(&[
        "delete",
        "deployment",
        "web",
        "--cascade=background",
        "--wait=false",
    ]);
    server.wait_gone("deploy", "web");
    server.wait_for_pods("app=web", "gone", <[Value]>::is_empty);
    assert!(replica_sets(&server).is_empty());
}
