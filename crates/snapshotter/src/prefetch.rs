//! Prefetching Ready caches' disks from the cache registry (issue 14 item 3, issue 13 item 4).
//!
//! Which caches a node fetches: every cache whose status names an artifact (`status.artifact`,
//! written by the controller that pushed it) in the `--cache-registry` repository, unless the
//! ImageCache's [`PREFETCH_NODE_SELECTOR`] annotation holds a label selector the Node's labels do
//! not match. A fetched disk becomes `DIR/caches/<id>.g<generation>.erofs` (downloaded to a hidden
//! temporary file, verified, renamed) and `DIR/caches/<id>.erofs` is then pointed at it, the
//! same layout the cache controller publishes, so the catalog, the Node labels and the garbage
//! collection treat fetched and locally built disks alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use imc_api::image_cache::Phase;
use imc_api::{CacheId, ImageCache, Reference};

pub use imc_api::annotations::PREFETCH_NODE_SELECTOR;

/// One requirement of an equality-based label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// An equality-based label selector, as `kubectl -l` takes it: `k=v`, `k==v`, `k!=v`, `k`,
/// `!k`, comma-separated (all must hold). Empty matches every node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeSelector(Vec<Requirement>);

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl std::str::FromStr for NodeSelector {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().to_owned())
            } else {
                Requirement::Exists(part.to_owned())
            };
            let (key, value) = match &req {
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, Some(v)),
                Requirement::Exists(k) | Requirement::NotExists(k) => (k, None),
            };
            if !valid_key(key) || !value.is_none_or(|v| valid_value(v)) {
                return Err(format!(
                    "{part:?} is not a label requirement (key=value, key!=value, key or !key)"
                ));
            }
            out.push(req);
        }
        Ok(NodeSelector(out))
    }
}

impl NodeSelector {
    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// A cache disk this node should hold, from the cache registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The cache id.
    pub id: CacheId,
    /// The artifact, pinned by digest.
    pub reference: Reference,
    /// The disk generation the artifact holds.
    pub generation: i64,
}

/// Why a cache is not prefetched here (for logs), or what to fetch.
pub fn wanted(
    cache: &ImageCache,
    registry: &Reference,
    node_labels: &BTreeMap<String, String>,
) -> Result<Option<Wanted>, String> {
    let Some(status) = &cache.status else {
        return Ok(None);
    };
    let serving = matches!(
        status.phase,
        Some(Phase::Ready | Phase::Updating | Phase::UpdateFailed)
    );
    let (Some(id), Some(artifact)) = (&status.image_cache_id, &status.artifact) else {
        return Ok(None);
    };
    if !serving {
        return Ok(None);
    }
    let id: CacheId = id.parse().map_err(|e| format!("{e}"))?;
    if let Some(selector) = cache
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PREFETCH_NODE_SELECTOR))
    {
        let selector: NodeSelector = selector
            .parse()
            .map_err(|e| format!("annotation {PREFETCH_NODE_SELECTOR}: {e}"))?;
        if !selector.matches(node_labels) {
            return Ok(None);
        }
    }
    let reference: Reference = artifact
        .reference
        .parse()
        .map_err(|e| format!("status.artifact.reference: {e}"))?;
    // Only the configured registry is trusted to serve disks (status is written through the
    // API; a disk from elsewhere would be mounted on this node).
    if reference.name() != registry.name() {
        return Err(format!(
            "artifact {} is not in the cache registry {}",
            artifact.reference,
            registry.name()
        ));
    }
    let digest = reference
        .digest()
        .ok_or_else(|| format!("artifact {} is not pinned by digest", artifact.reference))?;
    if digest.to_string() != artifact.digest {
        return Err(format!(
            "artifact {} does not carry its digest {}",
            artifact.reference, artifact.digest
        ));
    }
    let generation = artifact
        .generation
        .filter(|g| *g >= 0)
        .ok_or_else(|| "status.artifact has no generation".to_owned())?;
    Ok(Some(Wanted {
        id,
        reference,
        generation,
    }))
}

/// The file name of cache `id`'s disk of `generation`.
pub fn generation_name(id: &CacheId, generation: i64) -> String {
    format!("{id}.g{generation}.erofs")
}

/// The generation `<id>.erofs` points at, when it points at a disk that exists. Blocking.
pub fn published_generation(caches_dir: &Path, id: &CacheId) -> Option<i64> {
    let link = caches_dir.join(format!("{id}.erofs"));
    let target = std::fs::read_link(&link).ok()?;
    let name = target.file_name()?.to_str()?;
    let g = name
        .strip_prefix(id.as_str())?
        .strip_prefix(".g")?
        .strip_suffix(".erofs")?
        .parse()
        .ok()?;
    link.exists().then_some(g)
}

/// Points `<id>.erofs` at `<id>.g<generation>.erofs` with a rename (atomic). Blocking.
pub fn publish(caches_dir: &Path, id: &CacheId, generation: i64) -> std::io::Result<()> {
    let link = caches_dir.join(format!("{id}.erofs"));
    let tmp = caches_dir.join(format!(".{id}.erofs.link-{}", std::process::id()));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::symlink(generation_name(id, generation), &tmp)?;
    std::fs::rename(&tmp, &link)?;
    std::fs::File::open(caches_dir)?.sync_all()
}

/// Generation files of `id` that `<id>.erofs` does not point at (older disks). Blocking.
pub fn stale_generations(caches_dir: &Path, id: &CacheId) -> Vec<PathBuf> {
    let current = std::fs::read_link(caches_dir.join(format!("{id}.erofs"))).ok();
    let Ok(entries) = std::fs::read_dir(caches_dir) else {
        return Vec::new();
    };
    let prefix = format!("{id}.g");
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&prefix)
                && name.ends_with(".erofs")
                && current.as_deref() != Some(Path::new(&name))
        })
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use imc_api::image_cache::{CacheArtifactRef, ImageCacheStatus};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn node_selectors_match_like_kubectl() {
        let node = labels(&[("zone", "a"), ("gpu", "true")]);
        // (selector, matches node?) ; Err = refused
        let cases: [(&str, Result<bool, ()>); 11] = [
            ("", Ok(true)),
            ("zone=a", Ok(true)),
            ("zone==a", Ok(true)),
            ("zone=b", Ok(false)),
            ("zone!=b", Ok(true)),
            ("gpu", Ok(true)),
            ("!gpu", Ok(false)),
            ("zone=a, gpu=true", Ok(true)),
            ("zone=a,ssd", Ok(false)),
            ("zone in (a)", Err(())),
            ("=a", Err(())),
        ];
        for (text, want) in cases {
            let got = text
                .parse::<NodeSelector>()
                .map(|s| s.matches(&node))
                .map_err(|_| ());
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn only_serving_caches_with_an_artifact_in_the_cache_registry_are_wanted() {
        let registry: Reference = "127.0.0.1:5000/imc-caches".parse().unwrap();
        let digest = imc_api::Digest::of(b"m").to_string();
        let cache = |phase: Phase, reference: &str, selector: Option<&str>| {
            let mut c = ImageCache::new("c", Default::default());
            if let Some(s) = selector {
                c.metadata.annotations = Some(labels(&[(PREFETCH_NODE_SELECTOR, s)]));
            }
            c.status = Some(ImageCacheStatus {
                phase: Some(phase),
                image_cache_id: Some("imc-aaaaaaaaaaaaaaaaaaaa".into()),
                artifact: Some(CacheArtifactRef {
                    reference: reference.to_owned(),
                    digest: digest.clone(),
                    generation: Some(2),
                }),
                ..Default::default()
            });
            c
        };
        let ours = format!("127.0.0.1:5000/imc-caches@{digest}");
        let node = labels(&[("zone", "a")]);
        let got = wanted(&cache(Phase::Ready, &ours, None), &registry, &node).unwrap();
        assert_eq!(got.map(|w| w.generation), Some(2));
        for (c, want_some) in [
            (cache(Phase::Updating, &ours, Some("zone=a")), true),
            (cache(Phase::Ready, &ours, Some("zone=b")), false),
            (cache(Phase::Creating, &ours, None), false),
        ] {
            assert_eq!(wanted(&c, &registry, &node).unwrap().is_some(), want_some);
        }
        let elsewhere = format!("evil.example/x@{digest}");
        for c in [
            cache(Phase::Ready, &elsewhere, None),
            cache(Phase::Ready, "127.0.0.1:5000/imc-caches:tag", None),
            cache(Phase::Ready, &ours, Some("bad selector(")),
        ] {
            assert!(wanted(&c, &registry, &node).is_err());
        }
    }

    #[test]
    fn fetched_generations_are_published_through_the_stable_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let id: CacheId = "imc-aaaaaaaaaaaaaaaaaaaa".parse().unwrap();
        assert_eq!(published_generation(d, &id), None);
        std::fs::write(d.join(generation_name(&id, 1)), b"1").unwrap();
        publish(d, &id, 1).unwrap();
        assert_eq!(published_generation(d, &id), Some(1));
        std::fs::write(d.join(generation_name(&id, 2)), b"2").unwrap();
        publish(d, &id, 2).unwrap();
        assert_eq!(published_generation(d, &id), Some(2));
        assert_eq!(stale_generations(d, &id), [d.join(generation_name(&id, 1))]);
    }
}
