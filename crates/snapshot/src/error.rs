//! Errors of cache disk building and attaching, in the user's terms.

use std::path::PathBuf;

use imc_api::Digest;

/// What went wrong while building, reading or attaching a cache disk.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The unpacked layers do not fit the requested cache size.
    #[error(
        "unpacked content of the cache is {unpacked} bytes ({:.2} GiB), larger than the cache size of {limit} bytes ({:.2} GiB)",
        *unpacked as f64 / GIB, *limit as f64 / GIB
    )]
    TooLarge { unpacked: u64, limit: u64 },
    /// An image names a layer whose unpacked tree is not in the layer store.
    #[error("layer {diff_id} of image {reference} is not unpacked at {}", path.display())]
    MissingLayer {
        reference: String,
        diff_id: Digest,
        path: PathBuf,
    },
    /// The EROFS backend was asked for but `mkfs.erofs` is not installed.
    #[error(
        "mkfs.erofs not found in PATH (install erofs-utils, or use the plain-directory backend)"
    )]
    MkfsNotFound,
    /// `mkfs.erofs` ran and failed.
    #[error("mkfs.erofs failed writing {} ({status}): {stderr}", output.display())]
    Mkfs {
        output: PathBuf,
        status: String,
        stderr: String,
    },
    /// A file system operation failed.
    #[error("{action} {}: {cause}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The disk's index is missing or not valid JSON.
    #[error("cache disk {} has an invalid index: {reason}", path.display())]
    InvalidIndex { path: PathBuf, reason: String },
    /// The file is neither an EROFS image nor a plain-directory cache.
    #[error("{} is not a cache disk (neither an EROFS image nor a directory with index.json)", path.display())]
    NotACacheDisk { path: PathBuf },
    /// Setting up a loop device failed.
    #[error("attaching {} to a loop device: {cause}", disk.display())]
    Loop {
        disk: PathBuf,
        cause: std::io::Error,
    },
    /// Mounting or unmounting failed.
    #[error("{action} {} at {}: {cause}", disk.display(), mount_point.display())]
    Mount {
        action: &'static str,
        disk: PathBuf,
        mount_point: PathBuf,
        cause: std::io::Error,
    },
    /// A reference-count file could not be parsed.
    #[error("reference counts of cache {id} at {} are corrupt: {reason}", path.display())]
    CorruptRefs {
        id: String,
        path: PathBuf,
        reason: String,
    },
}

const GIB: f64 = (1u64 << 30) as f64;

impl SnapshotError {
    /// Builds a closure mapping an `io::Error` on `path` to [`SnapshotError::Io`].
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| SnapshotError::Io {
            action,
            path,
            cause: source,
        }
    }
}
