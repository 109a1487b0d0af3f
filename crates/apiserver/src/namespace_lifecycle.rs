//! The namespace lifecycle, as kube-controller-manager's namespace controller runs it: a
//! deleted namespace (`Terminating`, `spec.finalizers: [kubernetes]`) has everything in it
//! deleted the way a client would delete it (a pod bound to a node is only marked, and its node
//! stops it and removes it), its `NamespaceContentRemaining` condition says what is left, and
//! once nothing is left the finalizer is cleared and the namespace removed. So `kubectl delete
//! namespace` returns when its pods are gone, not before.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::clock;
use crate::handler::ApiServer;
use crate::store::{EventType, Expect, Key};
use crate::strategies::namespace::FINALIZER;

/// How often terminating namespaces are looked at even without a change (a backstop).
const RESCAN: Duration = Duration::from_secs(5);

const NAMESPACES: &str = "/namespaces";

fn is_terminating(ns: &Value) -> bool {
    ns.pointer("/metadata/deletionTimestamp").is_some()
}

/// `Some resources are remaining: pods. has 2 resource instances`, as upstream words it.
fn remaining_message(left: &BTreeMap<String, usize>) -> String {
    let kinds: Vec<String> = left
        .iter()
        .map(|(res, n)| format!("{res} has {n} resource instances"))
        .collect();
    format!("Some resources are remaining: {}", kinds.join(", "))
}

impl ApiServer {
    /// Finishes deleted namespaces; runs until the server stops.
    pub async fn finalize_namespaces(self: Arc<Self>) {
        let mut changes = self.store.subscribe();
        let mut tick = tokio::time::interval(RESCAN);
        loop {
            let terminating: BTreeSet<String> = self
                .store
                .list(NAMESPACES, None)
                .0
                .iter()
                .filter(|n| is_terminating(n))
                .filter_map(|n| n.pointer("/metadata/name").and_then(Value::as_str))
                .map(str::to_owned)
                .collect();
            for ns in &terminating {
                self.finish_namespace(ns).await;
            }
            // Wait for something that may move a terminating namespace on.
            loop {
                tokio::select! {
                    _ = tick.tick() => break,
                    change = changes.recv() => match change {
                        Ok(c) => {
                            let namespace_marked = c.key.res == NAMESPACES
                                && c.kind != EventType::Deleted
                                && is_terminating(&c.object);
                            let content_gone = terminating.contains(&c.key.ns)
                                && c.key.res != NAMESPACES;
                            if namespace_marked || content_gone {
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

    /// One pass over terminating namespace `ns`: delete what it holds, then remove it when
    /// nothing is left, or say what is.
    async fn finish_namespace(&self, ns: &str) {
        let in_namespace = |k: &Key| k.ns == ns && !k.res.is_empty();
        for (key, obj) in self
            .store
            .all()
            .into_iter()
            .filter(|(k, _)| in_namespace(k))
        {
            if obj.pointer("/metadata/deletionTimestamp").is_none() {
                self.delete_key(&key).await;
            }
        }
        let mut left: BTreeMap<String, usize> = BTreeMap::new();
        for (key, _) in self
            .store
            .all()
            .into_iter()
            .filter(|(k, _)| in_namespace(k))
        {
            let resource = key.res.rsplit('/').next().unwrap_or("").to_owned();
            let group = key.res.split('/').next().unwrap_or("");
            let name = if group.is_empty() {
                resource
            } else {
                format!("{resource}.{group}")
            };
            *left.entry(name).or_default() += 1;
        }
        let key = Key {
            res: NAMESPACES.into(),
            ns: String::new(),
            name: ns.to_owned(),
        };
        let Some(current) = self.store.get(&key) else {
            return;
        };
        let rv = current
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut next = (*current).clone();
        let result = if left.is_empty() {
            if let Some(f) = next
                .pointer_mut("/spec/finalizers")
                .and_then(Value::as_array_mut)
            {
                f.retain(|x| x != FINALIZER);
            }
            let others = next
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            if others {
                // Someone else's finalizer: they remove the namespace when done.
                if next == *current {
                    return;
                }
                self.store
                    .write(key, Some(next), Expect::Version(rv), "namespaces")
                    .await
            } else {
                self.store
                    .write(key, None, Expect::Version(rv), "namespaces")
                    .await
            }
        } else {
            let condition = json!({
                "type": "NamespaceContentRemaining", "status": "True",
                "reason": "SomeResourcesRemain", "message": remaining_message(&left),
            });
            let mut conditions: Vec<Value> = next
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let same = conditions
                .iter()
                .any(|c| c["type"] == condition["type"] && c["message"] == condition["message"]);
            if same {
                return;
            }
            conditions.retain(|c| c["type"] != "NamespaceContentRemaining");
            let mut condition = condition;
            condition["lastTransitionTime"] = json!(clock::now_time());
            conditions.push(condition);
            next["status"]["conditions"] = Value::Array(conditions);
            self.store
                .write(key, Some(next), Expect::Version(rv), "namespaces")
                .await
        };
        if let Err(e) = result
            && !matches!(e, crate::error::ApiError::Conflict { .. })
        {
            tracing::warn!(namespace = %ns, error = %e, "finishing a deleted namespace failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_left_is_said_as_upstream_says_it() {
        let left: BTreeMap<String, usize> = [
            ("pods".to_owned(), 2),
            ("leases.coordination.k8s.io".to_owned(), 1),
        ]
        .into();
        assert_eq!(
            remaining_message(&left),
            "Some resources are remaining: leases.coordination.k8s.io has 1 resource instances, pods has 2 resource instances"
        );
    }
}
