//! imc-testkit: fixtures shared by imc's integration tests and benchmarks. Every fixture starts a
//! real component (Debian `docker-registry`, containerd) or sits in front of one (proxies); none
//! fakes a result.

#![warn(missing_docs)]

pub mod apiserver;
pub mod containerd;
pub mod erofs;
pub mod https;
pub mod image;
pub mod kubectl;
pub mod leftovers;
pub mod outside;
pub mod proxy;
pub mod registry;
pub mod watch;
pub mod web;
pub mod webhook;
