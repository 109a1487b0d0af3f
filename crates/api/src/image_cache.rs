//! The `ImageCache` resource (`eci.alibabacloud.com/v1`, cluster-scoped), DESIGN §3.
//!
//! The same Rust type generates the CRD for clusters and the schema `imc server` serves, so the
//! two modes cannot drift apart.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default `imageCacheSize` in GiB.
pub const DEFAULT_CACHE_SIZE_GIB: i32 = 20;
/// Smallest accepted `imageCacheSize` in GiB.
pub const MIN_CACHE_SIZE_GIB: i32 = 20;
/// Largest accepted `imageCacheSize` in GiB.
pub const MAX_CACHE_SIZE_GIB: i32 = 32768;
/// Most images one cache may hold.
pub const MAX_IMAGES: usize = 20;
/// Longest accepted `retentionDays`.
pub const MAX_RETENTION_DAYS: i32 = 65536;

/// What a cache should hold. Images stay strings here so that a malformed one is reported by
/// validation with its field path instead of failing deserialisation as a whole.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "eci.alibabacloud.com",
    version = "v1",
    kind = "ImageCache",
    plural = "imagecaches",
    singular = "imagecache",
    shortname = "imc",
    status = "ImageCacheStatus",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"CacheId","type":"string","jsonPath":".status.imageCacheId"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ImageCacheSpec {
    /// Image references to cache (1 to 20), each with a tag or a digest.
    pub images: Vec<String>,
    /// Size of the cache disk in GiB (20 to 32768, default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_cache_size: Option<i32>,
    /// Days to keep the cache (1 to 65536); absent means it never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<i32>,
    /// Pull secrets as `namespace:name`, each a `kubernetes.io/dockerconfigjson` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<String>>,
}

impl ImageCacheSpec {
    /// The disk size in GiB after defaulting.
    pub fn size_gib(&self) -> i32 {
        self.image_cache_size.unwrap_or(DEFAULT_CACHE_SIZE_GIB)
    }
}

/// Lifecycle phase of a cache.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Creating,
    Ready,
    Failed,
    Updating,
    UpdateFailed,
}

impl Phase {
    /// The phase name as printed by kubectl.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Creating => "Creating",
            Phase::Ready => "Ready",
            Phase::Failed => "Failed",
            Phase::Updating => "Updating",
            Phase::UpdateFailed => "UpdateFailed",
        }
    }
}

/// One image of a cache, as resolved when the cache was built.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CachedImage {
    /// The reference as written in the spec.
    pub image: String,
    /// The manifest digest it resolved to.
    pub digest: String,
    /// Compressed layer digests, bottom first.
    #[serde(default)]
    pub layers: Vec<String>,
    /// Total compressed size of the layers in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
}

/// Observed state of a cache (DESIGN §3).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageCacheStatus {
    /// `imc-` + 20 lowercase alphanumerics; unique, never reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_cache_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// `"0%"` to `"100%"`, monotonic within one build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_date_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_matched_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<CachedImage>>,
    /// Bytes on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_layers: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downloaded_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_has_the_printed_columns_and_short_name() {
        let crd = ImageCache::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.short_names, Some(vec!["imc".to_owned()]));
        let cols: Vec<_> = crd.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(cols, ["Age", "CacheId", "Phase", "Progress"]);
    }

    #[test]
    fn seed_manifest_deserialises() {
        let yaml = r#"{"apiVersion":"eci.alibabacloud.com/v1","kind":"ImageCache",
            "metadata":{"name":"imagecache-sample-test","annotations":{"k8s.aliyun.com/eci-image-cache":"true"}},
            "spec":{"images":["registry.cn-shanghai.aliyuncs.com/eci_open/nginx:1.14.2"],"imageCacheSize":25,"retentionDays":7}}"#;
        let ic: ImageCache = serde_json::from_str(yaml).unwrap();
        assert_eq!(ic.spec.size_gib(), 25);
        assert_eq!(ic.spec.retention_days, Some(7));
    }
}
