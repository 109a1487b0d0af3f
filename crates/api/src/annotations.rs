//! Annotation and label names imc reads and writes (DESIGN §3, §4).

/// On an ImageCache: reuse layers held by other caches. On a pod: pick a cache automatically.
pub const IMAGE_CACHE: &str = "k8s.aliyun.com/eci-image-cache";
/// On an ImageCache: alias of [`IMAGE_CACHE`] for layer reuse.
pub const ENABLE_REUSE: &str = "k8s.aliyun.com/imc-enable-reuse";
/// On a pod: alias of [`IMAGE_CACHE`] for automatic selection.
pub const AUTO_IMC: &str = "k8s.aliyun.com/eci-auto-imc";
/// On a pod: use exactly this cache id.
pub const IMAGE_SNAPSHOT_ID: &str = "k8s.aliyun.com/eci-image-snapshot-id";
/// On a pod: alias of [`IMAGE_SNAPSHOT_ID`].
pub const IMC_ID: &str = "k8s.aliyun.com/eci-imc-id";
/// On a pod: only caches holding every image qualify.
pub const PERFECT_MATCH: &str = "k8s.aliyun.com/imc-perfect-match";
/// On a pod: only caches holding at least N of the pod's images exactly qualify.
pub const MATCH_COUNT_REQUEST: &str = "k8s.aliyun.com/imc-match-count-request";
/// Written on a pod by admission: the cache chosen for it.
pub const MATCHED_IMAGE_CACHE: &str = "k8s.aliyun.com/eci-matched-image-cache";
/// On an ImageCache: registries (`host:port,…`) spoken to over plain HTTP.
pub const PLAIN_HTTP_REGISTRY: &str = "k8s.aliyun.com/plain-http-registry";
/// On an ImageCache: registries (`host:port,…`) whose TLS certificate is not verified.
pub const INSECURE_REGISTRY: &str = "k8s.aliyun.com/insecure-registry";
/// On an ImageCache: the platform to take from an index (e.g. `arm64`, `linux/arm64`).
pub const CPU_ARCH: &str = "k8s.aliyun.com/imc-cpu-arch";
/// On an ImageCache: a label selector (`key=value,key!=value,key,!key`) restricting which
/// nodes' `imc snapshotter` prefetch its disk from the cache registry; absent: every node.
pub const PREFETCH_NODE_SELECTOR: &str = "imc.dev/prefetch-node-selector";
/// Label on ImageCaches that imc created itself after a cache miss.
pub const AUTO_CREATED_LABEL: &str = "imc.dev/auto-created";

/// True when an annotation map says `"true"` for any of `keys`.
pub fn is_true(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
    keys: &[&str],
) -> bool {
    annotations.is_some_and(|a| {
        keys.iter()
            .any(|k| a.get(*k).is_some_and(|v| v.eq_ignore_ascii_case("true")))
    })
}

/// Splits a `host:port,host:port` annotation value into its entries.
pub fn host_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}
