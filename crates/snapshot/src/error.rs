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
    TooLarge {
        /// The total size in bytes of the unpacked layer trees to put on the disk.
        unpacked: u64,
        /// The cache size in bytes the disk was asked to fit in.
        limit: u64,
    },
    /// An image names a layer whose unpacked tree is not in the layer store.
    #[error("layer {diff_id} of image {reference} is not unpacked at {}", path.display())]
    MissingLayer {
        /// The image that names the layer, as its reference reads.
        reference: String,
        /// The diffID of the missing layer.
        diff_id: Digest,
        /// Where the layer store should hold its unpacked tree.
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
        /// The disk image file `mkfs.erofs` was writing.
        output: PathBuf,
        /// How `mkfs.erofs` exited.
        status: String,
        /// What `mkfs.erofs` wrote to its standard error, trimmed.
        stderr: String,
    },
    /// A file system operation failed.
    #[error("{action} {}: {cause}", path.display())]
    Io {
        /// What was being done, e.g. `creating` or `reading`.
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The I/O error of that operation.
        cause: std::io::Error,
    },
    /// The disk's index is missing or not valid JSON.
    #[error("cache disk {} has an invalid index: {reason}", path.display())]
    InvalidIndex {
        /// The cache disk whose index is invalid, or the index file being written.
        path: PathBuf,
        /// Why the index could not be read, parsed or serialised.
        reason: String,
    },
    /// The file is neither an EROFS image nor a plain-directory cache.
    #[error("{} is not a cache disk (neither an EROFS image nor a directory with index.json)", path.display())]
    NotACacheDisk {
        /// The file or directory that was taken for a cache disk.
        path: PathBuf,
    },
    /// Setting up a loop device failed.
    #[error("attaching {} to a loop device: {cause}", disk.display())]
    Loop {
        /// The disk image file being attached.
        disk: PathBuf,
        /// The error of the loop device setup.
        cause: std::io::Error,
    },
    /// Mounting or unmounting failed.
    #[error("{action} {} at {}: {cause}", disk.display(), mount_point.display())]
    Mount {
        /// What was being done, e.g. `bind-mounting` or `unmounting`.
        action: &'static str,
        /// The cache disk (image file or directory) being mounted.
        disk: PathBuf,
        /// Where it is or was to be mounted.
        mount_point: PathBuf,
        /// The error of the mount or unmount call.
        cause: std::io::Error,
    },
    /// A reference-count file could not be parsed.
    #[error("reference counts of cache {id} at {} are corrupt: {reason}", path.display())]
    CorruptRefs {
        /// The id of the cache disk whose reference counts these are.
        id: String,
        /// The reference-count file.
        path: PathBuf,
        /// Why it could not be parsed or serialised.
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
