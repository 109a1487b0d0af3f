//! Service address allocation through a real HTTPS listener and kube-rs, under concurrent
//! creates: never one address or node port for two Services, a requested address to exactly
//! one of the Services racing for it, and a full range refused rather than shared.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;

mod support;
use support::start_with;

fn service(name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_never_share_an_address_or_a_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = imc_apiserver::ServerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    // 10.0.0.0/27: 29 addresses for Services (.1 is the `kubernetes` Service's), 40 node ports.
    config.service_network = imc_apiserver::service_ips::ServiceNetwork {
        cidr: imc_apiserver::service_ips::Ipv4Cidr::parse("10.0.0.0/27").unwrap(),
        node_ports: 30000..=30039,
    };
    let (_api, client) = start_with(config).await;
    let services: Api<Service> = Api::namespaced(client, "default");
    // 40 NodePort Services at once for 29 addresses: 29 are created, 11 refused.
    let creates = (0..40).map(|i| {
        let services = services.clone();
        async move {
            let svc = service(
                &format!("s{i}"),
                json!({"type": "NodePort", "ports": [{"port": 80}]}),
            );
            services.create(&PostParams::default(), &svc).await
        }
    });
    let results = futures::future::join_all(creates).await;
    let mut ips = BTreeSet::new();
    let mut ports = BTreeSet::new();
    let mut refused = 0;
    for r in results {
        match r {
            Ok(svc) => {
                let spec = svc.spec.unwrap();
                assert!(
                    ips.insert(spec.cluster_ip.unwrap()),
                    "an address handed out twice"
                );
                let port = spec.ports.unwrap()[0].node_port.unwrap();
                assert!(ports.insert(port), "node port {port} handed out twice");
            }
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{s:?}");
                assert!(s.message.contains("range is full"), "{s:?}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ips.len(), refused), (29, 11));
    assert!(!ips.contains("10.0.0.1"));

    // Ten Services racing for one address: exactly one gets it, after a delete it is free.
    for i in 0..29 {
        services
            .delete(&format!("s{i}"), &Default::default())
            .await
            .ok();
    }
    let creates = (0..10).map(|i| {
        let services = services.clone();
        async move {
            let svc = service(
                &format!("race{i}"),
                json!({"clusterIP": "10.0.0.20", "ports": [{"port": 80}]}),
            );
            services.create(&PostParams::default(), &svc).await
        }
    });
    let results = futures::future::join_all(creates).await;
    let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(won.len(), 1);
    for r in results.iter().filter(|r| r.is_err()) {
        match r {
            Err(kube::Error::Api(s)) => {
                assert!(
                    s.message.contains("provided IP is already allocated"),
                    "{s:?}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn the_kubernetes_service_holds_the_first_address() {
    let dir = tempfile::tempdir().unwrap();
    let (_api, client) = support::start(dir.path()).await;
    let services: Api<Service> = Api::namespaced(client, "default");
    let api = services.get("kubernetes").await.unwrap();
    let spec = api.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.1"));
    let port = &spec.ports.unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("https"), 443));
    let taken = service(
        "squatter",
        json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}),
    );
    match services.create(&PostParams::default(), &taken).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422);
            assert!(
                s.message
                    .contains("failed to allocate IP 10.96.0.1: provided IP is already allocated"),
                "{s:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}
