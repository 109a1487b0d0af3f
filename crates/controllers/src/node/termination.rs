//! The termination message of a container instance that ended (the kubelet's
//! `getTerminationMessage`): what the process wrote to its `terminationMessagePath` (its last
//! 4 KiB, read by the runtime from the host side of the file's bind mount, never following a
//! symlink), or, with `terminationMessagePolicy: FallbackToLogsOnError` after a failure and
//! no message, the end of its log (the last 80 lines, at most 2 KiB).

use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use imc_runtime::Container;
use tracing::debug;

use super::logs::{self, LogRequest};

/// Lines of the log a fallback message takes at most (`MaxContainerTerminationMessageLogLines`).
const LOG_LINES: i64 = 80;
/// Bytes of the log a fallback message takes at most (`MaxContainerTerminationMessageLogLength`).
const LOG_BYTES: i64 = 2048;

/// `terminationMessagePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MessagePolicy {
    File,
    FallbackToLogsOnError,
}

impl MessagePolicy {
    /// The policy as the container spells it (`File` when unset).
    pub(super) fn parse(s: Option<&str>) -> Self {
        match s {
            Some("FallbackToLogsOnError") => MessagePolicy::FallbackToLogsOnError,
            _ => MessagePolicy::File,
        }
    }
}

/// The message of `container`, which exited with `exit_code`; `log` is its log file.
pub(super) async fn message(
    container: &Container,
    policy: MessagePolicy,
    exit_code: i32,
    log: PathBuf,
) -> Option<String> {
    let fallback = policy == MessagePolicy::FallbackToLogsOnError && exit_code != 0;
    match container.termination_message().await {
        Ok(Some(m)) => return Some(m),
        Ok(None) => {}
        Err(e) => return Some(format!("Error on reading termination log: {e}")),
    }
    if !fallback {
        return None;
    }
    let tail = last_log_lines(log, &container.name).await;
    (!tail.is_empty()).then_some(tail)
}

/// The end of a container's log, as `kubectl logs --tail=80 --limit-bytes=2048` shows it.
async fn last_log_lines(log: PathBuf, container: &str) -> String {
    let request = LogRequest {
        container: container.to_owned(),
        tail_lines: Some(LOG_LINES),
        limit_bytes: Some(LOG_BYTES),
        ..Default::default()
    };
    let stream = match logs::stream(log, request, Arc::new(|| false)).await {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "reading the log for the termination message");
            return String::new();
        }
    };
    let mut out = Vec::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(_) => break,
        }
        if out.len() >= LOG_BYTES as usize {
            out.truncate(LOG_BYTES as usize);
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
