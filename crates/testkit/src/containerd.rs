//! containerd 1.6 (Debian) on a private socket and state directory, as the benchmark baseline
//! and for the snapshotter tests.
//!
//! [`Containerd::start`] writes a config that puts the root, state, socket and plugin dirs under a
//! fresh temporary directory (overlayfs snapshotter, CRI plugin disabled), starts
//! `/usr/bin/containerd` with it and waits until `ctr version` answers. A fresh instance has an
//! empty content store and snapshotter, so every pull through it is cold. The daemon is stopped
//! (SIGTERM, then SIGKILL) and its directory removed on drop, after its containers are killed and
//! removed and anything left mounted under it is unmounted.
//!
//! [`Containerd::start_with`] adds proxy snapshotter plugins (`[proxy_plugins.NAME]`) and the CRI
//! plugin (the kubelet's way in: [`Containerd::cri_pull`] pulls as the kubelet does, unpacking
//! through the CRI snapshotter), with registry hosts read from `certs.d/` under its directory
//! ([`Containerd::plain_http_host`]).

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

/// What a private containerd is started with beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct ContainerdOptions {
    /// Proxy snapshotter plugins, `(name, socket)`: `[proxy_plugins.NAME] type = "snapshot"`.
    pub proxy_snapshotters: Vec<(String, PathBuf)>,
    /// Enable the CRI plugin, unpacking images into this snapshotter (`None`: CRI disabled).
    pub cri_snapshotter: Option<String>,
}

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
        Self::start_with(parent, ContainerdOptions::default())
    }

    /// [`Containerd::start`] with proxy snapshotters and, optionally, the CRI plugin.
    pub fn start_with(parent: Option<&Path>, options: ContainerdOptions) -> anyhow::Result<Self> {
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
        for sub in ["root", "state", "opt", "certs.d", "cni/conf", "cni/bin"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("create {}", root.join(sub).display()))?;
        }
        let config = config_toml(root, &options);
        fs::write(root.join("config.toml"), config).context("write containerd config")?;
        let mut containerd = Self { dir, child: None };
        containerd.spawn()?;
        Ok(containerd)
    }

    /// Starts the daemon on this instance's directory and waits until it answers.
    fn spawn(&mut self) -> anyhow::Result<()> {
        let root = self.dir.path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("containerd.log"))
            .context("open containerd log")?;
        let log2 = log.try_clone().context("clone containerd log handle")?;
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("start {CONTAINERD}"))?;
        self.child = Some(child);
        self.wait_ready()?;
        debug!(socket = %self.socket().display(), "containerd started");
        Ok(())
    }

    /// Stops the daemon (SIGTERM; containers keep running under their shims) and starts it
    /// again on the same root, state and socket.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop_daemon();
        self.spawn()
    }

    /// Lets containerd reach `host` (`HOST:PORT`, as written in image references) over plain
    /// HTTP at `server` (`HOST:PORT`), through a `certs.d/<host>/hosts.toml` (read at each pull).
    pub fn plain_http_host(&self, host: &str, server: &str) -> anyhow::Result<()> {
        let dir = self.dir.path().join("certs.d").join(host);
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        fs::write(
            dir.join("hosts.toml"),
            format!(
                "server = \"http://{server}\"\n\n[host.\"http://{server}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .context("write hosts.toml")
    }

    /// Pulls `reference` as the kubelet does: CRI `PullImage` (namespace `k8s.io`), which
    /// unpacks each layer through the CRI snapshotter while pulling, asking it first whether it
    /// already has the layer. Returns the image id containerd reports.
    pub async fn cri_pull(&self, reference: &str) -> anyhow::Result<String> {
        use k8s_cri::v1::image_service_client::ImageServiceClient;
        use k8s_cri::v1::{ImageSpec, PullImageRequest};
        let socket = self.socket();
        let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
            .context("CRI endpoint")?
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .context("connect to containerd's CRI service")?;
        let response = ImageServiceClient::new(channel)
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: reference.to_string(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            })
            .await
            .with_context(|| format!("CRI PullImage {reference}"))?;
        Ok(response.into_inner().image_ref)
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

    /// Kills and removes every container (all namespaces), stops the daemon (SIGTERM, then
    /// SIGKILL after 10 s) and unmounts anything left under its directory. Idempotent; also done
    /// on drop.
    pub fn stop(&mut self) {
        if self.child.is_some() {
            self.remove_all_containers();
        }
        self.stop_daemon();
        self.unmount_leftovers();
    }

    /// Kills the tasks and deletes the containers of every namespace, so no shim or container
    /// outlives the test.
    pub fn remove_all_containers(&self) {
        let list = |args: &[&str]| -> Vec<String> {
            self.ctr()
                .args(args)
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        for ns in list(&["namespaces", "ls", "-q"]) {
            for id in list(&["-n", &ns, "containers", "ls", "-q"]) {
                let _ = self
                    .ctr()
                    .args(["-n", &ns, "tasks", "kill", "-s", "SIGKILL", &id])
                    .output();
                // `tasks rm -f` waits for the kill to land.
                let _ = self
                    .ctr()
                    .args(["-n", &ns, "tasks", "rm", "-f", &id])
                    .output();
                let _ = self
                    .ctr()
                    .args(["-n", &ns, "containers", "rm", &id])
                    .output();
            }
        }
    }

    fn stop_daemon(&mut self) {
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
    }

    /// Unmounts mounts under our directory (deepest first), so removing it cannot fail with EBUSY
    /// or reach into a mounted rootfs.
    fn unmount_leftovers(&self) {
        for target in crate::leftovers::mounts_under(self.dir.path()) {
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
fn config_toml(dir: &Path, options: &ContainerdOptions) -> String {
    let d = dir.display();
    let disabled = if options.cri_snapshotter.is_some() {
        ""
    } else {
        "\"io.containerd.grpc.v1.cri\""
    };
    let mut extra = String::new();
    for (name, socket) in &options.proxy_snapshotters {
        extra.push_str(&format!(
            "\n[proxy_plugins.\"{name}\"]\n  type = \"snapshot\"\n  address = \"{}\"\n",
            socket.display()
        ));
    }
    if let Some(snapshotter) = &options.cri_snapshotter {
        // CNI directories are empty: pulls need no network; the CRI plugin only logs that pod
        // networking is not ready.
        extra.push_str(&format!(
            r#"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
"#
        ));
    }
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [{disabled}]

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
{extra}"#
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
