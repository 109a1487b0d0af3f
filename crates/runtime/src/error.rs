//! Errors of running containers, in the user's terms.

use std::path::PathBuf;

use imc_api::Digest;

/// What went wrong while preparing, running or cleaning up a container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file system operation failed.
    #[error("{action} {}: {cause}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    /// Attaching or releasing the cache disk failed.
    #[error(transparent)]
    Cache(#[from] imc_snapshot::SnapshotError),
    /// A layer of the image is neither on the cache disk nor unpacked in the layer store.
    #[error("layer {diff_id} of image {image} is neither on the cache disk nor in the layer store")]
    LayerUnavailable { image: String, diff_id: Digest },
    /// Pulling the image (or reading it from the layer store) failed.
    #[error("pulling image {image}: {cause}")]
    Pull {
        image: String,
        cause: Box<imc_layers::LayerError>,
    },
    /// The image is neither on the cache disk nor in the layer store, and no registry was given.
    #[error("image {image} is neither on the cache disk nor in the layer store")]
    ImageNotPresent { image: String },
    /// The image config is not a valid OCI image config.
    #[error("image {image} has an invalid config: {reason}")]
    InvalidConfig { image: String, reason: String },
    /// The container has nothing to run.
    #[error("image {image} defines no command (no Entrypoint or Cmd) and the container gives none")]
    NoCommand { image: String },
    /// The image's or container's user is not in the rootfs's /etc/passwd or /etc/group.
    #[error(
        "container {container}: user {user:?} not found in the image's /etc/passwd or /etc/group"
    )]
    UnknownUser { container: String, user: String },
    /// Mounting the overlay rootfs failed.
    #[error("mounting the rootfs of container {container} at {}: {cause}", target.display())]
    Overlay {
        container: String,
        target: PathBuf,
        cause: std::io::Error,
    },
    /// A CNI plugin failed or could not be run.
    #[error("{action}: {message}")]
    Cni { action: String, message: String },
    /// Creating the pod's network namespace failed.
    #[error("creating the network namespace of pod {pod}: {cause}")]
    Network { pod: String, cause: std::io::Error },
    /// runc could not be run or reported an error.
    #[error("runc {action} of container {container} failed: {message}")]
    Runc {
        action: &'static str,
        container: String,
        message: String,
    },
    /// A pod uid or container name is not one plain path component.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: String,
    },
    /// A file of the image the runtime must read is not one it may read safely.
    #[error("container {container}: the image's {path} {reason}")]
    ImageFile {
        container: String,
        path: String,
        reason: String,
    },
    /// The container's security context cannot be applied.
    #[error("container {container}: {reason}")]
    Security { container: String, reason: String },
    /// `runAsNonRoot` is set and the process would run as root (the kubelet's wording).
    #[error("{reason} (container: {container})")]
    NonRoot { container: String, reason: String },
    /// A runc command did not finish in time; it was killed.
    #[error(
        "runc {action} of container {container} did not finish within {seconds} s and was killed"
    )]
    RuncTimeout {
        action: &'static str,
        container: String,
        seconds: u64,
    },
    /// A blocking task of the runtime panicked or was cancelled.
    #[error("{action}: the worker thread failed: {reason}")]
    Worker {
        action: &'static str,
        reason: String,
    },
    /// Container log limits that could keep nothing.
    #[error("invalid container log limits: {reason}")]
    InvalidLogLimits { reason: String },
    /// Building the OCI runtime spec failed.
    #[error("OCI runtime spec of container {container}: {reason}")]
    Spec { container: String, reason: String },
}

impl RuntimeError {
    /// Builds a closure mapping an `io::Error` on `path` to [`RuntimeError::Io`].
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| RuntimeError::Io {
            action,
            path,
            cause: source,
        }
    }
}
