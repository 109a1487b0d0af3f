//! The Job controller, as kube-controller-manager's: it runs the Job's pods (labelled
//! `job-name` / `controller-uid` by the API server, owned by the Job with `blockOwnerDeletion`),
//! up to `parallelism` at once until `completions` succeed, replaces failed pods after upstream's
//! back-off until `backoffLimit` is passed, stops at `activeDeadlineSeconds`, writes the
//! `Complete` / `Failed` conditions (with `SuccessCriteriaMet` / `FailureTarget` before them, as
//! 1.31+ does) and deletes the finished Job `ttlSecondsAfterFinished` later. The rules are pure
//! functions in [`super::job_status`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;
use tracing::{info, warn};

use super::error::{Subject, WorkloadError, is_gone_or_conflict};
use super::job_status::{self, Counts, Outcome};
use super::pods::{self, controller_of, is_active, is_ready};
use super::rank;
use super::replica_set::BURST;

/// What reconcile needs.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
}

fn finished_condition(job: &Job) -> Option<&JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

fn condition(type_: &str, reason: &str, message: &str, now: jiff::Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.to_owned(),
        status: "True".to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// When the last of `failed` pods stopped.
fn last_failure(failed: &[&Pod]) -> Option<jiff::Timestamp> {
    failed
        .iter()
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .filter_map(|c| {
                    c.state
                        .as_ref()?
                        .terminated
                        .as_ref()?
                        .finished_at
                        .as_ref()
                        .map(|t| t.0)
                })
                .chain(p.metadata.creation_timestamp.as_ref().map(|t| t.0))
        })
        .max()
}

async fn delete_pods(
    api: &Api<Pod>,
    doomed: &[Pod],
    subject: &Subject,
) -> Result<(), WorkloadError> {
    let deletes = doomed.iter().map(|p| {
        let api = api.clone();
        let n = p.metadata.name.clone().unwrap_or_default();
        async move { api.delete(&n, &DeleteParams::background()).await }
    });
    for result in futures::future::join_all(deletes).await {
        if let Err(e) = result
            && !is_gone_or_conflict(&e)
        {
            return Err(subject.err("deleting a pod of")(e));
        }
    }
    Ok(())
}

/// Moves one Job on and writes its status.
pub async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, WorkloadError> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let subject = Subject {
        kind: "Job",
        namespace: ns.clone(),
        name: name.clone(),
    };
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let spec = job.spec.clone().unwrap_or_default();
    let selector = pods::selector_string(&spec.selector.clone().unwrap_or_default());
    let mine: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(subject.err("listing pods of"))?
        .items
        .into_iter()
        .filter(|p| controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let active: Vec<Pod> = mine.iter().filter(|p| is_active(p)).cloned().collect();
    let now = jiff::Timestamp::now();
    if let Some(done) = finished_condition(&job) {
        delete_pods(&pods_api, &active, &subject).await?;
        let Some(ttl) = spec.ttl_seconds_after_finished else {
            return Ok(Action::await_change());
        };
        let finished = job
            .status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref())
            .or(done.last_transition_time.as_ref())
            .map_or(now.as_second(), |t| t.0.as_second());
        let left = finished + i64::from(ttl) - now.as_second();
        if left > 0 {
            return Ok(Action::requeue(Duration::from_secs(
                u64::try_from(left).unwrap_or(1),
            )));
        }
        info!(namespace = %ns, job = %name, "deleting a finished job (ttlSecondsAfterFinished)");
        match jobs.delete(&name, &DeleteParams::foreground()).await {
            Ok(_) => {}
            Err(e) if is_gone_or_conflict(&e) => {}
            Err(e) => return Err(subject.err("deleting")(e)),
        }
        return Ok(Action::await_change());
    }
    let old = job.status.clone().unwrap_or_default();
    let failed_pods: Vec<&Pod> = mine.iter().filter(|p| pods::phase(p) == "Failed").collect();
    let n = |x: usize| i32::try_from(x).unwrap_or(i32::MAX);
    let counts = Counts {
        active: n(active.len()),
        succeeded: n(mine
            .iter()
            .filter(|p| pods::phase(p) == "Succeeded")
            .count())
        .max(old.succeeded.unwrap_or(0)),
        failed: n(failed_pods.len()).max(old.failed.unwrap_or(0)),
        restarts: active
            .iter()
            .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
            .flatten()
            .map(|c| c.restart_count)
            .sum(),
    };
    let suspended = spec.suspend == Some(true);
    let start = old
        .start_time
        .as_ref()
        .map(|t| t.0)
        .or((!suspended).then_some(now));
    let active_for = start.map(|s| now.as_second() - s.as_second());
    let mut status = JobStatus {
        active: Some(counts.active),
        ready: Some(n(active.iter().filter(|p| is_ready(p)).count())),
        succeeded: Some(counts.succeeded),
        failed: Some(counts.failed),
        start_time: start.map(Time),
        conditions: old.conditions.clone(),
        ..Default::default()
    };
    let mut requeue = None::<Duration>;
    match job_status::outcome(&spec, counts, active_for) {
        Outcome::Complete => {
            delete_pods(&pods_api, &active, &subject).await?;
            let conditions = status.conditions.get_or_insert_with(Vec::new);
            conditions.push(condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ));
            conditions.push(condition(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            ));
            status.completion_time = Some(Time(now));
            status.active = Some(0);
            info!(namespace = %ns, job = %name, "job complete");
        }
        Outcome::Failed { reason, message } => {
            delete_pods(&pods_api, &active, &subject).await?;
            let conditions = status.conditions.get_or_insert_with(Vec::new);
            conditions.push(condition("FailureTarget", reason, message, now));
            conditions.push(condition("Failed", reason, message, now));
            status.active = Some(0);
            info!(namespace = %ns, job = %name, reason, "job failed");
        }
        Outcome::Running { want_active } if counts.active < want_active => {
            let wait = last_failure(&failed_pods)
                .map(|t| {
                    let due = t.as_second()
                        + i64::try_from(job_status::backoff(counts.failed).as_secs()).unwrap_or(0);
                    due - now.as_second()
                })
                .filter(|left| *left > 0);
            if let Some(left) = wait {
                requeue = Some(Duration::from_secs(u64::try_from(left).unwrap_or(1)));
            } else {
                let template = spec.template.clone();
                let owner = pods::controller_ref("batch/v1", "Job", &job.metadata);
                let creates = (0..(want_active - counts.active).min(BURST)).map(|_| {
                    let pod = pods::pod_from_template(&template, &name, owner.clone());
                    let api = pods_api.clone();
                    async move { api.create(&PostParams::default(), &pod).await }
                });
                let mut made = 0;
                for result in futures::future::join_all(creates).await {
                    match result {
                        Ok(_) => made += 1,
                        Err(kube::Error::Api(s)) if s.code == 403 => {}
                        Err(e) => return Err(subject.err("creating a pod for")(e)),
                    }
                }
                status.active = Some(counts.active + made);
            }
        }
        Outcome::Running { want_active } if counts.active > want_active => {
            let extra = usize::try_from(counts.active - want_active).unwrap_or(0);
            let doomed: Vec<Pod> = rank::deletion_order(active.clone())
                .into_iter()
                .take(extra)
                .collect();
            delete_pods(&pods_api, &doomed, &subject).await?;
            status.active = Some(want_active);
        }
        Outcome::Running { .. } => {}
    }
    if job.status.as_ref() != Some(&status) {
        let patch = json!({"status": status});
        match jobs
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_gone_or_conflict(&e) => {}
            Err(e) => return Err(subject.err("writing the status of")(e)),
        }
    }
    if let (Some(deadline), Some(t)) = (spec.active_deadline_seconds, active_for) {
        let left = Duration::from_secs(u64::try_from((deadline - t).max(1)).unwrap_or(1));
        requeue = Some(requeue.map_or(left, |r| r.min(left)));
    }
    Ok(Action::requeue(requeue.unwrap_or(Duration::from_secs(300))))
}

/// Retries a failed Job after a while.
pub fn error_policy(_job: Arc<Job>, e: &WorkloadError, _ctx: Arc<Context>) -> Action {
    warn!(error = %e, "reconciling a Job");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    let jobs: Api<Job> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let ctx = Arc::new(Context { client });
    Controller::new(jobs, watcher::Config::default())
        .owns(pods, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
