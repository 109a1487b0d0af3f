//! Service account tokens: JWTs (ES256) issued through the `serviceaccounts/token` subresource
//! (TokenRequest) with kube-apiserver's claims, signed by a key kept in `DIR/pki/sa.key`, and
//! verified when they come back as bearer tokens. The API server accepts a token whose
//! audiences include [`ISSUER`] (kube-apiserver's default API audience is its issuer).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use serde_json::{Value, json};

use crate::error::{ApiError, Result};

/// The `iss` of every token, and the audience the API server itself accepts (as in a
/// kubeadm cluster).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A token lives this long unless the request says otherwise (TokenRequest's default).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// The shortest validity a TokenRequest may ask for (kube-apiserver: 10 minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;

/// The longest validity a TokenRequest may ask for (kube-apiserver: 2^32 seconds).
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account's name.
    pub service_account: String,
    /// The service account's uid when the token was issued.
    pub service_account_uid: String,
    /// The pod (name, uid) the token is bound to, if any.
    pub pod: Option<(String, String)>,
    /// The token's id (`jti`).
    pub id: String,
    /// Audiences.
    pub audiences: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub expires: i64,
}

/// Signs and verifies service account tokens.
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ApiError + '_ {
    move |source| ApiError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

fn unpem(text: &str) -> Option<Vec<u8>> {
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    STANDARD.decode(b64).ok()
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl TokenIssuer {
    /// Loads the signing key from `path` (PKCS#8 PEM), creating it (0600) on first start.
    /// Blocking.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        let rng = SystemRandom::new();
        let der = if path.exists() {
            let text = std::fs::read_to_string(path).map_err(io(path))?;
            unpem(&text).ok_or_else(|| {
                ApiError::Internal(format!("{} is not a PEM private key", path.display()))
            })?
        } else {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| ApiError::Internal("generating the token signing key".into()))?;
            crate::pki::write_private(path, &pem(doc.as_ref()))?;
            doc.as_ref().to_vec()
        };
        Self::from_pkcs8(&der)
    }

    /// An issuer signing with this PKCS#8 (P-256) key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| ApiError::Internal(format!("token signing key: {e}")))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]);
        Ok(TokenIssuer { key, rng, kid })
    }

    /// A new random key (tests).
    pub fn generate() -> Result<Self> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| ApiError::Internal("generating the token signing key".into()))?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// A signed token for service account `name` (uid `uid`) in `namespace`, for `audiences`,
    /// valid `seconds` from now, bound to `pod` (name, uid) when given; the token and its expiry
    /// (seconds since the epoch).
    pub fn issue(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        audiences: &[String],
        seconds: i64,
        pod: Option<(&str, &str)>,
    ) -> Result<(String, i64)> {
        let issued = now();
        let expires = issued + seconds;
        let mut k8s = json!({"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}});
        if let Some((pod, pod_uid)) = pod {
            k8s["pod"] = json!({"name": pod, "uid": pod_uid});
        }
        let claims = json!({
            "aud": audiences, "exp": expires, "iat": issued, "nbf": issued, "iss": ISSUER,
            "jti": crate::handler::new_uid(), "kubernetes.io": k8s,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
        });
        let header = json!({"alg": "ES256", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| ApiError::Internal("signing a token".into()))?;
        Ok((
            format!(
                "{signing_input}.{}",
                URL_SAFE_NO_PAD.encode(signature.as_ref())
            ),
            expires,
        ))
    }

    /// The claims of `token` when it is one of ours: signature, issuer, API audience and
    /// validity period all checked. Whether its service account still exists is the caller's
    /// to check.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let mut parts = token.split('.');
        let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let signed = &token[..token.len() - token.rsplit('.').next()?.len() - 1];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(signed.as_bytes(), &signature)
            .ok()?;
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        if claims["iss"] != ISSUER {
            return None;
        }
        let audiences: Vec<String> = match &claims["aud"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => return None,
        };
        if !audiences.iter().any(|a| a == ISSUER) {
            return None;
        }
        let t = now();
        let expires = claims["exp"].as_i64()?;
        if expires <= t || claims["nbf"].as_i64().is_some_and(|nbf| nbf > t + 60) {
            return None;
        }
        let k8s = &claims["kubernetes.io"];
        let text = |p: &str| k8s.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let pod = match (text("/pod/name"), text("/pod/uid")) {
            (Some(n), Some(u)) => Some((n, u)),
            _ => None,
        };
        Some(Claims {
            namespace: text("/namespace")?,
            service_account: text("/serviceaccount/name")?,
            service_account_uid: text("/serviceaccount/uid")?,
            pod,
            id: claims["jti"].as_str().unwrap_or("").to_owned(),
            audiences,
            expires,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_tampered_ones_do_not() {
        let issuer = TokenIssuer::generate().unwrap();
        let api = vec![ISSUER.to_owned()];
        let (token, exp) = issuer
            .issue("ns", "builder", "u-1", &api, 3600, Some(("p", "u-2")))
            .unwrap();
        let claims = issuer.verify(&token).unwrap();
        assert_eq!(
            (
                claims.namespace.as_str(),
                claims.service_account.as_str(),
                claims.service_account_uid.as_str()
            ),
            ("ns", "builder", "u-1")
        );
        assert_eq!(claims.pod, Some(("p".into(), "u-2".into())));
        assert_eq!(claims.expires, exp);

        // Another key, another audience, an edited payload, an expired token: refused.
        let other = TokenIssuer::generate().unwrap();
        assert!(other.verify(&token).is_none());
        let (vault, _) = issuer
            .issue("ns", "builder", "u-1", &["vault".into()], 3600, None)
            .unwrap();
        assert!(issuer.verify(&vault).is_none());
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            r#"{"iss":"https://kubernetes.default.svc.cluster.local","aud":["https://kubernetes.default.svc.cluster.local"],"exp":99999999999,"kubernetes.io":{"namespace":"kube-system","serviceaccount":{"name":"admin","uid":"x"}}}"#,
        );
        parts[1] = &forged;
        assert!(issuer.verify(&parts.join(".")).is_none());
        let (old, _) = issuer.issue("ns", "b", "u", &api, -10, None).unwrap();
        assert!(issuer.verify(&old).is_none());
        assert!(issuer.verify("not.a.jwt").is_none());
    }

    #[test]
    fn the_key_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa.key");
        let first = TokenIssuer::load_or_create(&path).unwrap();
        let (token, _) = first
            .issue("ns", "b", "u", &[ISSUER.to_owned()], 600, None)
            .unwrap();
        let again = TokenIssuer::load_or_create(&path).unwrap();
        assert!(again.verify(&token).is_some());
    }
}
