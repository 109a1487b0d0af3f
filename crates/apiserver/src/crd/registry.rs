//! Served kinds follow the stored CustomResourceDefinitions: a write of a CRD registers (or
//! re-registers, or unregisters) its kinds within the request; at start every stored CRD is
//! registered before the server listens; imc's own kinds are installed as CRDs built from their
//! Rust types ([`CustomKind`]); and a deleted CRD keeps the `customresourcecleanup` finalizer
//! until its objects are gone, as kube-apiserver's finalizer controller does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

use super::{CLEANUP_FINALIZER, GROUP, crd_value, served_defs};
use crate::error::{ApiError, Result};
use crate::handler::{ApiServer, WriteOptions};
use crate::store::Key;
use crate::strategies::Strategy;

/// A kind registered through a CRD built in Rust (from a kube-derive type), optionally with a
/// Rust strategy run in addition to the CRD's schema: how imc's own kinds (ImageCache, and
/// Knative's next) are served, so `imc server` and a real cluster see the same CRD.
#[derive(Clone)]
pub struct CustomKind {
    /// The definition, as a real cluster gets it.
    pub crd: CustomResourceDefinition,
    /// Behaviour beyond the schema (richer messages, defaults, what the server does).
    pub strategy: Option<Arc<dyn Strategy>>,
}

impl CustomKind {
    /// The kind of a kube-derive type (`#[derive(CustomResource)]`).
    pub fn of<K: kube::CustomResourceExt>() -> Self {
        CustomKind::new(K::crd())
    }

    /// The kind of this definition.
    pub fn new(crd: CustomResourceDefinition) -> Self {
        CustomKind {
            crd,
            strategy: None,
        }
    }

    /// The same kind with a Rust strategy on top of its schema.
    pub fn with_strategy(mut self, strategy: impl Strategy + 'static) -> Self {
        self.strategy = Some(Arc::new(strategy));
        self
    }

    /// The CRD's name (`plural.group`).
    pub fn name(&self) -> String {
        format!("{}.{}", self.crd.spec.names.plural, self.crd.spec.group)
    }
}

/// The Rust strategies of installed CRDs (by CRD name) and the CRDs being cleaned up.
#[derive(Default)]
pub struct Registry {
    hooks: RwLock<HashMap<String, Arc<dyn Strategy>>>,
    cleaning: Mutex<Vec<String>>,
}

/// Whether `obj` carries the cleanup finalizer.
pub fn has_cleanup_finalizer(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| f.iter().any(|x| x == CLEANUP_FINALIZER))
}

/// Adds the cleanup finalizer (a CRD being deleted).
pub fn add_cleanup_finalizer(obj: &mut Value) {
    if has_cleanup_finalizer(obj) {
        return;
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj["metadata"]
        .get_mut("finalizers")
        .and_then(Value::as_array_mut)
    {
        Some(f) => f.push(json!(CLEANUP_FINALIZER)),
        None => obj["metadata"]["finalizers"] = json!([CLEANUP_FINALIZER]),
    }
}

fn crd_def(api: &ApiServer) -> Result<Arc<crate::resources::ResourceDef>> {
    api.resources()
        .find(GROUP, "v1", "customresourcedefinitions")
        .ok_or_else(|| ApiError::Internal("CustomResourceDefinitions are not served".into()))
}

fn established(crd: &Value) -> bool {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        })
}

impl ApiServer {
    /// Serves (or stops serving) the kinds of `crd` as it now is: called within every write of
    /// a CRD, and at start for each stored one.
    pub(crate) fn sync_custom_kind(&self, crd: &Value, removed: bool) {
        let group = crd
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let plural = crd
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let name = format!("{plural}.{group}");
        if group.is_empty() || plural.is_empty() || group == GROUP {
            return;
        }
        let defs = if removed || !established(crd) {
            Vec::new()
        } else {
            let hook = self
                .custom
                .hooks
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .cloned();
            let rules = super::cel_rules(crd);
            if hook.is_none() && !rules.is_empty() {
                tracing::warn!(crd = %name, rules = ?rules, "x-kubernetes-validations rules calling functions beyond CEL's standard ones are not evaluated by imc server");
            }
            served_defs(crd, hook)
        };
        self.change_resources(|r| {
            let had = r.unregister(&group, &plural);
            let has = !defs.is_empty();
            for d in defs {
                r.register(d);
            }
            had || has
        });
        if !removed && crd.pointer("/metadata/deletionTimestamp").is_some() {
            self.start_cleanup(&name);
        }
    }

    /// Installs `kinds` (create, or update when the stored definition differs) with their Rust
    /// strategies, then serves every stored CRD (and resumes deleting those being deleted).
    /// Runs at start, before the server listens.
    pub async fn install_custom_kinds(&self, kinds: Vec<CustomKind>) -> Result<()> {
        {
            let mut hooks = self.custom.hooks.write().unwrap_or_else(|e| e.into_inner());
            for k in &kinds {
                if let Some(s) = &k.strategy {
                    hooks.insert(k.name(), s.clone());
                }
            }
        }
        let def = crd_def(self)?;
        for k in &kinds {
            let name = k.name();
            let wanted = crd_value(&k.crd);
            match self.get(&def, None, &name) {
                Err(ApiError::NotFound { .. }) => {
                    self.create_with(
                        &def,
                        None,
                        wanted,
                        WriteOptions {
                            manager: Some("imc-server"),
                            ..WriteOptions::default()
                        },
                    )
                    .await?;
                }
                Err(e) => return Err(e),
                Ok(current) => {
                    let mut probe = wanted.clone();
                    super::default_crd(&mut probe);
                    if current.get("spec") != probe.get("spec") {
                        let mut next = current.clone();
                        next["spec"] = wanted["spec"].clone();
                        self.update(
                            &def,
                            None,
                            &name,
                            next,
                            WriteOptions {
                                manager: Some("imc-server"),
                                ..WriteOptions::default()
                            },
                        )
                        .await?;
                    }
                }
            }
        }
        let (stored, _) = self.list(&def, None, &Default::default());
        for crd in stored {
            self.sync_custom_kind(&crd, false);
        }
        Ok(())
    }

    /// Deletes the objects of CRD `name` in the background, then removes its cleanup finalizer
    /// (which removes the CRD and stops serving its kinds). One task per CRD.
    fn start_cleanup(&self, name: &str) {
        {
            let mut cleaning = self
                .custom
                .cleaning
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if cleaning.iter().any(|n| n == name) {
                return;
            }
            cleaning.push(name.to_owned());
        }
        let Some(this) = self.weak_self() else {
            return;
        };
        let name = name.to_owned();
        tokio::spawn(async move {
            let result = this.clean_up(&name).await;
            this.custom
                .cleaning
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|n| *n != name);
            if let Err(e) = result {
                tracing::warn!(crd = %name, error = %e, "deleting the objects of a CustomResourceDefinition failed");
            }
        });
    }

    async fn clean_up(&self, name: &str) -> Result<()> {
        let def = crd_def(self)?;
        let mut changes = self.store.subscribe();
        loop {
            let crd = match self.get(&def, None, name) {
                Ok(c) => c,
                Err(ApiError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(e),
            };
            if !has_cleanup_finalizer(&crd) {
                return Ok(());
            }
            let group = crd
                .pointer("/spec/group")
                .and_then(Value::as_str)
                .unwrap_or("");
            let plural = crd
                .pointer("/spec/names/plural")
                .and_then(Value::as_str)
                .unwrap_or("");
            let res = format!("{group}/{plural}");
            let left: Vec<Key> = self
                .store
                .all()
                .into_iter()
                .filter(|(k, _)| k.res == res)
                .map(|(k, _)| k)
                .collect();
            if left.is_empty() {
                let mut next = crd.clone();
                if let Some(f) = next
                    .pointer_mut("/metadata/finalizers")
                    .and_then(Value::as_array_mut)
                {
                    f.retain(|x| x != CLEANUP_FINALIZER);
                }
                match self
                    .update(&def, None, name, next, WriteOptions::default())
                    .await
                {
                    Ok(_) | Err(ApiError::NotFound { .. }) => return Ok(()),
                    Err(ApiError::Conflict { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            for key in &left {
                self.delete_key(key).await;
            }
            // Objects held by finalizers go when their controllers let them: wait for a change.
            let wait = tokio::time::timeout(std::time::Duration::from_secs(1), changes.recv());
            if let Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) = wait.await {
                return Ok(());
            }
        }
    }
}
