//! When a cache expires (DESIGN §3). Pure and clock-free: callers pass `now`, so the rules are
//! tested without waiting days.

use imc_api::ImageCache;
use imc_api::annotations::AUTO_CREATED_LABEL;
use imc_api::image_cache::Phase;
use jiff::{SignedDuration, Timestamp};

/// A failed cache is deleted this long after it failed.
pub const FAILED_TTL: SignedDuration = SignedDuration::from_hours(24);
/// An auto-created cache that was never matched is deleted this long after creation.
pub const AUTO_UNMATCHED_TTL: SignedDuration = SignedDuration::from_hours(7 * 24);
/// An auto-created cache is deleted this long after its last match.
pub const AUTO_MATCHED_TTL: SignedDuration = SignedDuration::from_hours(30 * 24);

const DAY_SECS: i64 = 24 * 3600;

fn ts(t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<Timestamp> {
    t.as_ref().map(|t| t.0)
}

/// True for caches imc created itself after a miss.
pub fn is_auto_created(cache: &ImageCache) -> bool {
    cache
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.get(AUTO_CREATED_LABEL).is_some_and(|v| v == "true"))
}

/// The moment `cache` expires, or `None` when it never does. This is what `status.expireDateTime`
/// shows.
pub fn expires_at(cache: &ImageCache) -> Option<Timestamp> {
    let created = ts(&cache.metadata.creation_timestamp)?;
    let status = cache.status.as_ref();
    let phase = status.and_then(|s| s.phase);
    let mut candidates: Vec<Timestamp> = Vec::new();
    if let Some(days) = cache.spec.retention_days {
        candidates.push(
            created
                .saturating_add(SignedDuration::from_secs(i64::from(days) * DAY_SECS))
                .ok()?,
        );
    }
    if phase == Some(Phase::Failed) {
        let failed_at = status
            .and_then(|s| ts(&s.last_updated_time))
            .unwrap_or(created);
        candidates.push(failed_at.saturating_add(FAILED_TTL).ok()?);
    }
    if is_auto_created(cache) {
        let t = match status.and_then(|s| ts(&s.last_matched_time)) {
            Some(matched) => matched.saturating_add(AUTO_MATCHED_TTL).ok()?,
            None => created.saturating_add(AUTO_UNMATCHED_TTL).ok()?,
        };
        candidates.push(t);
    }
    candidates.into_iter().min()
}

/// True when `cache` should be deleted at `now`.
pub fn is_expired(cache: &ImageCache, now: Timestamp) -> bool {
    expires_at(cache).is_some_and(|t| t <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imc_api::ImageCacheSpec;
    use imc_api::image_cache::ImageCacheStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cache(retention: Option<i32>) -> ImageCache {
        let mut c = ImageCache::new(
            "c",
            ImageCacheSpec {
                images: vec!["r.io/a:1".into()],
                retention_days: retention,
                ..Default::default()
            },
        );
        c.metadata.creation_timestamp = Some(Time(at("2026-01-01T00:00:00Z")));
        c
    }

    fn with_status(
        mut c: ImageCache,
        phase: Phase,
        updated: Option<&str>,
        matched: Option<&str>,
    ) -> ImageCache {
        c.status = Some(ImageCacheStatus {
            phase: Some(phase),
            last_updated_time: updated.map(|u| Time(at(u))),
            last_matched_time: matched.map(|m| Time(at(m))),
            ..Default::default()
        });
        c
    }

    fn auto(mut c: ImageCache) -> ImageCache {
        c.metadata.labels = Some([(AUTO_CREATED_LABEL.to_owned(), "true".to_owned())].into());
        c
    }

    #[test]
    fn table() {
        let cases: Vec<(&str, ImageCache, Option<&str>)> = vec![
            (
                "no retention never expires",
                with_status(cache(None), Phase::Ready, None, None),
                None,
            ),
            (
                "retention counts from creation",
                cache(Some(7)),
                Some("2026-01-08T00:00:00Z"),
            ),
            (
                "failed cache expires a day after failing",
                with_status(
                    cache(None),
                    Phase::Failed,
                    Some("2026-03-01T12:00:00Z"),
                    None,
                ),
                Some("2026-03-02T12:00:00Z"),
            ),
            (
                "failed cache with earlier retention keeps the earlier date",
                with_status(
                    cache(Some(1)),
                    Phase::Failed,
                    Some("2026-03-01T12:00:00Z"),
                    None,
                ),
                Some("2026-01-02T00:00:00Z"),
            ),
            (
                "auto cache never matched: 7 days",
                auto(cache(None)),
                Some("2026-01-08T00:00:00Z"),
            ),
            (
                "auto cache matched: 30 days after last match",
                auto(with_status(
                    cache(None),
                    Phase::Ready,
                    None,
                    Some("2026-02-01T00:00:00Z"),
                )),
                Some("2026-03-03T00:00:00Z"),
            ),
            (
                "max retention does not overflow",
                cache(Some(65536)),
                Some("2205-06-08T00:00:00Z"),
            ),
        ];
        for (name, c, want) in cases {
            assert_eq!(expires_at(&c), want.map(at), "{name}");
        }
    }

    #[test]
    fn expiry_against_a_clock() {
        let c = cache(Some(7));
        assert!(!is_expired(&c, at("2026-01-07T23:59:59Z")));
        assert!(is_expired(&c, at("2026-01-08T00:00:00Z")));
    }
}
