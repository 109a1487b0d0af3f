//! imc-controllers: the logic that runs as kube-rs controllers, in `imc server` and against a
//! real cluster alike: pod admission (cache choice), cache lifecycle, and the node.

pub mod admission;
pub mod cache;
pub mod cache_status;
pub mod manager;
pub mod metrics;
pub mod quantity;
pub mod retention;
