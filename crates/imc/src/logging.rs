//! The process's log on stderr: its level, colour only on a terminal, the expected noise of a
//! graceful stop left out, and errors printed with each cause once.

use std::io::IsTerminal;

use tracing_subscriber::filter::{EnvFilter, FilterExt, dynamic_filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

/// The targets of kube-client's own messages about its connections (`kube_client::client`,
/// `kube_client::client::builder`).
const KUBE_CLIENT: &str = "kube_client";

/// Logs to stderr at the level `-v` asks for (`RUST_LOG` overrides), in colour only when stderr
/// is a terminal: a log redirected to a file or a pipe holds no escape codes.
pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "warn,imc=info",
        1 => "debug",
        _ => "trace",
    };
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let quiet_stop = dynamic_filter_fn(|meta, _| {
        !is_stop_noise(
            imc_controllers::stopping::underway(),
            *meta.level(),
            meta.target(),
        )
    });
    let layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(env.and(quiet_stop));
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// A kube-client warning or error about its connections, once the process stops: the API
/// server then closes every connection, the in-process controllers' watches among them, and
/// kube-client warns `eof in poll … peer closed connection without sending TLS close_notify`
/// for each and reports the reconnects that fail (`failed with error client error (Connect)`).
/// The stop is the one `imc_controllers::stopping` records.
fn is_stop_noise(stopping: bool, level: tracing::Level, target: &str) -> bool {
    let kube_client = target == KUBE_CLIENT || target.starts_with("kube_client::");
    stopping && level <= tracing::Level::WARN && kube_client
}

/// `error` and its causes, outermost first, joined by `: `. A cause whose text the message
/// already holds is not repeated: many errors say their cause in their own message and also
/// return it as their source, which `{:#}` would print twice
/// (`…: Address already in use (os error 98): Address already in use (os error 98)`).
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if text.is_empty() {
            text = said;
        } else if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose message says its cause and which also returns it as its source.
    #[derive(Debug)]
    struct Bind {
        addr: &'static str,
        source: std::io::Error,
    }

    impl std::fmt::Display for Bind {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}: {}", self.addr, self.source)
        }
    }

    impl std::error::Error for Bind {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn each_cause_is_printed_once() {
        let io = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let cases: Vec<(&str, anyhow::Error, String)> = vec![
            (
                "a source the message already says",
                anyhow::Error::new(Bind {
                    addr: "127.0.0.1:6443",
                    source: io(),
                })
                .context("starting the API server in /var/lib/imc"),
                format!(
                    "starting the API server in /var/lib/imc: 127.0.0.1:6443: {}",
                    io()
                ),
            ),
            (
                "a source the message does not say",
                anyhow::Error::new(io()).context("binding"),
                format!("binding: {}", io()),
            ),
            (
                "contexts only",
                anyhow::anyhow!("inner").context("middle").context("outer"),
                "outer: middle: inner".to_owned(),
            ),
        ];
        for (name, error, want) in cases {
            assert_eq!(error_text(&error), want, "{name}");
            assert_eq!(
                error_text(&error).matches(&io().to_string()).count(),
                usize::from(want.contains(&io().to_string())),
                "{name}"
            );
        }
    }

    #[test]
    fn only_kube_client_warnings_during_a_stop_are_noise() {
        use tracing::Level;
        for (stopping, level, target, noise) in [
            (true, Level::WARN, "kube_client::client", true),
            (true, Level::ERROR, "kube_client::client::builder", true),
            (false, Level::WARN, "kube_client::client", false),
            (false, Level::ERROR, "kube_client::client::builder", false),
            (true, Level::INFO, "kube_client::client", false),
            (true, Level::WARN, "kube_client_extra", false),
            (true, Level::WARN, "imc_controllers::node", false),
            (true, Level::WARN, "kube_runtime::watcher", false),
        ] {
            assert_eq!(
                is_stop_noise(stopping, level, target),
                noise,
                "{stopping} {level} {target}"
            );
        }
    }
}
