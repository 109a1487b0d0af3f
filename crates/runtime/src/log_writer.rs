//! Container stdout/stderr to log files in the CRI format the kubelet reads, rotated
//! kubelet-style.
//!
//! The container's stdout and stderr are pipes read by one dedicated thread per container (never
//! a tokio worker). Each line becomes a record
//!
//! ```text
//! <RFC 3339 timestamp, nanoseconds> <stdout|stderr> <F|P> <line>\n
//! ```
//!
//! where `F` ends a line and `P` is a part of a longer one: a line is cut every
//! [`MAX_LINE`] bytes, and output that ends without a newline is written as `P`. Records go
//! to `container.log`; when the next record would make it larger than
//! [`LogLimits::max_size`], the files are shifted (`container.log.1` → `container.log.2`, ...,
//! `container.log` → `container.log.1`, the oldest dropped) so at most
//! [`LogLimits::max_files`] files exist and the newest is always `container.log`.
//!
//! Memory is bounded by the pipe reads and one partial line per stream. A write that fails
//! (a full disk) is reported once and the output dropped, as the kubelet does: the container
//! never blocks on its log and nothing is buffered without bound.

use std::fs::{File, OpenOptions};
use std::io::{PipeReader, PipeWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use crate::RuntimeError;

/// The longest line written as one record; longer lines are split into `P` records of this
/// size (the kubelet's and containerd's limit).
pub const MAX_LINE: usize = 16 * 1024;

/// How much is read from a pipe at once.
const READ_CHUNK: usize = 32 * 1024;

/// Records are written to the file once this much is pending (and after every read).
const FLUSH_AT: usize = 64 * 1024;

/// Stack of a log thread: it holds no large locals (its buffers are on the heap).
const THREAD_STACK: usize = 128 * 1024;

/// How large container log files grow and how many are kept (the kubelet's
/// `containerLogMaxSize` and `containerLogMaxFiles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// A file is rotated before it would grow past this many bytes.
    pub max_size: u64,
    /// Files kept per container, the current one included (at least 2).
    pub max_files: u32,
}

impl Default for LogLimits {
    /// The kubelet's defaults: 10 MiB × 5 files.
    fn default() -> Self {
        LogLimits {
            max_size: 10 << 20,
            max_files: 5,
        }
    }
}

impl LogLimits {
    /// Limits of `max_size` bytes per file and `max_files` files; refused when a file could
    /// hold nothing (`max_size` 0) or no rotated file could be kept (`max_files` below 2).
    pub fn new(max_size: u64, max_files: u32) -> Result<Self, RuntimeError> {
        if max_size == 0 {
            return Err(RuntimeError::InvalidLogLimits {
                reason: "the container log max size must be greater than 0".into(),
            });
        }
        if max_files < 2 {
            return Err(RuntimeError::InvalidLogLimits {
                reason: format!(
                    "the container log max files ({max_files}) must be at least 2: the current file and one rotated file"
                ),
            });
        }
        Ok(LogLimits {
            max_size,
            max_files,
        })
    }
}

/// The path of rotated file `k` of the log at `base` (`k` = 0 is `base` itself).
pub fn rotated_path(base: &Path, k: u32) -> PathBuf {
    if k == 0 {
        return base.to_path_buf();
    }
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{k}"));
    PathBuf::from(name)
}

/// One record of a container log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRecord<'a> {
    /// When it was read from the container (RFC 3339).
    pub timestamp: &'a [u8],
    /// `stdout` or `stderr`.
    pub stream: &'a [u8],
    /// Whether it ends a line (`F`); a part (`P`) is continued by the next record.
    pub full: bool,
    /// The text, without newline.
    pub text: &'a [u8],
}

/// Parses one line of a log file (without its newline):
/// `<timestamp> <stdout|stderr> <F|P>[:<more tags>] <text>`. `None` when it is not a record.
pub fn parse_record(line: &[u8]) -> Option<LogRecord<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let timestamp = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default();
    if timestamp.is_empty() || !matches!(stream, b"stdout" | b"stderr") {
        return None;
    }
    let full = match tag.split(|&b| b == b':').next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    Some(LogRecord {
        timestamp,
        stream,
        full,
        text,
    })
}

/// The text held by the records of `content` (a whole log file read into memory): prefixes
/// stripped, parts joined, lines not records skipped. For small logs; `kubectl logs` streams.
pub fn log_text(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in content.split(|&b| b == b'\n') {
        if let Some(r) = parse_record(line) {
            out.extend_from_slice(r.text);
            if r.full {
                out.push(b'\n');
            }
        }
    }
    out
}

/// The thread writing one container's log. Cheap to clone; the thread ends when both pipes
/// reach end of file (every process of the container is gone).
#[derive(Debug, Clone)]
pub(crate) struct LogWriter {
    done: watch::Receiver<bool>,
}

/// The write ends of the pipes to give the container as stdout and stderr.
pub(crate) struct LogPipes {
    pub stdout: PipeWriter,
    pub stderr: PipeWriter,
}

impl LogWriter {
    /// Opens (creating) the log at `path` and starts the thread reading the container's
    /// pipes into it; returns the pipes' write ends. Nothing blocking runs on the caller's
    /// thread.
    pub(crate) async fn start(
        path: &Path,
        limits: LogLimits,
        container: &str,
    ) -> Result<(LogWriter, LogPipes), RuntimeError> {
        let pipe = |stream: &str| {
            std::io::pipe().map_err(RuntimeError::io("creating the pipe for", stream.to_owned()))
        };
        let (out_r, out_w) = pipe("stdout")?;
        let (err_r, err_w) = pipe("stderr")?;
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = watch::channel(false);
        let path = path.to_path_buf();
        let name = container.to_owned();
        let spawned = std::thread::Builder::new()
            .name(format!("log-{}", truncate(container, 10)))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let file = match LogFile::open(path.clone(), limits) {
                    Ok(f) => {
                        let _ = opened_tx.send(Ok(()));
                        f
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(RuntimeError::io("opening", &path)(e)));
                        return;
                    }
                };
                copy_streams(file, [out_r, err_r], &name);
                let _ = done_tx.send(true);
            });
        if let Err(e) = spawned {
            return Err(RuntimeError::io(
                "starting the log thread for",
                container.to_owned(),
            )(e));
        }
        match opened_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(RuntimeError::io(
                    "starting the log thread for",
                    container.to_owned(),
                )(std::io::Error::other(
                    "the log thread ended before opening the log",
                )));
            }
        }
        Ok((
            LogWriter { done: done_rx },
            LogPipes {
                stdout: out_w,
                stderr: err_w,
            },
        ))
    }

    /// Waits (at most `bound`) until everything the container wrote is in the log; returns
    /// whether it is. Past the bound (a process outside the container holds its pipe) the
    /// thread goes on by itself.
    pub(crate) async fn finished(&self, bound: Duration) -> bool {
        let mut done = self.done.clone();
        // A dropped sender (the thread ended or panicked) also means nothing more is written.
        matches!(
            tokio::time::timeout(bound, done.wait_for(|d| *d)).await,
            Ok(Ok(_)) | Ok(Err(_))
        )
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// One of the container's output streams.
struct Stream {
    pipe: Option<PipeReader>,
    name: &'static str,
    /// The start of a line not ended yet (at most [`MAX_LINE`] bytes).
    line: Vec<u8>,
}

/// Reads both pipes until both are closed, writing records to `file`.
fn copy_streams(mut file: LogFile, pipes: [PipeReader; 2], container: &str) {
    let [out, err] = pipes;
    let mut streams = [
        Stream {
            pipe: Some(out),
            name: "stdout",
            line: Vec::new(),
        },
        Stream {
            pipe: Some(err),
            name: "stderr",
            line: Vec::new(),
        },
    ];
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(2);
        let mut which = Vec::with_capacity(2);
        for (i, s) in streams.iter().enumerate() {
            if let Some(p) = &s.pipe {
                fds.push(libc::pollfd {
                    fd: p.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                which.push(i);
            }
        }
        if fds.is_empty() {
            break;
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs that outlives the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            warn!(container, error = %e, "polling the container's output; its log ends here");
            break;
        }
        for (fd, &i) in fds.iter().zip(&which) {
            if fd.revents == 0 {
                continue;
            }
            let stream = &mut streams[i];
            let Some(pipe) = stream.pipe.as_mut() else {
                continue;
            };
            let n = match pipe.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(container, stream = stream.name, error = %e, "reading the container's output");
                    0
                }
            };
            let now = timestamp();
            if n == 0 {
                // End of file: a last line without newline is kept as a partial record.
                if !stream.line.is_empty() {
                    file.record(&now, stream.name, b'P', &stream.line);
                    stream.line.clear();
                }
                stream.pipe = None;
                continue;
            }
            split_lines(&mut stream.line, &buf[..n], |tag, line| {
                file.record(&now, stream.name, tag, line)
            });
        }
        file.flush();
    }
    file.flush();
    debug!(container, "container output closed");
}

/// The record timestamp: RFC 3339 in UTC with nanoseconds (trailing zeros trimmed, as Go's
/// `RFC3339Nano`).
fn timestamp() -> String {
    jiff::Timestamp::now().to_string()
}

/// Splits `data` (following the unfinished line in `line`) into records: `F` for each line a
/// newline ends, `P` for each [`MAX_LINE`] bytes of a longer line. What is left unfinished
/// stays in `line` (at most [`MAX_LINE`] bytes; a full one is written as `P` only once more
/// output shows the line goes on, so a line of exactly [`MAX_LINE`] bytes stays one record).
fn split_lines(line: &mut Vec<u8>, mut data: &[u8], mut emit: impl FnMut(u8, &[u8])) {
    while !data.is_empty() {
        if line.len() == MAX_LINE && data[0] != b'\n' {
            emit(b'P', line);
            line.clear();
        }
        let room = MAX_LINE - line.len();
        let window = &data[..data.len().min(room + 1)];
        match window.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                if line.is_empty() {
                    emit(b'F', &data[..pos]);
                } else {
                    line.extend_from_slice(&data[..pos]);
                    emit(b'F', line);
                    line.clear();
                }
                data = &data[pos + 1..];
            }
            None => {
                let take = data.len().min(room);
                line.extend_from_slice(&data[..take]);
                data = &data[take..];
            }
        }
    }
}

/// The current log file of a container and its rotation.
struct LogFile {
    path: PathBuf,
    limits: LogLimits,
    file: File,
    /// Bytes in the file that are whole records.
    size: u64,
    /// Records not written yet.
    pending: Vec<u8>,
    /// Set after a failed write until one succeeds, so a full disk is reported once.
    failing: bool,
}

impl LogFile {
    fn open(path: PathBuf, limits: LogLimits) -> std::io::Result<Self> {
        let file = open_log(&path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path,
            limits,
            file,
            size,
            // Grows with use: an idle container costs no buffer.
            pending: Vec::new(),
            failing: false,
        })
    }

    /// Adds one record, rotating first when it would make the file larger than the limit.
    fn record(&mut self, ts: &str, stream: &str, tag: u8, line: &[u8]) {
        let len = ts.len() + stream.len() + line.len() + 5;
        let used = self.size + self.pending.len() as u64;
        if used > 0 && used + len as u64 > self.limits.max_size {
            self.flush();
            self.rotate();
        }
        self.pending.extend_from_slice(ts.as_bytes());
        self.pending.push(b' ');
        self.pending.extend_from_slice(stream.as_bytes());
        self.pending.push(b' ');
        self.pending.push(tag);
        self.pending.push(b' ');
        self.pending.extend_from_slice(line);
        self.pending.push(b'\n');
        if self.pending.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// Writes the pending records; on failure they are dropped (and the file cut back to its
    /// last whole record, so a torn record never glues onto the next one).
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        match self.file.write_all(&self.pending) {
            Ok(()) => {
                self.size += self.pending.len() as u64;
                if self.failing {
                    warn!(path = %self.path.display(), "container log writable again");
                    self.failing = false;
                }
            }
            Err(e) => {
                if !self.failing {
                    warn!(path = %self.path.display(), error = %e, "cannot write the container log: dropping its output until writes succeed again");
                    self.failing = true;
                }
                let _ = self.file.set_len(self.size);
            }
        }
        self.pending.clear();
    }

    /// Shifts the rotated files by one (dropping the oldest) and starts a new current file.
    fn rotate(&mut self) {
        let shifted = (1..self.limits.max_files)
            .rev()
            .try_for_each(|k| {
                let from = rotated_path(&self.path, k - 1);
                match std::fs::rename(&from, rotated_path(&self.path, k)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                }
            })
            .and_then(|()| open_log(&self.path));
        match shifted {
            Ok(file) => {
                self.file = file;
                self.size = 0;
            }
            Err(e) => {
                // Keep writing where we are: a log past its size beats a lost one.
                if !self.failing {
                    warn!(path = %self.path.display(), error = %e, "cannot rotate the container log");
                }
            }
        }
    }
}

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> (Vec<(char, Vec<u8>)>, Vec<u8>) {
        let mut line = Vec::new();
        let mut out = Vec::new();
        for c in chunks {
            split_lines(&mut line, c, |tag, l| out.push((tag as char, l.to_vec())));
        }
        (out, line)
    }

    #[test]
    fn lines_become_full_and_partial_records() {
        let long = vec![b'x'; MAX_LINE + 10];
        let exact = vec![b'y'; MAX_LINE];
        let f = |s: &[u8]| ('F', s.to_vec());
        let p = |s: &[u8]| ('P', s.to_vec());
        // (chunks as read from the pipe, records written, unfinished rest)
        type Records = Vec<(char, Vec<u8>)>;
        type Case<'a> = (Vec<&'a [u8]>, Records, &'a [u8]);
        let cases: Vec<Case> = vec![
            (vec![b"a\nb\n"], vec![f(b"a"), f(b"b")], b""),
            (vec![b"a", b"b\nc"], vec![f(b"ab")], b"c"),
            (vec![b"\n\n"], vec![f(b""), f(b"")], b""),
            (
                vec![&long, b"\n"],
                vec![p(&long[..MAX_LINE]), f(&long[MAX_LINE..])],
                b"",
            ),
            (vec![&exact, b"\n"], vec![f(&exact)], b""),
            (vec![&exact, b"z"], vec![p(&exact)], b"z"),
        ];
        for (chunks, want, rest) in cases {
            let (got, left) = split(&chunks);
            assert_eq!(
                got,
                want,
                "{:?}",
                chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
            );
            assert_eq!(left, rest);
        }
    }

    #[test]
    fn records_parse() {
        type Parsed<'a> = Option<(&'a str, &'a str, bool, &'a str)>;
        // (line, (timestamp, stream, full, text)) or None when not a record.
        let cases: [(&str, Parsed); 7] = [
            (
                "2024-05-01T10:00:00Z stdout F hello world",
                Some(("2024-05-01T10:00:00Z", "stdout", true, "hello world")),
            ),
            ("t stderr P part", Some(("t", "stderr", false, "part"))),
            ("t stdout F ", Some(("t", "stdout", true, ""))),
            ("t stdout F:x text", Some(("t", "stdout", true, "text"))),
            ("t stdin F text", None),
            ("t stdout X text", None),
            ("garbage", None),
        ];
        let s = |b: &[u8]| std::str::from_utf8(b).unwrap().to_owned();
        for (line, want) in cases {
            let got = parse_record(line.as_bytes())
                .map(|r| (s(r.timestamp), s(r.stream), r.full, s(r.text)));
            let want = want.map(|(t, st, f, x)| (t.to_owned(), st.to_owned(), f, x.to_owned()));
            assert_eq!(got, want, "{line:?}");
        }
        assert_eq!(
            log_text(b"t stdout P a\nt stdout F b\nnoise\nt stderr F c\nt stdout P d\n"),
            b"ab\nc\nd"
        );
    }

    #[test]
    fn limits_are_refused_when_nothing_could_be_kept() {
        assert!(LogLimits::new(0, 5).is_err());
        assert!(LogLimits::new(1024, 1).is_err());
        assert_eq!(
            LogLimits::new(1024, 2).unwrap(),
            LogLimits {
                max_size: 1024,
                max_files: 2
            }
        );
    }

    #[test]
    fn rotation_keeps_max_files_and_the_newest_in_the_base_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("container.log");
        let limits = LogLimits::new(200, 3).unwrap();
        let mut file = LogFile::open(path.clone(), limits).unwrap();
        for i in 0..40 {
            file.record(
                "2024-01-01T00:00:00.000000001Z",
                "stdout",
                b'F',
                format!("line {i:02}").as_bytes(),
            );
        }
        file.flush();
        let mut names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["container.log", "container.log.1", "container.log.2"]
        );
        for k in 0..3 {
            let p = rotated_path(&path, k);
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len <= 200, "{} has {len} bytes", p.display());
        }
        let newest = std::fs::read_to_string(&path).unwrap();
        assert!(newest.ends_with("stdout F line 39\n"), "{newest}");
        let older = std::fs::read_to_string(rotated_path(&path, 1)).unwrap();
        let first_newest = newest.lines().next().unwrap();
        let last_older = older.lines().last().unwrap();
        let n = |l: &str| l.rsplit(' ').next().unwrap().parse::<u32>().unwrap();
        assert_eq!(
            n(last_older) + 1,
            n(first_newest),
            "no record lost between files"
        );
    }

    #[tokio::test]
    async fn pipes_are_copied_until_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("container.log");
        let (writer, pipes) = LogWriter::start(&path, LogLimits::default(), "app")
            .await
            .unwrap();
        let LogPipes {
            mut stdout,
            mut stderr,
        } = pipes;
        stdout.write_all(b"out 1\nout").unwrap();
        stderr.write_all(b"err 1\n").unwrap();
        drop(stdout);
        drop(stderr);
        assert!(writer.finished(Duration::from_secs(60)).await);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut records: Vec<(String, String, String)> = text
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let ts = parts.next().unwrap();
                ts.parse::<jiff::Timestamp>()
                    .expect("an RFC 3339 timestamp");
                let rest: Vec<String> = parts.map(str::to_owned).collect();
                (rest[0].clone(), rest[1].clone(), rest[2].clone())
            })
            .collect();
        records.sort();
        let r = |s: &str, t: &str, l: &str| (s.to_owned(), t.to_owned(), l.to_owned());
        assert_eq!(
            records,
            [
                r("stderr", "F", "err 1"),
                r("stdout", "F", "out 1"),
                r("stdout", "P", "out")
            ]
        );
    }
}
