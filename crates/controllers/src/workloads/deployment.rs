//! The Deployment controller, as kube-controller-manager's: a ReplicaSet per template
//! (`<name>-<pod-template-hash>`, revision in `deployment.kubernetes.io/revision` so `kubectl
//! rollout history|undo` work), RollingUpdate within `maxSurge` / `maxUnavailable`
//! ([`super::rolling`]), Recreate (old pods gone before new ones start), `paused`,
//! `revisionHistoryLimit`, and the status and conditions of [`super::deployment_status`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;
use tracing::{info, warn};

use super::deployment_status::{self, Pass};
use super::error::{Subject, WorkloadError, is_gone_or_conflict};
use super::pods::{self, controller_of, selector_matches};
use super::{rolling, template_hash};

/// The annotation holding a ReplicaSet's (and its Deployment's) revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The annotation holding the Deployment's replicas when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// The annotation holding replicas plus maxSurge.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Earlier revisions of a ReplicaSet brought back by a rollback.
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// Annotations of a Deployment that are not copied to its ReplicaSets.
const NOT_COPIED: [&str; 4] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    "deployment.kubernetes.io/desired-replicas",
];

/// What reconcile needs.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(0)
}

fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// Whether the ReplicaSet's controller has seen its latest spec.
fn observed(rs: &ReplicaSet) -> bool {
    rs.status.as_ref().and_then(|s| s.observed_generation) >= rs.metadata.generation
}

/// `t` without the `pod-template-hash` label, for comparing templates.
fn without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(m) = t.metadata.as_mut() {
        if let Some(l) = m.labels.as_mut() {
            l.remove(template_hash::LABEL);
        }
        if m.labels.as_ref().is_some_and(BTreeMap::is_empty) {
            m.labels = None;
        }
    }
    t
}

/// The ReplicaSet of a new template.
fn new_replica_set(
    d: &Deployment,
    hash: &str,
    replicas: i32,
    revision: i64,
    max_surge: i32,
) -> ReplicaSet {
    let spec = d.spec.clone();
    let name = d.metadata.name.clone().unwrap_or_default();
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(template_hash::LABEL.into(), hash.into());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(template_hash::LABEL.into(), hash.into());
    let mut annotations: BTreeMap<String, String> = d
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .collect();
    let want = spec.replicas.unwrap_or(1);
    annotations.insert(REVISION.into(), revision.to_string());
    annotations.insert(DESIRED_REPLICAS.into(), want.to_string());
    annotations.insert(MAX_REPLICAS.into(), (want + max_surge).to_string());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{hash}")),
            namespace: d.metadata.namespace.clone(),
            labels: meta.labels.clone(),
            annotations: Some(annotations),
            owner_references: Some(vec![pods::controller_ref(
                "apps/v1",
                "Deployment",
                &d.metadata,
            )]),
            ..Default::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        },
        status: None,
    }
}

struct Sync<'a> {
    api: Api<ReplicaSet>,
    subject: &'a Subject,
    want: i32,
    max_surge: i32,
}

impl Sync<'_> {
    /// Sets a ReplicaSet's replicas (and the annotations recording why).
    async fn scale(&self, rs: &mut ReplicaSet, replicas: i32) -> Result<(), WorkloadError> {
        if spec_replicas(rs) == replicas {
            return Ok(());
        }
        let name = rs.metadata.name.clone().unwrap_or_default();
        let patch = json!({"metadata": {"annotations": {
                DESIRED_REPLICAS: self.want.to_string(),
                MAX_REPLICAS: (self.want + self.max_surge).to_string()}},
            "spec": {"replicas": replicas}});
        match self
            .api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(updated) => {
                info!(namespace = %self.subject.namespace, deployment = %self.subject.name, replicaset = %name, replicas, "scaled");
                *rs = updated;
                Ok(())
            }
            Err(e) if is_gone_or_conflict(&e) => Ok(()),
            Err(e) => Err(self.subject.err("scaling a replica set of")(e)),
        }
    }
}

/// Claims the Deployment's ReplicaSets: adopts matching orphans, releases those that stopped
/// matching; returns the ones it controls.
async fn claim_sets(
    d: &Deployment,
    api: &Api<ReplicaSet>,
    subject: &Subject,
) -> Result<Vec<ReplicaSet>, WorkloadError> {
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let selector = d.spec.selector.clone();
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(subject.err("listing replica sets of"))?;
    let mut mine = Vec::new();
    for rs in list.items {
        let matches = selector_matches(&selector, &pods::labels(&rs.metadata));
        let name = rs.metadata.name.clone().unwrap_or_default();
        match controller_of(&rs.metadata).map(|r| r.uid.clone()) {
            Some(c) if c == uid && matches => mine.push(rs),
            Some(c) if c == uid => {
                let refs: Vec<_> = rs
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .filter(|r| r.uid != uid)
                    .cloned()
                    .collect();
                let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rs.metadata.resource_version}});
                if let Err(e) = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    && !is_gone_or_conflict(&e)
                {
                    return Err(subject.err("releasing a replica set of")(e));
                }
            }
            None if matches
                && rs.metadata.deletion_timestamp.is_none()
                && d.metadata.deletion_timestamp.is_none() =>
            {
                let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                refs.push(pods::controller_ref("apps/v1", "Deployment", &d.metadata));
                let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rs.metadata.resource_version}});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(rs) => mine.push(rs),
                    Err(e) if is_gone_or_conflict(&e) => {}
                    Err(e) => return Err(subject.err("adopting a replica set of")(e)),
                }
            }
            _ => {}
        }
    }
    Ok(mine)
}

/// Brings one Deployment's ReplicaSets to its spec and writes its status.
pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, WorkloadError> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let name = d.metadata.name.clone().unwrap_or_default();
    let subject = Subject {
        kind: "Deployment",
        namespace: ns.clone(),
        name: name.clone(),
    };
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let spec = d.spec.clone();
    let want = spec.replicas.unwrap_or(1);
    let strategy = spec.strategy.clone().unwrap_or_default();
    let recreate = strategy.type_.as_deref() == Some("Recreate");
    let (max_surge, max_unavailable) = if recreate {
        (0, 0)
    } else {
        let ru = strategy.rolling_update.clone().unwrap_or_default();
        rolling::fenceposts(ru.max_surge.as_ref(), ru.max_unavailable.as_ref(), want)
    };
    let sync = Sync {
        api: api.clone(),
        subject: &subject,
        want,
        max_surge,
    };
    let mut sets = claim_sets(&d, &api, &subject).await?;
    sets.sort_by_key(revision);
    let template = without_hash(&spec.template);
    let max_revision = sets.iter().map(revision).max().unwrap_or(0);
    let mut new_idx = sets
        .iter()
        .position(|rs| rs.spec.template.as_ref().map(without_hash) == Some(template.clone()));
    let paused = spec.paused == Some(true);
    let mut created = false;
    if !paused {
        match new_idx {
            None => {
                let old_total: i32 = sets.iter().map(spec_replicas).sum();
                let initial = if recreate {
                    0
                } else {
                    rolling::new_rs_replicas(want, max_surge, 0, old_total)
                };
                let collisions = d.status.as_ref().and_then(|s| s.collision_count);
                let hash = template_hash::compute(&spec.template, collisions);
                let rs = new_replica_set(&d, &hash, initial, max_revision + 1, max_surge);
                match api.create(&PostParams::default(), &rs).await {
                    Ok(rs) => {
                        info!(namespace = %ns, deployment = %name, replicaset = %rs.metadata.name.clone().unwrap_or_default(), "created a new replica set");
                        sets.push(rs);
                        new_idx = Some(sets.len() - 1);
                        created = true;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        // A ReplicaSet of that name with another template: count the collision
                        // so the next hash differs.
                        let d_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
                        let patch =
                            json!({"status": {"collisionCount": collisions.unwrap_or(0) + 1}});
                        d_api
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .map_err(subject.err("counting a hash collision of"))?;
                        return Ok(Action::requeue(Duration::from_secs(1)));
                    }
                    Err(kube::Error::Api(s)) if s.code == 403 => return Ok(Action::await_change()),
                    Err(e) => return Err(subject.err("creating a replica set of")(e)),
                }
            }
            Some(i) if revision(&sets[i]) < max_revision => {
                // A rollback: the old template's ReplicaSet becomes the newest revision.
                let rs = &sets[i];
                let rs_name = rs.metadata.name.clone().unwrap_or_default();
                let mut history: Vec<String> = rs
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(REVISION_HISTORY))
                    .map(|h| h.split(',').map(str::to_owned).collect())
                    .unwrap_or_default();
                history.push(revision(rs).to_string());
                let patch = json!({"metadata": {"annotations": {REVISION: (max_revision + 1).to_string(),
                    REVISION_HISTORY: history.join(",")}}});
                sets[i] = api
                    .patch(&rs_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(subject.err("updating the revision of"))?;
            }
            Some(_) => {}
        }
    }
    let new_name = new_idx.and_then(|i| sets[i].metadata.name.clone());
    // Roll out only once every ReplicaSet's controller has caught up with its last scaling,
    // so that availability is read from current counts.
    let settled = sets.iter().all(observed);
    let mut recheck = false;
    if let Some(ni) = new_idx
        && settled
        && !paused
    {
        let olds: Vec<usize> = (0..sets.len()).filter(|i| *i != ni).collect();
        if recreate {
            for &i in &olds {
                sync.scale(&mut sets[i], 0).await?;
            }
            // New pods start only once every old pod has stopped (terminating ones included).
            let old_uids: Vec<String> = olds
                .iter()
                .filter_map(|&i| sets[i].metadata.uid.clone())
                .collect();
            let pods_api: Api<k8s_openapi::api::core::v1::Pod> =
                Api::namespaced(ctx.client.clone(), &ns);
            let old_pods = pods_api
                .list(&ListParams::default())
                .await
                .map_err(subject.err("listing pods of"))?
                .items
                .into_iter()
                .filter(|p| controller_of(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid)))
                .filter(|p| !matches!(pods::phase(p), "Succeeded" | "Failed"))
                .count();
            if old_pods == 0 {
                sync.scale(&mut sets[ni], want).await?;
            } else {
                recheck = true;
            }
        } else {
            let all: i32 = sets.iter().map(spec_replicas).sum();
            let target = rolling::new_rs_replicas(want, max_surge, spec_replicas(&sets[ni]), all);
            sync.scale(&mut sets[ni], target).await?;
            let all: i32 = sets.iter().map(spec_replicas).sum();
            let min_available = want - max_unavailable;
            let new_unavailable = (spec_replicas(&sets[ni]) - available(&sets[ni])).max(0);
            let mut budget = all - min_available - new_unavailable;
            // First the old pods that are not available: they cost no availability.
            for &i in &olds {
                if budget <= 0 {
                    break;
                }
                let unhealthy = (spec_replicas(&sets[i]) - available(&sets[i])).clamp(0, budget);
                if unhealthy > 0 {
                    let r = spec_replicas(&sets[i]) - unhealthy;
                    sync.scale(&mut sets[i], r).await?;
                    budget -= unhealthy;
                }
            }
            let all: i32 = sets.iter().map(spec_replicas).sum();
            let all_available: i32 = sets.iter().map(available).sum();
            let mut down = rolling::old_scale_down(
                want,
                max_unavailable,
                all,
                spec_replicas(&sets[ni]),
                available(&sets[ni]),
                all_available,
            )
            .min(budget.max(0));
            // Oldest first.
            for &i in &olds {
                if down <= 0 {
                    break;
                }
                let n = spec_replicas(&sets[i]).min(down);
                if n > 0 {
                    let r = spec_replicas(&sets[i]) - n;
                    sync.scale(&mut sets[i], r).await?;
                    down -= n;
                }
            }
        }
        // Old ReplicaSets beyond revisionHistoryLimit, oldest first, once empty.
        let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10)).unwrap_or(0);
        let empty: Vec<&ReplicaSet> = olds
            .iter()
            .map(|&i| &sets[i])
            .filter(|rs| {
                spec_replicas(rs) == 0
                    && status_replicas(rs) == 0
                    && rs.metadata.deletion_timestamp.is_none()
            })
            .collect();
        for rs in empty.iter().take(empty.len().saturating_sub(limit)) {
            let n = rs.metadata.name.clone().unwrap_or_default();
            if let Err(e) = api.delete(&n, &DeleteParams::background()).await
                && !is_gone_or_conflict(&e)
            {
                return Err(subject.err("deleting an old replica set of")(e));
            }
        }
    } else if let Some(ni) = new_idx
        && paused
        && sets
            .iter()
            .enumerate()
            .all(|(i, rs)| i == ni || spec_replicas(rs) == 0)
    {
        // Paused: scaling still applies.
        sync.scale(&mut sets[ni], want).await?;
    }
    let now = jiff::Timestamp::now();
    let pass = Pass {
        new_rs: new_name.as_deref(),
        created,
        max_unavailable,
        now,
    };
    let status = deployment_status::compute(&d, &sets, pass);
    let d_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    if d.status.as_ref() != Some(&status) {
        let patch = json!({"status": status});
        match d_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_gone_or_conflict(&e) => {}
            Err(e) => return Err(subject.err("writing the status of")(e)),
        }
    }
    let new_revision = new_idx.map(|i| revision(&sets[i]).to_string());
    let current = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .cloned();
    if let Some(rev) = new_revision
        && current.as_ref() != Some(&rev)
    {
        let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
        match d_api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_gone_or_conflict(&e) => {}
            Err(e) => return Err(subject.err("writing the revision of")(e)),
        }
    }
    if recheck {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(match deployment_status::deadline_in(&d, &status, now) {
        Some(secs) => Action::requeue(Duration::from_secs(u64::try_from(secs).unwrap_or(1))),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// Retries a failed Deployment after a while.
pub fn error_policy(_d: Arc<Deployment>, e: &WorkloadError, _ctx: Arc<Context>) -> Action {
    warn!(error = %e, "reconciling a Deployment");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    let deployments: Api<Deployment> = Api::all(client.clone());
    let sets: Api<ReplicaSet> = Api::all(client.clone());
    let ctx = Arc::new(Context { client });
    Controller::new(deployments, watcher::Config::default())
        .owns(sets, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
