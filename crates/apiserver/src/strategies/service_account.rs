//! ServiceAccount: the generic strategy.

use crate::resources::ResourceDef;

/// `v1` ServiceAccount.
pub fn def() -> ResourceDef {
    ResourceDef::new("", "v1", "ServiceAccount", "serviceaccounts", true).short(&["sa"])
}
