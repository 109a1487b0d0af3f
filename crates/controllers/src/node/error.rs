//! Errors of the node.

use std::path::PathBuf;

/// What went wrong running a pod, in the user's terms.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The Kubernetes API refused or failed a request.
    #[error("{action}: {source}")]
    Api {
        /// What the node was doing, e.g. "creating node n1".
        action: String,
        /// The error of the API call.
        #[source]
        source: kube::Error,
    },
    /// A container image reference does not parse.
    #[error("container {container}: invalid image reference {image:?}: {reason}")]
    InvalidImage {
        /// The container's name.
        container: String,
        /// The image as the container spec gives it.
        image: String,
        /// Why the reference does not parse.
        reason: String,
    },
    /// `imagePullPolicy: Never` and the image is not on this node.
    #[error("container image {image:?} is not present with pull policy of Never")]
    ImageNeverPull {
        /// The image reference.
        image: String,
    },
    /// Pulling an image failed.
    #[error("failed to pull image {image:?}: {source}")]
    Pull {
        /// The image reference.
        image: String,
        /// Why the layer store could not pull it.
        #[source]
        source: Box<imc_layers::LayerError>,
    },
    /// The registry client could not be set up.
    #[error("registry client for {image:?}: {source}")]
    Registry {
        /// The image reference.
        image: String,
        /// Why the client could not be set up.
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
        /// The container's name.
        container: String,
        /// The log file's path.
        path: PathBuf,
        /// The error the operating system returned.
        #[source]
        source: std::io::Error,
    },
    /// `kubectl exec` into a container with no running instance (the kubelet's words).
    #[error("container not found ({container:?})")]
    ContainerNotFound {
        /// The container's name.
        container: String,
    },
    /// `kubectl port-forward` to a pod none of whose containers runs.
    #[error("pod {pod:?} has no running container to forward to")]
    PodNotRunning {
        /// The pod's name.
        pod: String,
    },
    /// A forwarded connection could not be made.
    #[error("failed to connect to localhost:{port} inside the pod's network namespace: {source}")]
    Forward {
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--previous` on a container that has not been restarted.
    #[error("previous terminated container {container:?} in pod {pod:?} not found")]
    NoPrevious {
        /// The pod's name.
        pod: String,
        /// The container's name.
        container: String,
    },
    /// A blocking task of the node panicked or was cancelled.
    #[error("{action}: the worker thread failed: {reason}")]
    Worker {
        /// What the blocking task was doing.
        action: &'static str,
        /// The join error: the panic or the cancellation.
        reason: String,
    },
    /// The container cannot be run as its spec asks (the kubelet's
    /// `CreateContainerConfigError`).
    #[error("{0}")]
    Config(String),
    /// The container has no log yet (it never started).
    #[error("container {container:?} in pod {pod:?} is waiting to start")]
    NotStarted {
        /// The pod's name.
        pod: String,
        /// The container's name.
        container: String,
    },
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
