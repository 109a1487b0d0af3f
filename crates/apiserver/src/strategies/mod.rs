//! Per-kind behaviour, as kube-apiserver's `strategy.go` files hold it: defaulting, preparing
//! objects for create and update, validation of both, the name rule, deletion grace and what the
//! server does along with a write. The generic verbs in [`crate::handler`] call these and know no
//! kind by name; each kind's file also builds its [`ResourceDef`] (columns, schema,
//! subresources).

pub mod config_map;
pub mod controller_revision;
pub mod cron_job;
pub mod daemon_set;
pub mod deployment;
pub mod event;
pub mod image_cache;
pub mod job;
pub mod knative;
pub mod lease;
pub mod namespace;
pub mod node;
pub mod pod;
pub mod rbac;
pub mod replica_set;
pub mod secret;
pub mod service;
pub mod service_account;
pub mod service_spec;
pub mod stateful_set;
pub mod workload;

use serde_json::Value;

use crate::error::Cause;
use crate::resources::ResourceDef;

/// Which rule `metadata.name` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 subdomain (most kinds).
    DnsSubdomain,
    /// A DNS-1123 label (namespaces).
    DnsLabel,
}

/// Work the server does on behalf of a write, in generic terms.
#[derive(Debug, Clone, PartialEq)]
pub enum FollowUp {
    /// Create `object` as a `plural` of the core group in `namespace`, unless it exists (a
    /// namespace's `default` ServiceAccount).
    CreateCore {
        /// Resource (plural) in the core `v1` group.
        plural: &'static str,
        /// Namespace of the new object.
        namespace: String,
        /// The object.
        object: Value,
    },
}

/// The behaviour of one kind. Every method has the behaviour of a kind with nothing special,
/// so a strategy states only what differs.
pub trait Strategy: Send + Sync {
    /// Fills in defaults, as decoding does in Kubernetes: on create, and on every update
    /// through the main resource before it is compared with the stored object.
    fn default(&self, _obj: &mut Value) {}

    /// Sets what a client may not choose on create (status, computed fields). Runs after
    /// defaulting and mutating admission.
    fn prepare_for_create(&self, _obj: &mut Value) {}

    /// Carries over from `old` what an update through the main resource may not change
    /// (beyond the status of kinds with a status subresource, which the handler keeps).
    fn prepare_for_update(&self, _new: &mut Value, _old: &Value) {}

    /// Every bad field of an object about to be created (or updated); empty means valid.
    fn validate(&self, _obj: &Value) -> Vec<Cause> {
        Vec::new()
    }

    /// Why no object of this kind may be created now (405), if so: a custom resource whose
    /// definition is being deleted.
    fn create_refused(&self) -> Option<String> {
        None
    }

    /// Every bad field of the status of `obj` written through the status subresource (custom
    /// resources check it against their schema); empty means valid.
    fn validate_status(&self, _obj: &Value) -> Vec<Cause> {
        Vec::new()
    }

    /// Hands out what the server allocates to `obj` before it is stored (a Service's cluster IP
    /// and node ports), writing it into `obj`; `old` is the stored object of an update, and a
    /// `dry_run` only checks. The reservation is given back when dropped, unless kept once the
    /// write is stored; a refusal is the causes of a 422.
    fn allocate(
        &self,
        _obj: &mut Value,
        _old: Option<&Value>,
        _dry_run: bool,
    ) -> Result<crate::service_ips::Reservation, Vec<Cause>> {
        Ok(crate::service_ips::Reservation::none())
    }

    /// Every bad field of an update from `old` to `new` (immutability); [`Strategy::validate`]
    /// runs on `new` as well.
    fn validate_update(&self, _new: &Value, _old: &Value) -> Vec<Cause> {
        Vec::new()
    }

    /// The rule `metadata.name` follows.
    fn name_rule(&self) -> NameRule {
        NameRule::DnsSubdomain
    }

    /// The grace period of deleting `obj` with request `options`: `Some(n > 0)` marks it
    /// (`deletionTimestamp`) for whoever runs it to finish; `None` removes it at once.
    fn grace_period(&self, _obj: &Value, _options: &Value) -> Option<i64> {
        None
    }

    /// What the server does once `obj` has been created.
    fn after_create(&self, _obj: &Value) -> Vec<FollowUp> {
        Vec::new()
    }

    /// What the server does before removing `obj` for good.
    fn before_removal(&self, _obj: &Value) -> Vec<FollowUp> {
        Vec::new()
    }

    /// Prepares `obj` (the stored form) for deletion, or refuses it (403) with the reason.
    fn prepare_for_delete(&self, _obj: &mut Value) -> Result<(), String> {
        Ok(())
    }

    /// Whether the server itself has yet to finish `obj` before it may go, like a finalizer
    /// (a namespace's `spec.finalizers`, which the namespace lifecycle clears once it is empty).
    fn held(&self, _obj: &Value) -> bool {
        false
    }

    /// Whether a new object of this kind may stand for an existing similar one
    /// ([`Strategy::absorb`]), as Events repeat.
    fn absorbs(&self) -> bool {
        false
    }

    /// `existing` (stored form) updated to count `new` (stored form) too when they are the same
    /// event; None when `new` is to be created.
    fn absorb(&self, _new: &Value, _existing: &Value) -> Option<Value> {
        None
    }

    /// Runs once a write of `obj` (served form) is stored, `removed` when it is gone for good:
    /// what the kind changes in the server itself (a CustomResourceDefinition serves its kind).
    fn after_write(&self, _api: &crate::handler::ApiServer, _obj: &Value, _removed: bool) {}
}

/// The strategy of kinds with nothing special.
pub struct Generic;

impl Strategy for Generic {}

/// Every kind imc serves out of the box.
pub fn builtin() -> Vec<ResourceDef> {
    vec![
        namespace::def(),
        pod::def(),
        event::def(),
        event::events_k8s_io_def(),
        secret::def(),
        config_map::def(),
        node::def(),
        service_account::def(),
        service::def(crate::service_ips::ServiceAllocator::new(
            crate::service_ips::ServiceNetwork::default(),
        )),
        service::endpoints_def(),
        service::endpoint_slice_def(),
        lease::def(),
        deployment::def(),
        replica_set::def(),
        job::def(),
        daemon_set::def(),
        controller_revision::def(),
        cron_job::def(),
        stateful_set::def(),
        crate::crd::def(),
    ]
    .into_iter()
    .chain(rbac::defs())
    .chain(crate::webhooks::configuration::defs())
    .chain(crate::reviews::defs())
    .collect()
}
