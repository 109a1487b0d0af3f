//! Registry flags shared by every command that may pull (`image pull`, `cache build`, `run`,
//! `server`).

use std::path::PathBuf;

/// How to reach registries.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// Speak plain HTTP (no TLS) to this registry. Repeatable.
    #[arg(long = "plain-http", value_name = "HOST:PORT")]
    pub plain_http: Vec<String>,
    /// Accept this registry's TLS certificate without verifying it (self-signed). Repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registry: Vec<String>,
    /// Fetch HOST/... references from URL (http or https), keeping the original reference as
    /// the image's name. Repeatable.
    #[arg(long = "registry-mirror", value_name = "HOST=URL")]
    pub registry_mirror: Vec<String>,
    /// Platform to take from a multi-platform index [default: the host's, e.g. linux/amd64].
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// Docker config file with registry credentials [default: ~/.docker/config.json when present].
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
    /// Parallel layer downloads.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub jobs: usize,
}

impl RegistryArgs {
    /// The registry client options these flags describe. Credentials come from `--docker-config`,
    /// else `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` when present.
    pub fn options(&self) -> anyhow::Result<imc_registry::RegistryOptions> {
        let mut mirrors = Vec::with_capacity(self.registry_mirror.len());
        for m in &self.registry_mirror {
            let Some((host, url)) = m.split_once('=') else {
                anyhow::bail!(
                    "--registry-mirror {m:?}: expected HOST=URL, e.g. docker.io=http://127.0.0.1:5000"
                );
            };
            if host.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!(
                    "--registry-mirror {m:?}: expected HOST=URL with an http:// or https:// URL"
                );
            }
            mirrors.push((host.to_owned(), url.to_owned()));
        }
        let credentials = match self.docker_config_path() {
            Some(path) => {
                imc_registry::Credentials::from_docker_config_file(&path).map_err(|e| {
                    anyhow::anyhow!("reading registry credentials from {}: {e}", path.display())
                })?
            }
            None => imc_registry::Credentials::none(),
        };
        Ok(imc_registry::RegistryOptions {
            plain_http: self.plain_http.clone(),
            insecure: self.insecure_registry.clone(),
            mirrors,
            credentials,
            retry: imc_registry::RetryPolicy::default(),
        })
    }

    /// `--platform`, or the host's.
    pub fn platform(&self) -> anyhow::Result<imc_registry::Platform> {
        match &self.platform {
            Some(p) => p
                .parse()
                .map_err(|e| anyhow::anyhow!("--platform {p:?}: {e}")),
            None => Ok(imc_registry::Platform::host()),
        }
    }

    fn docker_config_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.docker_config {
            return Some(p.clone());
        }
        let default = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => PathBuf::from(dir).join("config.json"),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".docker/config.json"),
        };
        default.is_file().then_some(default)
    }
}

/// Parses `--cache-registry REF`: a repository (`host[:port]/path`) Ready caches' disks are
/// pushed to and fetched from as OCI artifacts; a tag or digest is refused (the cache id is the
/// tag, the artifact digest pins a fetch).
pub fn parse_cache_registry(value: &str) -> Result<imc_api::Reference, String> {
    let reference: imc_api::Reference = value.parse().map_err(|e| format!("{e}"))?;
    let tagged = value
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'));
    if tagged || value.contains('@') {
        return Err(format!(
            "{value:?} names a tag or digest; give the repository only, e.g. registry.example:5000/imc-caches"
        ));
    }
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_registry_is_a_repository() {
        for (value, ok) in [
            ("127.0.0.1:5000/imc-caches", true),
            ("registry.example/team/caches", true),
            ("127.0.0.1:5000/imc-caches:v1", false),
            (
                "127.0.0.1:5000/imc-caches@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                false,
            ),
            ("Not A Ref", false),
        ] {
            assert_eq!(parse_cache_registry(value).is_ok(), ok, "{value}");
        }
    }
}
