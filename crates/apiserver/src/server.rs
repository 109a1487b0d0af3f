//! The HTTPS listener: rustls (ring provider) in front of the axum router, with graceful
//! shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::error::{ApiError, Result};
use crate::handler::ApiServer;
use crate::http::{self, HttpState};
use crate::pki::Pki;
use crate::pod_security::{Level as PodSecurityLevel, PodSecurity};
use crate::resources::Resources;
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
    /// How many changes the event log keeps for watch resume.
    pub watch_window: u64,
    /// How long Events are kept (Kubernetes' default is one hour).
    pub event_ttl: std::time::Duration,
    /// The Pod Security level enforced in namespaces without a
    /// `pod-security.kubernetes.io/enforce` label.
    pub pod_security_default: PodSecurityLevel,
}

impl ServerConfig {
    /// Defaults: the built-in resources, a 10,000-change watch window, `baseline` enforced.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            listen,
            resources: Resources::builtin(),
            watch_window: 10_000,
            event_ttl: std::time::Duration::from_secs(3600),
            pod_security_default: PodSecurityLevel::Baseline,
        }
    }
}

/// A bound, ready-to-serve API server.
pub struct Server {
    api: Arc<ApiServer>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    token: String,
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
        let (pki, kubeconfig) = {
            let dir = dir.clone();
            blocking("writing credentials", move || {
                let pki = Pki::load_or_create(&dir.join("pki"), addr)?;
                let kubeconfig = pki.write_kubeconfig(&dir.join("kubeconfig.yaml"), addr)?;
                Ok((pki, kubeconfig))
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
        let api = ApiServer::new(
            store,
            config.resources,
            PodSecurity::new(config.pod_security_default),
        );
        let event_ttl = config.event_ttl;
        api.bootstrap().await?;
        Ok(Server {
            api,
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            token: pki.token.clone(),
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

    /// Serves until `shutdown` completes, then stops accepting and waits for open requests
    /// (watches are closed).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let state = Arc::new(HttpState {
            api: self.api.clone(),
            token: self.token.clone(),
        });
        let app = Router::new()
            .fallback(http::dispatch)
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                http::authenticate,
            ))
            .with_state(state);
        let expiry = tokio::spawn(self.api.clone().expire_events(self.event_ttl));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = self.acceptor.clone();
            let service = TowerToHyperService::new(app.clone());
            let watcher = graceful.watcher();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "tls handshake failed");
                        return;
                    }
                };
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                let conn = watcher.watch(conn.into_owned());
                tokio::select! {
                    r = conn => if let Err(e) = r { tracing::debug!(%peer, error = %e, "connection ended"); },
                    // Long watches would hold graceful shutdown forever: drop them.
                    _ = stop.wait_for(|s| *s) => {}
                }
            });
        }
        tracing::info!("shutting down");
        expiry.abort();
        let _ = stop_tx.send(true);
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
        Ok(())
    }
}
