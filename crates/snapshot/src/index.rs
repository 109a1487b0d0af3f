//! `/index.json` of a cache disk: which images it holds and where their layers are.

use imc_api::Digest;
use serde::{Deserialize, Serialize};

/// Version of the index format written by this builder.
pub const INDEX_SCHEMA_VERSION: u32 = 1;

/// File name of the index at the root of every cache disk.
pub const INDEX_FILE: &str = "index.json";

/// The index of a cache disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheIndex {
    /// Format version ([`INDEX_SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Filesystem UUID of the disk, derived from its inputs (same inputs, same UUID).
    pub disk_id: String,
    /// Sum of the sizes of the distinct layers' regular files (each inode once).
    pub unpacked_size: u64,
    /// Images in the order they were given to the builder.
    pub images: Vec<IndexImage>,
    /// Every distinct layer once, in first-use order.
    pub layers: Vec<IndexLayer>,
}

/// One image held by a cache disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexImage {
    /// The reference as given (normalised), e.g. `127.0.0.1:5000/app:v1`.
    pub reference: String,
    /// Digest of the platform manifest.
    pub manifest_digest: Digest,
    /// The OCI image config (Entrypoint, Cmd, Env, ...), as pulled.
    pub config: serde_json::Value,
    /// Layer diffIDs, bottom first.
    pub layers: Vec<Digest>,
}

/// One distinct layer tree on a cache disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexLayer {
    /// The layer's diffID (digest of its uncompressed tar).
    pub diff_id: Digest,
    /// Location of the unpacked tree inside the disk, relative to its root.
    pub path: String,
    /// Bytes of regular files in the tree (each inode once).
    pub unpacked_size: u64,
}

impl CacheIndex {
    /// The path of a layer inside the disk when the disk holds it.
    pub fn layer_path(&self, diff_id: &Digest) -> Option<&str> {
        self.layers
            .iter()
            .find(|l| &l.diff_id == diff_id)
            .map(|l| l.path.as_str())
    }

    /// Whether the disk holds this layer.
    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_path(diff_id).is_some()
    }

    /// The image recorded under `reference` (compared as normalised strings).
    pub fn image(&self, reference: &str) -> Option<&IndexImage> {
        self.images.iter().find(|i| i.reference == reference)
    }
}

/// Location of a layer inside a disk: `layers/sha256/<hex>`.
pub(crate) fn layer_location(diff_id: &Digest) -> String {
    format!("layers/{}/{}", diff_id.algorithm(), diff_id.hex())
}
