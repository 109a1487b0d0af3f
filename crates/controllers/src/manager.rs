//! Wiring: the shared [`Context`] every controller receives, and [`start`], which runs them all.
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
}

/// What every reconcile gets.
pub struct Context {
    pub client: kube::Client,
    pub settings: Settings,
    pub layers: LayerStore,
    pub metrics: Arc<Metrics>,
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
