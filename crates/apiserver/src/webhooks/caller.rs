//! The HTTPS client calling a webhook: the `AdmissionReview` POSTed to the webhook's `url` (or
//! its Service's address), the server verified with the `caBundle` (the system's roots when it
//! is empty), the webhook's `timeoutSeconds` enforced on the whole exchange, and the answer
//! read up to [`MAX_RESPONSE_BYTES`] and decoded with the API's nesting limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

/// The largest answer read from a webhook (kube-apiserver's request body limit, 3 MiB).
pub const MAX_RESPONSE_BYTES: usize = crate::limits::MAX_BODY_BYTES;

/// How many HTTPS clients (one per CA bundle and address override) are kept for reuse.
const MAX_CACHED_CLIENTS: usize = 32;

/// Why calling a webhook failed; the text follows kube-apiserver's (`failed to call webhook:
/// Post "URL": context deadline exceeded`).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request could not be sent or answered in time.
    #[error("failed to call webhook: Post {url:?}: {reason}")]
    Transport {
        /// The URL called.
        url: String,
        /// What went wrong (TLS, connection, timeout).
        reason: String,
    },
    /// The webhook answered something that is not an AdmissionReview.
    #[error("received invalid webhook response: {0}")]
    InvalidResponse(String),
    /// The `caBundle` holds no usable certificate.
    #[error("failed to call webhook: invalid caBundle: {0}")]
    CaBundle(String),
}

/// Where a webhook is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The URL POSTed to (without the `timeout` query kube-apiserver adds).
    pub url: String,
    /// The host of `url` pinned to this address (a Service's ClusterIP and port), so the
    /// certificate is still verified against the Service's DNS name.
    pub resolve: Option<(String, SocketAddr)>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    ca_bundle: Vec<u8>,
    resolve: Option<(String, SocketAddr)>,
}

fn clients() -> &'static Mutex<HashMap<ClientKey, reqwest::Client>> {
    static CLIENTS: std::sync::OnceLock<Mutex<HashMap<ClientKey, reqwest::Client>>> =
        std::sync::OnceLock::new();
    CLIENTS.get_or_init(Default::default)
}

/// Builds a client (reads the system's roots when the bundle is empty: done on a blocking
/// thread by the caller).
fn build_client(key: &ClientKey) -> Result<reqwest::Client, CallError> {
    crate::server::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if !key.ca_bundle.is_empty() {
        let certs = reqwest::Certificate::from_pem_bundle(&key.ca_bundle)
            .map_err(|e| CallError::CaBundle(e.to_string()))?;
        if certs.is_empty() {
            return Err(CallError::CaBundle("no PEM certificate in it".into()));
        }
        builder = builder.tls_certs_only(certs);
    }
    if let Some((host, addr)) = &key.resolve {
        builder = builder.resolve(host, *addr);
    }
    builder
        .build()
        .map_err(|e| CallError::CaBundle(error_chain(&e)))
}

async fn client_for(key: ClientKey) -> Result<reqwest::Client, CallError> {
    if let Some(c) = clients()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
    {
        return Ok(c.clone());
    }
    let built = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || build_client(&key))
            .await
            .map_err(|e| CallError::CaBundle(e.to_string()))??
    };
    let mut cache = clients().lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= MAX_CACHED_CLIENTS {
        cache.clear();
    }
    cache.insert(key, built.clone());
    Ok(built)
}

/// An error and its sources, `: `-separated.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Why a request failed, without reqwest's own "error sending request for url (...)" (the
/// message names the URL already); a timeout in kube's words.
fn request_failure(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    if e.is_timeout() {
        return "context deadline exceeded".into();
    }
    match e.source() {
        Some(source) => error_chain(source),
        None => e.to_string(),
    }
}

/// POSTs `review` to `endpoint` and returns the decoded answer, all within `timeout`.
pub async fn call(
    endpoint: &Endpoint,
    ca_bundle: &[u8],
    timeout: Duration,
    review: &Value,
) -> Result<Value, CallError> {
    let url = format!("{}?timeout={}s", endpoint.url, timeout.as_secs());
    let transport = |reason: String| CallError::Transport {
        url: url.clone(),
        reason,
    };
    let client = client_for(ClientKey {
        ca_bundle: ca_bundle.to_vec(),
        resolve: endpoint.resolve.clone(),
    })
    .await?;
    let body = serde_json::to_vec(review).map_err(|e| transport(e.to_string()))?;
    let exchange = async {
        let mut response = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| transport(request_failure(&e)))?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport(request_failure(&e)))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(CallError::InvalidResponse(format!(
                    "the response is larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(transport(format!(
                "the server responded with status code {}",
                status.as_u16()
            )));
        }
        crate::body::json(&bytes, "the webhook response")
            .map_err(|e| CallError::InvalidResponse(e.to_string()))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(transport("context deadline exceeded".into())),
    }
}
