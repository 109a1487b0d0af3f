//! Garbage collection and deletion propagation, as kube-apiserver and kube-controller-manager's
//! garbage collector do them between them:
//!
//! - `propagationPolicy: Background` (the default): the owner goes at once, then each dependent
//!   (an object with an `ownerReference` to the owner's uid) whose owners are all gone is
//!   deleted the way a client would delete it; a dependent that still has a live owner only
//!   loses the dangling reference.
//! - `Foreground`: the owner gets the `foregroundDeletion` finalizer and a `deletionTimestamp`
//!   and stays; its dependents are deleted (in the foreground too), and once none with
//!   `blockOwnerDeletion: true` is left the finalizer goes and the owner with it.
//! - `Orphan`: the owner gets the `orphan` finalizer; its dependents lose their references to it,
//!   then the finalizer goes and the owner with it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::handler::{ApiServer, WriteOptions};
use crate::resources::ResourceDef;
use crate::store::Key;

/// The finalizer of an owner deleted in the foreground.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of an owner whose dependents are to be orphaned.
pub const ORPHAN: &str = "orphan";

/// How often owners waiting on their dependents are looked at even without a change.
const RESCAN: Duration = Duration::from_secs(5);

/// How the dependents of a deleted object are treated (`propagationPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents are deleted after the owner.
    Background,
    /// The owner waits for its blocking dependents to be deleted.
    Foreground,
    /// Dependents lose their references to the owner.
    Orphan,
}

impl Propagation {
    /// The policy of DeleteOptions `options` (`propagationPolicy`, or the deprecated
    /// `orphanDependents`); Background when neither is given.
    pub fn of(options: &Value) -> Result<Self, String> {
        match options.get("propagationPolicy").and_then(Value::as_str) {
            Some("Foreground") => Ok(Propagation::Foreground),
            Some("Orphan") => Ok(Propagation::Orphan),
            Some("Background") => Ok(Propagation::Background),
            Some(other) => Err(format!(
                "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            )),
            None if options.get("orphanDependents") == Some(&json!(true)) => {
                Ok(Propagation::Orphan)
            }
            None => Ok(Propagation::Background),
        }
    }

    /// The finalizer that holds the owner, if any.
    pub fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Background => None,
            Propagation::Foreground => Some(FOREGROUND),
            Propagation::Orphan => Some(ORPHAN),
        }
    }
}

fn uid(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/uid").and_then(Value::as_str)
}

fn owner_refs(obj: &Value) -> &[Value] {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn has_finalizer(obj: &Value, f: &str) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|x| x == f))
}

/// Whether the ownerReference `r` names `owner` and blocks its deletion.
fn blocks(r: &Value, owner: &str) -> bool {
    r["uid"] == owner && r["blockOwnerDeletion"] == json!(true)
}

impl ApiServer {
    fn def_of_key(&self, key: &Key) -> Option<Arc<ResourceDef>> {
        self.resources()
            .all()
            .iter()
            .find(|d| d.storage.is_none() && d.storage_res() == key.res)
            .cloned()
    }

    /// Writes `obj` (stored at `key`) through its kind's main resource after `change`; a
    /// failure (a conflict, the object gone) is left to the next pass.
    async fn rewrite(&self, key: &Key, change: impl Fn(&mut Value)) {
        let Some(def) = self.def_of_key(key) else {
            return;
        };
        for _ in 0..4 {
            let Some(current) = self.store.get(key) else {
                return;
            };
            let mut obj = def.from_storage(&current);
            change(&mut obj);
            let ns = (!key.ns.is_empty()).then_some(key.ns.as_str());
            match Box::pin(self.update(&def, ns, &key.name, obj, WriteOptions::default())).await {
                Err(crate::error::ApiError::Conflict { .. }) => continue,
                Err(crate::error::ApiError::NotFound { .. }) | Ok(_) => return,
                Err(e) => {
                    tracing::warn!(resource = %key.res, namespace = %key.ns, name = %key.name, error = %e, "garbage collection could not update");
                    return;
                }
            }
        }
    }

    /// Background collection once `owner_uid` is gone: each dependent whose owners are all gone
    /// is deleted as a client would delete it; one with a live owner loses the dangling
    /// reference.
    pub(crate) async fn collect_dependents(&self, owner_uid: &str) {
        let all = self.store.all();
        let live: HashSet<&str> = all.iter().filter_map(|(_, o)| uid(o)).collect();
        for (key, obj) in &all {
            let refs = owner_refs(obj);
            if !refs.iter().any(|r| r["uid"] == owner_uid) {
                continue;
            }
            let others_live = refs.iter().any(|r| {
                r["uid"] != owner_uid && r["uid"].as_str().is_some_and(|u| live.contains(u))
            });
            if others_live {
                let gone = owner_uid.to_owned();
                self.rewrite(key, move |o| remove_ref(o, &gone)).await;
            } else {
                self.delete_key(key).await;
            }
        }
    }

    /// Moves owners held by `foregroundDeletion` or `orphan` on; runs until the server stops.
    pub async fn collect_garbage(self: Arc<Self>) {
        let mut changes = self.store.subscribe();
        let mut tick = tokio::time::interval(RESCAN);
        loop {
            let waiting: Vec<(Key, Arc<Value>)> = self
                .store
                .all()
                .into_iter()
                .filter(|(_, o)| {
                    o.pointer("/metadata/deletionTimestamp").is_some()
                        && (has_finalizer(o, FOREGROUND) || has_finalizer(o, ORPHAN))
                })
                .collect();
            for (key, owner) in &waiting {
                self.finish_owner(key, owner).await;
            }
            let busy = !waiting.is_empty();
            loop {
                tokio::select! {
                    _ = tick.tick() => break,
                    change = changes.recv() => match change {
                        Ok(c) => {
                            let held = c.object.pointer("/metadata/deletionTimestamp").is_some()
                                && (has_finalizer(&c.object, FOREGROUND) || has_finalizer(&c.object, ORPHAN));
                            // While owners wait, any dependent's change may free one.
                            if held || (busy && !owner_refs(&c.object).is_empty()) || busy && c.kind == crate::store::EventType::Deleted {
                                break;
                            }
                        }
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        }
    }

    /// One pass over an owner held by a propagation finalizer.
    async fn finish_owner(&self, key: &Key, owner: &Value) {
        let Some(owner_uid) = uid(owner).map(str::to_owned) else {
            return;
        };
        let dependents: Vec<(Key, Arc<Value>)> = self
            .store
            .all()
            .into_iter()
            .filter(|(_, o)| owner_refs(o).iter().any(|r| r["uid"] == owner_uid.as_str()))
            .collect();
        if has_finalizer(owner, ORPHAN) {
            for (dkey, _) in &dependents {
                let gone = owner_uid.clone();
                self.rewrite(dkey, move |o| remove_ref(o, &gone)).await;
            }
            self.rewrite(key, |o| remove_finalizer(o, ORPHAN)).await;
            return;
        }
        let mut blocking = false;
        for (dkey, dependent) in &dependents {
            if owner_refs(dependent).iter().any(|r| blocks(r, &owner_uid)) {
                blocking = true;
            }
            if dependent.pointer("/metadata/deletionTimestamp").is_none()
                && let Some(def) = self.def_of_key(dkey)
            {
                let ns = (!dkey.ns.is_empty()).then_some(dkey.ns.as_str());
                let options = json!({"propagationPolicy": "Foreground"});
                if let Err(e) = Box::pin(self.delete(&def, ns, &dkey.name, &options)).await
                    && !matches!(e, crate::error::ApiError::NotFound { .. })
                {
                    tracing::warn!(resource = %dkey.res, name = %dkey.name, error = %e, "foreground deletion of a dependent failed");
                }
            }
        }
        if !blocking {
            self.rewrite(key, |o| remove_finalizer(o, FOREGROUND)).await;
        }
    }
}

/// `obj` without its ownerReferences to `owner_uid`.
fn remove_ref(obj: &mut Value, owner_uid: &str) {
    if let Some(refs) = obj
        .pointer_mut("/metadata/ownerReferences")
        .and_then(Value::as_array_mut)
    {
        refs.retain(|r| r["uid"] != owner_uid);
        if refs.is_empty()
            && let Some(meta) = obj["metadata"].as_object_mut()
        {
            meta.remove("ownerReferences");
        }
    }
}

/// `obj` without finalizer `f`.
fn remove_finalizer(obj: &mut Value, f: &str) {
    if let Some(list) = obj
        .pointer_mut("/metadata/finalizers")
        .and_then(Value::as_array_mut)
    {
        list.retain(|x| x != f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_comes_from_the_delete_options() {
        // (case, options, policy)
        let rows = [
            ("none", json!({}), Some(Propagation::Background)),
            (
                "foreground",
                json!({"propagationPolicy": "Foreground"}),
                Some(Propagation::Foreground),
            ),
            (
                "orphan",
                json!({"propagationPolicy": "Orphan"}),
                Some(Propagation::Orphan),
            ),
            (
                "deprecated orphan",
                json!({"orphanDependents": true}),
                Some(Propagation::Orphan),
            ),
            ("unknown", json!({"propagationPolicy": "Later"}), None),
        ];
        for (case, options, want) in rows {
            assert_eq!(Propagation::of(&options).ok(), want, "{case}");
        }
    }

    #[test]
    fn references_and_finalizers_are_removed() {
        let mut pod = json!({"metadata": {"finalizers": ["orphan", "x"],
            "ownerReferences": [{"uid": "a"}, {"uid": "b"}]}});
        remove_ref(&mut pod, "a");
        remove_finalizer(&mut pod, ORPHAN);
        assert_eq!(pod["metadata"]["ownerReferences"], json!([{"uid": "b"}]));
        assert_eq!(pod["metadata"]["finalizers"], json!(["x"]));
        remove_ref(&mut pod, "b");
        assert!(pod["metadata"].get("ownerReferences").is_none());
    }
}
