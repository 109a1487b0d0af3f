//! `imc controller`: the ImageCache controller for cluster mode, against any Kubernetes API
//! (a kubeconfig, else the in-cluster service account), with leader election on a
//! `coordination.k8s.io/v1` Lease so several replicas can run and exactly one builds.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use imc_controllers::leader::{LeaderElection, Timings};
use imc_controllers::manager::{self, Settings};
use imc_controllers::metrics::Metrics;

use super::DataDirArg;
use super::registry_args::RegistryArgs;

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// The cluster to reconcile. Without it: the in-cluster service account, else KUBECONFIG
    /// or ~/.kube/config.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataDirArg,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Push every Ready cache's disk to this repository as an OCI artifact (`host[:port]/path`;
    /// the cache id is the tag) and record it in the ImageCache's `status.artifact`, so nodes
    /// and snapshotters fetch it by digest. Uses the registry flags.
    #[arg(long, value_name = "REF", value_parser = super::registry_args::parse_cache_registry)]
    pub cache_registry: Option<imc_api::Reference>,
    /// Take part in leader election (several replicas; one reconciles). Turn off only for a
    /// single replica.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub leader_elect: bool,
    /// Namespace of the election's Lease.
    #[arg(long, value_name = "NAMESPACE", default_value = "imc-system")]
    pub leader_election_namespace: String,
    /// Name of the election's Lease.
    #[arg(long, value_name = "NAME", default_value = "imc-controller")]
    pub leader_election_id: String,
    /// How long a leader's Lease holds without renewal before another replica takes over.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = super::server::parse_duration)]
    pub leader_election_lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops (and exits).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::server::parse_duration)]
    pub leader_election_renew_deadline: Duration,
    /// How often replicas try to take the Lease and the leader renews it.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = super::server::parse_duration)]
    pub leader_election_retry_period: Duration,
}

/// This replica's name in the election: the host name and the process id (unique per replica
/// on one machine as on a cluster, where the host name is the pod name).
fn identity() -> String {
    format!("{}_{}", super::server::hostname(), std::process::id())
}

async fn client(args: &ControllerArgs) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => super::kubeconfig_file(path).await?,
        None => kube::Config::infer().await.context(
            "finding the cluster (no --kubeconfig, no in-cluster service account, no KUBECONFIG)",
        )?,
    };
    let config = super::with_user_agent(
        config,
        concat!("imc-controller/", env!("CARGO_PKG_VERSION"), " kube-rs"),
    );
    kube::Client::try_from(config).context("creating the cluster client")
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    let timings = Timings {
        lease_duration: args.leader_election_lease_duration,
        renew_deadline: args.leader_election_renew_deadline,
        retry_period: args.leader_election_retry_period,
    };
    if args.leader_elect
        && !(timings.lease_duration > timings.renew_deadline
            && timings.renew_deadline > timings.retry_period)
    {
        anyhow::bail!(
            "leader election needs --leader-election-lease-duration > --leader-election-renew-deadline > --leader-election-retry-period"
        );
    }
    let client = client(&args).await?;
    let settings = Settings {
        data_dir: args.data.data_dir.clone(),
        node_name: super::server::hostname(),
        registry: args.registry.options()?,
        platform: args.registry.platform()?,
        jobs: args.registry.jobs,
        clock_offset: jiff::SignedDuration::ZERO,
        gib_bytes: 1 << 30,
        container_pids_limit: None,
        // kube-controller-manager publishes kube-root-ca.crt on a cluster.
        root_ca: None,
        cache_registry: args.cache_registry.clone(),
    };
    let ctx = manager::Context::new(client.clone(), settings, Arc::new(Metrics::new()))
        .context("opening the layer store")?;
    let election = args.leader_elect.then(|| {
        LeaderElection::new(
            client,
            &args.leader_election_namespace,
            &args.leader_election_id,
            &identity(),
            timings,
        )
    });
    let stop = super::server::shutdown_signal();
    tokio::pin!(stop);
    if let Some(e) = &election {
        tokio::select! {
            () = e.acquire() => {}
            () = &mut stop => return Ok(ExitCode::SUCCESS),
        }
    }
    tracing::info!("reconciling ImageCaches");
    let controller = tokio::spawn(imc_controllers::cache::run(ctx.clone()));
    let lost = async {
        match &election {
            Some(e) => e.keep().await,
            None => std::future::pending().await,
        }
    };
    let code = tokio::select! {
        () = &mut stop => ExitCode::SUCCESS,
        () = lost => {
            tracing::error!("lost the leader election: stopping so that only the leader reconciles");
            ExitCode::FAILURE
        }
        r = controller => {
            tracing::error!(result = ?r, "the ImageCache controller stopped");
            ExitCode::FAILURE
        }
    };
    imc_controllers::stopping::begin();
    ctx.stop_builds();
    ctx.remove_temp_work();
    if code == ExitCode::SUCCESS
        && let Some(e) = &election
    {
        e.release().await;
    }
    Ok(code)
}
