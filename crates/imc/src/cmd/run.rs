//! `imc run`: one container in the foreground, from a cache disk when given.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use imc_api::Reference;
use imc_layers::{LayerStore, Puller};
use imc_runtime::{
    ContainerIo, ContainerSpec, PreparedImage, Runtime, SandboxConfig, StartRequest, StartTimings,
    prepare_image,
};
use imc_snapshot::AttachedCache;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info};

use super::DataDirArg;
use super::registry_args::RegistryArgs;

#[derive(clap::Args, Debug)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    /// Cache disk (EROFS file or cache directory) to take layers from; layers it holds are
    /// never downloaded, and an image it holds needs no registry at all.
    #[arg(long, value_name = "FILE")]
    pub cache: Option<PathBuf>,
    /// Remove the container when it exits. imc run always removes its container, its rootfs
    /// and runc state on exit, Ctrl-C or SIGTERM; the flag is accepted for familiarity.
    #[arg(long)]
    pub rm: bool,
    /// Environment variable for the container (repeatable).
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Port the container listens on (sets PORT).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Print the start timings (attach, layers, rootfs, runtime) to stderr as JSON.
    #[arg(long)]
    pub timings: bool,
    #[command(flatten)]
    pub data: DataDirArg,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Image reference.
    pub image: String,
    /// Command and arguments, replacing the image's Entrypoint and Cmd (after `--`).
    #[arg(allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // Handled from the start: a Ctrl-C or SIGTERM that arrives while the container is being
    // started must not kill imc half-way (leaving mounts and an orphaned container); it is
    // forwarded to the container as soon as it runs.
    let mut signals = Signals {
        int: signal(SignalKind::interrupt())?,
        term: signal(SignalKind::terminate())?,
    };
    let reference: Reference = args
        .image
        .parse()
        .with_context(|| format!("invalid image reference {:?}", args.image))?;
    let runtime = Runtime::new(&args.data.data_dir)?;
    // What a crashed imc left behind must not stop this container from starting.
    // Whatever it could not clean it has already logged, once each.
    let r = runtime.recover().await;
    if !r.containers.is_empty() || !r.pods.is_empty() || !r.caches.unmounted.is_empty() {
        info!(containers = ?r.containers, pods = ?r.pods, caches = ?r.caches.unmounted, "cleaned up after an earlier crash");
    }

    let me = std::process::id();
    // The pid is unique among live processes, and recovery only touches dead owners' pods.
    let uid = format!("run-{me}");
    let name = "main";
    let sandbox = runtime
        .create_sandbox(&SandboxConfig::new(&uid, &uid), me)
        .await?;

    let result = start_and_wait(
        &runtime,
        &args,
        &reference,
        &sandbox,
        name,
        started,
        &mut signals,
    )
    .await;
    if let Err(e) = sandbox.remove().await {
        tracing::warn!(error = %e, "removing the pod sandbox");
    }
    result
}

async fn start_and_wait(
    runtime: &Runtime,
    args: &RunArgs,
    reference: &Reference,
    sandbox: &imc_runtime::PodSandbox,
    name: &str,
    started: Instant,
    signals: &mut Signals,
) -> anyhow::Result<ExitCode> {
    let mut timings = StartTimings::default();
    // Checked before attaching, so a bad flag leaves nothing to release.
    let env = args
        .env
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => match std::env::var(e) {
                Ok(v) => Ok((e.clone(), v)),
                Err(_) => bail!("--env {e:?}: expected NAME=VALUE"),
            },
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let me = std::process::id();
    let cache = match &args.cache {
        Some(disk) => {
            let (cache, attach) = runtime
                .attach_cache(disk, &sandbox.uid, name, me)
                .await
                .with_context(|| format!("attaching cache disk {}", disk.display()))?;
            timings.attach = attach;
            Some(cache)
        }
        None => None,
    };
    let t = Instant::now();
    let image = match prepare(args, reference, cache.as_ref()).await {
        Ok(i) => i,
        Err(e) => {
            if let Some(c) = &cache {
                let _ = runtime.release_cache(c).await;
            }
            return Err(e);
        }
    };
    timings.layers_pulled = t.elapsed();

    let spec = ContainerSpec {
        name: name.to_string(),
        command: (!args.command.is_empty()).then(|| args.command.clone()),
        args: None,
        env,
        working_dir: args.workdir.clone(),
        port: args.port,
        // Docker's defaults: its capability set and seccomp profile, no cgroup limits.
        ..Default::default()
    };
    let container = runtime
        .start(StartRequest {
            sandbox,
            container: spec,
            image,
            cache,
            io: ContainerIo::Inherit,
            owner_pid: me,
            started,
            timings,
        })
        .await?;
    if args.timings {
        eprintln!("{}", serde_json::to_string(&container.timings)?);
    }
    debug!(timings = ?container.timings, "container started");

    let exit = {
        let wait = container.wait();
        tokio::pin!(wait);
        // Armed by the first Ctrl-C/SIGTERM: a container whose init ignores the forwarded signal
        // (pid 1 without a handler) is killed after this grace period.
        let grace = tokio::time::sleep(Duration::from_secs(86400));
        tokio::pin!(grace);
        let mut armed = false;
        loop {
            tokio::select! {
                exit = &mut wait => break exit,
                _ = signals.int.recv() => {
                    let _ = container.kill("INT").await;
                    grace.as_mut().reset(tokio::time::Instant::now() + GRACE);
                    armed = true;
                }
                _ = signals.term.recv() => {
                    let _ = container.kill("TERM").await;
                    grace.as_mut().reset(tokio::time::Instant::now() + GRACE);
                    armed = true;
                }
                _ = &mut grace, if armed => {
                    debug!(container = %container.id, "grace period over, killing");
                    let _ = container.kill("KILL").await;
                    armed = false;
                }
            }
        }
    };
    let removed = container.remove().await;
    let exit = exit?;
    removed?;
    if exit.code < 0 {
        tracing::warn!("the container's exit status could not be collected");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::from(exit.code.clamp(0, 255) as u8))
}

/// The signals `imc run` forwards to its container.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

/// How long a stopped container gets to exit before it is killed.
const GRACE: Duration = Duration::from_secs(3);

/// The image's config and layers, from the cache disk or the layer store, pulling only what
/// neither holds.
async fn prepare(
    args: &RunArgs,
    reference: &Reference,
    cache: Option<&AttachedCache>,
) -> anyhow::Result<PreparedImage> {
    let store = LayerStore::open(&args.data.data_dir)?;
    let platform = args.registry.platform()?;
    if cache.is_some_and(|c| c.index.image(&reference.to_string()).is_some()) {
        // On the disk: no registry client needed (and none built, to keep the start short).
        return Ok(prepare_image(&store, None, reference, &platform, cache).await?);
    }
    let client = imc_registry::Client::new(args.registry.options()?)?;
    let puller = Puller::new(store.clone(), client, args.registry.jobs);
    Ok(prepare_image(
        &store,
        Some(&puller),
        reference,
        &args.registry.platform()?,
        cache,
    )
    .await?)
}
