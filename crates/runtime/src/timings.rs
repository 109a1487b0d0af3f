//! How long each step of a container start took.

use std::time::Duration;

use serde::Serialize;

/// Durations of the steps of one container start, returned to the caller (and printed by
/// `imc run -v`, recorded in pod events by the node).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StartTimings {
    /// Attaching the cache disk (zero when none or already attached).
    #[serde(with = "millis")]
    pub attach: Duration,
    /// Resolving the image and pulling the layers the cache lacks.
    #[serde(with = "millis")]
    pub layers_pulled: Duration,
    /// Mounting the overlay rootfs and writing the OCI spec.
    #[serde(with = "millis")]
    pub rootfs_assembled: Duration,
    /// `runc run --detach` (create and start).
    #[serde(with = "millis")]
    pub runtime_started: Duration,
    /// The whole start, from the request to the process running.
    #[serde(with = "millis")]
    pub total: Duration,
    /// Layers taken from the cache disk.
    pub layers_from_cache: usize,
    /// Layers taken from the layer store.
    pub layers_from_store: usize,
}

mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }
}
