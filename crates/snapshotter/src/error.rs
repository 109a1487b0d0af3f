//! Errors of the snapshotter, in containerd's terms: each maps to the gRPC code containerd's
//! `errdefs` turns back into `ErrNotFound`, `ErrAlreadyExists`, … on its side.

use std::path::PathBuf;

use containerd_snapshots::tonic::{Code, Status};

/// What went wrong serving a snapshot request.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotterError {
    /// No snapshot has this key.
    #[error("snapshot {key:?} does not exist")]
    NotFound {
        /// The snapshot key containerd asked for.
        key: String,
    },
    /// The parent named in a request does not exist.
    #[error("parent snapshot {parent:?} does not exist")]
    ParentNotFound {
        /// The parent key the request named.
        parent: String,
    },
    /// A snapshot with this key already exists.
    #[error("snapshot {key:?} already exists")]
    AlreadyExists {
        /// The key containerd asked to create.
        key: String,
    },
    /// The requested layer is already held by a cache disk: containerd need not unpack it.
    #[error("target snapshot {target:?} already exists (layer {diff_id} on cache disk {})", disk.display())]
    TargetFromCache {
        /// The target snapshot key containerd's unpacker asked to prepare (its
        /// `containerd.io/snapshot.ref` label).
        target: String,
        /// The diffID of the layer the cache disk holds.
        diff_id: String,
        /// The cache disk that holds it.
        disk: PathBuf,
    },
    /// The request is not valid for this snapshot's state.
    #[error("{reason}")]
    FailedPrecondition {
        /// Why the snapshot's state does not allow the request.
        reason: String,
    },
    /// The request itself is malformed.
    #[error("{reason}")]
    InvalidArgument {
        /// What is malformed in the request.
        reason: String,
    },
    /// The metadata store failed.
    #[error("snapshot metadata store: {0}")]
    Store(#[from] rusqlite::Error),
    /// Stored metadata could not be decoded.
    #[error("snapshot metadata of {key:?} is corrupt: {reason}")]
    Corrupt {
        /// The key of the snapshot whose metadata is corrupt.
        key: String,
        /// Why the stored metadata could not be decoded.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{action} {}: {cause}", path.display())]
    Io {
        /// What was being done, e.g. `creating` or `removing`.
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The I/O error of that operation.
        cause: std::io::Error,
    },
    /// Attaching or reading a cache disk failed.
    #[error(transparent)]
    Cache(#[from] imc_snapshot::SnapshotError),
    /// A layer served from a cache disk is gone (the disk was removed while the snapshot
    /// still refers to it).
    #[error("layer {diff_id} of snapshot {key:?} is on cache disk {}, which is not available", disk.display())]
    CacheMissing {
        /// The key of the snapshot that refers to the layer.
        key: String,
        /// The diffID of the layer.
        diff_id: String,
        /// The cache disk the layer was served from.
        disk: PathBuf,
    },
    /// A blocking task panicked or was cancelled.
    #[error("internal error: {0}")]
    Internal(String),
}

impl SnapshotterError {
    /// A closure turning an I/O error into [`SnapshotterError::Io`] with context.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |cause| SnapshotterError::Io {
            action,
            path,
            cause,
        }
    }

    /// The gRPC code containerd expects for this error.
    pub fn code(&self) -> Code {
        match self {
            SnapshotterError::NotFound { .. } | SnapshotterError::ParentNotFound { .. } => {
                Code::NotFound
            }
            SnapshotterError::AlreadyExists { .. } | SnapshotterError::TargetFromCache { .. } => {
                Code::AlreadyExists
            }
            SnapshotterError::FailedPrecondition { .. } => Code::FailedPrecondition,
            SnapshotterError::InvalidArgument { .. } => Code::InvalidArgument,
            SnapshotterError::CacheMissing { .. } => Code::Unavailable,
            SnapshotterError::Store(_)
            | SnapshotterError::Corrupt { .. }
            | SnapshotterError::Io { .. }
            | SnapshotterError::Cache(_)
            | SnapshotterError::Internal(_) => Code::Internal,
        }
    }
}

impl From<SnapshotterError> for Status {
    fn from(e: SnapshotterError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl From<crate::filter::FilterError> for SnapshotterError {
    fn from(e: crate::filter::FilterError) -> Self {
        SnapshotterError::InvalidArgument {
            reason: e.to_string(),
        }
    }
}
