//! Request admission after authentication, as kube-apiserver's `WithMaxInFlightLimit` and
//! `WithTimeoutForNonLongRunningRequests` filters do it: at most `--max-requests-inflight` read and
//! `--max-mutating-requests-inflight` writing requests at once (429 with `Retry-After: 1`
//! beyond), long-running requests (watches, logs) counted apart under their own cap, and every
//! other request answered within `?timeout=` (Go duration syntax) or the server's request
//! timeout, whichever is shorter (504 past it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The in-flight caps and the request timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InflightConfig {
    /// Read requests (GET, HEAD) at once; 0 for no limit (kube-apiserver's default is 400).
    pub max_requests_inflight: usize,
    /// Writing requests (POST, PUT, PATCH, DELETE) at once; 0 for no limit (default 200).
    pub max_mutating_requests_inflight: usize,
    /// Long-running requests (watches, logs) at once; 0 for no limit.
    pub max_long_running: usize,
    /// The longest a non-long-running request may take (kube-apiserver's `--request-timeout`,
    /// 60 s by default).
    pub request_timeout: Duration,
}

impl Default for InflightConfig {
    fn default() -> Self {
        InflightConfig {
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
            max_long_running: 2000,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// The semaphores behind [`InflightConfig`].
pub struct Inflight {
    read: Option<Arc<Semaphore>>,
    mutating: Option<Arc<Semaphore>>,
    long_running: Option<Arc<Semaphore>>,
    request_timeout: Duration,
}

fn semaphore(n: usize) -> Option<Arc<Semaphore>> {
    (n > 0).then(|| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS))))
}

impl Inflight {
    /// Caps from `config`.
    pub fn new(config: InflightConfig) -> Self {
        Inflight {
            read: semaphore(config.max_requests_inflight),
            mutating: semaphore(config.max_mutating_requests_inflight),
            long_running: semaphore(config.max_long_running),
            request_timeout: config.request_timeout,
        }
    }
}

/// Which cap a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// GET, HEAD, OPTIONS that end.
    Read,
    /// POST, PUT, PATCH, DELETE that end.
    Mutating,
    /// Watches and streams (`log`, `exec`, `attach`, `portforward`, `proxy`).
    LongRunning,
}

impl Class {
    /// The class of a request: kube-apiserver's long-running check (watches and the
    /// streaming subresources), else by method.
    pub fn of(method: &Method, watch: bool, subresource: Option<&str>) -> Self {
        if watch
            || matches!(
                subresource,
                Some("log" | "exec" | "attach" | "portforward" | "proxy")
            )
        {
            Class::LongRunning
        } else if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            Class::Read
        } else {
            Class::Mutating
        }
    }
}

/// A slot taken for one request (none when its class has no limit); released when dropped.
pub type Slot = Option<OwnedSemaphorePermit>;

impl Inflight {
    /// Takes a slot of `class`, or answers 429 when the class is full.
    pub fn enter(&self, class: Class) -> Result<Slot, ApiError> {
        let sem = match class {
            Class::Read => &self.read,
            Class::Mutating => &self.mutating,
            Class::LongRunning => &self.long_running,
        };
        match sem {
            None => Ok(None),
            Some(s) => s
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| ApiError::TooManyRequests),
        }
    }

    /// How long a request that is not long-running may take: `?timeout=` when shorter than the
    /// server's request timeout (400 when malformed).
    pub fn time_limit(&self, query: &HashMap<String, String>) -> Result<Duration, ApiError> {
        timeout_of(query, self.request_timeout)
    }

    /// Runs `work` within `limit`: its answer, or kube-apiserver's 504.
    pub async fn within<F: std::future::Future<Output = Response>>(
        limit: Duration,
        work: F,
    ) -> Response {
        match tokio::time::timeout(limit, work).await {
            Ok(response) => response,
            Err(_) => timed_out().into_response(),
        }
    }
}

/// `response` with `slot` held until its body has been sent (or the client went away).
pub fn hold_until_sent(response: Response, slot: Slot) -> Response {
    match slot {
        None => response,
        Some(permit) => crate::guarded_body::guard(response, permit),
    }
}

/// Parses a Go duration (`30s`, `1m30s`, `1.5h`, `250ms`); None when malformed.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * scale;
    }
    if negative || !total.is_finite() {
        // A negative timeout means none was asked for.
        return Some(Duration::ZERO);
    }
    Duration::try_from_secs_f64(total).ok()
}

/// The timeout of a non-long-running request: `?timeout=` when shorter than the server's.
fn timeout_of(query: &HashMap<String, String>, server: Duration) -> Result<Duration, ApiError> {
    let Some(text) = query.get("timeout") else {
        return Ok(server);
    };
    let asked = parse_go_duration(text).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "invalid timeout specified in the request URL - time: invalid duration {text:?}"
        ))
    })?;
    Ok(if asked.is_zero() {
        server
    } else {
        asked.min(server)
    })
}

/// The 504 of a request that ran out of time, in kube-apiserver's words.
fn timed_out() -> ApiError {
    ApiError::Timeout {
        message:
            "Timeout: request did not complete within requested timeout - context deadline exceeded"
                .into(),
        retry_after: None,
        cause: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_as_go_parses_them() {
        for (text, want) in [
            ("30s", Some(30.0)),
            ("1m30s", Some(90.0)),
            ("1.5h", Some(5400.0)),
            ("250ms", Some(0.25)),
            ("0", Some(0.0)),
            ("-5s", Some(0.0)),
            ("", None),
            ("30", None),
            ("5x", None),
            ("s", None),
        ] {
            assert_eq!(
                parse_go_duration(text).map(|d| d.as_secs_f64()),
                want,
                "{text:?}"
            );
        }
    }

    #[test]
    fn watches_and_streams_are_counted_apart() {
        for (method, watch, sub, want) in [
            (Method::GET, true, None, Class::LongRunning),
            (Method::GET, false, None, Class::Read),
            (Method::GET, false, Some("log"), Class::LongRunning),
            (Method::POST, false, Some("exec"), Class::LongRunning),
            (Method::PUT, false, Some("status"), Class::Mutating),
            (Method::DELETE, false, None, Class::Mutating),
        ] {
            assert_eq!(Class::of(&method, watch, sub), want, "{method} {sub:?}");
        }
    }

    #[tokio::test]
    async fn a_full_class_answers_429() {
        let inflight = Inflight::new(InflightConfig {
            max_requests_inflight: 1,
            max_mutating_requests_inflight: 1,
            max_long_running: 0,
            request_timeout: Duration::from_secs(60),
        });
        let held = inflight.enter(Class::Read).unwrap();
        assert!(matches!(
            inflight.enter(Class::Read),
            Err(ApiError::TooManyRequests)
        ));
        // Other classes are counted apart; no limit means none.
        assert!(inflight.enter(Class::Mutating).unwrap().is_some());
        assert!(inflight.enter(Class::LongRunning).unwrap().is_none());
        drop(held);
        assert!(inflight.enter(Class::Read).is_ok());
    }

    #[test]
    fn the_shorter_timeout_wins() {
        let server = Duration::from_secs(60);
        let q =
            |t: &str| -> HashMap<String, String> { [("timeout".to_owned(), t.to_owned())].into() };
        assert_eq!(timeout_of(&HashMap::new(), server).unwrap(), server);
        assert_eq!(
            timeout_of(&q("5s"), server).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(timeout_of(&q("5m"), server).unwrap(), server);
        assert!(matches!(
            timeout_of(&q("soon"), server),
            Err(ApiError::BadRequest(_))
        ));
    }
}
