//! The pod `log` subresource. The node serves logs by installing a [`PodLogs`]; until one is
//! installed, every request answers that no container runs yet.

use std::future::Future;
use std::pin::Pin;

use axum::body::Body;
use serde_json::Value;

use crate::error::ApiError;

/// Options of a log request (`GET .../pods/NAME/log?container=&follow=&tailLines=`).
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// The container; None means the pod's only container.
    pub container: Option<String>,
    /// Keep streaming until the container exits or the client goes away.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<i64>,
    /// The previous instance's logs.
    pub previous: bool,
    /// Prefix each line with its timestamp.
    pub timestamps: bool,
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
