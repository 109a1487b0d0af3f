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

/// What one start-to-first-output run gave.
#[derive(Debug)]
pub struct FirstOutput {
    /// From spawn to the first byte on the child's stdout.
    pub first_output: Duration,
    /// From spawn to exit.
    pub elapsed: Duration,
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to completion, timing the first byte it writes to stdout: what a user waiting
/// for a container's first line sees (teardown after that is not counted).
pub fn first_output(command: &mut Command) -> anyhow::Result<FirstOutput> {
    let what = format!("{:?}", command.get_program());
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command.spawn().with_context(|| format!("start {what}"))?;
    let stderr = child.stderr.take().map(drain);
    let mut stdout = child.stdout.take().context("child stdout")?;
    let mut first = [0u8; 1];
    let (first_output, mut bytes) = loop {
        match stdout.read(&mut first) {
            Ok(0) => break (started.elapsed(), Vec::new()),
            Ok(_) => break (started.elapsed(), first.to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("read the stdout of {what}: {e}"),
        }
    };
    let _ = stdout.read_to_end(&mut bytes);
    let status = child.wait().with_context(|| format!("wait for {what}"))?;
    let elapsed = started.elapsed();
    Ok(FirstOutput {
        first_output,
        elapsed,
        success: status.success(),
        stdout: String::from_utf8_lossy(&bytes).into_owned(),
        stderr: stderr.and_then(|h| h.join().ok()).unwrap_or_default(),
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

    #[test]
    fn first_output_comes_before_exit() {
        let run =
            first_output(Command::new("/bin/sh").args(["-c", "echo hi; sleep 0.3; echo bye"]))
                .expect("run sh");
        assert!(run.success);
        assert_eq!(run.stdout, "hi\nbye\n");
        assert!(run.first_output < run.elapsed);
    }
}
