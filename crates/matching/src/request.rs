//! What a pod asks of the matcher.

use imc_api::{Digest, Reference};

/// The node's temporary storage when a pod sets no `ephemeral-storage` limit (30 GiB).
pub const DEFAULT_TEMP_STORAGE_BYTES: u64 = 30 << 30;

/// One image a pod's containers use.
#[derive(Debug, Clone, PartialEq)]
pub struct PodImage {
    /// The image as the pod's container names it.
    pub reference: Reference,
    /// Compressed layers (digest, size) when known, e.g. from an earlier pull.
    pub layers: Vec<(Digest, u64)>,
}

impl PodImage {
    /// An image whose layers are not known.
    pub fn new(reference: Reference) -> Self {
        Self {
            reference,
            layers: Vec::new(),
        }
    }
}

/// A pod's matching request.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchRequest {
    /// The pod's images (duplicates are ignored).
    pub images: Vec<PodImage>,
    /// `imc-perfect-match`: only caches holding every image qualify.
    pub perfect_match: bool,
    /// `imc-match-count-request`: only caches holding at least this many images exactly qualify.
    pub min_exact: Option<usize>,
    /// The pod's temporary storage in bytes (its `ephemeral-storage` limit, else the default).
    pub temp_storage_bytes: u64,
}

impl MatchRequest {
    /// A request for `images` with no filters and the default temporary storage.
    pub fn new(images: Vec<PodImage>) -> Self {
        Self {
            images,
            perfect_match: false,
            min_exact: None,
            temp_storage_bytes: DEFAULT_TEMP_STORAGE_BYTES,
        }
    }

    /// Total compressed size of the pod's images, when every image's layers are known.
    pub fn total_size(&self) -> Option<u64> {
        if self.images.is_empty() || self.images.iter().any(|i| i.layers.is_empty()) {
            return None;
        }
        Some(
            self.images
                .iter()
                .flat_map(|i| &i.layers)
                .map(|(_, s)| s)
                .sum(),
        )
    }
}
