//! Pod admission (DESIGN §4): pick the cache a new pod starts from, or deny the pod.
//!
//! [`decide`] is pure: it takes the pod, the caches and an index over them, and returns what
//! admission must do. The embedded server's admission hook and the cluster webhook both call it.

use imc_api::annotations::{
    AUTO_IMC, IMAGE_CACHE, IMAGE_SNAPSHOT_ID, IMC_ID, MATCH_COUNT_REQUEST, PERFECT_MATCH, is_true,
};
use imc_api::image_cache::Phase;
use imc_api::{Digest, ImageCache, Reference};
use imc_matching::{
    CacheEntry, CacheIndex, CachedImage, DEFAULT_TEMP_STORAGE_BYTES, MatchRequest, PodImage,
};
use k8s_openapi::api::core::v1::Pod;

use crate::quantity::parse_bytes;

/// How the chosen cache was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The pod named it (`eci-image-snapshot-id` / `eci-imc-id`).
    Pinned,
    /// Automatic matching picked it (`eci-image-cache` / `eci-auto-imc`).
    Automatic,
}

/// What admission does with a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admit; when a cache was chosen, annotate the pod with it.
    Admit {
        /// The chosen cache's `imageCacheId` and how it was chosen; `None` when none was.
        matched: Option<(String, Selection)>,
        /// Automatic matching was asked for and nothing qualified: the node pulls and creates an
        /// auto cache afterwards.
        missed: bool,
    },
    /// Refuse the pod; the message says which cache and why.
    Deny {
        /// Why the pod is refused, as the API answers it.
        message: String,
    },
}

/// The pinned cache id, if the pod names one (the first annotation wins over its alias).
pub fn pinned_cache_id(pod: &Pod) -> Option<&str> {
    let annotations = pod.metadata.annotations.as_ref()?;
    annotations
        .get(IMAGE_SNAPSHOT_ID)
        .or_else(|| annotations.get(IMC_ID))
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
}

/// True when the pod asks for automatic cache selection.
pub fn wants_automatic(pod: &Pod) -> bool {
    is_true(pod.metadata.annotations.as_ref(), &[IMAGE_CACHE, AUTO_IMC])
}

/// Every image the pod's containers (init containers included) use, without duplicates.
pub fn pod_images(pod: &Pod) -> Vec<String> {
    let mut images: Vec<String> = Vec::new();
    if let Some(spec) = &pod.spec {
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            if let Some(image) = &c.image
                && !images.contains(image)
            {
                images.push(image.clone());
            }
        }
    }
    images
}

/// The pod's temporary storage: the sum of its containers' `ephemeral-storage` limits when
/// every container sets one, else the node default.
pub fn temp_storage_bytes(pod: &Pod) -> u64 {
    let Some(spec) = &pod.spec else {
        return DEFAULT_TEMP_STORAGE_BYTES;
    };
    let limits: Option<Vec<u64>> = spec
        .containers
        .iter()
        .map(|c| {
            c.resources
                .as_ref()?
                .limits
                .as_ref()?
                .get("ephemeral-storage")
                .and_then(|q| parse_bytes(&q.0))
        })
        .collect();
    match limits {
        Some(l) if !l.is_empty() => l.iter().sum(),
        _ => DEFAULT_TEMP_STORAGE_BYTES,
    }
}

/// The matcher's view of an ImageCache object (`None` for one without an id yet).
pub fn cache_entry(cache: &ImageCache) -> Option<CacheEntry> {
    let status = cache.status.as_ref()?;
    let id = status.image_cache_id.clone()?;
    let images = match &status.images {
        // Once built, the status records what each reference resolved to.
        Some(resolved) => resolved
            .iter()
            .filter_map(|i| {
                Some(CachedImage {
                    reference: i.image.parse().ok()?,
                    manifest_digest: i.digest.parse().ok(),
                    layers: i
                        .layers
                        .iter()
                        .filter_map(|l| Some((l.parse::<Digest>().ok()?, 0)))
                        .collect(),
                })
            })
            .collect(),
        None => cache
            .spec
            .images
            .iter()
            .filter_map(|i| i.parse().ok())
            .map(|reference| CachedImage {
                reference,
                manifest_digest: None,
                layers: Vec::new(),
            })
            .collect(),
    };
    Some(CacheEntry {
        name: cache.metadata.name.clone().unwrap_or_default(),
        id,
        // A cache being deleted keeps serving the pods that use it, but takes no new ones.
        ready: status.phase == Some(Phase::Ready) && cache.metadata.deletion_timestamp.is_none(),
        capacity_bytes: (cache.spec.size_gib().max(0) as u64) << 30,
        size_bytes: status.size.unwrap_or(0).max(0) as u64,
        created: cache
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        images,
    })
}

/// Builds the matching request for a pod. `known_layers` gives the layers of an image when the
/// node already knows them (from an earlier pull), else an empty list.
pub fn match_request(
    pod: &Pod,
    known_layers: &dyn Fn(&Reference) -> Vec<(Digest, u64)>,
) -> Result<MatchRequest, String> {
    let annotations = pod.metadata.annotations.as_ref();
    let mut images = Vec::new();
    for image in pod_images(pod) {
        let reference: Reference = image
            .parse()
            .map_err(|e| format!("container image {image:?}: {e}"))?;
        let layers = known_layers(&reference);
        images.push(PodImage { reference, layers });
    }
    let min_exact = match annotations.and_then(|a| a.get(MATCH_COUNT_REQUEST)) {
        None => None,
        Some(v) => Some(v.trim().parse::<usize>().map_err(|_| {
            format!("annotation {MATCH_COUNT_REQUEST}={v:?} is not a non-negative integer")
        })?),
    };
    Ok(MatchRequest {
        images,
        perfect_match: is_true(annotations, &[PERFECT_MATCH]),
        min_exact,
        temp_storage_bytes: temp_storage_bytes(pod),
    })
}

/// Decides admission for a new pod (DESIGN §4). A pinned id beats automatic selection.
pub fn decide(
    pod: &Pod,
    caches: &[ImageCache],
    index: &CacheIndex,
    known_layers: &dyn Fn(&Reference) -> Vec<(Digest, u64)>,
) -> Decision {
    if let Some(id) = pinned_cache_id(pod) {
        let found = caches
            .iter()
            .find(|c| c.status.as_ref().and_then(|s| s.image_cache_id.as_deref()) == Some(id));
        return match found {
            None => Decision::Deny {
                message: format!("image cache {id} not found"),
            },
            Some(cache) => {
                let phase = cache.status.as_ref().and_then(|s| s.phase);
                if phase == Some(Phase::Ready) {
                    Decision::Admit {
                        matched: Some((id.to_owned(), Selection::Pinned)),
                        missed: false,
                    }
                } else {
                    Decision::Deny {
                        message: format!(
                            "image cache {id} ({}) is {}, not Ready",
                            cache.metadata.name.as_deref().unwrap_or(""),
                            phase.map_or("Pending", Phase::as_str)
                        ),
                    }
                }
            }
        };
    }
    if !wants_automatic(pod) {
        return Decision::Admit {
            matched: None,
            missed: false,
        };
    }
    let request = match match_request(pod, known_layers) {
        Ok(r) => r,
        Err(message) => return Decision::Deny { message },
    };
    match index.best(&request) {
        Some(entry) => Decision::Admit {
            matched: Some((entry.id.clone(), Selection::Automatic)),
            missed: false,
        },
        None => Decision::Admit {
            matched: None,
            missed: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imc_api::ImageCacheSpec;
    use imc_api::image_cache::ImageCacheStatus;

    fn pod(annotations: &[(&str, &str)], images: &[&str]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>()},
            "spec": {"containers": images.iter().enumerate().map(|(i, image)| serde_json::json!({"name": format!("c{i}"), "image": image})).collect::<Vec<_>>()}
        }))
        .unwrap()
    }

    fn cache(name: &str, id: &str, phase: Phase, images: &[&str]) -> ImageCache {
        let mut c = ImageCache::new(
            name,
            ImageCacheSpec {
                images: images.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        );
        c.status = Some(ImageCacheStatus {
            image_cache_id: Some(id.into()),
            phase: Some(phase),
            ..Default::default()
        });
        c
    }

    fn run(pod: &Pod, caches: &[ImageCache]) -> Decision {
        let index = CacheIndex::new(caches.iter().filter_map(cache_entry).collect());
        decide(pod, caches, &index, &|_| Vec::new())
    }

    const READY: &str = "imc-aaaaaaaaaaaaaaaaaaaa";
    const CREATING: &str = "imc-bbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn table() {
        let caches = vec![
            cache("ready", READY, Phase::Ready, &["r.io/a:1"]),
            cache(
                "building",
                CREATING,
                Phase::Creating,
                &["r.io/a:1", "r.io/b:1"],
            ),
        ];
        let admit = |id: &str, how| Decision::Admit {
            matched: Some((id.to_owned(), how)),
            missed: false,
        };
        let cases: Vec<(&str, Pod, Decision)> = vec![
            (
                "no annotation: untouched",
                pod(&[], &["r.io/a:1"]),
                Decision::Admit {
                    matched: None,
                    missed: false,
                },
            ),
            (
                "pinned ready cache",
                pod(&[(IMAGE_SNAPSHOT_ID, READY)], &["r.io/z:1"]),
                admit(READY, Selection::Pinned),
            ),
            (
                "pinned via alias",
                pod(&[(IMC_ID, READY)], &["r.io/z:1"]),
                admit(READY, Selection::Pinned),
            ),
            (
                "pinned creating cache is denied with its phase",
                pod(&[(IMAGE_SNAPSHOT_ID, CREATING)], &["r.io/a:1"]),
                Decision::Deny {
                    message: format!("image cache {CREATING} (building) is Creating, not Ready"),
                },
            ),
            (
                "pinned unknown id is denied",
                pod(
                    &[(IMAGE_SNAPSHOT_ID, "imc-cccccccccccccccccccc")],
                    &["r.io/a:1"],
                ),
                Decision::Deny {
                    message: "image cache imc-cccccccccccccccccccc not found".into(),
                },
            ),
            (
                "pinned beats automatic",
                pod(
                    &[(IMAGE_SNAPSHOT_ID, READY), (IMAGE_CACHE, "true")],
                    &["r.io/q:1"],
                ),
                admit(READY, Selection::Pinned),
            ),
            (
                "automatic picks the ready cache",
                pod(&[(IMAGE_CACHE, "true")], &["r.io/a:1"]),
                admit(READY, Selection::Automatic),
            ),
            (
                "automatic via alias",
                pod(&[(AUTO_IMC, "true")], &["r.io/a:1"]),
                admit(READY, Selection::Automatic),
            ),
            (
                "automatic miss",
                pod(&[(IMAGE_CACHE, "true")], &["r.io/nothing:1"]),
                Decision::Admit {
                    matched: None,
                    missed: true,
                },
            ),
            (
                "perfect match excludes the partial cache",
                pod(
                    &[(IMAGE_CACHE, "true"), (PERFECT_MATCH, "true")],
                    &["r.io/a:1", "r.io/b:1"],
                ),
                Decision::Admit {
                    matched: None,
                    missed: true,
                },
            ),
            (
                "bad match count is denied",
                pod(
                    &[(IMAGE_CACHE, "true"), (MATCH_COUNT_REQUEST, "two")],
                    &["r.io/a:1"],
                ),
                Decision::Deny {
                    message: format!(
                        "annotation {MATCH_COUNT_REQUEST}=\"two\" is not a non-negative integer"
                    ),
                },
            ),
        ];
        for (name, pod, want) in cases {
            assert_eq!(run(&pod, &caches), want, "{name}");
        }
    }

    #[test]
    fn temp_storage_from_limits() {
        let mut p = pod(&[], &["r.io/a:1"]);
        assert_eq!(temp_storage_bytes(&p), DEFAULT_TEMP_STORAGE_BYTES);
        p.spec.as_mut().unwrap().containers[0].resources = Some(
            serde_json::from_value(serde_json::json!({"limits": {"ephemeral-storage": "10Gi"}}))
                .unwrap(),
        );
        assert_eq!(temp_storage_bytes(&p), 10 << 30);
    }
}
