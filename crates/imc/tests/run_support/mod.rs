//! Shared by the `run_*` and `cache_*` tests: a real docker-registry with busybox-based test
//! images, `imc cache build`, the imc binary, and what the host shows of mounts and loop devices.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Applets linked in the base layer.
pub const APPLETS: &[&str] = &[
    "sh", "cat", "ls", "echo", "stat", "readlink", "id", "touch", "rm", "mkdir", "sleep", "test",
    "sync", "find", "chmod", "ln", "mount", "true", "head", "wc", "dd", "df", "tail", "nc",
    "httpd", "wget", "hostname", "tar", "stty", "tr",
];

/// The imc binary under test, logging warnings only.
pub fn imc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imc"));
    c.env("RUST_LOG", "warn");
    c
}

/// Starts `imc run --data-dir DATA --cache DISK IMAGE -- sh -c SCRIPT` whose script prints
/// "ready" first; returns once it has, with the rest of the container's stdout.
pub fn run_until_ready(
    data: &Path,
    disk: &Path,
    image: &str,
    script: &str,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
) {
    use std::io::BufRead;
    let mut child = imc()
        .arg("run")
        .arg("--data-dir")
        .arg(data)
        .arg("--cache")
        .arg(disk)
        .arg(image)
        .args(["--", "sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        // Not the test harness's own stderr: a container outliving a failed test would hold
        // that pipe open and hang the run.
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    (child, out)
}

/// Mounts whose mount point is `path`.
pub fn mounts_at(path: &Path) -> usize {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_string_lossy().into_owned();
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(p.as_str()))
        .count()
}

/// Mounts under `dir` (any depth; `dir` itself excluded).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    imc_testkit::leftovers::mounts_under(dir)
        .into_iter()
        .filter(|m| m != dir)
        .collect()
}

/// Loop devices backed by `disk`.
pub fn loops_backed_by(disk: &Path) -> usize {
    let canonical = fs::canonicalize(disk).unwrap();
    fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("loop/backing_file")).ok())
        .filter(|b| Path::new(b.trim_end()) == canonical)
        .count()
}

/// sha256 of a file, hex.
pub fn sha256(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(fs::read(path).unwrap()))
}

use imc_testkit::image::{
    BuiltImage, BuiltLayer, Format, ImageBuilder, ImageConfig, LayerBuilder, Meta,
};
use imc_testkit::registry::{Auth, TestRegistry};

/// A real docker-registry holding the test images.
pub struct Registry {
    pub registry: TestRegistry,
    /// `HOST:PORT/imc/busybox:1`: the base layer only.
    pub busybox: String,
    /// `HOST:PORT/imc/layered:1`: base + a lower and an upper layer exercising overlay semantics.
    pub layered: String,
    /// `HOST:PORT/imc/partial:1`: base + a top layer no cache holds.
    pub partial: String,
    pub base: BuiltLayer,
    pub partial_top: BuiltLayer,
}

impl Registry {
    /// `--plain-http HOST:PORT`, for every imc command talking to it.
    pub fn flags(&self) -> [String; 2] {
        ["--plain-http".to_string(), self.registry.host()]
    }
}

/// The base layer: Debian's busybox-static as /bin/busybox plus applet symlinks.
pub fn busybox_layer() -> BuiltLayer {
    let busybox =
        fs::read("/bin/busybox").expect("busybox-static must be installed (/bin/busybox)");
    let mut l = LayerBuilder::new()
        .dir("bin")
        .dir("etc")
        .dir_with("tmp", Meta::mode(0o1777))
        .file_with("bin/busybox", busybox, Meta::mode(0o755))
        .file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .file("etc/group", "root:x:0:\napp:x:1000:\n");
    for applet in APPLETS {
        l = l.symlink(&format!("bin/{applet}"), "busybox");
    }
    l.build()
}

fn image(layers: &[&BuiltLayer], cmd: &[&str]) -> BuiltImage {
    let mut b = ImageBuilder::new(Format::Oci).config(ImageConfig {
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    });
    for l in layers {
        b = b.layer((*l).clone());
    }
    b.build()
}

/// Pushes `img` to the registry as `HOST:PORT/<repo>:1`; returns that reference.
pub fn push(reg: &Registry, repo: &str, img: &BuiltImage) -> String {
    let host = reg.registry.host();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(imc_testkit::image::push(&host, repo, "1", img, None))
        .unwrap_or_else(|e| panic!("push {repo}: {e:#}"));
    format!("{host}/{repo}:1")
}

/// The busybox image with `USER app` (uid 1000 in its /etc/passwd), running `cmd`.
pub fn non_root_image(cmd: &[&str]) -> BuiltImage {
    ImageBuilder::new(Format::Oci)
        .config(ImageConfig {
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            user: Some("app".to_string()),
            ..Default::default()
        })
        .layer(busybox_layer())
        .build()
}

/// A busybox image serving forever (for Deployments): prints `message`, then sleeps until
/// SIGTERM, on which it exits at once (so rollouts do not wait out grace periods).
pub fn server_image(message: &str) -> BuiltImage {
    let script = format!("echo {message}; trap 'exit 0' TERM; while true; do sleep 1; done");
    image(&[&busybox_layer()], &["sh", "-c", &script])
}

/// Starts a registry and pushes the test images.
pub fn registry_with_images() -> Registry {
    let registry = TestRegistry::start(Auth::None);
    let host = registry.host();
    let base = busybox_layer();
    let lower = LayerBuilder::new()
        .dir("data")
        .dir("data/opaque")
        .file("data/doomed", "doomed")
        .file("data/replaced", "old")
        .hardlink("data/hardlink", "data/replaced")
        .file("data/opaque/old-entry", "x")
        .file_with("data/owned", "o", Meta::mode(0o640).owner(1000, 1000))
        .file_with("data/setuid", "s", Meta::mode(0o4755))
        .symlink("data/abs-link", "/data/replaced")
        .symlink("data/rel-link", "replaced")
        .symlink("data/escape-link", "../../../../etc/passwd")
        .build();
    let upper = LayerBuilder::new()
        .dir("data")
        .dir("data/opaque")
        .whiteout("data/doomed")
        .opaque("data/opaque")
        .file("data/opaque/new-entry", "y")
        .file("data/replaced", "new")
        .build();
    let partial_top = LayerBuilder::new()
        .dir("app")
        .file("app/marker", "partial-top")
        .build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let push = |repo: &str, img: &BuiltImage| {
        rt.block_on(imc_testkit::image::push(&host, repo, "1", img, None))
            .unwrap_or_else(|e| panic!("push {repo}: {e:#}"));
        format!("{host}/{repo}:1")
    };
    let busybox = push("imc/busybox", &image(&[&base], &["sh"]));
    let layered = push("imc/layered", &image(&[&base, &lower, &upper], &["sh"]));
    let partial = push(
        "imc/partial",
        &image(&[&base, &partial_top], &["cat", "/app/marker"]),
    );
    Registry {
        registry,
        busybox,
        layered,
        partial,
        base,
        partial_top,
    }
}

/// `imc cache build` of `images` into `output` with data dir `data`; panics with imc's stderr
/// when it fails.
pub fn cache_build(reg: &Registry, data: &Path, images: &[&str], output: &Path) {
    let mut c = imc();
    c.args(["cache", "build", "--data-dir"])
        .arg(data)
        .args(reg.flags())
        .arg("--output")
        .arg(output);
    for i in images {
        c.args(["--image", i]);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "imc cache build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A registry with the test images and an EROFS cache disk holding the busybox image, built by
/// `imc cache build` into `data`. Returns (registry, disk).
pub fn busybox_cache(data: &Path) -> (Registry, PathBuf) {
    let reg = registry_with_images();
    let disk = data.join("caches/busybox.erofs");
    fs::create_dir_all(disk.parent().unwrap()).unwrap();
    cache_build(&reg, data, &[&reg.busybox], &disk);
    (reg, disk)
}
