//! Container probes, as the kubelet's `prober/` runs them: startup, liveness and readiness
//! probes of each running container, by `exec` (in the container), `httpGet`, `tcpSocket` and
//! `grpc` (from inside the pod's network namespace), with the upstream timing fields,
//! thresholds, results and `Unhealthy` event messages.
//!
//! - [`action`]: what a probe or hook does, read from the pod spec (ports by name, defaults).
//! - [`target`]: where it runs: the container (exec) and the pod's network.
//! - [`exec`], [`http`], [`tcp`], [`grpc`]: one probe run of each kind.
//! - [`worker`]: the periodic probing of one container instance and its thresholds.

pub(super) mod action;
mod exec;
mod grpc;
pub(super) mod http;
pub(super) mod target;
mod tcp;
pub(super) mod worker;

use std::time::Duration;

pub(super) use action::{Action, ProbeSpec};
pub(super) use target::Target;

/// Bytes of a probe's output (exec output, HTTP body) kept for its message, as the kubelet's
/// `maxReadLength` / `maxRespBodyLength`.
pub(super) const MAX_OUTPUT: usize = 10 * 1024;

/// How many times a probe that errored (could not be run at all) is tried at once, as the
/// kubelet's `maxProbeRetries`.
const MAX_RETRIES: usize = 3;

/// The kubelet version in `User-Agent` headers (`kube-probe/1.32`).
pub(super) const KUBE_VERSION: &str = "1.32";

/// Which probe of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProbeType {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeType {
    /// As the kubelet names it in messages.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            ProbeType::Startup => "Startup",
            ProbeType::Liveness => "Liveness",
            ProbeType::Readiness => "Readiness",
        }
    }
}

/// One probe run's outcome with its output (the kubelet's `probe.Result` and output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    Success(String),
    /// A success worth a warning (an HTTP redirect to another host, not followed).
    Warning(String),
    Failure(String),
    /// The probe could not be run (its result is thrown away, as the kubelet's prober
    /// errors are): why.
    Error(String),
}

impl Outcome {
    /// Whether it counts as a success.
    pub(super) fn succeeded(&self) -> bool {
        matches!(self, Outcome::Success(_) | Outcome::Warning(_))
    }
}

/// Runs `action` once against `target` within `timeout` (retrying at once, up to
/// [`MAX_RETRIES`] times, when it could not be run at all).
pub(super) async fn run(action: &Action, target: &Target, timeout: Duration) -> Outcome {
    let mut outcome = Outcome::Error(String::new());
    for _ in 0..MAX_RETRIES {
        outcome = match action {
            Action::Exec { command } => exec::probe(target, command, timeout).await,
            Action::HttpGet(get) => http::probe(target, get, timeout).await,
            Action::TcpSocket { host, port } => {
                tcp::probe(target, host.as_deref(), *port, timeout).await
            }
            Action::Grpc { port, service } => grpc::probe(target, *port, service, timeout).await,
            Action::Invalid(why) => Outcome::Error(why.clone()),
        };
        if !matches!(outcome, Outcome::Error(_)) || matches!(action, Action::Invalid(_)) {
            break;
        }
    }
    outcome
}

/// The `Unhealthy` (or `ProbeWarning`) event a probe run gives, as the kubelet words it:
/// (reason, message); `None` for a plain success.
pub(super) fn event(probe: ProbeType, outcome: &Outcome) -> Option<(&'static str, String)> {
    let kind = probe.as_str();
    match outcome {
        Outcome::Success(_) => None,
        Outcome::Warning(out) => Some(("ProbeWarning", format!("{kind} probe warning: {out}"))),
        Outcome::Failure(out) => Some(("Unhealthy", format!("{kind} probe failed: {out}"))),
        Outcome::Error(err) => Some((
            "Unhealthy",
            format!("{kind} probe errored and resulted in unknown state: {err}"),
        )),
    }
}

/// `host:port` as Go's `net.JoinHostPort` writes it (IPv6 addresses in brackets).
pub(super) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An I/O error as Go's `net` package words a failed dial: `connect: connection refused`.
pub(super) fn dial_error(e: &std::io::Error) -> String {
    let text = match e.raw_os_error() {
        // SAFETY: strerror returns a pointer to a static (or thread-local) C string.
        Some(code) => unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) }
            .to_string_lossy()
            .into_owned(),
        None => e.to_string(),
    };
    let mut chars = text.chars();
    let lower = match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    };
    if e.raw_os_error().is_some() {
        format!("connect: {lower}")
    } else {
        lower
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_worded_as_the_kubelet_words_them() {
        let rows = [
            (ProbeType::Readiness, Outcome::Success("ok".into()), None),
            (
                ProbeType::Readiness,
                Outcome::Failure("HTTP probe failed with statuscode: 500".into()),
                Some((
                    "Unhealthy",
                    "Readiness probe failed: HTTP probe failed with statuscode: 500",
                )),
            ),
            (
                ProbeType::Liveness,
                Outcome::Error("port \"web\" not found".into()),
                Some((
                    "Unhealthy",
                    "Liveness probe errored and resulted in unknown state: port \"web\" not found",
                )),
            ),
            (
                ProbeType::Startup,
                Outcome::Warning("Probe terminated redirects, Response body: x".into()),
                Some((
                    "ProbeWarning",
                    "Startup probe warning: Probe terminated redirects, Response body: x",
                )),
            ),
        ];
        for (probe, outcome, want) in rows {
            let got = event(probe, &outcome);
            assert_eq!(
                got.as_ref().map(|(r, m)| (*r, m.as_str())),
                want,
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn dial_errors_read_like_go() {
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(dial_error(&refused), "connect: connection refused");
        assert_eq!(join_host_port("::1", 80), "[::1]:80");
        assert_eq!(join_host_port("10.0.0.1", 80), "10.0.0.1:80");
    }
}
