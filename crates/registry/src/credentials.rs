//! Registry credentials from Docker config files and `kubernetes.io/dockerconfigjson` secrets,
//! looked up by registry host (with Docker Hub's many aliases folded into one).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::error::RegistryError;

/// One registry's secret. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// Username and password (or a personal access token as password).
    Basic {
        /// The user name sent with Basic auth or to the token server.
        username: String,
        /// The password or access token that goes with it.
        password: String,
    },
    /// An OAuth2 refresh token (Docker's `identitytoken`), exchanged at the token server.
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username:?}, <redacted>)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// Registry credentials by host; Debug never prints secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    by_host: BTreeMap<String, Credential>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.by_host.iter()).finish()
    }
}

/// The host Docker Hub credentials are filed under, whatever alias a config uses.
const DOCKER_HUB_KEY: &str = "docker.io";

/// Reduces a config key (`https://index.docker.io/v1/`, `http://h:5000`, `h:5000/v2/`) to the
/// host it stands for, folding Docker Hub's aliases into `docker.io`.
pub(crate) fn host_key(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB_KEY.to_owned()
        }
        _ => host,
    }
}

impl Credentials {
    /// No credentials: every registry is contacted anonymously.
    pub fn none() -> Self {
        Self::default()
    }

    /// Credentials for one host.
    pub fn basic(host: &str, username: &str, password: &str) -> Self {
        let mut c = Self::none();
        c.insert(
            host,
            Credential::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            },
        );
        c
    }

    /// Adds (or replaces) the credential for `host` (any alias form).
    pub fn insert(&mut self, host: &str, credential: Credential) {
        self.by_host.insert(host_key(host), credential);
    }

    /// Reads a Docker config file (`~/.docker/config.json`): its `auths` map, each entry holding
    /// `auth` (base64 user:password), `username`+`password`, or `identitytoken`.
    pub fn from_docker_config_file(path: &Path) -> Result<Self, RegistryError> {
        let bytes = std::fs::read(path).map_err(|e| RegistryError::Credentials {
            source_name: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&bytes, &path.display().to_string())
    }

    /// Reads the `.dockerconfigjson` of a `kubernetes.io/dockerconfigjson` Secret (same format).
    pub fn from_dockerconfigjson(bytes: &[u8]) -> Result<Self, RegistryError> {
        Self::parse(bytes, "dockerconfigjson secret")
    }

    fn parse(bytes: &[u8], source_name: &str) -> Result<Self, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Config {
            #[serde(default)]
            auths: BTreeMap<String, Entry>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            auth: Option<String>,
            username: Option<String>,
            password: Option<String>,
            identitytoken: Option<String>,
        }
        let fail = |reason: String| RegistryError::Credentials {
            source_name: source_name.to_owned(),
            reason,
        };
        // serde's message may quote input; report only the position so no secret leaks.
        let config: Config = serde_json::from_slice(bytes).map_err(|e| {
            fail(format!(
                "not a Docker config JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let mut out = Credentials::none();
        for (key, entry) in config.auths {
            let credential = if let Some(token) = entry.identitytoken.filter(|t| !t.is_empty()) {
                Credential::IdentityToken(token)
            } else if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded = STANDARD
                    .decode(auth.trim())
                    .map_err(|_| fail(format!("the \"auth\" of {key:?} is not base64")))?;
                let decoded = String::from_utf8(decoded)
                    .map_err(|_| fail(format!("the \"auth\" of {key:?} is not UTF-8")))?;
                let Some((username, password)) = decoded.split_once(':') else {
                    return Err(fail(format!(
                        "the \"auth\" of {key:?} is not user:password"
                    )));
                };
                Credential::Basic {
                    username: username.to_owned(),
                    password: password.to_owned(),
                }
            } else if let (Some(username), Some(password)) = (entry.username, entry.password) {
                Credential::Basic { username, password }
            } else {
                // Entries with only an email or a credsStore hint carry nothing usable.
                continue;
            };
            out.insert(&key, credential);
        }
        Ok(out)
    }

    /// Adds `other`'s credentials; for a host both have, `other` wins.
    pub fn merge(&mut self, other: Credentials) {
        self.by_host.extend(other.by_host);
    }

    /// The credential for `host` (`docker.io`, `registry-1.docker.io`, `h:5000`, ...).
    pub fn for_host(&self, host: &str) -> Option<&Credential> {
        self.by_host.get(&host_key(host))
    }

    /// Whether no host has credentials.
    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_entry_form_and_folds_docker_hub_aliases() {
        let json = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "registry.example.com:5000": {{"username": "u2", "password": "p2"}},
                "http://other.example": {{"identitytoken": "tok"}},
                "empty.example": {{"email": "x@y"}}
            }}}}"#,
            STANDARD.encode("hubuser:hub:pass")
        );
        let c = Credentials::from_dockerconfigjson(json.as_bytes()).expect("parse");
        for alias in ["docker.io", "registry-1.docker.io", "index.docker.io"] {
            assert_eq!(
                c.for_host(alias),
                Some(&Credential::Basic {
                    username: "hubuser".into(),
                    password: "hub:pass".into()
                }),
                "{alias}"
            );
        }
        assert_eq!(
            c.for_host("registry.example.com:5000"),
            Some(&Credential::Basic {
                username: "u2".into(),
                password: "p2".into()
            })
        );
        assert_eq!(
            c.for_host("other.example"),
            Some(&Credential::IdentityToken("tok".into()))
        );
        assert_eq!(c.for_host("empty.example"), None);
        assert_eq!(c.for_host("registry.example.com"), None);
    }

    #[test]
    fn merge_prefers_the_newer() {
        let mut a = Credentials::basic("h:1", "a", "pa");
        a.merge(Credentials::basic("h:1", "b", "pb"));
        assert_eq!(
            a.for_host("h:1"),
            Some(&Credential::Basic {
                username: "b".into(),
                password: "pb".into()
            })
        );
    }

    #[test]
    fn bad_input_is_reported_without_secrets() {
        let err = Credentials::from_dockerconfigjson(
            br#"{"auths": {"h": {"auth": "not base64 hunter2!"}}}"#,
        )
        .expect_err("bad base64");
        let text = err.to_string();
        assert!(text.contains("not base64"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let err =
            Credentials::from_dockerconfigjson(b"{ \"auths\": hunter2 ").expect_err("bad json");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_hides_passwords() {
        let mut c = Credentials::basic("h:1", "alice", "hunter2");
        c.insert("h:2", Credential::IdentityToken("refresh-secret".into()));
        let shown = format!("{c:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("refresh-secret"),
            "{shown}"
        );
    }

    #[test]
    fn config_file_missing_names_the_path() {
        let err = Credentials::from_docker_config_file(Path::new("/nonexistent/config.json"))
            .expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/config.json"),
            "{err}"
        );
    }
}
