//! The HTTPS listener: rustls (ring provider) in front of the axum router, the connection
//! defences of [`crate::connections`], authentication, and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::authn::Authenticator;
use crate::authz::Authorizer;
use crate::connections::{
    self, ActivityIo, Connection, ConnectionConfig, ConnectionTable, Throttled,
};
use crate::error::{ApiError, Result};
use crate::handler::ApiServer;
use crate::http::{self, HttpState};
use crate::inflight::{Inflight, InflightConfig};
use crate::pki::Pki;
use crate::pod_security::{Level as PodSecurityLevel, PodSecurity};
use crate::resources::Resources;
use crate::sa_token::TokenIssuer;
use crate::store::Store;

/// How to run the server.
#[derive(Clone)]
pub struct ServerConfig {
    /// Data directory: `pki/`, `state.db`, `kubeconfig.yaml`.
    pub data_dir: PathBuf,
    /// Listen address (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The served resources.
    pub resources: Resources,
    /// Kinds installed at start as CustomResourceDefinitions from Rust (ImageCache).
    pub custom_kinds: Vec<crate::crd::CustomKind>,
    /// How many changes the event log keeps for watch resume.
    pub watch_window: u64,
    /// How long Events are kept (Kubernetes' default is one hour).
    pub event_ttl: std::time::Duration,
    /// The Pod Security level enforced in namespaces without a
    /// `pod-security.kubernetes.io/enforce` label.
    pub pod_security_default: PodSecurityLevel,
    /// Connection cap and timeouts.
    pub connections: ConnectionConfig,
    /// In-flight caps and the request timeout.
    pub inflight: InflightConfig,
    /// More names (IPs or DNS names) the serving certificate carries: where else clients
    /// reach the server (the pod network's gateway, for in-pod clients).
    pub extra_sans: Vec<String>,
    /// Where Services' cluster IPs and node ports come from.
    pub service_network: crate::service_ips::ServiceNetwork,
    /// Where the `kubernetes` Service's endpoint points (the address pods reach the API at);
    /// the listen address (loopback when it listens on every address) when None. Its port is
    /// the listener's.
    pub api_endpoint: Option<std::net::Ipv4Addr>,
}

impl ServerConfig {
    /// Defaults: the built-in resources, a 10,000-change watch window, `baseline` enforced.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            listen,
            resources: Resources::builtin(),
            custom_kinds: vec![crate::strategies::image_cache::custom_kind()],
            watch_window: 10_000,
            event_ttl: std::time::Duration::from_secs(3600),
            pod_security_default: PodSecurityLevel::Baseline,
            connections: ConnectionConfig::default(),
            inflight: InflightConfig::default(),
            extra_sans: Vec::new(),
            service_network: crate::service_ips::ServiceNetwork::default(),
            api_endpoint: None,
        }
    }
}

/// A bound, ready-to-serve API server.
pub struct Server {
    api: Arc<ApiServer>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<HttpState>,
    connections: ConnectionConfig,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    event_ttl: std::time::Duration,
    /// Held for the server's lifetime: one server per data directory.
    _lock: std::fs::File,
}

/// Installs ring as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Takes the data directory's lock, so that a second server cannot serve (and overwrite the
/// kubeconfig of) the same state. The kernel drops it when the process dies, even by SIGKILL.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join("apiserver.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(crate::data_dir::FILE_MODE)
        .open(&path)
        .map_err(|source| ApiError::Io {
            path: path.display().to_string(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ApiError::DataDirInUse {
            path: dir.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(ApiError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Runs blocking file work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("{what}: {e}")))?
}

impl Server {
    /// Opens the state, creates the PKI on first start, binds the listener and writes the
    /// kubeconfig. The data directory is created (or tightened to) 0700 and the state files
    /// 0600; the file work runs off the async workers.
    pub async fn bind(config: ServerConfig) -> Result<Self> {
        install_crypto_provider();
        let dir = &config.data_dir;
        let lock = {
            let dir = dir.clone();
            blocking("preparing the data directory", move || {
                crate::data_dir::prepare(&dir)?;
                lock_data_dir(&dir)
            })
            .await?
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ApiError::Io {
                path: format!("listen {}", config.listen),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ApiError::Io {
            path: format!("listen {}", config.listen),
            source,
        })?;
        let (pki, kubeconfig, issuer) = {
            let dir = dir.clone();
            let extra = config.extra_sans.clone();
            blocking("writing credentials", move || {
                let pki = Pki::load_or_create(&dir.join("pki"), addr, &extra)?;
                let kubeconfig = pki.write_kubeconfig(&dir.join("kubeconfig.yaml"), addr)?;
                pki.write_view_kubeconfig(&dir.join("kubeconfig-view.yaml"), addr)?;
                let issuer = TokenIssuer::load_or_create(&dir.join("pki").join("sa.key"))?;
                Ok((pki, kubeconfig, issuer))
            })
            .await?
        };
        let certs = CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ApiError::Internal(format!("serving certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes())
            .map_err(|e| ApiError::Internal(format!("serving key: {e}")))?;
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let store_path = dir.join("state.db");
        let store = {
            let path = store_path.clone();
            let window = config.watch_window;
            blocking("opening store", move || Store::open(&path, window)).await?
        };
        // Services hand out from an allocation rebuilt from the stored ones.
        let allocator = crate::service_ips::ServiceAllocator::new(config.service_network.clone());
        crate::strategies::service_spec::restore(&allocator, &store.list("/services", None).0);
        let mut resources = config.resources;
        resources.register(crate::strategies::service::def(allocator.clone()));
        let api = ApiServer::new(
            store,
            resources,
            PodSecurity::new(config.pod_security_default),
        );
        let event_ttl = config.event_ttl;
        api.bootstrap().await?;
        let endpoint = config.api_endpoint.unwrap_or(match addr.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_unspecified() => ip,
            _ => std::net::Ipv4Addr::LOCALHOST,
        });
        crate::api_service::ensure(&api, allocator.network(), endpoint, addr.port()).await?;
        api.install_custom_kinds(config.custom_kinds).await?;
        let authn = Authenticator::new(
            pki.token.clone(),
            pki.view_token.clone(),
            issuer,
            api.store.clone(),
        );
        let authz = Authorizer::new(api.store.clone(), api.resources().viewable());
        let state = Arc::new(HttpState {
            api: api.clone(),
            authn,
            authz,
            inflight: Inflight::new(config.inflight),
        });
        // Sockets are file descriptors: the cap must stay below what the process may open.
        let nofile = connections::raise_nofile_limit();
        let mut connection_config = config.connections;
        connection_config.max_connections =
            connections::fit_cap(connection_config.max_connections, nofile);
        if connection_config.max_connections < config.connections.max_connections {
            tracing::warn!(
                requested = config.connections.max_connections,
                max = connection_config.max_connections,
                open_files_limit = ?nofile,
                "connection cap lowered to fit the open files limit"
            );
        }
        Ok(Server {
            api,
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            state,
            connections: connection_config,
            addr,
            kubeconfig,
            event_ttl,
            _lock: lock,
        })
    }

    /// The address actually listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The kubeconfig written for this server.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API state (admission registry, pod log provider).
    pub fn api(&self) -> Arc<ApiServer> {
        self.api.clone()
    }

    /// The connection cap and timeouts in force (the cap fitted to the open files limit).
    pub fn connection_config(&self) -> ConnectionConfig {
        self.connections
    }

    /// Serves until `shutdown` completes, then stops accepting and drops open connections
    /// (watches included) within a few seconds.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let state = self.state.clone();
        let app = Router::new()
            .fallback(http::dispatch)
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                http::authenticate,
            ))
            .with_state(state);
        let expiry = tokio::spawn(self.api.clone().expire_events(self.event_ttl));
        let lifecycle = tokio::spawn(self.api.clone().finalize_namespaces());
        let collector = tokio::spawn(self.api.clone().collect_garbage());
        serve_tls(
            self.listener,
            self.acceptor,
            app,
            self.connections,
            shutdown,
        )
        .await;
        expiry.abort();
        lifecycle.abort();
        collector.abort();
        Ok(())
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` completes, then stops accepting and
/// drops open connections (watches included) within a few seconds: the API server's accept
/// loop, shared with `imc webhook`. Connections are bounded as `connections` says (cap,
/// handshake, header and idle timeouts); accept errors (out of file descriptors) are waited
/// out with a back-off and logged at most once in a while.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    connections: ConnectionConfig,
    shutdown: impl Future<Output = ()>,
) {
    let table = ConnectionTable::new(connections.max_connections);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(connections.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        // kube-apiserver's: 250 streams, headers up to 1 MiB.
        .max_concurrent_streams(250)
        .max_header_list_size(1 << 20);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut accept_errors = Throttled::default();
    let mut backoff = std::time::Duration::ZERO;
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            // Reap finished connection tasks as they end.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin, and say so
                // once in a while rather than for every attempt.
                if let Some(held_back) = accept_errors.check(std::time::Instant::now()) {
                    tracing::warn!(error = %e, held_back, "accepting connections failed");
                }
                backoff = (backoff * 2).clamp(
                    std::time::Duration::from_millis(5),
                    std::time::Duration::from_secs(1),
                );
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(backoff) => continue,
                }
            }
        };
        backoff = std::time::Duration::ZERO;
        let Some(conn) = table.admit() else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tasks.spawn(serve_connection(
            ActivityIo::new(tcp, conn.clone()),
            peer,
            conn,
            Accept {
                acceptor: acceptor.clone(),
                builder: builder.clone(),
                app: app.clone(),
                table: table.clone(),
                config: connections,
            },
            stop_rx.clone(),
        ));
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let drained = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(5), drained)
        .await
        .is_err()
    {
        tasks.abort_all();
    }
}

/// What every connection task needs.
struct Accept {
    acceptor: TlsAcceptor,
    builder: auto::Builder<TokioExecutor>,
    app: Router,
    table: Arc<ConnectionTable>,
    config: ConnectionConfig,
}

/// One connection: the TLS handshake within its timeout, then HTTP/1 or HTTP/2 until the
/// client closes, the connection idles out, it is evicted to make room, or the server stops.
async fn serve_connection(
    io: ActivityIo<tokio::net::TcpStream>,
    peer: SocketAddr,
    conn: Arc<Connection>,
    accept: Accept,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Accept {
        acceptor,
        builder,
        app,
        table,
        config,
    } = accept;
    let handshake = tokio::time::timeout(config.handshake_timeout, acceptor.accept(io));
    let tls = tokio::select! {
        r = handshake => match r {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "tls handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "tls handshake timed out");
                None
            }
        },
        _ = conn.evicted() => None,
        _ = stopped(&mut stop) => None,
    };
    let Some(tls) = tls else {
        table.remove(&conn);
        return;
    };
    let for_requests = conn.clone();
    let service = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(for_requests.clone());
        req
    });
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(service))
        .into_owned();
    tokio::pin!(connection);
    let period = (config.idle_timeout / 4).max(std::time::Duration::from_millis(250));
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        let idle_check = tokio::select! {
            r = connection.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                false
            }
            _ = conn.evicted() => false,
            // Watches would hold a graceful stop forever: connections are dropped.
            _ = stopped(&mut stop) => false,
            _ = tick.tick() => true,
        };
        if !idle_check {
            break;
        }
        if conn.idle_for(config.idle_timeout) {
            connection.as_mut().graceful_shutdown();
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), connection.as_mut()).await;
            break;
        }
    }
    table.remove(&conn);
}

/// Completes when the server is stopping.
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
