//! When a pod's volumes are set up and written again (the kubelet's volume manager): the
//! contents of its configMap, secret, downwardAPI and projected volumes are gathered (objects
//! from the node's shared cache, tokens from the token manager), the volumes set up on the
//! blocking pool, retried while they fail, and kept up to date while the pod runs: at once
//! when an object they read changes or the pod's labels or annotations do, and every
//! [`RESYNC`] besides (tokens are renewed then), as the kubelet's sync loop does.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use tokio::sync::watch;
use tracing::warn;

use super::sources::{self, Inputs, WrittenKind};
use super::{Contents, PodVolumes, VolumeError};
use crate::node::Node;
use crate::node::object_cache;

/// How often written volumes are looked at again without a change (the kubelet's sync period).
pub const RESYNC: Duration = Duration::from_secs(60);

/// How long a failed set-up waits before it is tried again, unless something it reads
/// changes first.
const RETRY: Duration = Duration::from_secs(10);

/// Whether the pod has volumes whose files the node writes.
fn has_written(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .any(|v| WrittenKind::of(v).is_some())
}

fn namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// The contents of the pod's written volumes, as of now.
pub async fn contents(node: &Node, pod: &Pod) -> Contents {
    if !has_written(pod) {
        return Contents::new();
    }
    let objects = node
        .objects
        .resolve(namespace(pod), &sources::references(pod))
        .await;
    let mut tokens = BTreeMap::new();
    for (at, key) in sources::token_requests(pod) {
        tokens.insert(at, node.tokens.get(&key).await);
    }
    let inputs = Inputs {
        objects: &objects,
        tokens: &tokens,
        allocatable: Some(&node.allocatable),
    };
    let mut out = Contents::new();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
    {
        if let Some(files) = sources::payload(v, pod, &inputs) {
            out.insert(v.name.clone(), files);
        }
    }
    out
}

/// Sets up the pod's volumes, retrying while it fails (at once when an object they read
/// changes, else every [`RETRY`]) with a `FailedMount` event once per distinct reason, as the
/// kubelet's volume manager does; `None` when the pod is deleted meanwhile.
pub async fn prepare(
    node: &Node,
    pod: &Pod,
    pod_dir: &Path,
    reference: &ObjectReference,
    stop: &mut watch::Receiver<Option<i64>>,
) -> Option<PodVolumes> {
    let mut changes = node.objects.subscribe();
    let refs = sources::references(pod);
    let mut last: Option<String> = None;
    loop {
        let contents = tokio::select! {
            c = contents(node, pod) => c,
            _ = stop.wait_for(Option::is_some) => return None,
        };
        let (p, dir) = (pod.clone(), pod_dir.to_path_buf());
        match tokio::task::spawn_blocking(move || super::prepare(&p, &dir, &contents)).await {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(e)) => {
                if last.as_deref() != Some(e.0.as_str()) {
                    node.events.warning(reference, "FailedMount", e.0.clone());
                    last = Some(e.0);
                }
            }
            Err(e) => warn!(error = %e, "setting up the pod's volumes"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = object_cache::changed(&mut changes, namespace(pod), &refs) => {}
            _ = stop.wait_for(Option::is_some) => return None,
        }
    }
}

/// Keeps the pod's written volumes up to date until the pod stops (`pod` carries its latest
/// version). Returns once `stop` is set and no write is under way, so the pod dir can go.
pub async fn keep_in_sync(
    node: Arc<Node>,
    mut pod: watch::Receiver<Pod>,
    volumes: PodVolumes,
    reference: ObjectReference,
    mut stop: watch::Receiver<Option<i64>>,
) {
    if !has_written(&pod.borrow()) {
        return;
    }
    let mut changes = node.objects.subscribe();
    let mut pod_open = true;
    // The last FailedMount message of each volume, so a lasting failure is told once.
    let mut failing: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let current = pod.borrow_and_update().clone();
        let refs = sources::references(&current);
        tokio::select! {
            _ = stop.wait_for(Option::is_some) => return,
            _ = tokio::time::sleep(RESYNC) => {}
            _ = object_cache::changed(&mut changes, namespace(&current), &refs) => {}
            changed = pod.changed(), if pod_open => pod_open = changed.is_ok(),
        }
        let current = pod.borrow().clone();
        let contents = tokio::select! {
            c = contents(&node, &current) => c,
            _ = stop.wait_for(Option::is_some) => return,
        };
        // Not interrupted: the pod dir is removed only after this returns.
        let v = volumes.clone();
        let results = match tokio::task::spawn_blocking(move || {
            super::rewrite(&v, &current, &contents)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "writing the pod's volumes again");
                continue;
            }
        };
        for (volume, result) in results {
            match result {
                Ok(_) => {
                    failing.remove(&volume);
                }
                Err(VolumeError(message)) => {
                    if failing.get(&volume) != Some(&message) {
                        node.events
                            .warning(&reference, "FailedMount", message.clone());
                        failing.insert(volume, message);
                    }
                }
            }
        }
    }
}
