//! Lease: the generic strategy.

use crate::resources::ResourceDef;

/// `coordination.k8s.io/v1` Lease.
pub fn def() -> ResourceDef {
    ResourceDef::new("coordination.k8s.io", "v1", "Lease", "leases", true)
}
