//! Subcommands. One file per command group; each turns its arguments into library calls.

mod api_forwarder;
mod cache;
mod controller;
mod explain_match;
mod image;
mod node_streams;
mod registry_args;
mod run;
mod server;
mod snapshotter;
mod webhook;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Default data directory (DESIGN §6).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/imc";

/// imc: image caches for fast container cold starts.
///
/// imc pulls images into a verified, deduplicated layer store, builds read-only cache disks from
/// them, and starts containers from those disks without pulling. `imc server` runs everything on
/// one machine behind a Kubernetes-compatible API that kubectl uses as-is.
#[derive(Parser, Debug)]
#[command(name = "imc", version, propagate_version = true)]
pub struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pull, list and remove images in the local layer store.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Build and inspect cache disks.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Run one container in the foreground, from a cache disk when given.
    Run(run::RunArgs),
    /// Run the all-in-one server: Kubernetes-compatible API, controllers and a node.
    Server(Box<server::ServerArgs>),
    /// Show which ImageCache a pod would start from, with every candidate's score.
    ExplainMatch(explain_match::ExplainMatchArgs),
    /// Cluster mode: the ImageCache controller against a cluster's API, with leader election.
    Controller(controller::ControllerArgs),
    /// Cluster mode: serve pod admission (cache choice) as an HTTPS AdmissionReview webhook.
    Webhook(webhook::WebhookArgs),
    /// Cluster mode: a containerd proxy snapshotter serving layers from local cache disks.
    Snapshotter(snapshotter::SnapshotterArgs),
}

/// Arguments every command that touches local state takes.
#[derive(clap::Args, Debug, Clone)]
pub struct DataDirArg {
    /// Where imc keeps blobs, layers, caches and state.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR, env = "IMC_DATA_DIR")]
    pub data_dir: PathBuf,
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Image(c) => image::run(c).await,
        Command::Cache(c) => cache::run(c).await,
        Command::Run(a) => run::run(a).await,
        Command::Server(a) => server::run(*a).await,
        Command::ExplainMatch(a) => explain_match::run(a).await,
        Command::Controller(a) => controller::run(a).await,
        Command::Webhook(a) => webhook::run(a).await,
        Command::Snapshotter(a) => snapshotter::run(a).await,
    }
}

/// The client configuration a kubeconfig file describes (its current context).
pub(crate) async fn kubeconfig_file(path: &Path) -> anyhow::Result<kube::Config> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .with_context(|| format!("loading {}", path.display()))
}

/// `config` sending `agent` as its User-Agent: kube-rs sends none, and the API server names a
/// write's field manager after it.
pub(crate) fn with_user_agent(mut config: kube::Config, agent: &'static str) -> kube::Config {
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(agent),
    ));
    config
}
