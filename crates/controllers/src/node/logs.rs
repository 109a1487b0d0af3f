//! Container logs for `kubectl logs`, read from the CRI-format files the runtime writes
//! (`imc_runtime::LogLimits`): `container.log` and its rotated predecessors `container.log.1`
//! (newer) … `container.log.N` (oldest), read as one stream, oldest first.
//!
//! Each record is `<timestamp> <stream> <F|P> <text>`; `P` records are parts of a line that the
//! following records continue, so a logical line ends with an `F` record. The reader strips
//! the prefixes and joins the parts; `--timestamps` prints the timestamp of a line's first
//! record before it, `--since` drops the lines that started earlier, `--limit-bytes` cuts the
//! output. `--tail=N` finds where the last N lines start by reading the files backwards in
//! blocks, so memory stays bounded by the block size whatever the size of the log. `--follow`
//! continues across rotation: when `container.log` names another file than the one being read,
//! that one is read to its end and the newer files follow.
//!
//! File reads block, so each step of the reader runs on the blocking pool, never on an async
//! worker.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use imc_runtime::{parse_record, rotated_path};

use super::NodeError;

/// What a log request asks for.
#[derive(Debug, Clone, Default)]
pub struct LogRequest {
    /// The container.
    pub container: String,
    /// Keep streaming while the container runs.
    pub follow: bool,
    /// Only the last N lines (all when None or negative).
    pub tail_lines: Option<i64>,
    /// The previous instance's log (of a restarted container).
    pub previous: bool,
    /// Print each line's timestamp before it.
    pub timestamps: bool,
    /// Only lines written at or after this time.
    pub since: Option<jiff::Timestamp>,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<i64>,
}

/// File name, in a container's log dir (`DIR/logs/<pod uid>/<name>/`), of its current (or
/// last) instance's log; rotated files follow it as `container.log.1` …
pub(crate) const CURRENT_LOG: &str = "container.log";

/// File name, in a container's log dir, of the log of its previous instance (rotated files
/// follow it as `previous.log.1` …).
pub(crate) const PREVIOUS_LOG: &str = "previous.log";

/// How often a followed log is checked for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Bytes read at once, forwards and backwards; also the largest chunk sent.
const BLOCK: usize = 64 * 1024;

/// Records longer than this are not the runtime's (it cuts lines at 16 KiB): skipped.
const MAX_RECORD: usize = 64 * 1024;

/// How much of a record's start the backward scan keeps to read its tag.
const HEAD: usize = 128;

/// Rotated files looked for beyond `container.log` (far above any sane `max_files`).
const MAX_ROTATED: u32 = 1000;

/// Moves the log of an ended container instance (`current` and its rotated files) to
/// `previous` (its files named alike), replacing what was there: the files
/// `kubectl logs --previous` reads. Nothing changes when there is no current log (the
/// instance wrote none).
pub(crate) async fn keep_previous(current: PathBuf, previous: PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        if std::fs::symlink_metadata(&current).is_err() {
            return Ok(());
        }
        for k in 0..=MAX_ROTATED {
            match std::fs::remove_file(rotated_path(&previous, k)) {
                Err(e) if e.kind() == ErrorKind::NotFound && k > 0 => break,
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        for k in 0..=MAX_ROTATED {
            match std::fs::rename(rotated_path(&current, k), rotated_path(&previous, k)) {
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) => return Err(e),
                Ok(()) => {}
            }
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// One file of a log.
struct LogFile {
    file: File,
    ino: u64,
}

/// A position in a log: file index (oldest first) and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    file: usize,
    offset: u64,
}

/// Opens `base` and its rotated files, oldest first. Retried when a rotation moves the files
/// while they are opened, so the set is consistent.
fn open_set(base: &Path) -> std::io::Result<Vec<LogFile>> {
    let mut files = Vec::new();
    for _ in 0..3 {
        files.clear();
        let newest = open_log(base)?;
        let ino = newest.ino;
        files.push(newest);
        for k in 1..=MAX_ROTATED {
            match open_log(&rotated_path(base, k)) {
                Ok(f) => files.push(f),
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) => return Err(e),
            }
        }
        if std::fs::metadata(base).is_ok_and(|m| m.ino() == ino) {
            break;
        }
    }
    // A file moved by a rotation mid-way may have been opened twice: keep its newest place.
    let mut seen = Vec::new();
    files.retain(|f| {
        let new = !seen.contains(&f.ino);
        seen.push(f.ino);
        new
    });
    files.reverse();
    Ok(files)
}

/// Opens one log file for reading, refusing anything but a regular file (no symlink followed,
/// no FIFO waited on).
fn open_log(path: &Path) -> std::io::Result<LogFile> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(LogFile {
        file,
        ino: meta.ino(),
    })
}

/// Whether the record starting with `head` ends a line.
fn head_is_full(head: &[u8]) -> bool {
    let mut parts = head.splitn(4, |&b| b == b' ');
    let (_, _, tag) = (parts.next(), parts.next(), parts.next());
    tag.is_some_and(|t| t.first() == Some(&b'F'))
}

/// Where the last `n` lines of the log start: the position right after the `n`-th line end
/// (an `F` record) counted from the end, the last record aside. Reads the files backwards in
/// [`BLOCK`]-sized blocks, keeping only the first [`HEAD`] bytes of the record after the scan
/// position, so memory does not depend on the log's size. A file not ending with a newline
/// (cut by a crash) counts as ending one.
fn tail_start(files: &[LogFile], n: u64, block: usize) -> std::io::Result<Pos> {
    let lens: Vec<u64> = files
        .iter()
        .map(|f| f.file.metadata().map(|m| m.len()))
        .collect::<Result<_, _>>()?;
    let last = files.len().saturating_sub(1);
    if n == 0 {
        return Ok(Pos {
            file: last,
            offset: lens.get(last).copied().unwrap_or(0),
        });
    }
    let mut scan = TailScan {
        n,
        count: 0,
        last_seen: false,
        next_start: None,
    };
    // The first bytes after the scan position (the head of the record that starts there).
    let mut after: Vec<u8> = Vec::with_capacity(HEAD);
    let mut buf = vec![0u8; block];
    for f in (0..files.len()).rev() {
        let len = lens[f];
        if len == 0 {
            continue;
        }
        let mut last_byte = [0u8; 1];
        files[f].file.read_exact_at(&mut last_byte, len - 1)?;
        if last_byte[0] != b'\n'
            && let Some(p) = scan.record_before(
                Pos {
                    file: f,
                    offset: len,
                },
                &after,
            )
        {
            return Ok(p);
        }
        let mut end = len;
        while end > 0 {
            let start = end.saturating_sub(block as u64);
            let chunk = &mut buf[..(end - start) as usize];
            files[f].file.read_exact_at(chunk, start)?;
            for i in (0..chunk.len()).rev() {
                if chunk[i] != b'\n' {
                    continue;
                }
                let mut head: Vec<u8> = chunk[i + 1..].iter().take(HEAD).copied().collect();
                let more = HEAD.saturating_sub(head.len());
                head.extend(after.iter().take(more));
                let pos = Pos {
                    file: f,
                    offset: start + i as u64 + 1,
                };
                if let Some(p) = scan.record_before(pos, &head) {
                    return Ok(p);
                }
            }
            let mut new_after: Vec<u8> = chunk.iter().take(HEAD).copied().collect();
            let more = HEAD.saturating_sub(new_after.len());
            new_after.extend(after.iter().take(more));
            after = new_after;
            end = start;
        }
    }
    let first = lens.iter().position(|&l| l > 0).unwrap_or(0);
    let start = Pos {
        file: first,
        offset: 0,
    };
    Ok(scan.record_before(start, &after).unwrap_or(start))
}

/// State of the backward scan of [`tail_start`].
struct TailScan {
    n: u64,
    count: u64,
    /// Whether the last record of the log has been passed.
    last_seen: bool,
    /// Where the record after the one being passed starts.
    next_start: Option<Pos>,
}

impl TailScan {
    /// Called with the start of each record, last record first, and the record's first bytes:
    /// returns the tail's start once the `n`-th line end from the end is passed.
    fn record_before(&mut self, start: Pos, head: &[u8]) -> Option<Pos> {
        if let Some(after) = self.next_start {
            let ends_line = head_is_full(head);
            if ends_line && self.last_seen {
                self.count += 1;
                if self.count == self.n {
                    return Some(after);
                }
            }
            self.last_seen = true;
        }
        self.next_start = Some(start);
        None
    }
}

/// What a step of the reader produced.
enum Step {
    /// Output to send.
    Data(Vec<u8>),
    /// At the end of the newest file, following: nothing new yet.
    Idle,
    /// Nothing more will come.
    End,
}

/// Reads a log forwards from a position, turning records into output.
struct Reader {
    base: PathBuf,
    files: Vec<LogFile>,
    pos: Pos,
    /// Bytes read from `files[pos.file]` and not consumed yet (they precede `pos.offset`).
    buf: Vec<u8>,
    /// Inside a record longer than [`MAX_RECORD`]: skip to its newline.
    skipping_record: bool,
    at_line_start: bool,
    /// Whether the current line is dropped (it started before `since`).
    dropping_line: bool,
    follow: bool,
    timestamps: bool,
    since: Option<jiff::Timestamp>,
    remaining: Option<u64>,
    /// After a rotation: the files to read once the current one is read to its end.
    switch_to: Option<Vec<LogFile>>,
    /// Read buffer.
    chunk: Vec<u8>,
}

impl Reader {
    /// Opens the log at `base` as `request` asks (blocking).
    fn open(base: PathBuf, request: &LogRequest) -> std::io::Result<Reader> {
        let files = open_set(&base)?;
        let start = match request.tail_lines {
            Some(n) if n >= 0 => tail_start(&files, n as u64, BLOCK)?,
            _ => Pos { file: 0, offset: 0 },
        };
        Ok(Reader {
            base,
            files,
            pos: start,
            buf: Vec::new(),
            skipping_record: false,
            at_line_start: true,
            dropping_line: false,
            follow: request.follow,
            timestamps: request.timestamps,
            since: request.since,
            remaining: request.limit_bytes.map(|b| b.max(0) as u64),
            switch_to: None,
            chunk: vec![0u8; BLOCK],
        })
    }

    /// Produces the next output (blocking; at most about [`BLOCK`] bytes).
    fn step(&mut self) -> std::io::Result<Step> {
        let mut out = Vec::new();
        loop {
            if self.remaining == Some(0) {
                return Ok(if out.is_empty() {
                    Step::End
                } else {
                    Step::Data(out)
                });
            }
            self.consume_records(&mut out);
            if out.len() >= BLOCK {
                return Ok(Step::Data(out));
            }
            let n = self.files[self.pos.file]
                .file
                .read_at(&mut self.chunk, self.pos.offset)?;
            if n > 0 {
                self.pos.offset += n as u64;
                self.buf.extend_from_slice(&self.chunk[..n]);
                continue;
            }
            // End of this file.
            if self.pos.file + 1 < self.files.len() {
                self.finish_file(&mut out);
                self.pos = Pos {
                    file: self.pos.file + 1,
                    offset: 0,
                };
                continue;
            }
            if !self.follow {
                self.finish_file(&mut out);
                return Ok(if out.is_empty() {
                    Step::End
                } else {
                    Step::Data(out)
                });
            }
            if let Some(newer) = self.switch_to.take() {
                self.finish_file(&mut out);
                self.files = newer;
                self.pos = Pos { file: 0, offset: 0 };
                continue;
            }
            if self.rotated()? {
                continue;
            }
            return Ok(if out.is_empty() {
                Step::Idle
            } else {
                Step::Data(out)
            });
        }
    }

    /// Whether `container.log` is now another file than the newest one read; then that one is
    /// read to its end (it gets no more writes) and the files that came after it are next.
    fn rotated(&mut self) -> std::io::Result<bool> {
        let current = self.files[self.pos.file].ino;
        match std::fs::symlink_metadata(&self.base) {
            Ok(m) if m.ino() != current => {}
            // The same file, or none for an instant during the rotation.
            _ => return Ok(false),
        }
        let files = open_set(&self.base)?;
        // Files newer than the one read; all of them when it was dropped from the set already.
        let newer: Vec<LogFile> = match files.iter().position(|f| f.ino == current) {
            Some(i) => files.into_iter().skip(i + 1).collect(),
            None => files,
        };
        if newer.is_empty() {
            return Ok(false);
        }
        // What was written to the old file between the last read and the rotation is read
        // first; the switch happens at its end.
        self.switch_to = Some(newer);
        Ok(true)
    }

    /// At the end of a file: an unfinished last record (cut by a crash) still counts.
    fn finish_file(&mut self, out: &mut Vec<u8>) {
        if !self.buf.is_empty() && !self.skipping_record {
            let record = std::mem::take(&mut self.buf);
            self.emit(&record, out);
        }
        self.buf.clear();
        self.skipping_record = false;
    }

    /// Turns every complete record in `buf` into output.
    fn consume_records(&mut self, out: &mut Vec<u8>) {
        let mut used = 0;
        while let Some(nl) = self.buf[used..].iter().position(|&b| b == b'\n') {
            let end = used + nl;
            if self.skipping_record {
                self.skipping_record = false;
            } else {
                let record = self.buf[used..end].to_vec();
                self.emit(&record, out);
            }
            used = end + 1;
            if self.remaining == Some(0) {
                break;
            }
        }
        self.buf.drain(..used);
        if self.buf.len() > MAX_RECORD {
            self.buf.clear();
            self.skipping_record = true;
        }
    }

    /// Appends the output of one record.
    fn emit(&mut self, record: &[u8], out: &mut Vec<u8>) {
        let Some(r) = parse_record(record) else {
            // Not a record (as the kubelet does, it is skipped).
            return;
        };
        if self.at_line_start {
            self.dropping_line = self.since.is_some_and(|since| {
                std::str::from_utf8(r.timestamp)
                    .ok()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .is_some_and(|t| t < since)
            });
            if !self.dropping_line && self.timestamps {
                self.push(out, r.timestamp);
                self.push(out, b" ");
            }
        }
        if !self.dropping_line {
            self.push(out, r.text);
            if r.full {
                self.push(out, b"\n");
            }
        }
        self.at_line_start = r.full;
    }

    /// Appends `bytes` to `out` within the byte limit.
    fn push(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        let take = match &mut self.remaining {
            Some(left) => {
                let take = (*left).min(bytes.len() as u64) as usize;
                *left -= take as u64;
                take
            }
            None => bytes.len(),
        };
        out.extend_from_slice(&bytes[..take]);
    }
}

/// Streams the log at `base` as asked: what is there now, then, with follow, what is appended
/// (across rotations) until `running` says the container stopped.
pub(crate) async fn stream(
    base: PathBuf,
    request: LogRequest,
    running: Arc<dyn Fn() -> bool + Send + Sync>,
) -> Result<impl Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static, NodeError> {
    let err = |source| NodeError::Logs {
        container: request.container.clone(),
        path: base.clone(),
        source,
    };
    let (path, req) = (base.clone(), request.clone());
    let reader = tokio::task::spawn_blocking(move || Reader::open(path, &req))
        .await
        .map_err(|e| err(std::io::Error::other(e)))?
        .map_err(err)?;
    struct State {
        reader: Option<Reader>,
        finishing: bool,
        running: Arc<dyn Fn() -> bool + Send + Sync>,
    }
    let state = State {
        reader: Some(reader),
        finishing: false,
        running,
    };
    Ok(futures::stream::unfold(state, |mut s| async move {
        loop {
            let mut reader = s.reader.take()?;
            let stepped = tokio::task::spawn_blocking(move || {
                let step = reader.step();
                (reader, step)
            })
            .await;
            let (reader, step) = match stepped {
                Ok(r) => r,
                Err(e) => return Some((Err(std::io::Error::other(e)), s)),
            };
            match step {
                Ok(Step::Data(d)) => {
                    s.reader = Some(reader);
                    return Some((Ok(d), s));
                }
                Ok(Step::End) => return None,
                Ok(Step::Idle) => {
                    s.reader = Some(reader);
                    if s.finishing {
                        return None;
                    }
                    if !(s.running)() {
                        // One more read catches what was written just before the exit.
                        s.finishing = true;
                        continue;
                    }
                    tokio::time::sleep(FOLLOW_POLL).await;
                }
                // The stream ends after the error (no reader is put back).
                Err(e) => return Some((Err(e), s)),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn rec(second: u32, tag: char, text: &str) -> String {
        format!("2024-05-01T10:00:{second:02}.5Z stdout {tag} {text}\n")
    }

    /// Writes `files` (oldest first) as `container.log.<k>` … `container.log` in `dir`.
    fn write_set(dir: &Path, files: &[String]) -> PathBuf {
        let base = dir.join("container.log");
        let n = files.len() as u32;
        for (i, content) in files.iter().enumerate() {
            std::fs::write(rotated_path(&base, n - 1 - i as u32), content).unwrap();
        }
        base
    }

    fn read_all(base: &Path, request: &LogRequest) -> String {
        let mut reader = Reader::open(base.to_path_buf(), request).unwrap();
        let mut out = Vec::new();
        loop {
            match reader.step().unwrap() {
                Step::Data(d) => out.extend(d),
                Step::End => break,
                Step::Idle => panic!("idle without follow"),
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// The lines a log holds, each with the records it is made of, computed the obvious way
    /// (everything in memory) to check the backward scan against.
    fn lines_of(files: &[String]) -> Vec<String> {
        let all: String = files.concat();
        let mut lines = Vec::new();
        let mut current = String::new();
        let mut open = false;
        for l in all.lines() {
            let r = parse_record(l.as_bytes()).unwrap();
            current.push_str(std::str::from_utf8(r.text).unwrap());
            open = true;
            if r.full {
                current.push('\n');
                lines.push(std::mem::take(&mut current));
                open = false;
            }
        }
        if open {
            lines.push(current);
        }
        lines
    }

    #[test]
    fn tail_reads_backwards_across_blocks_and_rotated_files() {
        let long = "x".repeat(40);
        // Logs as rotated files, oldest first: whole lines, lines of several parts (one of them
        // split across files), empty files, a last line without its end.
        let logs: Vec<Vec<String>> = vec![
            vec![rec(1, 'F', "one") + &rec(2, 'F', "two") + &rec(3, 'F', "three")],
            vec![
                rec(1, 'F', "a") + &rec(2, 'P', &long),
                rec(3, 'P', "continued") + &rec(4, 'F', " end"),
                String::new(),
                rec(5, 'F', "b") + &rec(6, 'F', ""),
            ],
            vec![
                rec(1, 'F', "a"),
                rec(2, 'F', "b") + &rec(3, 'P', "unfinished"),
            ],
            vec![String::new()],
        ];
        for files in &logs {
            let lines = lines_of(files);
            for block in [1, 7, 16, 64, BLOCK] {
                for n in 0..=lines.len() + 1 {
                    let tmp = tempfile::tempdir().unwrap();
                    let base = write_set(tmp.path(), files);
                    let set = open_set(&base).unwrap();
                    let start = tail_start(&set, n as u64, block).unwrap();
                    let mut reader = Reader::open(base.clone(), &LogRequest::default()).unwrap();
                    reader.files = set;
                    reader.pos = start;
                    let mut got = Vec::new();
                    while let Step::Data(d) = reader.step().unwrap() {
                        got.extend(d);
                    }
                    let want: String = lines[lines.len().saturating_sub(n)..].concat();
                    assert_eq!(
                        String::from_utf8(got).unwrap(),
                        want,
                        "tail {n} with block {block} of {files:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn tail_memory_does_not_depend_on_the_log_size() {
        // A 4 MiB log: the scan touches only the blocks holding the last lines.
        let tmp = tempfile::tempdir().unwrap();
        let line = rec(1, 'F', &"y".repeat(1000));
        let content = line.repeat(4 << 10) + &rec(2, 'F', "last");
        let base = write_set(tmp.path(), &[content]);
        let request = LogRequest {
            tail_lines: Some(1),
            ..LogRequest::default()
        };
        let reader = Reader::open(base, &request).unwrap();
        let len = reader.files[0].file.metadata().unwrap().len();
        assert!(
            len - reader.pos.offset < BLOCK as u64,
            "the tail starts in the last block"
        );
    }

    #[test]
    fn timestamps_since_and_limit_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let files = [
            rec(1, 'F', "early"),
            rec(2, 'P', "split ") + &rec(3, 'F', "line") + &rec(4, 'F', "late"),
        ];
        let base = write_set(tmp.path(), &files);
        let since = |s: &str| Some(s.parse::<jiff::Timestamp>().unwrap());
        // (request, output)
        let cases: Vec<(LogRequest, &str)> = vec![
            (LogRequest::default(), "early\nsplit line\nlate\n"),
            (
                LogRequest {
                    timestamps: true,
                    ..LogRequest::default()
                },
                "2024-05-01T10:00:01.5Z early\n2024-05-01T10:00:02.5Z split line\n2024-05-01T10:00:04.5Z late\n",
            ),
            (
                LogRequest {
                    since: since("2024-05-01T10:00:02Z"),
                    ..LogRequest::default()
                },
                "split line\nlate\n",
            ),
            (
                // A line is kept or dropped whole, by the time of its first part.
                LogRequest {
                    since: since("2024-05-01T10:00:03Z"),
                    ..LogRequest::default()
                },
                "late\n",
            ),
            (
                LogRequest {
                    limit_bytes: Some(9),
                    ..LogRequest::default()
                },
                "early\nspl",
            ),
            (
                LogRequest {
                    tail_lines: Some(2),
                    timestamps: true,
                    ..LogRequest::default()
                },
                "2024-05-01T10:00:02.5Z split line\n2024-05-01T10:00:04.5Z late\n",
            ),
        ];
        for (request, want) in cases {
            assert_eq!(read_all(&base, &request), want, "{request:?}");
        }
    }

    #[test]
    fn malformed_and_overlong_records_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let content = rec(1, 'F', "before")
            + "not a record\n"
            + &"z".repeat(MAX_RECORD + BLOCK)
            + "\n"
            + &rec(2, 'F', "after");
        let base = write_set(tmp.path(), &[content]);
        assert_eq!(read_all(&base, &LogRequest::default()), "before\nafter\n");
    }

    #[tokio::test]
    async fn follow_continues_across_rotation_until_stopped() {
        use std::io::Write;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("container.log");
        std::fs::write(&base, rec(1, 'F', "one") + &rec(2, 'F', "two")).unwrap();
        let running = Arc::new(AtomicBool::new(true));
        let r = running.clone();
        let request = LogRequest {
            container: "app".into(),
            follow: true,
            tail_lines: Some(1),
            ..LogRequest::default()
        };
        let s = stream(
            base.clone(),
            request,
            Arc::new(move || r.load(Ordering::SeqCst)),
        )
        .await
        .unwrap();
        let mut s = Box::pin(s);
        assert_eq!(s.next().await.unwrap().unwrap(), b"two\n");

        let append = |path: &Path, text: String| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        };
        append(&base, rec(3, 'F', "three"));
        assert_eq!(s.next().await.unwrap().unwrap(), b"three\n");
        // Rotated twice between two polls: the old file gets a last line, the file in between
        // is read whole, then the new current file.
        append(&base, rec(4, 'F', "four"));
        std::fs::rename(&base, rotated_path(&base, 1)).unwrap();
        append(&base, rec(5, 'F', "five"));
        std::fs::rename(rotated_path(&base, 1), rotated_path(&base, 2)).unwrap();
        std::fs::rename(&base, rotated_path(&base, 1)).unwrap();
        append(&base, rec(6, 'F', "six"));
        let mut got = Vec::new();
        while got != b"four\nfive\nsix\n" {
            got.extend(s.next().await.unwrap().unwrap());
            assert!(
                b"four\nfive\nsix\n".starts_with(&got),
                "{:?}",
                String::from_utf8_lossy(&got)
            );
        }
        append(&base, rec(7, 'F', "last"));
        running.store(false, Ordering::SeqCst);
        let mut rest = Vec::new();
        while let Some(chunk) = s.next().await {
            rest.extend(chunk.unwrap());
        }
        assert_eq!(rest, b"last\n");
    }

    #[tokio::test]
    async fn previous_logs_move_with_their_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().join("app/container.log");
        std::fs::create_dir_all(current.parent().unwrap()).unwrap();
        let previous = dir.path().join(PREVIOUS_LOG);
        // An older previous instance had three files; this one has two.
        for k in 0..3 {
            std::fs::write(rotated_path(&previous, k), "old").unwrap();
        }
        std::fs::write(&current, rec(2, 'F', "new")).unwrap();
        std::fs::write(rotated_path(&current, 1), rec(1, 'F', "older")).unwrap();

        keep_previous(current.clone(), previous.clone())
            .await
            .unwrap();

        assert!(!current.exists());
        assert!(
            !rotated_path(&previous, 2).exists(),
            "nothing of the older instance is left"
        );
        assert_eq!(read_all(&previous, &LogRequest::default()), "older\nnew\n");

        // No current log (the next instance wrote nothing yet): the previous one stays.
        keep_previous(current.clone(), previous.clone())
            .await
            .unwrap();
        assert_eq!(read_all(&previous, &LogRequest::default()), "older\nnew\n");
    }
}
