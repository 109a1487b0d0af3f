//! Errors of running containers, in the user's terms.

use std::path::PathBuf;

use imc_api::Digest;

/// What went wrong while preparing, running or cleaning up a container.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file system operation failed.
    #[error("{action} {}: {cause}", path.display())]
    Io {
        /// What the runtime was doing, e.g. "creating" or "reading".
        action: &'static str,
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The error the operating system returned.
        cause: std::io::Error,
    },
    /// Attaching or releasing the cache disk failed.
    #[error(transparent)]
    Cache(#[from] imc_snapshot::SnapshotError),
    /// A layer of the image is neither on the cache disk nor unpacked in the layer store.
    #[error("layer {diff_id} of image {image} is neither on the cache disk nor in the layer store")]
    LayerUnavailable {
        /// The image reference.
        image: String,
        /// The diff id of the missing layer.
        diff_id: Digest,
    },
    /// Pulling the image (or reading it from the layer store) failed.
    #[error("pulling image {image}: {cause}")]
    Pull {
        /// The image reference.
        image: String,
        /// Why the layer store could not pull or read it.
        cause: Box<imc_layers::LayerError>,
    },
    /// The image is neither on the cache disk nor in the layer store, and no registry was given.
    #[error("image {image} is neither on the cache disk nor in the layer store")]
    ImageNotPresent {
        /// The image reference.
        image: String,
    },
    /// The image config is not a valid OCI image config.
    #[error("image {image} has an invalid config: {reason}")]
    InvalidConfig {
        /// The image reference.
        image: String,
        /// Which part of the config is invalid and why.
        reason: String,
    },
    /// The container has nothing to run.
    #[error("image {image} defines no command (no Entrypoint or Cmd) and the container gives none")]
    NoCommand {
        /// The image reference.
        image: String,
    },
    /// The image's or container's user is not in the rootfs's /etc/passwd or /etc/group.
    #[error(
        "container {container}: user {user:?} not found in the image's /etc/passwd or /etc/group"
    )]
    UnknownUser {
        /// The container's name.
        container: String,
        /// The user name that is not found (the group name when no user was named).
        user: String,
    },
    /// Mounting the overlay rootfs failed.
    #[error("mounting the rootfs of container {container} at {}: {cause}", target.display())]
    Overlay {
        /// The container whose rootfs it is.
        container: String,
        /// Where the overlay was to be mounted.
        target: PathBuf,
        /// The error mount(2) returned.
        cause: std::io::Error,
    },
    /// A CNI plugin failed or could not be run.
    #[error("{action}: {message}")]
    Cni {
        /// What the runtime was doing, e.g. "loading the network configuration".
        action: String,
        /// What failed: the plugin's error, or why it or its configuration could not be used.
        message: String,
    },
    /// Creating the pod's network namespace failed.
    #[error("creating the network namespace of pod {pod}: {cause}")]
    Network {
        /// The pod's uid.
        pod: String,
        /// The error of the namespace creation or its bind mount.
        cause: std::io::Error,
    },
    /// runc could not be run or reported an error.
    #[error("runc {action} of container {container} failed: {message}")]
    Runc {
        /// The runc command, e.g. "create" or "exec".
        action: &'static str,
        /// The runc container id.
        container: String,
        /// What runc wrote to its log (else its stderr), trimmed, or why it could not be run.
        message: String,
    },
    /// A pod uid or container name is not one plain path component.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// What the name is, e.g. "pod uid" or "container name".
        what: &'static str,
        /// The name as given, escaped for display.
        name: String,
        /// Which rule the name breaks.
        reason: String,
    },
    /// A file of the image the runtime must read is not one it may read safely.
    #[error("container {container}: the image's {path} {reason}")]
    ImageFile {
        /// The container's name.
        container: String,
        /// The file's absolute path inside the rootfs, e.g. `/etc/passwd`.
        path: String,
        /// Why the file may not be read.
        reason: String,
    },
    /// The container's security context cannot be applied.
    #[error("container {container}: {reason}")]
    Security {
        /// The container's name.
        container: String,
        /// Which setting cannot be applied and why.
        reason: String,
    },
    /// `runAsNonRoot` is set and the process would run as root (the kubelet's wording).
    #[error("{reason} (container: {container})")]
    NonRoot {
        /// The container's name.
        container: String,
        /// The kubelet's message saying why the process would run as root.
        reason: String,
    },
    /// A runc command did not finish in time; it was killed.
    #[error(
        "runc {action} of container {container} did not finish within {seconds} s and was killed"
    )]
    RuncTimeout {
        /// The runc command, e.g. "create" or "delete".
        action: &'static str,
        /// The runc container id.
        container: String,
        /// The time limit the command exceeded, in seconds.
        seconds: u64,
    },
    /// A command run in a container (`runc exec`) did not finish in time; it was killed.
    #[error(
        "command {command:?} in container {container} did not finish within {seconds} s and was killed"
    )]
    ExecTimeout {
        /// The runc container id.
        container: String,
        /// The command and its arguments, joined by spaces.
        command: String,
        /// The time limit the command exceeded, in seconds.
        seconds: u64,
    },
    /// A blocking task of the runtime panicked or was cancelled.
    #[error("{action}: the worker thread failed: {reason}")]
    Worker {
        /// What the blocking task was doing.
        action: &'static str,
        /// The join error: the panic or the cancellation.
        reason: String,
    },
    /// Container log limits that could keep nothing.
    #[error("invalid container log limits: {reason}")]
    InvalidLogLimits {
        /// Which limit is invalid and why.
        reason: String,
    },
    /// Building the OCI runtime spec failed.
    #[error("OCI runtime spec of container {container}: {reason}")]
    Spec {
        /// The container's name.
        container: String,
        /// Which part of the spec could not be built and why.
        reason: String,
    },
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
