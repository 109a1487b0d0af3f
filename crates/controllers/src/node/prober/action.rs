//! What a probe or a lifecycle hook does, read from the pod spec: the handler, its port (a
//! number or the name of one of the container's ports), and a probe's timing fields with the
//! API's defaults. Pure.

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// One handler of a probe or hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::node) enum Action {
    /// A command run in the container.
    Exec { command: Vec<String> },
    /// An HTTP GET.
    HttpGet(HttpGet),
    /// A TCP connect.
    TcpSocket { host: Option<String>, port: u16 },
    /// A `grpc.health.v1.Health/Check` call.
    Grpc { port: u16, service: String },
    /// A handler that cannot run as written (its port names no port of the container): why,
    /// in the kubelet's words. Each run of it errors.
    Invalid(String),
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::node) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// As in a URL.
    pub(in crate::node) fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// An `httpGet` handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::node) struct HttpGet {
    pub scheme: Scheme,
    /// The host to connect to; the pod's IP when unset.
    pub host: Option<String>,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// Headers as the pod gives them (a `Host` header sets the request's host).
    pub headers: Vec<(String, String)>,
}

/// A probe of a container with its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::node) struct ProbeSpec {
    pub action: Action,
    /// `initialDelaySeconds`: no probe before the container ran this long.
    pub initial_delay: Duration,
    /// `periodSeconds` (at least 1 s).
    pub period: Duration,
    /// `timeoutSeconds` (at least 1 s).
    pub timeout: Duration,
    /// `successThreshold`: successes in a row that make it succeed.
    pub success_threshold: u32,
    /// `failureThreshold`: failures in a row that make it fail.
    pub failure_threshold: u32,
    /// The probe's own `terminationGracePeriodSeconds`, used instead of the pod's when a
    /// failed liveness or startup probe kills the container.
    pub termination_grace_seconds: Option<i64>,
}

impl ProbeSpec {
    /// The probe `p` of container `c`, with the API's defaults for unset or invalid fields.
    pub(in crate::node) fn of(p: &Probe, c: &Container) -> Self {
        let secs = |v: Option<i32>, default: u64, min: u64| {
            Duration::from_secs(
                v.map_or(default, |v| u64::try_from(v).unwrap_or(0))
                    .max(min),
            )
        };
        let count = |v: Option<i32>, default: u32| {
            v.and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        let action = if let Some(e) = &p.exec {
            Action::Exec {
                command: e.command.clone().unwrap_or_default(),
            }
        } else if let Some(h) = &p.http_get {
            http_get(h, c)
        } else if let Some(t) = &p.tcp_socket {
            tcp_socket(t, c)
        } else if let Some(g) = &p.grpc {
            match u16::try_from(g.port).ok().filter(|p| *p > 0) {
                Some(port) => Action::Grpc {
                    port,
                    service: g.service.clone().unwrap_or_default(),
                },
                None => Action::Invalid(format!("invalid port number: {}", g.port)),
            }
        } else {
            Action::Invalid("missing probe handler".into())
        };
        ProbeSpec {
            action,
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success_threshold: count(p.success_threshold, 1),
            failure_threshold: count(p.failure_threshold, 3),
            termination_grace_seconds: p.termination_grace_period_seconds,
        }
    }
}

/// What a lifecycle hook does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::node) enum Hook {
    /// An exec or httpGet handler.
    Action(Action),
    /// `sleep`: waits this long.
    Sleep(Duration),
}

impl Hook {
    /// The hook `h` of container `c` (a `tcpSocket` hook is not run by the kubelet either: it
    /// fails as an invalid handler).
    pub(in crate::node) fn of(h: &LifecycleHandler, c: &Container) -> Self {
        if let Some(e) = &h.exec {
            Hook::Action(Action::Exec {
                command: e.command.clone().unwrap_or_default(),
            })
        } else if let Some(g) = &h.http_get {
            Hook::Action(http_get(g, c))
        } else if let Some(s) = &h.sleep {
            Hook::Sleep(Duration::from_secs(u64::try_from(s.seconds).unwrap_or(0)))
        } else {
            Hook::Action(Action::Invalid(
                "invalid handler: only exec, httpGet and sleep hooks run".into(),
            ))
        }
    }
}

fn http_get(h: &HTTPGetAction, c: &Container) -> Action {
    let port = match port_of(&h.port, c) {
        Ok(p) => p,
        Err(e) => return Action::Invalid(e),
    };
    let scheme = match h.scheme.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("https") => Scheme::Https,
        _ => Scheme::Http,
    };
    let path = h.path.clone().unwrap_or_default();
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    Action::HttpGet(HttpGet {
        scheme,
        host: h.host.clone().filter(|h| !h.is_empty()),
        port,
        path,
        headers: h
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
    })
}

fn tcp_socket(t: &TCPSocketAction, c: &Container) -> Action {
    match port_of(&t.port, c) {
        Ok(port) => Action::TcpSocket {
            host: t.host.clone().filter(|h| !h.is_empty()),
            port,
        },
        Err(e) => Action::Invalid(e),
    }
}

/// The port a handler names (the kubelet's `extractPort`): a number, or the name of one of the
/// container's ports, or a number written as a string. The errors are the kubelet's.
fn port_of(port: &IntOrString, c: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(name) => match c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
        {
            Some(p) => i64::from(p.container_port),
            None => name
                .parse::<i64>()
                .map_err(|_| format!("strconv.Atoi: parsing {name:?}: invalid syntax"))?,
        },
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port number: {number}"))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerPort, ExecAction, HTTPHeader};

    use super::*;

    fn container() -> Container {
        Container {
            name: "app".into(),
            ports: Some(vec![ContainerPort {
                name: Some("web".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    fn get(port: IntOrString) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                port,
                path: Some("healthz".into()),
                scheme: Some("HTTPS".into()),
                http_headers: Some(vec![HTTPHeader {
                    name: "X-A".into(),
                    value: "1".into(),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ports_by_number_or_name() {
        // (port as written, the action's port or error)
        let rows = [
            (IntOrString::Int(80), Ok(80)),
            (IntOrString::String("web".into()), Ok(8080)),
            (IntOrString::String("9090".into()), Ok(9090)),
            (
                IntOrString::String("db".into()),
                Err("strconv.Atoi: parsing \"db\": invalid syntax".to_owned()),
            ),
            (
                IntOrString::Int(70000),
                Err("invalid port number: 70000".to_owned()),
            ),
            (
                IntOrString::Int(0),
                Err("invalid port number: 0".to_owned()),
            ),
        ];
        for (port, want) in rows {
            let spec = ProbeSpec::of(&get(port.clone()), &container());
            let got = match spec.action {
                Action::HttpGet(h) => Ok(h.port),
                Action::Invalid(e) => Err(e),
                other => panic!("{other:?}"),
            };
            assert_eq!(got, want, "{port:?}");
        }
    }

    #[test]
    fn http_get_and_timing_defaults() {
        let spec = ProbeSpec::of(&get(IntOrString::Int(80)), &container());
        assert_eq!(
            spec.action,
            Action::HttpGet(HttpGet {
                scheme: Scheme::Https,
                host: None,
                port: 80,
                path: "/healthz".into(),
                headers: vec![("X-A".into(), "1".into())],
            })
        );
        assert_eq!(
            (
                spec.initial_delay,
                spec.period,
                spec.timeout,
                spec.success_threshold,
                spec.failure_threshold
            ),
            (
                Duration::ZERO,
                Duration::from_secs(10),
                Duration::from_secs(1),
                1,
                3
            )
        );
        let p = Probe {
            exec: Some(ExecAction {
                command: Some(vec!["true".into()]),
            }),
            initial_delay_seconds: Some(5),
            period_seconds: Some(0),
            failure_threshold: Some(1),
            termination_grace_period_seconds: Some(2),
            ..Default::default()
        };
        let spec = ProbeSpec::of(&p, &container());
        assert_eq!(spec.initial_delay, Duration::from_secs(5));
        assert_eq!(spec.period, Duration::from_secs(1), "a 0 s period is 1 s");
        assert_eq!(spec.failure_threshold, 1);
        assert_eq!(spec.termination_grace_seconds, Some(2));
    }

    #[test]
    fn hooks() {
        let sleep = LifecycleHandler {
            sleep: Some(k8s_openapi::api::core::v1::SleepAction { seconds: 3 }),
            ..Default::default()
        };
        assert_eq!(
            Hook::of(&sleep, &container()),
            Hook::Sleep(Duration::from_secs(3))
        );
        let tcp = LifecycleHandler {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(80),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            Hook::of(&tcp, &container()),
            Hook::Action(Action::Invalid(_))
        ));
    }
}
