//! Errors of the layer store, the puller and unpack, in the user's terms.

use std::path::PathBuf;

use imc_api::Digest;

/// Why a layer tar could not be applied. Every variant that concerns an entry names it.
///
/// Underlying errors are part of the message (fields named `cause`, not error sources), so a
/// status field or log line built from `to_string()` carries the whole story and `{:#}` does not
/// repeat it.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The layer root could not be opened.
    #[error("cannot open layer root {path}: {cause}")]
    Root {
        /// The directory the layer was to be unpacked into.
        path: PathBuf,
        /// Why opening it failed.
        cause: std::io::Error,
    },
    /// The tar stream is malformed or could not be read.
    #[error("{}: {cause}", match entry { Some(e) => format!("reading tar entry {e:?}"), None => "reading tar stream".to_owned() })]
    Tar {
        /// The path of the tar entry being read, or `None` when the stream failed between entries.
        entry: Option<String>,
        /// The read or format error of the tar stream.
        cause: std::io::Error,
    },
    /// The entry cannot be applied safely (escape attempt, device node, loop, bad header).
    #[error("unsafe layer entry {entry:?}: {reason}")]
    Unsafe {
        /// The entry's path as the tar header gives it.
        entry: String,
        /// What makes it unsafe to apply.
        reason: String,
    },
    /// The layer's files exceed the size bound.
    #[error("layer entry {entry:?} takes the layer past its size limit of {limit} bytes")]
    TooLarge {
        /// The entry's path as the tar header gives it.
        entry: String,
        /// The limit on the layer's total size in bytes (`UnpackOptions::max_size`).
        limit: u64,
    },
    /// A filesystem operation on the entry failed.
    #[error("layer entry {entry:?}: {op}: {cause}")]
    Io {
        /// The entry's path as the tar header gives it.
        entry: String,
        /// The filesystem operation that failed, e.g. `create file`.
        op: &'static str,
        /// The I/O error of that operation.
        cause: std::io::Error,
    },
}

/// Errors of the layer store and the puller. Each names the image and/or layer digest concerned.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A filesystem operation on the store failed.
    #[error("layer store {path}: {op}: {cause}")]
    Store {
        /// The file or directory of the store the operation was on.
        path: PathBuf,
        /// The operation that failed, e.g. `read image record`.
        op: &'static str,
        /// The I/O error of that operation.
        cause: std::io::Error,
    },
    /// An image record on disk could not be read.
    #[error("image record {path} is corrupt: {reason}")]
    CorruptRecord {
        /// The image record's file.
        path: PathBuf,
        /// Why it could not be parsed or serialised.
        reason: String,
    },
    /// The registry failed (its error names the image and what the registry answered).
    #[error(transparent)]
    Registry(#[from] imc_registry::RegistryError),
    /// The image config is not valid JSON.
    #[error("image {image}: config is not valid JSON: {reason}")]
    BadConfig {
        /// The image being pulled, as its reference reads.
        image: String,
        /// The JSON parser's complaint.
        reason: String,
    },
    /// The pull stopped because another layer of the image failed.
    #[error("image {image}: pull cancelled after another layer failed")]
    Cancelled {
        /// The image being pulled, as its reference reads.
        image: String,
    },
    /// A downloaded blob did not match its digest.
    #[error("image {image}: blob {digest}: content does not match its digest (got {actual})")]
    BlobDigestMismatch {
        /// The image the blob belongs to, as its reference reads.
        image: String,
        /// The digest the blob should have.
        digest: Digest,
        /// The digest its content hashes to.
        actual: Digest,
    },
    /// A layer's tar could not be applied safely.
    #[error("image {image}: layer {digest}: {cause}")]
    Unpack {
        /// The image being pulled, as its reference reads.
        image: String,
        /// The digest of the layer's (compressed) blob.
        digest: Digest,
        /// Why the layer's tar could not be applied.
        cause: UnpackError,
    },
    /// A layer's decompressed content does not match the diffID in the image config.
    #[error(
        "image {image}: layer {digest}: uncompressed content is {actual}, but the image config says diffID {diff_id}"
    )]
    DiffIdMismatch {
        /// The image being pulled, as its reference reads.
        image: String,
        /// The digest of the layer's (compressed) blob.
        digest: Digest,
        /// The diffID the image config gives for the layer.
        diff_id: Digest,
        /// The digest of the layer's decompressed content.
        actual: Digest,
    },
    /// A layer could not be read, decompressed or stored.
    #[error("image {image}: layer {digest}: {op}: {cause}")]
    Layer {
        /// The image being pulled, as its reference reads.
        image: String,
        /// The digest of the layer's (compressed) blob.
        digest: Digest,
        /// The step that failed, e.g. `open blob` or `start zstd decoder`.
        op: &'static str,
        /// The I/O error of that step.
        cause: std::io::Error,
    },
    /// The image is not in the store.
    #[error("image {0} is not in the layer store")]
    NoSuchImage(String),
    /// A worker task died (panic or cancellation).
    #[error("image {image}: internal task failed: {reason}")]
    Task {
        /// The image whose pull the task was working on, as its reference reads.
        image: String,
        /// How the task ended: its panic message or the cancellation.
        reason: String,
    },
}
