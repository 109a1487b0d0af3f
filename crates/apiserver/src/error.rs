//! Errors of the API server, each answered to the client as a `metav1.Status`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One bad field of an `Invalid` answer (`details.causes[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The field path, e.g. `spec.images[2]`.
    pub field: String,
    /// `FieldValueRequired`, `FieldValueInvalid`, …
    pub reason: String,
    /// What is wrong.
    pub message: String,
}

/// Everything that can go wrong serving a request or keeping state.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The object (or its namespace) does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// The resource as messages name it, e.g. `pods` or `imagecaches.eci.alibabacloud.com`.
        kind: String,
        /// The object's name.
        name: String,
    },
    /// An object with that name exists already.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// The resource as messages name it, e.g. `pods` or `imagecaches.eci.alibabacloud.com`.
        kind: String,
        /// The object's name.
        name: String,
    },
    /// The write was based on a stale resourceVersion.
    #[error(
        "Operation cannot be fulfilled on {kind} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict {
        /// The resource as messages name it, e.g. `pods` or `imagecaches.eci.alibabacloud.com`.
        kind: String,
        /// The object's name.
        name: String,
    },
    /// The write cannot be done in the object's current state; `reason` says why
    /// (`pod p is already assigned to node "n"`).
    #[error("Operation cannot be fulfilled on {kind} {name:?}: {reason}")]
    ConflictBecause {
        /// The resource as messages name it, e.g. `pods` or `imagecaches.eci.alibabacloud.com`.
        kind: String,
        /// The object's name.
        name: String,
        /// Why the write cannot be done now.
        reason: String,
    },
    /// A server-side apply would change fields other managers own; each cause names a manager
    /// and a field.
    #[error("{message}")]
    ApplyConflict {
        /// The resource as messages name it, e.g. `pods` or `imagecaches.eci.alibabacloud.com`.
        kind: String,
        /// The object's name.
        name: String,
        /// The whole answer: how many conflicts, and each manager with the fields it owns.
        message: String,
        /// (`conflict with "manager"`, `.field.path`)
        causes: Vec<(String, String)>,
    },
    /// The object failed validation; one cause per bad field.
    #[error("{kind} {name:?} is invalid: {}", invalid_list(causes))]
    Invalid {
        /// The object's kind, e.g. `Pod`.
        kind: String,
        /// The object's name.
        name: String,
        /// One entry per bad field.
        causes: Vec<Cause>,
    },
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Admission or policy refused the request.
    #[error("{0}")]
    Forbidden(String),
    /// The verb is not supported on this resource.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The patch type is not supported for this resource.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request carried no valid bearer token.
    #[error("Unauthorized")]
    Unauthorized,
    /// The request body, a patch's result or an object is larger than the server accepts.
    #[error("{0}")]
    TooLarge(String),
    /// The request is well-formed but cannot be processed (nesting too deep, a JSON patch that
    /// does not apply).
    #[error("{0}")]
    Unprocessable(String),
    /// Too many requests are in flight; the client should retry after a second.
    #[error("Too many requests, please try again later.")]
    TooManyRequests,
    /// The request did not complete in time (`reason: Timeout`, 504); `retry_after` seconds
    /// when the client should simply try again, `cause` a machine-readable reason.
    #[error("{message}")]
    Timeout {
        /// The answer's message, as kube-apiserver words it.
        message: String,
        /// Seconds after which the client should retry, when it simply should.
        retry_after: Option<u64>,
        /// A `details.causes[]` entry: its reason (e.g. `ResourceVersionTooLarge`) and message.
        cause: Option<(&'static str, String)>,
    },
    /// The requested resourceVersion has been compacted away.
    #[error("too old resource version: {requested} ({oldest})")]
    Gone {
        /// The resourceVersion the client asked to start from.
        requested: u64,
        /// The oldest resourceVersion still served (the current one when a watch fell behind).
        oldest: u64,
    },
    /// The state database failed.
    #[error("state database {path}: {source}")]
    Database {
        /// The database file's path.
        path: String,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// Reading or writing a file of the data directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory the operation was on.
        path: String,
        /// The error the operating system returned.
        #[source]
        source: std::io::Error,
    },
    /// Another server holds the data directory.
    #[error("{path} is in use by another imc server")]
    DataDirInUse {
        /// The data directory's path.
        path: String,
    },
    /// Creating certificates failed.
    #[error("creating certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    /// TLS configuration failed.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Something that should not happen happened; the message says what.
    #[error("internal error: {0}")]
    Internal(String),
    /// An admission webhook refused the request, or calling one failed: the status code (400
    /// to 599) and message as kube-apiserver answers them.
    #[error("{message}")]
    Admission {
        /// The HTTP status code.
        code: u16,
        /// The whole message (`admission webhook "x" denied the request: ...`).
        message: String,
    },
}

impl ApiError {
    /// The HTTP status code and `reason` of the answer.
    pub fn code_reason(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
            ApiError::AlreadyExists { .. } => (StatusCode::CONFLICT, "AlreadyExists"),
            ApiError::Conflict { .. }
            | ApiError::ConflictBecause { .. }
            | ApiError::ApplyConflict { .. } => (StatusCode::CONFLICT, "Conflict"),
            ApiError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
            }
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            ApiError::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
            ApiError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
            ApiError::Gone { .. } => (StatusCode::GONE, "Expired"),
            ApiError::Admission { code, .. } => admission_code_reason(*code),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        }
    }

    /// Seconds after which the client may retry (the `Retry-After` header), when it should.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::TooManyRequests => Some(1),
            ApiError::Timeout { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The `metav1.Status` object describing this error.
    pub fn status(&self) -> Value {
        let (code, reason) = self.code_reason();
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "code": code.as_u16(),
        });
        let details = match self {
            ApiError::NotFound { kind, name }
            | ApiError::AlreadyExists { kind, name }
            | ApiError::Conflict { kind, name }
            | ApiError::ConflictBecause { kind, name, .. } => {
                Some(json!({"name": name, "kind": kind}))
            }
            ApiError::Invalid { kind, name, causes } => Some(json!({
                "name": name,
                "kind": kind,
                "causes": causes.iter().map(|c| json!({
                    "field": c.field, "reason": c.reason, "message": c.message,
                })).collect::<Vec<_>>(),
            })),
            ApiError::ApplyConflict {
                kind, name, causes, ..
            } => Some(json!({
                "name": name,
                "kind": kind,
                "causes": causes.iter().map(|(message, field)| json!({
                    "reason": "FieldManagerConflict", "message": message, "field": field,
                })).collect::<Vec<_>>(),
            })),
            ApiError::TooManyRequests => Some(json!({"retryAfterSeconds": 1})),
            ApiError::Timeout {
                retry_after, cause, ..
            } => {
                let mut d = json!({});
                if let Some(s) = retry_after {
                    d["retryAfterSeconds"] = json!(s);
                }
                if let Some((reason, message)) = cause {
                    d["causes"] = json!([{"reason": reason, "message": message}]);
                }
                Some(d)
            }
            _ => None,
        };
        if let Some(details) = details {
            status["details"] = details;
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, _) = self.code_reason();
        if code.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = (
            code,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.status().to_string(),
        )
            .into_response();
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// The status code of an admission answer (clamped to 400..=599, as kube-apiserver does) and
/// the `reason` Kubernetes gives that code.
fn admission_code_reason(code: u16) -> (StatusCode, &'static str) {
    let code =
        StatusCode::from_u16(code.clamp(400, 599)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    };
    (code, reason)
}

/// The causes as Kubernetes lists them: `field: message`, several in brackets.
fn invalid_list(causes: &[Cause]) -> String {
    let each: Vec<String> = causes
        .iter()
        .map(|c| {
            if c.field.is_empty() {
                c.message.clone()
            } else {
                format!("{}: {}", c.field, c.message)
            }
        })
        .collect();
    match each.as_slice() {
        [one] => one.clone(),
        _ => format!("[{}]", each.join(", ")),
    }
}

/// Result with [`ApiError`].
pub type Result<T, E = ApiError> = std::result::Result<T, E>;
