//! The node's view of ConfigMaps and Secrets (the kubelet's configmap and secret managers):
//! one shared watch of each kind for the whole node, never one per pod, feeding a cache that
//! the pods' volumes and environments read, and a stream of changes that tells the pods using
//! an object to write their volumes again.
//!
//! A name the cache does not hold (yet: the watch may lag behind an object created an instant
//! before its pod) is read from the API before it is called missing. Secret data lives in this
//! process's memory only and is never printed (no `Debug` shows it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::broadcast;
use tracing::warn;

/// Changes kept for pods that read them late; a pod that falls further behind resyncs all.
const CHANGES: usize = 256;

/// The two kinds a pod takes configuration from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A ConfigMap.
    ConfigMap,
    /// A Secret.
    Secret,
}

/// A change the node saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This object was created, changed or deleted.
    Object {
        kind: Kind,
        namespace: String,
        name: String,
    },
    /// A watch was (re)started: anything may have changed meanwhile.
    All,
}

/// The ConfigMaps and Secrets (by name, in the pod's namespace) something of a pod reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    /// ConfigMap names.
    pub config_maps: BTreeSet<String>,
    /// Secret names.
    pub secrets: BTreeSet<String>,
}

impl References {
    /// Whether nothing is referenced.
    pub fn is_empty(&self) -> bool {
        self.config_maps.is_empty() && self.secrets.is_empty()
    }

    /// Whether `change` may concern a pod in `namespace` holding these references.
    pub fn touched_by(&self, namespace: &str, change: &Change) -> bool {
        match change {
            Change::All => !self.is_empty(),
            Change::Object {
                kind,
                namespace: ns,
                name,
            } => {
                ns == namespace
                    && match kind {
                        Kind::ConfigMap => self.config_maps.contains(name),
                        Kind::Secret => self.secrets.contains(name),
                    }
            }
        }
    }
}

/// What a lookup found: the object, `None` when it does not exist, or why it could not be read.
type Found<K> = Result<Option<Arc<K>>, String>;

/// The referenced objects of one namespace, as found at one moment.
#[derive(Clone, Default)]
pub struct Resolved {
    config_maps: BTreeMap<String, Found<ConfigMap>>,
    secrets: BTreeMap<String, Found<Secret>>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: secret data is never printed.
        f.debug_struct("Resolved")
            .field("config_maps", &self.config_maps.keys().collect::<Vec<_>>())
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Resolved {
    /// The ConfigMap `name`: `Ok(None)` when it does not exist, `Err` when it could not be read.
    pub fn config_map(&self, name: &str) -> Result<Option<&ConfigMap>, String> {
        match self.config_maps.get(name) {
            Some(found) => found.as_ref().map(|o| o.as_deref()).map_err(Clone::clone),
            None => Err(format!("configmap {name:?} was not looked up")),
        }
    }

    /// The Secret `name`, as [`Resolved::config_map`].
    pub fn secret(&self, name: &str) -> Result<Option<&Secret>, String> {
        match self.secrets.get(name) {
            Some(found) => found.as_ref().map(|o| o.as_deref()).map_err(Clone::clone),
            None => Err(format!("secret {name:?} was not looked up")),
        }
    }

    /// Resolved objects given directly (tests).
    #[cfg(test)]
    pub fn of(config_maps: Vec<ConfigMap>, secrets: Vec<Secret>, missing: &[&str]) -> Self {
        let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.name.clone().unwrap_or_default()
        };
        let mut r = Resolved::default();
        for c in config_maps {
            r.config_maps
                .insert(name(&c.metadata), Ok(Some(Arc::new(c))));
        }
        for s in secrets {
            r.secrets.insert(name(&s.metadata), Ok(Some(Arc::new(s))));
        }
        for m in missing {
            r.config_maps.entry((*m).to_owned()).or_insert(Ok(None));
            r.secrets.entry((*m).to_owned()).or_insert(Ok(None));
        }
        r
    }
}

/// The node's shared cache of ConfigMaps and Secrets.
pub struct ObjectCache {
    client: kube::Client,
    config_maps: Store<ConfigMap>,
    secrets: Store<Secret>,
    changes: broadcast::Sender<Change>,
}

impl ObjectCache {
    /// Starts the two watches (all namespaces) in the background.
    pub fn start(client: kube::Client) -> Arc<Self> {
        let (changes, _) = broadcast::channel(CHANGES);
        let (config_maps, cm_writer) = reflector::store();
        let (secrets, secret_writer) = reflector::store();
        tokio::spawn(feed(
            Api::<ConfigMap>::all(client.clone()),
            cm_writer,
            Kind::ConfigMap,
            changes.clone(),
        ));
        tokio::spawn(feed(
            Api::<Secret>::all(client.clone()),
            secret_writer,
            Kind::Secret,
            changes.clone(),
        ));
        Arc::new(ObjectCache {
            client,
            config_maps,
            secrets,
            changes,
        })
    }

    /// The changes seen from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Looks up every object of `refs` in `namespace`: from the cache, else from the API.
    pub async fn resolve(&self, namespace: &str, refs: &References) -> Resolved {
        let mut out = Resolved::default();
        for name in &refs.config_maps {
            let found = lookup(
                &self.config_maps,
                &self.client,
                namespace,
                name,
                "configmap",
            )
            .await;
            out.config_maps.insert(name.clone(), found);
        }
        for name in &refs.secrets {
            let found = lookup(&self.secrets, &self.client, namespace, name, "secret").await;
            out.secrets.insert(name.clone(), found);
        }
        out
    }
}

/// Waits for a change in `changes` that concerns `refs` of a pod in `namespace` (a receiver
/// that fell behind counts as one); never returns when `refs` is empty.
pub async fn changed(
    changes: &mut broadcast::Receiver<Change>,
    namespace: &str,
    refs: &References,
) {
    if refs.is_empty() {
        return std::future::pending().await;
    }
    loop {
        match changes.recv().await {
            Ok(change) if refs.touched_by(namespace, &change) => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}

async fn lookup<K>(
    store: &Store<K>,
    client: &kube::Client,
    namespace: &str,
    name: &str,
    what: &str,
) -> Found<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    if matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
        && let Some(o) = store.get(&ObjectRef::new(name).within(namespace))
    {
        return Ok(Some(o));
    }
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(o) => Ok(o.map(Arc::new)),
        Err(e) => Err(format!("couldn't get {what} {namespace}/{name}: {e}")),
    }
}

/// Keeps `writer` up to date from a watch of `api`, announcing each change.
async fn feed<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    kind: Kind,
    changes: broadcast::Sender<Change>,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let object = match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => o,
            Ok(watcher::Event::InitDone) => {
                let _ = changes.send(Change::All);
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                if !crate::stopping::underway() {
                    warn!(kind = ?kind, error = %e, "watching the objects pods read");
                }
                continue;
            }
        };
        let meta = object.meta();
        // Nobody listening is fine: no pod uses anything yet.
        let _ = changes.send(Change::Object {
            kind,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_concern_only_the_referencing_pods() {
        let refs = References {
            config_maps: BTreeSet::from(["app".to_owned()]),
            secrets: BTreeSet::from(["creds".to_owned()]),
        };
        let change = |kind, ns: &str, name: &str| Change::Object {
            kind,
            namespace: ns.into(),
            name: name.into(),
        };
        let rows = [
            (change(Kind::ConfigMap, "default", "app"), true),
            (change(Kind::Secret, "default", "creds"), true),
            (change(Kind::Secret, "default", "app"), false),
            (change(Kind::ConfigMap, "other", "app"), false),
            (change(Kind::ConfigMap, "default", "unrelated"), false),
            (Change::All, true),
        ];
        for (c, want) in rows {
            assert_eq!(refs.touched_by("default", &c), want, "{c:?}");
        }
        assert!(!References::default().touched_by("default", &Change::All));
    }
}
