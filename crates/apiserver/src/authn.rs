//! Authentication: who a bearer token belongs to. The admin token (`DIR/pki/admin.token`) is
//! `imc-admin` in `system:masters`; the read-only token (`DIR/pki/view.token`) is `imc-view`
//! in `imc:view`; a service account token issued through `serviceaccounts/token` is
//! `system:serviceaccount:NS:NAME`, as kube-apiserver names it, while the service account (and
//! the pod it is bound to) still exists.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::sa_token::{Claims, TokenIssuer};
use crate::store::{Key, Store};

/// The group of the admin user: allowed everything (as in Kubernetes).
pub const MASTERS: &str = "system:masters";

/// The group of the read-only user.
pub const VIEWERS: &str = "imc:view";

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";

/// Name of the admin user.
pub const ADMIN_USER: &str = "imc-admin";

/// Name of the read-only user.
pub const VIEW_USER: &str = "imc-view";

/// The longest bearer token looked at (a service account JWT is well under 2 KiB).
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// An authenticated user, as `user.Info` in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `imc-admin`, `imc-view` or `system:serviceaccount:NS:NAME`.
    pub name: String,
    /// The service account's uid, empty for the built-in users.
    pub uid: String,
    /// Groups, `system:authenticated` always among them.
    pub groups: Vec<String>,
    /// Extra attributes (a service account token's pod binding).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    fn builtin(name: &str, group: &str) -> Self {
        User {
            name: name.to_owned(),
            uid: String::new(),
            groups: vec![group.to_owned(), AUTHENTICATED.to_owned()],
            extra: BTreeMap::new(),
        }
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// The `userInfo` of a SelfSubjectReview.
    pub fn user_info(&self) -> Value {
        let mut info = json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            info["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            info["extra"] = json!(self.extra);
        }
        info
    }
}

/// Maps bearer tokens to users.
pub struct Authenticator {
    admin_token: String,
    view_token: String,
    issuer: TokenIssuer,
    store: Store,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are secrets: never printed.
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

/// The token of an `Authorization` header value, read as kube-apiserver reads it: the value
/// trimmed, split on single spaces, the scheme `Bearer` in any case, the token the next part
/// (never empty).
pub fn bearer_token(header: &str) -> Option<&str> {
    let mut parts = header.trim().splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator {
    /// Authenticates with these two static tokens and service account tokens of `issuer`,
    /// checked against the service accounts and pods in `store`.
    pub fn new(admin_token: String, view_token: String, issuer: TokenIssuer, store: Store) -> Self {
        Authenticator {
            admin_token,
            view_token,
            issuer,
            store,
        }
    }

    /// The service account token issuer.
    pub fn issuer(&self) -> &TokenIssuer {
        &self.issuer
    }

    /// The user an `Authorization` header value authenticates, if any.
    pub fn authenticate(&self, header: Option<&str>) -> Option<User> {
        let token = bearer_token(header?)?;
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        if constant_time_eq(token.as_bytes(), self.admin_token.as_bytes()) {
            return Some(User::builtin(ADMIN_USER, MASTERS));
        }
        if constant_time_eq(token.as_bytes(), self.view_token.as_bytes()) {
            return Some(User::builtin(VIEW_USER, VIEWERS));
        }
        let claims = self.issuer.verify(token)?;
        self.service_account_user(&claims)
    }

    /// The user of a valid service account token whose service account (and bound pod) still
    /// exist with the uids the token names.
    fn service_account_user(&self, claims: &Claims) -> Option<User> {
        let sa = self.store.get(&Key {
            res: "/serviceaccounts".into(),
            ns: claims.namespace.clone(),
            name: claims.service_account.clone(),
        })?;
        if sa.pointer("/metadata/uid").and_then(Value::as_str) != Some(&claims.service_account_uid)
            || sa.pointer("/metadata/deletionTimestamp").is_some()
        {
            return None;
        }
        let mut extra = BTreeMap::new();
        if let Some((pod, uid)) = &claims.pod {
            let bound = self.store.get(&Key {
                res: "/pods".into(),
                ns: claims.namespace.clone(),
                name: pod.clone(),
            })?;
            if bound.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                return None;
            }
            extra.insert(
                "authentication.kubernetes.io/pod-name".to_owned(),
                vec![pod.clone()],
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".to_owned(),
                vec![uid.clone()],
            );
        }
        extra.insert(
            "authentication.kubernetes.io/credential-id".to_owned(),
            vec![format!("JTI={}", claims.id)],
        );
        Some(User {
            name: format!(
                "system:serviceaccount:{}:{}",
                claims.namespace, claims.service_account
            ),
            uid: claims.service_account_uid.clone(),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{}", claims.namespace),
                AUTHENTICATED.to_owned(),
            ],
            extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_is_read_as_kube_apiserver_reads_it() {
        for (header, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER abc ", Some("abc")),
            ("  Bearer abc", Some("abc")),
            ("Bearer a b", Some("a")),
            ("Bearer  abc", None),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearerabc", None),
        ] {
            assert_eq!(bearer_token(header), token, "{header:?}");
        }
    }
}
