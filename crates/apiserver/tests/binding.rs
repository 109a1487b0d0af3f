//! The `pods/binding` subresource through a real HTTPS listener and kube-rs, the way a
//! scheduler binds pods: `Api::<Pod>::create_subresource("binding", ...)`.

use k8s_openapi::api::core::v1::{Binding, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, PostParams};
use serde_json::json;

mod support;
use support::start;

fn binding(pod: &str, node: &str) -> Binding {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": pod},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }))
    .unwrap()
}

async fn bind(pods: &Api<Pod>, pod: &str, node: &str) -> kube::Result<Status> {
    pods.create_subresource("binding", pod, &PostParams::default(), &binding(pod, node))
        .await
}

fn api_error(r: kube::Result<Status>) -> kube::core::Status {
    match r {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_pod_is_bound_once_and_a_second_binding_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client) = start(dir.path()).await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"containers": [{"name": "app", "image": "registry.example/ns/app:1"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    let status = bind(&pods, "web", "node-a").await.unwrap();
    assert_eq!(
        (status.status.as_deref(), status.code),
        (Some("Success"), Some(201))
    );
    let bound = pods.get("web").await.unwrap();
    assert_eq!(
        bound.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("node-a")
    );
    let scheduled = bound
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .expect("PodScheduled condition");
    assert_eq!(scheduled.status, "True");

    let second = api_error(bind(&pods, "web", "node-b").await);
    assert_eq!((second.code, second.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        second.message,
        "Operation cannot be fulfilled on pods/binding \"web\": pod web is already assigned to node \"node-a\""
    );
    let still = pods.get("web").await.unwrap();
    assert_eq!(
        still.spec.and_then(|s| s.node_name).as_deref(),
        Some("node-a")
    );
}

#[tokio::test]
async fn bad_bindings_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, client) = start(dir.path()).await;
    let pods: Api<Pod> = Api::namespaced(client, "default");

    let missing = api_error(bind(&pods, "absent", "node-a").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));

    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"containers": [{"name": "app", "image": "registry.example/ns/app:1"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let mismatched = api_error(
        pods.create_subresource::<Binding, Status>(
            "binding",
            "web",
            &PostParams::default(),
            &binding("other", "node-a"),
        )
        .await,
    );
    assert_eq!(
        (mismatched.code, mismatched.message.as_str()),
        (400, "name in URL does not match name in Binding object")
    );
    let no_node = api_error(bind(&pods, "web", "").await);
    assert_eq!((no_node.code, no_node.reason.as_str()), (422, "Invalid"));
    assert!(
        no_node.message.contains("target.name"),
        "{}",
        no_node.message
    );
    let unbound = pods.get("web").await.unwrap();
    assert_eq!(unbound.spec.and_then(|s| s.node_name), None);
}
