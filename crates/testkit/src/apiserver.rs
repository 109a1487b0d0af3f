//! A real `imc server` process on a free loopback port with a temporary data directory, for
//! tests that talk to it with the real kubectl and with kube-rs. The fixture can kill (SIGKILL),
//! stop (SIGTERM) and restart the process on the same directory and port. Dropping it stops the
//! server gracefully and reaps anything left under its data dir.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The kubectl tests use (the Debian package installs it here).
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// How long a SIGTERMed server may take to stop (its own bound is 20 s) before SIGKILL.
pub const STOP_WAIT: Duration = Duration::from_secs(25);

/// A running `imc server`.
pub struct TestServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    addr: Option<SocketAddr>,
    watch_window: Option<u64>,
    extra_args: Vec<String>,
    /// Where the server's stderr goes (appended, across restarts); inherited when `None`.
    stderr_log: Option<PathBuf>,
    child: Option<Child>,
    /// This server's pod network: (`--pod-cidr`, `--pod-bridge`), private to it so that servers
    /// of concurrent tests never share addresses or a bridge.
    network: (String, String),
    /// Whether `--pod-cidr` and `--pod-bridge` are passed (not to builds older than pods
    /// networks, see [`TestServer::start_without_pod_network`]).
    pod_network_flags: bool,
}

/// A pod range and bridge name no other test server of this machine uses at the same time:
/// from this process's pid and a counter, in 10.100.0.0–10.227.255.0 (/24 each).
fn private_network() -> (String, String) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 16;
    let key = (std::process::id() % 2048) * 16 + n;
    (
        format!("10.{}.{}.0/24", 100 + (key >> 8), key & 255),
        format!("imct{key}"),
    )
}

impl TestServer {
    /// Starts `bin server` (pass `env!("CARGO_BIN_EXE_imc")`) on a free port.
    pub fn start(bin: impl AsRef<Path>) -> Result<Self> {
        Self::start_with_window(bin, None)
    }

    /// Like [`TestServer::start`], keeping only `window` changes for watch resume (so tests
    /// can force 410 Gone).
    pub fn start_with_window(bin: impl AsRef<Path>, window: Option<u64>) -> Result<Self> {
        Self::launch(bin.as_ref(), Vec::new(), window, None, true)
    }

    /// Like [`TestServer::start`], with extra `imc server` arguments (e.g. `--registry-mirror`).
    pub fn start_with_args(bin: impl AsRef<Path>, args: &[String]) -> Result<Self> {
        Self::launch(bin.as_ref(), args.to_vec(), None, None, true)
    }

    /// Like [`TestServer::start_with_args`] without the pod network flags: for benchmarking
    /// `imc` builds older than pod networking (their pods, and the benchmark's, use the host's
    /// network).
    pub fn start_without_pod_network(bin: impl AsRef<Path>, args: &[String]) -> Result<Self> {
        Self::launch(bin.as_ref(), args.to_vec(), None, None, false)
    }

    /// Like [`TestServer::start_with_args`], with the server's stderr (its log) appended to the
    /// file `log` instead of the test's stderr, as when an operator redirects it.
    pub fn start_logging_to(bin: impl AsRef<Path>, args: &[String], log: &Path) -> Result<Self> {
        Self::launch(
            bin.as_ref(),
            args.to_vec(),
            None,
            Some(log.to_path_buf()),
            true,
        )
    }

    /// Starts `bin server --api-only` (the API server alone: no controllers, no node), keeping
    /// `window` changes for watch resume when given (so tests can force 410 Gone).
    pub fn start_api_only(bin: impl AsRef<Path>, window: Option<u64>) -> Result<Self> {
        Self::launch(
            bin.as_ref(),
            vec!["--api-only".to_owned()],
            window,
            None,
            true,
        )
    }

    /// A server in a fresh data dir with a private pod network, started.
    fn launch(
        bin: &Path,
        extra_args: Vec<String>,
        watch_window: Option<u64>,
        stderr_log: Option<PathBuf>,
        pod_network_flags: bool,
    ) -> Result<Self> {
        let mut server = TestServer {
            bin: bin.to_path_buf(),
            dir: tempfile::Builder::new().prefix("imc-server-").tempdir()?,
            addr: None,
            watch_window,
            extra_args,
            stderr_log,
            child: None,
            network: private_network(),
            pod_network_flags,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Replaces the extra arguments; they apply from the next [`TestServer::restart`].
    pub fn set_extra_args(&mut self, args: &[String]) {
        self.extra_args = args.to_vec();
    }

    fn spawn(&mut self) -> Result<()> {
        let listen = self
            .addr
            .map_or("127.0.0.1:0".to_owned(), |a| a.to_string());
        let mut cmd = Command::new(&self.bin);
        cmd.arg("server")
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--listen")
            .arg(&listen)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(match &self.stderr_log {
                Some(log) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(log)
                        .with_context(|| format!("opening {}", log.display()))?,
                ),
                None => Stdio::inherit(),
            });
        if self.pod_network_flags && !self.extra_args.iter().any(|a| a == "--pod-cidr") {
            cmd.args([
                "--pod-cidr",
                &self.network.0,
                "--pod-bridge",
                &self.network.1,
            ]);
        }
        if let Some(w) = self.watch_window {
            cmd.arg("--watch-window").arg(w.to_string());
        }
        cmd.args(&self.extra_args);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} server", self.bin.display()))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout)
                .lines()
                .map_while(std::result::Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let mut addr = None;
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("listening on https://") {
                        addr = Some(a.trim().parse::<SocketAddr>()?);
                    }
                    if line.starts_with("kubeconfig: ") {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait()?;
                    bail!("imc server did not come up (exit: {status})");
                }
            }
        }
        self.addr = Some(addr.context("server did not print its address")?);
        self.child = Some(child);
        Ok(())
    }

    /// The pid of the running server process, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resets the server's peak resident set size (`VmHWM`) to its current size, so
    /// [`TestServer::rss_kib`] then tells how high memory went from now on.
    pub fn reset_peak_rss(&self) -> Result<()> {
        let pid = self.pid().context("no server runs")?;
        // "5" resets the peak RSS (proc(5), /proc/PID/clear_refs).
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
        Ok(())
    }

    /// (current, peak) resident set size of the server process in KiB (`VmRSS`, `VmHWM`).
    pub fn rss_kib(&self) -> Result<(u64, u64)> {
        let pid = self.pid().context("no server runs")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("{name} in /proc/{pid}/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// The data directory (kept across restarts).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The kubeconfig the server wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig.yaml")
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// This server's pod network: its `--pod-cidr` and `--pod-bridge`.
    pub fn pod_network(&self) -> (&str, &str) {
        (&self.network.0, &self.network.1)
    }

    /// The admin bearer token.
    pub fn token(&self) -> Result<String> {
        Ok(
            std::fs::read_to_string(self.dir.path().join("pki/admin.token"))?
                .trim()
                .to_owned(),
        )
    }

    /// A kube-rs client from the generated kubeconfig.
    pub async fn client(&self) -> Result<kube::Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig())?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Runs the real kubectl against the server (`KUBECONFIG` set, a private cache dir).
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_stdin(args, None)
    }

    /// The kubectl command for `args` against the server (`KUBECONFIG` set, a private cache
    /// dir), not started yet: for a test that reads its output while it runs (`logs -f`).
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(KUBECTL);
        command
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("KUBECACHEDIR", self.dir.path().join("kubectl-cache"))
            .env("HOME", self.dir.path());
        command
    }

    /// Runs kubectl with `stdin` fed to it.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        use std::io::Write;
        let mut child = self
            .kubectl_command(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {KUBECTL}"))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// SIGKILLs the server (a crash).
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERMs the server and waits for it to exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> Result<bool> {
        Ok(self.terminate()?.is_none_or(|s| s.success()))
    }

    /// SIGINTs the server (Ctrl-C in a terminal) and waits for it to exit; returns whether it
    /// exited successfully.
    pub fn interrupt(&mut self) -> Result<bool> {
        Ok(self.signal_and_wait("-INT")?.is_none_or(|s| s.success()))
    }

    /// SIGTERMs the server and waits up to [`STOP_WAIT`] for its graceful stop, SIGKILL after
    /// that. `None` when no server was running.
    fn terminate(&mut self) -> Result<Option<std::process::ExitStatus>> {
        self.signal_and_wait("-TERM")
    }

    /// Sends `signal` (a `kill` option such as `-TERM`) and waits up to [`STOP_WAIT`] for the
    /// exit, SIGKILL after that. `None` when no server was running.
    fn signal_and_wait(&mut self, signal: &str) -> Result<Option<std::process::ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        // The child is not reaped yet, so its pid cannot have been reused.
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()?;
        if !sent.success() {
            child.kill()?;
            return Ok(Some(child.wait()?));
        }
        let deadline = std::time::Instant::now() + STOP_WAIT;
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill()?;
        Ok(Some(child.wait()?))
    }

    /// Starts the server again on the same data directory and port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn()
    }
}

impl Drop for TestServer {
    /// A graceful stop (the server removes its containers), then whatever is still left under
    /// the data dir is reaped, so test runs leave no processes, mounts or loop devices behind.
    fn drop(&mut self) {
        let _ = self.terminate();
        crate::leftovers::reap(self.dir.path());
        // The bridge the CNI plugin created for this server's pods.
        let _ = Command::new("ip")
            .args(["link", "delete", &self.network.1])
            .stderr(Stdio::null())
            .status();
    }
}
