//! The embedded server the apiserver's integration tests talk to: a real HTTPS listener on a
//! free loopback port over a temporary data directory, and a kube-rs client for it.

use std::sync::Arc;

use imc_apiserver::{ApiServer, Server, ServerConfig};

/// Serves the built-in resources from `dir`; the API state and a client.
pub async fn start(dir: &std::path::Path) -> (Arc<ApiServer>, kube::Client) {
    start_with(ServerConfig::new(dir, "127.0.0.1:0".parse().unwrap())).await
}

/// Serves with `config`; the API state and a client.
pub async fn start_with(config: ServerConfig) -> (Arc<ApiServer>, kube::Client) {
    let server = Server::bind(config).await.unwrap();
    let api = server.api();
    let kubeconfig = server.kubeconfig().to_path_buf();
    tokio::spawn(server.serve(std::future::pending()));
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    (api, kube::Client::try_from(config).unwrap())
}
