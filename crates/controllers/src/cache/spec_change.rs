//! Which spec changes need a new build (pure, table-tested).
//!
//! A spec may change in any phase: a cache stuck in `Creating` (registry down, wrong image) or
//! `Failed` is fixed by editing it, as a `Ready` one is updated. Only what changes the disk's
//! content, or how a build not finished yet fetches it, starts a build; the rest is recorded:
//!
//! | field | Ready | Pending, Creating, Updating, Failed, UpdateFailed |
//! | --- | --- | --- |
//! | `images` | rebuild (`Updating`) | build again (the running build is cancelled) |
//! | `imageCacheSize` | rebuild: the content is checked against the new size | build again |
//! | `imagePullSecrets` | recorded: the disk's content does not change | build again with them |
//! | `retentionDays` | `expireDateTime` moves | `expireDateTime` moves |
//!
//! What a build used is recorded in `status.buildSpec` when it starts, so the rule holds across
//! restarts of the controller.

use imc_api::ImageCacheSpec;
use imc_api::image_cache::{BuildSpec, Phase};

/// Whether a cache in `phase` whose latest build used `built` needs a new build for `spec`.
pub fn needs_build(phase: Phase, built: &BuildSpec, spec: &ImageCacheSpec) -> bool {
    let wanted = BuildSpec::of(spec);
    if !built.same_content(&wanted) {
        return true;
    }
    // Same content: new pull secrets only matter to a build that has not succeeded.
    phase != Phase::Ready && built.image_pull_secrets != wanted.image_pull_secrets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        images: &[&str],
        size: Option<i32>,
        days: Option<i32>,
        secrets: &[&str],
    ) -> ImageCacheSpec {
        ImageCacheSpec {
            images: images.iter().map(|s| s.to_string()).collect(),
            image_cache_size: size,
            retention_days: days,
            image_pull_secrets: (!secrets.is_empty())
                .then(|| secrets.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn only_content_or_an_unfinished_builds_secrets_rebuild() {
        let built = BuildSpec::of(&spec(&["r.io/a:1"], None, Some(7), &["default:old"]));
        let all = [
            Phase::Pending,
            Phase::Creating,
            Phase::Ready,
            Phase::Failed,
            Phase::Updating,
            Phase::UpdateFailed,
        ];
        let cases: Vec<(&str, ImageCacheSpec, &[Phase])> = vec![
            (
                "nothing the build used changed",
                spec(&["r.io/a:1"], Some(20), Some(7), &["default:old"]),
                &[],
            ),
            (
                "retention only",
                spec(&["r.io/a:1"], None, Some(30), &["default:old"]),
                &[],
            ),
            (
                "retention removed",
                spec(&["r.io/a:1"], None, None, &["default:old"]),
                &[],
            ),
            (
                "images",
                spec(&["r.io/b:1"], None, Some(7), &["default:old"]),
                &all,
            ),
            (
                "image added",
                spec(&["r.io/a:1", "r.io/b:1"], None, Some(7), &["default:old"]),
                &all,
            ),
            (
                "size",
                spec(&["r.io/a:1"], Some(40), Some(7), &["default:old"]),
                &all,
            ),
            (
                "pull secrets",
                spec(&["r.io/a:1"], None, Some(7), &["default:new"]),
                &[
                    Phase::Pending,
                    Phase::Creating,
                    Phase::Failed,
                    Phase::Updating,
                    Phase::UpdateFailed,
                ],
            ),
        ];
        for (name, new, rebuilding) in cases {
            for phase in all {
                assert_eq!(
                    needs_build(phase, &built, &new),
                    rebuilding.contains(&phase),
                    "{name} while {phase:?}"
                );
            }
        }
    }
}
