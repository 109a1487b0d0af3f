//! ServiceAccount: the generic strategy, with the `token` subresource (TokenRequest, in
//! [`crate::token_request`]).

use crate::resources::ResourceDef;

/// `v1` ServiceAccount.
pub fn def() -> ResourceDef {
    let mut sa =
        ResourceDef::new("", "v1", "ServiceAccount", "serviceaccounts", true).short(&["sa"]);
    sa.token_subresource = true;
    sa
}
