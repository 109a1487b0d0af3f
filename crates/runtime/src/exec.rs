//! Running a command in a running container (`runc exec`). The command runs with the
//! container's own process settings (user, environment, working dir, capabilities, seccomp), as
//! `runc exec` takes them from the container's config.
//!
//! Two levels:
//! - [`ContainerExec::spawn`] starts the command and hands back an [`ExecProcess`] with its
//!   stdin, stdout and stderr as pipes (stdout and stderr apart, or sharing one pipe in the
//!   order written) for a caller that streams them (`kubectl exec`), or on a terminal
//!   ([`ExecSpawn::tty`], `kubectl exec -t`): a pty whose master [`ExecProcess::terminal`]
//!   hands out, its slave given to `runc exec -t` as its stdio (runc sets it raw, makes a
//!   terminal of its own in the container and copies between the two; a resize sets the
//!   master's size and sends runc SIGWINCH, on which runc copies the size over). Dropping the process before it was waited for kills the command and reaps
//!   runc in the background, so no process is left behind.
//! - [`ContainerExec::exec`] runs a command to its end, as the node's exec probes and
//!   lifecycle hooks do: stdout and stderr share one pipe, at most a given number of bytes is
//!   kept and the rest is read and dropped (the command never blocks on a full pipe and
//!   nothing it prints grows memory), and a timeout kills the command. It runs in a task of
//!   its own that always runs to its end (exit or kill): a caller that stops waiting never
//!   leaves an unreaped or orphaned process behind.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
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

/// One command to run in a container to its end ([`ContainerExec::exec`]).
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// The command and its arguments (no shell is added).
    pub command: Vec<String>,
    /// Killed after this long; `None` waits as long as the command runs.
    pub timeout: Option<Duration>,
    /// Bytes of output kept (stdout and stderr together, as they arrive).
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

/// Where a spawned command's stdout and stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecStdio {
    /// Both into one pipe ([`ExecProcess::stdout`]), each in the order written (runc copies
    /// each stream through a pipe of its own, so their relative order is not exact).
    Combined,
    /// Each into its own pipe ([`ExecProcess::stdout`], [`ExecProcess::stderr`]).
    Separate,
}

/// One command to start in a container ([`ContainerExec::spawn`]).
#[derive(Debug, Clone)]
pub struct ExecSpawn {
    /// The command and its arguments (no shell is added).
    pub command: Vec<String>,
    /// Whether the command gets a stdin pipe ([`ExecProcess::stdin`]); else it reads
    /// nothing (`/dev/null`).
    pub stdin: bool,
    /// Where its stdout and stderr go (ignored with `tty`).
    pub output: ExecStdio,
    /// Runs the command on a terminal ([`ExecProcess::terminal`]): stdin, stdout and stderr
    /// are all the terminal, `stdin` and `output` are ignored.
    pub tty: bool,
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

/// A command started in a container by [`ContainerExec::spawn`]. Its pipes can be taken out
/// (`Option::take`) and used from other tasks; [`ExecProcess::wait`] collects its exit code.
#[derive(Debug)]
pub struct ExecProcess {
    /// Its stdin (when asked for): dropping it closes the command's stdin.
    pub stdin: Option<pipe::Sender>,
    /// Its stdout (and stderr with [`ExecStdio::Combined`]).
    pub stdout: Option<pipe::Receiver>,
    /// Its stderr, with [`ExecStdio::Separate`].
    pub stderr: Option<pipe::Receiver>,
    /// Its terminal, with [`ExecSpawn::tty`].
    pub terminal: Option<Terminal>,
    /// `None` once waited for.
    running: Option<Running>,
}

/// The `runc exec` of a spawned command, until it is reaped.
#[derive(Debug)]
struct Running {
    child: tokio::process::Child,
    /// The runc container id.
    id: String,
    /// Where runc writes the command's host pid.
    pid_file: PathBuf,
    /// runc's own log (why it could not start the command).
    log: PathBuf,
    /// The clean-up of its files once it exited (a task of its own: a `wait` dropped
    /// half-way finds it again).
    cleanup: Option<tokio::task::JoinHandle<Option<String>>>,
    /// The error runc logged, once its files were cleaned up.
    runc_error: Option<Option<String>>,
}

impl ContainerExec {
    /// Starts `spec.command` in the container. Fails when runc cannot be started; runc failing
    /// to start the command itself (no such executable, the container not running) shows at
    /// [`ExecProcess::wait`].
    pub async fn spawn(&self, spec: ExecSpawn) -> Result<ExecProcess, RuntimeError> {
        if spec.command.is_empty() {
            return Err(self.error("no command given".into()));
        }
        let n = NEXT_EXEC.fetch_add(1, Ordering::Relaxed);
        let pid_file = self.dir.join(format!("exec-{n}.pid"));
        let log = self.dir.join(format!("exec-{n}.log"));
        let io_err = |what: &'static str| {
            let id = self.id.clone();
            move |e: std::io::Error| RuntimeError::Runc {
                action: "exec",
                container: id,
                message: format!("{what}: {e}"),
            }
        };
        let mut cmd = self.runc.command(Some(&log));
        cmd.arg("exec").arg("--pid-file").arg(&pid_file);
        if spec.tty {
            let pty = crate::blocking("opening a terminal", open_pty).await?;
            cmd.arg("--tty")
                .stdin(Stdio::from(
                    pty.slave
                        .try_clone()
                        .map_err(io_err("opening a terminal"))?,
                ))
                .stdout(Stdio::from(
                    pty.slave
                        .try_clone()
                        .map_err(io_err("opening a terminal"))?,
                ))
                .stderr(Stdio::from(pty.slave))
                .arg(&self.id)
                .args(&spec.command);
            let child = cmd.spawn().map_err(io_err("starting runc exec"))?;
            // The slave is runc's alone now: the master reads EOF once runc exited.
            drop(cmd);
            // Opened while runc is an unreaped child: the pid cannot name another process.
            let runc_pid = child
                .id()
                .and_then(|p| rustix::process::Pid::from_raw(p as i32))
                .and_then(|p| {
                    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
                })
                .map(Arc::new);
            // SAFETY: an OwnedFd's descriptor stays the same and open for as long as the
            // AsyncFd holds it (it deregisters before dropping it).
            let master = unsafe { tokio::io::unix::AsyncFd::register(pty.master) }
                .map_err(|e| io_err("watching the terminal")(std::io::Error::from(e)))?;
            return Ok(ExecProcess {
                stdin: None,
                stdout: None,
                stderr: None,
                terminal: Some(Terminal {
                    master: Arc::new(master),
                    runc: runc_pid,
                }),
                running: Some(Running {
                    child,
                    id: self.id.clone(),
                    pid_file,
                    log,
                    cleanup: None,
                    runc_error: None,
                }),
            });
        }
        let mut stdin = None;
        if spec.stdin {
            let (writer, reader) = pipe::pipe().map_err(io_err("creating the stdin pipe"))?;
            // The child's end must block as a plain file descriptor does.
            let reader = reader
                .into_blocking_fd()
                .map_err(io_err("creating the stdin pipe"))?;
            cmd.stdin(Stdio::from(reader));
            stdin = Some(writer);
        } else {
            cmd.stdin(Stdio::null());
        }
        let (out_reader, out_writer) =
            std::io::pipe().map_err(io_err("creating the output pipe"))?;
        let mut stderr = None;
        match spec.output {
            ExecStdio::Combined => {
                let again = out_writer
                    .try_clone()
                    .map_err(io_err("creating the output pipe"))?;
                cmd.stderr(Stdio::from(again));
            }
            ExecStdio::Separate => {
                let (reader, writer) =
                    std::io::pipe().map_err(io_err("creating the stderr pipe"))?;
                cmd.stderr(Stdio::from(writer));
                stderr = Some(receiver(reader).map_err(io_err("reading the stderr pipe"))?);
            }
        }
        cmd.stdout(Stdio::from(out_writer))
            // runc takes everything after the container id as the command (no flags there).
            .arg(&self.id)
            .args(&spec.command);
        let child = cmd.spawn().map_err(io_err("starting runc exec"))?;
        // The command holds the child's ends of the pipes: dropped, so each pipe ends when the
        // exec's processes close it.
        drop(cmd);
        let stdout = receiver(out_reader).map_err(io_err("reading the output pipe"))?;
        Ok(ExecProcess {
            stdin,
            stdout: Some(stdout),
            stderr,
            terminal: None,
            running: Some(Running {
                child,
                id: self.id.clone(),
                pid_file,
                log,
                cleanup: None,
                runc_error: None,
            }),
        })
    }

    /// Runs `req.command` in the container and waits for it. A command that outlives
    /// `req.timeout` is killed and [`RuntimeError::ExecTimeout`] returned; runc failing to
    /// start it (no such executable, the container not running) is [`RuntimeError::Runc`].
    pub async fn exec(&self, req: ExecRequest) -> Result<ExecOutput, RuntimeError> {
        if req.command.is_empty() {
            return Err(self.error("no command given".into()));
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
        let mut process = self
            .spawn(ExecSpawn {
                command: req.command.clone(),
                stdin: false,
                output: ExecStdio::Combined,
                tty: false,
            })
            .await?;
        let mut pipe = process.stdout.take();
        let mut output = Vec::new();
        let mut truncated = false;
        let mut chunk = vec![0u8; 8192];
        let mut status = None;
        let mut timed_out = false;
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        let mut deadline = req.timeout.map_or(far, |t| Instant::now() + t);
        let mut drain_until = far;
        loop {
            if status.is_some() && (pipe.is_none() || Instant::now() >= drain_until) {
                break;
            }
            tokio::select! {
                read = async { pipe.as_mut()?.read(&mut chunk).await.ok() }, if pipe.is_some() => match read {
                    None | Some(0) => pipe = None,
                    Some(n) => {
                        let room = req.output_limit.saturating_sub(output.len());
                        output.extend_from_slice(&chunk[..n.min(room)]);
                        truncated |= n > room;
                    }
                },
                s = process.wait(), if status.is_none() => {
                    status = Some(s);
                    drain_until = Instant::now() + DRAIN;
                }
                _ = tokio::time::sleep_until(deadline), if status.is_none() => {
                    if timed_out {
                        // runc did not exit after its command was killed.
                        process.kill_runc();
                        deadline = far;
                    } else {
                        timed_out = true;
                        process.kill().await;
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
        let exit_code = status.unwrap_or_else(|| Err(self.error("not waited for".into())))?;
        debug!(container = %self.id, exit_code, "exec finished");
        Ok(ExecOutput {
            exit_code,
            output,
            truncated,
        })
    }

    fn error(&self, message: String) -> RuntimeError {
        RuntimeError::Runc {
            action: "exec",
            container: self.id.clone(),
            message,
        }
    }
}

impl ExecProcess {
    /// Waits for the command to end: its exit code (128 + signal number when a signal killed
    /// it), or [`RuntimeError::Runc`] when runc could not start it. Cancel-safe; once it
    /// returned, later calls fail.
    pub async fn wait(&mut self) -> Result<i32, RuntimeError> {
        let gone = || RuntimeError::Runc {
            action: "exec",
            container: String::new(),
            message: "already waited for".into(),
        };
        // Nothing is taken before the last await: dropped half-way, it is simply called again
        // (the child keeps its exit status).
        let (status, runc_error) = match self.running.as_mut() {
            Some(running) => {
                let status = running.child.wait().await;
                if running.runc_error.is_none() {
                    let (p, l) = (running.pid_file.clone(), running.log.clone());
                    let cleanup = running
                        .cleanup
                        .get_or_insert_with(|| tokio::spawn(clean_up(p, l)));
                    running.runc_error = Some(cleanup.await.unwrap_or(None));
                }
                (status, running.runc_error.clone().flatten())
            }
            None => return Err(gone()),
        };
        let running = self.running.take().ok_or_else(gone)?;
        let status = status.map_err(|e| RuntimeError::Runc {
            action: "exec",
            container: running.id.clone(),
            message: format!("waiting for runc exec: {e}"),
        })?;
        use std::os::unix::process::ExitStatusExt;
        let exit_code = status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1);
        match runc_error {
            // runc itself failed (the command never ran): its message says why.
            Some(message) if exit_code != 0 => Err(RuntimeError::Runc {
                action: "exec",
                container: running.id,
                message,
            }),
            _ => Ok(exit_code),
        }
    }

    /// Kills the command (SIGKILL to its host pid, from the pid file runc wrote), or runc
    /// itself when it has not started the command yet. [`ExecProcess::wait`] then returns.
    pub async fn kill(&mut self) {
        if let Some(running) = self.running.as_mut() {
            running.kill().await;
        }
    }

    /// Kills runc itself (when it does not exit after its command was killed).
    fn kill_runc(&mut self) {
        if let Some(running) = self.running.as_mut() {
            let _ = running.child.start_kill();
        }
    }
}

impl Drop for ExecProcess {
    /// A process not waited for is killed and reaped in the background, its files removed.
    fn drop(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    running.kill().await;
                    if tokio::time::timeout(KILL_WAIT, running.child.wait())
                        .await
                        .is_err()
                    {
                        let _ = running.child.start_kill();
                        let _ = running.child.wait().await;
                    }
                    clean_up(running.pid_file, running.log).await;
                });
            }
            // No runtime left (the process is ending): runc is killed at least.
            Err(_) => {
                let _ = running.child.start_kill();
            }
        }
    }
}

impl Running {
    async fn kill(&mut self) {
        let pid = tokio::fs::read_to_string(&self.pid_file)
            .await
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw);
        match pid {
            Some(pid) => {
                if let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::KILL) {
                    debug!(container = %self.id, error = %e, "killing an exec'd command");
                }
            }
            None => {
                let _ = self.child.start_kill();
            }
        }
    }
}

/// Removes an exec's pid file and runc's log; returns the error runc logged, if any.
async fn clean_up(pid_file: PathBuf, log: PathBuf) -> Option<String> {
    crate::blocking("cleaning up after an exec", move || {
        let message = last_error(&log);
        remove_quietly(&pid_file);
        remove_quietly(&log);
        Ok(message)
    })
    .await
    .unwrap_or(None)
}

/// Removes `path`, ignoring that it is missing. Blocking.
fn remove_quietly(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// The read end of a pipe as a non-blocking tokio receiver.
fn receiver(reader: std::io::PipeReader) -> std::io::Result<pipe::Receiver> {
    pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(reader))
}

/// The terminal of a command spawned with [`ExecSpawn::tty`]: its pty's master, read and
/// written through [`Terminal::reader`] and [`Terminal::writer`] (the halves share it).
#[derive(Debug)]
pub struct Terminal {
    master: Arc<tokio::io::unix::AsyncFd<OwnedFd>>,
    /// runc's pidfd (SIGWINCH after a resize).
    runc: Option<Arc<OwnedFd>>,
}

/// Reads what the command writes to its terminal; the end of the command is EOF.
#[derive(Debug)]
pub struct TerminalReader(Arc<tokio::io::unix::AsyncFd<OwnedFd>>);

/// Writes to the command's terminal (its input).
#[derive(Debug)]
pub struct TerminalWriter(Arc<tokio::io::unix::AsyncFd<OwnedFd>>);

/// Resizes the command's terminal.
#[derive(Debug, Clone)]
pub struct TerminalResizer {
    master: Arc<tokio::io::unix::AsyncFd<OwnedFd>>,
    runc: Option<Arc<OwnedFd>>,
}

impl Terminal {
    /// The output side.
    pub fn reader(&self) -> TerminalReader {
        TerminalReader(self.master.clone())
    }

    /// The input side.
    pub fn writer(&self) -> TerminalWriter {
        TerminalWriter(self.master.clone())
    }

    /// What resizes it.
    pub fn resizer(&self) -> TerminalResizer {
        TerminalResizer {
            master: self.master.clone(),
            runc: self.runc.clone(),
        }
    }
}

impl TerminalResizer {
    /// Sets the terminal's size (`TIOCSWINSZ` on the master, on the blocking pool) and tells
    /// runc (SIGWINCH), which sets it on the terminal inside the container.
    pub async fn resize(&self, columns: u16, rows: u16) -> std::io::Result<()> {
        let (master, runc) = (self.master.clone(), self.runc.clone());
        tokio::task::spawn_blocking(move || {
            let size = rustix::termios::Winsize {
                ws_row: rows,
                ws_col: columns,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            rustix::termios::tcsetwinsize(master.get_ref(), size)?;
            if let Some(pidfd) = runc {
                rustix::process::pidfd_send_signal(&*pidfd, rustix::process::Signal::WINCH)?;
            }
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

impl tokio::io::AsyncRead for TerminalReader {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                rustix::io::read(fd.get_ref(), &mut *unfilled).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: every slave fd is closed (the command and runc ended): EOF.
                Ok(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl tokio::io::AsyncWrite for TerminalWriter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard
                .try_io(|fd| rustix::io::write(fd.get_ref(), buf).map_err(std::io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// A terminal's input has no end of its own: the command ends when it decides to.
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A new pty: the master non-blocking (for [`tokio::io::unix::AsyncFd`]), the slave as the
/// command's stdio. Blocking (opens the slave's device).
struct Pty {
    master: OwnedFd,
    slave: std::fs::File,
}

fn open_pty() -> Result<Pty, RuntimeError> {
    use rustix::pty::OpenptFlags;
    let fail = |what: &str, e: std::io::Error| RuntimeError::Runc {
        action: "exec",
        container: String::new(),
        message: format!("{what}: {e}"),
    };
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .map_err(|e| fail("opening a pty", e.into()))?;
    rustix::pty::grantpt(&master).map_err(|e| fail("granting the pty", e.into()))?;
    rustix::pty::unlockpt(&master).map_err(|e| fail("unlocking the pty", e.into()))?;
    let name =
        rustix::pty::ptsname(&master, Vec::new()).map_err(|e| fail("naming the pty", e.into()))?;
    let path = {
        use std::os::unix::ffi::OsStrExt;
        std::path::PathBuf::from(std::ffi::OsStr::from_bytes(name.as_bytes()))
    };
    use std::os::unix::fs::OpenOptionsExt;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(&path)
        .map_err(|e| fail("opening the pty's terminal", e))?;
    rustix::io::ioctl_fionbio(&master, true)
        .map_err(|e| fail("setting the pty non-blocking", e.into()))?;
    Ok(Pty { master, slave })
}
