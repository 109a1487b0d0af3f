//! Wiring: the shared [`Context`] every controller receives, and [`run`], which runs them all.
//!
//! The controllers talk to the Kubernetes API only through a `kube::Client`, so the same code
//! runs inside `imc server` (a client of the embedded API server over loopback HTTPS) and against
//! a real cluster.

use std::path::PathBuf;
use std::sync::Arc;

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
    pub client: kube::Client,
    pub settings: Settings,
    pub layers: LayerStore,
    pub metrics: Arc<Metrics>,
}

/// Runs every controller of this process until they all stop (they normally never do).
pub async fn run(ctx: Arc<Context>) {
    // One task per controller, so one that ends (or panics) does not stop the others.
    let tasks = vec![tokio::spawn(crate::cache::run(ctx.clone()))];
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
        Ok(Arc::new(Self {
            client,
            settings,
            layers,
            metrics,
        }))
    }
}
