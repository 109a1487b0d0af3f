//! `imc snapshotter`: a containerd proxy snapshotter serving layers from the cache disks under
//! `DIR/caches/` (docs/snapshotter.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use imc_snapshotter::ImcSnapshotter;

use super::DataDirArg;
use super::registry_args::RegistryArgs;

/// Arguments of `imc snapshotter`.
#[derive(clap::Args, Debug)]
pub struct SnapshotterArgs {
    #[command(flatten)]
    pub data: DataDirArg,
    /// Unix socket to serve containerd's snapshots API on (`address` of the proxy plugin).
    #[arg(long, value_name = "PATH", default_value = "/run/imc/snapshotter.sock")]
    pub socket: PathBuf,
    /// Cluster wiring: watch ImageCaches through this kubeconfig, label this node with the
    /// caches it holds and delete disks whose ImageCache is gone. Without it, the in-cluster
    /// service account is used when running in a pod; otherwise the snapshotter runs alone.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Node to label with its caches [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Repository holding cache disks as OCI artifacts (`host[:port]/path`, as given to the
    /// controller): Ready caches' disks are fetched from it by digest into `DIR/caches/` (all
    /// Ready caches, or those whose `imc.dev/prefetch-node-selector` annotation matches this
    /// node's labels). Needs the cluster wiring (`--kubeconfig` or in-cluster); artifacts named
    /// in other repositories are refused.
    #[arg(long, value_name = "REF", value_parser = super::registry_args::parse_cache_registry)]
    pub cache_registry: Option<imc_api::Reference>,
    /// How to reach the cache registry (credentials, plain HTTP, insecure, mirrors).
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(args: SnapshotterArgs) -> anyhow::Result<ExitCode> {
    let prefetch = match &args.cache_registry {
        Some(registry) => {
            let client = imc_registry::Client::new(args.registry.options()?)
                .context("building the cache registry client")?;
            Some(imc_snapshotter::cluster::Prefetch {
                registry: registry.clone(),
                fetcher: imc_registry::DiskFetcher::new(client),
            })
        }
        None => None,
    };
    let data_dir = args.data.data_dir.clone();
    let snapshotter = tokio::task::spawn_blocking(move || ImcSnapshotter::open(&data_dir))
        .await?
        .with_context(|| {
            format!(
                "opening the snapshotter in {}",
                args.data.data_dir.display()
            )
        })?;
    let status = {
        let s = snapshotter.clone();
        tokio::task::spawn_blocking(move || s.status()).await??
    };
    tracing::info!(
        disks = status.disks.len(),
        snapshots = status.snapshots.values().sum::<usize>(),
        "snapshotter ready"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let cluster = match cluster_client(&args).await? {
        Some(client) => {
            let node = args
                .node_name
                .clone()
                .unwrap_or_else(super::server::hostname);
            let caches = args.data.data_dir.join("caches");
            let mut rx = stop_rx.clone();
            Some(tokio::spawn(imc_snapshotter::cluster::run(
                client,
                node,
                snapshotter.clone(),
                caches,
                prefetch,
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            )))
        }
        None => {
            if let Some(r) = &args.cache_registry {
                anyhow::bail!(
                    "--cache-registry {r} needs the cluster wiring: give --kubeconfig (or run in a pod with a service account) so the snapshotter can read the ImageCaches"
                );
            }
            None
        }
    };
    // Printed on stdout so scripts (and tests) know when containerd can connect.
    println!(
        "serving containerd snapshots API on {}",
        args.socket.display()
    );
    let mut rx = stop_rx.clone();
    let serving = imc_snapshotter::serve(snapshotter, &args.socket, async move {
        let _ = rx.wait_for(|s| *s).await;
    });
    tokio::pin!(serving);
    tokio::select! {
        r = &mut serving => r.context("serving the snapshots API")?,
        _ = super::server::shutdown_signal() => {
            let _ = stop_tx.send(true);
            serving.await.context("serving the snapshots API")?;
        }
    }
    let _ = stop_tx.send(true);
    if let Some(c) = cluster {
        let _ = c.await;
    }
    Ok(ExitCode::SUCCESS)
}

/// The cluster's client: `--kubeconfig`, else the in-cluster service account, else none.
async fn cluster_client(args: &SnapshotterArgs) -> anyhow::Result<Option<kube::Client>> {
    let config = if let Some(path) = &args.kubeconfig {
        super::kubeconfig_file(path).await?
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        kube::Config::incluster().context("loading the in-cluster configuration")?
    } else {
        return Ok(None);
    };
    Ok(Some(
        kube::Client::try_from(config).context("creating the cluster client")?,
    ))
}
