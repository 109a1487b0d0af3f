//! ImageCache status computed from what a build observed (DESIGN §3). Pure: the cache controller
//! writes the result in one status patch.

use imc_api::image_cache::{CachedImage, ImageCacheStatus, Phase};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Progress text for `done` of `total` bytes: floor of the percentage, `100%` only when the
/// build has finished (the disk is written), so a cache never shows 100% while still Creating.
pub fn progress(done: u64, total: u64, finished: bool) -> String {
    if finished {
        return "100%".to_owned();
    }
    let pct = if total == 0 {
        0
    } else {
        (done.min(total) as u128 * 100 / total as u128).min(99)
    };
    format!("{pct}%")
}

/// Parses `"NN%"`; unknown text counts as 0 so progress can only rise from it.
pub fn progress_value(text: Option<&str>) -> u32 {
    text.and_then(|t| t.strip_suffix('%'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The `Ready` condition for a phase.
pub fn ready_condition(
    phase: Phase,
    reason: &str,
    message: &str,
    now: Timestamp,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: "Ready".to_owned(),
        status: if phase == Phase::Ready {
            "True"
        } else {
            "False"
        }
        .to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time: Time(now),
        observed_generation: generation,
    }
}

/// Replaces the condition of the same type, keeping its transition time when the status did not
/// change (so `kubectl describe` shows when it really changed).
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            let keep_time = old.status == new.status;
            let time = old.last_transition_time.clone();
            *old = new;
            if keep_time {
                old.last_transition_time = time;
            }
        }
        None => conditions.push(new),
    }
}

/// What one build observed, in the controller's terms.
#[derive(Debug, Clone, Default)]
pub struct BuildOutcome {
    /// Each image built into the cache, in spec order.
    pub images: Vec<CachedImage>,
    /// Bytes on the cache disk.
    pub disk_bytes: u64,
    /// Layers taken from the layer store or other caches instead of downloaded.
    pub reused_layers: u32,
    /// Layer bytes downloaded from registries for this build.
    pub downloaded_bytes: u64,
}

/// The status after a successful build.
pub fn ready_status(
    previous: &ImageCacheStatus,
    outcome: &BuildOutcome,
    expire: Option<Timestamp>,
    now: Timestamp,
    generation: Option<i64>,
) -> ImageCacheStatus {
    let mut conditions = previous.conditions.clone().unwrap_or_default();
    set_condition(
        &mut conditions,
        ready_condition(
            Phase::Ready,
            "Built",
            "the cache disk is complete",
            now,
            generation,
        ),
    );
    ImageCacheStatus {
        phase: Some(Phase::Ready),
        progress: Some(progress(1, 1, true)),
        last_updated_time: Some(Time(now)),
        expire_date_time: expire.map(Time),
        conditions: Some(conditions),
        images: Some(outcome.images.clone()),
        size: Some(outcome.disk_bytes as i64),
        reused_layers: Some(outcome.reused_layers as i32),
        downloaded_bytes: Some(outcome.downloaded_bytes as i64),
        observed_generation: generation,
        reason: None,
        message: None,
        ..previous.clone()
    }
}

/// The status after a failed build: `Failed` for a first build, `UpdateFailed` for a rebuild
/// (the previous disk keeps serving pods).
pub fn failed_status(
    previous: &ImageCacheStatus,
    reason: &str,
    message: &str,
    now: Timestamp,
    generation: Option<i64>,
) -> ImageCacheStatus {
    let phase = match previous.phase {
        Some(Phase::Updating | Phase::UpdateFailed) => Phase::UpdateFailed,
        _ => Phase::Failed,
    };
    let mut conditions = previous.conditions.clone().unwrap_or_default();
    if phase == Phase::Failed {
        set_condition(
            &mut conditions,
            ready_condition(phase, reason, message, now, generation),
        );
    }
    ImageCacheStatus {
        phase: Some(phase),
        last_updated_time: Some(Time(now)),
        conditions: Some(conditions),
        observed_generation: generation,
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        ..previous.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_never_shows_100_before_done() {
        for (done, total, finished, want) in [
            (0, 0, false, "0%"),
            (0, 100, false, "0%"),
            (50, 100, false, "50%"),
            (100, 100, false, "99%"),
            (150, 100, false, "99%"),
            (0, 0, true, "100%"),
        ] {
            assert_eq!(
                progress(done, total, finished),
                want,
                "{done}/{total} {finished}"
            );
        }
        assert_eq!(progress_value(Some("42%")), 42);
        assert_eq!(progress_value(None), 0);
    }

    #[test]
    fn failure_of_a_rebuild_is_update_failed_and_keeps_ready() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let ready = ready_status(
            &ImageCacheStatus::default(),
            &BuildOutcome::default(),
            None,
            now,
            Some(1),
        );
        let updating = ImageCacheStatus {
            phase: Some(Phase::Updating),
            ..ready
        };
        let failed = failed_status(&updating, "PullFailed", "registry said 404", now, Some(2));
        assert_eq!(failed.phase, Some(Phase::UpdateFailed));
        assert_eq!(failed.conditions.unwrap()[0].status, "True");
        let first = failed_status(
            &ImageCacheStatus::default(),
            "PullFailed",
            "x",
            now,
            Some(1),
        );
        assert_eq!(first.phase, Some(Phase::Failed));
        assert_eq!(first.conditions.unwrap()[0].status, "False");
    }
}
