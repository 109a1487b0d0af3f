//! The rolling-update arithmetic of upstream's deployment controller: `maxSurge` and
//! `maxUnavailable` resolved against the replicas (surge rounds up, unavailable rounds down, and
//! both zero means one unavailable), how far the new ReplicaSet may grow, and how far old
//! ones may shrink.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// `value` (an integer or `N%`) of `total`, rounded up or down; a malformed value is 0.
pub fn scaled_value(value: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match value {
        None => 0,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let Some(pct) = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
                return 0;
            };
            let product = pct * i64::from(total);
            let v = if round_up {
                (product + 99) / 100
            } else {
                product / 100
            };
            i32::try_from(v).unwrap_or(i32::MAX)
        }
    }
}

/// `(maxSurge, maxUnavailable)` for `replicas` desired pods, as `ResolveFenceposts` computes
/// them.
pub fn fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    replicas: i32,
) -> (i32, i32) {
    let surge = scaled_value(max_surge, replicas, true);
    let unavailable = scaled_value(max_unavailable, replicas, false);
    if surge == 0 && unavailable == 0 {
        return (0, 1);
    }
    (surge, unavailable)
}

/// The replicas the new ReplicaSet should have: grow towards `replicas` while the total of all
/// ReplicaSets (`all_replicas`, spec) stays within `replicas + max_surge`.
pub fn new_rs_replicas(replicas: i32, max_surge: i32, new_replicas: i32, all_replicas: i32) -> i32 {
    if new_replicas >= replicas {
        return replicas;
    }
    let max_total = replicas + max_surge;
    if all_replicas >= max_total {
        return new_replicas;
    }
    let up = (max_total - all_replicas).min(replicas - new_replicas);
    new_replicas + up
}

/// How many old pods may go now: the available pods above `replicas - max_unavailable`, and
/// no more than would leave the total short once the new ReplicaSet's unavailable pods are
/// counted (`maxScaledDown` and `totalScaleDownCount` upstream, the smaller of the two).
pub fn old_scale_down(
    replicas: i32,
    max_unavailable: i32,
    all_replicas: i32,
    new_replicas: i32,
    new_available: i32,
    all_available: i32,
) -> i32 {
    let min_available = replicas - max_unavailable;
    let new_unavailable = (new_replicas - new_available).max(0);
    let max_scaled_down = all_replicas - min_available - new_unavailable;
    let by_availability = all_available - min_available;
    max_scaled_down.min(by_availability).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> IntOrString {
        IntOrString::String(v.into())
    }

    #[test]
    fn surge_rounds_up_and_unavailable_rounds_down() {
        // (case, maxSurge, maxUnavailable, replicas, (surge, unavailable))
        let rows = [
            ("25% of 4", s("25%"), s("25%"), 4, (1, 1)),
            ("25% of 2", s("25%"), s("25%"), 2, (1, 0)),
            ("25% of 10", s("25%"), s("25%"), 10, (3, 2)),
            (
                "integers",
                IntOrString::Int(2),
                IntOrString::Int(1),
                5,
                (2, 1),
            ),
            ("both zero", IntOrString::Int(0), s("0%"), 3, (0, 1)),
            ("10% of 1", s("10%"), s("10%"), 1, (1, 0)),
        ];
        for (case, surge, unavailable, replicas, want) in rows {
            assert_eq!(
                fenceposts(Some(&surge), Some(&unavailable), replicas),
                want,
                "{case}"
            );
        }
    }

    #[test]
    fn the_new_set_grows_within_the_surge() {
        // (case, replicas, maxSurge, new, all, want)
        let rows = [
            ("room for one", 4, 1, 0, 4, 1),
            ("no room", 4, 1, 1, 5, 1),
            ("room for all", 2, 2, 0, 2, 2),
            ("scaled down to replicas", 2, 1, 3, 3, 2),
        ];
        for (case, replicas, surge, new, all, want) in rows {
            assert_eq!(new_rs_replicas(replicas, surge, new, all), want, "{case}");
        }
    }

    #[test]
    fn old_sets_shrink_only_above_min_available() {
        // (case, replicas, maxUnavailable, all, new, newAvailable, allAvailable, want)
        let rows = [
            ("one may go while the surge pod starts", 4, 1, 5, 1, 0, 4, 1),
            ("none may go below min available", 4, 1, 5, 1, 0, 3, 0),
            ("surge pod ready", 4, 1, 5, 1, 1, 5, 2),
            ("no unavailability allowed", 2, 0, 3, 1, 1, 3, 1),
            ("nothing available", 2, 0, 3, 1, 0, 0, 0),
        ];
        for (case, replicas, unavailable, all, new, new_av, all_av, want) in rows {
            assert_eq!(
                old_scale_down(replicas, unavailable, all, new, new_av, all_av),
                want,
                "{case}"
            );
        }
    }
}
