//! `kubectl exec` and `kubectl port-forward` served by the node ([`imc_apiserver::PodStreams`]):
//! the API server checks and upgrades the request, the node runs the command or opens the
//! connection. `kubectl attach` is refused with the reason (see [`NodeStreams::attach`]).

use std::sync::Arc;

use imc_apiserver::streaming::{Duplex, Kind, PortFuture, StreamFuture};
use imc_apiserver::{ApiError, ExecOptions, ExecSession, TerminalSize};
use imc_controllers::node::{Node, NodeError};
use imc_runtime::{ExecSpawn, ExecStdio};
use serde_json::Value;
use tokio::sync::mpsc;

/// Terminal sizes waiting to be applied (a client resizing fast only needs the last ones).
const RESIZE_QUEUE: usize = 4;

/// The node's side of the streaming subresources.
pub(crate) struct NodeStreams(pub(crate) Arc<Node>);

fn text<'a>(pod: &'a Value, path: &str) -> &'a str {
    pod.pointer(path).and_then(Value::as_str).unwrap_or("")
}

/// Why `kubectl attach` is refused.
fn attach_refused(pod: &Value, container: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "attach is not supported by imc: container {container} of pod {} has no stdin or \
         terminal to attach to (its output goes to its log); use `kubectl logs -f` to follow \
         its output and `kubectl exec` to run commands in it",
        text(pod, "/metadata/name")
    ))
}

/// A node error as the API answers it.
fn api_error(e: NodeError) -> ApiError {
    match e {
        NodeError::ContainerNotFound { .. } | NodeError::PodNotRunning { .. } => {
            ApiError::BadRequest(e.to_string())
        }
        e => ApiError::Internal(e.to_string()),
    }
}

impl imc_apiserver::PodStreams for NodeStreams {
    fn exec(&self, pod: Value, options: ExecOptions) -> StreamFuture<ExecSession> {
        let node = self.0.clone();
        Box::pin(async move {
            let uid = text(&pod, "/metadata/uid").to_owned();
            let spec = ExecSpawn {
                command: options.command.clone(),
                stdin: options.stdin,
                output: ExecStdio::Separate,
                tty: options.tty,
            };
            let mut process = node
                .exec(&uid, &options.container, spec)
                .await
                .map_err(api_error)?;
            let mut session = ExecSession {
                stdin: None,
                stdout: None,
                stderr: None,
                resize: None,
                exit: Box::pin(async { Ok(0) }),
            };
            if let Some(terminal) = process.terminal.take() {
                if options.stdin {
                    session.stdin = Some(Box::pin(terminal.writer()));
                }
                session.stdout = Some(Box::pin(terminal.reader()));
                let (tx, mut rx) = mpsc::channel::<TerminalSize>(RESIZE_QUEUE);
                let resizer = terminal.resizer();
                tokio::spawn(async move {
                    while let Some(size) = rx.recv().await {
                        if let Err(e) = resizer.resize(size.width, size.height).await {
                            tracing::debug!(error = %e, "resizing an exec terminal");
                        }
                    }
                });
                session.resize = Some(tx);
            } else {
                session.stdin = process
                    .stdin
                    .take()
                    .map(|w| Box::pin(w) as imc_apiserver::streaming::Writer);
                // Output not asked for is still read (and dropped) so the command never
                // blocks on a full pipe.
                let keep = |r: Option<tokio::net::unix::pipe::Receiver>, wanted: bool| {
                    let r = r?;
                    if wanted {
                        Some(Box::pin(r) as imc_apiserver::streaming::Reader)
                    } else {
                        tokio::spawn(async move {
                            let mut r = r;
                            let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
                        });
                        None
                    }
                };
                session.stdout = keep(process.stdout.take(), options.stdout);
                session.stderr = keep(process.stderr.take(), options.stderr);
            }
            // Dropped before it resolved (the client went away), the process is killed.
            session.exit = Box::pin(async move { process.wait().await.map_err(|e| e.to_string()) });
            Ok(session)
        })
    }

    /// Refused: the runtime gives a container's main process no stdin and sends its output to
    /// the log files only, so there is nothing to attach to; `kubectl logs -f` follows the
    /// output and `kubectl exec` runs commands.
    fn attach(&self, pod: Value, options: ExecOptions) -> StreamFuture<ExecSession> {
        let refused = attach_refused(&pod, &options.container);
        Box::pin(async move { Err(refused) })
    }

    fn port_forward(&self, pod: Value, port: u16) -> PortFuture {
        let node = self.0.clone();
        Box::pin(async move {
            let stream = node
                .port_forward(
                    text(&pod, "/metadata/uid"),
                    text(&pod, "/metadata/name"),
                    port,
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok(Box::new(stream) as Box<dyn Duplex>)
        })
    }

    fn ready(&self, pod: &Value, kind: Kind, container: Option<&str>) -> Result<(), ApiError> {
        if kind == Kind::Attach {
            return Err(attach_refused(pod, container.unwrap_or("")));
        }
        self.0
            .streamable(
                text(pod, "/metadata/uid"),
                text(pod, "/metadata/name"),
                container,
            )
            .map_err(api_error)
    }
}
