//! imc-snapshotter: a containerd proxy snapshotter serving image layers from imc cache disks
//! (issue 14, DESIGN §13).
//!
//! containerd calls it for `[proxy_plugins.imc] type = "snapshot"`. Layers that a cache disk
//! under `DIR/caches/` holds are reported present when containerd's unpacker prepares them (by
//! chain ID, so whatever reference the image was pulled under), and their snapshots are the
//! disk's read-only layer directories (the disk attached once, reference-counted); everything
//! else behaves as containerd's overlayfs snapshotter. Metadata lives in
//! `DIR/snapshotter/metadata.db`, local layers and writable snapshots in
//! `DIR/snapshotter/snapshots/<id>/`. See docs/snapshotter.md.

#![warn(missing_docs)]

pub mod catalog;
pub mod chain;
pub mod cluster;
mod error;
pub mod filter;
pub mod mounts;
pub mod prefetch;
mod server;
mod snapshotter;
pub mod store;
mod usage;

pub use error::SnapshotterError;
pub use server::serve;
pub use snapshotter::{
    CACHE_USER, ImcSnapshotter, LABEL_CACHE_DISK, LABEL_CACHE_LAYER, LABEL_SNAPSHOT_REF, Status,
};
pub use store::Kind;
