//! The ranking itself.

use std::cmp::Ordering;
use std::collections::HashMap;

use imc_api::Reference;

use crate::index::{CacheEntry, CacheIndex};
use crate::request::MatchRequest;

/// Pod images beyond this many (after removing duplicates) are not scored. Pods have a handful.
const MAX_SCORED_IMAGES: usize = 64;

/// How much of a pod a cache holds, compared field by field in this order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Score {
    /// Pod images the cache holds exactly (same registry, repository and tag or digest).
    pub exact: usize,
    /// Pod images not held exactly but of a repository the cache holds with another tag.
    pub same_repository: usize,
    /// Bytes of the pod's known layers that the cache already holds.
    pub shared_bytes: u64,
}

impl Score {
    fn is_zero(&self) -> bool {
        *self == Score::default()
    }
}

/// Why a cache cannot serve a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    /// The cache is not `Ready`.
    NotReady,
    /// The cache's disk is larger than the pod's temporary storage.
    TooLarge {
        /// The cache's size in bytes.
        capacity_bytes: u64,
        /// The pod's temporary storage in bytes.
        limit_bytes: u64,
    },
    /// The pod asked for a perfect match and the cache lacks some of its images.
    NotPerfect {
        /// Pod images the cache holds exactly.
        exact: usize,
        /// The pod's images.
        images: usize,
    },
    /// The pod asked for a minimum of exact matches and the cache holds fewer.
    TooFewExact {
        /// Pod images the cache holds exactly.
        exact: usize,
        /// The minimum the pod asked for.
        wanted: usize,
    },
    /// The cache holds none of the pod's images, repositories or layers.
    NoOverlap,
}

impl std::fmt::Display for Exclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exclusion::NotReady => f.write_str("not Ready"),
            Exclusion::TooLarge {
                capacity_bytes,
                limit_bytes,
            } => write!(
                f,
                "size {} GiB exceeds the pod's temporary storage {} GiB",
                capacity_bytes >> 30,
                limit_bytes >> 30
            ),
            Exclusion::NotPerfect { exact, images } => {
                write!(
                    f,
                    "perfect match requested: holds {exact} of {images} images"
                )
            }
            Exclusion::TooFewExact { exact, wanted } => {
                write!(f, "match count {wanted} requested: holds {exact} exactly")
            }
            Exclusion::NoOverlap => f.write_str("holds none of the pod's images or layers"),
        }
    }
}

/// One cache's standing for a pod.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    /// The cache.
    pub cache: &'a CacheEntry,
    /// How much of the pod it holds.
    pub score: Score,
    /// |cache content size − pod image size| in bytes (rule 3).
    pub size_distance: u64,
    /// Why it does not qualify, if it does not.
    pub excluded: Option<Exclusion>,
}

/// The full reasoning for one pod: qualified candidates best first, then excluded caches.
#[derive(Debug, Clone)]
pub struct Explanation<'a> {
    /// Every cache's standing, qualified ones best first.
    pub candidates: Vec<Candidate<'a>>,
}

impl<'a> Explanation<'a> {
    /// The winning cache, if any qualified.
    pub fn winner(&self) -> Option<&'a CacheEntry> {
        self.candidates
            .first()
            .filter(|c| c.excluded.is_none())
            .map(|c| c.cache)
    }
}

/// Per-cache accumulator while scoring.
#[derive(Default, Clone, Copy)]
struct Tally {
    exact: u64,
    repo: u64,
    shared_bytes: u64,
}

fn is_exact(
    pod: &Reference,
    cached: &Reference,
    cached_manifest: Option<&imc_api::Digest>,
) -> bool {
    match pod.digest() {
        Some(d) => cached.digest() == Some(d) || cached_manifest == Some(d),
        None => pod.tag().is_some() && cached.tag() == pod.tag(),
    }
}

impl CacheIndex {
    fn tally(&self, request: &MatchRequest) -> (HashMap<u32, Tally>, usize) {
        let mut images: Vec<&Reference> = Vec::new();
        for image in &request.images {
            if !images.contains(&&image.reference) && images.len() < MAX_SCORED_IMAGES {
                images.push(&image.reference);
            }
        }
        let mut tallies: HashMap<u32, Tally> = HashMap::new();
        for (bit, reference) in images.iter().enumerate() {
            let Some(postings) = self.by_repo.get(&reference.name()) else {
                continue;
            };
            for p in postings {
                let Some(cached) = self
                    .slot(p.cache)
                    .and_then(|e| e.images.get(p.image as usize))
                else {
                    continue;
                };
                let t = tallies.entry(p.cache).or_default();
                if is_exact(
                    reference,
                    &cached.reference,
                    cached.manifest_digest.as_ref(),
                ) {
                    t.exact |= 1 << bit;
                } else {
                    t.repo |= 1 << bit;
                }
            }
        }
        let mut seen_layers = std::collections::HashSet::new();
        for (digest, size) in request.images.iter().flat_map(|i| &i.layers) {
            if !seen_layers.insert(digest) {
                continue;
            }
            for cache in self.by_layer.get(digest).into_iter().flatten() {
                tallies.entry(*cache).or_default().shared_bytes += size;
            }
        }
        (tallies, images.len())
    }

    fn candidate<'a>(
        &'a self,
        entry: &'a CacheEntry,
        tally: Tally,
        images: usize,
        request: &MatchRequest,
    ) -> Candidate<'a> {
        let score = Score {
            exact: tally.exact.count_ones() as usize,
            same_repository: (tally.repo & !tally.exact).count_ones() as usize,
            shared_bytes: tally.shared_bytes,
        };
        let excluded = if !entry.ready {
            Some(Exclusion::NotReady)
        } else if entry.capacity_bytes > request.temp_storage_bytes {
            Some(Exclusion::TooLarge {
                capacity_bytes: entry.capacity_bytes,
                limit_bytes: request.temp_storage_bytes,
            })
        } else if request.perfect_match && score.exact < images {
            Some(Exclusion::NotPerfect {
                exact: score.exact,
                images,
            })
        } else if let Some(wanted) = request.min_exact.filter(|w| score.exact < *w) {
            Some(Exclusion::TooFewExact {
                exact: score.exact,
                wanted,
            })
        } else if score.is_zero() {
            Some(Exclusion::NoOverlap)
        } else {
            None
        };
        let target = request.total_size().unwrap_or(0);
        Candidate {
            cache: entry,
            score,
            size_distance: entry.size_bytes.abs_diff(target),
            excluded,
        }
    }

    /// The best cache for `request`, or `None` when no cache qualifies.
    pub fn best(&self, request: &MatchRequest) -> Option<&CacheEntry> {
        let (tallies, images) = self.tally(request);
        tallies
            .into_iter()
            .filter_map(|(cache, tally)| {
                Some(self.candidate(self.slot(cache)?, tally, images, request))
            })
            .filter(|c| c.excluded.is_none())
            .min_by(rank_order)
            .map(|c| c.cache)
    }

    /// Every cache's standing for `request`: qualified ones best first, then the rest with the
    /// reason each was excluded (caches sharing something with the pod before those sharing
    /// nothing).
    pub fn explain(&self, request: &MatchRequest) -> Explanation<'_> {
        let (tallies, images) = self.tally(request);
        let mut candidates: Vec<Candidate<'_>> = self
            .slots()
            .map(|(slot, entry)| {
                let tally = tallies.get(&slot).copied().unwrap_or_default();
                self.candidate(entry, tally, images, request)
            })
            .collect();
        candidates.sort_by(|a, b| {
            a.excluded
                .is_some()
                .cmp(&b.excluded.is_some())
                .then_with(|| rank_order(a, b))
        });
        Explanation { candidates }
    }
}

/// Best first: higher score, then closer size, then newer, then name.
fn rank_order(a: &Candidate<'_>, b: &Candidate<'_>) -> Ordering {
    b.score
        .cmp(&a.score)
        .then(a.size_distance.cmp(&b.size_distance))
        .then(b.cache.created.cmp(&a.cache.created))
        .then_with(|| a.cache.name.cmp(&b.cache.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::CachedImage;
    use crate::request::{MatchRequest, PodImage};
    use imc_api::Digest;

    const GIB: u64 = 1 << 30;

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    fn cache(name: &str, images: &[&str]) -> CacheEntry {
        CacheEntry {
            name: name.into(),
            id: format!("imc-{name}"),
            ready: true,
            capacity_bytes: 20 * GIB,
            size_bytes: GIB,
            created: 1000,
            images: images
                .iter()
                .map(|i| CachedImage {
                    reference: r(i),
                    manifest_digest: None,
                    layers: vec![],
                })
                .collect(),
        }
    }

    fn pod(images: &[&str]) -> MatchRequest {
        MatchRequest::new(images.iter().map(|i| PodImage::new(r(i))).collect())
    }

    fn winner(caches: Vec<CacheEntry>, req: &MatchRequest) -> Option<String> {
        let index = CacheIndex::new(caches);
        let best = index.best(req).map(|c| c.name.clone());
        // The explanation must always agree with the fast path.
        assert_eq!(index.explain(req).winner().map(|c| c.name.clone()), best);
        best
    }

    #[test]
    fn ranking_rules() {
        let layer = |n: u8| Digest::of(&[n]);
        let cases: Vec<(&str, Vec<CacheEntry>, MatchRequest, Option<&str>)> = vec![
            (
                "more exact matches win",
                vec![
                    cache("one", &["r.io/a:1"]),
                    cache("two", &["r.io/a:1", "r.io/b:1"]),
                ],
                pod(&["r.io/a:1", "r.io/b:1"]),
                Some("two"),
            ),
            (
                "exact beats same repository with another tag",
                vec![
                    cache("other-tag", &["r.io/a:2", "r.io/b:9"]),
                    cache("exact", &["r.io/a:1"]),
                ],
                pod(&["r.io/a:1", "r.io/b:1"]),
                Some("exact"),
            ),
            (
                "same repository beats nothing",
                vec![
                    cache("unrelated", &["r.io/z:1"]),
                    cache("repo", &["r.io/a:2"]),
                ],
                pod(&["r.io/a:1"]),
                Some("repo"),
            ),
            (
                "different registry is not the same repository",
                vec![cache("mirror", &["other.io/a:1"])],
                pod(&["r.io/a:1"]),
                None,
            ),
            (
                "digest pin matches the resolved manifest digest",
                vec![CacheEntry {
                    images: vec![CachedImage {
                        reference: r("r.io/a:1"),
                        manifest_digest: Some(layer(1)),
                        layers: vec![],
                    }],
                    ..cache("pinned", &[])
                }],
                MatchRequest::new(vec![PodImage::new(r(&format!("r.io/a@{}", layer(1))))]),
                Some("pinned"),
            ),
            (
                "shared layer bytes break a tie in repository matches",
                vec![
                    CacheEntry {
                        images: vec![CachedImage {
                            reference: r("r.io/a:2"),
                            manifest_digest: None,
                            layers: vec![(layer(1), 100), (layer(2), 5)],
                        }],
                        ..cache("shares-100", &[])
                    },
                    CacheEntry {
                        images: vec![CachedImage {
                            reference: r("r.io/a:3"),
                            manifest_digest: None,
                            layers: vec![(layer(2), 5)],
                        }],
                        ..cache("shares-5", &[])
                    },
                ],
                MatchRequest::new(vec![PodImage {
                    reference: r("r.io/a:1"),
                    layers: vec![(layer(1), 100), (layer(2), 5)],
                }]),
                Some("shares-100"),
            ),
            (
                "size closest to the pod's images wins a tie",
                vec![
                    CacheEntry {
                        size_bytes: 10 * GIB,
                        ..cache("big", &["r.io/a:1"])
                    },
                    CacheEntry {
                        size_bytes: GIB / 2,
                        ..cache("close", &["r.io/a:1"])
                    },
                ],
                MatchRequest::new(vec![PodImage {
                    reference: r("r.io/a:1"),
                    layers: vec![(layer(7), GIB / 2)],
                }]),
                Some("close"),
            ),
            (
                "newest wins a full tie",
                vec![
                    CacheEntry {
                        created: 5,
                        ..cache("old", &["r.io/a:1"])
                    },
                    CacheEntry {
                        created: 9,
                        ..cache("new", &["r.io/a:1"])
                    },
                ],
                pod(&["r.io/a:1"]),
                Some("new"),
            ),
            (
                "not ready caches never win",
                vec![CacheEntry {
                    ready: false,
                    ..cache("creating", &["r.io/a:1"])
                }],
                pod(&["r.io/a:1"]),
                None,
            ),
            (
                "caches larger than the pod's temporary storage are skipped",
                vec![
                    CacheEntry {
                        capacity_bytes: 40 * GIB,
                        ..cache("huge", &["r.io/a:1", "r.io/b:1"])
                    },
                    cache("fits", &["r.io/a:1"]),
                ],
                pod(&["r.io/a:1", "r.io/b:1"]),
                Some("fits"),
            ),
            (
                "perfect match needs every image",
                vec![
                    cache("partial", &["r.io/a:1"]),
                    cache("full", &["r.io/a:1", "r.io/b:1"]),
                ],
                MatchRequest {
                    perfect_match: true,
                    ..pod(&["r.io/a:1", "r.io/b:1"])
                },
                Some("full"),
            ),
            (
                "perfect match with no full cache matches nothing",
                vec![cache("partial", &["r.io/a:1"])],
                MatchRequest {
                    perfect_match: true,
                    ..pod(&["r.io/a:1", "r.io/b:1"])
                },
                None,
            ),
            (
                "match count filters by exact matches only",
                vec![
                    cache("tags", &["r.io/a:2", "r.io/b:2"]),
                    cache("one", &["r.io/a:1"]),
                ],
                MatchRequest {
                    min_exact: Some(1),
                    ..pod(&["r.io/a:1", "r.io/b:1"])
                },
                Some("one"),
            ),
            (
                "docker hub names normalise",
                vec![cache("hub", &["docker.io/library/busybox:1.30"])],
                pod(&["busybox:1.30"]),
                Some("hub"),
            ),
            ("no caches", vec![], pod(&["r.io/a:1"]), None),
        ];
        for (name, caches, req, want) in cases {
            assert_eq!(winner(caches, &req).as_deref(), want, "{name}");
        }
    }

    #[test]
    fn result_does_not_depend_on_input_order() {
        let a = cache("a", &["r.io/x:1"]);
        let b = cache("b", &["r.io/x:1"]);
        let req = pod(&["r.io/x:1"]);
        assert_eq!(
            winner(vec![a.clone(), b.clone()], &req),
            winner(vec![b, a], &req)
        );
    }

    #[test]
    fn explanation_gives_reasons() {
        let index = CacheIndex::new(vec![
            CacheEntry {
                ready: false,
                ..cache("creating", &["r.io/a:1"])
            },
            cache("good", &["r.io/a:1"]),
            cache("unrelated", &["r.io/z:1"]),
        ]);
        let e = index.explain(&pod(&["r.io/a:1"]));
        let rows: Vec<_> = e
            .candidates
            .iter()
            .map(|c| {
                (
                    c.cache.name.as_str(),
                    c.excluded.as_ref().map(|x| x.to_string()),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("good", None),
                ("creating", Some("not Ready".to_owned())),
                (
                    "unrelated",
                    Some("holds none of the pod's images or layers".to_owned())
                ),
            ]
        );
    }
}
