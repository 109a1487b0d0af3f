//! How the client reaches registries: plain-HTTP and insecure hosts, mirrors, credentials, retries.

use std::time::Duration;

use crate::credentials::Credentials;

/// How often and how patiently transient faults (connection errors, short bodies, 429, 5xx) are
/// retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in total for one request (at least 1). A blob attempt that made progress before
    /// failing does not use one up, so a flaky link still finishes a large blob.
    pub attempts: u32,
    /// Wait before the first retry; doubles after each failure.
    pub initial_backoff: Duration,
    /// Longest wait between tries (a registry's Retry-After may ask for longer, up to a minute).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Longest Retry-After imc honours; a registry asking for more gets retried after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based), honouring the registry's Retry-After.
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
            .min(self.max_backoff);
        match retry_after {
            Some(after) => exp.max(after.min(MAX_RETRY_AFTER)),
            None => exp,
        }
    }
}

/// Options of a [`Client`](crate::Client).
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// `host:port` registries spoken to over plain HTTP.
    pub plain_http: Vec<String>,
    /// `host:port` registries whose TLS certificate is not verified (HTTPS still used).
    pub insecure: Vec<String>,
    /// (registry host, base URL `http(s)://h:p[/path]`): references to the host are fetched from
    /// the URL instead, keeping their original name (Docker's `--registry-mirror`).
    pub mirrors: Vec<(String, String)>,
    /// Credentials by registry host.
    pub credentials: Credentials,
    /// Retry policy for transient faults.
    pub retry: RetryPolicy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_honours_retry_after() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1, None), Duration::from_millis(200));
        assert_eq!(p.backoff(2, None), Duration::from_millis(400));
        assert_eq!(p.backoff(3, None), Duration::from_millis(800));
        assert_eq!(p.backoff(10, None), Duration::from_secs(5));
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(60)
        );
    }
}
