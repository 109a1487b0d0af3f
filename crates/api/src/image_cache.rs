//! The `ImageCache` resource (`eci.alibabacloud.com/v1`, cluster-scoped), DESIGN §3.
//!
//! The same Rust type generates the CRD for clusters and the schema `imc server` serves, so the
//! two modes cannot drift apart. The doc comments of the types below are what `kubectl explain
//! imagecache` prints: they are written for users and name no internal design note. Their line
//! breaks are joined by [`plain_descriptions`], as kubectl re-wraps the text itself.

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
/// Shortest accepted `retentionDays`.
pub const MIN_RETENTION_DAYS: i32 = 1;
/// Longest accepted `retentionDays`.
pub const MAX_RETENTION_DAYS: i32 = 65536;

/// The desired content of an image cache: the images its disk holds, the disk's size, how long
/// the cache is kept and the secrets used to pull the images.
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
#[schemars(transform = plain_descriptions)]
pub struct ImageCacheSpec {
    /// The images the cache holds: 1 to 20 references such as `nginx:1.14.2`,
    /// `registry.example.com/team/app@sha256:<digest>` or `host:5000/app:v1`, each with a tag
    /// or a digest (no tag means `latest`). Each image may appear once. Changing the list
    /// rebuilds the cache disk; pods keep using the previous disk until the new one is Ready.
    #[schemars(length(min = 1, max = 20))]
    pub images: Vec<String>,
    /// Size of the cache disk in GiB, from 20 to 32768 (default 20). A build whose unpacked
    /// images do not fit fails with both sizes in `status.message`; pods whose temporary
    /// storage is smaller than this size are not matched with the cache. Changing it rebuilds
    /// the disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 20, max = 32768))]
    pub image_cache_size: Option<i32>,
    /// Days to keep the cache after its creation, from 1 to 65536; then the cache and its disk
    /// are deleted (pods running from the disk keep it until they stop). Absent means the cache
    /// never expires. Changing it only moves `status.expireDateTime`; the disk is not rebuilt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65536))]
    pub retention_days: Option<i32>,
    /// Secrets holding registry credentials for pulling the images, each written
    /// `namespace:name` and naming a Secret of type `kubernetes.io/dockerconfigjson`. Changing
    /// them retries a build that is under way or failed; the disk of a Ready cache is kept.
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
#[schemars(transform = plain_descriptions)]
pub enum Phase {
    /// Accepted; the cache id is assigned and the build has not started yet.
    Pending,
    /// The first build pulls the images and writes the disk.
    Creating,
    /// The disk is complete; pods can start from it.
    Ready,
    /// The first build failed; `status.reason` and `status.message` say why.
    Failed,
    /// A Ready cache is rebuilt after a spec change; pods keep using the previous disk.
    Updating,
    /// A rebuild failed; the previous disk keeps serving pods.
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

/// One image of a cache as its build resolved it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = plain_descriptions)]
pub struct CachedImage {
    /// The image reference as written in `spec.images`.
    pub image: String,
    /// The digest of the image manifest the reference resolved to (`sha256:…`).
    pub digest: String,
    /// Digests of the image's compressed layers, bottom layer first.
    #[serde(default)]
    pub layers: Vec<String>,
    /// Total compressed size of the image's layers in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
}

/// Where a cache's disk was pushed as an OCI artifact.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = plain_descriptions)]
pub struct CacheArtifactRef {
    /// The artifact pinned by digest, `registry/repository@sha256:…`.
    pub reference: String,
    /// The digest of the artifact's manifest (`sha256:…`).
    pub digest: String,
    /// The generation (`metadata.generation`) whose disk the artifact holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// The spec fields a build used. Compared with the current spec, it tells whether a spec change
/// needs a new build.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = plain_descriptions)]
pub struct BuildSpec {
    /// The images the build pulled, as written in `spec.images`.
    pub images: Vec<String>,
    /// The disk size in GiB the build was bounded by.
    pub image_cache_size: i32,
    /// The pull secrets the build used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
}

impl BuildSpec {
    /// The build-relevant part of `spec` (the size defaulted).
    pub fn of(spec: &ImageCacheSpec) -> Self {
        Self {
            images: spec.images.clone(),
            image_cache_size: spec.size_gib(),
            image_pull_secrets: spec.image_pull_secrets.clone().unwrap_or_default(),
        }
    }

    /// Whether a build of `self` and one of `other` write the same disk: same images, same
    /// size. Pull secrets only change how the images are fetched.
    pub fn same_content(&self, other: &BuildSpec) -> bool {
        self.images == other.images && self.image_cache_size == other.image_cache_size
    }
}

/// The observed state of an image cache, written by imc.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = plain_descriptions)]
pub struct ImageCacheStatus {
    /// The cache's id, `imc-` followed by 20 lowercase letters and digits. Pods name it in the
    /// `k8s.aliyun.com/eci-image-snapshot-id` annotation to start from this cache. Unique and
    /// never reused, not even after the cache is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_cache_id: Option<String>,
    /// Where the cache is in its lifecycle: Pending, Creating, Ready, Failed, Updating or
    /// UpdateFailed. Only Ready, Updating and UpdateFailed caches have a disk pods can use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// How far the current build is, from `0%` to `100%`: bytes of the image layers fetched
    /// or already held, over all layer bytes. It never decreases within one build and reaches
    /// `100%` only when the disk is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// When the current (or last) build started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When imc last changed this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_time: Option<Time>,
    /// When the cache will be deleted: its creation plus `spec.retentionDays`, one day after a
    /// failed first build, and for caches imc created itself 7 days after creation or 30 days
    /// after the last pod matched it, whichever comes first. Absent when it never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_date_time: Option<Time>,
    /// When a pod was last started from this cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_matched_time: Option<Time>,
    /// The cache's conditions. `Ready` is True while the cache has a complete disk, so
    /// `kubectl wait --for=condition=Ready imagecache/<name>` waits for the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    /// The images on the current disk, each with the manifest digest and layers it resolved
    /// to when the disk was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<CachedImage>>,
    /// Size of the current disk in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// Layers the last build did not download because the node (or, with the
    /// `k8s.aliyun.com/eci-image-cache: "true"` annotation, another cache) already held them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_layers: Option<i32>,
    /// Bytes the last build downloaded from registries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downloaded_bytes: Option<i64>,
    /// The `metadata.generation` (spec version) this status describes. Lower than the
    /// generation while imc has not acted on the latest spec change yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The spec fields the latest build used (images, size, pull secrets). A spec change that
    /// leaves the disk's content the same, such as `retentionDays`, does not start a new build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_spec: Option<BuildSpec>,
    /// The current disk as pushed to the cache registry (`--cache-registry`) as an OCI
    /// artifact, which other nodes fetch by digest. Absent when no cache registry is set or
    /// while the first push has not succeeded; a failed push shows in the `ArtifactPushed`
    /// condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<CacheArtifactRef>,
    /// A one-word reason for the current state when something went wrong or is retried, such
    /// as `PullFailed`, `CacheSizeExceeded` or `Retrying`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What went wrong, in words, including the registry's answer where there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A container image reference as the schema checks it (registry host and port, path, tag
/// and/or digest); the Rust validation parses it fully.
pub const IMAGE_PATTERN: &str = r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$";

/// `namespace:name` of a pull secret: a DNS label, `:`, a DNS subdomain.
pub const SECRET_REF_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?:[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// The ImageCache CRD as clusters get it (`imc install`) and `imc server` installs it: the
/// schema generated from the Rust types plus DESIGN's validation in schema terms (ranges,
/// item counts, patterns, the size default) and, where a schema cannot say it, CEL rules (each
/// image once). A real API server refuses `imageCacheSize: 5` from this schema alone.
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    use serde_json::json;
    let mut crd = ImageCache::crd();
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let Ok(mut v) = serde_json::to_value(&*schema) else {
            continue;
        };
        v["description"] = json!(
            "An image cache: a read-only disk holding the unpacked layers of a list of images, from which pods start without pulling."
        );
        let spec = &mut v["properties"]["spec"];
        spec["required"] = json!(["images"]);
        let images = &mut spec["properties"]["images"];
        images["minItems"] = json!(1);
        images["maxItems"] = json!(MAX_IMAGES);
        images["items"]["pattern"] = json!(IMAGE_PATTERN);
        images["items"]["maxLength"] = json!(1024);
        images["x-kubernetes-validations"] = json!([{
            "rule": "self.all(x, self.exists_one(y, y == x))",
            "message": "each image may appear once",
        }]);
        let size = &mut spec["properties"]["imageCacheSize"];
        size["default"] = json!(DEFAULT_CACHE_SIZE_GIB);
        size["minimum"] = json!(MIN_CACHE_SIZE_GIB);
        size["maximum"] = json!(MAX_CACHE_SIZE_GIB);
        let days = &mut spec["properties"]["retentionDays"];
        days["minimum"] = json!(MIN_RETENTION_DAYS);
        days["maximum"] = json!(MAX_RETENTION_DAYS);
        let secrets = &mut spec["properties"]["imagePullSecrets"];
        secrets["items"]["pattern"] = json!(SECRET_REF_PATTERN);
        secrets["items"]["maxLength"] = json!(317);
        let status = &mut v["properties"]["status"]["properties"];
        status["imageCacheId"]["pattern"] = json!("^imc-[a-z0-9]{20}$");
        status["progress"]["pattern"] = json!("^(100|[1-9]?[0-9])%$");
        if let Ok(s) = serde_json::from_value(v) {
            *schema = s;
        }
    }
    crd
}

/// Joins the lines of every description in a schema (doc comments wrap at 100 columns; kubectl
/// wraps the text itself), keeping blank-line paragraph breaks.
pub fn plain_descriptions(schema: &mut schemars::Schema) {
    use serde_json::{Map, Value};
    fn join_lines(text: &str) -> String {
        text.split("\n\n")
            .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n\n")
    }
    fn walk_map(map: &mut Map<String, Value>) {
        for (key, v) in map.iter_mut() {
            match v {
                Value::String(text) if key == "description" => *text = join_lines(text),
                _ => walk(v),
            }
        }
    }
    fn walk(value: &mut Value) {
        match value {
            Value::Object(map) => walk_map(map),
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    if let Some(map) = schema.as_object_mut() {
        walk_map(map);
    }
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

    /// Every property of the generated schema, as (path, its schema).
    fn properties(
        schema: &serde_json::Value,
        path: &str,
        out: &mut Vec<(String, serde_json::Value)>,
    ) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, sub) in props {
                let p = format!("{path}.{name}");
                out.push((p.clone(), sub.clone()));
                properties(sub, &p, out);
            }
        }
        if let Some(items) = schema.get("items") {
            properties(items, &format!("{path}[]"), out);
        }
    }

    #[test]
    fn every_field_kubectl_explains_has_a_user_facing_description() {
        let crd = ImageCache::crd();
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .unwrap(),
        )
        .unwrap();
        let mut all = Vec::new();
        properties(&schema["properties"]["spec"], "spec", &mut all);
        properties(&schema["properties"]["status"], "status", &mut all);
        assert!(all.len() > 20, "{all:?}");
        for field in ["spec", "status"] {
            all.push((field.to_owned(), schema["properties"][field].clone()));
        }
        let internal = [
            "DESIGN",
            "§",
            "deserialis",
            "Images stay strings",
            "time.Time",
            "TODO",
        ];
        for (path, sub) in &all {
            let text = sub["description"].as_str().unwrap_or("");
            assert!(!text.trim().is_empty(), "{path} has no description");
            for word in internal {
                assert!(!text.contains(word), "{path} mentions {word:?}: {text}");
            }
            assert!(
                !text.contains('\n') || text.contains("\n\n"),
                "{path}: unjoined lines: {text:?}"
            );
        }
        let spec = &schema["properties"]["spec"]["properties"];
        assert_eq!(spec["imageCacheSize"]["minimum"].as_f64(), Some(20.0));
        assert_eq!(spec["imageCacheSize"]["maximum"].as_f64(), Some(32768.0));
        assert_eq!(spec["images"]["maxItems"], 20);
        assert_eq!(spec["retentionDays"]["minimum"].as_f64(), Some(1.0));
        assert!(
            spec["images"]["description"].as_str().unwrap().starts_with(
                "The images the cache holds: 1 to 20 references such as `nginx:1.14.2`, "
            ),
            "{}",
            spec["images"]["description"]
        );
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
