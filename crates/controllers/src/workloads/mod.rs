//! The workload controllers of kube-controller-manager, written with kube-rs so the same code
//! runs inside `imc server` and against any API server: ReplicaSets ([`replica_set`]),
//! Deployments ([`deployment`]) and Jobs ([`job`]), with their pure rules in their own files
//! (pod ranking, rolling-update arithmetic, Deployment status, Job outcome, template hash).
//! Garbage collection and deletion propagation are done by `imc server`'s API server
//! (`imc_apiserver::garbage_collector`), where kube-controller-manager would on a cluster.

pub mod deployment;
pub mod deployment_status;
pub mod error;
pub mod job;
pub mod job_status;
pub mod pods;
pub mod rank;
pub mod replica_set;
pub mod rolling;
pub mod template_hash;

/// Runs the ReplicaSet, Deployment and Job controllers until the process ends.
pub async fn run(client: kube::Client) {
    let tasks = [
        tokio::spawn(replica_set::run(client.clone())),
        tokio::spawn(deployment::run(client.clone())),
        tokio::spawn(job::run(client)),
    ];
    for task in tasks {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "a workload controller stopped");
        }
    }
}
