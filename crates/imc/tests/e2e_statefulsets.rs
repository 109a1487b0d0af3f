//! StatefulSets end to end (issue 11): a real `imc server` (API server, StatefulSet
//! controller, scheduler, node with runc), a real docker-registry, the real kubectl and a
//! kube-rs watch: three replicas come up `-0`, `-1`, `-2`, each only once the one before is
//! Ready; scaling down removes the highest ordinal first; a rolling update goes from the
//! highest ordinal down and `rollout history|undo` go through ControllerRevisions;
//! `volumeClaimTemplates` are refused with the reason.

mod run_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::pod_ready;
use imc_testkit::watch::{PodLog, typed_ready, watch_pods};
use k8s_openapi::api::core::v1::Pod;
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
    let v1 = push(&reg, "imc/db", &server_image("db-v1"));
    let v2 = push(&reg, "imc/db2", &server_image("db-v2"));
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

fn stateful_set(replicas: i32, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"replicas": replicas, "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"terminationGracePeriodSeconds": 2,
                    "containers": [{"name": "web", "image": image}]}}}})
}

/// The first state of `log` in which `pod` exists, and its index.
fn first_with<'a>(
    log: &'a [BTreeMap<String, Pod>],
    pod: &str,
) -> Option<(usize, &'a BTreeMap<String, Pod>)> {
    log.iter().enumerate().find(|(_, s)| s.contains_key(pod))
}

/// The index of the first state of `log` from `from` on in which `pod` is gone or being
/// deleted.
fn first_leaving(log: &[BTreeMap<String, Pod>], pod: &str, from: usize) -> Option<usize> {
    log.iter().enumerate().skip(from).find_map(|(i, s)| {
        s.get(pod)
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(i)
    })
}

fn watch(server: &TestServer) -> (tokio::runtime::Runtime, PodLog) {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let client = rt.block_on(server.client()).expect("a client");
    let log: PodLog = Arc::new(Mutex::new(Vec::new()));
    rt.spawn(watch_pods(client, "app=db".into(), log.clone()));
    imc_testkit::kubectl::eventually("the watch has listed", || {
        (!log.lock().expect("the log").is_empty()).then_some(())
    })
    .expect("the watch lists");
    (rt, log)
}

fn names(pods: &[Value]) -> Vec<String> {
    let mut n: Vec<String> = pods
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    n.sort();
    n
}

#[test]
fn replicas_come_up_in_order_and_scale_down_from_the_top() {
    let Setup {
        server, v1, _reg, ..
    } = setup();
    let (rt, log) = watch(&server);
    server.create_ok(stateful_set(3, &v1));
    server.rollout_status("statefulset/db");
    let pods = server.wait_for_pods("app=db", "3 Ready", |p| {
        names(p) == ["db-0", "db-1", "db-2"] && p.iter().all(pod_ready)
    });
    let sts = server.wait_for("sts", "db", "counted", |s| {
        s["status"]["readyReplicas"] == 3 && s["status"]["availableReplicas"] == 3
    });
    let status = &sts["status"];
    assert_eq!(status["replicas"], 3);
    assert_eq!(status["currentReplicas"], 3);
    assert_eq!(status["updatedReplicas"], 3);
    assert_eq!(status["currentRevision"], status["updateRevision"]);
    assert_eq!(status["observedGeneration"], sts["metadata"]["generation"]);
    for p in &pods {
        let name = p["metadata"]["name"].as_str().expect("a name");
        let labels = &p["metadata"]["labels"];
        assert_eq!(labels["statefulset.kubernetes.io/pod-name"], name);
        assert_eq!(
            labels["apps.kubernetes.io/pod-index"],
            name.trim_start_matches("db-")
        );
        assert_eq!(labels["controller-revision-hash"], status["updateRevision"]);
        assert_eq!(p["spec"]["hostname"], name);
        assert_eq!(p["spec"]["subdomain"], "db");
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "StatefulSet");
        assert_eq!(p["spec"]["nodeName"], NODE);
    }
    // kubectl's columns and the revision.
    let table = server.kubectl_ok(&["get", "sts"]);
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("db "))
        .expect("a row")
        .split_whitespace()
        .collect();
    assert_eq!(row[1], "3/3", "{table}");
    let revs = server.kubectl_ok(&["get", "controllerrevisions"]);
    assert!(revs.contains("statefulset.apps/db"), "{revs}");

    // The watch: -1 was created only once -0 was Ready, -2 only once -1 was.
    let states = log.lock().expect("the log").clone();
    for (before, after) in [("db-0", "db-1"), ("db-1", "db-2")] {
        let (_, state) = first_with(&states, after).expect("seen");
        assert!(
            state.get(before).is_some_and(typed_ready),
            "{after} appeared before {before} was Ready"
        );
    }

    // Scale down through the scale subresource: -2 goes first, then -1.
    let mark = log.lock().expect("the log").len();
    server.kubectl_ok(&["scale", "statefulset", "db", "--replicas=1"]);
    server.wait_for_pods("app=db", "down to db-0", |p| {
        p.len() == 1 && names(p) == ["db-0"]
    });
    let states = log.lock().expect("the log").clone();
    let two = first_leaving(&states, "db-2", mark).expect("db-2 left");
    let one = first_leaving(&states, "db-1", mark).expect("db-1 left");
    assert!(two < one, "db-2 left at state {two}, db-1 at {one}");
    // One at a time: db-1 was still serving when db-2 started to leave.
    assert!(states[two].get("db-1").is_some_and(typed_ready));
    server.wait_for("sts", "db", "one replica", |s| s["status"]["replicas"] == 1);
    drop(rt);
}

#[test]
fn a_rolling_update_goes_from_the_highest_ordinal_down() {
    let Setup {
        server,
        v1,
        v2,
        _reg,
    } = setup();
    server.create_ok(stateful_set(2, &v1));
    server.rollout_status("statefulset/db");
    server.wait_for_pods("app=db", "2 Ready", |p| {
        p.len() == 2 && p.iter().all(pod_ready)
    });
    let before = server.get_json("sts", "db").expect("the set");
    let (rt, log) = watch(&server);
    let mark = log.lock().expect("the log").len();
    server.kubectl_ok(&["set", "image", "statefulset/db", &format!("web={v2}")]);
    server.rollout_status("statefulset/db");
    let pods = server.wait_for_pods("app=db", "all on v2", |p| {
        p.len() == 2
            && p.iter().all(pod_ready)
            && p.iter()
                .all(|p| p["spec"]["containers"][0]["image"] == v2.as_str())
    });
    assert_eq!(names(&pods), ["db-0", "db-1"]);
    let sts = server.wait_for("sts", "db", "rolled", |s| {
        s["status"]["updatedReplicas"] == 2
            && s["status"]["currentRevision"] == s["status"]["updateRevision"]
    });
    assert_ne!(
        sts["status"]["updateRevision"],
        before["status"]["updateRevision"]
    );
    let states = log.lock().expect("the log").clone();
    let one = first_leaving(&states, "db-1", mark).expect("db-1 replaced");
    let zero = first_leaving(&states, "db-0", mark).expect("db-0 replaced");
    assert!(one < zero, "db-1 left at state {one}, db-0 at {zero}");
    drop(rt);

    // The revisions: `rollout history` lists both, `rollout undo` goes back to v1.
    let history = server.kubectl_ok(&["rollout", "history", "statefulset/db"]);
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    server.kubectl_ok(&["rollout", "undo", "statefulset/db"]);
    server.rollout_status("statefulset/db");
    server.wait_for_pods("app=db", "all on v1 again", |p| {
        p.len() == 2
            && p.iter().all(pod_ready)
            && p.iter()
                .all(|p| p["spec"]["containers"][0]["image"] == v1.as_str())
    });
}

#[test]
fn volume_claim_templates_are_refused_with_the_reason() {
    let Setup {
        server, v1, _reg, ..
    } = setup();
    let mut sts = stateful_set(1, &v1);
    sts["spec"]["volumeClaimTemplates"] = json!([{"metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]);
    let (ok, out) = server.create(&sts);
    assert!(!ok, "{out}");
    assert!(
        out.contains("spec.volumeClaimTemplates: Forbidden: imc has no PersistentVolumes"),
        "{out}"
    );
    assert!(server.get_json("sts", "db").is_none());
}
