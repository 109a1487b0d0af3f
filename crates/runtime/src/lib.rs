//! imc-runtime: running containers of a pod (DESIGN §5).
//!
//! A container's rootfs is an overlayfs whose lower dirs are the image's layers (from an attached
//! cache disk where it holds them, else from the layer store) with a private upper/work dir; its
//! process is described by an OCI runtime spec generated from the image config and the container
//! spec and run by `runc`. Each pod has its own network namespace with loopback only.

mod container;
mod error;
mod image;
mod log_writer;
mod netns;
mod recover;
mod rootfs;
mod runc;
mod spec;
mod timings;
mod tree;
mod user;

pub use container::{Container, ContainerIo, ContainerSpec, ExitInfo, Runtime, StartRequest};
pub use error::RuntimeError;
pub use image::{ImageConfig, LayerSource, PreparedImage, prepare_image};
pub use log_writer::{LogLimits, LogRecord, MAX_LINE, log_text, parse_record, rotated_path};
pub use netns::PodSandbox;
pub use recover::RuntimeRecovery;
pub use runc::{ContainerStatus, Runc};
pub use spec::{DEFAULT_CAPABILITIES, generate_spec};
pub use timings::StartTimings;
pub use user::{ResolvedUser, resolve_user};
