//! A kube-rs watch of pods that records every state it sees, so a test can check an ordering
//! or a bound over the whole history of a rollout (Deployments, StatefulSets) rather than
//! sample it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;

/// Each state the watch saw: the pods by name.
pub type PodLog = Arc<Mutex<Vec<BTreeMap<String, Pod>>>>;

/// Watches the pods of `selector` in the client's default namespace, recording each pod's
/// latest state in order: once the initial list is complete, then after every change.
pub async fn watch_pods(client: kube::Client, selector: String, log: PodLog) {
    let api: kube::Api<Pod> = kube::Api::default_namespaced(client);
    let mut stream = watcher(api, watcher::Config::default().labels(&selector)).boxed();
    let mut current: BTreeMap<String, Pod> = BTreeMap::new();
    let mut listing = BTreeMap::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(p)) => {
                current.insert(p.metadata.name.clone().unwrap_or_default(), p);
            }
            Ok(watcher::Event::Delete(p)) => {
                current.remove(&p.metadata.name.clone().unwrap_or_default());
            }
            Ok(watcher::Event::Init) => {
                listing.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(p)) => {
                listing.insert(p.metadata.name.clone().unwrap_or_default(), p);
                continue;
            }
            Ok(watcher::Event::InitDone) => current = std::mem::take(&mut listing),
            Err(_) => continue,
        }
        if let Ok(mut log) = log.lock() {
            log.push(current.clone());
        }
    }
}

/// Whether a pod is Ready and not being deleted.
pub fn typed_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
