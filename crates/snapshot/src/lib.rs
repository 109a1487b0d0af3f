//! imc-snapshot: cache disks (DESIGN §5).
//!
//! A cache disk is one immutable, read-only image holding the unpacked layer trees of a list of
//! images, each distinct layer once at `/layers/sha256/<hex>/`, plus `/index.json` mapping every
//! image to its manifest digest, config and ordered layer diffIDs. [`SnapshotBuilder`] writes
//! one (EROFS through `mkfs.erofs`, or a plain directory where EROFS or loop devices are
//! unavailable); [`Attacher`] attaches it read-only once per host and reference-counts its users.

#![warn(missing_docs)]

mod attach;
mod builder;
mod disk;
mod error;
mod index;
mod loop_device;
mod mountinfo;
mod staging;
mod user;

pub use attach::{AttachedCache, Attacher, RecoveryReport};
pub use builder::{
    Backend, BackendChoice, BuildImage, BuildOptions, BuildReport, SnapshotBuilder,
    remove_stale_temp_disks,
};
pub use disk::{DiskKind, SnapshotDisk};
pub use error::SnapshotError;
pub use index::{CacheIndex, IndexImage, IndexLayer};
pub use mountinfo::{is_mount_point, mounts_under};
pub use user::CacheUser;
