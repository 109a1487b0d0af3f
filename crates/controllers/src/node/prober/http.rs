//! `httpGet` probes and hooks (the kubelet's `pkg/probe/http`): a GET with `User-Agent:
//! kube-probe/1.32` (`kube-lifecycle/1.32` for hooks) and `Accept: */*` unless the pod's
//! headers say otherwise, over a connection made in the pod's network namespace. A probe
//! succeeds on 200–399: a redirect to the same host is followed (at most 10), one to another
//! host is not and counts as a success with a warning, as the kubelet's client does. HTTPS
//! skips certificate verification, as the kubelet's `InsecureSkipVerify`. Only the first
//! [`MAX_OUTPUT`] bytes of a body are read.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::action::{HttpGet, Scheme};
use super::{KUBE_VERSION, MAX_OUTPUT, Outcome, Target, dial_error, join_host_port};

/// Redirects a probe follows at most (Go's client's limit).
const MAX_REDIRECTS: usize = 10;

/// A URL a probe or hook requests.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    scheme: Scheme,
    /// The host without brackets.
    host: String,
    port: u16,
    /// Whether the port is written in the URL (a redirect's `Location` may leave it out).
    explicit_port: bool,
    /// Path and query.
    path: String,
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let authority = if self.explicit_port {
            join_host_port(&self.host, self.port)
        } else if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{}://{authority}{}", self.scheme.as_str(), self.path)
    }
}

impl Url {
    fn of(get: &HttpGet, target: &Target) -> Self {
        Url {
            scheme: get.scheme,
            host: get.host.clone().unwrap_or_else(|| target.pod_ip.clone()),
            port: get.port,
            explicit_port: true,
            path: get.path.clone(),
        }
    }

    /// Where a `Location` header sends a request for `self`.
    fn join(&self, location: &str) -> Option<Url> {
        let (scheme, rest) = if let Some(rest) = location.strip_prefix("http://") {
            (Scheme::Http, Some(rest))
        } else if let Some(rest) = location.strip_prefix("https://") {
            (Scheme::Https, Some(rest))
        } else if let Some(rest) = location.strip_prefix("//") {
            (self.scheme, Some(rest))
        } else {
            (self.scheme, None)
        };
        let Some(rest) = rest else {
            let path = if location.starts_with('/') {
                location.to_owned()
            } else {
                let dir = self.path.split('?').next().unwrap_or("/");
                let dir = &dir[..dir.rfind('/').map_or(0, |i| i + 1)];
                format!("{dir}{location}")
            };
            return Some(Url {
                path,
                ..self.clone()
            });
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path
        };
        let default_port = match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            (h.to_owned(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        let (port, explicit_port) = match port {
            Some(p) => (p.parse().ok()?, true),
            None => (default_port, false),
        };
        Some(Url {
            scheme,
            host,
            port,
            explicit_port,
            path,
        })
    }
}

/// What a GET got back.
#[derive(Debug)]
struct Response {
    status: u16,
    /// At most [`MAX_OUTPUT`] bytes of the body.
    body: Vec<u8>,
    location: Option<String>,
}

/// An `httpGet` probe run within `timeout`.
pub(super) async fn probe(target: &Target, get: &HttpGet, timeout: Duration) -> Outcome {
    let url = Url::of(get, target);
    let run = follow(target, get, url.clone());
    let response = match tokio::time::timeout(timeout, run).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Outcome::Failure(e),
        Err(_) => {
            return Outcome::Failure(format!(
                "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            ));
        }
    };
    let body = String::from_utf8_lossy(&response.body).into_owned();
    match response.status {
        200..=299 => Outcome::Success(body),
        300..=399 => Outcome::Warning(format!("Probe terminated redirects, Response body: {body}")),
        code => Outcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
    }
}

/// An `httpGet` lifecycle hook: the request must get a response (any status, as the kubelet
/// does not look at it); the error otherwise.
pub(in crate::node) async fn hook(target: &Target, get: &HttpGet) -> Result<(), String> {
    let url = Url::of(get, target);
    request(target, get, &url, "lifecycle")
        .await
        .map(|_| ())
        .map_err(|e| format!("Get \"{url}\": {e}"))
}

/// GETs `url`, following redirects to the same host; the error as Go's client words it.
async fn follow(target: &Target, get: &HttpGet, first: Url) -> Result<Response, String> {
    let mut url = first.clone();
    let mut hops = 0;
    loop {
        let response = request(target, get, &url, "probe")
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        let next = match (&response.location, response.status) {
            (Some(location), 301 | 302 | 303 | 307 | 308) => url.join(location),
            _ => None,
        };
        let Some(next) = next else {
            return Ok(response);
        };
        // Another host's answer is not followed: this response is the result.
        if next.host != first.host {
            return Ok(response);
        }
        hops += 1;
        if hops >= MAX_REDIRECTS {
            return Err(format!("Get \"{next}\": stopped after 10 redirects"));
        }
        url = next;
    }
}

/// One GET of `url` with the handler's headers; the error without the `Get "url":` prefix.
async fn request(
    target: &Target,
    get: &HttpGet,
    url: &Url,
    purpose: &str,
) -> Result<Response, String> {
    let addr = target
        .address(Some(&url.host), url.port)
        .await
        .map_err(|e| format!("dial tcp {}: {e}", join_host_port(&url.host, url.port)))?;
    let stream = target
        .connect(addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: {}", dial_error(&e)))?;
    let request = build_request(get, url, purpose).map_err(|e| e.to_string())?;
    match url.scheme {
        Scheme::Http => send(TokioIo::new(stream), request).await,
        Scheme::Https => {
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| format!("tls: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(tls_config())
                .connect(name, stream)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            send(TokioIo::new(tls), request).await
        }
    }
}

/// The request as the kubelet's `newProbeRequest` makes it.
fn build_request(
    get: &HttpGet,
    url: &Url,
    purpose: &str,
) -> Result<http::Request<Empty<Bytes>>, http::Error> {
    let has = |name: &str| {
        get.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    let host = get
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| join_host_port(&url.host, url.port));
    let mut b = http::Request::get(url.path.as_str()).header(http::header::HOST, host);
    if !has("user-agent") {
        b = b.header(
            http::header::USER_AGENT,
            format!("kube-{purpose}/{KUBE_VERSION}"),
        );
    }
    if !has("accept") {
        b = b.header(http::header::ACCEPT, "*/*");
    }
    for (name, value) in &get.headers {
        // An empty Accept removes it; Host is the request's host.
        if name.eq_ignore_ascii_case("host")
            || (name.eq_ignore_ascii_case("accept") && value.is_empty())
        {
            continue;
        }
        b = b.header(name.as_str(), value.as_str());
    }
    b.header(http::header::CONNECTION, "close")
        .body(Empty::new())
}

/// Sends `request` over `io` (HTTP/1.1) and reads the status and the start of the body.
async fn send<I>(io: I, request: http::Request<Empty<Bytes>>) -> Result<Response, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = response.into_body();
        let mut kept = Vec::new();
        while kept.len() < MAX_OUTPUT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let room = MAX_OUTPUT - kept.len();
                        kept.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                // A body cut short still answers the probe with its status.
                Some(Err(_)) | None => break,
            }
        }
        Ok(Response {
            status,
            body: kept,
            location,
        })
    }
    .await;
    driver.abort();
    result
}

/// TLS without certificate verification (the handshake's signatures are still checked), as
/// the kubelet's probes use it.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(NoVerification(provider.clone()));
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(verifier)
                        .with_no_client_auth()
                });
            // The ring provider supports the default versions; a failure would be a build bug.
            Arc::new(config.unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerification(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))))
                    .with_no_client_auth()
            }))
        })
        .clone()
}

/// Accepts any server certificate.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A target on the host's network (a `hostNetwork` pod), without a container.
    fn host_target() -> Target {
        Target {
            exec: None,
            sandbox: imc_runtime::PodSandbox {
                uid: "u".into(),
                dir: PathBuf::from("/nonexistent"),
                hostname: "h".into(),
                namespaces: imc_runtime::PodNamespaces::default(),
                ips: Vec::new(),
            },
            pod_ip: "127.0.0.1".into(),
        }
    }

    fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> HttpGet {
        HttpGet {
            scheme: Scheme::Http,
            host: None,
            port,
            path: path.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Serves one canned answer per connection for each path in `answers` (path → raw
    /// response); sends every request's head to the returned channel.
    async fn server(
        answers: Vec<(&'static str, String)>,
    ) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let answer = answers
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, a)| a.clone())
                    .unwrap_or_else(|| {
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".into()
                    });
                let _ = tx.send(head);
                let _ = s
                    .write_all(answer.replace("PORT", &port.to_string()).as_bytes())
                    .await;
            }
        });
        (port, rx)
    }

    fn answer(status: &str, extra: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn probe_outcomes() {
        let (port, mut heads) = server(vec![
            ("/ok", answer("200 OK", "", "fine")),
            (
                "/bad",
                answer("500 Internal Server Error", "", "secret details"),
            ),
            ("/moved", answer("302 Found", "location: /ok\r\n", "")),
            (
                "/away",
                answer(
                    "301 Moved",
                    "location: http://elsewhere.example/\r\n",
                    "gone",
                ),
            ),
            ("/loop", answer("302 Found", "location: /loop\r\n", "")),
        ])
        .await;
        let t = host_target();
        let timeout = Duration::from_secs(10);
        // (path, outcome)
        let rows = [
            ("/ok", Outcome::Success("fine".into())),
            (
                "/bad",
                Outcome::Failure("HTTP probe failed with statuscode: 500".into()),
            ),
            ("/moved", Outcome::Success("fine".into())),
            (
                "/away",
                Outcome::Warning("Probe terminated redirects, Response body: gone".into()),
            ),
            (
                "/loop",
                Outcome::Failure(format!(
                    "Get \"http://127.0.0.1:{port}/loop\": stopped after 10 redirects"
                )),
            ),
        ];
        for (path, want) in rows {
            assert_eq!(
                probe(&t, &get(port, path, &[]), timeout).await,
                want,
                "{path}"
            );
        }
        let first = heads.recv().await.unwrap().to_ascii_lowercase();
        for header in [
            "get /ok http/1.1",
            "user-agent: kube-probe/1.32",
            "accept: */*",
            &format!("host: 127.0.0.1:{port}"),
        ] {
            assert!(first.contains(header), "{header} missing from {first}");
        }

        // The pod's headers win, an empty Accept removes it, Host sets the host.
        probe(
            &t,
            &get(
                port,
                "/ok",
                &[
                    ("User-Agent", "mine"),
                    ("Accept", ""),
                    ("Host", "svc.local"),
                    ("X-Custom", "1"),
                ],
            ),
            timeout,
        )
        .await;
        while let Ok(h) = heads.try_recv() {
            let h = h.to_ascii_lowercase();
            if h.contains("x-custom") {
                assert!(h.contains("user-agent: mine"), "{h}");
                assert!(!h.contains("accept:"), "{h}");
                assert!(h.contains("host: svc.local"), "{h}");
                assert!(!h.contains("kube-probe"), "{h}");
            }
        }
    }

    #[tokio::test]
    async fn connection_errors_and_timeouts_fail_in_gos_words() {
        // A port nothing listens on.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let t = host_target();
        assert_eq!(
            probe(&t, &get(port, "/x", &[]), Duration::from_secs(5)).await,
            Outcome::Failure(format!(
                "Get \"http://127.0.0.1:{port}/x\": dial tcp 127.0.0.1:{port}: connect: connection refused"
            ))
        );
        // A server that never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        assert_eq!(
            probe(&t, &get(port, "/", &[]), Duration::from_secs(1)).await,
            Outcome::Failure(format!(
                "Get \"http://127.0.0.1:{port}/\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            ))
        );
        drop(silent);
    }

    #[tokio::test]
    async fn https_without_certificate_verification() {
        let key = rcgen::generate_simple_self_signed(vec!["pod.local".into()]).unwrap();
        let cert = key.cert.der().clone();
        let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.key_pair.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], private)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(s).await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tls.read(&mut buf).await.unwrap();
            tls.write_all(&answer("200 OK", "", "secure").into_bytes())
                .await
                .unwrap();
            tls.shutdown().await.unwrap();
        });
        let mut get = get(port, "/", &[]);
        get.scheme = Scheme::Https;
        assert_eq!(
            probe(&host_target(), &get, Duration::from_secs(10)).await,
            Outcome::Success("secure".into())
        );
    }

    #[test]
    fn redirect_locations() {
        let base = Url {
            scheme: Scheme::Http,
            host: "10.0.0.1".into(),
            port: 8080,
            explicit_port: true,
            path: "/a/b?x=1".into(),
        };
        let rows = [
            ("/c", "http://10.0.0.1:8080/c"),
            ("c", "http://10.0.0.1:8080/a/c"),
            ("https://10.0.0.1/z", "https://10.0.0.1/z"),
            ("http://other:81", "http://other:81/"),
            ("//[::1]:90/p", "http://[::1]:90/p"),
        ];
        for (location, want) in rows {
            assert_eq!(base.join(location).unwrap().to_string(), want, "{location}");
        }
    }
}
