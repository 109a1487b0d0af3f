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
