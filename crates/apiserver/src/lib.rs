//! imc-apiserver: the embedded Kubernetes-compatible API server of `imc server`.
//!
//! HTTPS (rustls) with bearer-token auth, objects in SQLite, and the REST semantics kubectl and
//! kube-rs rely on, for the kinds in the [`resources::Resources`] table. Controllers plug in
//! admission through [`admission::Admission`]; the node serves pod logs through
//! [`logs::PodLogs`].
#![warn(missing_docs)]

pub mod admission;
pub mod api_service;
pub mod authn;
pub mod authz;
pub mod binding;
pub mod body;
pub mod clock;
pub mod connections;
pub mod crd;
pub mod data_dir;
pub mod discovery;
pub mod error;
pub mod field;
pub mod field_set;
pub mod garbage_collector;
pub mod guarded_body;
pub mod handler;
pub mod http;
pub mod inflight;
pub mod limits;
pub mod list_types;
pub mod logs;
pub mod managed_fields;
pub mod names;
pub mod namespace_lifecycle;
pub mod patch;
pub mod pki;
pub mod pod_security;
pub mod protobuf;
pub use imc_api::quantity;
pub mod resources;
pub mod reviews;
pub mod sa_token;
pub mod scale;
pub mod schema;
pub mod selector;
pub mod server;
pub mod service_account_admission;
pub mod service_ips;
pub mod store;
pub mod strategies;
pub mod streaming;
pub mod table;
pub mod token_request;
pub mod webhooks;

pub use admission::{Admission, AdmissionFn};
pub use connections::ConnectionConfig;
pub use error::ApiError;
pub use handler::{ApiServer, FieldValidation, MetricsFn, WriteOptions, Written};
pub use logs::{LogOptions, PodLogs};
pub use pod_security::{Level as PodSecurityLevel, PodSecurity};
pub use resources::{ResourceDef, Resources};
pub use server::{Server, ServerConfig, install_crypto_provider, serve_tls};
pub use streaming::{ExecOptions, ExecSession, PodStreams, TerminalSize};
