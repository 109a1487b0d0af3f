//! Service-account tokens for projected volumes (the kubelet's token manager): requested
//! through the `serviceaccounts/token` subresource (TokenRequest), bound to the pod, kept in
//! memory only and requested again once 80% of their lifetime has passed or they are a day
//! old, as the kubelet does. A token is never logged.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

/// `expirationSeconds` when a projection does not say (the API's default).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The oldest a token may get before it is replaced, whatever its lifetime.
const MAX_AGE: SignedDuration = SignedDuration::from_hours(24);

/// What a token is asked for: one per pod, service account, audience and lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's `serviceAccountName`.
    pub service_account: String,
    /// The projection's `audience` (empty: the API server's own).
    pub audience: String,
    /// The projection's `expirationSeconds`.
    pub expiration_seconds: i64,
    /// The pod the token is bound to.
    pub pod_name: String,
    /// Its uid.
    pub pod_uid: String,
}

/// A token as issued.
#[derive(Clone)]
struct Issued {
    token: String,
    issued: Timestamp,
    expires: Timestamp,
}

impl Issued {
    /// Whether it should be replaced at `now`: 80% of its lifetime passed, or a day old.
    fn needs_refresh(&self, now: Timestamp) -> bool {
        let lifetime = self.expires.duration_since(self.issued);
        let refresh_at = self
            .expires
            .checked_sub(lifetime / 5)
            .unwrap_or(self.issued);
        now >= refresh_at || now.duration_since(self.issued) >= MAX_AGE
    }

    fn expired(&self, now: Timestamp) -> bool {
        now >= self.expires
    }
}

/// The node's service-account tokens.
pub struct TokenManager {
    client: kube::Client,
    cache: Mutex<HashMap<TokenKey, Issued>>,
}

impl TokenManager {
    /// A manager requesting tokens with `client`.
    pub fn new(client: kube::Client) -> Self {
        TokenManager {
            client,
            cache: Mutex::default(),
        }
    }

    /// The token for `key`: the one held while it is fresh, else a new one (the held one
    /// while it is still valid if the request fails). The error is upstream's
    /// `failed to fetch token: …`.
    pub async fn get(&self, key: &TokenKey) -> Result<String, String> {
        let now = Timestamp::now();
        let held = self.held(key);
        if let Some(h) = &held
            && !h.needs_refresh(now)
        {
            return Ok(h.token.clone());
        }
        match self.request(key).await {
            Ok(issued) => {
                let token = issued.token.clone();
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                // Expired tokens of any pod go too, so the map never outgrows the pods.
                cache.retain(|_, t| !t.expired(now));
                cache.insert(key.clone(), issued);
                Ok(token)
            }
            Err(e) => match held {
                Some(h) if !h.expired(now) => Ok(h.token),
                _ => Err(format!("failed to fetch token: {e}")),
            },
        }
    }

    /// Drops the tokens of the pod `uid` (it is gone).
    pub fn forget_pod(&self, uid: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| k.pod_uid != uid);
    }

    fn held(&self, key: &TokenKey) -> Option<Issued> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    async fn request(&self, key: &TokenKey) -> Result<Issued, String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &key.namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: (!key.audience.is_empty()).then(|| vec![key.audience.clone()]),
                expiration_seconds: Some(key.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(key.pod_name.clone()),
                    uid: Some(key.pod_uid.clone()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let issued = Timestamp::now();
        let answer: TokenRequest = api
            .create_subresource(
                "token",
                &key.service_account,
                &PostParams::default(),
                &request,
            )
            .await
            .map_err(|e| e.to_string())?;
        let status = answer.status.unwrap_or_default();
        let token = status
            .token
            .filter(|t| !t.is_empty())
            .ok_or("the API answered without a token")?;
        let lifetime = answer
            .spec
            .and_then(|s| s.expiration_seconds)
            .unwrap_or(key.expiration_seconds);
        let expires = status
            .expiration_timestamp
            .map_or_else(|| issued + SignedDuration::from_secs(lifetime), |t| t.0);
        Ok(Issued {
            token,
            issued,
            expires,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_at_80_percent_or_a_day() {
        let issued: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let token = |lifetime: i64| Issued {
            token: String::new(),
            issued,
            expires: issued + SignedDuration::from_secs(lifetime),
        };
        let at = |secs: i64| issued + SignedDuration::from_secs(secs);
        // (lifetime, seconds after issue, refresh?)
        let rows = [
            (3600, 0, false),
            (3600, 2879, false),
            (3600, 2880, true),
            (3600, 4000, true),
            (600, 479, false),
            (600, 480, true),
            (365 * 86400, 86399, false),
            (365 * 86400, 86400, true),
        ];
        for (lifetime, after, want) in rows {
            assert_eq!(
                token(lifetime).needs_refresh(at(after)),
                want,
                "{lifetime} s token, {after} s on"
            );
        }
        assert!(!token(3600).expired(at(3599)));
        assert!(token(3600).expired(at(3600)));
    }
}
