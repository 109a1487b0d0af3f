//! The pod `log` subresource. The node serves logs by installing a [`PodLogs`]; until one is
//! installed, every request answers that no container runs yet.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use axum::body::Body;
use serde_json::Value;

use crate::error::{ApiError, Cause};

/// Options of a log request (`GET .../pods/NAME/log?container=&follow=&tailLines=&previous=
/// &timestamps=&sinceSeconds=&sinceTime=&limitBytes=`), as `PodLogOptions` has them.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// The container; None means the pod's only container. Once the request is checked
    /// against the pod ([`resolve_container`]), always set to one of its containers.
    pub container: Option<String>,
    /// Keep streaming until the container exits or the client goes away.
    pub follow: bool,
    /// Only the last N lines (N ≥ 0).
    pub tail_lines: Option<i64>,
    /// The previous instance's logs.
    pub previous: bool,
    /// Prefix each line with its timestamp.
    pub timestamps: bool,
    /// Only lines of the last N seconds (N ≥ 1; not with `since_time`).
    pub since_seconds: Option<i64>,
    /// Only lines written at or after this time (not with `since_seconds`).
    pub since_time: Option<jiff::Timestamp>,
    /// Stop after this many bytes (≥ 1).
    pub limit_bytes: Option<i64>,
}

impl LogOptions {
    /// Parses and validates the query of a log request as kube-apiserver does: malformed
    /// values are a 400, out-of-range ones a 422 naming each field (`pod` names the pod in it).
    pub fn from_query(query: &HashMap<String, String>, pod: &str) -> Result<Self, ApiError> {
        let flag = |k: &str| query.get(k).is_some_and(|v| v == "true" || v == "1");
        let int = |k: &str| -> Result<Option<i64>, ApiError> {
            query
                .get(k)
                .map(|v| {
                    v.parse::<i64>().map_err(|_| {
                        ApiError::BadRequest(format!("{k}: invalid value {v:?}: not an integer"))
                    })
                })
                .transpose()
        };
        let since_time = query
            .get("sinceTime")
            .map(|v| {
                v.parse::<jiff::Timestamp>().map_err(|e| {
                    ApiError::BadRequest(format!("sinceTime: invalid value {v:?}: {e}"))
                })
            })
            .transpose()?;
        let options = LogOptions {
            container: query.get("container").cloned(),
            follow: flag("follow"),
            tail_lines: int("tailLines")?,
            previous: flag("previous"),
            timestamps: flag("timestamps"),
            since_seconds: int("sinceSeconds")?,
            since_time,
            limit_bytes: int("limitBytes")?,
        };
        let mut causes = Vec::new();
        let mut invalid = |field: &str, value: i64, message: &str| {
            causes.push(Cause {
                field: field.to_owned(),
                reason: "FieldValueInvalid".into(),
                message: format!("Invalid value: {value}: {message}"),
            })
        };
        if let Some(n) = options.tail_lines.filter(|n| *n < 0) {
            invalid("tailLines", n, "must be greater than or equal to 0");
        }
        if let Some(n) = options.limit_bytes.filter(|n| *n < 1) {
            invalid("limitBytes", n, "must be greater than 0");
        }
        if options.since_seconds.is_some() && options.since_time.is_some() {
            causes.push(Cause {
                field: String::new(),
                reason: "FieldValueForbidden".into(),
                message: "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"
                    .into(),
            });
        } else if let Some(n) = options.since_seconds.filter(|n| *n < 1) {
            invalid("sinceSeconds", n, "must be greater than 0");
        }
        if !causes.is_empty() {
            return Err(ApiError::Invalid {
                kind: "PodLogOptions".into(),
                name: pod.to_owned(),
                causes,
            });
        }
        Ok(options)
    }
}

/// The container a log request is for, checked against the pod as kube-apiserver does it:
/// a name that is not one of the pod's containers or init containers is refused (400,
/// `container X is not valid for pod P`) before anything else looks at it; without a name the
/// pod's only container is meant.
pub fn resolve_container(pod: &Value, options: &LogOptions) -> Result<String, ApiError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let names = |list: &str| -> Vec<String> {
        pod.pointer(list)
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names("/spec/containers");
    let init = names("/spec/initContainers");
    match &options.container {
        Some(c) if !c.is_empty() => {
            if containers.contains(c) || init.contains(c) {
                Ok(c.clone())
            } else {
                Err(ApiError::BadRequest(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        _ => match containers.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {name}"
            ))),
            _ => {
                let mut message = format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                );
                if !init.is_empty() {
                    message.push_str(&format!(
                        " or one of the init containers: [{}]",
                        init.join(" ")
                    ));
                }
                Err(ApiError::BadRequest(message))
            }
        },
    }
}

/// A future yielding a log body.
pub type LogFuture = Pin<Box<dyn Future<Output = Result<Body, ApiError>> + Send>>;

/// Serves pod logs; implemented by the node.
pub trait PodLogs: Send + Sync + 'static {
    /// The log stream of `pod` (the stored Pod object) as asked by `options`.
    fn logs(&self, pod: Value, options: LogOptions) -> LogFuture;
}

/// The answer before a node is attached.
pub(crate) fn no_container_yet(pod: &Value, options: &LogOptions) -> ApiError {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let container = options.container.clone().unwrap_or_else(|| {
        pod.pointer("/spec/containers/0/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    });
    ApiError::BadRequest(format!(
        "container {container:?} in pod {name:?} is waiting to start: no container running yet"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_must_be_one_of_the_pod() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [{"name": "setup"}],
            "containers": [{"name": "app"}, {"name": "side"}]}});
        let single = json!({"metadata": {"name": "s"}, "spec": {"containers": [{"name": "only"}]}});
        let ask = |c: Option<&str>| LogOptions {
            container: c.map(str::to_owned),
            ..LogOptions::default()
        };
        // (pod, asked container, Ok(container) or Err(message))
        let cases: Vec<(&Value, Option<&str>, Result<&str, &str>)> = vec![
            (&pod, Some("app"), Ok("app")),
            (&pod, Some("setup"), Ok("setup")),
            (
                &pod,
                Some("/etc"),
                Err("container /etc is not valid for pod p"),
            ),
            (&pod, Some(".."), Err("container .. is not valid for pod p")),
            (
                &pod,
                Some("app/../x"),
                Err("container app/../x is not valid for pod p"),
            ),
            (
                &pod,
                None,
                Err(
                    "a container name must be specified for pod p, choose one of: [app side] or one of the init containers: [setup]",
                ),
            ),
            (&single, None, Ok("only")),
            (&single, Some(""), Ok("only")),
        ];
        for (pod, asked, want) in cases {
            let got = resolve_container(pod, &ask(asked)).map_err(|e| {
                assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
                e.to_string()
            });
            assert_eq!(got.as_deref().map_err(String::as_str), want, "{asked:?}");
        }
    }

    #[test]
    fn query_parameters_are_parsed_and_checked() {
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let ok = LogOptions::from_query(
            &q(&[
                ("tailLines", "3"),
                ("timestamps", "true"),
                ("sinceTime", "2024-05-01T10:00:00Z"),
                ("limitBytes", "100"),
                ("follow", "true"),
            ]),
            "p",
        )
        .unwrap();
        assert_eq!(ok.tail_lines, Some(3));
        assert!(ok.timestamps && ok.follow && !ok.previous);
        assert_eq!(ok.since_time, Some("2024-05-01T10:00:00Z".parse().unwrap()));
        assert_eq!(ok.limit_bytes, Some(100));
        assert_eq!(
            LogOptions::from_query(&q(&[("sinceSeconds", "60")]), "p")
                .unwrap()
                .since_seconds,
            Some(60)
        );
        // (query, the fields named in the 422) — or a 400 when a value does not parse
        type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);
        let invalid: Vec<Case> = vec![
            (vec![("tailLines", "-1")], vec!["tailLines"]),
            (vec![("limitBytes", "0")], vec!["limitBytes"]),
            (vec![("sinceSeconds", "0")], vec!["sinceSeconds"]),
            (
                vec![("sinceSeconds", "5"), ("sinceTime", "2024-05-01T10:00:00Z")],
                vec![""],
            ),
        ];
        for (pairs, fields) in invalid {
            match LogOptions::from_query(&q(&pairs), "p") {
                Err(ApiError::Invalid { kind, name, causes }) => {
                    assert_eq!((kind.as_str(), name.as_str()), ("PodLogOptions", "p"));
                    let got: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
                    assert_eq!(got, fields, "{pairs:?}");
                }
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
        for pairs in [[("tailLines", "x")], [("sinceTime", "yesterday")]] {
            assert!(matches!(
                LogOptions::from_query(&q(&pairs), "p"),
                Err(ApiError::BadRequest(_))
            ));
        }
    }
}
