//! containerd 1.6 (Debian) on a private socket and state directory, as the benchmark baseline.
//!
//! [`Containerd::start`] writes a config that puts the root, state, socket and plugin dirs under a
//! fresh temporary directory (overlayfs snapshotter, CRI plugin disabled), starts
//! `/usr/bin/containerd` with it and waits until `ctr version` answers. A fresh instance has an
//! empty content store and snapshotter, so every pull through it is cold. The daemon is stopped
//! (SIGTERM, then SIGKILL) and its directory removed on drop, after unmounting anything left
//! mounted under it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tracing::debug;

/// Where Debian installs the daemon.
pub const CONTAINERD: &str = "/usr/bin/containerd";
/// Where Debian installs the client.
pub const CTR: &str = "/usr/bin/ctr";

/// How long the daemon may take to answer after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running private containerd (see the module doc).
#[derive(Debug)]
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Containerd {
    /// Starts a containerd whose root, state and socket live under a new temporary directory
    /// (under `parent`, or the system temp dir when `None`).
    pub fn start(parent: Option<&Path>) -> anyhow::Result<Self> {
        if !Path::new(CONTAINERD).exists() || !Path::new(CTR).exists() {
            bail!(
                "{CONTAINERD} or {CTR} is missing: install Debian's containerd package (apt-get install containerd)"
            );
        }
        let mut builder = tempfile::Builder::new();
        builder.prefix("imc-containerd-");
        let dir = match parent {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .context("create a temporary directory for containerd")?;
        let root = dir.path();
        for sub in ["root", "state", "opt"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("create {}", root.join(sub).display()))?;
        }
        let config = config_toml(root);
        fs::write(root.join("config.toml"), config).context("write containerd config")?;
        let log = fs::File::create(root.join("containerd.log")).context("create containerd log")?;
        let log2 = log.try_clone().context("clone containerd log handle")?;
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("start {CONTAINERD}"))?;
        let mut containerd = Self {
            dir,
            child: Some(child),
        };
        containerd.wait_ready()?;
        debug!(socket = %containerd.socket().display(), "containerd started");
        Ok(containerd)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "containerd exited during start-up ({status}); log:\n{}",
                    self.log_tail()
                );
            }
            if self.socket().exists() {
                let version = self
                    .ctr()
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                if version.is_ok_and(|s| s.success()) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer within {START_TIMEOUT:?}; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The directory holding root, state, socket, config and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's content and snapshot root.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The gRPC socket (`ctr -a SOCKET`).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The last lines of the daemon's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A `ctr` command talking to this daemon.
    pub fn ctr(&self) -> Command {
        let mut command = Command::new(CTR);
        command.arg("--address").arg(self.socket());
        command
    }

    /// `ctr images pull [--plain-http] REFERENCE` (which also unpacks into the overlayfs
    /// snapshotter); returns how long it took.
    pub fn pull(&self, reference: &str, plain_http: bool) -> anyhow::Result<Duration> {
        let mut command = self.ctr();
        command.args(["images", "pull"]);
        if plain_http {
            command.arg("--plain-http");
        }
        command.arg(reference);
        let (elapsed, _) = timed(command, &format!("ctr images pull {reference}"))?;
        Ok(elapsed)
    }

    /// `ctr run --rm REFERENCE ID ARGS...` with the image already pulled; returns how long it took
    /// and what the container printed.
    pub fn run(
        &self,
        reference: &str,
        id: &str,
        args: &[&str],
    ) -> anyhow::Result<(Duration, Output)> {
        let mut command = self.ctr();
        command.args(["run", "--rm", reference, id]).args(args);
        timed(command, &format!("ctr run {reference}"))
    }

    /// `ctr images rm REFERENCE` (content and snapshots are garbage-collected by containerd).
    pub fn remove_image(&self, reference: &str) -> anyhow::Result<()> {
        let mut command = self.ctr();
        command.args(["images", "rm", "--sync", reference]);
        timed(command, &format!("ctr images rm {reference}")).map(|_| ())
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 10 s) and unmounts anything left under its
    /// directory. Idempotent; also done on drop.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM lets containerd shut down its plugins cleanly; our child is not reaped yet, so
        // the pid is still ours.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.unmount_leftovers();
    }

    /// Unmounts mounts under our directory (deepest first), so removing it cannot fail with EBUSY
    /// or reach into a mounted rootfs.
    fn unmount_leftovers(&self) {
        let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let prefix = self.dir.path().to_string_lossy().into_owned();
        let mut targets: Vec<String> = mounts
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|target| target.starts_with(&prefix))
            .map(str::to_owned)
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for target in targets {
            let _ = Command::new("umount").arg("-l").arg(&target).status();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The containerd 1.6 config (schema version 2) that keeps everything under `dir`.
fn config_toml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.snapshotter.v1.overlayfs"]
  root_path = "{d}/root/io.containerd.snapshotter.v1.overlayfs"
"#
    )
}

/// Runs `command` to completion, failing with its stderr when it fails.
fn timed(mut command: Command, what: &str) -> anyhow::Result<(Duration, Output)> {
    let started = Instant::now();
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {what}"))?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok((elapsed, output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_private_socket_and_stops_on_drop() {
        let containerd = Containerd::start(None)
            .expect("containerd starts (needs root and Debian's containerd)");
        let socket = containerd.socket();
        let dir = containerd.dir().to_path_buf();
        assert!(socket.starts_with(&dir));
        let output = containerd
            .ctr()
            .args(["plugins", "ls"])
            .output()
            .expect("ctr plugins ls");
        assert!(output.status.success());
        let plugins = String::from_utf8_lossy(&output.stdout);
        assert!(
            plugins
                .lines()
                .any(|l| l.contains("overlayfs") && l.contains("ok")),
            "{plugins}"
        );
        assert!(
            !plugins.contains("io.containerd.grpc.v1  cri"),
            "CRI is disabled: {plugins}"
        );
        let images = containerd
            .ctr()
            .args(["images", "ls", "-q"])
            .output()
            .expect("ctr images ls");
        assert_eq!(
            String::from_utf8_lossy(&images.stdout).trim(),
            "",
            "a fresh instance holds no image"
        );
        drop(containerd);
        assert!(!dir.exists(), "{} removed on drop", dir.display());
    }

    #[tokio::test]
    async fn pulls_runs_and_removes_an_image_from_a_real_registry() {
        use crate::image::{self, Format, ImageBuilder, LayerBuilder, Meta};
        use crate::registry::{Auth, TestRegistry};

        let registry = TestRegistry::start(Auth::None);
        let busybox =
            fs::read("/bin/busybox").expect("read /bin/busybox (apt-get install busybox-static)");
        let layer = LayerBuilder::new()
            .dir("bin")
            .file_with("bin/busybox", busybox, Meta::mode(0o755))
            .symlink("bin/sh", "busybox")
            .build();
        let built = ImageBuilder::new(Format::Oci).layer(layer).build();
        image::install_crypto_provider();
        image::push(&registry.host(), "test/busybox", "v1", &built, None)
            .await
            .expect("push");
        let reference = format!("{}/test/busybox:v1", registry.host());

        let containerd = Containerd::start(None).expect("containerd starts");
        containerd.pull(&reference, true).expect("ctr images pull");
        let listed = containerd
            .ctr()
            .args(["images", "ls"])
            .output()
            .expect("ctr images ls");
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(
            listed.contains(&built.manifest_digest.to_string()),
            "{listed}"
        );

        // runc keeps state per namespace under /run/containerd/runc, shared by every containerd
        // on the host: a unique id keeps concurrent test runs apart.
        let id = format!("imc-testkit-run-{}", std::process::id());
        let (_, output) = containerd
            .run(
                &reference,
                &id,
                &[
                    "/bin/sh",
                    "-c",
                    "echo hello from $(/bin/busybox basename $0)",
                ],
            )
            .expect("ctr run");
        assert_eq!(String::from_utf8_lossy(&output.stdout), "hello from sh\n");

        containerd.remove_image(&reference).expect("ctr images rm");
        let listed = containerd
            .ctr()
            .args(["images", "ls", "-q"])
            .output()
            .expect("ctr images ls");
        assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "");
    }
}
