//! The pure rules of upstream's Job controller: when a Job is complete or has failed (and
//! why, in upstream's words), how many pods should run, and the back-off before a failed pod
//! is replaced.

use std::time::Duration;

use k8s_openapi::api::batch::v1::JobSpec;

/// What the Job's pods add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Pods neither finished nor being deleted.
    pub active: i32,
    /// Pods that succeeded.
    pub succeeded: i32,
    /// Pods that failed.
    pub failed: i32,
    /// Container restarts of the active pods (failures of `restartPolicy: OnFailure` pods).
    pub restarts: i32,
}

/// Where the Job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still running: this many pods should be active.
    Running {
        /// The active pods wanted.
        want_active: i32,
    },
    /// Done: `SuccessCriteriaMet` and `Complete`.
    Complete,
    /// Failed: `FailureTarget` and `Failed` with this reason and message.
    Failed {
        /// `BackoffLimitExceeded` or `DeadlineExceeded`.
        reason: &'static str,
        /// Upstream's message.
        message: &'static str,
    },
}

/// The back-off before the pod replacing the `failed`-th failure starts: 10 s doubled for
/// each failure after the first, at most 6 minutes (upstream's `DefaultJobPodFailureBackOff`
/// and `MaxJobPodFailureBackOff`).
pub fn backoff(failed: i32) -> Duration {
    if failed <= 0 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(failed - 1).unwrap_or(0).min(6);
    Duration::from_secs((10u64 << exp).min(360))
}

/// The Job's outcome for `counts`, `active_for` seconds after it started.
pub fn outcome(spec: &JobSpec, counts: Counts, active_for: Option<i64>) -> Outcome {
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let complete = match completions {
        Some(n) => counts.succeeded >= n,
        None => counts.succeeded > 0 && counts.active == 0,
    };
    if complete {
        return Outcome::Complete;
    }
    let failures = counts.failed + if on_failure { counts.restarts } else { 0 };
    if failures > backoff_limit {
        return Outcome::Failed {
            reason: "BackoffLimitExceeded",
            message: "Job has reached the specified backoff limit",
        };
    }
    if let (Some(deadline), Some(t)) = (spec.active_deadline_seconds, active_for)
        && t >= deadline
    {
        return Outcome::Failed {
            reason: "DeadlineExceeded",
            message: "Job was active longer than specified deadline",
        };
    }
    if spec.suspend == Some(true) {
        return Outcome::Running { want_active: 0 };
    }
    let want_active = match completions {
        Some(n) => parallelism.min(n - counts.succeeded).max(0),
        None if counts.succeeded > 0 => 0,
        None => parallelism,
    };
    Outcome::Running { want_active }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(v: serde_json::Value) -> JobSpec {
        let mut v = v;
        v["template"] = json!({"spec": {"restartPolicy": v.get("restart").cloned().unwrap_or(json!("Never")), "containers": []}});
        if let Some(m) = v.as_object_mut() {
            m.remove("restart");
        }
        serde_json::from_value(v).expect("a job spec")
    }

    fn c(active: i32, succeeded: i32, failed: i32, restarts: i32) -> Counts {
        Counts {
            active,
            succeeded,
            failed,
            restarts,
        }
    }

    #[test]
    fn outcomes_follow_upstream() {
        let failed = Outcome::Failed {
            reason: "BackoffLimitExceeded",
            message: "Job has reached the specified backoff limit",
        };
        // (case, spec, counts, seconds active, outcome)
        let rows = [
            (
                "just started",
                spec(json!({"completions": 1, "parallelism": 1})),
                c(0, 0, 0, 0),
                Some(0),
                Outcome::Running { want_active: 1 },
            ),
            (
                "one done",
                spec(json!({"completions": 1, "parallelism": 1})),
                c(0, 1, 0, 0),
                Some(5),
                Outcome::Complete,
            ),
            (
                "three of five done",
                spec(json!({"completions": 5, "parallelism": 4})),
                c(2, 3, 0, 0),
                Some(5),
                Outcome::Running { want_active: 2 },
            ),
            (
                "work queue: one done, others finishing",
                spec(json!({"parallelism": 3})),
                c(1, 1, 0, 0),
                Some(5),
                Outcome::Running { want_active: 0 },
            ),
            (
                "work queue done",
                spec(json!({"parallelism": 3})),
                c(0, 1, 0, 0),
                Some(5),
                Outcome::Complete,
            ),
            (
                "failures within the limit",
                spec(json!({"completions": 1, "backoffLimit": 1})),
                c(0, 0, 1, 0),
                Some(5),
                Outcome::Running { want_active: 1 },
            ),
            (
                "past the limit",
                spec(json!({"completions": 1, "backoffLimit": 1})),
                c(0, 0, 2, 0),
                Some(5),
                failed.clone(),
            ),
            (
                "restarts count with OnFailure",
                spec(json!({"completions": 1, "backoffLimit": 1, "restart": "OnFailure"})),
                c(1, 0, 0, 2),
                Some(5),
                failed,
            ),
            (
                "restarts do not count with Never",
                spec(json!({"completions": 1, "backoffLimit": 1})),
                c(1, 0, 0, 2),
                Some(5),
                Outcome::Running { want_active: 1 },
            ),
            (
                "deadline",
                spec(json!({"completions": 1, "activeDeadlineSeconds": 10})),
                c(1, 0, 0, 0),
                Some(10),
                Outcome::Failed {
                    reason: "DeadlineExceeded",
                    message: "Job was active longer than specified deadline",
                },
            ),
            (
                "suspended",
                spec(json!({"completions": 1, "suspend": true})),
                c(1, 0, 0, 0),
                Some(1),
                Outcome::Running { want_active: 0 },
            ),
        ];
        for (case, s, counts, active_for, want) in rows {
            assert_eq!(outcome(&s, counts, active_for), want, "{case}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_six_minutes() {
        // (failures, back-off seconds)
        let rows = [
            (0, 0),
            (1, 10),
            (2, 20),
            (3, 40),
            (6, 320),
            (7, 360),
            (50, 360),
        ];
        for (failed, secs) in rows {
            assert_eq!(backoff(failed), Duration::from_secs(secs), "{failed}");
        }
    }
}
