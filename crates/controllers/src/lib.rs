//! imc-controllers: the logic that runs as kube-rs controllers, in `imc server` and against a
//! real cluster alike: pod admission (cache choice), cache lifecycle, the scheduler (pod
//! placement), the node, and (in `imc server` only) the `kube-root-ca.crt` publisher.
#![warn(missing_docs)]

pub mod admission;
pub mod admission_hook;
pub mod cache;
pub mod dns;
pub mod leader;
pub mod manager;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod quantity;
pub mod root_ca_publisher;
pub mod scheduler;
pub mod service_view;
pub mod stopping;
pub mod workloads;
