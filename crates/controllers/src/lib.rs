//! imc-controllers: the logic that runs as kube-rs controllers, in `imc server` and against a
//! real cluster alike: pod admission (cache choice), cache lifecycle, the scheduler (pod
//! placement) and the node.

pub mod admission;
pub mod admission_hook;
pub mod cache;
pub mod manager;
pub mod metrics;
pub mod node;
pub mod quantity;
pub mod scheduler;
