//! The StatefulSet controller, as kube-controller-manager's: stable pods `<sts>-<ordinal>`
//! (hostname the pod name, subdomain the `serviceName`, labelled with
//! `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index` and the revision in
//! `controller-revision-hash`), created and deleted in order or in parallel and rolled from the
//! highest ordinal honouring `partition` ([`super::stateful_set_plan`]); ControllerRevisions
//! ([`super::history`]); and the status (`replicas`, `readyReplicas`, `currentReplicas`,
//! `updatedReplicas`, `availableReplicas`, `currentRevision`, `updateRevision`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;
use tracing::warn;

use super::daemon_set_plan::REVISION_LABEL;
use super::error::{Subject, WorkloadError, is_gone_or_conflict};
use super::history::{self, Owner};
use super::pods::{self, controller_of};
use super::stateful_set_plan::{self, POD_INDEX_LABEL, POD_NAME_LABEL, Step, Want};

/// What reconcile needs.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
}

/// The template a revision recorded (its `data.spec.template` without `$patch`).
async fn revision_template(api: &Api<ControllerRevision>, name: &str) -> Option<PodTemplateSpec> {
    let rev = api.get_opt(name).await.ok()??;
    let mut t = rev.data.0.pointer("/spec/template")?.clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

/// The pod with ordinal `ord` of `template` at revision `revision`.
fn stateful_pod(set: &StatefulSet, template: &PodTemplateSpec, ord: i32, revision: &str) -> Pod {
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let name = format!("{set_name}-{ord}");
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(REVISION_LABEL.to_owned(), revision.to_owned());
    labels.insert(POD_NAME_LABEL.to_owned(), name.clone());
    labels.insert(POD_INDEX_LABEL.to_owned(), ord.to_string());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    let service = set.spec.service_name.clone().filter(|s| !s.is_empty());
    if service.is_some() {
        spec.subdomain = service;
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(labels),
            annotations: tmeta.annotations,
            finalizers: tmeta.finalizers,
            owner_references: Some(vec![pods::controller_ref(
                "apps/v1",
                "StatefulSet",
                &set.metadata,
            )]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Moves one StatefulSet a step on and writes its status.
pub async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, WorkloadError> {
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = set.metadata.namespace.clone().unwrap_or_default();
    let name = set.metadata.name.clone().unwrap_or_default();
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let subject = Subject {
        kind: "StatefulSet",
        namespace: ns.clone(),
        name: name.clone(),
    };
    let spec = set.spec.clone();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = pods::selector_string(&spec.selector);
    let mut mine: Vec<(i32, Pod)> = pods_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(subject.err("listing pods of"))?
        .items
        .into_iter()
        .filter(|p| controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
        .filter_map(|p| {
            let ord = stateful_set_plan::ordinal(&name, p.metadata.name.as_deref()?)?;
            Some((ord, p))
        })
        .collect();
    mine.sort_by_key(|(o, _)| *o);
    let live: BTreeSet<String> = mine
        .iter()
        .filter_map(|(_, p)| p.metadata.labels.as_ref()?.get(REVISION_LABEL).cloned())
        .collect();
    let owner = Owner {
        api_version: "apps/v1",
        kind: "StatefulSet",
        meta: &set.metadata,
        selector: selector.clone(),
        template: &spec.template,
        history_limit: spec.revision_history_limit.unwrap_or(10),
    };
    let update = history::sync(&ctx.client, &owner, &live, &subject).await?;
    let old = set.status.clone().unwrap_or_default();
    let mut current_revision = old
        .current_revision
        .clone()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| update.name.clone());
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate");
    let want = Want {
        replicas: spec.replicas.unwrap_or(1),
        start: spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0),
        parallel: spec.pod_management_policy.as_deref() == Some("Parallel"),
        partition: rolling.then(|| {
            spec.update_strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.partition)
                .unwrap_or(0)
        }),
        min_ready_seconds: i64::from(spec.min_ready_seconds.unwrap_or(0)),
        update_revision: update.name.clone(),
    };
    let now = jiff::Timestamp::now();
    let revisions: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    for step in stateful_set_plan::steps(&want, &mine, now) {
        match step {
            Step::Create(ord) => {
                let revision = stateful_set_plan::revision_for(&want, &current_revision, ord);
                let template = if revision == update.name {
                    spec.template.clone()
                } else {
                    match revision_template(&revisions, &revision).await {
                        Some(t) => t,
                        None => spec.template.clone(),
                    }
                };
                let revision = if template == spec.template {
                    update.name.clone()
                } else {
                    revision
                };
                let pod = stateful_pod(&set, &template, ord, &revision);
                match pods_api.create(&PostParams::default(), &pod).await {
                    Ok(_) => {}
                    Err(e) if is_gone_or_conflict(&e) => {}
                    Err(kube::Error::Api(s)) if s.code == 403 => {}
                    Err(e) => return Err(subject.err("creating a pod for")(e)),
                }
            }
            Step::Delete(pod) => {
                if let Err(e) = pods_api.delete(&pod, &DeleteParams::default()).await
                    && !is_gone_or_conflict(&e)
                {
                    return Err(subject.err("deleting a pod of")(e));
                }
            }
        }
    }
    let c = stateful_set_plan::counts(
        &mine,
        &current_revision,
        &update.name,
        want.min_ready_seconds,
        now,
    );
    let (mut current_replicas, mut next) = (c.current, None::<u64>);
    // A finished rolling update: the update revision becomes the current one.
    if rolling && c.updated == c.replicas && c.ready == c.replicas && c.replicas == want.replicas {
        current_revision = update.name.clone();
        current_replicas = c.updated;
    }
    if c.ready > c.available {
        next = Some(1);
    }
    let status = StatefulSetStatus {
        replicas: c.replicas,
        ready_replicas: Some(c.ready),
        available_replicas: Some(c.available),
        current_replicas: Some(current_replicas),
        updated_replicas: Some(c.updated),
        current_revision: Some(current_revision),
        update_revision: Some(update.name.clone()),
        observed_generation: set.metadata.generation,
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
    };
    if set.status.as_ref() != Some(&status) {
        let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
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
    Ok(Action::requeue(Duration::from_secs(next.unwrap_or(300))))
}

/// Retries a failed StatefulSet after a while.
pub fn error_policy(_set: Arc<StatefulSet>, e: &WorkloadError, _ctx: Arc<Context>) -> Action {
    warn!(error = %e, "reconciling a StatefulSet");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    let sets: Api<StatefulSet> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let ctx = Arc::new(Context { client });
    Controller::new(sets, watcher::Config::default())
        .owns(pods, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
