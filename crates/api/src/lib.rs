//! imc-api: the types every other part of imc speaks.
//!
//! Content digests, image references, the `ImageCache` resource and the annotation names of
//! DESIGN §3–§4. Everything here is pure: parsing, validation and defaulting, no I/O.

#![warn(missing_docs)]

pub mod annotations;
pub mod cache_id;
pub mod cron_schedule;
pub mod digest;
pub mod image_cache;
pub mod quantity;
pub mod reference;
pub mod validation;

pub use cache_id::CacheId;
pub use digest::{Digest, DigestError};
pub use image_cache::{ImageCache, ImageCacheSpec, ImageCacheStatus};
pub use reference::{Reference, ReferenceError};
