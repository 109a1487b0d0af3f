//! Wiring: the shared [`Context`] every controller receives, and [`run`], which runs them all.
//!
//! The controllers talk to the Kubernetes API only through a `kube::Client`, so the same code
//! runs inside `imc server` (a client of the embedded API server over loopback HTTPS) and against
//! a real cluster.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use imc_layers::LayerStore;
use imc_registry::{Platform, RegistryOptions};

use crate::metrics::Metrics;

/// Settings fixed at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--data-dir`: layer store, cache disks, pod dirs.
    pub data_dir: PathBuf,
    /// The name of this machine's Node object.
    pub node_name: String,
    /// Server-wide registry settings (`--plain-http`, `--insecure-registry`,
    /// `--registry-mirror`); per-cache annotations and pull secrets add to them.
    pub registry: RegistryOptions,
    /// The platform taken from indexes unless a cache says otherwise (`imc-cpu-arch`).
    pub platform: Platform,
    /// Parallel layer downloads per pull.
    pub jobs: usize,
    /// Added to the wall clock wherever a controller asks for "now" (retention). Zero in
    /// production; tests move time forward with the hidden `imc server --clock-offset-seconds`.
    pub clock_offset: jiff::SignedDuration,
    /// Bytes in one GiB of `imageCacheSize`. `1 << 30` in production; tests shrink it with the
    /// hidden `imc server --gib-bytes` so "20 GiB" can be exceeded by a small image.
    pub gib_bytes: u64,
    /// Most processes (and threads) each container may have (`imc server
    /// --container-pids-limit`); `None` for no limit.
    pub container_pids_limit: Option<i64>,
    /// PEM of the API server's CA, published as the `kube-root-ca.crt` ConfigMap of every
    /// namespace (`imc server`); `None` where kube-controller-manager does it.
    pub root_ca: Option<String>,
    /// `--cache-registry`: the repository Ready caches' disks are pushed to as OCI artifacts
    /// (DESIGN §13); `None` pushes nothing.
    pub cache_registry: Option<imc_api::Reference>,
}

impl Settings {
    /// The controllers' notion of now: the wall clock plus [`Settings::clock_offset`].
    pub fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
            .checked_add(self.clock_offset)
            .unwrap_or_else(|_| jiff::Timestamp::now())
    }
}

/// What every reconcile gets.
pub struct Context {
    /// The client of the Kubernetes API the controllers run against.
    pub client: kube::Client,
    /// The controllers' configuration.
    pub settings: Settings,
    /// The node's layer store, shared by cache builds and pods.
    pub layers: LayerStore,
    /// The Prometheus metrics every controller records into.
    pub metrics: Arc<Metrics>,
    /// Downloads cache disks this node lacks from the cache registry (one download per disk
    /// at a time); `None` without `cache_registry`.
    pub disk_fetcher: Option<imc_registry::DiskFetcher>,
    /// Set by [`Context::stop_builds`] when the process stops.
    stopping: Arc<AtomicBool>,
}

/// Runs every controller of this process until they all stop (they normally never do): the
/// cache controller, the scheduler (which binds pending pods to Nodes; on a cluster that
/// has kube-scheduler, run the cache controller alone) and, given a CA, the root CA publisher.
pub async fn run(ctx: Arc<Context>) {
    let scheduler = crate::scheduler::Options {
        instance: format!(
            "{}-{}",
            crate::scheduler::SCHEDULER_NAME,
            ctx.settings.node_name
        ),
        cache_holder: None,
    };
    // One task per controller, so one that ends (or panics) does not stop the others.
    let mut tasks = vec![
        tokio::spawn(crate::cache::run(ctx.clone())),
        tokio::spawn(crate::scheduler::run(ctx.client.clone(), scheduler)),
        tokio::spawn(crate::workloads::run(ctx.client.clone())),
        tokio::spawn(crate::endpoints::run(ctx.client.clone())),
    ];
    if let Some(ca) = ctx.settings.root_ca.clone() {
        tasks.push(tokio::spawn(crate::root_ca_publisher::run(
            ctx.client.clone(),
            ca,
        )));
    }
    for task in tasks {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "a controller stopped");
        }
    }
}

impl Context {
    /// Opens the layer store under the data dir.
    pub fn new(
        client: kube::Client,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, imc_layers::LayerError> {
        let layers = LayerStore::open(&settings.data_dir)?;
        let disk_fetcher = settings.cache_registry.as_ref().and_then(|_| {
            imc_registry::Client::new(settings.registry.clone())
                .map_err(|e| tracing::warn!(error = %e, "cannot fetch cache disks from the cache registry"))
                .ok()
                .map(imc_registry::DiskFetcher::new)
        });
        Ok(Arc::new(Self {
            client,
            settings,
            layers,
            metrics,
            disk_fetcher,
            stopping: Arc::default(),
        }))
    }

    /// Calls off every cache build for a graceful stop of the process: a disk write under way
    /// is thrown away when it ends and no status is written, so the cache stays `Creating` (or
    /// `Updating`) and the next start builds it again.
    pub fn stop_builds(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Removes this process's temporary work under `DIR/tmp` (partial blobs of pulls under way,
    /// staging trees) once its builds are called off; returns how many entries went. Work
    /// started after this is left to the next start, which removes a dead process's entries.
    pub fn remove_temp_work(&self) -> usize {
        let dir = self.settings.data_dir.join("tmp");
        let prefix = format!("{}-", std::process::id());
        let mut removed = 0;
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if !entry.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let path = entry.path();
            let result = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match result {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "removing temporary work")
                }
            }
        }
        removed
    }

    /// Whether [`Context::stop_builds`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The flag [`Context::stop_builds`] sets, for blocking work that outlives its task.
    pub(crate) fn stopping_flag(&self) -> Arc<AtomicBool> {
        self.stopping.clone()
    }
}
