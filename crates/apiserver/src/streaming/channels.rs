//! `exec` and `attach` over the channel protocols (`v5.channel.k8s.io`,
//! `v4.channel.k8s.io`): every binary message starts with its channel byte.
//!
//! | channel | direction | content |
//! |---|---|---|
//! | 0 | client → server | stdin |
//! | 1 | server → client | stdout (the terminal's output with `tty`) |
//! | 2 | server → client | stderr |
//! | 3 | server → client | how it ended: a v1 Status, `Success` or `Failure` (reason `NonZeroExitCode` with an `ExitCode` cause) |
//! | 4 | client → server | terminal size `{"Width":..,"Height":..}` |
//! | 255 | client → server (v5) | close the channel in the next byte (0: stdin gets EOF) |
//!
//! Memory is bounded both ways: one chunk of at most [`CHUNK`] bytes is read from each output
//! at a time and at most [`QUEUE`] messages wait for the socket; stdin is written before the
//! next message is read, so a command that does not read its stdin slows the client down
//! rather than growing a buffer. The client going away drops the session, which kills the
//! command.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use super::{ExecOptions, ExecSession, Reader, TerminalSize};

/// Channel numbers.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Bytes read from an output at once (one message).
pub const CHUNK: usize = 32 * 1024;

/// Messages waiting for the socket at most.
pub const QUEUE: usize = 16;

/// How long output is still forwarded after the command exited (a background process it
/// started may hold the output open; what it writes later is not waited for).
const DRAIN: Duration = Duration::from_millis(500);

/// Runs one upgraded exec/attach connection to its end.
pub(crate) async fn run(
    socket: WebSocket,
    v5: bool,
    options: ExecOptions,
    command: Vec<String>,
    session: ExecSession,
) {
    let ExecSession {
        stdin,
        stdout,
        stderr,
        resize,
        exit,
    } = session;
    let (mut sink, mut incoming) = socket.split();
    let (out, mut queue) = mpsc::channel::<Message>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(message) = queue.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        // A normal close: kubectl reads its streams to their end, and any other close is
        // an error to it.
        let _ = sink.send(super::normal_close()).await;
        let _ = sink.close().await;
    });
    // As the kubelet does: an empty message on the lowest output channel tells the client
    // the streams are set up.
    let first = if options.stdout {
        STDOUT
    } else if options.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = out.send(Message::binary(vec![first])).await;
    let mut pumps = tokio::task::JoinSet::new();
    for (channel, reader) in [(STDOUT, stdout), (STDERR, stderr)] {
        if let Some(reader) = reader {
            pumps.spawn(pump(reader, channel, out.clone()));
        }
    }
    // Stdin is written by a task of its own, one message at a time (the bound).
    let (stdin_tx, mut stdin_rx) = mpsc::channel::<Option<Vec<u8>>>(1);
    let stdin_task = stdin.map(|mut w| {
        tokio::spawn(async move {
            while let Some(Some(data)) = stdin_rx.recv().await {
                if w.write_all(&data).await.is_err() || w.flush().await.is_err() {
                    return;
                }
            }
            // Closed by the client (or the connection ended): EOF to the command.
            let _ = w.shutdown().await;
        })
    });
    let mut stdin_tx = Some(stdin_tx).filter(|_| stdin_task.is_some());
    tokio::pin!(exit);
    let ended = loop {
        tokio::select! {
            code = &mut exit => break Some(code),
            message = incoming.next() => match message {
                Some(Ok(Message::Binary(data))) => {
                    let Some((&channel, payload)) = data.split_first() else { continue };
                    match channel {
                        STDIN if !payload.is_empty() => {
                            if let Some(tx) = &stdin_tx
                                && tx.send(Some(payload.to_vec())).await.is_err() {
                                stdin_tx = None;
                            }
                        }
                        RESIZE => match serde_json::from_slice::<TerminalSize>(payload) {
                            Ok(size) => if let Some(r) = &resize {
                                let _ = r.try_send(size);
                            },
                            Err(e) => debug!(error = %e, "ignoring a malformed resize message"),
                        },
                        CLOSE if v5 && payload.first() == Some(&STDIN) => {
                            if let Some(tx) = stdin_tx.take() {
                                let _ = tx.send(None).await;
                            }
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
                Some(Ok(_)) => {}
            },
        }
    };
    drop(stdin_tx);
    let Some(code) = ended else {
        // The client went away: dropping the exit future kills the command.
        debug!("exec client disconnected");
        pumps.abort_all();
        writer.abort();
        return;
    };
    // Forward what the command wrote before it ended.
    let _ = tokio::time::timeout(DRAIN, async { while pumps.join_next().await.is_some() {} }).await;
    pumps.abort_all();
    let status = status(&command, code);
    let mut message = vec![ERROR];
    message.extend_from_slice(status.to_string().as_bytes());
    let _ = out.send(Message::binary(message)).await;
    drop(out);
    let _ = writer.await;
    if let Some(t) = stdin_task {
        t.abort();
    }
}

/// Forwards one output to the socket in chunks of at most [`CHUNK`] bytes.
async fn pump(mut reader: Reader, channel: u8, out: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut message = Vec::with_capacity(n + 1);
                message.push(channel);
                message.extend_from_slice(&buf[..n]);
                if out.send(Message::binary(message)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The v1 Status written on the error channel once the command ended, as the kubelet
/// writes it (kubectl exits with the code of an `ExitCode` cause).
pub fn status(command: &[String], ended: Result<i32, String>) -> Value {
    match ended {
        Ok(0) => json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
        Ok(code) => json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                command.join(" ")
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(why) => json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: error executing command in container: {why}"),
            "reason": "InternalError",
            "code": 500,
            "details": {"causes": [{"message": format!("error executing command in container: {why}")}]},
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_carries_the_exit_code() {
        let cmd = vec!["sh".to_string(), "-c".into(), "exit 3".into()];
        assert_eq!(status(&cmd, Ok(0))["status"], "Success");
        let failed = status(&cmd, Ok(3));
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(
            failed["details"]["causes"],
            json!([{"reason": "ExitCode", "message": "3"}])
        );
        let broken = status(&cmd, Err("no such file".into()));
        assert_eq!(broken["reason"], "InternalError");
        assert!(broken["message"].as_str().unwrap().contains("no such file"));
    }
}
