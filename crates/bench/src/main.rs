//! `imc-bench`: the benchmark harness of DESIGN §7. It measures imc against containerd 1.6 in the
//! same run and prints figure, baseline, ratio and target. See docs/benchmarks.md.

mod api_bench;
mod machine;
mod measure;
mod oci_layout;
mod pod_bench;
mod prng;
mod pull_bench;
mod rate;
mod reference_image;
mod report;
mod run_bench;
mod snapshotter_bench;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::reference_image::ReferenceImage;

/// The workspace's target directory (benchmarks run from the source tree).
const TARGET_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target");

#[derive(Parser, Debug)]
#[command(
    name = "imc-bench",
    about = "imc benchmarks against containerd 1.6, measured in the same run"
)]
struct Cli {
    /// Where the generated reference image (and the downloaded .deb) are cached.
    #[arg(long, global = true, default_value_t = format!("{TARGET_DIR}/bench-cache"))]
    cache_dir: String,
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Generate the reference image (5 layers, ~386 MB compressed) as an OCI layout, cached.
    Image {
        /// Also push it to this plain-HTTP registry (HOST:PORT) as bench/ref:v1.
        #[arg(long, value_name = "HOST:PORT")]
        push: Option<String>,
    },
    /// Cold pulls by imc and `ctr images pull`, from loopback and over a shaped link.
    Pull {
        /// Bandwidth of the shaped link (decimal units: 8MB/s = 8,000,000 bytes/s).
        #[arg(long, default_value = "8MB/s", value_parser = rate::parse_rate)]
        bandwidth: u64,
        /// Latency added to each request on the shaped link.
        #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
        latency: Duration,
        /// Runs of each loopback pull (the median is shown).
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Runs of each pull over the shaped link (each takes ~50 s at 8 MB/s).
        #[arg(long, default_value_t = 1)]
        link_runs: u32,
        /// The imc binary to measure.
        #[arg(long, default_value_t = format!("{TARGET_DIR}/release/imc"))]
        imc: String,
        /// Passed to `imc image pull --jobs`.
        #[arg(long)]
        jobs: Option<u32>,
        /// Where per-run containerd roots and imc data dirs are created (default: system temp).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Also write the results as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// `imc run --cache` start-to-first-output vs `runc run` on a prepared rootfs and warm `ctr run`.
    Run {
        /// Timed runs per contender, after one untimed warm-up each.
        #[arg(long, default_value_t = 10)]
        runs: u32,
        /// The imc binary to measure.
        #[arg(long, default_value_t = format!("{TARGET_DIR}/release/imc"))]
        imc: String,
        /// Where the runc bundle, containerd root and imc data dir are created.
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Also write the results as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// API server: ImageCache creates/s, list of 10,000, watch latency (imc server --api-only).
    Api {
        /// ImageCaches created one at a time, then listed.
        #[arg(long, default_value_t = 10_000)]
        objects: usize,
        /// Full lists timed.
        #[arg(long, default_value_t = 7)]
        lists: usize,
        /// Watch events timed.
        #[arg(long, default_value_t = 500)]
        watch_events: usize,
        /// The imc binary to measure.
        #[arg(long, default_value_t = format!("{TARGET_DIR}/release/imc"))]
        imc: String,
        /// Also write the results as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Pod create -> running from a Ready cache, without a cache, and containerd's cold pull + run.
    Pod {
        /// Bandwidth of the shaped link between the node and the registry.
        #[arg(long, default_value = "8MB/s", value_parser = rate::parse_rate)]
        bandwidth: u64,
        /// Latency added to each request on the shaped link.
        #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
        latency: Duration,
        /// Pods started from the Ready cache (the median is shown).
        #[arg(long, default_value_t = 10)]
        pods: usize,
        /// Skip the pod without a cache (a ~50 s cold pull over the link).
        #[arg(long)]
        no_uncached: bool,
        /// Pods use the host's network (no CNI set-up; also measures imc builds older than
        /// pod networking, which get no pod network flags).
        #[arg(long)]
        host_network: bool,
        /// After the one-by-one starts, create this many pods at once from the Ready cache and
        /// report when all run, the API's latency meanwhile and the loop devices attached
        /// (0: skip).
        #[arg(long, default_value_t = 0, value_name = "PODS")]
        burst: usize,
        /// The imc binary to measure.
        #[arg(long, default_value_t = format!("{TARGET_DIR}/release/imc"))]
        imc: String,
        /// Where the containerd root is created (default: system temp).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Also write the results as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// P9: containerd pulls and runs the reference image over the shaped link, through
    /// `imc snapshotter` with a local cache disk vs containerd's overlayfs snapshotter.
    Snapshotter {
        /// Bandwidth of the shaped link (decimal units: 8MB/s = 8,000,000 bytes/s).
        #[arg(long, default_value = "8MB/s", value_parser = rate::parse_rate)]
        bandwidth: u64,
        /// Latency added to each request on the shaped link.
        #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
        latency: Duration,
        /// Skip the CRI-into-overlayfs baseline (a second ~50 s cold pull over the link).
        #[arg(long)]
        no_cri_baseline: bool,
        /// The imc binary to measure.
        #[arg(long, default_value_t = format!("{TARGET_DIR}/release/imc"))]
        imc: String,
        /// Where the containerd roots and the imc data dir are created (default: system temp).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Also write the results as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
}

/// Prints `report` and writes it as JSON to `json` when asked.
fn finish(report: &report::Report, json: Option<PathBuf>) -> anyhow::Result<()> {
    print!("{}", report.text());
    if let Some(path) = json {
        let bytes = serde_json::to_vec_pretty(report).context("encode report")?;
        std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// A relative path would not survive `Command::current_dir`; resolve it now.
fn absolute(path: &str) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolve {path}"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cache_dir = PathBuf::from(&cli.cache_dir);
    std::fs::create_dir_all(&cache_dir)
        .with_context(|| format!("create {}", cache_dir.display()))?;
    let cache_dir = cache_dir
        .canonicalize()
        .with_context(|| format!("resolve {}", cache_dir.display()))?;
    match cli.command {
        BenchCommand::Image { push } => {
            let image = ReferenceImage::ensure(&cache_dir)?;
            print!("{}", image.describe());
            if let Some(registry) = push {
                let took = image.push(&registry)?;
                println!(
                    "pushed to {registry}/{}:{} in {:.1} s",
                    reference_image::REPOSITORY,
                    reference_image::TAG,
                    took.as_secs_f64()
                );
            }
            Ok(())
        }
        BenchCommand::Pull {
            bandwidth,
            latency,
            runs,
            link_runs,
            imc,
            jobs,
            work_dir,
            json,
        } => {
            // A relative path would not survive `Command::current_dir`; resolve it now.
            let imc = std::path::absolute(&imc).with_context(|| format!("resolve {imc}"))?;
            let options = pull_bench::PullOptions {
                cache_dir,
                work_dir,
                imc,
                bandwidth,
                latency,
                runs,
                link_runs,
                jobs,
            };
            let report = pull_bench::run(&options)?;
            println!("\n{}", report.machine.summary());
            println!(
                "imc binary {} · load average {}",
                report.imc, report.load_average
            );
            println!(
                "image {} ({} MB compressed layers)\n",
                report.image,
                reference_image::mb(report.compressed_bytes)
            );
            print!("{}", report.table());
            if let Some(path) = json {
                let bytes = serde_json::to_vec_pretty(&report).context("encode report")?;
                std::fs::write(&path, bytes)
                    .with_context(|| format!("write {}", path.display()))?;
            }
            Ok(())
        }
        BenchCommand::Run {
            runs,
            imc,
            work_dir,
            json,
        } => {
            let options = run_bench::RunOptions {
                cache_dir,
                work_dir,
                imc: absolute(&imc)?,
                runs,
                command: vec!["/bin/echo".into(), "hi".into()],
            };
            finish(&run_bench::run(&options)?, json)
        }
        BenchCommand::Api {
            objects,
            lists,
            watch_events,
            imc,
            json,
        } => {
            let options = api_bench::ApiOptions {
                imc: absolute(&imc)?,
                objects,
                lists,
                watch_events,
            };
            finish(&api_bench::run(&options)?, json)
        }
        BenchCommand::Pod {
            bandwidth,
            latency,
            pods,
            no_uncached,
            host_network,
            burst,
            imc,
            work_dir,
            json,
        } => {
            let options = pod_bench::PodOptions {
                cache_dir,
                work_dir,
                imc: absolute(&imc)?,
                bandwidth,
                latency,
                pods,
                uncached: !no_uncached,
                host_network,
                burst,
            };
            finish(&pod_bench::run(&options)?, json)
        }
        BenchCommand::Snapshotter {
            bandwidth,
            latency,
            no_cri_baseline,
            imc,
            work_dir,
            json,
        } => {
            let options = snapshotter_bench::SnapshotterOptions {
                cache_dir,
                work_dir,
                imc: absolute(&imc)?,
                bandwidth,
                latency,
                cri_baseline: !no_cri_baseline,
            };
            finish(&snapshotter_bench::run(&options)?, json)
        }
    }
}
