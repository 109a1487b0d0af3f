//! The in-process hook points (admission, pod logs) and pod graceful deletion, through a real
//! HTTPS listener and kube-rs. Admission and log providers are Rust values registered by the
//! embedding process, so these tests embed the server instead of spawning `imc server`.

use std::sync::Arc;

use imc_api::ImageCache;
use imc_apiserver::{LogOptions, PodLogs, Server, ServerConfig};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use serde_json::json;

mod support;
use support::{start, start_with};

fn cache(name: &str) -> ImageCache {
    serde_json::from_value(
        json!({"apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
        "metadata": {"name": name}, "spec": {"images": ["registry.example/ns/app:1"]}}),
    )
    .unwrap()
}

#[tokio::test]
async fn admission_functions_mutate_and_deny() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = start(dir.path()).await;
    server.admission().add_mutating(
        "eci.alibabacloud.com",
        "ImageCache",
        Arc::new(|req: &AdmissionRequest<DynamicObject>| {
            let patch: json_patch::Patch = serde_json::from_value(json!([
                {"op": "add", "path": "/metadata/labels", "value": {"admitted": "yes"}}
            ]))
            .unwrap();
            AdmissionResponse::from(req).with_patch(patch).unwrap()
        }),
    );
    server.admission().add_validating(
        "eci.alibabacloud.com",
        "ImageCache",
        Arc::new(|req: &AdmissionRequest<DynamicObject>| {
            let resp = AdmissionResponse::from(req);
            if req.name == "forbidden" {
                resp.deny("this name is reserved")
            } else {
                resp
            }
        }),
    );
    let api: Api<ImageCache> = Api::all(client);
    let ok = api
        .create(&PostParams::default(), &cache("fine"))
        .await
        .unwrap();
    assert_eq!(ok.labels().get("admitted").map(String::as_str), Some("yes"));
    match api
        .create(&PostParams::default(), &cache("forbidden"))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
            assert!(s.message.contains("this name is reserved"), "{}", s.message);
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    assert!(api.get_opt("forbidden").await.unwrap().is_none());
}

struct Hello;

impl PodLogs for Hello {
    fn logs(&self, pod: serde_json::Value, options: LogOptions) -> imc_apiserver::logs::LogFuture {
        Box::pin(async move {
            let name = pod["metadata"]["name"].as_str().unwrap_or("").to_owned();
            Ok(axum::body::Body::from(format!(
                "hello from {name}/{}\n",
                options.container.unwrap_or_default()
            )))
        })
    }
}

#[tokio::test]
async fn pod_logs_come_from_the_installed_provider_and_bound_pods_delete_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = start(dir.path()).await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"nodeName": "imc-node", "containers": [{"name": "app", "image": "registry.example/ns/app:1"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let err = pods.logs("web", &LogParams::default()).await.unwrap_err();
    assert!(
        err.to_string().contains("no container running yet"),
        "{err}"
    );
    server.set_pod_logs(Arc::new(Hello));
    let params = LogParams {
        container: Some("app".into()),
        ..Default::default()
    };
    assert_eq!(
        pods.logs("web", &params).await.unwrap(),
        "hello from web/app\n"
    );

    // Bound to a node: marked with the grace period, removed when the node confirms with 0.
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    let marked = pods.get("web").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(30));
    pods.delete(
        "web",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(pods.get_opt("web").await.unwrap().is_none());
}

#[tokio::test]
async fn events_expire_after_their_ttl() {
    use k8s_openapi::api::core::v1::Event;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    config.event_ttl = std::time::Duration::from_secs(1);
    let (_server, client) = start_with(config).await;
    let events: Api<Event> = Api::namespaced(client, "default");
    let ev: Event = serde_json::from_value(json!({"metadata": {"name": "old"},
        "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
        "reason": "Test", "message": "expires", "lastTimestamp": "2020-01-01T00:00:00Z"}))
    .unwrap();
    events.create(&PostParams::default(), &ev).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while events.get_opt("old").await.unwrap().is_some() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the expired event was never deleted");
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::bind(ServerConfig::new(
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    let second = Server::bind(ServerConfig::new(
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await;
    match second {
        Err(e) => assert!(
            e.to_string().contains("in use by another imc server"),
            "{e}"
        ),
        Ok(_) => panic!("two servers share one data directory"),
    }
    drop(first);
    Server::bind(ServerConfig::new(
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .expect("the lock is released with the first server");
}
