//! Cache disks shipped through a registry as OCI artifacts (issue 13, DESIGN §13).
//!
//! A cache artifact is an OCI image manifest (`schemaVersion` 2, `mediaType`
//! [`OCI_MANIFEST`](crate::OCI_MANIFEST)) with:
//! - `artifactType` [`CACHE_ARTIFACT_TYPE`] (`application/vnd.imc.cache.v1`);
//! - `config` the OCI empty descriptor (`application/vnd.oci.empty.v1+json`, the 2-byte `{}`);
//! - one layer, the disk itself ([`CACHE_DISK_MEDIA_TYPE`], the EROFS image byte for byte, its
//!   index `/index.json` inside it), titled `<cache-id>.erofs`;
//! - annotations: `org.opencontainers.image.title` (the images, comma-separated),
//!   [`ANNOTATION_IMAGES`] (JSON list of `{"image", "digest"}`), [`ANNOTATION_CACHE_ID`],
//!   [`ANNOTATION_GENERATION`] and [`ANNOTATION_NAME`] (the ImageCache's name).
//!
//! It is pushed under the cache id as tag and fetched by digest: [`DiskFetcher`] downloads the
//! disk blob to a hidden temporary file next to its destination, verifies size and digest while
//! streaming, and renames it into place; concurrent fetches of one blob share one download.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use imc_api::{Digest, Reference};
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;
use tracing::{debug, info, warn};

use crate::blob::BlobDescriptor;
use crate::client::{Client, read_limited};
use crate::error::RegistryError;
use crate::manifest::{MAX_MANIFEST_BYTES, OCI_MANIFEST};
use crate::push::BlobPush;

/// `artifactType` of an imc cache artifact.
pub const CACHE_ARTIFACT_TYPE: &str = "application/vnd.imc.cache.v1";
/// Media type of the cache disk layer (an EROFS image holding its own index).
pub const CACHE_DISK_MEDIA_TYPE: &str = "application/vnd.imc.cache.disk.v1.erofs";
/// Media type of the OCI empty descriptor used as config.
pub const OCI_EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The OCI empty blob: `{}`.
const OCI_EMPTY_BLOB: &[u8] = b"{}";
/// Standard OCI annotation: a human-readable title.
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
/// imc annotation: JSON list of the cached images, `[{"image": REF, "digest": DIGEST}]`.
pub const ANNOTATION_IMAGES: &str = "dev.imc.cache.images";
/// imc annotation: the cache id (`imc-…`).
pub const ANNOTATION_CACHE_ID: &str = "dev.imc.cache.id";
/// imc annotation: the ImageCache generation the disk was built for.
pub const ANNOTATION_GENERATION: &str = "dev.imc.cache.generation";
/// imc annotation: the ImageCache's name.
pub const ANNOTATION_NAME: &str = "dev.imc.cache.name";

/// Bytes read at once when hashing a disk before its push.
const HASH_CHUNK: usize = 1 << 20;

/// One image held by a cache, as the artifact lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactImage {
    /// The image reference as the ImageCache names it.
    pub image: String,
    /// The manifest digest it resolved to.
    pub digest: String,
}

/// What a cache artifact says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheArtifact {
    /// Digest of the artifact's manifest.
    pub digest: Digest,
    /// The cache id it was pushed for (as the registry said: check it before using it).
    pub cache_id: String,
    /// The ImageCache generation the disk was built for.
    pub generation: i64,
    /// The ImageCache's name.
    pub name: String,
    /// The images on the disk.
    pub images: Vec<ArtifactImage>,
    /// The disk blob.
    pub disk: BlobDescriptor,
}

/// What to push: a cache disk and what names it.
#[derive(Debug, Clone)]
pub struct CacheArtifactSpec {
    /// The disk file (EROFS).
    pub disk: PathBuf,
    /// The cache id; also the tag the artifact is pushed under.
    pub cache_id: String,
    /// The ImageCache generation the disk was built for.
    pub generation: i64,
    /// The ImageCache's name.
    pub name: String,
    /// The images on the disk.
    pub images: Vec<ArtifactImage>,
}

/// A pushed artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedArtifact {
    /// `registry/repository@digest`.
    pub reference: Reference,
    /// The manifest digest.
    pub digest: Digest,
    /// Whether the disk blob was uploaded (false: the repository held it already).
    pub disk_uploaded: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireDescriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireManifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    config: WireDescriptor,
    layers: Vec<WireDescriptor>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

/// The manifest of a cache artifact (pure; pushed bytes are exactly this serialisation).
fn artifact_manifest(
    spec: &CacheArtifactSpec,
    disk: &BlobDescriptor,
    empty: &BlobDescriptor,
) -> Vec<u8> {
    let mut annotations = std::collections::BTreeMap::new();
    let titles: Vec<&str> = spec.images.iter().map(|i| i.image.as_str()).collect();
    annotations.insert(ANNOTATION_TITLE.to_owned(), titles.join(","));
    annotations.insert(
        ANNOTATION_IMAGES.to_owned(),
        serde_json::to_string(&spec.images).unwrap_or_else(|_| "[]".to_owned()),
    );
    annotations.insert(ANNOTATION_CACHE_ID.to_owned(), spec.cache_id.clone());
    annotations.insert(
        ANNOTATION_GENERATION.to_owned(),
        spec.generation.to_string(),
    );
    annotations.insert(ANNOTATION_NAME.to_owned(), spec.name.clone());
    let mut layer_annotations = std::collections::BTreeMap::new();
    layer_annotations.insert(
        ANNOTATION_TITLE.to_owned(),
        format!("{}.erofs", spec.cache_id),
    );
    let manifest = WireManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_owned()),
        artifact_type: Some(CACHE_ARTIFACT_TYPE.to_owned()),
        config: WireDescriptor {
            media_type: OCI_EMPTY_MEDIA_TYPE.to_owned(),
            digest: empty.digest.to_string(),
            size: empty.size,
            data: Some("e30=".to_owned()),
            annotations: None,
        },
        layers: vec![WireDescriptor {
            media_type: CACHE_DISK_MEDIA_TYPE.to_owned(),
            digest: disk.digest.to_string(),
            size: disk.size,
            data: None,
            annotations: Some(layer_annotations),
        }],
        annotations,
    };
    serde_json::to_vec(&manifest).unwrap_or_default()
}

/// Reads a cache artifact manifest, refusing anything else.
pub fn parse_artifact(
    reference: &str,
    digest: Digest,
    body: &[u8],
) -> Result<CacheArtifact, RegistryError> {
    let invalid = |reason: String| RegistryError::InvalidArtifact {
        reference: reference.to_owned(),
        reason,
    };
    let m: WireManifest =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not an OCI manifest: {e}")))?;
    if m.schema_version != 2 {
        return Err(invalid(format!("schemaVersion {}", m.schema_version)));
    }
    if m.artifact_type.as_deref() != Some(CACHE_ARTIFACT_TYPE) {
        return Err(invalid(format!(
            "artifactType {:?}, expected {CACHE_ARTIFACT_TYPE:?}",
            m.artifact_type
        )));
    }
    let [layer] = m.layers.as_slice() else {
        return Err(invalid(format!(
            "{} layers, expected the disk alone",
            m.layers.len()
        )));
    };
    if layer.media_type != CACHE_DISK_MEDIA_TYPE {
        return Err(invalid(format!(
            "layer media type {:?}, expected {CACHE_DISK_MEDIA_TYPE:?}",
            layer.media_type
        )));
    }
    let disk_digest: Digest = layer
        .digest
        .parse()
        .map_err(|e| invalid(format!("disk digest: {e}")))?;
    let cache_id = m
        .annotations
        .get(ANNOTATION_CACHE_ID)
        .cloned()
        .ok_or_else(|| invalid(format!("no {ANNOTATION_CACHE_ID} annotation")))?;
    let generation = m
        .annotations
        .get(ANNOTATION_GENERATION)
        .and_then(|g| g.parse::<i64>().ok())
        .filter(|g| *g >= 0)
        .ok_or_else(|| invalid(format!("no valid {ANNOTATION_GENERATION} annotation")))?;
    let images = match m.annotations.get(ANNOTATION_IMAGES) {
        Some(text) => {
            serde_json::from_str(text).map_err(|e| invalid(format!("{ANNOTATION_IMAGES}: {e}")))?
        }
        None => Vec::new(),
    };
    Ok(CacheArtifact {
        digest,
        cache_id,
        generation,
        name: m
            .annotations
            .get(ANNOTATION_NAME)
            .cloned()
            .unwrap_or_default(),
        images,
        disk: BlobDescriptor {
            digest: disk_digest,
            size: layer.size,
            media_type: layer.media_type.clone(),
        },
    })
}

/// Size and sha256 of the file at `path`, read in bounded chunks (on tokio's blocking pool).
pub async fn hash_file(path: &Path) -> Result<(u64, Digest), RegistryError> {
    let read_err = |source| RegistryError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
    let mut hasher = imc_api::digest::Hasher::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await.map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hasher.finish()))
}

impl Client {
    /// Pushes the cache disk `spec.disk` as a cache artifact into `repository` (a reference
    /// whose registry and repository are used; its tag and digest are ignored): the empty config
    /// and the disk blob (each skipped when the repository holds it), then the manifest by
    /// digest and under the tag `spec.cache_id`.
    pub async fn push_cache_artifact(
        &self,
        repository: &Reference,
        spec: &CacheArtifactSpec,
    ) -> Result<PushedArtifact, RegistryError> {
        let (size, digest) = hash_file(&spec.disk).await?;
        let disk = BlobDescriptor {
            digest,
            size,
            media_type: CACHE_DISK_MEDIA_TYPE.to_owned(),
        };
        let (empty, _) = self
            .push_blob_bytes(
                repository,
                Bytes::from_static(OCI_EMPTY_BLOB),
                OCI_EMPTY_MEDIA_TYPE,
            )
            .await?;
        let uploaded = self.push_blob_file(repository, &disk, &spec.disk).await?;
        let manifest = Bytes::from(artifact_manifest(spec, &disk, &empty));
        let digest = self
            .push_manifest(
                repository,
                &Digest::of(&manifest).to_string(),
                manifest.clone(),
                OCI_MANIFEST,
            )
            .await?;
        self.push_manifest(repository, &spec.cache_id, manifest, OCI_MANIFEST)
            .await?;
        // `repo@digest`, without the tag the repository reference may carry.
        let reference: Reference =
            format!("{}@{digest}", repository.name())
                .parse()
                .map_err(|e| RegistryError::Options {
                    reason: format!("cannot name the pushed artifact: {e}"),
                })?;
        info!(artifact = %reference, disk = %disk.digest, size, "cache artifact pushed");
        Ok(PushedArtifact {
            reference,
            digest,
            disk_uploaded: uploaded == BlobPush::Uploaded,
        })
    }

    /// Fetches and checks the cache artifact manifest `reference` names (pinned by digest: the
    /// manifest must hash to it; by tag: to the registry's Docker-Content-Digest when sent).
    pub async fn resolve_cache_artifact(
        &self,
        reference: &Reference,
    ) -> Result<CacheArtifact, RegistryError> {
        let ep = self.endpoint(reference);
        let manifest_ref = reference.manifest_ref();
        let url = format!(
            "{}/v2/{}/manifests/{manifest_ref}",
            ep.base,
            reference.repository()
        );
        let what = format!("manifest {manifest_ref}");
        let name = reference.to_string();
        let body_and_header = self
            .with_retries("artifact manifest", || async {
                let mut headers = HeaderMap::new();
                headers.insert(ACCEPT, HeaderValue::from_static(OCI_MANIFEST));
                let resp = self.get(reference, &ep, &url, &what, headers).await?;
                let header_digest = resp
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<Digest>().ok());
                let body = read_limited(resp, MAX_MANIFEST_BYTES + 1)
                    .await
                    .map_err(|e| RegistryError::Connection {
                        image: name.clone(),
                        what: what.clone(),
                        host: ep.host.clone(),
                        reason: crate::client::describe_reqwest(&e),
                    })?;
                Ok((body, header_digest))
            })
            .await?;
        let (body, header_digest) = body_and_header;
        if body.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(RegistryError::InvalidArtifact {
                reference: name,
                reason: format!("manifest larger than {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        let actual = Digest::of(&body);
        if let Some(want) = reference.digest().cloned().or(header_digest)
            && want != actual
        {
            return Err(RegistryError::DigestMismatch {
                image: name,
                what,
                expected: want,
                actual,
            });
        }
        parse_artifact(&name, actual, &body)
    }
}

/// Downloads cache disks of artifacts into a directory: to a hidden temporary file next to the
/// destination, verified (size and digest, while streaming), fsynced, then renamed into place,
/// so the directory never shows a partial or unverified disk. Fetches of one disk blob in one
/// process share one download (the later callers wait for the first and find the file). Cheap
/// to clone.
#[derive(Debug, Clone)]
pub struct DiskFetcher {
    client: Client,
    inflight: Arc<Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Whether `name` may be a file name in the destination directory: one plain component, not
/// hidden (hidden names are temporaries).
fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.contains('\0')
        && name.len() <= 200
}

impl DiskFetcher {
    /// A fetcher downloading through `client`.
    pub fn new(client: Client) -> Self {
        DiskFetcher {
            client,
            inflight: Arc::default(),
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Makes `dir/name` hold `artifact`'s disk, downloading it from `reference` (the artifact's
    /// repository) unless a file of the right size is there already (a file only ever gets that
    /// name after verification). Returns the path and whether this call downloaded it.
    pub async fn fetch(
        &self,
        reference: &Reference,
        artifact: &CacheArtifact,
        dir: &Path,
        name: &str,
    ) -> Result<(PathBuf, bool), RegistryError> {
        if !plain_file_name(name) {
            return Err(RegistryError::Options {
                reason: format!("{name:?} is not a plain file name for a fetched disk"),
            });
        }
        let gate = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            inflight
                .entry(artifact.disk.digest.clone())
                .or_default()
                .clone()
        };
        let result = {
            let _one = gate.lock().await;
            self.fetch_locked(reference, artifact, dir, name).await
        };
        // The last one out forgets the gate, so the map stays bounded by fetches in flight.
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&gate) == 2 {
            inflight.remove(&artifact.disk.digest);
        }
        result
    }

    async fn fetch_locked(
        &self,
        reference: &Reference,
        artifact: &CacheArtifact,
        dir: &Path,
        name: &str,
    ) -> Result<(PathBuf, bool), RegistryError> {
        let dest = dir.join(name);
        if let Ok(meta) = tokio::fs::metadata(&dest).await
            && meta.is_file()
            && meta.len() == artifact.disk.size
        {
            debug!(disk = %dest.display(), "cache disk already fetched");
            return Ok((dest, false));
        }
        let image = reference.to_string();
        let write_err = |source| RegistryError::Write {
            image: image.clone(),
            digest: artifact.disk.digest.clone(),
            source,
        };
        let temp = dir.join(format!(".fetch-{}.partial", artifact.disk.digest.hex()));
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .read(true)
            .open(&temp)
            .await
            .map_err(write_err)?;
        let fetched = async {
            self.client
                .fetch_blob_to(reference, &artifact.disk, &mut file, &|_| {})
                .await?;
            file.sync_all().await.map_err(write_err)?;
            let len = file.metadata().await.map_err(write_err)?.len();
            if len != artifact.disk.size {
                return Err(RegistryError::SizeMismatch {
                    image: image.clone(),
                    what: format!("disk {}", artifact.disk.digest),
                    expected: artifact.disk.size,
                    actual: len,
                });
            }
            drop(file);
            tokio::fs::rename(&temp, &dest).await.map_err(write_err)?;
            let d = dir.to_path_buf();
            tokio::task::spawn_blocking(move || std::fs::File::open(&d).and_then(|f| f.sync_all()))
                .await
                .map_err(|e| write_err(std::io::Error::other(e.to_string())))?
                .map_err(write_err)?;
            Ok(())
        }
        .await;
        if let Err(e) = fetched {
            warn!(disk = %artifact.disk.digest, error = %e, "cache disk fetch failed");
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e);
        }
        info!(disk = %dest.display(), digest = %artifact.disk.digest, size = artifact.disk.size, "cache disk fetched");
        Ok((dest, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CacheArtifactSpec {
        CacheArtifactSpec {
            disk: PathBuf::from("/nonexistent"),
            cache_id: "imc-aaaaaaaaaaaaaaaaaaaa".into(),
            generation: 3,
            name: "my-cache".into(),
            images: vec![ArtifactImage {
                image: "127.0.0.1:5000/app:v1".into(),
                digest: Digest::of(b"m").to_string(),
            }],
        }
    }

    #[test]
    fn a_built_manifest_parses_back() {
        let disk = BlobDescriptor {
            digest: Digest::of(b"disk"),
            size: 4,
            media_type: CACHE_DISK_MEDIA_TYPE.into(),
        };
        let empty = BlobDescriptor {
            digest: Digest::of(OCI_EMPTY_BLOB),
            size: 2,
            media_type: OCI_EMPTY_MEDIA_TYPE.into(),
        };
        assert_eq!(
            empty.digest.to_string(),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        let body = artifact_manifest(&spec(), &disk, &empty);
        let parsed = parse_artifact("r", Digest::of(&body), &body).unwrap();
        assert_eq!(parsed.cache_id, "imc-aaaaaaaaaaaaaaaaaaaa");
        assert_eq!(parsed.generation, 3);
        assert_eq!(parsed.name, "my-cache");
        assert_eq!(parsed.images, spec().images);
        assert_eq!(parsed.disk, disk);
    }

    #[test]
    fn other_manifests_are_refused() {
        let base = serde_json::json!({
            "schemaVersion": 2,
            "artifactType": CACHE_ARTIFACT_TYPE,
            "config": {"mediaType": OCI_EMPTY_MEDIA_TYPE, "digest": Digest::of(b"{}").to_string(), "size": 2},
            "layers": [{"mediaType": CACHE_DISK_MEDIA_TYPE, "digest": Digest::of(b"d").to_string(), "size": 1}],
            "annotations": {ANNOTATION_CACHE_ID: "imc-aaaaaaaaaaaaaaaaaaaa", ANNOTATION_GENERATION: "1"},
        });
        let with = |path: &str, value: serde_json::Value| {
            let mut m = base.clone();
            *m.pointer_mut(path).unwrap() = value;
            m
        };
        // (manifest, expected error fragment; None = accepted)
        let cases = [
            (base.clone(), None),
            (
                with("/artifactType", "application/x".into()),
                Some("artifactType"),
            ),
            (with("/layers", serde_json::json!([])), Some("0 layers")),
            (
                with("/layers/0/mediaType", "application/x".into()),
                Some("layer media type"),
            ),
            (with("/layers/0/digest", "nope".into()), Some("disk digest")),
            (
                with("/annotations", serde_json::json!({})),
                Some(ANNOTATION_CACHE_ID),
            ),
            (with("/schemaVersion", 1.into()), Some("schemaVersion")),
        ];
        for (m, want) in cases {
            let body = serde_json::to_vec(&m).unwrap();
            let got = parse_artifact("r", Digest::of(&body), &body);
            match want {
                None => assert!(got.is_ok(), "{m}: {got:?}"),
                Some(w) => {
                    let e = got.expect_err(&m.to_string()).to_string();
                    assert!(e.contains(w), "{m}: {e}");
                }
            }
        }
    }

    #[test]
    fn fetched_disks_get_plain_names_only() {
        for (name, ok) in [
            ("imc-aaaaaaaaaaaaaaaaaaaa.g1.erofs", true),
            (".hidden", false),
            ("../x", false),
            ("a/b", false),
            ("", false),
        ] {
            assert_eq!(plain_file_name(name), ok, "{name}");
        }
    }
}
