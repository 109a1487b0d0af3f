//! imc-matching: which cache should a pod start from? (DESIGN §4)
//!
//! A pure, deterministic ranking with no I/O. The controllers keep a [`CacheIndex`] of the
//! caches they know and ask [`CacheIndex::best`] for each pod; `imc explain-match` asks
//! [`CacheIndex::explain`] for the full reasoning.
//!
//! Ranking, in order:
//! 1. candidates are `Ready` caches whose size fits the pod's temporary storage, filtered by
//!    perfect-match / match-count when the pod asks, and sharing something with the pod;
//! 2. highest match degree: images matched exactly, then images of the same repository with
//!    another tag, then bytes of the pod's layers the cache already holds (where known);
//! 3. ties: cache size closest to the total size of the pod's images;
//! 4. ties: most recently created (then name, so the result never depends on input order).

#![warn(missing_docs)]

mod index;
mod rank;
mod request;

pub use index::{CacheEntry, CacheIndex, CachedImage};
pub use rank::{Candidate, Exclusion, Explanation, Score};
pub use request::{DEFAULT_TEMP_STORAGE_BYTES, MatchRequest, PodImage};
