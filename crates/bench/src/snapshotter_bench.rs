//! `imc-bench snapshotter`: DESIGN §7 P9. containerd 1.6 pulls the reference image through the
//! shaping link and runs it, time to the container's first output: (a) containerd's overlayfs
//! snapshotter, `ctr images pull` + `ctr run`; (a') the same through CRI `PullImage` (the
//! kubelet's pull) into overlayfs; (b) CRI `PullImage` into `imc snapshotter` with a local cache
//! disk holding the image (built beforehand from the loopback registry, not timed) + `ctr run
//! --snapshotter imc`. containerd 1.6's `ctr images pull` downloads every blob before unpacking,
//! so (b) pulls the way a kubelet node does.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use imc_testkit::containerd::{Containerd, ContainerdOptions};
use imc_testkit::proxy::{Proxy, Shaping};
use imc_testkit::registry::{Auth, TestRegistry};

use crate::machine::{Machine, load_average};
use crate::measure::first_output;
use crate::pull_bench::tempdir;
use crate::reference_image::{REPOSITORY, ReferenceImage, TAG, mb};
use crate::report::{Figure, Report, Target};

/// What to measure and how.
#[derive(Debug, Clone)]
pub struct SnapshotterOptions {
    pub cache_dir: PathBuf,
    /// Parent of the containerd roots and the imc data dir (default: system temp).
    pub work_dir: Option<PathBuf>,
    /// The imc binary (built with `cargo build --release -p imc`).
    pub imc: PathBuf,
    pub bandwidth: u64,
    pub latency: Duration,
    /// Also measure (a'), CRI pull into overlayfs (another cold pull over the link).
    pub cri_baseline: bool,
}

/// One pull + run: seconds to first output, and the bytes that crossed the link.
struct PullRun {
    pull: f64,
    first_output: f64,
    link_bytes: u64,
}

impl PullRun {
    fn total(&self) -> f64 {
        self.pull + self.first_output
    }
}

/// `ctr run --rm` of the image printing `hi`; seconds to its first output.
fn run_first_output(
    containerd: &Containerd,
    namespace: &str,
    snapshotter: &str,
    reference: &str,
    id: &str,
) -> anyhow::Result<f64> {
    let mut run = containerd.ctr();
    run.args(["-n", namespace, "run", "--rm", "--snapshotter", snapshotter])
        .args([reference, id, "/bin/echo", "hi"]);
    let ran = first_output(&mut run)?;
    if !ran.success || !ran.stdout.starts_with("hi") {
        bail!(
            "ctr run ({snapshotter}) failed: {}\ncontainerd log:\n{}",
            ran.stderr.trim(),
            containerd.log_tail()
        );
    }
    Ok(ran.first_output.as_secs_f64())
}

fn cri_pull(containerd: &Containerd, reference: &str) -> anyhow::Result<f64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let started = Instant::now();
    runtime.block_on(containerd.cri_pull(reference))?;
    Ok(started.elapsed().as_secs_f64())
}

/// `imc snapshotter` as a child process, stopped on drop. The snapshotter keeps the cache disk
/// attached across its own restarts while snapshots use it; the harness detaches it afterwards
/// ([`unmount_under`]) so the work directory can go.
struct Snapshotter(Child);

impl Snapshotter {
    fn start(
        imc: &std::path::Path,
        data: &std::path::Path,
        socket: &std::path::Path,
    ) -> anyhow::Result<Self> {
        // Warnings only: its per-layer log lines would bury the harness's own.
        let child = Command::new(imc)
            .env("RUST_LOG", "warn")
            .args(["snapshotter", "--data-dir"])
            .arg(data)
            .arg("--socket")
            .arg(socket)
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("start {} snapshotter", imc.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("imc snapshotter did not create {}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Snapshotter(child))
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Unmounts every mount under `dir`, deepest first (the cache attachment under
/// `DATA/run/caches/`; its auto-clearing loop device goes with it).
fn unmount_under(dir: &std::path::Path) {
    for target in imc_testkit::leftovers::mounts_under(dir)
        .into_iter()
        .filter(|t| t != dir)
    {
        let _ = Command::new("umount").arg(target).status();
    }
}

/// Runs the whole snapshotter benchmark.
pub fn run(options: &SnapshotterOptions) -> anyhow::Result<Report> {
    let load_before = load_average();
    if !options.imc.is_file() {
        bail!(
            "no imc binary at {}; build it with cargo build --release -p imc",
            options.imc.display()
        );
    }
    let image = ReferenceImage::ensure(&options.cache_dir)?;
    eprint!("{}", image.describe());
    let registry = TestRegistry::start(Auth::None);
    image.push(&registry.host())?;
    let proxy = Proxy::start_with(
        &registry.host(),
        Shaping::link(options.bandwidth, options.latency),
    )
    .context("start the shaping proxy")?;
    let link = format!(
        "{} MB/s + {} ms link",
        options.bandwidth as f64 / 1e6,
        options.latency.as_millis()
    );
    let via_link = format!("{}/{REPOSITORY}:{TAG}", proxy.host_port());
    let sent = || proxy.stats().bytes_to_client;

    // The disk is built from the loopback registry and not timed: the node already holds it
    // when the pull starts, as a node that fetched the cache earlier does.
    let work = tempdir(options.work_dir.as_deref(), "imc-bench-snap-")?;
    let data = work.path().join("data");
    let loopback = format!("{}/{REPOSITORY}:{TAG}", registry.host());
    let built = Command::new(&options.imc)
        .args(["cache", "build", "--data-dir"])
        .arg(&data)
        .args(["--plain-http", &registry.host(), "--image", &loopback])
        .output()
        .context("imc cache build")?;
    if !built.status.success() {
        bail!(
            "imc cache build failed: {}",
            String::from_utf8_lossy(&built.stderr).trim()
        );
    }
    let socket = work.path().join("imc-snapshotter.sock");
    let imc_run = {
        let _snapshotter = Snapshotter::start(&options.imc, &data, &socket)?;
        let containerd = Containerd::start_with(
            Some(work.path()),
            ContainerdOptions {
                proxy_snapshotters: vec![("imc".into(), socket.clone())],
                cri_snapshotter: Some("imc".into()),
            },
        )?;
        containerd.plain_http_host(&proxy.host_port(), &proxy.host_port())?;
        eprintln!("(b) CRI pull into imc snapshotter (cache disk held) + ctr run over the {link}");
        let before = sent();
        let pull = cri_pull(&containerd, &via_link)?;
        let link_bytes = sent() - before;
        let first = run_first_output(&containerd, "k8s.io", "imc", &via_link, "bench-imc")?;
        eprintln!(
            "  pull {pull:.2} s + first output {first:.3} s, {link_bytes} bytes over the link"
        );
        PullRun {
            pull,
            first_output: first,
            link_bytes,
        }
    };
    unmount_under(work.path());

    eprintln!("(a) ctr images pull + ctr run (overlayfs) over the {link}");
    let ctr_run = {
        let containerd = Containerd::start(options.work_dir.as_deref())?;
        let before = sent();
        let pull = containerd.pull(&via_link, true)?.as_secs_f64();
        let link_bytes = sent() - before;
        let first = run_first_output(&containerd, "default", "overlayfs", &via_link, "bench-ctr")?;
        eprintln!(
            "  pull {pull:.2} s + first output {first:.3} s, {} MB over the link",
            mb(link_bytes)
        );
        PullRun {
            pull,
            first_output: first,
            link_bytes,
        }
    };

    let cri_run = if options.cri_baseline {
        eprintln!("(a') CRI pull into overlayfs + ctr run over the {link}");
        let containerd = Containerd::start_with(
            options.work_dir.as_deref(),
            ContainerdOptions {
                proxy_snapshotters: vec![],
                cri_snapshotter: Some("overlayfs".into()),
            },
        )?;
        containerd.plain_http_host(&proxy.host_port(), &proxy.host_port())?;
        let before = sent();
        let pull = cri_pull(&containerd, &via_link)?;
        let link_bytes = sent() - before;
        let first = run_first_output(&containerd, "k8s.io", "overlayfs", &via_link, "bench-cri")?;
        eprintln!(
            "  pull {pull:.2} s + first output {first:.3} s, {} MB over the link",
            mb(link_bytes)
        );
        Some(PullRun {
            pull,
            first_output: first,
            link_bytes,
        })
    } else {
        None
    };

    let name = format!("pull + run to first output, {link}");
    let figure = |baseline_name: &str, baseline: &PullRun, target| Figure {
        name: name.clone(),
        unit: "s",
        imc: Some(imc_run.total()),
        baseline_name: baseline_name.to_owned(),
        baseline: Some(baseline.total()),
        target,
        aggregate: "single run",
        imc_runs: vec![imc_run.total()],
        baseline_runs: vec![baseline.total()],
    };
    let mut figures = vec![figure(
        "ctr images pull + ctr run (overlayfs)",
        &ctr_run,
        Target::AtMost(1.0),
    )];
    if let Some(cri) = &cri_run {
        figures.push(figure("CRI pull + ctr run (overlayfs)", cri, Target::None));
    }
    figures.push(Figure {
        name: "bytes over the link".into(),
        unit: "MB",
        imc: Some(imc_run.link_bytes as f64 / 1e6),
        baseline_name: "ctr images pull (overlayfs)".into(),
        baseline: Some(ctr_run.link_bytes as f64 / 1e6),
        target: Target::None,
        aggregate: "single run",
        imc_runs: vec![imc_run.link_bytes as f64 / 1e6],
        baseline_runs: vec![ctr_run.link_bytes as f64 / 1e6],
    });
    let mut notes = vec![
        format!(
            "imc: CRI pull {:.2} s + ctr run first output {:.3} s; ctr: pull {:.1} s + first output {:.3} s",
            imc_run.pull, imc_run.first_output, ctr_run.pull, ctr_run.first_output
        ),
        "the cache disk was built beforehand from the loopback registry (imc cache build --data-dir), as a node holding the cache has it".into(),
        "containerd 1.6's ctr images pull downloads every blob before unpacking; imc is used through CRI PullImage, the kubelet's pull".into(),
    ];
    if let Some(cri) = &cri_run {
        notes.push(format!(
            "CRI into overlayfs: pull {:.1} s + first output {:.3} s",
            cri.pull, cri.first_output
        ));
    }
    drop(proxy);
    drop(registry);
    Ok(Report {
        machine: Machine::describe(),
        image: format!("{REPOSITORY}:{TAG}@{}", image.manifest.digest),
        imc: options.imc.display().to_string(),
        load_average_before: load_before,
        load_average_after: load_average(),
        figures,
        notes,
        imc_not_available: None,
    })
}
