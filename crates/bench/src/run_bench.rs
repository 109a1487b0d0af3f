//! `imc-bench run`: start-to-first-output of `imc run --cache DISK` on the reference image, beside
//! the floor (`runc run` on an already-prepared overlay rootfs of the same layers) and
//! containerd's warm `ctr run --rm`, all measured in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use imc_testkit::containerd::Containerd;
use imc_testkit::registry::{Auth, TestRegistry};

use crate::machine::{Machine, load_average};
use crate::measure::{first_output, measure};
use crate::oci_layout::OciLayout;
use crate::pull_bench::tempdir;
use crate::reference_image::{REPOSITORY, ReferenceImage, TAG};
use crate::report::{Figure, Report, Target, median, percentile};

/// What to measure and how.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub cache_dir: PathBuf,
    pub work_dir: Option<PathBuf>,
    pub imc: PathBuf,
    /// Timed runs per contender (after one untimed warm-up run each).
    pub runs: u32,
    /// The command run in the container; its first output line is what is waited for.
    pub command: Vec<String>,
}

/// The floor: the image's layers unpacked once, mounted as one overlay, with a `runc spec`
/// bundle; each run is a bare `runc run`.
struct RuncFloor {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
}

impl RuncFloor {
    fn prepare(
        image: &ReferenceImage,
        work_dir: Option<&Path>,
        args: &[String],
    ) -> anyhow::Result<Self> {
        let dir = tempdir(work_dir, "imc-bench-runc-")?;
        let layout = OciLayout::open(&image.layout_dir);
        let mut lower = Vec::new();
        for (i, layer) in image.layers.iter().enumerate() {
            let target = dir.path().join(format!("layer{i}"));
            std::fs::create_dir_all(&target)
                .with_context(|| format!("create {}", target.display()))?;
            let blob = layout.blob_path(&layer.blob.digest);
            let run = measure(
                Command::new("tar")
                    .args(["--numeric-owner", "-xzf"])
                    .arg(&blob)
                    .arg("-C")
                    .arg(&target),
            )?;
            if !run.success {
                bail!(
                    "unpack layer {} ({}): {}",
                    layer.name,
                    layer.blob.digest,
                    run.stderr.trim()
                );
            }
            lower.push(target);
        }
        // overlayfs lists the top layer first.
        lower.reverse();
        let bundle = dir.path().join("bundle");
        let rootfs = bundle.join("rootfs");
        for sub in [&rootfs, &dir.path().join("upper"), &dir.path().join("work")] {
            std::fs::create_dir_all(sub).with_context(|| format!("create {}", sub.display()))?;
        }
        let lowerdir: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir.join(":"),
            dir.path().join("upper").display(),
            dir.path().join("work").display()
        );
        let mounted = measure(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &options])
                .arg(&rootfs),
        )?;
        if !mounted.success {
            bail!("mount the overlay rootfs: {}", mounted.stderr.trim());
        }
        let floor = Self { dir, rootfs };
        let spec = measure(
            Command::new("runc")
                .arg("spec")
                .arg("--bundle")
                .arg(&bundle),
        )?;
        if !spec.success {
            bail!("runc spec: {}", spec.stderr.trim());
        }
        let path = bundle.join("config.json");
        let text = std::fs::read_to_string(&path).context("read runc's config.json")?;
        let mut config: serde_json::Value =
            serde_json::from_str(&text).context("parse config.json")?;
        config["process"]["args"] = serde_json::json!(args);
        config["process"]["terminal"] = serde_json::json!(false);
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?).context("write config.json")?;
        Ok(floor)
    }

    fn command(&self, id: &str) -> Command {
        let mut command = Command::new("runc");
        command
            .arg("--root")
            .arg(self.dir.path().join("runc-state"))
            .args(["run", "--bundle"])
            .arg(self.dir.path().join("bundle"))
            .arg(id);
        command
    }
}

impl Drop for RuncFloor {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.rootfs).status();
    }
}

/// One timed start: seconds to first output, after checking the container printed `expect`;
/// also the last JSON line the starter printed on stderr (`imc run --timings`), if any.
fn start(mut command: Command, what: &str, expect: &str) -> anyhow::Result<(f64, Option<String>)> {
    let run = first_output(&mut command)?;
    if !run.success || !run.stdout.starts_with(expect) {
        bail!(
            "{what} failed (printed {:?}): {}",
            run.stdout,
            run.stderr.trim()
        );
    }
    let seconds = run.first_output.as_secs_f64();
    eprintln!(
        "  {what}: first output {:.1} ms, exit {:.1} ms",
        seconds * 1e3,
        run.elapsed.as_secs_f64() * 1e3
    );
    let timings = run
        .stderr
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .map(str::to_owned);
    Ok((seconds, timings))
}

/// Runs the whole start benchmark.
pub fn run(options: &RunOptions) -> anyhow::Result<Report> {
    let load_before = load_average();
    let image = ReferenceImage::ensure(&options.cache_dir)?;
    eprint!("{}", image.describe());
    let mut registry = TestRegistry::start(Auth::None);
    let host = registry.host();
    image.push(&host)?;
    let reference = format!("{host}/{REPOSITORY}:{TAG}");
    let expect = "hi";

    // imc: a cache disk built once from the registry.
    let mut imc_problem = None;
    let mut build_seconds = None;
    let data = tempdir(options.work_dir.as_deref(), "imc-bench-data-")?;
    let disk = data.path().join("ref.erofs");
    if options.imc.is_file() {
        let build = measure(
            Command::new(&options.imc)
                .args(["cache", "build", "--data-dir"])
                .arg(data.path())
                .args(["--plain-http", &host, "--image", &reference, "--output"])
                .arg(&disk),
        )?;
        if build.success {
            eprintln!("imc cache build: {:.1} s", build.elapsed.as_secs_f64());
            build_seconds = Some(build.elapsed.as_secs_f64());
        } else {
            imc_problem = Some(format!(
                "imc cache build failed: {}",
                build.stderr.lines().last().unwrap_or("no message").trim()
            ));
        }
    } else {
        imc_problem = Some(format!("no binary at {}", options.imc.display()));
    }
    let imc_command = || {
        let mut command = Command::new(&options.imc);
        command
            .args(["run", "--data-dir"])
            .arg(data.path())
            .args(["--plain-http", &host, "--cache"])
            .arg(&disk)
            .args(["--rm", "--timings", &reference, "--"])
            .args(&options.command);
        command
    };

    let floor = RuncFloor::prepare(&image, options.work_dir.as_deref(), &options.command)?;
    let containerd = Containerd::start(options.work_dir.as_deref())?;
    let pulled = containerd.pull(&reference, true)?;
    eprintln!(
        "ctr images pull (untimed preparation): {:.1} s",
        pulled.as_secs_f64()
    );
    // Neither contender may fetch anything while timed: with the registry gone, a start that
    // needed it fails instead of quietly downloading.
    registry.stop();
    let ctr_command = |id: &str| {
        let mut command = containerd.ctr();
        command
            .args(["run", "--rm", &reference, id])
            .args(&options.command);
        command
    };

    let (mut imc, mut runc, mut ctr) = (vec![], vec![], vec![]);
    let (mut imc_first, mut runc_first, mut ctr_first) = (None, None, None);
    let mut imc_timings = None;
    for i in 0..=options.runs {
        eprintln!(
            "{} {i}/{}",
            if i == 0 { "warm-up" } else { "run" },
            options.runs
        );
        if imc_problem.is_none() {
            match start(imc_command(), "imc run --cache", expect) {
                Ok((s, _)) if i == 0 => imc_first = Some(s),
                Ok((s, timings)) => {
                    imc.push(s);
                    imc_timings = timings.or(imc_timings);
                }
                Err(e) => imc_problem = Some(format!("{e:#}")),
            }
        }
        let (s, _) = start(floor.command(&format!("bench-{i}")), "runc run", expect)?;
        if i == 0 {
            runc_first = Some(s)
        } else {
            runc.push(s)
        }
        let (s, _) = start(ctr_command(&format!("bench-{i}")), "ctr run --rm", expect)?;
        if i == 0 {
            ctr_first = Some(s)
        } else {
            ctr.push(s)
        }
    }

    let ms = |v: &[f64]| v.iter().map(|s| s * 1e3).collect::<Vec<_>>();
    let (imc, runc, ctr) = (ms(&imc), ms(&runc), ms(&ctr));
    let figure = |name: &str, baseline_name: &str, baseline: &[f64], aggregate, target| {
        let pick = |v: &[f64]| match aggregate {
            "p90" => percentile(v, 0.9),
            _ => median(v),
        };
        Figure {
            name: name.to_owned(),
            unit: "ms",
            imc: pick(&imc),
            baseline_name: baseline_name.to_owned(),
            baseline: pick(baseline),
            target,
            aggregate,
            imc_runs: imc.clone(),
            baseline_runs: baseline.to_vec(),
        }
    };
    let first = |v: Option<f64>| v.map(|s| s * 1e3).into_iter().collect::<Vec<_>>();
    let figures = vec![
        figure(
            "start to first output",
            "runc run (floor)",
            &runc,
            "median",
            Target::RatioAtMost(2.0),
        ),
        figure(
            "start to first output",
            "ctr run --rm (warm)",
            &ctr,
            "median",
            Target::RatioAtMost(1.0),
        ),
        figure(
            "start to first output",
            "runc run (floor)",
            &runc,
            "p90",
            Target::None,
        ),
        figure(
            "start to first output",
            "ctr run --rm (warm)",
            &ctr,
            "p90",
            Target::None,
        ),
        Figure {
            name: "first start (warm-up run, not in the above)".into(),
            unit: "ms",
            imc: imc_first.map(|s| s * 1e3),
            baseline_name: "ctr run --rm".into(),
            baseline: ctr_first.map(|s| s * 1e3),
            target: Target::None,
            aggregate: "single",
            imc_runs: first(imc_first),
            baseline_runs: first(ctr_first),
        },
        Figure {
            name: "first start (warm-up run, not in the above)".into(),
            unit: "ms",
            imc: imc_first.map(|s| s * 1e3),
            baseline_name: "runc run".into(),
            baseline: runc_first.map(|s| s * 1e3),
            target: Target::None,
            aggregate: "single",
            imc_runs: first(imc_first),
            baseline_runs: first(runc_first),
        },
    ];
    drop(containerd);
    drop(floor);
    Ok(Report {
        machine: Machine::describe(),
        image: format!("{REPOSITORY}:{TAG}@{}", image.manifest.digest),
        imc: options.imc.display().to_string(),
        load_average_before: load_before,
        load_average_after: load_average(),
        figures,
        notes: vec![
            format!(
                "command in the container: {} (first output = first stdout byte); the registry is stopped before the timed runs",
                options.command.join(" ")
            ),
            format!(
                "imc run --timings of the last timed run: {}",
                imc_timings.as_deref().unwrap_or("-")
            ),
            format!(
                "untimed preparation: imc cache build from loopback {}, ctr images pull {:.1} s",
                build_seconds.map_or("-".to_owned(), |s| format!("{s:.1} s")),
                pulled.as_secs_f64()
            ),
        ],
        imc_not_available: imc_problem,
    })
}
