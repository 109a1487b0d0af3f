//! What reconcile does next for a cache, decided from the object alone (pure, table-tested).

use imc_api::image_cache::Phase;
use imc_api::{CacheId, ImageCache};
use jiff::Timestamp;

use super::retention;
use super::spec_change::needs_build;

/// The next action for one cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Past its expiry: delete it.
    Expire,
    /// No valid `imageCacheId` yet: assign one (phase `Pending`).
    AssignId,
    /// Build the current generation into cache `id`. `resume` when the status says a build of
    /// this spec was under way (after a restart nothing runs it; in a running process it
    /// already runs, unless the spec changed, which cancels it for a new build).
    Build {
        /// The cache's `imageCacheId`.
        id: CacheId,
        /// The phase of the build: `Creating` for a first build, `Updating` for a rebuild.
        phase: Phase,
        /// Whether a build of this spec was already under way.
        resume: bool,
    },
    /// The spec changed in a way that needs no build (`retentionDays`, or the pull secrets of
    /// a Ready cache): record the generation as observed.
    Adopt {
        /// The cache's `imageCacheId`.
        id: CacheId,
    },
    /// Nothing to build. `prune` when older generations' disks may be left (rebuilt caches).
    Idle {
        /// The cache's `imageCacheId`.
        id: CacheId,
        /// Whether disks of older generations may be left.
        prune: bool,
    },
}

/// Decides the next step for `cache` at `now`.
pub fn next_step(cache: &ImageCache, now: Timestamp) -> Step {
    if retention::is_expired(cache, now) {
        return Step::Expire;
    }
    let status = cache.status.as_ref();
    let Some(id) = status
        .and_then(|s| s.image_cache_id.as_deref())
        .and_then(|i| i.parse::<CacheId>().ok())
    else {
        return Step::AssignId;
    };
    let generation = cache.metadata.generation.unwrap_or(1);
    let observed = status.and_then(|s| s.observed_generation);
    // What the latest build used; caches built before it was recorded rebuild on any change.
    let built = status.and_then(|s| s.build_spec.as_ref());
    let changed = |phase| built.is_none_or(|b| needs_build(phase, b, &cache.spec));
    match status.and_then(|s| s.phase) {
        None | Some(Phase::Pending) => Step::Build {
            id,
            phase: Phase::Creating,
            resume: false,
        },
        Some(phase @ (Phase::Creating | Phase::Updating)) => Step::Build {
            id,
            phase,
            resume: built.is_none_or(|b| !needs_build(phase, b, &cache.spec)),
        },
        Some(phase @ (Phase::Ready | Phase::UpdateFailed | Phase::Failed))
            if observed != Some(generation) =>
        {
            if !changed(phase) {
                Step::Adopt { id }
            } else if phase == Phase::Failed {
                // A failed first build has no disk: the fixed spec is a first build again.
                Step::Build {
                    id,
                    phase: Phase::Creating,
                    resume: false,
                }
            } else {
                Step::Build {
                    id,
                    phase: Phase::Updating,
                    resume: false,
                }
            }
        }
        Some(Phase::Ready) => Step::Idle {
            id,
            prune: observed.unwrap_or(1) > 1,
        },
        Some(Phase::Failed | Phase::UpdateFailed) => Step::Idle { id, prune: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imc_api::ImageCacheSpec;
    use imc_api::image_cache::{BuildSpec, ImageCacheStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const ID: &str = "imc-abcdefghij0123456789";

    fn cache(
        generation: i64,
        phase: Option<Phase>,
        observed: Option<i64>,
        id: Option<&str>,
    ) -> ImageCache {
        let mut c = ImageCache::new(
            "c",
            ImageCacheSpec {
                images: vec!["r.io/a:1".into()],
                retention_days: Some(1),
                ..Default::default()
            },
        );
        c.metadata.generation = Some(generation);
        c.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        c.status = Some(ImageCacheStatus {
            image_cache_id: id.map(str::to_owned),
            phase,
            observed_generation: observed,
            ..Default::default()
        });
        c
    }

    /// `c` whose latest build used `images` (and retention 1, which is not part of a build).
    fn built(mut c: ImageCache, images: &[&str]) -> ImageCache {
        let used = ImageCacheSpec {
            images: images.iter().map(|s| s.to_string()).collect(),
            ..c.spec.clone()
        };
        if let Some(s) = c.status.as_mut() {
            s.build_spec = Some(BuildSpec::of(&used));
        }
        c
    }

    /// `c` with `retentionDays` changed (a spec change that is not part of a build).
    fn retention(mut c: ImageCache, days: i32) -> ImageCache {
        c.spec.retention_days = Some(days);
        c
    }

    #[test]
    fn table() {
        let id: CacheId = ID.parse().unwrap();
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        let build = |phase, resume| Step::Build {
            id: id.clone(),
            phase,
            resume,
        };
        let cases = [
            (
                "new cache gets an id",
                cache(1, None, None, None),
                Step::AssignId,
            ),
            (
                "a malformed id is replaced",
                cache(1, Some(Phase::Pending), None, Some("imc-x")),
                Step::AssignId,
            ),
            (
                "pending starts the first build",
                cache(1, Some(Phase::Pending), None, Some(ID)),
                build(Phase::Creating, false),
            ),
            (
                "creating resumes (after a restart)",
                cache(1, Some(Phase::Creating), None, Some(ID)),
                build(Phase::Creating, true),
            ),
            (
                "updating resumes",
                cache(2, Some(Phase::Updating), Some(1), Some(ID)),
                build(Phase::Updating, true),
            ),
            (
                "a spec change on a ready cache rebuilds",
                cache(2, Some(Phase::Ready), Some(1), Some(ID)),
                build(Phase::Updating, false),
            ),
            (
                "a spec change after a failed rebuild rebuilds",
                cache(3, Some(Phase::UpdateFailed), Some(2), Some(ID)),
                build(Phase::Updating, false),
            ),
            (
                "ready first generation idles",
                cache(1, Some(Phase::Ready), Some(1), Some(ID)),
                Step::Idle {
                    id: id.clone(),
                    prune: false,
                },
            ),
            (
                "ready rebuilt cache prunes old disks",
                cache(2, Some(Phase::Ready), Some(2), Some(ID)),
                Step::Idle {
                    id: id.clone(),
                    prune: true,
                },
            ),
            (
                "a recorded build of the same images resumes",
                built(
                    cache(2, Some(Phase::Creating), None, Some(ID)),
                    &["r.io/a:1"],
                ),
                build(Phase::Creating, true),
            ),
            (
                "images changed while creating: a new build, not a resume",
                built(
                    cache(2, Some(Phase::Creating), None, Some(ID)),
                    &["r.io/old:1"],
                ),
                build(Phase::Creating, false),
            ),
            (
                "images changed while updating: a new rebuild",
                built(
                    cache(3, Some(Phase::Updating), Some(1), Some(ID)),
                    &["r.io/old:1"],
                ),
                build(Phase::Updating, false),
            ),
            (
                "a failed cache whose images were fixed builds again",
                built(
                    cache(2, Some(Phase::Failed), Some(1), Some(ID)),
                    &["r.io/nope:1"],
                ),
                build(Phase::Creating, false),
            ),
            (
                "a failed cache of an unknown build builds again on a change",
                cache(2, Some(Phase::Failed), Some(1), Some(ID)),
                build(Phase::Creating, false),
            ),
            (
                "retention changed on a ready cache: adopted, no rebuild",
                built(
                    retention(cache(2, Some(Phase::Ready), Some(1), Some(ID)), 30),
                    &["r.io/a:1"],
                ),
                Step::Adopt { id: id.clone() },
            ),
            (
                "retention changed on a failed cache: adopted, no build",
                built(
                    retention(cache(2, Some(Phase::Failed), Some(1), Some(ID)), 30),
                    &["r.io/a:1"],
                ),
                Step::Adopt { id: id.clone() },
            ),
            (
                "a ready cache's images changed: rebuilt",
                built(
                    cache(2, Some(Phase::Ready), Some(1), Some(ID)),
                    &["r.io/old:1"],
                ),
                build(Phase::Updating, false),
            ),
            (
                "failed idles until it expires",
                cache(1, Some(Phase::Failed), Some(1), Some(ID)),
                Step::Idle {
                    id: id.clone(),
                    prune: false,
                },
            ),
        ];
        for (name, c, want) in cases {
            assert_eq!(next_step(&c, now), want, "{name}");
        }
        let later: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        assert_eq!(
            next_step(&cache(1, Some(Phase::Ready), Some(1), Some(ID)), later),
            Step::Expire,
            "retention of one day"
        );
    }
}
