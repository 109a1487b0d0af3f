//! Container logs for `kubectl logs`: the per-container log file the runtime writes, its last
//! lines, and (with follow) what is appended until the container stops.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::NodeError;

/// What a log request asks for.
#[derive(Debug, Clone, Default)]
pub struct LogRequest {
    /// The container.
    pub container: String,
    /// Keep streaming while the container runs.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<i64>,
    /// The previous instance's log (of a restarted container).
    pub previous: bool,
}

/// File name, in the pod dir, of the log of a container's previous instance.
pub(crate) fn previous_log_name(container: &str) -> String {
    format!("{container}.previous.log")
}

/// How often a followed log is checked for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// The last `n` lines of `text` (all of it when `n` is None).
pub fn tail(text: &[u8], n: Option<i64>) -> &[u8] {
    let Some(n) = n else { return text };
    if n <= 0 {
        return &text[text.len()..];
    }
    // A trailing newline ends the last line rather than starting an empty one.
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

/// Streams `path` as asked: the (tailed) content now, then, with follow, appended bytes until
/// `running` says the container stopped.
pub(crate) async fn stream(
    path: PathBuf,
    request: LogRequest,
    running: Arc<dyn Fn() -> bool + Send + Sync>,
) -> Result<impl Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static, NodeError> {
    let err = |source| NodeError::Logs {
        container: request.container.clone(),
        path: path.clone(),
        source,
    };
    let mut file = tokio::fs::File::open(&path).await.map_err(err)?;
    let mut all = Vec::new();
    file.read_to_end(&mut all).await.map_err(err)?;
    let first = tail(&all, request.tail_lines).to_vec();
    let offset = all.len() as u64;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(err)?;
    let follow = request.follow;
    struct State {
        file: tokio::fs::File,
        first: Option<Vec<u8>>,
        follow: bool,
        finishing: bool,
        running: Arc<dyn Fn() -> bool + Send + Sync>,
    }
    let state = State {
        file,
        first: Some(first),
        follow,
        finishing: false,
        running,
    };
    Ok(futures::stream::unfold(state, |mut s| async move {
        if let Some(first) = s.first.take()
            && (!first.is_empty() || !s.follow)
        {
            return Some((Ok(first), s));
        }
        if !s.follow {
            return None;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.file.read(&mut buf).await {
                Ok(0) if s.finishing => return None,
                Ok(0) => {
                    if !(s.running)() {
                        // One more read catches what was written just before the exit.
                        s.finishing = true;
                        continue;
                    }
                    tokio::time::sleep(FOLLOW_POLL).await;
                }
                Ok(n) => {
                    buf.truncate(n);
                    return Some((Ok(buf), s));
                }
                Err(e) => {
                    s.follow = false;
                    return Some((Err(e), s));
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        let cases: Vec<(&str, Option<i64>, &str)> = vec![
            ("a\nb\nc\n", None, "a\nb\nc\n"),
            ("a\nb\nc\n", Some(2), "b\nc\n"),
            ("a\nb\nc\n", Some(1), "c\n"),
            ("a\nb\nc\n", Some(5), "a\nb\nc\n"),
            ("a\nb\nc", Some(1), "c"),
            ("a\nb\nc\n", Some(0), ""),
            ("", Some(3), ""),
        ];
        for (text, n, want) in cases {
            assert_eq!(
                std::str::from_utf8(tail(text.as_bytes(), n)).unwrap(),
                want,
                "{text:?} tail {n:?}"
            );
        }
    }

    #[tokio::test]
    async fn follow_reads_appended_output_until_stopped() {
        use futures::StreamExt;
        use std::io::Write;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.log");
        std::fs::write(&path, "one\ntwo\n").unwrap();
        let running = Arc::new(AtomicBool::new(true));
        let r = running.clone();
        let s = stream(
            path.clone(),
            LogRequest {
                container: "app".into(),
                follow: true,
                tail_lines: Some(1),
                previous: false,
            },
            Arc::new(move || r.load(Ordering::SeqCst)),
        )
        .await
        .unwrap();
        let mut s = Box::pin(s);
        assert_eq!(s.next().await.unwrap().unwrap(), b"two\n");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"three\n").unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), b"three\n");
        f.write_all(b"last\n").unwrap();
        running.store(false, Ordering::SeqCst);
        let mut rest = Vec::new();
        while let Some(chunk) = s.next().await {
            rest.extend(chunk.unwrap());
        }
        assert_eq!(rest, b"last\n");
    }
}
