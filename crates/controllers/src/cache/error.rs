//! Why a cache could not be reconciled or built, in the user's terms. The text of a build error
//! becomes `status.message`, so each variant names the cache, image, secret or path concerned.

use std::path::PathBuf;

/// Errors of the cache controller.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A call to the Kubernetes API failed.
    #[error("ImageCache {cache}: {action}: {source}")]
    Kube {
        /// The ImageCache's name.
        cache: String,
        /// What the controller was doing, e.g. "reading a pull secret".
        action: &'static str,
        /// The error of the API call.
        source: kube::Error,
    },
    /// A pull secret named in `imagePullSecrets` does not exist.
    #[error("pull secret {secret} (namespace:name) of ImageCache {cache} not found")]
    MissingSecret {
        /// The ImageCache's name.
        cache: String,
        /// The secret, as `namespace:name`.
        secret: String,
    },
    /// A pull secret exists but is not a usable `kubernetes.io/dockerconfigjson` Secret.
    #[error("pull secret {secret} of ImageCache {cache}: {reason}")]
    BadSecret {
        /// The ImageCache's name.
        cache: String,
        /// The secret, as `namespace:name`.
        secret: String,
        /// What is wrong with the secret.
        reason: String,
    },
    /// An image of the spec is not a valid reference.
    #[error("image {image:?} of ImageCache {cache}: {reason}")]
    BadImage {
        /// The ImageCache's name.
        cache: String,
        /// The image as the spec gives it.
        image: String,
        /// Why the reference does not parse.
        reason: String,
    },
    /// The `imc-cpu-arch` annotation is not a platform.
    #[error("annotation k8s.aliyun.com/imc-cpu-arch={value:?} of ImageCache {cache}: {reason}")]
    BadPlatform {
        /// The ImageCache's name.
        cache: String,
        /// The annotation's value.
        value: String,
        /// Why the value is not a platform.
        reason: String,
    },
    /// The registry client could not be set up, or the registry refused or failed.
    #[error(transparent)]
    Registry(Box<imc_registry::RegistryError>),
    /// Pulling an image into the layer store failed.
    #[error("pulling {image}: {source}")]
    Pull {
        /// The image reference.
        image: String,
        /// Why the layer store could not pull it.
        source: Box<imc_layers::LayerError>,
    },
    /// The layer store could not be read.
    #[error(transparent)]
    Layers(Box<imc_layers::LayerError>),
    /// Writing the cache disk failed (this includes a cache larger than `imageCacheSize`).
    #[error(transparent)]
    Snapshot(#[from] imc_snapshot::SnapshotError),
    /// A file of the data directory could not be handled.
    #[error("{action} {}: {cause}", path.display())]
    Io {
        /// What the controller was doing, e.g. "creating" or "removing cache disk".
        action: &'static str,
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The error the operating system returned.
        cause: std::io::Error,
    },
    /// The cache is being deleted but pods still use its disk; deletion waits for them.
    #[error("ImageCache {cache}: disk {} is still used by {users} pod(s)", disk.display())]
    DiskInUse {
        /// The ImageCache's name.
        cache: String,
        /// The path of the cache's disk.
        disk: PathBuf,
        /// How many pods still use the disk.
        users: usize,
    },
    /// A blocking task of the build died.
    #[error("ImageCache {cache}: build task failed: {reason}")]
    Task {
        /// The ImageCache's name.
        cache: String,
        /// Why the task failed: its panic or cancellation, or what it found missing.
        reason: String,
    },
    /// The finalizer helper failed (adding or removing the finalizer, or apply/cleanup).
    #[error(transparent)]
    Finalizer(#[from] Box<kube::runtime::finalizer::Error<CacheError>>),
}

impl From<imc_registry::RegistryError> for CacheError {
    fn from(e: imc_registry::RegistryError) -> Self {
        CacheError::Registry(Box::new(e))
    }
}

impl From<imc_layers::LayerError> for CacheError {
    fn from(e: imc_layers::LayerError) -> Self {
        CacheError::Layers(Box::new(e))
    }
}

impl CacheError {
    /// Whether trying the build again later may succeed: registry answers that
    /// `RegistryError::is_transient` calls transient (429, 5xx, resets, timeouts), and API
    /// calls that failed on the way.
    pub fn is_transient(&self) -> bool {
        match self {
            CacheError::Registry(e) => e.is_transient(),
            CacheError::Pull { source, .. } | CacheError::Layers(source) => match source.as_ref() {
                imc_layers::LayerError::Registry(e) => e.is_transient(),
                _ => false,
            },
            CacheError::Kube { .. } | CacheError::Task { .. } => true,
            _ => false,
        }
    }

    /// A short CamelCase reason for `status.reason` and events.
    pub fn reason(&self) -> &'static str {
        match self {
            CacheError::MissingSecret { .. } | CacheError::BadSecret { .. } => "PullSecretInvalid",
            CacheError::BadImage { .. } | CacheError::BadPlatform { .. } => "InvalidSpec",
            CacheError::Registry(_) | CacheError::Pull { .. } => "PullFailed",
            CacheError::Snapshot(imc_snapshot::SnapshotError::TooLarge { .. }) => {
                "CacheSizeExceeded"
            }
            CacheError::Snapshot(_) => "DiskBuildFailed",
            _ => "BuildFailed",
        }
    }

    pub(crate) fn kube(cache: &str, action: &'static str) -> impl FnOnce(kube::Error) -> Self {
        let cache = cache.to_owned();
        move |source| CacheError::Kube {
            cache,
            action,
            source,
        }
    }
}
