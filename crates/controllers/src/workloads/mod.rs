//! The workload controllers of kube-controller-manager, written with kube-rs so the same code
//! runs inside `imc server` and against any API server: ReplicaSets ([`replica_set`]),
//! Deployments ([`deployment`]), Jobs ([`job`]), DaemonSets ([`daemon_set`]), StatefulSets
//! ([`stateful_set`]) and CronJobs ([`cron_job`]), with their pure rules in their own files (pod ranking, rolling-update
//! arithmetic, Deployment status, Job outcome, template hash, daemon node fit and rollout,
//! stateful ordering, cron schedule decisions) and the ControllerRevisions of DaemonSets and
//! StatefulSets in [`history`].
//! Garbage collection and deletion propagation are done by `imc server`'s API server
//! (`imc_apiserver::garbage_collector`), where kube-controller-manager would on a cluster.

pub mod cron_job;
pub mod cron_job_plan;
pub mod daemon_set;
pub mod daemon_set_plan;
pub mod deployment;
pub mod deployment_status;
pub mod error;
pub mod history;
pub mod job;
pub mod job_status;
pub mod pods;
pub mod rank;
pub mod replica_set;
pub mod rolling;
pub mod stateful_set;
pub mod stateful_set_plan;
pub mod template_hash;

/// Runs the ReplicaSet, Deployment, Job, DaemonSet, StatefulSet and CronJob controllers until
/// the process ends.
pub async fn run(client: kube::Client) {
    let tasks = [
        tokio::spawn(replica_set::run(client.clone())),
        tokio::spawn(deployment::run(client.clone())),
        tokio::spawn(job::run(client.clone())),
        tokio::spawn(daemon_set::run(client.clone())),
        tokio::spawn(stateful_set::run(client.clone())),
        tokio::spawn(cron_job::run(client)),
    ];
    for task in tasks {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "a workload controller stopped");
        }
    }
}
