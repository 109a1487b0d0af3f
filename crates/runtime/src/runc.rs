//! `runc` (Debian) as the OCI runtime: run (detached), state, kill, delete.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use crate::RuntimeError;

/// How long `runc run --detach` may take (it waits for the container's `runc init`, which a
/// hostile or broken image can stall); the command is killed after it.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long any other runc command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Status of a container as runc reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    /// Being created.
    Creating,
    /// Created, process not started yet.
    Created,
    /// Process running.
    Running,
    /// Frozen.
    Paused,
    /// Process exited.
    Stopped,
}

#[derive(Debug, Deserialize)]
struct State {
    status: ContainerStatus,
    pid: i32,
}

/// A runc binary with its state directory (`--root`).
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
}

impl Runc {
    /// runc from `/usr/sbin/runc` (or PATH) keeping its state under `root`.
    pub fn new(root: &Path) -> Self {
        let binary = if Path::new("/usr/sbin/runc").exists() {
            PathBuf::from("/usr/sbin/runc")
        } else {
            PathBuf::from("runc")
        };
        Runc {
            binary,
            root: root.to_path_buf(),
        }
    }

    pub(crate) fn command(&self, log: Option<&Path>) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root);
        if let Some(log) = log {
            c.arg("--log").arg(log).arg("--log-format").arg("json");
        }
        c.stdin(Stdio::null());
        // A command given up on (timeout, or its caller cancelled) dies with its future.
        c.kill_on_drop(true);
        c
    }

    /// Runs `cmd` to completion within `limit`, killing it after.
    async fn output(
        mut cmd: Command,
        action: &'static str,
        id: &str,
        limit: Duration,
    ) -> Result<Output, RuntimeError> {
        match tokio::time::timeout(limit, cmd.output()).await {
            Ok(out) => out.map_err(|e| runc_error(action, id, e.to_string())),
            Err(_) => Err(RuntimeError::RuncTimeout {
                action,
                container: id.to_owned(),
                seconds: limit.as_secs(),
            }),
        }
    }

    /// `runc run --detach`: creates and starts the container in one runc invocation (`create`
    /// then `start` costs a second runc process per container start, 5-10 ms). The container's
    /// stdio are `stdout`/`stderr` (terminal=false pass-through). Returns the pid of the
    /// container's init process.
    pub async fn run_detached(
        &self,
        id: &str,
        bundle: &Path,
        runc_log: &Path,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<i32, RuntimeError> {
        let pid_file = bundle.join("init.pid");
        let mut cmd = self.command(Some(runc_log));
        cmd.arg("run")
            .arg("--detach")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdout(stdout)
            .stderr(stderr);
        let mut child = cmd
            .spawn()
            .map_err(|e| runc_error("run", id, e.to_string()))?;
        let status = match tokio::time::timeout(CREATE_TIMEOUT, child.wait()).await {
            Ok(s) => s.map_err(|e| runc_error("run", id, e.to_string()))?,
            Err(_) => {
                let _ = child.kill().await;
                return Err(RuntimeError::RuncTimeout {
                    action: "run",
                    container: id.to_owned(),
                    seconds: CREATE_TIMEOUT.as_secs(),
                });
            }
        };
        if !status.success() {
            let log = runc_log.to_path_buf();
            let message = crate::blocking("reading the runc log", move || Ok(last_error(&log)))
                .await?
                .unwrap_or_else(|| status.to_string());
            return Err(runc_error("run", id, message));
        }
        let pid = tokio::fs::read_to_string(&pid_file)
            .await
            .map_err(RuntimeError::io("reading", &pid_file))?;
        pid.trim()
            .parse()
            .map_err(|_| runc_error("run", id, format!("invalid pid file {pid:?}")))
    }

    /// `runc state`; `None` when runc does not know the container.
    pub async fn state(&self, id: &str) -> Result<Option<(ContainerStatus, i32)>, RuntimeError> {
        let mut cmd = self.command(None);
        cmd.arg("state").arg(id);
        let out = Self::output(cmd, "state", id, COMMAND_TIMEOUT).await?;
        if !out.status.success() {
            return Ok(None);
        }
        let s: State = serde_json::from_slice(&out.stdout)
            .map_err(|e| runc_error("state", id, e.to_string()))?;
        Ok(Some((s.status, s.pid)))
    }

    /// `runc kill <id> <signal>` to the init process (its pid namespace dies with it); a
    /// container that already stopped is fine.
    pub async fn kill(&self, id: &str, signal: &str) -> Result<(), RuntimeError> {
        let mut cmd = self.command(None);
        cmd.arg("kill").arg(id).arg(signal);
        let out = Self::output(cmd, "kill", id, COMMAND_TIMEOUT).await?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.contains("not running") || stderr.contains("does not exist") {
            return Ok(());
        }
        Err(runc_error("kill", id, stderr))
    }

    /// `runc delete --force` (kills what still runs); a container runc does not know is fine.
    pub async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let mut cmd = self.command(None);
        cmd.arg("delete").arg("--force").arg(id);
        let out = Self::output(cmd, "delete", id, COMMAND_TIMEOUT).await?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if out.status.success() || stderr.contains("does not exist") {
            return Ok(());
        }
        Err(runc_error("delete", id, stderr))
    }
}

fn runc_error(action: &'static str, id: &str, message: String) -> RuntimeError {
    RuntimeError::Runc {
        action,
        container: id.to_string(),
        message,
    }
}

/// The last `error`-level message of a runc JSON log (its last 64 KiB).
pub(crate) fn last_error(log: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(log).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(64 << 10)))
        .ok()?;
    let mut bytes = Vec::new();
    file.take(64 << 10).read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["level"] == "error")
            .then(|| v["msg"].as_str().map(str::to_string))
            .flatten()
    })
}
