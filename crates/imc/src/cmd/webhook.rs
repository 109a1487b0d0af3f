//! `imc webhook`: pod admission for cluster mode, served as an HTTPS `AdmissionReview` webhook
//! (a MutatingWebhookConfiguration points `pods` CREATE at `POST /mutate`). It is the same
//! admission function `imc server` registers at its hook point: it writes the matched cache
//! annotation and never `spec.nodeName` (the cluster's scheduler places pods).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use imc_controllers::admission_hook::{CacheView, PodAdmission};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(clap::Args, Debug)]
pub struct WebhookArgs {
    /// Address to serve HTTPS on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain the webhook serves (the cluster's caBundle must trust it).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: PathBuf,
    /// PEM private key of the certificate.
    #[arg(long, value_name = "FILE")]
    pub tls_key: PathBuf,
    /// Accepted for compatibility and ignored: the webhook no longer binds pods to a node
    /// (the cluster's scheduler places them).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
}

pub async fn run(args: WebhookArgs) -> anyhow::Result<ExitCode> {
    imc_apiserver::install_crypto_provider();
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let certs = CertificateDer::pem_slice_iter(&read(&args.tls_cert)?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("certificate {}", args.tls_cert.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&args.tls_key)?)
        .with_context(|| format!("private key {}", args.tls_key.display()))?;
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("serving certificate and key")?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    // The cluster's API (KUBECONFIG or the in-cluster service account).
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    if let Some(node) = &args.node_name {
        tracing::info!(
            node = %node,
            "--node-name is ignored: the webhook only picks caches, the scheduler places pods"
        );
    }
    let admission = Arc::new(
        PodAdmission::new(
            CacheView::watch(client.clone()),
            // The webhook runs apart from the node's layer store: no layer sizes known.
            Arc::new(|_| Vec::new()),
        )
        .with_client(client),
    );
    let app = Router::new().route(
        "/mutate",
        post(move |body: Bytes| {
            let admission = admission.clone();
            async move { axum::Json(admission.review_json(&body)) }
        }),
    );

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "admission webhook listening");
    // Printed on stdout so scripts (and tests) can pick the address up.
    println!("listening on https://{addr}/mutate");
    // The API server's accept loop: connection cap, handshake and idle timeouts, accept
    // errors waited out and logged rarely.
    imc_apiserver::serve_tls(
        listener,
        acceptor,
        app,
        imc_apiserver::ConnectionConfig::default(),
        std::future::pending(),
    )
    .await;
    Ok(ExitCode::SUCCESS)
}
