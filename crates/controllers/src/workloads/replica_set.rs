//! The ReplicaSet controller, as kube-controller-manager's: it keeps `spec.replicas` pods of
//! the template running, owned by the ReplicaSet (a controller reference with
//! `blockOwnerDeletion`), adopts matching orphans and releases pods that stopped matching,
//! creates missing pods in slow-start batches (1, 2, 4, …) and deletes extra ones in
//! upstream's rank order ([`super::rank`]), and reports `replicas`, `fullyLabeledReplicas`,
//! `readyReplicas`, `availableReplicas` (Ready for `minReadySeconds`) and
//! `observedGeneration`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;
use tracing::warn;

use super::error::{Subject, WorkloadError, is_gone_or_conflict};
use super::pods::{self, availability, controller_of, is_active, is_ready, selector_matches};
use super::rank;

/// The most pods created or deleted in one pass (upstream's `burstReplicas`).
pub const BURST: i32 = 500;
/// The first slow-start batch (upstream's `SlowStartInitialBatchSize`).
const INITIAL_BATCH: i32 = 1;

/// What reconcile needs.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
}

/// The slow-start batches creating `n` pods: 1, 2, 4, … summing to `n`.
pub fn slow_start_batches(n: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut left = n;
    let mut size = INITIAL_BATCH;
    while left > 0 {
        let b = size.min(left);
        out.push(b);
        left -= b;
        size = size.saturating_mul(2);
    }
    out
}

/// The pods of a ReplicaSet after adoption and release: active ones it controls.
async fn claim_pods(
    rs: &ReplicaSet,
    api: &Api<Pod>,
    subject: &Subject,
) -> Result<Vec<Pod>, WorkloadError> {
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let selector = rs.spec.selector.clone();
    let all = api
        .list(&ListParams::default())
        .await
        .map_err(subject.err("listing pods of"))?;
    let owner = pods::controller_ref("apps/v1", "ReplicaSet", &rs.metadata);
    let mut mine = Vec::new();
    for pod in all.items {
        let matches = selector_matches(&selector, &pods::labels(&pod.metadata));
        let controller = controller_of(&pod.metadata).map(|r| r.uid.clone());
        let name = pod.metadata.name.clone().unwrap_or_default();
        match controller {
            Some(c) if c == uid && matches => mine.push(pod),
            Some(c) if c == uid => {
                // Release: it no longer matches.
                let refs: Vec<_> = pod
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .filter(|r| r.uid != uid)
                    .cloned()
                    .collect();
                let patch = json!({"metadata": {"ownerReferences": refs,
                    "resourceVersion": pod.metadata.resource_version}});
                if let Err(e) = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    && !is_gone_or_conflict(&e)
                {
                    return Err(subject.err("releasing a pod of")(e));
                }
            }
            None if matches && is_active(&pod) && rs.metadata.deletion_timestamp.is_none() => {
                // Adopt an orphan.
                let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
                refs.push(owner.clone());
                let patch = json!({"metadata": {"ownerReferences": refs,
                    "resourceVersion": pod.metadata.resource_version}});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(p) => mine.push(p),
                    Err(e) if is_gone_or_conflict(&e) => {}
                    Err(e) => return Err(subject.err("adopting a pod of")(e)),
                }
            }
            _ => {}
        }
    }
    Ok(mine)
}

/// The status of a ReplicaSet whose active pods are `active` at `now`, and when the next pod
/// becomes available (minReadySeconds), if one will.
pub fn status_of(
    rs: &ReplicaSet,
    active: &[Pod],
    now: jiff::Timestamp,
) -> (ReplicaSetStatus, Option<i64>) {
    let spec = rs.spec.clone();
    let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0));
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut next = None::<i64>;
    let mut available = 0;
    for p in active {
        match availability(p, min_ready, now) {
            Ok(()) => available += 1,
            Err(Some(left)) => next = Some(next.map_or(left, |n| n.min(left))),
            Err(None) => {}
        }
    }
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let status = ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(count(&|p| {
            let l = pods::labels(&p.metadata);
            template_labels.iter().all(|(k, v)| l.get(k) == Some(v))
        })),
        ready_replicas: Some(count(&is_ready)),
        available_replicas: Some(available),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    };
    (status, next)
}

/// Brings one ReplicaSet to its replicas and writes its status.
pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, WorkloadError> {
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    let subject = Subject {
        kind: "ReplicaSet",
        namespace: ns.clone(),
        name: name.clone(),
    };
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mine = claim_pods(&rs, &pods_api, &subject).await?;
    let mut active: Vec<Pod> = mine.into_iter().filter(is_active).collect();
    if rs.metadata.deletion_timestamp.is_none() {
        let spec = rs.spec.clone();
        let want = spec.replicas.unwrap_or(1);
        let have = i32::try_from(active.len()).unwrap_or(i32::MAX);
        if have < want {
            let template = spec.template.unwrap_or_default();
            let owner = pods::controller_ref("apps/v1", "ReplicaSet", &rs.metadata);
            'batches: for batch in slow_start_batches((want - have).min(BURST)) {
                let creates = (0..batch).map(|_| {
                    let pod = pods::pod_from_template(&template, &name, owner.clone());
                    let api = pods_api.clone();
                    async move { api.create(&PostParams::default(), &pod).await }
                });
                for result in futures::future::join_all(creates).await {
                    match result {
                        Ok(p) => active.push(p),
                        // The namespace is going away: stop quietly.
                        Err(kube::Error::Api(s)) if s.code == 403 => break 'batches,
                        Err(e) => return Err(subject.err("creating a pod for")(e)),
                    }
                }
            }
        } else if have > want {
            let doomed: Vec<Pod> = rank::deletion_order(std::mem::take(&mut active));
            let (gone, kept) =
                doomed.split_at(usize::try_from((have - want).min(BURST)).unwrap_or(0));
            let deletes = gone.iter().map(|p| {
                let api = pods_api.clone();
                let n = p.metadata.name.clone().unwrap_or_default();
                async move { api.delete(&n, &DeleteParams::default()).await }
            });
            for result in futures::future::join_all(deletes).await {
                if let Err(e) = result
                    && !is_gone_or_conflict(&e)
                {
                    return Err(subject.err("deleting a pod of")(e));
                }
            }
            active = kept.to_vec();
        }
    }
    let (status, next) = status_of(&rs, &active, jiff::Timestamp::now());
    if rs.status.as_ref() != Some(&status) {
        let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"status": status});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_gone_or_conflict(&e) => {}
            Err(e) => return Err(subject.err("writing the status of")(e)),
        }
    }
    Ok(match next {
        Some(secs) => Action::requeue(Duration::from_secs(u64::try_from(secs.max(1)).unwrap_or(1))),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// Retries a failed ReplicaSet after a while.
pub fn error_policy(_rs: Arc<ReplicaSet>, e: &WorkloadError, _ctx: Arc<Context>) -> Action {
    warn!(error = %e, "reconciling a ReplicaSet");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    let sets: Api<ReplicaSet> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let ctx = Arc::new(Context { client });
    Controller::new(sets, watcher::Config::default())
        .owns(pods, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_starts_slow() {
        // (pods to create, batches)
        let rows = [
            (0, vec![]),
            (1, vec![1]),
            (5, vec![1, 2, 2]),
            (100, vec![1, 2, 4, 8, 16, 32, 37]),
        ];
        for (n, want) in rows {
            assert_eq!(slow_start_batches(n), want, "{n}");
        }
    }
}
