//! A real Debian `docker-registry` on a free loopback port (anonymous, htpasswd Basic, or token auth).
//!
//! The registry runs as a child process with its own temporary storage directory and is killed when
//! the [`TestRegistry`] is dropped. [`TestRegistry::stop`] and [`TestRegistry::restart`] keep the
//! port and the storage, so a test can take the registry away mid-pull and bring it back.
//!
//! Token auth is served by a small token server of our own (a loopback HTTP endpoint on another
//! port) that checks Basic credentials and issues ES256 JWTs whose `x5c` header carries a
//! self-signed test certificate; that certificate is the registry's `rootcertbundle`.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// Where Debian installs the registry binary.
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

/// The `service` name a token-auth registry and its token server agree on.
pub const TOKEN_SERVICE: &str = "imc-test-registry";

/// How the test registry authenticates clients.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// Anyone may pull and push.
    None,
    /// htpasswd (bcrypt) Basic auth with one user.
    Basic {
        /// The one user the registry's htpasswd file lists.
        user: String,
        /// That user's password.
        password: String,
    },
    /// Bearer token flow: the registry sends clients to our token server, which accepts this one
    /// user's Basic credentials.
    Token {
        /// The one user the token server accepts.
        user: String,
        /// That user's password.
        password: String,
    },
}

impl Auth {
    /// Basic auth for `user`/`password`.
    pub fn basic(user: &str, password: &str) -> Self {
        Auth::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        }
    }
    /// Token auth for `user`/`password`.
    pub fn token(user: &str, password: &str) -> Self {
        Auth::Token {
            user: user.to_owned(),
            password: password.to_owned(),
        }
    }
    /// The credentials a client must present, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match self {
            Auth::None => None,
            Auth::Basic { user, password } | Auth::Token { user, password } => {
                Some((user, password))
            }
        }
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { user, .. } => {
                write!(f, "Basic {{ user: {user:?}, password: <redacted> }}")
            }
            Auth::Token { user, .. } => {
                write!(f, "Token {{ user: {user:?}, password: <redacted> }}")
            }
        }
    }
}

/// A running `docker-registry` on `127.0.0.1:PORT` (see the module doc).
pub struct TestRegistry {
    dir: tempfile::TempDir,
    port: u16,
    auth: Auth,
    child: Option<Child>,
    token_server: Option<TokenServer>,
    /// PEM of the self-signed serving certificate when started with TLS.
    tls_cert_pem: Option<String>,
}

impl TestRegistry {
    /// Starts a registry with `auth`, waiting until it answers `/v2/`. Panics with a clear message
    /// when `/usr/bin/docker-registry` is missing or does not come up.
    pub fn start(auth: Auth) -> TestRegistry {
        Self::start_inner(auth, false)
    }

    /// Like [`start`](Self::start), but serving HTTPS with a fresh self-signed certificate for
    /// `127.0.0.1` (see [`tls_cert_pem`](Self::tls_cert_pem)), for insecure-registry tests.
    pub fn start_tls(auth: Auth) -> TestRegistry {
        Self::start_inner(auth, true)
    }

    fn start_inner(auth: Auth, tls: bool) -> TestRegistry {
        assert!(
            Path::new(DOCKER_REGISTRY).exists(),
            "{DOCKER_REGISTRY} is missing: install Debian's docker-registry package (apt-get install docker-registry)"
        );
        let dir = tempfile::Builder::new()
            .prefix("imc-test-registry-")
            .tempdir()
            .expect("create temp dir for the test registry");
        fs::create_dir_all(dir.path().join("storage")).expect("create registry storage dir");
        let port = free_port();
        let (auth_yaml, token_server) = match &auth {
            Auth::None => (String::new(), None),
            Auth::Basic { user, password } => {
                let htpasswd = dir.path().join("htpasswd");
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("run htpasswd (apt-get install apache2-utils)");
                assert!(
                    out.status.success(),
                    "htpasswd failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                fs::write(&htpasswd, &out.stdout).expect("write htpasswd file");
                let yaml = format!(
                    "auth:\n  htpasswd:\n    realm: imc-test\n    path: {}\n",
                    htpasswd.display()
                );
                (yaml, None)
            }
            Auth::Token { user, password } => {
                let server = TokenServer::start(user, password);
                let bundle = dir.path().join("token-cert.pem");
                fs::write(&bundle, &server.cert_pem).expect("write token root cert bundle");
                let yaml = format!(
                    "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    server.port,
                    bundle.display()
                );
                (yaml, Some(server))
            }
        };
        let (tls_yaml, tls_cert_pem) = if tls {
            let cert = rcgen::generate_simple_self_signed(vec![
                "127.0.0.1".to_owned(),
                "localhost".to_owned(),
            ])
            .expect("generate registry TLS cert");
            let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
            fs::write(&cert_path, cert.cert.pem()).expect("write TLS cert");
            fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write TLS key");
            let yaml = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert_path.display(),
                key_path.display()
            );
            (yaml, Some(cert.cert.pem()))
        } else {
            (String::new(), None)
        };
        let mut reg = TestRegistry {
            dir,
            port,
            auth,
            child: None,
            token_server,
            tls_cert_pem,
        };
        reg.write_config(&tls_yaml, &auth_yaml);
        reg.spawn();
        reg
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    fn write_config(&self, tls_yaml: &str, auth_yaml: &str) {
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n  secret: imc-testkit-secret\n{tls_yaml}compatibility:\n  schema1:\n    enabled: true\nvalidation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\n{auth_yaml}",
            self.dir.path().join("storage").display(),
            self.port
        );
        fs::write(self.config_path(), config).expect("write registry config");
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open registry log");
        let log2 = log.try_clone().expect("clone registry log handle");
        let child = Command::new(DOCKER_REGISTRY)
            .arg("serve")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {DOCKER_REGISTRY}: {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "docker-registry exited during start-up ({status}); log:\n{}",
                    self.log_tail()
                );
            }
            if let Some(status) = http_status(self.port, "/v2/")
                // A TLS registry answers a plain-HTTP probe with 400 once it is serving.
                && (status == 200 || status == 401 || (status == 400 && self.tls_cert_pem.is_some()))
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "docker-registry on 127.0.0.1:{} did not answer /v2/ within 20s; log:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the registry's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port the registry listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` (`https://` when started with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls_cert_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The serving certificate (PEM) when started with [`start_tls`](Self::start_tls).
    pub fn tls_cert_pem(&self) -> Option<&str> {
        self.tls_cert_pem.as_deref()
    }

    /// How clients authenticate.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The registry's storage directory (survives stop/restart).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// How many tokens the token server has issued (0 unless token auth).
    pub fn tokens_issued(&self) -> usize {
        self.token_server
            .as_ref()
            .map_or(0, |t| t.issued.load(Ordering::SeqCst))
    }

    /// How many token requests the token server refused (bad or missing credentials).
    pub fn tokens_refused(&self) -> usize {
        self.token_server
            .as_ref()
            .map_or(0, |t| t.refused.load(Ordering::SeqCst))
    }

    /// Kills the registry process; the port and storage are kept for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again on the same port with the same storage (stopping it first if it
    /// is running), and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// GETs manifest `reference` (tag or digest) of `repository` from the plain-HTTP registry at
/// `host` (no auth), accepting OCI manifests, and returns it as JSON. Blocking: for tests that
/// check what a push stored.
pub fn get_manifest(
    host: &str,
    repository: &str,
    reference: &str,
) -> anyhow::Result<serde_json::Value> {
    let url = format!("http://{host}/v2/{repository}/manifests/{reference}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .get(&url)
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await?
            .error_for_status()?;
        Ok(resp.json().await?)
    })
}

/// A free loopback port (bind to 0, read it back, release it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr").port()
}

/// Status code of a plain `GET path` on the loopback port, or None when nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

const TOKEN_ISSUER: &str = "imc-testkit-token-issuer";

/// The tests' own token server (see the module doc).
struct TokenServer {
    port: u16,
    cert_pem: String,
    stop: Arc<AtomicBool>,
    issued: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

struct Signer {
    key: ring::signature::EcdsaKeyPair,
    cert_der: Vec<u8>,
    user: String,
    password: String,
}

impl TokenServer {
    fn start(user: &str, password: &str) -> TokenServer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generate token signing key");
        let mut params = rcgen::CertificateParams::new(vec!["imc-test-token-signer".to_owned()])
            .expect("cert params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-sign token cert");
        let rng = ring::rand::SystemRandom::new();
        let ring_key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .expect("load token signing key");
        let signer = Arc::new(Signer {
            key: ring_key,
            cert_der: cert.der().to_vec(),
            user: user.to_owned(),
            password: password.to_owned(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let port = listener.local_addr().expect("token server addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        {
            let (stop, issued, refused) = (stop.clone(), issued.clone(), refused.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (signer, issued, refused) =
                        (signer.clone(), issued.clone(), refused.clone());
                    std::thread::spawn(move || serve_token(conn, &signer, &issued, &refused));
                }
            });
        }
        TokenServer {
            port,
            cert_pem: cert.pem(),
            stop,
            issued,
            refused,
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_token(conn: TcpStream, signer: &Signer, issued: &AtomicUsize, refused: &AtomicUsize) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut authorization = None;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_owned());
            } else if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut form = vec![0; content_length.min(1 << 20)];
    if reader.read_exact(&mut form).is_err() {
        form.clear();
    }
    let form = String::from_utf8_lossy(&form).into_owned();
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    // GET: Basic credentials, scope in the query. POST: the OAuth2 refresh-token grant Docker
    // uses with an identity token; the test user's password serves as its identity token.
    let (authorized, params) = if request_line.starts_with("POST ") {
        (check_refresh_token(&form, signer), form.clone())
    } else {
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        (
            check_basic(authorization.as_deref(), signer),
            query.to_owned(),
        )
    };
    let (status, body) = match authorized {
        true => {
            issued.fetch_add(1, Ordering::SeqCst);
            let token = sign_token(signer, &params);
            (
                "200 OK",
                serde_json::json!({"token": token, "access_token": token, "expires_in": 300})
                    .to_string(),
            )
        }
        false => {
            refused.fetch_add(1, Ordering::SeqCst);
            (
                "401 Unauthorized",
                r#"{"details":"incorrect username or password"}"#.to_owned(),
            )
        }
    };
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Both);
}

fn check_refresh_token(form: &str, signer: &Signer) -> bool {
    let field = |name: &str| {
        form.split('&').find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| percent_decode(v))
        })
    };
    field("grant_type").as_deref() == Some("refresh_token")
        && field("refresh_token").as_deref() == Some(signer.password.as_str())
}

fn check_basic(authorization: Option<&str>, signer: &Signer) -> bool {
    let Some(value) = authorization.and_then(|a| a.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(decoded) = STANDARD.decode(value.trim()) else {
        return false;
    };
    let expected = format!("{}:{}", signer.user, signer.password);
    decoded == expected.as_bytes()
}

/// An ES256 JWT granting every action asked for in the `scope` parameters.
fn sign_token(signer: &Signer, query: &str) -> String {
    let mut access = Vec::new();
    for pair in query.split('&') {
        let Some(("scope", value)) = pair.split_once('=') else {
            continue;
        };
        let value = percent_decode(value);
        // A scope parameter may hold several space-separated scopes.
        for scope in value.split(' ') {
            let mut parts = scope.splitn(3, ':').collect::<Vec<_>>();
            if parts.len() == 3 {
                let actions: Vec<&str> = parts.pop().unwrap_or("").split(',').collect();
                access.push(
                    serde_json::json!({"type": parts[0], "name": parts[1], "actions": actions}),
                );
            }
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&signer.cert_der)]});
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER,
        "sub": signer.user,
        "aud": TOKEN_SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", rand_suffix()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let rng = ring::rand::SystemRandom::new();
    let sig = signer
        .key
        .sign(&rng, signing_input.as_bytes())
        .expect("sign token");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn rand_suffix() -> u64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u64::from_le_bytes(b)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
