//! Running a command in a running container (`runc exec`), as the node's exec probes and
//! lifecycle hooks do. The command runs with the container's own process settings (user,
//! environment, working dir, capabilities, seccomp), as `runc exec` takes them from the
//! container's config. Its stdout and stderr share one pipe; at most a given number of bytes
//! is kept and the rest is read and dropped, so the command never blocks on a full pipe and
//! nothing it prints grows memory. A timeout kills the command.
//!
//! Each exec runs in a task of its own that always runs to its end (exit or kill): a caller
//! that stops waiting never leaves an unreaped or orphaned process behind.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tracing::debug;

use crate::RuntimeError;
use crate::runc::{Runc, last_error};

/// How long output is still read after the command exited (a background process it started
/// may hold the pipe open; what it writes later is not waited for).
const DRAIN: Duration = Duration::from_millis(200);

/// How long `runc exec` may take to exit once the command it runs was killed.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Distinguishes the pid and log files of concurrent execs in one container.
static NEXT_EXEC: AtomicU64 = AtomicU64::new(0);

/// One command to run in a container.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// The command and its arguments (no shell is added).
    pub command: Vec<String>,
    /// Killed after this long; `None` waits as long as the command runs.
    pub timeout: Option<Duration>,
    /// Bytes of output kept (stdout and stderr together, in the order written).
    pub output_limit: usize,
}

/// How an exec ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The command's exit code (128 + signal number when a signal killed it).
    pub exit_code: i32,
    /// Its stdout and stderr, at most the request's `output_limit` bytes.
    pub output: Vec<u8>,
    /// Whether more was written than kept.
    pub truncated: bool,
}

/// What is needed to exec in one container; cheap to clone, usable while the container's
/// owner waits for its exit.
#[derive(Debug, Clone)]
pub struct ContainerExec {
    pub(crate) runc: Runc,
    /// The runc container id.
    pub(crate) id: String,
    /// The container dir (holds the exec's pid file and runc log while it runs).
    pub(crate) dir: PathBuf,
}

impl ContainerExec {
    /// Runs `req.command` in the container and waits for it. A command that outlives
    /// `req.timeout` is killed and [`RuntimeError::ExecTimeout`] returned; runc failing to
    /// start it (no such executable, the container not running) is [`RuntimeError::Runc`].
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecOutput, RuntimeError> {
        if req.command.is_empty() {
            return Err(RuntimeError::Runc {
                action: "exec",
                container: self.id.clone(),
                message: "no command given".into(),
            });
        }
        let this = self.clone();
        // Detached: the exec ends by itself even when the caller stops waiting.
        tokio::spawn(async move { this.run(req).await })
            .await
            .map_err(|e| RuntimeError::Worker {
                action: "running a command in the container",
                reason: e.to_string(),
            })?
    }

    async fn run(&self, req: ExecRequest) -> Result<ExecOutput, RuntimeError> {
        let n = NEXT_EXEC.fetch_add(1, Ordering::Relaxed);
        let pid_file = self.dir.join(format!("exec-{n}.pid"));
        let log = self.dir.join(format!("exec-{n}.log"));
        let result = self.run_with(&req, &pid_file, &log).await;
        let (p, l) = (pid_file.clone(), log.clone());
        let runc_error = crate::blocking("cleaning up after an exec", move || {
            let message = last_error(&l);
            let _ = std::fs::remove_file(&p);
            let _ = std::fs::remove_file(&l);
            Ok(message)
        })
        .await
        .unwrap_or(None);
        let out = result?;
        match runc_error {
            // runc itself failed (the command never ran): its message says why.
            Some(message) if out.exit_code != 0 => Err(RuntimeError::Runc {
                action: "exec",
                container: self.id.clone(),
                message,
            }),
            _ => Ok(out),
        }
    }

    async fn run_with(
        &self,
        req: &ExecRequest,
        pid_file: &std::path::Path,
        log: &std::path::Path,
    ) -> Result<ExecOutput, RuntimeError> {
        let io_err = |what: &'static str| {
            let id = self.id.clone();
            move |e: std::io::Error| RuntimeError::Runc {
                action: "exec",
                container: id,
                message: format!("{what}: {e}"),
            }
        };
        let (reader, writer) = std::io::pipe().map_err(io_err("creating the output pipe"))?;
        let writer2 = writer
            .try_clone()
            .map_err(io_err("creating the output pipe"))?;
        let mut cmd = self.runc.command(Some(log));
        cmd.arg("exec")
            .arg("--pid-file")
            .arg(pid_file)
            // runc takes everything after the container id as the command (no flags there).
            .arg(&self.id)
            .args(&req.command)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::from(writer2));
        let mut child = cmd.spawn().map_err(io_err("starting runc exec"))?;
        // The command holds the write ends: dropped, so the pipe ends when the exec's
        // processes close it.
        drop(cmd);
        let mut pipe =
            tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(reader))
                .map_err(io_err("reading the output pipe"))?;

        let mut output = Vec::new();
        let mut truncated = false;
        let mut chunk = vec![0u8; 8192];
        let mut eof = false;
        let mut status = None;
        let mut timed_out = false;
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        let mut deadline = req.timeout.map_or(far, |t| Instant::now() + t);
        let mut drain_until = far;
        loop {
            if status.is_some() && (eof || Instant::now() >= drain_until) {
                break;
            }
            tokio::select! {
                read = pipe.read(&mut chunk), if !eof => match read {
                    Ok(0) | Err(_) => eof = true,
                    Ok(n) => {
                        let room = req.output_limit.saturating_sub(output.len());
                        output.extend_from_slice(&chunk[..n.min(room)]);
                        truncated |= n > room;
                    }
                },
                s = child.wait(), if status.is_none() => {
                    status = Some(s.map_err(io_err("waiting for runc exec"))?);
                    drain_until = Instant::now() + DRAIN;
                }
                _ = tokio::time::sleep_until(deadline), if status.is_none() => {
                    if timed_out {
                        // runc did not exit after its command was killed.
                        let _ = child.start_kill();
                        deadline = far;
                    } else {
                        timed_out = true;
                        self.kill_command(pid_file, &mut child).await;
                        deadline = Instant::now() + KILL_WAIT;
                    }
                }
                _ = tokio::time::sleep_until(drain_until), if status.is_some() => {}
            }
        }
        if timed_out {
            return Err(RuntimeError::ExecTimeout {
                container: self.id.clone(),
                command: req.command.join(" "),
                seconds: req.timeout.map_or(0, |t| t.as_secs()),
            });
        }
        let status = status.unwrap_or_default();
        use std::os::unix::process::ExitStatusExt;
        let exit_code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1);
        debug!(container = %self.id, exit_code, "exec finished");
        Ok(ExecOutput {
            exit_code,
            output,
            truncated,
        })
    }

    /// Kills the exec'd command (its host pid is in the pid file runc wrote), or runc itself
    /// when it has not started the command yet.
    async fn kill_command(&self, pid_file: &std::path::Path, child: &mut tokio::process::Child) {
        let pid = tokio::fs::read_to_string(pid_file)
            .await
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw);
        match pid {
            Some(pid) => {
                if let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::KILL) {
                    debug!(container = %self.id, error = %e, "killing a timed out exec");
                }
            }
            None => {
                let _ = child.start_kill();
            }
        }
    }
}
