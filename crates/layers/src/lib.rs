//! imc-layers: the content-addressed layer store (blobs by digest, unpacked trees by diffID),
//! safe unpack of hostile layer tars (DESIGN §8), image records, pull orchestration and GC.

#![warn(missing_docs)]

mod error;
mod private_dir;
mod puller;
mod store;
mod unpack;

pub use error::{LayerError, UnpackError};
pub use private_dir::{PRIVATE_DIR_MODE, ensure_data_dir, ensure_private_dir};
pub use puller::{NoProgress, PullProgress, PullReport, PulledLayer, Puller};
pub use store::{BlobCompression, GcReport, ImageRecord, LayerRecord, LayerStore, StoreLock};
pub use unpack::{UnpackOptions, UnpackStats, unpack_layer, unpack_layer_with};
