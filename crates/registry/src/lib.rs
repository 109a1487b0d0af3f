//! imc-registry: a client for OCI distribution registries (Docker Hub, docker-registry, Harbor,
//! ...), covering what pulling images needs: manifests and indexes resolved to a platform, the
//! image config, and layer blobs streamed to disk with verification, retry and resume.
//!
//! Built directly on reqwest rather than on `oci-client`, because imc needs things that crate
//! does not expose: resuming an interrupted blob with HTTP `Range`, errors that carry exactly what
//! the registry answered (status, error code and message), per-host mirror mapping that keeps the
//! image's original name, and control over which hosts skip TLS verification.
//!
//! Secrets (passwords, tokens, Authorization headers) never appear in Debug output, logs or
//! errors: credentials have a redacting Debug, Authorization header values are marked sensitive,
//! and no error variant carries a credential.

#![warn(missing_docs)]

mod artifact;
mod auth;
mod blob;
mod client;
mod credentials;
mod error;
mod layer;
mod manifest;
mod mirror;
mod options;
mod platform;
mod push;

pub use artifact::{
    ANNOTATION_CACHE_ID, ANNOTATION_GENERATION, ANNOTATION_IMAGES, ANNOTATION_NAME,
    ANNOTATION_TITLE, ArtifactImage, CACHE_ARTIFACT_TYPE, CACHE_DISK_MEDIA_TYPE, CacheArtifact,
    CacheArtifactSpec, DiskFetcher, OCI_EMPTY_MEDIA_TYPE, PushedArtifact, hash_file,
    parse_artifact,
};
pub use blob::BlobDescriptor;
pub use client::{Client, ResolvedImage};
pub use credentials::{Credential, Credentials};
pub use error::{RegistryAnswer, RegistryError};
pub use layer::{Compression, LayerDescriptor};
pub use manifest::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED, OCI_INDEX,
    OCI_MANIFEST,
};
pub use options::{RegistryOptions, RetryPolicy};
pub use platform::{Platform, PlatformError};
pub use push::BlobPush;
