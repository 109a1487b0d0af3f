//! Raw HTTPS requests to a [`TestServer`], for what kubectl and kube-rs cannot send: a chosen
//! Content-Type, a lower-case `bearer`, a body nested too deep, a patch bomb, a resourceVersion
//! out of range, a token kubectl does not hold. The server's own CA (`DIR/pki/ca.crt`) is
//! trusted; nothing is skipped.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::apiserver::TestServer;
use crate::kubectl::PATIENCE;

/// One raw request.
#[derive(Debug, Clone, Default)]
pub struct RawRequest<'a> {
    /// `GET`, `POST`, `PATCH`, ...
    pub method: &'a str,
    /// Path and query (`/api/v1/namespaces?watch=true`).
    pub path: &'a str,
    /// The whole `Authorization` header value; `None` for none.
    pub authorization: Option<String>,
    /// The Content-Type header; `None` for none.
    pub content_type: Option<&'a str>,
    /// The User-Agent header; `None` for none.
    pub user_agent: Option<&'a str>,
    /// The body.
    pub body: Vec<u8>,
}

/// A server's answer.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    /// The HTTP status code.
    pub status: u16,
    /// The response headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl RawAnswer {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl<'a> RawRequest<'a> {
    /// A request with the admin token of `server`.
    pub fn admin(server: &TestServer, method: &'a str, path: &'a str) -> Result<Self> {
        Ok(RawRequest {
            method,
            path,
            authorization: Some(format!("Bearer {}", server.token()?)),
            ..Default::default()
        })
    }

    /// The same request with a JSON body and `content_type`.
    pub fn with_body(mut self, content_type: &'a str, body: impl Into<Vec<u8>>) -> Self {
        self.content_type = Some(content_type);
        self.body = body.into();
        self
    }
}

impl TestServer {
    /// An HTTPS client trusting this server's CA, with [`PATIENCE`] as its timeout.
    pub fn https_client(&self) -> Result<reqwest::Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pem = std::fs::read(self.data_dir().join("pki/ca.crt")).context("reading ca.crt")?;
        let ca = reqwest::Certificate::from_pem(&pem).context("parsing ca.crt")?;
        Ok(reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(PATIENCE)
            .connect_timeout(Duration::from_secs(30))
            .build()?)
    }

    /// Sends `req` and reads the whole answer (blocking the calling thread).
    pub fn raw(&self, req: &RawRequest<'_>) -> Result<RawAnswer> {
        let client = self.https_client()?;
        let url = format!("https://{}{}", self.addr(), req.path);
        let method = reqwest::Method::from_bytes(req.method.as_bytes())?;
        let mut builder = client.request(method, url).body(req.body.clone());
        if let Some(a) = &req.authorization {
            builder = builder.header("authorization", a);
        }
        if let Some(ua) = req.user_agent {
            builder = builder.header("user-agent", ua);
        }
        if let Some(ct) = req.content_type {
            builder = builder.header("content-type", ct);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let response = builder
                .send()
                .await
                .with_context(|| format!("{} {}", req.method, req.path))?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = response.text().await?;
            Ok(RawAnswer {
                status,
                headers,
                body,
            })
        })
    }
}
