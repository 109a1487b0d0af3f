//! The pod streaming subresources `exec`, `attach` and `portforward`, over WebSocket as
//! kubectl 1.31+ speaks them by default:
//! - `exec` and `attach` over the `v5.channel.k8s.io` / `v4.channel.k8s.io` channel protocols
//!   (one binary message per chunk, its first byte the channel: 0 stdin, 1 stdout, 2 stderr,
//!   3 error (a v1 Status), 4 resize, and with v5 255 to close a channel), see [`channels`];
//! - `portforward` as kube-apiserver 1.30+ serves it to kubectl: SPDY/3.1 frames tunnelled in
//!   binary WebSocket messages (subprotocol `SPDY/3.1+portforward.k8s.io`), see
//!   [`port_forward`] and [`spdy`].
//!
//! The node does the work by installing a [`PodStreams`] (as [`crate::logs::PodLogs`] for
//! logs); until one is installed, every request is refused. Everything that can be checked
//! against the stored pod (the container is one of its, the pod is bound and not finished,
//! the options make sense) is checked before the connection is upgraded, so a refusal is an
//! ordinary HTTP error kubectl prints.

pub mod channels;
pub mod port_forward;
pub mod spdy;

use std::future::Future;
use std::pin::Pin;

use axum::extract::ws::WebSocketUpgrade;
use axum::http::Uri;
use axum::response::Response;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::handler::ApiServer;
use crate::logs::LogOptions;
use crate::resources::ResourceDef;

/// Largest WebSocket message accepted from a client (kubectl sends at most 32 KiB of stdin
/// or one SPDY frame's worth at once); bounds what one message can make the server hold.
const MAX_MESSAGE: usize = 1 << 20;

/// What an `exec` or `attach` asks for (`PodExecOptions` / `PodAttachOptions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOptions {
    /// The container, checked against the pod's containers.
    pub container: String,
    /// The command and its arguments (empty for `attach`).
    pub command: Vec<String>,
    /// The client sends stdin.
    pub stdin: bool,
    /// The client wants stdout.
    pub stdout: bool,
    /// The client wants stderr (never with `tty`: a terminal has one output).
    pub stderr: bool,
    /// The command runs on a terminal.
    pub tty: bool,
}

/// A terminal size, as the resize channel sends it (`{"Width":..,"Height":..}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// A readable stream of a session.
pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
/// A writable stream of a session.
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// A command started for `exec` (or the attached main process): its streams, how to resize
/// its terminal and how it ends. Dropping the session before `exit` resolved kills the
/// command (a client that went away leaves nothing running).
pub struct ExecSession {
    /// Its stdin, when asked for; dropped to close it (EOF to the command).
    pub stdin: Option<Writer>,
    /// Its stdout (the terminal with `tty`), when asked for.
    pub stdout: Option<Reader>,
    /// Its stderr, when asked for and without `tty`.
    pub stderr: Option<Reader>,
    /// Where terminal sizes go, with `tty`.
    pub resize: Option<mpsc::Sender<TerminalSize>>,
    /// Resolves to the exit code, or to why the command could not run.
    pub exit: Pin<Box<dyn Future<Output = Result<i32, String>> + Send>>,
}

/// A connection to a pod's port: both directions in one stream.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// A future of the node's answer.
pub type StreamFuture<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send>>;

/// A future of a port connection, or why it could not be made (sent to the client on the
/// stream's error channel).
pub type PortFuture = Pin<Box<dyn Future<Output = Result<Box<dyn Duplex>, String>> + Send>>;

/// Serves the streaming subresources; implemented by the node.
pub trait PodStreams: Send + Sync + 'static {
    /// Starts `options.command` in the (running) container of `pod` (the stored Pod object).
    fn exec(&self, pod: Value, options: ExecOptions) -> StreamFuture<ExecSession>;
    /// Attaches to the main process of the container (`options.command` is empty).
    fn attach(&self, pod: Value, options: ExecOptions) -> StreamFuture<ExecSession>;
    /// Connects to `port` on localhost of the pod's network namespace. Called once per
    /// forwarded connection.
    fn port_forward(&self, pod: Value, port: u16) -> PortFuture;
    /// Whether `container` of `pod` (any of its containers when `None`) can be streamed to
    /// now, or why not: checked before a request that cannot be upgraded is refused, so that
    /// kubectl, which retries a failed WebSocket upgrade with SPDY, shows the real reason.
    fn ready(&self, pod: &Value, kind: Kind, container: Option<&str>) -> Result<(), ApiError>;
}

/// Which streaming subresource a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `pods/exec`.
    Exec,
    /// `pods/attach`.
    Attach,
    /// `pods/portforward`.
    PortForward,
}

impl Kind {
    /// The streaming subresource `sub` of `def`, if it is one (only core pods have them).
    pub fn of(def: &ResourceDef, sub: Option<&str>) -> Option<Kind> {
        if !(def.group.is_empty() && def.plural == "pods") {
            return None;
        }
        match sub? {
            "exec" => Some(Kind::Exec),
            "attach" => Some(Kind::Attach),
            "portforward" => Some(Kind::PortForward),
            _ => None,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::Attach => "attach",
            Kind::PortForward => "port-forward",
        }
    }
}

/// The protocols offered for `exec`/`attach`, most preferred first.
pub const CHANNEL_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// The protocol of port-forward tunnelled over WebSocket.
pub const PORT_FORWARD_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// Query parameters in order, repeated ones kept (`command=sh&command=-c`).
fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Parses an exec or attach query (`command` repeated, `container`, `stdin`, `stdout`,
/// `stderr`, `tty`) and checks it as kube-apiserver does; the container is resolved against
/// `pod` afterwards.
pub fn exec_options(kind: Kind, pairs: &[(String, String)]) -> Result<ExecOptions, ApiError> {
    let flag = |k: &str| {
        pairs
            .iter()
            .any(|(key, v)| key == k && matches!(v.as_str(), "true" | "1" | ""))
    };
    let options = ExecOptions {
        container: pairs
            .iter()
            .find(|(k, _)| k == "container")
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        command: pairs
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect(),
        stdin: flag("stdin"),
        stdout: flag("stdout"),
        stderr: flag("stderr"),
        tty: flag("tty"),
    };
    if kind == Kind::Exec && options.command.is_empty() {
        return Err(ApiError::BadRequest(
            "you must specify at least 1 command".into(),
        ));
    }
    if kind == Kind::Attach && !options.command.is_empty() {
        return Err(ApiError::BadRequest(
            "attach takes no command: it connects to the container's main process".into(),
        ));
    }
    if !(options.stdin || options.stdout || options.stderr) {
        return Err(ApiError::BadRequest(
            "you must specify at least 1 of stdin, stdout, stderr".into(),
        ));
    }
    if options.tty && options.stderr {
        // As the kubelet does: a terminal has one output stream.
        return Ok(ExecOptions {
            stderr: false,
            ..options
        });
    }
    Ok(options)
}

/// The ports of a port-forward query (`ports=8080&ports=9090`, or comma-separated): each a
/// number 1–65535. None at all is fine (kubectl names the port in each stream's headers).
pub fn forward_ports(pairs: &[(String, String)]) -> Result<Vec<u16>, ApiError> {
    let mut ports = Vec::new();
    for (_, v) in pairs.iter().filter(|(k, _)| k == "ports") {
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => ports.push(n),
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "invalid port {p:?}: must be a number between 1 and 65535"
                    )));
                }
            }
        }
    }
    Ok(ports)
}

/// Checks the pod can be streamed to as kube-apiserver does before it connects to the
/// kubelet: bound to a node, not finished.
fn check_pod(pod: &Value, kind: Kind) -> Result<(), ApiError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if matches!(phase, "Succeeded" | "Failed") {
        let what = match kind {
            Kind::Exec => "cannot exec into a container in a completed pod",
            Kind::Attach => "cannot attach to a container in a completed pod",
            Kind::PortForward => "cannot port-forward to a completed pod",
        };
        return Err(ApiError::BadRequest(format!(
            "{what}; current phase is {phase}"
        )));
    }
    Ok(())
}

/// Serves one streaming request (already authenticated and authorized as `create` on
/// `pods/<sub>`): checks it against the stored pod, asks the node, and upgrades the
/// connection to WebSocket with the negotiated protocol.
pub async fn serve(
    api: &ApiServer,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    kind: Kind,
    uri: &Uri,
    upgrade: Option<WebSocketUpgrade>,
) -> Result<Response, ApiError> {
    let pod = api.get(def, ns, name)?;
    let pairs = query_pairs(uri);
    let provider = api.pod_streams();
    // Everything that can be refused is, before the lack of an upgrade is.
    let mut options = None;
    match kind {
        Kind::Exec | Kind::Attach => {
            let mut o = exec_options(kind, &pairs)?;
            let ask = LogOptions {
                container: Some(o.container.clone()),
                ..LogOptions::default()
            };
            o.container = crate::logs::resolve_container(&pod, &ask)?;
            options = Some(o);
        }
        Kind::PortForward => {
            forward_ports(&pairs)?;
        }
    }
    check_pod(&pod, kind)?;
    let Some(provider) = provider else {
        return Err(no_node(kind));
    };
    provider.ready(&pod, kind, options.as_ref().map(|o| o.container.as_str()))?;
    let Some(upgrade) = upgrade else {
        return Err(ApiError::BadRequest(format!(
            "Upgrade request required: {} is served over WebSocket only (kubectl 1.31 or later; \
             SPDY is not supported)",
            kind.verb()
        )));
    };
    let offered: Vec<String> = upgrade
        .requested_protocols()
        .filter_map(|p| p.to_str().ok())
        .map(str::to_owned)
        .collect();
    let supported: &[&str] = match kind {
        Kind::PortForward => &[PORT_FORWARD_PROTOCOL],
        _ => &CHANNEL_PROTOCOLS,
    };
    let upgrade = upgrade
        .protocols(supported.iter().copied())
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .max_write_buffer_size(4 * MAX_MESSAGE);
    let Some(protocol) = upgrade
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .map(str::to_owned)
    else {
        return Err(ApiError::BadRequest(format!(
            "unable to upgrade connection: no common protocol: the client offered [{}], the \
             server supports [{}]",
            offered.join(" "),
            supported.join(" ")
        )));
    };
    match options {
        Some(options) => {
            let session = match kind {
                Kind::Exec => provider.exec(pod, options.clone()).await?,
                _ => provider.attach(pod, options.clone()).await?,
            };
            let v5 = protocol == CHANNEL_PROTOCOLS[0];
            let command = options.command.clone();
            Ok(upgrade
                .on_upgrade(move |socket| channels::run(socket, v5, options, command, session)))
        }
        None => Ok(upgrade.on_upgrade(move |socket| port_forward::run(socket, provider, pod))),
    }
}

/// The close frame of a connection whose work is done (code 1000).
fn normal_close() -> axum::extract::ws::Message {
    axum::extract::ws::Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }))
}

fn no_node(kind: Kind) -> ApiError {
    ApiError::BadRequest(format!(
        "unable to {}: no node serves this server's pods yet",
        kind.verb()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        query_pairs(&format!("/x?{q}").parse::<Uri>().unwrap())
    }

    #[test]
    fn exec_queries_are_parsed_and_checked() {
        // (kind, query, Ok(command, stdin, stdout, stderr, tty) or Err(message))
        type Want = Result<(Vec<&'static str>, [bool; 4]), &'static str>;
        let cases: Vec<(Kind, &str, Want)> = vec![
            (
                Kind::Exec,
                "command=sh&command=-c&command=echo%20hi&stdout=true&stderr=true",
                Ok((vec!["sh", "-c", "echo hi"], [false, true, true, false])),
            ),
            (
                Kind::Exec,
                "command=sh&stdin=true&stdout=true&stderr=true&tty=true",
                Ok((vec!["sh"], [true, true, false, true])),
            ),
            (
                Kind::Exec,
                "stdout=true",
                Err("you must specify at least 1 command"),
            ),
            (
                Kind::Exec,
                "command=ls",
                Err("you must specify at least 1 of stdin, stdout, stderr"),
            ),
            (
                Kind::Attach,
                "stdin=true",
                Ok((vec![], [true, false, false, false])),
            ),
            (
                Kind::Attach,
                "command=ls&stdin=true",
                Err("attach takes no command: it connects to the container's main process"),
            ),
        ];
        for (kind, query, want) in cases {
            let got = exec_options(kind, &pairs(query))
                .map(|o| (o.command.clone(), [o.stdin, o.stdout, o.stderr, o.tty]))
                .map_err(|e| e.to_string());
            let want = want
                .map(|(c, f)| (c.iter().map(|s| s.to_string()).collect::<Vec<_>>(), f))
                .map_err(str::to_owned);
            assert_eq!(got, want, "{query}");
        }
    }

    #[test]
    fn forwarded_ports_are_numbers() {
        assert_eq!(
            forward_ports(&pairs("ports=80&ports=8080,9090")).unwrap(),
            [80, 8080, 9090]
        );
        assert_eq!(forward_ports(&pairs("")).unwrap(), Vec::<u16>::new());
        for bad in ["ports=0", "ports=70000", "ports=http"] {
            assert!(
                matches!(forward_ports(&pairs(bad)), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn finished_or_unbound_pods_are_refused() {
        let pod = |node: &str, phase: &str| {
            serde_json::json!({"metadata": {"name": "p"}, "spec": {"nodeName": node},
                "status": {"phase": phase}})
        };
        // (pod, kind, Ok or the message)
        let cases = [
            (pod("n", "Running"), Kind::Exec, Ok(())),
            (
                pod("", "Pending"),
                Kind::Exec,
                Err("pod p does not have a host assigned"),
            ),
            (
                pod("n", "Succeeded"),
                Kind::Exec,
                Err("cannot exec into a container in a completed pod; current phase is Succeeded"),
            ),
            (
                pod("n", "Failed"),
                Kind::PortForward,
                Err("cannot port-forward to a completed pod; current phase is Failed"),
            ),
        ];
        for (pod, kind, want) in cases {
            let got = check_pod(&pod, kind).map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(str::to_owned), "{pod} {kind:?}");
        }
    }
}
