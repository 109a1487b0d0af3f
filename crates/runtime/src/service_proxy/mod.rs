//! The Service data path of `imc server`, as kube-proxy's iptables mode builds it: ClusterIPs
//! and NodePorts DNAT'd to a backend picked at random (`statistic`), ClientIP session affinity
//! with the `recent` match, REJECT for Services without a usable endpoint, and a mark that
//! makes every service connection leave with the host's address (so hairpin and pod → Service
//! → pod on the same bridge return the way they came).
//!
//! [`rules`] computes the whole rule set from what the API says ([`ServicePort`]s) as
//! `iptables-restore` text: a pure function, table-tested. [`ServiceProxy`] installs it on
//! imc's own chains with `iptables-restore --noflush` (atomic per table), jumps to them from
//! the built-in chains, and removes everything at a graceful stop. Its methods block (they run
//! `iptables`): call them on a blocking thread.

mod apply;
mod rules;

pub use apply::ServiceProxy;
pub use rules::{ChainNames, Endpoint, Protocol, RuleSet, ServicePort, rules};
