//! The pure rules of upstream's StatefulSet controller: pods `<sts>-<ordinal>` for the
//! ordinals `[start, start + replicas)`; with OrderedReady each one is created only once every
//! lower one is Running and Ready, and surplus pods go one at a time from the highest ordinal;
//! with Parallel all at once; a RollingUpdate replaces one pod at a time from the highest
//! ordinal down to `partition`, each only once the ones above it are healthy again; and the
//! status counts.

use k8s_openapi::api::core::v1::Pod;

use super::pods::{self, availability, is_ready};

/// The label naming the pod (`statefulset.kubernetes.io/pod-name`).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with the pod's ordinal (`apps.kubernetes.io/pod-index`).
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The ordinal of a pod named `<set>-<n>`, if it is one of the set's.
pub fn ordinal(set: &str, pod: &str) -> Option<i32> {
    let n = pod.strip_prefix(set)?.strip_prefix('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0'))
    {
        return None;
    }
    n.parse().ok()
}

/// What the spec asks for.
#[derive(Debug, Clone)]
pub struct Want {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `spec.ordinals.start`.
    pub start: i32,
    /// `podManagementPolicy: Parallel`.
    pub parallel: bool,
    /// The RollingUpdate partition; `None` for OnDelete.
    pub partition: Option<i32>,
    /// `spec.minReadySeconds`.
    pub min_ready_seconds: i64,
    /// The revision (name) of the current template.
    pub update_revision: String,
}

/// One step of a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the pod with this ordinal.
    Create(i32),
    /// Delete the pod with this name.
    Delete(String),
}

fn revision_of(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(super::daemon_set_plan::REVISION_LABEL)
        .map(String::as_str)
}

fn terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

fn running_and_ready(p: &Pod) -> bool {
    pods::phase(p) == "Running" && is_ready(p)
}

fn finished(p: &Pod) -> bool {
    matches!(pods::phase(p), "Succeeded" | "Failed")
}

/// The steps of one pass over the set's pods (`(ordinal, pod)`), in upstream's order.
pub fn steps(want: &Want, pods: &[(i32, Pod)], now: jiff::Timestamp) -> Vec<Step> {
    let mut out = Vec::new();
    let monotonic = !want.parallel;
    let end = want.start + want.replicas.max(0);
    let at = |ord: i32| pods.iter().find(|(o, _)| *o == ord).map(|(_, p)| p);
    let healthy = |p: &Pod| {
        running_and_ready(p)
            && availability(p, want.min_ready_seconds, now).is_ok()
            && !terminating(p)
    };
    // Replicas, lowest first.
    for ord in want.start..end {
        match at(ord) {
            None => {
                out.push(Step::Create(ord));
                if monotonic {
                    return out;
                }
            }
            Some(p) if finished(p) && !terminating(p) => {
                out.push(Step::Delete(p.metadata.name.clone().unwrap_or_default()));
                if monotonic {
                    return out;
                }
            }
            Some(p) if monotonic && !healthy(p) => return out,
            Some(_) => {}
        }
    }
    // Surplus pods, highest first.
    let mut condemned: Vec<&(i32, Pod)> = pods
        .iter()
        .filter(|(o, _)| *o < want.start || *o >= end)
        .collect();
    condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));
    for (_, p) in condemned {
        if terminating(p) {
            if monotonic {
                return out;
            }
            continue;
        }
        out.push(Step::Delete(p.metadata.name.clone().unwrap_or_default()));
        if monotonic {
            return out;
        }
    }
    // Rolling update from the highest ordinal down to the partition.
    if let Some(partition) = want.partition {
        let lowest = want.start + partition.max(0);
        for ord in (lowest..end).rev() {
            let Some(p) = at(ord) else { return out };
            if revision_of(p) != Some(want.update_revision.as_str()) && !terminating(p) {
                out.push(Step::Delete(p.metadata.name.clone().unwrap_or_default()));
                return out;
            }
            if !healthy(p) {
                return out;
            }
        }
    }
    out
}

/// The revision a new pod with ordinal `ord` gets: the current one below the partition, the
/// update revision from it on.
pub fn revision_for(want: &Want, current_revision: &str, ord: i32) -> String {
    match want.partition {
        Some(p) if ord < want.start + p => current_revision.to_owned(),
        _ => want.update_revision.clone(),
    }
}

/// The status counts of the set's live pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Pods that exist and are not finished.
    pub replicas: i32,
    /// Running and Ready.
    pub ready: i32,
    /// Ready for `minReadySeconds`.
    pub available: i32,
    /// On the current revision.
    pub current: i32,
    /// On the update revision.
    pub updated: i32,
}

/// Counts `pods` against the two revisions.
pub fn counts(
    pods: &[(i32, Pod)],
    current_revision: &str,
    update_revision: &str,
    min_ready_seconds: i64,
    now: jiff::Timestamp,
) -> Counts {
    let mut c = Counts::default();
    for (_, p) in pods.iter().filter(|(_, p)| !finished(p) && !terminating(p)) {
        c.replicas += 1;
        if running_and_ready(p) {
            c.ready += 1;
            if availability(p, min_ready_seconds, now).is_ok() {
                c.available += 1;
            }
        }
        if revision_of(p) == Some(current_revision) {
            c.current += 1;
        }
        if revision_of(p) == Some(update_revision) {
            c.updated += 1;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(ord: i32, rev: &str, state: &str) -> (i32, Pod) {
        let mut v = json!({"metadata": {"name": format!("db-{ord}"),
            "labels": {"controller-revision-hash": rev}},
            "spec": {"containers": []}, "status": {"phase": "Running"}});
        match state {
            "ready" => {
                v["status"]["conditions"] = json!([{"type": "Ready", "status": "True",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]);
            }
            "pending" => v["status"]["phase"] = json!("Pending"),
            "failed" => v["status"]["phase"] = json!("Failed"),
            "terminating" => v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z"),
            _ => {}
        }
        (ord, serde_json::from_value(v).expect("a pod"))
    }

    fn want(replicas: i32, parallel: bool, partition: Option<i32>) -> Want {
        Want {
            replicas,
            start: 0,
            parallel,
            partition,
            min_ready_seconds: 0,
            update_revision: "new".into(),
        }
    }

    #[test]
    fn ordinals_come_from_names() {
        // (pod name, ordinal)
        let rows = [
            ("db-0", Some(0)),
            ("db-12", Some(12)),
            ("db-", None),
            ("db-01", None),
            ("db-x", None),
            ("dbx-1", None),
            ("db-1-2", None),
        ];
        for (name, want) in rows {
            assert_eq!(ordinal("db", name), want, "{name}");
        }
    }

    /// (case, want, pods, steps)
    type Row<'a> = (&'a str, Want, Vec<(i32, Pod)>, Vec<Step>);

    #[test]
    fn ordered_ready_parallel_and_rolling_updates() {
        let now: jiff::Timestamp = "2026-01-01T00:10:00Z".parse().expect("a time");
        let del = |s: &str| Step::Delete(s.into());
        // (case, want, pods, steps)
        let rows: Vec<Row> = vec![
            (
                "first pod",
                want(3, false, Some(0)),
                vec![],
                vec![Step::Create(0)],
            ),
            (
                "waits for -0 to be Ready",
                want(3, false, Some(0)),
                vec![pod(0, "new", "pending")],
                vec![],
            ),
            (
                "then -1",
                want(3, false, Some(0)),
                vec![pod(0, "new", "ready")],
                vec![Step::Create(1)],
            ),
            (
                "parallel creates all",
                want(3, true, Some(0)),
                vec![],
                vec![Step::Create(0), Step::Create(1), Step::Create(2)],
            ),
            (
                "scale down removes the highest first",
                want(1, false, Some(0)),
                vec![
                    pod(0, "new", "ready"),
                    pod(1, "new", "ready"),
                    pod(2, "new", "ready"),
                ],
                vec![del("db-2")],
            ),
            (
                "one at a time while it terminates",
                want(1, false, Some(0)),
                vec![
                    pod(0, "new", "ready"),
                    pod(1, "new", "ready"),
                    pod(2, "new", "terminating"),
                ],
                vec![],
            ),
            (
                "parallel scale down",
                want(1, true, Some(0)),
                vec![
                    pod(0, "new", "ready"),
                    pod(1, "new", "ready"),
                    pod(2, "new", "ready"),
                ],
                vec![del("db-2"), del("db-1")],
            ),
            (
                "a failed pod is replaced",
                want(2, false, Some(0)),
                vec![pod(0, "new", "failed"), pod(1, "new", "ready")],
                vec![del("db-0")],
            ),
            (
                "rolling update starts at the top",
                want(3, false, Some(0)),
                vec![
                    pod(0, "old", "ready"),
                    pod(1, "old", "ready"),
                    pod(2, "old", "ready"),
                ],
                vec![del("db-2")],
            ),
            (
                "and waits for the new one",
                want(3, false, Some(0)),
                vec![
                    pod(0, "old", "ready"),
                    pod(1, "old", "ready"),
                    pod(2, "new", "pending"),
                ],
                vec![],
            ),
            (
                "then goes down",
                want(3, false, Some(0)),
                vec![
                    pod(0, "old", "ready"),
                    pod(1, "old", "ready"),
                    pod(2, "new", "ready"),
                ],
                vec![del("db-1")],
            ),
            (
                "the partition holds",
                want(3, false, Some(2)),
                vec![
                    pod(0, "old", "ready"),
                    pod(1, "old", "ready"),
                    pod(2, "new", "ready"),
                ],
                vec![],
            ),
            (
                "on delete leaves old pods",
                want(2, false, None),
                vec![pod(0, "old", "ready"), pod(1, "old", "ready")],
                vec![],
            ),
        ];
        for (case, w, pods, want_steps) in rows {
            assert_eq!(steps(&w, &pods, now), want_steps, "{case}");
        }
        let w = want(3, false, Some(2));
        assert_eq!(revision_for(&w, "old", 1), "old");
        assert_eq!(revision_for(&w, "old", 2), "new");
        let c = counts(
            &[
                pod(0, "old", "ready"),
                pod(1, "new", "pending"),
                pod(2, "new", "terminating"),
            ],
            "old",
            "new",
            0,
            now,
        );
        assert_eq!(
            c,
            Counts {
                replicas: 2,
                ready: 1,
                available: 1,
                current: 1,
                updated: 1
            }
        );
    }
}
