//! Authentication: anonymous first, then whatever the registry's `WWW-Authenticate` challenge
//! asks for: Basic with the host's credentials, or the Bearer token flow (GET the realm with
//! service and scope, Basic credentials or an identity token; tokens cached per host, repository
//! and scope until they expire). Authorization values are marked sensitive and never logged.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::HeaderValue;

use crate::credentials::{Credential, Credentials};
use crate::error::{RegistryAnswer, RegistryError};

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// `Basic realm="..."`.
    Basic,
    /// `Bearer realm="...",service="...",scope="..."`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a challenge header: a scheme then comma-separated `key="value"` pairs (values may hold
/// commas inside quotes, as scopes with several actions do).
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.remove("realm")?,
            service: params.remove("service"),
            scope: params.remove("scope"),
        }),
        _ => None,
    }
}

struct CachedToken {
    value: HeaderValue,
    expires: Instant,
}

/// Authorization state shared by every request of one client.
pub(crate) struct Authenticator {
    credentials: Credentials,
    /// Bearer tokens by (host, scope).
    tokens: Mutex<HashMap<(String, String), CachedToken>>,
    /// Hosts that asked for Basic auth, so later requests send it up front.
    basic_hosts: Mutex<HashSet<String>>,
}

/// Tokens without `expires_in` last 60 s by the spec; refresh a little early.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

impl Authenticator {
    pub fn new(credentials: Credentials) -> Self {
        Authenticator {
            credentials,
            tokens: Mutex::new(HashMap::new()),
            basic_hosts: Mutex::new(HashSet::new()),
        }
    }

    fn credential(&self, host: &str, fallback_host: &str) -> Option<&Credential> {
        self.credentials
            .for_host(host)
            .or_else(|| self.credentials.for_host(fallback_host))
    }

    /// Whether any credential applies to `host` (or the reference's own registry).
    pub fn has_credentials(&self, host: &str, fallback_host: &str) -> bool {
        self.credential(host, fallback_host).is_some()
    }

    /// The Authorization value to send up front, if we already know one.
    pub fn authorization(
        &self,
        host: &str,
        fallback_host: &str,
        scope: &str,
    ) -> Option<HeaderValue> {
        if let Ok(tokens) = self.tokens.lock()
            && let Some(t) = tokens.get(&(host.to_owned(), scope.to_owned()))
            && t.expires > Instant::now()
        {
            return Some(t.value.clone());
        }
        let wants_basic = self.basic_hosts.lock().is_ok_and(|b| b.contains(host));
        if wants_basic
            && let Some(Credential::Basic { username, password }) =
                self.credential(host, fallback_host)
        {
            return Some(basic_value(username, password));
        }
        None
    }

    /// Answers a challenge so the request can be retried. Returns false when there is nothing to
    /// answer with (e.g. Basic asked but no credentials), so the 401 stands.
    #[allow(clippy::too_many_arguments)]
    pub async fn answer(
        &self,
        http: &reqwest::Client,
        image: &str,
        host: &str,
        fallback_host: &str,
        scope: &str,
        challenge: &Challenge,
    ) -> Result<bool, RegistryError> {
        match challenge {
            Challenge::Basic => {
                let has_basic = matches!(
                    self.credential(host, fallback_host),
                    Some(Credential::Basic { .. })
                );
                // The caller answers one challenge per request, so a wrong password comes back
                // to it as a second 401 rather than looping here.
                if has_basic && let Ok(mut b) = self.basic_hosts.lock() {
                    b.insert(host.to_owned());
                    return Ok(true);
                }
                Ok(false)
            }
            Challenge::Bearer {
                realm,
                service,
                scope: asked_scope,
            } => {
                let token_scope = asked_scope.as_deref().unwrap_or(scope);
                let token = self
                    .fetch_token(
                        http,
                        image,
                        host,
                        fallback_host,
                        realm,
                        service.as_deref(),
                        token_scope,
                    )
                    .await?;
                if let Ok(mut tokens) = self.tokens.lock() {
                    tokens.insert((host.to_owned(), scope.to_owned()), token);
                }
                Ok(true)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        image: &str,
        host: &str,
        fallback_host: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<CachedToken, RegistryError> {
        let token_err = |reason: String| RegistryError::Token {
            image: image.to_owned(),
            realm: realm.to_owned(),
            reason,
        };
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| token_err(format!("realm is not a URL: {e}")))?;
        let credential = self.credential(host, fallback_host);
        let request = match credential {
            Some(Credential::IdentityToken(refresh)) => {
                // OAuth2 refresh-token grant, as Docker does with an identity token.
                let mut form = reqwest::Url::parse("http://form.invalid/")
                    .map_err(|e| token_err(e.to_string()))?;
                {
                    let mut q = form.query_pairs_mut();
                    q.append_pair("grant_type", "refresh_token");
                    q.append_pair("refresh_token", refresh);
                    q.append_pair("client_id", "imc");
                    q.append_pair("scope", scope);
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                }
                http.post(url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(form.query().unwrap_or("").to_owned())
            }
            _ => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", scope);
                }
                let rb = http.get(url);
                match credential {
                    Some(Credential::Basic { username, password }) => rb.header(
                        reqwest::header::AUTHORIZATION,
                        basic_value(username, password),
                    ),
                    _ => rb,
                }
            }
        };
        let realm_host = reqwest::Url::parse(realm)
            .ok()
            .and_then(|u| {
                u.host_str().map(|h| match u.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h.to_owned(),
                })
            })
            .unwrap_or_else(|| realm.to_owned());
        let resp = request
            .send()
            .await
            .map_err(|e| RegistryError::Connection {
                image: image.to_owned(),
                what: "an auth token".to_owned(),
                host: realm_host.clone(),
                reason: crate::client::describe_reqwest(&e),
            })?;
        let status = resp.status().as_u16();
        let retry_after = crate::client::retry_after(resp.headers());
        let body = resp.bytes().await.map_err(|e| RegistryError::Connection {
            image: image.to_owned(),
            what: "an auth token".to_owned(),
            host: realm_host.clone(),
            reason: crate::client::describe_reqwest(&e),
        })?;
        if status == 401 || status == 403 {
            let hint = if credential.is_some() {
                format!("; check the credentials configured for {host}")
            } else {
                format!("; no credentials are configured for {host}")
            };
            return Err(RegistryError::AccessDenied {
                image: image.to_owned(),
                host: realm_host,
                answer: Box::new(RegistryAnswer::from_body(status, &body)),
                hint,
            });
        }
        if !(200..300).contains(&status) {
            let mut answer = RegistryAnswer::from_body(status, &body);
            answer.retry_after = retry_after;
            return Err(RegistryError::Status {
                image: image.to_owned(),
                what: "an auth token".to_owned(),
                host: realm_host,
                answer: Box::new(answer),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| token_err(format!("not a token JSON document: {e}")))?;
        let token = parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token)
            .ok_or_else(|| token_err("no token in the answer".to_owned()))?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| token_err("token is not a valid header value".to_owned()))?;
        value.set_sensitive(true);
        let lifetime = parsed
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
            .saturating_sub(EXPIRY_MARGIN)
            .max(Duration::from_secs(1));
        Ok(CachedToken {
            value,
            expires: Instant::now() + lifetime,
        })
    }
}

fn basic_value(username: &str, password: &str) -> HeaderValue {
    let encoded = STANDARD.encode(format!("{username}:{password}"));
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Bearer realm="http://127.0.0.1:1/token""#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: None,
                scope: None
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }
}
