//! Deployments and ReplicaSets end to end (issue 11): a real `imc server` (API server,
//! ReplicaSet and Deployment controllers, scheduler, node with runc and CNI), a real
//! docker-registry, and the real kubectl driving `create deployment`, `scale`, `set image`,
//! `rollout status|history|undo|restart|pause|resume`, and a kube-rs watch observing rollouts.

mod run_support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use imc_testkit::apiserver::TestServer;
use imc_testkit::kubectl::pod_ready;
use imc_testkit::watch::{typed_ready, watch_pods};
use k8s_openapi::api::core::v1::Pod;
use run_support::{Registry, push, registry_with_images, server_image};
use serde_json::{Value, json};

const NODE: &str = "imc-test-node";
const AUTO: &str = "k8s.aliyun.com/eci-image-cache";
const MATCHED: &str = "k8s.aliyun.com/eci-matched-image-cache";

struct Setup {
    reg: Registry,
    server: TestServer,
    v1: String,
    v2: String,
}

fn setup() -> Setup {
    let reg = registry_with_images();
    let v1 = push(&reg, "imc/web", &server_image("serving-v1"));
    let v2 = push(&reg, "imc/web2", &server_image("serving-v2"));
    let args = vec![
        "--node-name".to_owned(),
        NODE.to_owned(),
        "--plain-http".to_owned(),
        reg.registry.host(),
    ];
    let server =
        TestServer::start_with_args(env!("CARGO_BIN_EXE_imc"), &args).expect("imc server starts");
    Setup {
        reg,
        server,
        v1,
        v2,
    }
}

fn images(pods: &[Value]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| p["spec"]["containers"][0]["image"].as_str())
        .map(str::to_owned)
        .collect()
}

fn live(pods: &[Value]) -> Vec<Value> {
    pods.iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect()
}

fn all_ready(n: usize) -> impl Fn(&[Value]) -> bool {
    move |pods| {
        let live = live(pods);
        live.len() == n && live.iter().all(pod_ready)
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

#[test]
fn create_scale_set_image_undo_and_history() {
    let Setup {
        server,
        v1,
        v2,
        reg: _reg,
    } = setup();
    server.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        &format!("--image={v1}"),
        "--replicas=2",
    ]);
    server.rollout_status("deployment/web");
    let pods = server.wait_for_pods("app=web", "2 Ready", all_ready(2));
    // Each pod: the template's labels plus the hash, owned by the ReplicaSet as its controller.
    let rs_list: Value =
        serde_json::from_str(&server.kubectl_ok(&["get", "rs", "-l", "app=web", "-o", "json"]))
            .expect("JSON");
    let rs = &rs_list["items"][0];
    let hash = rs["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .expect("a hash label");
    assert_eq!(rs["metadata"]["name"], format!("web-{hash}"));
    assert_eq!(
        rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    for p in &pods {
        assert_eq!(p["metadata"]["labels"]["pod-template-hash"], hash);
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "ReplicaSet");
        assert_eq!(owner["uid"], rs["metadata"]["uid"]);
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["blockOwnerDeletion"], true);
        assert_eq!(p["spec"]["nodeName"], NODE);
    }
    // kubectl's columns.
    let row = table_row(&server.kubectl_ok(&["get", "deploy"]), "web");
    assert_eq!(&row[1..4], &["2/2", "2", "2"], "{row:?}");
    let wide = table_row(&server.kubectl_ok(&["get", "deploy", "-o", "wide"]), "web");
    assert_eq!(
        &wide[5..],
        &["web".to_owned(), v1.clone(), "app=web".to_owned()],
        "{wide:?}"
    );
    let rs_row = table_row(&server.kubectl_ok(&["get", "rs"]), &format!("web-{hash}"));
    assert_eq!(&rs_row[1..4], &["2", "2", "2"], "{rs_row:?}");
    let all = server.kubectl_ok(&["get", "all"]);
    assert!(
        all.contains("deployment.apps/web") && all.contains("replicaset.apps/web-"),
        "{all}"
    );
    let deploy = server.get_json("deploy", "web").expect("the deployment");
    let reason = |d: &Value, t: &str| {
        d["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == t)
            .map(|c| c["reason"].clone())
            .unwrap_or_default()
    };
    assert_eq!(reason(&deploy, "Available"), "MinimumReplicasAvailable");
    assert_eq!(reason(&deploy, "Progressing"), "NewReplicaSetAvailable");

    // Scale through the scale subresource, up and down.
    server.kubectl_ok(&["scale", "deployment", "web", "--replicas=5"]);
    server.wait_for_pods("app=web", "5 Ready", all_ready(5));
    let scale: Value = serde_json::from_str(&server.kubectl_ok(&[
        "get",
        "deploy",
        "web",
        "--subresource=scale",
        "-o",
        "json",
    ]))
    .expect("JSON");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 5);
    assert_eq!(scale["status"]["selector"], "app=web");
    server.kubectl_ok(&["scale", "deployment", "web", "--replicas=2"]);
    server.rollout_status("deployment/web");
    server.wait_for_pods("app=web", "back to 2", |p| {
        p.len() == 2 && p.iter().all(pod_ready)
    });

    // set image: a second ReplicaSet, revision 2, every pod on the new image.
    server.kubectl_ok(&["set", "image", "deployment/web", &format!("web={v2}")]);
    server.rollout_status("deployment/web");
    let pods = server.wait_for_pods("app=web", "all on v2", |p| {
        p.len() == 2 && images(p) == BTreeSet::from([v2.clone()]) && p.iter().all(pod_ready)
    });
    assert_eq!(pods.len(), 2);
    let history = server.kubectl_ok(&["rollout", "history", "deployment/web"]);
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    let d = server.get_json("deploy", "web").expect("the deployment");
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );

    // undo: back to v1's ReplicaSet, now revision 3.
    server.kubectl_ok(&["rollout", "undo", "deployment/web"]);
    server.rollout_status("deployment/web");
    server.wait_for_pods("app=web", "all on v1 again", |p| {
        p.len() == 2 && images(p) == BTreeSet::from([v1.clone()]) && p.iter().all(pod_ready)
    });
    let history = server.kubectl_ok(&["rollout", "history", "deployment/web"]);
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["2", "3"], "{history}");
    let sets = server.kubectl_ok(&["get", "rs", "-l", "app=web", "-o", "name"]);
    assert_eq!(
        sets.lines().count(),
        2,
        "undo reuses the first ReplicaSet: {sets}"
    );

    // pause: a template change waits; resume rolls it out. restart: a new revision.
    server.kubectl_ok(&["rollout", "pause", "deployment/web"]);
    server.kubectl_ok(&["set", "image", "deployment/web", &format!("web={v2}")]);
    server.wait_for("deploy", "web", "paused", |d| {
        reason(d, "Progressing") == "DeploymentPaused"
    });
    assert_eq!(
        images(&live(&server.pods_with("app=web"))),
        BTreeSet::from([v1.clone()])
    );
    server.kubectl_ok(&["rollout", "resume", "deployment/web"]);
    server.rollout_status("deployment/web");
    server.wait_for_pods("app=web", "on v2 after resume", |p| {
        p.len() == 2 && images(p) == BTreeSet::from([v2.clone()])
    });
    server.kubectl_ok(&["rollout", "restart", "deployment/web"]);
    server.rollout_status("deployment/web");
    let d = server.get_json("deploy", "web").expect("the deployment");
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "5"
    );
}

#[test]
fn apply_validates_and_serves_replica_sets() {
    let Setup {
        server,
        v1,
        reg: _reg,
        ..
    } = setup();
    let manifest = |selector: &str, restart: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": selector}},
                "template": {"metadata": {"labels": {"app": "api"}},
                    "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 2,
                        "containers": [{"name": "api", "image": v1}]}}}})
        .to_string()
    };
    let (ok, out) = server.kubectl_args_stdin(&["apply", "-f", "-"], &manifest("other", "Always"));
    assert!(
        !ok && out.contains("`selector` does not match template `labels`"),
        "{out}"
    );
    let (ok, out) = server.kubectl_args_stdin(&["apply", "-f", "-"], &manifest("api", "Never"));
    assert!(
        !ok && out.contains("spec.template.spec.restartPolicy: Unsupported value: \"Never\""),
        "{out}"
    );
    let (ok, out) = server.kubectl_args_stdin(&["apply", "-f", "-"], &manifest("api", "Always"));
    assert!(ok, "{out}");
    server.rollout_status("deployment/api");
    let d = server.get_json("deploy", "api").expect("applied");
    assert_eq!(
        d["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    );
    assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
    // The selector is immutable.
    let patch = r#"{"spec":{"selector":{"matchLabels":{"app":"api","x":"y"}},"template":{"metadata":{"labels":{"x":"y"}}}}}"#;
    let out = server.kubectl_err(
        &["patch", "deploy", "api", "--type=merge", "-p", patch],
        None,
    );
    assert!(out.contains("field is immutable"), "{out}");
    // A bare ReplicaSet adopts a matching orphan pod and keeps its replicas.
    server.create_ok(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orphan", "labels": {"tier": "cache"}},
        "spec": {"terminationGracePeriodSeconds": 2, "containers": [{"name": "c", "image": v1}]}}));
    server.create_ok(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "cache"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"tier": "cache"}},
            "template": {"metadata": {"labels": {"tier": "cache"}},
                "spec": {"terminationGracePeriodSeconds": 2, "containers": [{"name": "c", "image": v1}]}}}}));
    let pods = server.wait_for_pods("tier=cache", "3 Ready", all_ready(3));
    assert!(
        pods.iter().any(|p| p["metadata"]["name"] == "orphan"),
        "the orphan was adopted"
    );
    let orphan = server.get_json("pod", "orphan").expect("kept");
    assert_eq!(orphan["metadata"]["ownerReferences"][0]["name"], "cache");
    let rs = server.wait_for("rs", "cache", "counted", |r| {
        r["status"]["availableReplicas"] == 3
    });
    assert_eq!(rs["status"]["fullyLabeledReplicas"], 3);
    assert_eq!(
        rs["status"]["observedGeneration"],
        rs["metadata"]["generation"]
    );
    // PUT of the scale subresource (what an autoscaler writes), through kube-rs.
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let scale = rt.block_on(async {
        let client = server.client().await.expect("a client");
        let sets: kube::Api<k8s_openapi::api::apps::v1::ReplicaSet> =
            kube::Api::default_namespaced(client);
        let mut scale = sets.get_scale("cache").await.expect("GET scale");
        assert_eq!(
            scale
                .status
                .as_ref()
                .and_then(|s| s.selector.clone())
                .as_deref(),
            Some("tier=cache")
        );
        scale.spec.get_or_insert_with(Default::default).replicas = Some(2);
        sets.replace_scale("cache", &kube::api::PostParams::default(), &scale)
            .await
            .expect("PUT scale")
    });
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    server.wait_for_pods("tier=cache", "down to 2", |p| live(p).len() == 2);
    server.kubectl_ok(&["scale", "rs", "cache", "--replicas=1"]);
    server.wait_for_pods("tier=cache", "down to 1", |p| p.len() == 1);
}

#[test]
fn rolling_update_keeps_max_unavailable() {
    let Setup {
        server,
        v1,
        v2,
        reg: _reg,
    } = setup();
    server.create_ok(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "roll"},
        "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "roll"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
            "template": {"metadata": {"labels": {"app": "roll"}},
                "spec": {"terminationGracePeriodSeconds": 2, "containers": [{"name": "web", "image": v1}]}}}}));
    server.rollout_status("deployment/roll");
    server.wait_for_pods("app=roll", "4 Ready", all_ready(4));
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let client = rt.block_on(server.client()).expect("a client");
    let log = Arc::new(Mutex::new(Vec::new()));
    let watch = rt.spawn(watch_pods(client, "app=roll".into(), log.clone()));
    // The watch has seen the 4 Ready pods before the rollout starts.
    imc_testkit::kubectl::eventually("the watch sees the pods", || {
        log.lock()
            .expect("the log")
            .last()
            .filter(|s| s.values().filter(|p| typed_ready(p)).count() == 4)
            .map(|_| ())
    })
    .expect("the watch saw the pods");
    server.kubectl_ok(&["set", "image", "deployment/roll", &format!("web={v2}")]);
    server.rollout_status("deployment/roll");
    server.wait_for_pods("app=roll", "all on v2", |p| {
        p.len() == 4 && images(p) == BTreeSet::from([v2.clone()]) && p.iter().all(pod_ready)
    });
    watch.abort();
    let states = log.lock().expect("the log").clone();
    let fewest = states
        .iter()
        .map(|s| s.values().filter(|p| typed_ready(p)).count())
        .min()
        .expect("states");
    let most = states
        .iter()
        .map(|s| {
            s.values()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count()
        })
        .max()
        .expect("states");
    assert!(
        fewest >= 3,
        "never fewer than replicas - maxUnavailable Ready: {fewest}"
    );
    assert!(
        most <= 5,
        "never more than replicas + maxSurge pods: {most}"
    );
    assert!(states.len() > 4, "the watch saw the rollout");
}

#[test]
fn recreate_stops_old_pods_before_new_ones_start() {
    let Setup {
        server,
        v1,
        v2,
        reg: _reg,
    } = setup();
    server.create_ok(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "batch"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "batch"}}, "strategy": {"type": "Recreate"},
            "template": {"metadata": {"labels": {"app": "batch"}},
                "spec": {"terminationGracePeriodSeconds": 2, "containers": [{"name": "web", "image": v1}]}}}}));
    server.rollout_status("deployment/batch");
    server.wait_for_pods("app=batch", "2 Ready", all_ready(2));
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let client = rt.block_on(server.client()).expect("a client");
    let log = Arc::new(Mutex::new(Vec::new()));
    let watch = rt.spawn(watch_pods(client, "app=batch".into(), log.clone()));
    imc_testkit::kubectl::eventually("the watch sees the pods", || {
        log.lock()
            .expect("the log")
            .last()
            .filter(|s| s.len() == 2)
            .map(|_| ())
    })
    .expect("the watch saw the pods");
    server.kubectl_ok(&["set", "image", "deployment/batch", &format!("web={v2}")]);
    server.rollout_status("deployment/batch");
    server.wait_for_pods("app=batch", "all on v2", |p| {
        p.len() == 2 && images(p) == BTreeSet::from([v2.clone()]) && p.iter().all(pod_ready)
    });
    watch.abort();
    let image = |p: &Pod| {
        p.spec
            .as_ref()
            .map(|s| s.containers[0].image.clone().unwrap_or_default())
            .unwrap_or_default()
    };
    let states = log.lock().expect("the log").clone();
    for s in &states {
        // An old pod that has finished (Succeeded or Failed, about to be removed by its node)
        // no longer runs: upstream's Recreate waits for the others only.
        let finished = |p: &Pod| {
            matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        };
        let old = s
            .values()
            .filter(|p| image(p) == v1 && !finished(p))
            .count();
        let new = s.values().filter(|p| image(p) == v2).count();
        assert!(
            old == 0 || new == 0,
            "old pods still running next to new ones: {:?}",
            s.keys().collect::<Vec<_>>()
        );
    }
    assert!(
        states.iter().any(|s| s.values().any(|p| image(p) == v2)),
        "the watch saw new pods"
    );
}

#[test]
fn deployment_pods_start_from_the_image_cache() {
    let Setup { server, reg, .. } = setup();
    server.create_ok(
        json!({"apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
        "metadata": {"name": "busybox"}, "spec": {"images": [reg.busybox]}}),
    );
    let cache = server.wait_for("imagecache", "busybox", "Ready", |o| {
        o["status"]["phase"] == "Ready"
    });
    let id = cache["status"]["imageCacheId"]
        .as_str()
        .expect("an id")
        .to_owned();
    server.create_ok(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "cached"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "cached"}},
            "template": {"metadata": {"labels": {"app": "cached"}, "annotations": {AUTO: "true"}},
                "spec": {"terminationGracePeriodSeconds": 2, "containers": [{"name": "c", "image": reg.busybox,
                    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]}]}}}}));
    server.rollout_status("deployment/cached");
    let pods = server.wait_for_pods("app=cached", "3 Ready", all_ready(3));
    for p in &pods {
        assert_eq!(
            p["metadata"]["annotations"][AUTO], "true",
            "the template's annotation reached the pod"
        );
        assert_eq!(
            p["metadata"]["annotations"][MATCHED],
            id.as_str(),
            "admitted from the cache"
        );
        let name = p["metadata"]["name"].as_str().expect("a name");
        let describe = server.kubectl_ok(&["describe", "pod", name]);
        assert!(
            !describe.contains("Pulling image"),
            "started from the cache, not pulled: {describe}"
        );
    }
}

#[test]
fn a_stuck_rollout_passes_its_progress_deadline() {
    let Setup { server, reg, .. } = setup();
    let missing = format!("{}/imc/missing:1", reg.registry.host());
    server.create_ok(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "stuck"},
        "spec": {"replicas": 1, "progressDeadlineSeconds": 2, "selector": {"matchLabels": {"app": "stuck"}},
            "template": {"metadata": {"labels": {"app": "stuck"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": missing}]}}}}));
    let d = server.wait_for("deploy", "stuck", "past its deadline", |d| {
        d["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| {
                c["type"] == "Progressing"
                    && c["status"] == "False"
                    && c["reason"] == "ProgressDeadlineExceeded"
            })
    });
    let available = d["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Available")
        .cloned()
        .unwrap_or_default();
    assert_eq!(available["reason"], "MinimumReplicasUnavailable", "{d:#}");
    let out = server.kubectl_err(
        &["rollout", "status", "deployment/stuck", "--timeout=60s"],
        None,
    );
    assert!(out.contains("exceeded its progress deadline"), "{out}");
}

#[test]
fn pods_count_as_available_only_after_min_ready_seconds() {
    let Setup {
        server,
        v1,
        reg: _reg,
        ..
    } = setup();
    server.create_ok(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "slow"},
        "spec": {"replicas": 2, "minReadySeconds": 3600, "selector": {"matchLabels": {"tier": "slow"}},
            "template": {"metadata": {"labels": {"tier": "slow"}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": v1}]}}}}));
    let rs = server.wait_for("rs", "slow", "Ready", |r| r["status"]["readyReplicas"] == 2);
    assert_eq!(rs["status"]["replicas"], 2);
    assert_eq!(
        rs["status"]["availableReplicas"], 0,
        "Ready for less than an hour: {rs:#}"
    );
}
