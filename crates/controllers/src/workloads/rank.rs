//! Which pods a controller deletes first when it has too many, as upstream's
//! `ActivePodsWithRanks` orders them: unassigned before assigned, Pending before Unknown before
//! Running, not Ready before Ready, Ready for less time before longer, more restarts before
//! fewer, newer before older.

use std::cmp::Ordering;

use k8s_openapi::api::core::v1::Pod;

use super::pods::{is_ready, ready_since};

fn assigned(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

fn phase_rank(p: &Pod) -> u8 {
    match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    }
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| {
            cs.iter().map(|c| c.restart_count).max().unwrap_or(0)
        })
}

fn created(p: &Pod) -> Option<jiff::Timestamp> {
    p.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// Orders `a` before `b` when `a` is to be deleted first.
pub fn delete_first(a: &Pod, b: &Pod) -> Ordering {
    // Unassigned < assigned.
    assigned(a)
        .cmp(&assigned(b))
        // Pending < Unknown < Running.
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        // Not ready < ready.
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        // Ready for less time < ready for longer (the later transition first).
        .then_with(|| ready_since(b).cmp(&ready_since(a)))
        // More restarts first.
        .then_with(|| restarts(b).cmp(&restarts(a)))
        // Newer first.
        .then_with(|| created(b).cmp(&created(a)))
}

/// `pods` sorted so that the first ones are deleted first.
pub fn deletion_order(mut pods: Vec<Pod>) -> Vec<Pod> {
    pods.sort_by(delete_first);
    pods
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: Option<&str>, created: &str) -> Pod {
        let mut v = json!({"metadata": {"name": name, "creationTimestamp": created},
            "spec": {"containers": []}, "status": {"phase": phase}});
        if let Some(n) = node {
            v["spec"]["nodeName"] = json!(n);
        }
        if let Some(t) = ready {
            v["status"]["conditions"] =
                json!([{"type": "Ready", "status": "True", "lastTransitionTime": t}]);
        }
        serde_json::from_value::<Pod>(v).expect("a pod")
    }

    #[test]
    fn unassigned_pending_unready_and_newer_go_first() {
        let t0 = "2026-01-01T00:00:00Z";
        let t1 = "2026-01-01T00:01:00Z";
        // (case, pods in any order, names in deletion order)
        let rows: [(&str, Vec<Pod>, Vec<&str>); 5] = [
            (
                "unassigned before assigned",
                vec![
                    pod("a", Some("n"), "Pending", None, t0),
                    pod("u", None, "Pending", None, t0),
                ],
                vec!["u", "a"],
            ),
            (
                "pending before running",
                vec![
                    pod("r", Some("n"), "Running", None, t0),
                    pod("p", Some("n"), "Pending", None, t0),
                ],
                vec!["p", "r"],
            ),
            (
                "not ready before ready",
                vec![
                    pod("ready", Some("n"), "Running", Some(t0), t0),
                    pod("not", Some("n"), "Running", None, t0),
                ],
                vec!["not", "ready"],
            ),
            (
                "ready for less time first",
                vec![
                    pod("long", Some("n"), "Running", Some(t0), t0),
                    pod("short", Some("n"), "Running", Some(t1), t0),
                ],
                vec!["short", "long"],
            ),
            (
                "newer first",
                vec![
                    pod("old", Some("n"), "Running", Some(t0), t0),
                    pod("new", Some("n"), "Running", Some(t0), t1),
                ],
                vec!["new", "old"],
            ),
        ];
        for (case, pods, want) in rows {
            let got: Vec<String> = deletion_order(pods)
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            assert_eq!(got, want, "{case}");
        }
        let _: Value = json!(null);
    }
}
