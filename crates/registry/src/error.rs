//! Why fetching an image failed, in the user's terms: every variant names the image, and those
//! caused by the registry say what it answered. No variant ever carries a credential.

use imc_api::Digest;

/// What the registry answered to a failed request: the HTTP status and, when the body was a
/// distribution-spec error document, its first error code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryAnswer {
    /// HTTP status code.
    pub status: u16,
    /// The `errors[0].code` of the body (e.g. `MANIFEST_UNKNOWN`), when present.
    pub code: Option<String>,
    /// The `errors[0].message` of the body, or the start of a non-JSON body.
    pub message: String,
    /// The Retry-After the registry asked for (429/503), if any.
    pub retry_after: Option<std::time::Duration>,
}

impl std::fmt::Display for RegistryAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl RegistryAnswer {
    /// Builds the answer from a status and a response body (at most the first 64 KiB are read).
    pub fn from_body(status: u16, body: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct Errors {
            errors: Vec<ErrorItem>,
        }
        #[derive(serde::Deserialize)]
        struct ErrorItem {
            code: Option<String>,
            message: Option<String>,
        }
        // Token servers answer {"details": "..."} instead of the distribution error document.
        #[derive(serde::Deserialize)]
        struct Details {
            details: String,
        }
        if let Ok(e) = serde_json::from_slice::<Errors>(body)
            && let Some(first) = e.errors.into_iter().next()
        {
            return RegistryAnswer {
                status,
                code: first.code,
                message: first.message.unwrap_or_default(),
                retry_after: None,
            };
        }
        if let Ok(d) = serde_json::from_slice::<Details>(body) {
            return RegistryAnswer {
                status,
                code: None,
                message: d.details,
                retry_after: None,
            };
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
        RegistryAnswer {
            status,
            code: None,
            message: text.trim().to_owned(),
            retry_after: None,
        }
    }
}

/// Errors of imc-registry. Every variant names the image it concerns.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry (or token server) refused our credentials or has none for us: 401/403.
    #[error("pulling {image}: access denied by {host} ({answer}){hint}")]
    AccessDenied {
        /// The image being pulled, as its reference reads.
        image: String,
        /// The registry or token server host that refused access.
        host: String,
        /// What that host answered.
        answer: Box<RegistryAnswer>,
        /// Advice such as "no credentials configured for this registry".
        hint: String,
    },
    /// The manifest or blob does not exist: 404.
    #[error("pulling {image}: {what} not found on {host} ({answer})")]
    NotFound {
        /// The image being pulled, as its reference reads.
        image: String,
        /// What was asked for and is missing, e.g. `manifest latest` or `blob sha256:...`.
        what: String,
        /// The registry host that answered 404.
        host: String,
        /// What the registry answered.
        answer: Box<RegistryAnswer>,
    },
    /// Any other unsuccessful HTTP answer (429 and 5xx are transient).
    #[error("pulling {image}: {host} answered {answer} for {what}")]
    Status {
        /// The image being pulled, as its reference reads.
        image: String,
        /// What was being fetched when the registry answered.
        what: String,
        /// The registry host that answered.
        host: String,
        /// What the registry answered.
        answer: Box<RegistryAnswer>,
    },
    /// The connection failed, was reset or timed out.
    #[error("pulling {image}: connection to {host} failed while fetching {what}: {reason}")]
    Connection {
        /// The image being pulled, as its reference reads.
        image: String,
        /// What was being fetched when the connection failed.
        what: String,
        /// The host the connection was to.
        host: String,
        /// The HTTP client's description of the failure.
        reason: String,
    },
    /// The TLS handshake failed, e.g. the certificate is not trusted.
    #[error(
        "pulling {image}: TLS connection to {host} failed: {reason} (if this registry is trusted anyway, list {host} as an insecure registry)"
    )]
    Tls {
        /// The image being pulled, as its reference reads.
        image: String,
        /// The host whose TLS handshake failed.
        host: String,
        /// The HTTP client's description of the handshake failure.
        reason: String,
    },
    /// The body ended before the announced size.
    #[error("pulling {image}: blob {digest} was cut short at {received} of {expected} bytes")]
    Truncated {
        /// The image being pulled, as its reference reads.
        image: String,
        /// The digest of the blob that was cut short.
        digest: Digest,
        /// How many bytes of the blob arrived.
        received: u64,
        /// How many bytes the blob's descriptor announced.
        expected: u64,
    },
    /// The content does not hash to the digest that names it, even after retries.
    #[error(
        "pulling {image}: {what} failed verification: expected digest {expected}, got {actual}"
    )]
    DigestMismatch {
        /// The image being pulled, as its reference reads.
        image: String,
        /// The manifest, config or blob that failed verification.
        what: String,
        /// The digest that names the content.
        expected: Digest,
        /// The digest the received content hashes to.
        actual: Digest,
    },
    /// The content is longer or shorter than its descriptor says.
    #[error("pulling {image}: {what} has {actual} bytes but its descriptor says {expected}")]
    SizeMismatch {
        /// The image being pulled, as its reference reads.
        image: String,
        /// The manifest, config or blob whose size is wrong.
        what: String,
        /// The size in bytes its descriptor gives.
        expected: u64,
        /// The size in bytes actually received.
        actual: u64,
    },
    /// Docker image manifest schema 1 is obsolete and not supported.
    #[error(
        "pulling {image}: the registry serves a Docker schema1 manifest ({media_type}); schema1 is not supported, push the image again with a current client (OCI or Docker schema2)"
    )]
    Schema1 {
        /// The image being pulled, as its reference reads.
        image: String,
        /// The schema1 media type the registry served.
        media_type: String,
    },
    /// A manifest media type imc does not know.
    #[error("pulling {image}: unsupported manifest media type {media_type:?}")]
    UnsupportedManifest {
        /// The image being pulled, as its reference reads.
        image: String,
        /// The manifest media type the registry served.
        media_type: String,
    },
    /// A foreign or non-distributable layer (e.g. Windows base layers), which must come from
    /// somewhere other than the registry.
    #[error(
        "pulling {image}: layer {digest} is a foreign (non-distributable) layer ({media_type}); foreign layers are not supported"
    )]
    ForeignLayer {
        /// The image being pulled, as its reference reads.
        image: String,
        /// The digest of the foreign layer.
        digest: Digest,
        /// The foreign layer's media type.
        media_type: String,
    },
    /// A layer media type imc cannot unpack.
    #[error("pulling {image}: layer {digest} has unsupported media type {media_type:?}")]
    UnsupportedLayer {
        /// The image being pulled, as its reference reads.
        image: String,
        /// The digest of the layer imc cannot unpack.
        digest: Digest,
        /// The layer's media type.
        media_type: String,
    },
    /// No manifest in the index is for the wanted platform.
    #[error("pulling {image}: no manifest for platform {wanted}; the image is available for: {}", available.join(", "))]
    NoMatchingPlatform {
        /// The image being pulled, as its reference reads.
        image: String,
        /// The platform asked for, as `os/architecture[/variant]`.
        wanted: String,
        /// The platforms the image's index does list.
        available: Vec<String>,
    },
    /// The manifest is not valid JSON or misses required fields.
    #[error("pulling {image}: invalid manifest: {reason}")]
    InvalidManifest {
        /// The image being pulled, as its reference reads.
        image: String,
        /// What is wrong with the manifest.
        reason: String,
    },
    /// The image config is not valid or does not match the manifest.
    #[error("pulling {image}: invalid image config: {reason}")]
    InvalidConfig {
        /// The image being pulled, as its reference reads.
        image: String,
        /// What is wrong with the config or how it disagrees with the manifest.
        reason: String,
    },
    /// The token server's answer could not be used.
    #[error("pulling {image}: token server {realm} gave an unusable answer: {reason}")]
    Token {
        /// The image being pulled, as its reference reads.
        image: String,
        /// The token server's URL, from the registry's `WWW-Authenticate` challenge.
        realm: String,
        /// Why its answer could not be used.
        reason: String,
    },
    /// Writing the blob to the local file failed.
    #[error("pulling {image}: writing blob {digest} to disk failed: {source}")]
    Write {
        /// The image being pulled, as its reference reads.
        image: String,
        /// The digest of the blob being written.
        digest: Digest,
        /// The I/O error of the write.
        #[source]
        source: std::io::Error,
    },
    /// A Docker config / dockerconfigjson could not be read or parsed.
    #[error("reading registry credentials from {source_name}: {reason}")]
    Credentials {
        /// Where the credentials came from: the Docker config file's path, or
        /// `dockerconfigjson secret`.
        source_name: String,
        /// Why they could not be read or parsed.
        reason: String,
    },
    /// The client could not be built from its options.
    #[error("invalid registry options: {reason}")]
    Options {
        /// Which option is invalid and why.
        reason: String,
    },
    /// Pushing to a registry failed (the source says how: what the registry answered, a
    /// connection fault, a digest the registry computed differently).
    #[error("pushing {target}: {step} failed: {source}")]
    Push {
        /// Where the push went, e.g. `registry.example/imc-caches:imc-abc…`.
        target: String,
        /// Which step failed, e.g. `uploading blob sha256:…` or `putting the manifest`.
        step: String,
        /// Why it failed.
        #[source]
        source: Box<RegistryError>,
    },
    /// A registry answered something that is not an imc cache artifact where one was expected.
    #[error("{reference} is not a usable imc cache artifact: {reason}")]
    InvalidArtifact {
        /// The artifact's reference.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading a local file to push it failed.
    #[error("reading {path} to push it: {source}")]
    Read {
        /// The file being read.
        path: std::path::PathBuf,
        /// The I/O error of the read.
        #[source]
        source: std::io::Error,
    },
}

impl RegistryError {
    /// Whether trying again later may succeed: 429, 5xx, resets, timeouts and short bodies are
    /// transient; refusals, missing content, verification failures and unsupported formats are not.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Status { answer, .. } => {
                answer.status == 429 || answer.status == 408 || answer.status >= 500
            }
            RegistryError::Connection { .. } | RegistryError::Truncated { .. } => true,
            RegistryError::Push { source, .. } => source.is_transient(),
            _ => false,
        }
    }

    /// The HTTP status the registry answered, for variants that carry one.
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::AccessDenied { answer, .. }
            | RegistryError::NotFound { answer, .. }
            | RegistryError::Status { answer, .. } => Some(answer.status),
            _ => None,
        }
    }

    /// The Retry-After the registry asked for, if this is a 429/503 that carried one.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            RegistryError::Status { answer, .. } => answer.retry_after,
            _ => None,
        }
    }
}
