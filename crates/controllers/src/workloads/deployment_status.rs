//! A Deployment's status as upstream's deployment controller computes it from its ReplicaSets:
//! the counters, and the `Available` and `Progressing` conditions with upstream's reasons
//! (MinimumReplicasAvailable / MinimumReplicasUnavailable; NewReplicaSetCreated,
//! ReplicaSetUpdated, NewReplicaSetAvailable, ProgressDeadlineExceeded, DeploymentPaused,
//! DeploymentResumed).

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What the pass knows beyond the objects.
#[derive(Debug, Clone, Copy)]
pub struct Pass<'a> {
    /// The new ReplicaSet's name, if there is one.
    pub new_rs: Option<&'a str>,
    /// The new ReplicaSet was created in this pass.
    pub created: bool,
    /// `maxUnavailable` resolved (0 for Recreate).
    pub max_unavailable: i32,
    /// Now.
    pub now: jiff::Timestamp,
}

fn counts(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.clone().unwrap_or_default();
    (
        s.replicas,
        s.ready_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
    )
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: jiff::Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: Some(type_.to_owned()),
        status: Some(status.to_owned()),
        reason: Some(reason.to_owned()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Puts `new` in `list`, keeping the old transition time when the status did not change and
/// the old update time when nothing but the times changed.
fn set_condition(list: &mut Vec<DeploymentCondition>, mut new: DeploymentCondition) {
    if let Some(old) = list.iter().find(|c| c.type_ == new.type_)
        && old.status == new.status
    {
        new.last_transition_time = old.last_transition_time.clone();
        if old.reason == new.reason && old.message == new.message {
            new.last_update_time = old.last_update_time.clone();
        }
    }
    list.retain(|c| c.type_ != new.type_);
    list.push(new);
    list.sort_by(|a, b| b.type_.cmp(&a.type_));
}

/// The status of `d` with ReplicaSets `all` (the new one among them).
pub fn compute(d: &Deployment, all: &[ReplicaSet], pass: Pass<'_>) -> DeploymentStatus {
    let spec = d.spec.clone();
    let want = spec.replicas.unwrap_or(1);
    let old = d.status.clone().unwrap_or_default();
    let (mut replicas, mut ready, mut available, mut updated) = (0, 0, 0, 0);
    for rs in all {
        let (r, re, a) = counts(rs);
        replicas += r;
        ready += re;
        available += a;
        if Some(rs.metadata.name.as_deref().unwrap_or("")) == pass.new_rs {
            updated = r;
        }
    }
    let mut conditions = old.conditions.clone().unwrap_or_default();
    let now = pass.now;
    let (status, reason, message) = if available >= want - pass.max_unavailable {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    set_condition(
        &mut conditions,
        condition("Available", status, reason, message.into(), now),
    );
    let rs_name = pass.new_rs.unwrap_or("");
    let progressing = conditions
        .iter()
        .find(|c| c.type_.as_deref() == Some("Progressing"))
        .cloned();
    let old_reason = progressing.as_ref().and_then(|c| c.reason.clone());
    let complete = updated == want && available == want && replicas == want;
    let progressed = pass.created
        || updated > old.updated_replicas.unwrap_or(0)
        || ready > old.ready_replicas.unwrap_or(0)
        || available > old.available_replicas.unwrap_or(0)
        || replicas < old.replicas.unwrap_or(0);
    let deadline = spec.progress_deadline_seconds.map(i64::from);
    let next = if spec.paused == Some(true) {
        Some(condition(
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
            now,
        ))
    } else if old_reason.as_deref() == Some("DeploymentPaused") {
        Some(condition(
            "Progressing",
            "Unknown",
            "DeploymentResumed",
            "Deployment is resumed".into(),
            now,
        ))
    } else if complete && pass.new_rs.is_some() {
        Some(condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet {rs_name:?} has successfully progressed."),
            now,
        ))
    } else if pass.created {
        Some(condition(
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set {rs_name:?}"),
            now,
        ))
    } else if progressed || progressing.is_none() {
        let mut c = condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet {rs_name:?} is progressing."),
            now,
        );
        // Progress moves the update time even when the message is the same.
        if let Some(old) = &progressing
            && old.status.as_deref() == Some("True")
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
        conditions.retain(|x| x.type_.as_deref() != Some("Progressing"));
        conditions.push(c);
        conditions.sort_by(|a, b| b.type_.cmp(&a.type_));
        None
    } else {
        let since = progressing
            .as_ref()
            .and_then(|c| c.last_update_time.as_ref())
            .map(|t| t.0.as_second());
        let timed_out = old_reason.as_deref() != Some("NewReplicaSetAvailable")
            && matches!((deadline, since), (Some(dl), Some(s)) if now.as_second() - s > dl);
        timed_out.then(|| {
            condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet {rs_name:?} has timed out progressing."),
                now,
            )
        })
    };
    if let Some(c) = next {
        set_condition(&mut conditions, c);
    }
    DeploymentStatus {
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((want - available).max(0)),
        observed_generation: d.metadata.generation,
        collision_count: old.collision_count,
        conditions: Some(conditions),
        terminating_replicas: None,
    }
}

/// Seconds until `status` would pass its progress deadline, while it is progressing.
pub fn deadline_in(d: &Deployment, status: &DeploymentStatus, now: jiff::Timestamp) -> Option<i64> {
    let deadline = i64::from(d.spec.progress_deadline_seconds?);
    let c = status.conditions.as_ref()?.iter().find(|c| {
        c.type_.as_deref() == Some("Progressing") && c.status.as_deref() == Some("True")
    })?;
    if c.reason.as_deref() == Some("NewReplicaSetAvailable") {
        return None;
    }
    let since = c.last_update_time.as_ref()?.0.as_second();
    Some((since + deadline - now.as_second() + 1).max(1))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn rs(name: &str, replicas: i32, ready: i32, available: i32) -> ReplicaSet {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "status": {"replicas": replicas,
            "readyReplicas": ready, "availableReplicas": available}}),
        )
        .expect("a replica set")
    }

    fn deployment(status: Value) -> Deployment {
        serde_json::from_value(json!({"metadata": {"name": "web", "generation": 2},
            "spec": {"replicas": 2, "progressDeadlineSeconds": 600, "selector": {},
                "template": {}}, "status": status}))
        .expect("a deployment")
    }

    fn reason(s: &DeploymentStatus, t: &str) -> String {
        s.conditions
            .iter()
            .flatten()
            .find(|c| c.type_.as_deref() == Some(t))
            .and_then(|c| c.reason.clone())
            .unwrap_or_default()
    }

    #[test]
    fn conditions_use_upstreams_reasons() {
        let now: jiff::Timestamp = "2026-01-01T01:00:00Z".parse().expect("a time");
        let stale = json!({"replicas": 3, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2,
            "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                "lastUpdateTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        let pass = |created| Pass {
            new_rs: Some("web-new"),
            created,
            max_unavailable: 0,
            now,
        };
        // (case, old status, sets, created, Available reason, Progressing reason)
        let rows = [
            (
                "created",
                json!({}),
                vec![rs("web-old", 2, 2, 2), rs("web-new", 0, 0, 0)],
                true,
                "MinimumReplicasAvailable",
                "NewReplicaSetCreated",
            ),
            (
                "progress",
                json!({"replicas": 2, "updatedReplicas": 0, "availableReplicas": 2}),
                vec![rs("web-old", 2, 2, 2), rs("web-new", 1, 0, 0)],
                false,
                "MinimumReplicasAvailable",
                "ReplicaSetUpdated",
            ),
            (
                "done",
                json!({}),
                vec![rs("web-old", 0, 0, 0), rs("web-new", 2, 2, 2)],
                false,
                "MinimumReplicasAvailable",
                "NewReplicaSetAvailable",
            ),
            (
                "stuck past the deadline",
                stale,
                vec![rs("web-old", 2, 2, 2), rs("web-new", 1, 0, 0)],
                false,
                "MinimumReplicasAvailable",
                "ProgressDeadlineExceeded",
            ),
            (
                "short of pods",
                json!({}),
                vec![rs("web-new", 2, 1, 1)],
                false,
                "MinimumReplicasUnavailable",
                "ReplicaSetUpdated",
            ),
        ];
        for (case, old, sets, created, available, progressing) in rows {
            let s = compute(&deployment(old), &sets, pass(created));
            assert_eq!(reason(&s, "Available"), available, "{case}");
            assert_eq!(reason(&s, "Progressing"), progressing, "{case}");
        }
    }
}
