//! `runc` (Debian) as the OCI runtime: create, start, state, kill, delete.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;
use tokio::process::Command;

use crate::RuntimeError;

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

    fn command(&self, log: Option<&Path>) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root);
        if let Some(log) = log {
            c.arg("--log").arg(log).arg("--log-format").arg("json");
        }
        c.stdin(Stdio::null());
        c
    }

    /// `runc create`: the container's stdio are `stdout`/`stderr` (terminal=false pass-through).
    /// Returns the pid of the container's init process.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        runc_log: &Path,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<i32, RuntimeError> {
        let pid_file = bundle.join("init.pid");
        let status = self
            .command(Some(runc_log))
            .arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .await
            .map_err(|e| runc_error("create", id, e.to_string()))?;
        if !status.success() {
            return Err(runc_error(
                "create",
                id,
                last_error(runc_log).unwrap_or_else(|| status.to_string()),
            ));
        }
        let pid =
            std::fs::read_to_string(&pid_file).map_err(RuntimeError::io("reading", &pid_file))?;
        pid.trim()
            .parse()
            .map_err(|_| runc_error("create", id, format!("invalid pid file {pid:?}")))
    }

    /// `runc start`.
    pub async fn start(&self, id: &str, runc_log: &Path) -> Result<(), RuntimeError> {
        self.simple("start", id, Some(runc_log)).await
    }

    /// `runc state`; `None` when runc does not know the container.
    pub async fn state(&self, id: &str) -> Result<Option<(ContainerStatus, i32)>, RuntimeError> {
        let out = self
            .command(None)
            .arg("state")
            .arg(id)
            .output()
            .await
            .map_err(|e| runc_error("state", id, e.to_string()))?;
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
        let out = self
            .command(None)
            .arg("kill")
            .arg(id)
            .arg(signal)
            .output()
            .await
            .map_err(|e| runc_error("kill", id, e.to_string()))?;
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
        let out = self
            .command(None)
            .arg("delete")
            .arg("--force")
            .arg(id)
            .output()
            .await
            .map_err(|e| runc_error("delete", id, e.to_string()))?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if out.status.success() || stderr.contains("does not exist") {
            return Ok(());
        }
        Err(runc_error("delete", id, stderr))
    }

    async fn simple(
        &self,
        action: &'static str,
        id: &str,
        log: Option<&Path>,
    ) -> Result<(), RuntimeError> {
        let out = self
            .command(log)
            .arg(action)
            .arg(id)
            .output()
            .await
            .map_err(|e| runc_error(action, id, e.to_string()))?;
        if out.status.success() {
            return Ok(());
        }
        let msg = log
            .and_then(last_error)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        Err(runc_error(action, id, msg))
    }
}

fn runc_error(action: &'static str, id: &str, message: String) -> RuntimeError {
    RuntimeError::Runc {
        action,
        container: id.to_string(),
        message,
    }
}

/// The last `error`-level message of a runc JSON log.
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["level"] == "error")
            .then(|| v["msg"].as_str().map(str::to_string))
            .flatten()
    })
}
