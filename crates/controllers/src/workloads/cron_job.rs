//! The CronJob controller, as kube-controller-manager's (v2): it keeps `status.active` in step
//! with the CronJob's Jobs and `lastSuccessfulTime` with the last one to complete, deletes the
//! oldest finished Jobs beyond the history limits, and at each schedule time (in `timeZone`)
//! starts a Job of the template named `<cronjob>-<minutes since the epoch>`, owned by the
//! CronJob (`blockOwnerDeletion`) and annotated with
//! `batch.kubernetes.io/cronjob-scheduled-timestamp` — unless suspended, past
//! `startingDeadlineSeconds`, or Forbid with one running; Replace deletes the running ones
//! first. The rules are pure functions in [`super::cron_job_plan`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use imc_api::cron_schedule::{Schedule, ScheduleError, time_zone};
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;
use tracing::{info, warn};

use super::cron_job_plan::{self, Decision, Facts, Finished};
use super::error::{Subject, WorkloadError, is_gone_or_conflict};
use super::pods::{self, controller_of};

/// The annotation naming the time a Job was scheduled for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// What reconcile needs.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
}

/// `Some(true)` when the Job completed, `Some(false)` when it failed, `None` while it runs.
fn finished(job: &Job) -> Option<bool> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    conds
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_ == "Complete")
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The Job of `cj` scheduled at `at` (shown in the schedule's time zone, as upstream).
fn job_for(cj: &CronJob, name: &str, at: jiff::Timestamp, schedule: &Schedule) -> Job {
    let spec = cj.spec.clone();
    let template = spec.job_template;
    let tmeta = template.metadata.unwrap_or_default();
    let zoned = at.to_zoned(schedule.time_zone().clone());
    let stamp = if zoned.offset().seconds() == 0 {
        at.to_string()
    } else {
        zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    };
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.to_owned(), stamp);
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: cj.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![pods::controller_ref(
                "batch/v1",
                "CronJob",
                &cj.metadata,
            )]),
            ..Default::default()
        },
        spec: Some(template.spec.unwrap_or_default()),
        status: None,
    }
}

/// Moves one CronJob on and writes its status.
pub async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, WorkloadError> {
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = cj.metadata.namespace.clone().unwrap_or_default();
    let name = cj.metadata.name.clone().unwrap_or_default();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let subject = Subject {
        kind: "CronJob",
        namespace: ns.clone(),
        name: name.clone(),
    };
    let spec = cj.spec.clone();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await
        .map_err(subject.err("listing the jobs of"))?
        .items
        .into_iter()
        .filter(|j| controller_of(&j.metadata).is_some_and(|r| r.uid == uid))
        .collect();
    let old = cj.status.clone().unwrap_or_default();
    let mut status = CronJobStatus {
        active: None,
        last_schedule_time: old.last_schedule_time.clone(),
        last_successful_time: old.last_successful_time.clone(),
    };
    // The active list: the Jobs that exist and run.
    let mut active: Vec<ObjectReference> = Vec::new();
    let mut done: Vec<Finished> = Vec::new();
    for job in &jobs {
        match finished(job) {
            None if job.metadata.deletion_timestamp.is_none() => active.push(reference(job)),
            None => {}
            Some(ok) => {
                let completed = job.status.as_ref().and_then(|s| s.completion_time.clone());
                if ok
                    && let Some(t) = completed
                    && status
                        .last_successful_time
                        .as_ref()
                        .is_none_or(|last| last.0 < t.0)
                {
                    status.last_successful_time = Some(t);
                }
                if job.metadata.deletion_timestamp.is_none() {
                    done.push(Finished {
                        name: job.metadata.name.clone().unwrap_or_default(),
                        succeeded: ok,
                        started: job
                            .status
                            .as_ref()
                            .and_then(|s| s.start_time.as_ref())
                            .or(job.metadata.creation_timestamp.as_ref())
                            .map(|t| t.0),
                    });
                }
            }
        }
    }
    for doomed in cron_job_plan::over_history_limits(
        &done,
        spec.successful_jobs_history_limit,
        spec.failed_jobs_history_limit,
    ) {
        info!(namespace = %ns, cronjob = %name, job = %doomed, "deleting a finished job (history limit)");
        if let Err(e) = jobs_api.delete(&doomed, &DeleteParams::background()).await
            && !is_gone_or_conflict(&e)
        {
            return Err(subject.err("deleting an old job of")(e));
        }
    }
    let now = jiff::Timestamp::now();
    let created = cj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let mut wake = None::<Duration>;
    // The first lookup of a time zone reads its file from the system's zoneinfo.
    let (zone, text) = (spec.time_zone.clone(), spec.schedule.clone());
    let schedule = tokio::task::spawn_blocking(move || {
        time_zone(zone.as_deref()).and_then(|tz| Schedule::parse(&text, tz))
    })
    .await
    .unwrap_or_else(|e| Err(ScheduleError(format!("reading the schedule: {e}"))));
    match (&schedule, spec.suspend == Some(true)) {
        (_, true) => {}
        (Err(e), false) => {
            warn!(namespace = %ns, cronjob = %name, error = %e, "a CronJob's schedule cannot be used");
        }
        (Ok(schedule), false) => {
            let names: Vec<String> = active.iter().filter_map(|r| r.name.clone()).collect();
            let facts = Facts {
                schedule,
                created,
                last_schedule: status.last_schedule_time.as_ref().map(|t| t.0),
                starting_deadline: spec.starting_deadline_seconds,
                policy: spec.concurrency_policy.as_deref().unwrap_or("Allow"),
                active: &names,
                name: &name,
            };
            match cron_job_plan::decide(&facts, now) {
                Err(e) => {
                    warn!(namespace = %ns, cronjob = %name, error = %e, "an invalid schedule")
                }
                Ok(Decision::Wait | Decision::AlreadyStarted) => {}
                Ok(Decision::TooLate(at)) => {
                    info!(namespace = %ns, cronjob = %name, %at, "missed scheduled time to start a job");
                }
                Ok(Decision::Forbidden) => {
                    info!(namespace = %ns, cronjob = %name, "not starting job because prior execution is running and concurrency policy is Forbid");
                }
                Ok(Decision::Start {
                    at,
                    job,
                    replace,
                    too_many_missed,
                }) => {
                    if too_many_missed {
                        warn!(namespace = %ns, cronjob = %name, "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew");
                    }
                    if replace {
                        for r in active.drain(..) {
                            let n = r.name.unwrap_or_default();
                            if let Err(e) = jobs_api.delete(&n, &DeleteParams::background()).await
                                && !is_gone_or_conflict(&e)
                            {
                                return Err(subject.err("replacing a job of")(e));
                            }
                        }
                    }
                    let made = match jobs_api
                        .create(&PostParams::default(), &job_for(&cj, &job, at, schedule))
                        .await
                    {
                        Ok(j) => Some(j),
                        Err(kube::Error::Api(s)) if s.code == 409 => jobs_api
                            .get_opt(&job)
                            .await
                            .map_err(subject.err("reading a job of"))?
                            .filter(|j| controller_of(&j.metadata).is_some_and(|r| r.uid == uid)),
                        // The namespace is going away.
                        Err(kube::Error::Api(s)) if s.code == 403 => None,
                        Err(e) => return Err(subject.err("creating a job for")(e)),
                    };
                    if let Some(j) = made {
                        info!(namespace = %ns, cronjob = %name, job = %job, "created job");
                        if !active.iter().any(|r| r.uid == j.metadata.uid) {
                            active.push(reference(&j));
                        }
                    }
                    status.last_schedule_time = Some(Time(at));
                }
            }
            wake = Some(cron_job_plan::next_wake(
                schedule,
                created,
                status.last_schedule_time.as_ref().map(|t| t.0),
                now,
            ));
        }
    }
    active.sort_by(|a, b| a.name.cmp(&b.name));
    status.active = (!active.is_empty()).then_some(active);
    let mut old_sorted = old.clone();
    if let Some(a) = old_sorted.active.as_mut() {
        a.sort_by(|x, y| x.name.cmp(&y.name));
    }
    let same_active = |a: &Option<Vec<ObjectReference>>, b: &Option<Vec<ObjectReference>>| {
        let uids = |v: &Option<Vec<ObjectReference>>| -> Vec<Option<String>> {
            v.iter().flatten().map(|r| r.uid.clone()).collect()
        };
        uids(a) == uids(b)
    };
    let changed = !same_active(&status.active, &old_sorted.active)
        || status.last_schedule_time != old.last_schedule_time
        || status.last_successful_time != old.last_successful_time;
    if changed {
        let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
        // Merge patch replaces the whole list; `null` clears it.
        let patch = json!({"status": {
            "active": status.active,
            "lastScheduleTime": status.last_schedule_time,
            "lastSuccessfulTime": status.last_successful_time,
        }});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_gone_or_conflict(&e) => {}
            Err(e) => return Err(subject.err("writing the status of")(e)),
        }
    }
    Ok(match wake {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

/// Retries a failed CronJob after a while.
pub fn error_policy(_cj: Arc<CronJob>, e: &WorkloadError, _ctx: Arc<Context>) -> Action {
    warn!(error = %e, "reconciling a CronJob");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the controller until the process ends.
pub async fn run(client: kube::Client) {
    let cron_jobs: Api<CronJob> = Api::all(client.clone());
    let jobs: Api<Job> = Api::all(client.clone());
    let ctx = Arc::new(Context { client });
    Controller::new(cron_jobs, watcher::Config::default())
        .owns(jobs, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
