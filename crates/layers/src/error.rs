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
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The tar stream is malformed or could not be read.
    #[error("{}: {cause}", match entry { Some(e) => format!("reading tar entry {e:?}"), None => "reading tar stream".to_owned() })]
    Tar {
        entry: Option<String>,
        cause: std::io::Error,
    },
    /// The entry cannot be applied safely (escape attempt, device node, loop, bad header).
    #[error("unsafe layer entry {entry:?}: {reason}")]
    Unsafe { entry: String, reason: String },
    /// The layer's files exceed the size bound.
    #[error("layer entry {entry:?} takes the layer past its size limit of {limit} bytes")]
    TooLarge { entry: String, limit: u64 },
    /// A filesystem operation on the entry failed.
    #[error("layer entry {entry:?}: {op}: {cause}")]
    Io {
        entry: String,
        op: &'static str,
        cause: std::io::Error,
    },
}

/// Errors of the layer store and the puller. Each names the image and/or layer digest concerned.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A filesystem operation on the store failed.
    #[error("layer store {path}: {op}: {cause}")]
    Store {
        path: PathBuf,
        op: &'static str,
        cause: std::io::Error,
    },
    /// An image record on disk could not be read.
    #[error("image record {path} is corrupt: {reason}")]
    CorruptRecord { path: PathBuf, reason: String },
    /// The registry failed (its error names the image and what the registry answered).
    #[error(transparent)]
    Registry(#[from] imc_registry::RegistryError),
    /// The image config is not valid JSON.
    #[error("image {image}: config is not valid JSON: {reason}")]
    BadConfig { image: String, reason: String },
    /// The pull stopped because another layer of the image failed.
    #[error("image {image}: pull cancelled after another layer failed")]
    Cancelled { image: String },
    /// A downloaded blob did not match its digest.
    #[error("image {image}: blob {digest}: content does not match its digest (got {actual})")]
    BlobDigestMismatch {
        image: String,
        digest: Digest,
        actual: Digest,
    },
    /// A layer's tar could not be applied safely.
    #[error("image {image}: layer {digest}: {cause}")]
    Unpack {
        image: String,
        digest: Digest,
        cause: UnpackError,
    },
    /// A layer's decompressed content does not match the diffID in the image config.
    #[error(
        "image {image}: layer {digest}: uncompressed content is {actual}, but the image config says diffID {diff_id}"
    )]
    DiffIdMismatch {
        image: String,
        digest: Digest,
        diff_id: Digest,
        actual: Digest,
    },
    /// A layer could not be read, decompressed or stored.
    #[error("image {image}: layer {digest}: {op}: {cause}")]
    Layer {
        image: String,
        digest: Digest,
        op: &'static str,
        cause: std::io::Error,
    },
    /// The image is not in the store.
    #[error("image {0} is not in the layer store")]
    NoSuchImage(String),
    /// A worker task died (panic or cancellation).
    #[error("image {image}: internal task failed: {reason}")]
    Task { image: String, reason: String },
}
