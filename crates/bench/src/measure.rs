//! Running a child process for a measurement: wall time and peak RSS, from `wait4(2)`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// What one measured run of a child process gave.
#[derive(Debug)]
pub struct Measured {
    /// From spawn to exit.
    pub elapsed: Duration,
    /// Peak resident set size of the child (`ru_maxrss`), in bytes.
    pub peak_rss: u64,
    /// Whether it exited with status 0.
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to completion with stdout and stderr captured.
pub fn measure(command: &mut Command) -> anyhow::Result<Measured> {
    let what = format!("{:?}", command.get_program());
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn().with_context(|| format!("start {what}"))?;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let pid = i32::try_from(child.id()).context("child pid out of range")?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own unreaped child; `status` and `usage` are valid for writes.
        // std's Child is never waited on afterwards, so the pid is reaped exactly once.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            bail!("wait for {what}: {error}");
        }
    }
    let elapsed = started.elapsed();
    let collect = |h: Option<std::thread::JoinHandle<String>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Ok(Measured {
        elapsed,
        // Linux reports ru_maxrss in KiB.
        peak_rss: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_exit_status_output_and_a_plausible_rss() {
        let run = measure(Command::new("/bin/sh").args(["-c", "echo out; echo err >&2; exit 3"]))
            .expect("measure sh");
        assert!(!run.success);
        assert_eq!(run.stdout, "out\n");
        assert_eq!(run.stderr, "err\n");
        assert!(
            run.peak_rss > 100 * 1024,
            "a shell needs more than 100 KiB: {}",
            run.peak_rss
        );

        // dd reads into one 64 MiB buffer, touching every page: peak RSS must show it.
        let run =
            measure(Command::new("dd").args(["if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]))
                .expect("measure dd");
        assert!(run.success, "{}", run.stderr);
        assert!(run.peak_rss >= 64 * 1024 * 1024, "{}", run.peak_rss);
    }
}
