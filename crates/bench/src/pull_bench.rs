//! `imc-bench pull`: cold pulls of the reference image by imc and by containerd 1.6 (`ctr`), from
//! a loopback registry and through the shaping proxy, plus the bare transfer time of the link.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use imc_testkit::containerd::Containerd;
use imc_testkit::proxy::{Proxy, Shaping};
use imc_testkit::registry::{Auth, TestRegistry};
use serde::Serialize;

use crate::machine::Machine;
use crate::measure::measure;
use crate::reference_image::{REPOSITORY, ReferenceImage, TAG, mb};
use crate::report::{Figure, Target, median, render};

/// What to measure and how.
#[derive(Debug, Clone)]
pub struct PullOptions {
    pub cache_dir: PathBuf,
    /// Parent of the per-run containerd roots and imc data dirs.
    pub work_dir: Option<PathBuf>,
    /// The imc binary (built with `cargo build --release -p imc`).
    pub imc: PathBuf,
    pub bandwidth: u64,
    pub latency: Duration,
    /// Runs of each loopback pull.
    pub runs: u32,
    /// Runs of each pull over the shaped link.
    pub link_runs: u32,
    pub jobs: Option<u32>,
}

/// Everything one `imc-bench pull` measured; printed as a table and optionally saved as JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullReport {
    pub machine: Machine,
    pub image: String,
    /// The imc binary measured.
    pub imc: String,
    /// Load average (1 min) at the end of the run: other work on the machine skews figures.
    pub load_average: String,
    pub compressed_bytes: u64,
    pub transfer_bytes: u64,
    pub bandwidth_bytes_per_sec: u64,
    pub latency_ms: u64,
    pub figures: Vec<Figure>,
    /// Why imc has no figures, when it has none.
    pub imc_not_available: Option<String>,
}

impl PullReport {
    pub fn table(&self) -> String {
        render(&self.figures, self.imc_not_available.as_deref())
    }
}

/// One cold `imc image pull`.
struct ImcRun {
    seconds: f64,
    peak_rss_mb: f64,
}

struct Bench<'a> {
    options: &'a PullOptions,
    image: &'a ReferenceImage,
    imc_problem: Option<String>,
}

impl Bench<'_> {
    fn reference(host: &str) -> String {
        format!("{host}/{REPOSITORY}:{TAG}")
    }

    fn ctr_pull(&self, host: &str) -> anyhow::Result<f64> {
        let containerd = Containerd::start(self.options.work_dir.as_deref())?;
        let reference = Self::reference(host);
        let elapsed = containerd.pull(&reference, true)?;
        // Prove the pull was complete: containerd recorded the image by our manifest digest.
        let listed = containerd
            .ctr()
            .args(["images", "ls"])
            .output()
            .context("ctr images ls")?;
        if !String::from_utf8_lossy(&listed.stdout).contains(&self.image.manifest.digest) {
            bail!(
                "ctr images pull {reference} did not record manifest {}",
                self.image.manifest.digest
            );
        }
        eprintln!(
            "  ctr images pull {reference}: {:.2} s",
            elapsed.as_secs_f64()
        );
        Ok(elapsed.as_secs_f64())
    }

    /// A cold imc pull into a fresh data dir; `None` (with the reason kept) when imc cannot pull.
    fn imc_pull(&mut self, host: &str) -> anyhow::Result<Option<ImcRun>> {
        if self.imc_problem.is_some() {
            return Ok(None);
        }
        if !self.options.imc.is_file() {
            self.imc_problem = Some(format!(
                "no binary at {}; build it with cargo build --release -p imc",
                self.options.imc.display()
            ));
            return Ok(None);
        }
        let data = tempdir(self.options.work_dir.as_deref(), "imc-bench-data-")?;
        let reference = Self::reference(host);
        let mut command = Command::new(&self.options.imc);
        command
            .args(["image", "pull", "--data-dir"])
            .arg(data.path());
        command.args(["--plain-http", host, "-o", "json"]);
        if let Some(jobs) = self.options.jobs {
            command.args(["--jobs", &jobs.to_string()]);
        }
        command.arg(&reference);
        let run = measure(&mut command)?;
        if !run.success {
            let why = run
                .stderr
                .lines()
                .last()
                .unwrap_or("no message")
                .trim()
                .to_owned();
            self.imc_problem = Some(format!("imc image pull failed: {why}"));
            return Ok(None);
        }
        // Prove the pull was complete: imc reports our manifest and every layer byte.
        let report: serde_json::Value =
            serde_json::from_str(run.stdout.trim()).with_context(|| {
                format!(
                    "imc image pull -o json printed no JSON: {}",
                    run.stdout.trim()
                )
            })?;
        if report["manifestDigest"] != self.image.manifest.digest.as_str() {
            bail!(
                "imc pulled manifest {} instead of {}",
                report["manifestDigest"],
                self.image.manifest.digest
            );
        }
        let downloaded = report["downloadedBytes"].as_u64().unwrap_or(0);
        if downloaded < self.image.compressed_size() {
            bail!(
                "imc downloaded {downloaded} bytes, less than the {} of the layers",
                self.image.compressed_size()
            );
        }
        let peak_rss_mb = run.peak_rss as f64 / 1e6;
        eprintln!(
            "  imc image pull {reference}: {:.2} s, peak RSS {peak_rss_mb:.0} MB",
            run.elapsed.as_secs_f64()
        );
        Ok(Some(ImcRun {
            seconds: run.elapsed.as_secs_f64(),
            peak_rss_mb,
        }))
    }

    /// Downloads manifest, config and layers one after another over one connection with curl:
    /// the plain cost of moving the bytes through the link.
    fn sequential_download(&self, host: &str) -> anyhow::Result<f64> {
        let base = format!("http://{host}/v2/{REPOSITORY}");
        let mut command = Command::new("curl");
        command.args(["--silent", "--show-error", "--fail"]);
        command.args(["-H", "Accept: application/vnd.oci.image.manifest.v1+json"]);
        command.args(["-o", "/dev/null", &format!("{base}/manifests/{TAG}")]);
        for blob in self.image.blobs() {
            command.args(["-o", "/dev/null", &format!("{base}/blobs/{}", blob.digest)]);
        }
        let run = measure(&mut command)?;
        if !run.success {
            bail!("curl download through {host} failed: {}", run.stderr.trim());
        }
        eprintln!(
            "  curl sequential download via {host}: {:.2} s",
            run.elapsed.as_secs_f64()
        );
        Ok(run.elapsed.as_secs_f64())
    }
}

/// A new temporary directory under `parent` (or the system temp dir), removed on drop.
pub fn tempdir(parent: Option<&Path>, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix);
    match parent {
        Some(parent) => builder.tempdir_in(parent),
        None => builder.tempdir(),
    }
    .context("create a temporary directory")
}

/// Runs the whole pull benchmark.
pub fn run(options: &PullOptions) -> anyhow::Result<PullReport> {
    let image = ReferenceImage::ensure(&options.cache_dir)?;
    eprint!("{}", image.describe());
    let registry = TestRegistry::start(Auth::None);
    let pushed = image.push(&registry.host())?;
    eprintln!(
        "pushed to {} in {:.1} s",
        registry.host(),
        pushed.as_secs_f64()
    );
    let shaping = Shaping::link(options.bandwidth, options.latency);
    let proxy = Proxy::start_with(&registry.host(), shaping)
        .with_context(|| format!("start the shaping proxy in front of {}", registry.host()))?;
    let link = format!(
        "{} MB/s + {} ms link",
        options.bandwidth as f64 / 1e6,
        options.latency.as_millis()
    );

    let mut bench = Bench {
        options,
        image: &image,
        imc_problem: None,
    };
    let (mut ctr_loop, mut imc_loop, mut ctr_link, mut imc_link, mut rss) =
        (vec![], vec![], vec![], vec![], vec![]);
    for run in 1..=options.runs {
        eprintln!("loopback run {run}/{}", options.runs);
        ctr_loop.push(bench.ctr_pull(&registry.host())?);
        if let Some(imc) = bench.imc_pull(&registry.host())? {
            imc_loop.push(imc.seconds);
            rss.push(imc.peak_rss_mb);
        }
    }
    for run in 1..=options.link_runs {
        eprintln!("{link} run {run}/{}", options.link_runs);
        // What crossed the link, to see a client that fetches more than the image.
        let sent = || proxy.stats().bytes_to_client;
        let before = sent();
        ctr_link.push(bench.ctr_pull(&proxy.host_port())?);
        eprintln!("    ctr fetched {} MB over the link", mb(sent() - before));
        let before = sent();
        if let Some(imc) = bench.imc_pull(&proxy.host_port())? {
            imc_link.push(imc.seconds);
            rss.push(imc.peak_rss_mb);
            eprintln!("    imc fetched {} MB over the link", mb(sent() - before));
        }
    }
    let curl_link = if options.link_runs > 0 {
        vec![bench.sequential_download(&proxy.host_port())?]
    } else {
        vec![]
    };
    let bare = image.transfer_size() as f64 / options.bandwidth as f64;

    let figure =
        |name: String, imc: &[f64], baseline_name: &str, baseline: &[f64], target| Figure {
            name,
            unit: "s",
            imc: median(imc),
            baseline_name: baseline_name.to_owned(),
            baseline: median(baseline),
            target,
            aggregate: "median",
            imc_runs: imc.to_vec(),
            baseline_runs: baseline.to_vec(),
        };
    let mut figures = Vec::new();
    if options.runs > 0 {
        figures.push(figure(
            "cold pull, loopback".into(),
            &imc_loop,
            "ctr",
            &ctr_loop,
            Target::RatioAtMost(1.0),
        ));
    }
    if options.link_runs > 0 {
        figures.push(figure(
            format!("cold pull, {link}"),
            &imc_link,
            "ctr",
            &ctr_link,
            Target::None,
        ));
        let bare_name = format!("bytes/bandwidth ({} MB)", mb(image.transfer_size()));
        figures.push(figure(
            format!("cold pull, {link}"),
            &imc_link,
            &bare_name,
            &[bare],
            Target::RatioAtMost(1.1),
        ));
        figures.push(figure(
            format!("cold pull, {link}"),
            &imc_link,
            "curl sequential",
            &curl_link,
            Target::None,
        ));
    }
    figures.push(Figure {
        name: "peak RSS of imc image pull".into(),
        unit: "MB",
        imc: rss.iter().copied().reduce(f64::max),
        baseline_name: String::new(),
        baseline: None,
        target: Target::Below(150.0),
        aggregate: "max",
        imc_runs: rss.clone(),
        baseline_runs: vec![],
    });
    drop(proxy);
    drop(registry);
    Ok(PullReport {
        machine: Machine::describe(),
        image: format!("{REPOSITORY}:{TAG}@{}", image.manifest.digest),
        imc: options.imc.display().to_string(),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split(' ').next().map(str::to_owned))
            .unwrap_or_default(),
        compressed_bytes: image.compressed_size(),
        transfer_bytes: image.transfer_size(),
        bandwidth_bytes_per_sec: options.bandwidth,
        latency_ms: u64::try_from(options.latency.as_millis()).unwrap_or(u64::MAX),
        figures,
        imc_not_available: bench.imc_problem,
    })
}
