//! Where a reference's registry is actually reached: its own host over HTTPS (or HTTP when listed
//! in `plain_http`), or a mirror's base URL. The reference keeps its name either way; only the
//! endpoint changes.

use imc_api::Reference;

use crate::credentials::host_key;
use crate::error::RegistryError;
use crate::options::RegistryOptions;

/// One place to send a reference's registry API requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `scheme://host[:port][/path]`, without a trailing slash; `/v2/...` is appended.
    pub base: String,
    /// `host[:port]` of `base`: the key for credentials, the insecure list and messages.
    pub host: String,
    /// Whether `base` is a mirror rather than the reference's own registry.
    pub mirrored: bool,
}

/// Mirror table parsed once from the options.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mirrors {
    /// (folded registry host, endpoint)
    entries: Vec<(String, Endpoint)>,
}

impl Mirrors {
    /// Checks and parses `(registry host, base URL)` pairs.
    pub fn new(mirrors: &[(String, String)]) -> Result<Self, RegistryError> {
        let mut entries = Vec::new();
        for (registry, url) in mirrors {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .ok_or_else(|| RegistryError::Options {
                    reason: format!(
                        "mirror URL {url:?} for {registry} must start with http:// or https://"
                    ),
                })?;
            let host = rest.split('/').next().unwrap_or("").to_owned();
            if host.is_empty() {
                return Err(RegistryError::Options {
                    reason: format!("mirror URL {url:?} for {registry} has no host"),
                });
            }
            entries.push((
                host_key(registry),
                Endpoint {
                    base: url.trim_end_matches('/').to_owned(),
                    host,
                    mirrored: true,
                },
            ));
        }
        Ok(Mirrors { entries })
    }

    /// The endpoint for `reference`: its mirror when one is configured, else the registry itself.
    pub fn endpoint(&self, reference: &Reference, options: &RegistryOptions) -> Endpoint {
        let key = host_key(reference.registry());
        if let Some((_, ep)) = self.entries.iter().find(|(k, _)| *k == key) {
            return ep.clone();
        }
        Self::direct(reference, options)
    }

    /// The reference's own registry, never a mirror (pushes go there: a mirror only serves).
    pub fn direct(reference: &Reference, options: &RegistryOptions) -> Endpoint {
        let host = reference.api_host().to_owned();
        let plain = options
            .plain_http
            .iter()
            .any(|h| h == &host || h == reference.registry());
        let scheme = if plain { "http" } else { "https" };
        Endpoint {
            base: format!("{scheme}://{host}"),
            host,
            mirrored: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> RegistryOptions {
        RegistryOptions {
            plain_http: vec!["127.0.0.1:5000".into()],
            ..Default::default()
        }
    }

    #[test]
    fn endpoints() {
        let m = Mirrors::new(&[
            ("example.invalid".into(), "http://127.0.0.1:9000/".into()),
            (
                "index.docker.io".into(),
                "https://mirror.example/cache".into(),
            ),
        ])
        .expect("mirrors");
        let ep = |r: &str| m.endpoint(&r.parse().expect("reference"), &opts());
        assert_eq!(ep("example.invalid/app:1").base, "http://127.0.0.1:9000");
        assert!(ep("example.invalid/app:1").mirrored);
        assert_eq!(ep("busybox").base, "https://mirror.example/cache");
        assert_eq!(ep("busybox").host, "mirror.example");
        assert_eq!(ep("127.0.0.1:5000/a").base, "http://127.0.0.1:5000");
        assert_eq!(ep("quay.io/a/b").base, "https://quay.io");
        assert!(!ep("quay.io/a/b").mirrored);
    }

    #[test]
    fn mirror_url_must_be_http_or_https() {
        let err = Mirrors::new(&[("docker.io".into(), "ftp://x".into())]).expect_err("bad scheme");
        assert!(err.to_string().contains("ftp://x"), "{err}");
    }
}
