//! The node (DESIGN §5): registers this machine as a `Node` with a heartbeat lease, watches the
//! pods bound to it, runs their containers with the runtime (from the matched cache disk where
//! there is one), reports their status and events, serves their logs and cleans up on delete.
//!
//! Like virtual-kubelet, each pod gets one worker task owning its containers; the pod watcher
//! starts workers for new pods and tells them to stop when the pod is being deleted.
//!
//! Laid out by noun as the kubelet is: `pod.rs` the pod worker, `container.rs` a container's
//! lifecycle and restarts (`restart.rs` the policy and crash-loop back-off), `prober/` the
//! probes, `lifecycle.rs` the hooks, `termination.rs` the termination message, `status.rs`
//! the status, `logs.rs` the logs (kept in `DIR/logs/<pod uid>/<container>/`, apart from the
//! runtime's `DIR/pods/`, so that they outlive a restart of the node).

mod container;
pub mod container_spec;
mod downward_api;
mod env;
mod error;
mod events;
mod eviction;
mod exec;
pub mod image;
mod lifecycle;
pub mod logs;
mod network;
mod object_cache;
mod pod;
mod prober;
pub mod registration;
mod restart;
mod service_account_token;
pub mod status;
mod termination;
mod volumes;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tracing::{info, warn};

pub use env::ApiService;
pub use error::NodeError;
pub use logs::LogRequest;
pub use network::ClusterDnsConfig;

use crate::admission_hook::CacheView;
use crate::manager::Context;
use events::EventSink;
use object_cache::ObjectCache;
use registration::Capacity;
use service_account_token::TokenManager;

/// A pod worker's stop signal: `Some(grace seconds)` once the pod is being deleted (or the
/// node shuts down).
type StopSignal = watch::Sender<Option<i64>>;

/// The longest a container is given between SIGTERM and SIGKILL when `imc server` shuts down
/// (the pod's own grace period when shorter): a stop must not wait out 30 s per pod.
const SHUTDOWN_GRACE_SECONDS: i64 = 5;

/// The pod grace period when the pod does not set one (as in Kubernetes).
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// `DIR/logs`: containers' logs, by pod uid and container name.
const LOGS_DIR: &str = "logs";

/// One pod's worker as the node tracks it.
struct Worker {
    stop: StopSignal,
    /// The pod as last seen: the worker restarts a container whose image changed.
    pod: watch::Sender<Pod>,
    /// Name of the pod, for the shutdown log.
    name: String,
    /// `terminationGracePeriodSeconds` of the pod.
    grace: i64,
}

/// What [`Node::shutdown`] did.
#[derive(Debug, Default)]
pub struct ShutdownReport {
    /// Pods whose containers were stopped and removed.
    pub stopped: Vec<String>,
    /// Pods still being stopped when the time ran out (the next start's recovery removes them).
    pub left: Vec<String>,
}

/// How the node runs containers, beyond the shared settings.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Rotation of container logs.
    pub log_limits: imc_runtime::LogLimits,
    /// The CNI network pods join; loopback only without one.
    pub network: Option<imc_runtime::CniNetwork>,
    /// Where pods reach the API server (`KUBERNETES_SERVICE_HOST` …); unset without.
    pub api_service: Option<ApiService>,
    /// The cluster DNS pods with `dnsPolicy: ClusterFirst` use; unset without (they then
    /// get the host's resolvers, with a `MissingClusterDNS` warning, as the kubelet does).
    pub cluster_dns: Option<network::ClusterDnsConfig>,
}

/// The node of this process.
pub struct Node {
    ctx: Arc<Context>,
    runtime: imc_runtime::Runtime,
    view: CacheView,
    events: EventSink,
    /// Pod uid → its worker.
    workers: Mutex<HashMap<String, Worker>>,
    /// Set by [`Node::shutdown`]: workers stop their containers without touching the pods.
    shutting_down: AtomicBool,
    /// (pod uid, container name) of every container whose process runs → where commands
    /// and connections of `kubectl exec` and `port-forward` reach it.
    running: Arc<Mutex<HashMap<(String, String), prober::target::Target>>>,
    /// The ConfigMaps and Secrets pods read (one shared watch of each).
    objects: Arc<ObjectCache>,
    /// Service-account tokens of projected volumes.
    tokens: TokenManager,
    /// What pods may be given (the downward API's limits of containers without one).
    allocatable: Capacity,
    /// Where pods reach the API server.
    api_service: Option<ApiService>,
    /// The cluster DNS of `ClusterFirst` pods.
    cluster_dns: Option<network::ClusterDnsConfig>,
}

impl Node {
    /// Opens the runtime (cleaning up after a crash), registers the node and starts watching
    /// the pods bound to `ctx.settings.node_name`. Container logs are rotated within
    /// `log_limits`.
    pub async fn start(
        ctx: Arc<Context>,
        view: CacheView,
        options: NodeOptions,
    ) -> Result<Arc<Node>, NodeError> {
        let mut runtime =
            imc_runtime::Runtime::new(&ctx.settings.data_dir)?.with_log_limits(options.log_limits);
        if let Some(network) = options.network {
            runtime = runtime.with_network(network);
        }
        // What it could not clean it has logged already, once each.
        let r = runtime.recover().await;
        if !r.containers.is_empty() || !r.pods.is_empty() {
            info!(containers = ?r.containers, pods = ?r.pods, unmounted = r.unmounted.len(), "cleaned up after an earlier run");
        }
        let data_dir = ctx.settings.data_dir.clone();
        let allocatable = tokio::task::spawn_blocking(move || Capacity::read(&data_dir))
            .await
            .map_err(|e| NodeError::Worker {
                action: "reading the machine's capacity",
                reason: e.to_string(),
            })?
            .allocatable();
        let node = Arc::new(Node {
            objects: ObjectCache::start(ctx.client.clone()),
            tokens: TokenManager::new(ctx.client.clone()),
            allocatable,
            api_service: options.api_service,
            cluster_dns: options.cluster_dns,
            events: EventSink::start(ctx.client.clone(), &ctx.settings.node_name),
            ctx,
            runtime,
            view,
            workers: Mutex::default(),
            shutting_down: AtomicBool::new(false),
            running: Arc::default(),
        });
        let (client, name, dir) = (
            node.ctx.client.clone(),
            node.ctx.settings.node_name.clone(),
            node.ctx.settings.data_dir.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = registration::register(client, name, dir).await {
                warn!(error = %e, "registering the node");
            }
        });
        tokio::spawn(node.clone().watch_pods());
        Ok(node)
    }

    /// The name of this node.
    pub fn name(&self) -> &str {
        &self.ctx.settings.node_name
    }

    async fn watch_pods(self: Arc<Self>) {
        let api: Api<Pod> = Api::all(self.ctx.client.clone());
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", self.name()));
        let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
        // Uids of the pods listed by the current (re)list.
        let mut listed: HashSet<String> = HashSet::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(p)) => self.on_pod(p),
                Ok(watcher::Event::InitApply(p)) => {
                    listed.extend(p.metadata.uid.clone());
                    self.on_pod(p);
                }
                Ok(watcher::Event::Init) => listed.clear(),
                Ok(watcher::Event::InitDone) => self.clone().remove_stray_logs(&listed),
                Ok(watcher::Event::Delete(p)) => self.on_gone(&p),
                Err(e) if !crate::stopping::underway() => {
                    warn!(error = %e, "watching pods of this node")
                }
                Err(_) => {}
            }
        }
    }

    /// `DIR/logs/<uid>/<name>`: the log dir of container `name` of pod `uid` (both checked
    /// plain path components before they get here).
    fn log_dir(&self, uid: &str, name: &str) -> PathBuf {
        self.ctx
            .settings
            .data_dir
            .join(LOGS_DIR)
            .join(uid)
            .join(name)
    }

    /// Removes the logs of pod `uid` (deleted).
    async fn remove_logs(&self, uid: &str) {
        if imc_runtime::check_component("pod uid", uid).is_err() {
            return;
        }
        let dir = self.ctx.settings.data_dir.join(LOGS_DIR).join(uid);
        let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await;
        if let Ok(Err(e)) = removed {
            warn!(pod = %uid, error = %e, "removing the pod's logs");
        }
    }

    /// Removes the logs of pods no longer bound to this node (deleted while it was down): those
    /// of neither a `listed` pod nor a running worker.
    fn remove_stray_logs(self: Arc<Self>, listed: &HashSet<String>) {
        let mut keep = listed.clone();
        keep.extend(
            self.workers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned(),
        );
        let dir = self.ctx.settings.data_dir.join(LOGS_DIR);
        tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                // Symlinks are removed, never followed.
                let removed = match e.file_type() {
                    Ok(t) if t.is_dir() => std::fs::remove_dir_all(e.path()),
                    _ => std::fs::remove_file(e.path()),
                };
                match removed {
                    Ok(()) => {
                        info!(pod = %name, "removed the logs of a pod no longer on this node")
                    }
                    Err(err) => warn!(pod = %name, error = %err, "removing stray pod logs"),
                }
            }
        });
    }

    fn on_pod(self: &Arc<Self>, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock, so no worker starts after shutdown has signalled them all.
        if self.is_shutting_down() {
            return;
        }
        if pod.metadata.deletion_timestamp.is_some() {
            let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
            match workers.get(&uid) {
                Some(worker) => {
                    worker.stop.send_if_modified(|s| match s {
                        Some(g) if *g <= grace => false,
                        _ => {
                            *s = Some(grace);
                            true
                        }
                    });
                }
                // Nothing runs for it (finished before a restart): confirm the deletion.
                None => {
                    let api: Api<Pod> = Api::namespaced(
                        self.ctx.client.clone(),
                        pod.metadata.namespace.as_deref().unwrap_or("default"),
                    );
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let node = self.clone();
                    tokio::spawn(async move {
                        node.remove_logs(&uid).await;
                        confirm_deletion(&api, &name, &uid).await
                    });
                }
            }
            return;
        }
        if let Some(worker) = workers.get(&uid) {
            // Only spec, label and annotation changes matter to the worker (the downward API
            // shows the last two), not its own status writes coming back.
            worker.pod.send_if_modified(|seen| {
                let changed = seen.spec != pod.spec
                    || seen.metadata.labels != pod.metadata.labels
                    || seen.metadata.annotations != pod.metadata.annotations;
                if changed {
                    *seen = pod;
                }
                changed
            });
            return;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return;
        }
        let (tx, rx) = watch::channel(None);
        let (pod_tx, pod_rx) = watch::channel(pod.clone());
        let grace = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(DEFAULT_GRACE_SECONDS);
        let name = pod.metadata.name.clone().unwrap_or_default();
        workers.insert(
            uid,
            Worker {
                stop: tx,
                pod: pod_tx,
                name,
                grace,
            },
        );
        tokio::spawn(pod::run(self.clone(), pod, rx, pod_rx));
    }

    fn on_gone(&self, pod: &Pod) {
        let Some(uid) = &pod.metadata.uid else { return };
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(worker) = workers.get(uid) {
            // Removed without a grace period (force delete): stop at once.
            worker.stop.send_replace(Some(0));
        }
    }

    fn worker_done(&self, uid: &str) {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    /// Whether [`Node::shutdown`] has begun: workers then leave their pods' objects alone.
    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Stops every container of this node for a graceful stop of the process (the API no longer
    /// answers): SIGTERM, min(the pod's grace period, 5 s), SIGKILL, then each container is
    /// removed (rootfs unmounted, runc state deleted, cache disk released) and so is each pod's
    /// sandbox (netns, pod dir). The pods themselves are left as they are: the next start runs
    /// those still bound and not finished again, as after a crash. Waits at most `bound`.
    pub async fn shutdown(&self, bound: Duration) -> ShutdownReport {
        let mut pending: HashMap<String, String> = HashMap::new();
        {
            let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
            self.shutting_down.store(true, Ordering::SeqCst);
            for (uid, worker) in workers.iter() {
                let grace = worker.grace.clamp(0, SHUTDOWN_GRACE_SECONDS);
                worker.stop.send_if_modified(|s| match s {
                    Some(g) if *g <= grace => false,
                    _ => {
                        *s = Some(grace);
                        true
                    }
                });
                pending.insert(uid.clone(), worker.name.clone());
            }
        }
        info!(pods = pending.len(), "stopping the containers of this node");
        let deadline = Instant::now() + bound;
        let mut report = ShutdownReport::default();
        loop {
            {
                let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
                pending.retain(|uid, name| {
                    let running = workers.contains_key(uid);
                    if !running {
                        report.stopped.push(name.clone());
                    }
                    running
                });
            }
            if pending.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        report.left = pending.into_values().collect();
        report.stopped.sort();
        report.left.sort();
        report
    }

    /// Notes that container `container` of pod `uid` runs (reached through `target`), or no
    /// longer does (`None`).
    fn set_running(&self, uid: &str, container: &str, target: Option<prober::target::Target>) {
        let key = (uid.to_owned(), container.to_owned());
        let mut map = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match target {
            Some(t) => {
                map.insert(key, t);
            }
            None => {
                map.remove(&key);
            }
        }
    }

    /// The log of container `request.container` of pod `pod_uid` (named `pod_name` in
    /// messages), as `kubectl logs` asks for it. A container name or uid that is not a single
    /// plain path component is refused before any path is built (the API checks the name
    /// against the pod's containers; this holds even if a caller does not).
    pub async fn logs(
        &self,
        pod_uid: &str,
        pod_name: &str,
        request: LogRequest,
    ) -> Result<impl Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static, NodeError> {
        imc_runtime::check_component("pod uid", pod_uid)?;
        imc_runtime::check_component("container name", &request.container)?;
        let dir = self.log_dir(pod_uid, &request.container);
        let path = if request.previous {
            dir.join(logs::PREVIOUS_LOG)
        } else {
            dir.join(logs::CURRENT_LOG)
        };
        // A previous instance's log is complete: never followed.
        let running = self.running.clone();
        let request = LogRequest {
            follow: request.follow && !request.previous,
            ..request
        };
        let key = (pod_uid.to_owned(), request.container.clone());
        let (pod, container, previous) = (
            pod_name.to_owned(),
            request.container.clone(),
            request.previous,
        );
        let running = Arc::new(move || {
            running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&key)
        });
        match logs::stream(path, request, running).await {
            Err(NodeError::Logs { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Err(if previous {
                    NodeError::NoPrevious { pod, container }
                } else {
                    NodeError::NotStarted { pod, container }
                })
            }
            other => other,
        }
    }
}

/// Deletes a pod whose containers are gone (grace period 0 confirms a graceful deletion). The
/// uid precondition spares a new pod of the same name.
async fn confirm_deletion(api: &Api<Pod>, name: &str, uid: &str) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {}
        // Gone already, or the name now belongs to a new pod.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => warn!(pod = %name, error = %e, "removing the deleted pod"),
    }
}
