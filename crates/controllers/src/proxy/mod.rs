//! The node's Service proxy, as kube-proxy runs: Services and EndpointSlices watched
//! ([`ServiceView`]), turned into [`ServicePort`](imc_runtime::service_proxy::ServicePort)s
//! ([`service_ports`]) and installed by the runtime's
//! [`ServiceProxy`](imc_runtime::service_proxy::ServiceProxy): once both lists have arrived,
//! then after every change, debounced, with one sync in flight at a time (a change during a
//! sync leaves one more sync to do, not one per change). Every [`RESYNC`] the rules are
//! rewritten and the jumps into them checked anyway, in case another program flushed them
//! (kube-proxy's `--iptables-sync-period`).

mod service_ports;

use std::sync::Arc;
use std::time::Duration;

use imc_runtime::service_proxy::ServiceProxy;
pub use service_ports::service_ports;
use tracing::{debug, warn};

use crate::service_view::ServiceView;

/// Changes arriving this close together are applied in one sync.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Rules are rewritten at least this often.
pub const RESYNC: Duration = Duration::from_secs(30);

/// Pause after a failed sync before the next try.
const RETRY: Duration = Duration::from_secs(1);

/// Keeps `proxy`'s rules in line with `view` until the process ends. `proxy` must be
/// installed ([`ServiceProxy::install`]) first.
pub async fn run(view: ServiceView, proxy: Arc<ServiceProxy>) {
    view.ready().await;
    let mut last_notes: Vec<String> = Vec::new();
    let mut periodic = false;
    loop {
        let (ports, mut notes) = service_ports(&view.services.state(), &view.slices.state());
        let p = proxy.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            if periodic {
                p.ensure_jumps()?;
            }
            p.sync(&ports)
        })
        .await;
        match outcome {
            Ok(Ok(set)) => {
                debug!(
                    rules = set.nat_rules.len() + set.filter_rules.len(),
                    "services synced"
                );
                notes.extend(set.skipped);
                // Said once, not at every sync.
                if notes != last_notes {
                    for n in &notes {
                        warn!(note = %n, "service port not forwarded");
                    }
                    last_notes = notes;
                }
            }
            Ok(Err(e)) => {
                warn!(error = %e, "syncing the service rules; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(e) => {
                warn!(error = %e, "syncing the service rules; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        periodic = tokio::select! {
            _ = view.changed.notified() => false,
            _ = tokio::time::sleep(RESYNC) => true,
        };
        tokio::time::sleep(DEBOUNCE).await;
    }
}
