//! Errors of the node.

use std::path::PathBuf;

/// What went wrong running a pod, in the user's terms.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The Kubernetes API refused or failed a request.
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// A container image reference does not parse.
    #[error("container {container}: invalid image reference {image:?}: {reason}")]
    InvalidImage {
        container: String,
        image: String,
        reason: String,
    },
    /// `imagePullPolicy: Never` and the image is not on this node.
    #[error("container image {image:?} is not present with pull policy of Never")]
    ImageNeverPull { image: String },
    /// Pulling an image failed.
    #[error("failed to pull image {image:?}: {source}")]
    Pull {
        image: String,
        #[source]
        source: Box<imc_layers::LayerError>,
    },
    /// The registry client could not be set up.
    #[error("registry client for {image:?}: {source}")]
    Registry {
        image: String,
        #[source]
        source: Box<imc_registry::RegistryError>,
    },
    /// The runtime failed (attach, rootfs, runc).
    #[error(transparent)]
    Runtime(#[from] imc_runtime::RuntimeError),
    /// The layer store failed.
    #[error(transparent)]
    Layers(Box<imc_layers::LayerError>),
    /// A log file cannot be read.
    #[error("reading logs of container {container:?} ({path}): {source}")]
    Logs {
        container: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `--previous` on a container that has not been restarted.
    #[error("previous terminated container {container:?} in pod {pod:?} not found")]
    NoPrevious { pod: String, container: String },
    /// A name that would become a path is not a single plain path component.
    #[error("invalid {what} {name:?}: not a single path component")]
    InvalidName { what: &'static str, name: String },
    /// The container has no log yet (it never started).
    #[error("container {container:?} in pod {pod:?} is waiting to start")]
    NotStarted { pod: String, container: String },
}

impl NodeError {
    /// Wraps a kube error with what was being done.
    pub(crate) fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| NodeError::Api { action, source }
    }
}

impl From<imc_layers::LayerError> for NodeError {
    fn from(e: imc_layers::LayerError) -> Self {
        NodeError::Layers(Box::new(e))
    }
}
