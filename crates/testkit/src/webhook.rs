//! A test admission webhook: an HTTPS server (rustls, a certificate from its own CA) that
//! answers `AdmissionReview` requests with what a closure decides and records every request, so
//! tests can register it in a Mutating- or ValidatingWebhookConfiguration of a real `imc server`
//! and see what the server sent. It runs on its own thread; dropping it stops it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use serde_json::{Value, json};

/// A CA and a serving certificate it signed, PEM-encoded.
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA certificate (what a `caBundle` holds).
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's private key.
    pub key_pem: String,
}

impl TestCa {
    /// A fresh CA and a certificate for `127.0.0.1`, `localhost` and `names`.
    pub fn new(names: &[&str]) -> Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "imc test webhook CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key)?;
        let mut sans = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        sans.extend(names.iter().map(|n| (*n).to_owned()));
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "imc test webhook");
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        Ok(TestCa {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA certificate base64-encoded, as `clientConfig.caBundle` takes it.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.ca_pem)
    }
}

/// Decides the `response` of an AdmissionReview from its `request` (without `uid`, which the
/// webhook fills in). See [`allow`], [`deny`] and [`patch`].
pub type Decide = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

/// `{"allowed": true}`.
pub fn allow() -> Value {
    json!({"allowed": true})
}

/// A denial with `code` and `message`.
pub fn deny(code: u16, message: &str) -> Value {
    json!({"allowed": false, "status": {"code": code, "message": message}})
}

/// An allowance with a JSON patch (base64-encoded, `patchType: JSONPatch`).
pub fn patch(ops: Value) -> Value {
    json!({
        "allowed": true,
        "patchType": "JSONPatch",
        "patch": base64::engine::general_purpose::STANDARD.encode(ops.to_string()),
    })
}

struct Shared {
    decide: Decide,
    requests: Mutex<Vec<Value>>,
    delay: Mutex<Duration>,
}

/// A running test webhook.
pub struct TestWebhook {
    addr: SocketAddr,
    ca: TestCa,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestWebhook {
    /// Serves on a free loopback port with a certificate of a fresh [`TestCa`]; every
    /// AdmissionReview is answered with `decide(request)`, any path.
    pub fn start(decide: impl Fn(&Value) -> Value + Send + Sync + 'static) -> Result<Self> {
        Self::start_with(TestCa::new(&[])?, decide)
    }

    /// Like [`TestWebhook::start`] with the certificate of `ca`.
    pub fn start_with(
        ca: TestCa,
        decide: impl Fn(&Value) -> Value + Send + Sync + 'static,
    ) -> Result<Self> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certs = CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("test webhook certificate")?;
        let key =
            PrivateKeyDer::from_pem_slice(ca.key_pem.as_bytes()).context("test webhook key")?;
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            decide: Arc::new(decide),
            requests: Mutex::new(Vec::new()),
            delay: Mutex::new(Duration::ZERO),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let served = shared.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                serve(listener, acceptor, served, stopped).await;
            });
        });
        Ok(TestWebhook {
            addr,
            ca,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `https://127.0.0.1:PORT/PATH` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA (its base64 bundle for `caBundle`: [`TestCa::ca_bundle`]).
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// Every AdmissionReview `request` received so far, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes every later answer wait `delay` first (a slow webhook).
    pub fn set_delay(&self, delay: Duration) {
        *self.shared.delay.lock().unwrap_or_else(|e| e.into_inner()) = delay;
    }

    /// A `clientConfig` pointing at `path` of this webhook, trusting its CA.
    pub fn client_config(&self, path: &str) -> Value {
        json!({"url": self.url(path), "caBundle": self.ca.ca_bundle()})
    }
}

impl Drop for TestWebhook {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn answer(shared: Arc<Shared>, body: axum::body::Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Ok(review) = serde_json::from_slice::<Value>(&body) else {
        return (axum::http::StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let request = review.get("request").cloned().unwrap_or(Value::Null);
    shared
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(request.clone());
    let delay = *shared.delay.lock().unwrap_or_else(|e| e.into_inner());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut response = (shared.decide)(&request);
    response["uid"] = request.get("uid").cloned().unwrap_or(Value::Null);
    axum::Json(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
    .into_response()
}

async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let app =
        axum::Router::new().fallback(move |body: axum::body::Bytes| answer(shared.clone(), body));
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
    }
}

/// A rule: `operations` on `resources` of the core group, v1.
pub fn core_rule(operations: &[&str], resources: &[&str]) -> Value {
    json!({"operations": operations, "apiGroups": [""], "apiVersions": ["v1"], "resources": resources})
}

/// One `webhooks[]` entry named `name` calling `client_config` for `rules`, with
/// `sideEffects: None` and `admissionReviewVersions: [v1]`; add or override fields on it.
pub fn hook(name: &str, client_config: Value, rules: Value) -> Value {
    json!({
        "name": name,
        "clientConfig": client_config,
        "rules": rules,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    })
}

/// A MutatingWebhookConfiguration (`mutating`) or ValidatingWebhookConfiguration named `name`.
pub fn configuration(mutating: bool, name: &str, webhooks: Vec<Value>) -> Value {
    let kind = if mutating {
        "MutatingWebhookConfiguration"
    } else {
        "ValidatingWebhookConfiguration"
    };
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "webhooks": webhooks,
    })
}
