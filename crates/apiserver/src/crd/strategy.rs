//! The strategy of a custom resource's objects: the structural schema's defaults and
//! validation, the status reset of a kind with a status subresource, and, when the kind was
//! registered with one, a Rust strategy's own behaviour on top (imc's ImageCache).

use std::sync::Arc;

use serde_json::{Value, json};

use super::structural;
use crate::error::Cause;
use crate::resources::StoredForm;
use crate::strategies::{FollowUp, NameRule, Strategy};

/// Objects of one served version of a custom resource.
pub struct CustomStrategy {
    /// The version's `openAPIV3Schema`.
    pub(crate) schema: Arc<Value>,
    /// Whether the kind has a status subresource (status reset on create).
    pub(crate) status: bool,
    /// The Rust strategy registered with the definition, if any.
    pub(crate) hook: Option<Arc<dyn Strategy>>,
    /// The definition is being deleted: no new objects.
    pub(crate) terminating: bool,
}

impl CustomStrategy {
    /// Causes of the schema alone (no Rust strategy): what a real API server with this CRD
    /// would answer.
    pub fn schema_causes(&self, obj: &Value) -> Vec<Cause> {
        structural::validate(&self.schema, obj)
    }
}

impl Strategy for CustomStrategy {
    fn create_refused(&self) -> Option<String> {
        self.terminating.then(|| {
            "create not allowed while custom resource definition is terminating".to_owned()
        })
    }

    fn default(&self, obj: &mut Value) {
        structural::apply_defaults(&self.schema, obj);
        if let Some(h) = &self.hook {
            h.default(obj);
        }
    }

    fn prepare_for_create(&self, obj: &mut Value) {
        if self.status
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        if let Some(h) = &self.hook {
            h.prepare_for_create(obj);
        }
    }

    fn prepare_for_update(&self, new: &mut Value, old: &Value) {
        if let Some(h) = &self.hook {
            h.prepare_for_update(new, old);
        }
    }

    /// The Rust strategy's causes (its richer messages) first, then the schema's (rules
    /// included) for fields it did not already report.
    fn validate(&self, obj: &Value) -> Vec<Cause> {
        let mut causes = self
            .hook
            .as_ref()
            .map(|h| h.validate(obj))
            .unwrap_or_default();
        for c in self.schema_causes(obj) {
            // A field the Rust strategy reported, or reported inside (`spec.images[2]` for a
            // rule on `spec.images`), is said once, in its words.
            let said = causes.iter().any(|h| {
                h.field == c.field
                    || h.field.starts_with(&format!("{}.", c.field))
                    || h.field.starts_with(&format!("{}[", c.field))
            });
            if !said {
                causes.push(c);
            }
        }
        causes
    }

    /// The schema's causes under `status` (a status subresource write changes nothing else).
    fn validate_status(&self, obj: &Value) -> Vec<Cause> {
        let Some(status_schema) = self.schema.pointer("/properties/status") else {
            return Vec::new();
        };
        obj.get("status")
            .map(|status| structural::validate_at(status_schema, status, "status"))
            .unwrap_or_default()
    }

    /// The Rust strategy's update rules, then the schema's transition rules (`oldSelf`).
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<Cause> {
        let mut causes = self
            .hook
            .as_ref()
            .map(|h| h.validate_update(new, old))
            .unwrap_or_default();
        causes.extend(super::cel::validate_transitions(&self.schema, new, old, ""));
        causes
    }

    fn name_rule(&self) -> NameRule {
        self.hook
            .as_ref()
            .map_or(NameRule::DnsSubdomain, |h| h.name_rule())
    }

    fn grace_period(&self, obj: &Value, options: &Value) -> Option<i64> {
        self.hook
            .as_ref()
            .and_then(|h| h.grace_period(obj, options))
    }

    fn after_create(&self, obj: &Value) -> Vec<FollowUp> {
        self.hook
            .as_ref()
            .map(|h| h.after_create(obj))
            .unwrap_or_default()
    }

    fn before_removal(&self, obj: &Value) -> Vec<FollowUp> {
        self.hook
            .as_ref()
            .map(|h| h.before_removal(obj))
            .unwrap_or_default()
    }

    fn prepare_for_delete(&self, obj: &mut Value) -> Result<(), String> {
        match &self.hook {
            Some(h) => h.prepare_for_delete(obj),
            None => Ok(()),
        }
    }

    fn held(&self, obj: &Value) -> bool {
        self.hook.as_ref().is_some_and(|h| h.held(obj))
    }
}

/// How one served version reads and writes the stored objects: conversion strategy `None`
/// (only `apiVersion` differs between versions) and schema defaults applied on read, as
/// kube-apiserver does.
pub struct CustomView {
    /// `group/version` of this served version.
    pub(crate) api_version: String,
    /// `group/version` objects are stored in.
    pub(crate) storage_api_version: String,
    /// The served version's schema, when it has defaults.
    pub(crate) defaults: Option<Arc<Value>>,
}

impl StoredForm for CustomView {
    fn served(&self, stored: &Value) -> Option<Value> {
        let rewrite = stored.get("apiVersion").and_then(Value::as_str) != Some(&self.api_version);
        let default = self
            .defaults
            .as_ref()
            .is_some_and(|s| structural::needs_defaults(s, stored));
        if !rewrite && !default {
            return None;
        }
        let mut obj = stored.clone();
        if rewrite {
            obj["apiVersion"] = json!(self.api_version);
        }
        if let Some(s) = self.defaults.as_ref().filter(|_| default) {
            structural::apply_defaults(s, &mut obj);
        }
        Some(obj)
    }

    fn stored(&self, mut served: Value) -> Value {
        if served.get("apiVersion").and_then(Value::as_str) != Some(&self.storage_api_version)
            && served.is_object()
        {
            served["apiVersion"] = json!(self.storage_api_version);
        }
        served
    }
}
