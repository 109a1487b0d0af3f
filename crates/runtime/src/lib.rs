//! imc-runtime: running containers of a pod (DESIGN §5).
//!
//! A container's rootfs is an overlayfs whose lower dirs are the image's layers (from an attached
//! cache disk where it holds them, else from the layer store) with a private upper/work dir; its
//! process is described by an OCI runtime spec generated from the image config, the container
//! spec and its security context and resources, and run by `runc` in its own cgroup. Each pod
//! has its own network namespace with loopback only (unless `hostNetwork`).
//!
//! Every name that becomes a path or a runc id is checked again here ([`check_component`]),
//! and every blocking system call (mounts, loop ioctls, flock, file reads of image content,
//! tree removal) runs on tokio's blocking pool, never on an async worker thread.
#![warn(missing_docs)]

mod cgroups;
mod cni;
mod container;
mod error;
mod exec;
mod image;
mod log_writer;
mod masquerade;
mod names;
mod netns;
mod recover;
mod rootfs;
mod runc;
mod seccomp;
mod security;
pub mod service_proxy;
mod spec;
mod timings;
mod tree;
mod user;

pub use cni::{Attachment, CniNetwork, POD_INTERFACE, PortMapping, default_conflist};
pub use container::{
    Container, ContainerIo, ContainerSpec, ExitInfo, MAX_TERMINATION_MESSAGE, Runtime,
    StartRequest, VolumeMount,
};
pub use error::RuntimeError;
pub use exec::{
    ContainerExec, ExecOutput, ExecProcess, ExecRequest, ExecSpawn, ExecStdio, Terminal,
    TerminalReader, TerminalResizer, TerminalWriter,
};
pub use image::{
    ImageConfig, LayerSource, PreparedImage, Presence, in_cache, prepare_image, presence,
};
pub use log_writer::{LogLimits, LogRecord, MAX_LINE, log_text, parse_record, rotated_path};
pub use masquerade::PodMasquerade;
pub use names::check_component;
pub use netns::{PodSandbox, SandboxConfig};
pub use recover::RuntimeRecovery;
pub use runc::{ContainerStatus, Runc};
pub use seccomp::{
    LocalhostProfile, MAX_PROFILE_BYTES, RUNTIME_DEFAULT_REFERENCE, SeccompError, SeccompProfile,
    from_localhost_file, runtime_default,
};
pub use security::{ResourceSpec, SecuritySpec, capabilities, verify_non_root};
pub use spec::{DEFAULT_CAPABILITIES, PodNamespaces, SpecInput, generate_spec};
pub use timings::StartTimings;
pub use user::{ResolvedUser, resolve_user};

/// Runs blocking work (file system, mounts, ioctls, flock, runc's files) on tokio's blocking
/// pool and waits for it.
pub(crate) async fn blocking<T: Send + 'static>(
    action: &'static str,
    work: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RuntimeError::Worker {
            action,
            reason: e.to_string(),
        })?
}
