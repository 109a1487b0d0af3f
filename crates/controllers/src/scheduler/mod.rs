//! The scheduler: binds each pending pod to a Node, as kube-scheduler's default profile would
//! for what imc supports, or leaves it Pending with `PodScheduled=False` (`Unschedulable`) and
//! a `FailedScheduling` event saying why, in upstream's words.
//!
//! Written against the Kubernetes API only (watches and the `pods/binding` subresource), so it
//! runs unchanged against any API server, with any number of Nodes:
//!
//! - a kube-rs `Controller` on pods with an empty `spec.nodeName` reconciles each one: pods of
//!   another `schedulerName`, terminating, finished or gated pods are left alone;
//! - two watches keep, without listing anything per pod, the Nodes with their [`fit::NodeFacts`]
//!   ([`nodes`]) and what bound, unfinished pods take on each node ([`cache`]);
//! - one pass runs the pure filters ([`fit`]) on every node, scores the nodes left
//!   ([`score`]), counts the pod on the best one ("assumed", so concurrent passes never
//!   over-commit a node) and POSTs the Binding;
//! - a pod that fits nowhere is retried when something changes that could make room (a bound
//!   pod deleted or finished, a node added, or its labels, taints, schedulability, allocatable
//!   or readiness changed) and every [`RETRY`] as a safety net; its condition and event are
//!   written only when the message changes.

mod cache;
mod events;
pub mod fit;
pub mod message;
mod nodes;
pub mod score;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use cache::{Freed, PodCache};
use events::EventWriter;
use fit::PodDemand;
use nodes::{Changed, NodeSet};
use score::Score;

pub use events::REPORTER as SCHEDULER_NAME;

/// How often a pod that fits nowhere is tried again even if nothing seemed to change.
pub const RETRY: Duration = Duration::from_secs(30);

/// Scheduling passes run at once (each takes the scheduler's lock only for its pure part; the
/// rest is waiting on the API for the binding).
const CONCURRENCY: u16 = 16;

/// The longest an error (the API refusing a binding, say) delays the next attempt.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Whether `node` holds the cache disk `pod` is matched to (issue 13: placement prefers such
/// nodes). Supplied by whoever knows where disks are.
pub type CacheHolder = Arc<dyn Fn(&Pod, &Node) -> bool + Send + Sync>;

/// How the scheduler is set up.
#[derive(Clone)]
pub struct Options {
    /// The reporting instance of its events (this process: the node or host name).
    pub instance: String,
    /// Prefers nodes holding the pod's matched cache disk; none prefers no node.
    pub cache_holder: Option<CacheHolder>,
}

/// What went wrong in one scheduling pass.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The API refused or failed the binding.
    #[error("binding pod {pod} to node {node}: {source}")]
    Bind {
        /// `namespace/name`.
        pod: String,
        /// The chosen node.
        node: String,
        /// The API's answer.
        source: kube::Error,
    },
    /// The `PodScheduled` condition could not be written.
    #[error("writing the PodScheduled condition of pod {pod}: {source}")]
    Condition {
        /// `namespace/name`.
        pod: String,
        /// The API's answer.
        source: kube::Error,
    },
}

/// What the watches keep: nodes and the pods counted on them.
#[derive(Default)]
struct World {
    nodes: NodeSet,
    pods: PodCache,
}

/// The scheduler's shared state, the `Context` of its reconcile.
struct Scheduler {
    client: kube::Client,
    world: Mutex<World>,
    events: EventWriter,
    options: Options,
    /// Consecutive failed passes per pod uid (error back-off).
    failures: Mutex<HashMap<String, u32>>,
    /// Asks the controller to retry every pending pod (something was freed).
    retry_all: futures::channel::mpsc::Sender<()>,
}

/// The outcome of the pure part of a pass.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Already bound (the watch of unbound pods is a step behind).
    Placed,
    /// Bind to this node (already counted there).
    Bind(String),
    /// Fits nowhere, for this reason.
    Unschedulable(String),
}

/// `namespace/name` of a pod.
fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// Whether this scheduler should place `pod`: unbound, ours, not terminating, not finished.
fn wants_scheduling(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let unbound = spec.node_name.as_deref().is_none_or(str::is_empty);
    let ours = spec
        .scheduler_name
        .as_deref()
        .is_none_or(|s| s.is_empty() || s == SCHEDULER_NAME);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    unbound
        && ours
        && pod.metadata.deletion_timestamp.is_none()
        && !matches!(phase, Some("Succeeded" | "Failed"))
}

fn gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|g| !g.is_empty())
}

impl World {
    /// The pure part of a pass: filter every node, score those left, and count the pod on the
    /// best one until the watch shows it bound.
    fn place(&mut self, pod: &Pod, uid: &str, holder: Option<&CacheHolder>) -> Verdict {
        let demand = match PodDemand::of(pod) {
            Ok(d) => d,
            Err(e) => return Verdict::Unschedulable(format!("pod resources are invalid: {e}")),
        };
        if self.pods.is_placed(uid) {
            return Verdict::Placed;
        }
        let mut rejections = Vec::new();
        let mut best: Option<Score> = None;
        for (node, facts) in self.nodes.all() {
            let usage = self.pods.usage(&facts.name);
            match fit::filter(pod, &demand, &facts, &usage) {
                Ok(()) => {
                    let holds = holder.is_some_and(|h| h(pod, &node));
                    let score = Score::of(pod, &demand, &facts, &usage, holds);
                    if best.as_ref().is_none_or(|b| score < *b) {
                        best = Some(score);
                    }
                }
                Err(r) => rejections.push(r),
            }
        }
        match best {
            Some(b) => {
                self.pods.assume(uid, &b.node, demand);
                Verdict::Bind(b.node)
            }
            None => Verdict::Unschedulable(message::fit_error(&rejections)),
        }
    }
}

impl Scheduler {
    /// [`World::place`] under the lock.
    fn decide(&self, pod: &Pod, uid: &str) -> Verdict {
        self.world.lock().unwrap_or_else(|e| e.into_inner()).place(
            pod,
            uid,
            self.options.cache_holder.as_ref(),
        )
    }

    /// Drops an assumption whose binding did not happen, and retries pending pods if that
    /// freed room.
    fn forget(&self, uid: &str) {
        let freed = self
            .world
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pods
            .forget(uid);
        if freed == Freed::Yes {
            self.retry_pending();
        }
    }

    fn retry_pending(&self) {
        // A full channel means a retry is already on its way.
        let _ = self.retry_all.clone().try_send(());
    }

    async fn bind(&self, pod: &Pod, node: &str) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let binding = Binding {
            metadata: ObjectMeta {
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_owned()),
                ..Default::default()
            },
        };
        api.create_subresource::<_, serde_json::Value>(
            "binding",
            &pod.name_any(),
            &PostParams::default(),
            &binding,
        )
        .await
        .map(|_| ())
    }

    /// Writes `PodScheduled=False` with `reason` and `message` unless the pod already says
    /// exactly that; publishes a `FailedScheduling` event with it when `event`.
    async fn report(
        &self,
        pod: &Pod,
        reason: &str,
        message: &str,
        event: bool,
    ) -> Result<(), SchedulerError> {
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
        if current.is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some(reason)
                && c.message.as_deref() == Some(message)
        }) {
            return Ok(());
        }
        let transition = current
            .filter(|c| c.status == "False")
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(jiff::Timestamp::now()));
        let patch = json!({"status": {"conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": reason,
            "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": transition,
        }]}});
        let api: Api<Pod> = Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(_) => {}
            // Deleted meanwhile: nothing to say.
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(source) => {
                return Err(SchedulerError::Condition {
                    pod: key(pod),
                    source,
                });
            }
        }
        if event {
            self.events.failed(pod.object_ref(&()), message.to_owned());
        }
        Ok(())
    }
}

/// One scheduling pass for one pod.
async fn reconcile(pod: Arc<Pod>, s: Arc<Scheduler>) -> Result<Action, SchedulerError> {
    let Some(uid) = pod.metadata.uid.clone() else {
        return Ok(Action::await_change());
    };
    if !wants_scheduling(&pod) {
        return Ok(Action::await_change());
    }
    if gated(&pod) {
        s.report(&pod, message::REASON_GATED, message::GATED, false)
            .await?;
        return Ok(Action::await_change());
    }
    match s.decide(&pod, &uid) {
        Verdict::Placed => Ok(Action::await_change()),
        Verdict::Bind(node) => match s.bind(&pod, &node).await {
            Ok(()) => {
                debug!(pod = %key(&pod), %node, "bound");
                s.failures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&uid);
                s.events.scheduled(pod.object_ref(&()), &node);
                Ok(Action::await_change())
            }
            // Deleted, bound by someone else, or the name now belongs to a new pod: the pod
            // watch shows what became of it.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                debug!(pod = %key(&pod), %node, reason = %e.message, "binding not needed");
                s.forget(&uid);
                Ok(Action::await_change())
            }
            Err(source) => {
                s.forget(&uid);
                Err(SchedulerError::Bind {
                    pod: key(&pod),
                    node,
                    source,
                })
            }
        },
        Verdict::Unschedulable(message) => {
            debug!(pod = %key(&pod), %message, "unschedulable");
            s.report(&pod, message::REASON_UNSCHEDULABLE, &message, true)
                .await?;
            Ok(Action::requeue(RETRY))
        }
    }
}

/// Backs off exponentially per pod (0.5 s doubling, capped at [`MAX_BACKOFF`]).
fn error_policy(pod: Arc<Pod>, error: &SchedulerError, s: Arc<Scheduler>) -> Action {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let attempts = {
        let mut failures = s.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(uid).or_default();
        *n = n.saturating_add(1);
        *n
    };
    warn!(pod = %key(&pod), attempts, %error, "scheduling failed");
    let backoff = Duration::from_millis(500)
        .saturating_mul(1u32 << attempts.min(8).saturating_sub(1))
        .min(MAX_BACKOFF);
    Action::requeue(backoff)
}

/// Keeps `world.nodes` current; asks for a retry of pending pods when a node changed in a way
/// that matters. Marks `ready` after the first complete list.
async fn watch_nodes(s: Arc<Scheduler>, ready: watch::Sender<bool>) {
    let api: Api<Node> = Api::all(s.client.clone());
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut fresh: Option<NodeSet> = None;
    while let Some(event) = stream.next().await {
        let changed = match event {
            Ok(watcher::Event::Init) => {
                fresh = Some(NodeSet::default());
                Changed::No
            }
            Ok(watcher::Event::InitApply(n)) => {
                fresh.get_or_insert_default().apply(n);
                Changed::No
            }
            Ok(watcher::Event::InitDone) => {
                let set = fresh.take().unwrap_or_default();
                let changed = s
                    .world
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .nodes
                    .replace(set);
                ready.send_replace(true);
                changed
            }
            Ok(watcher::Event::Apply(n)) => s
                .world
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .nodes
                .apply(n),
            Ok(watcher::Event::Delete(n)) => {
                s.world
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .nodes
                    .delete(&n);
                Changed::No
            }
            Err(e) => {
                if !crate::stopping::underway() {
                    warn!(error = %e, "watching nodes");
                }
                Changed::No
            }
        };
        if changed == Changed::Yes {
            s.retry_pending();
        }
    }
}

/// Keeps `world.pods` current; asks for a retry of pending pods when room was freed. Marks
/// `ready` after the first complete list.
async fn watch_pods(s: Arc<Scheduler>, ready: watch::Sender<bool>) {
    let api: Api<Pod> = Api::all(s.client.clone());
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut fresh: Option<PodCache> = None;
    while let Some(event) = stream.next().await {
        let freed = match event {
            Ok(watcher::Event::Init) => {
                fresh = Some(PodCache::default());
                Freed::No
            }
            Ok(watcher::Event::InitApply(p)) => {
                fresh.get_or_insert_default().apply(&p);
                Freed::No
            }
            Ok(watcher::Event::InitDone) => {
                let cache = fresh.take().unwrap_or_default();
                s.world
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pods
                    .replace(cache);
                ready.send_replace(true);
                // Anything may have happened while the watch was down.
                Freed::Yes
            }
            Ok(watcher::Event::Apply(p)) => s
                .world
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pods
                .apply(&p),
            Ok(watcher::Event::Delete(p)) => {
                if let Some(uid) = &p.metadata.uid {
                    s.failures
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(uid);
                }
                s.world
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pods
                    .delete(&p)
            }
            Err(e) => {
                if !crate::stopping::underway() {
                    warn!(error = %e, "watching pods");
                }
                Freed::No
            }
        };
        if freed == Freed::Yes {
            s.retry_pending();
        }
    }
}

/// Runs the scheduler until its watch of pending pods ends (it normally never does).
pub async fn run(client: kube::Client, options: Options) {
    let (retry_tx, retry_rx) = futures::channel::mpsc::channel::<()>(1);
    let s = Arc::new(Scheduler {
        events: EventWriter::start(client.clone(), options.instance.clone()),
        client: client.clone(),
        world: Mutex::default(),
        options,
        failures: Mutex::default(),
        retry_all: retry_tx,
    });
    let (nodes_ready, mut nodes_seen) = watch::channel(false);
    let (pods_ready, mut pods_seen) = watch::channel(false);
    tokio::spawn(watch_nodes(s.clone(), nodes_ready));
    tokio::spawn(watch_pods(s.clone(), pods_ready));
    // Placing a pod before every node and bound pod is known could over-commit a node.
    if nodes_seen.wait_for(|r| *r).await.is_err() || pods_seen.wait_for(|r| *r).await.is_err() {
        warn!("the scheduler's watches ended before their first list");
        return;
    }
    info!("scheduler started");
    let pending = watcher::Config::default().fields("spec.nodeName=");
    Controller::new(Api::<Pod>::all(client), pending)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .reconcile_all_on(retry_rx)
        .run(reconcile, error_policy, s)
        .for_each(|result| async move {
            if let Err(e) = result {
                debug!(error = %e, "scheduling pass");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn which_pods_are_scheduled() {
        let cases = [
            (
                "unbound, no scheduler named",
                json!({"spec": {"containers": []}}),
                true,
            ),
            (
                "unbound, default-scheduler",
                json!({"spec": {"schedulerName": "default-scheduler", "containers": []}}),
                true,
            ),
            (
                "another scheduler's pod",
                json!({"spec": {"schedulerName": "volcano", "containers": []}}),
                false,
            ),
            (
                "already bound",
                json!({"spec": {"nodeName": "n1", "containers": []}}),
                false,
            ),
            (
                "being deleted",
                json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"},
                       "spec": {"containers": []}}),
                false,
            ),
            (
                "finished",
                json!({"spec": {"containers": []}, "status": {"phase": "Failed"}}),
                false,
            ),
        ];
        for (case, p, want) in cases {
            assert_eq!(wants_scheduling(&pod(p)), want, "{case}");
        }
    }

    fn node(name: &str, cpu: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    fn wants_cpu(uid: &str, cpu: &str) -> Pod {
        pod(
            json!({"metadata": {"name": uid, "namespace": "default", "uid": uid},
                   "spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": cpu}}}]}}),
        )
    }

    fn world(nodes: Vec<Node>) -> World {
        let mut w = World::default();
        for n in nodes {
            w.nodes.apply(n);
        }
        w
    }

    #[test]
    fn placement_over_several_nodes() {
        // The emptier node wins; ties go by name.
        let mut w = world(vec![node("b", "4", json!({})), node("a", "4", json!({}))]);
        assert_eq!(
            w.place(&wants_cpu("p1", "1"), "p1", None),
            Verdict::Bind("a".into())
        );
        assert_eq!(
            w.place(&wants_cpu("p2", "1"), "p2", None),
            Verdict::Bind("b".into())
        );
        // p1 and p2 are assumed: a pass for them again is a no-op.
        assert_eq!(w.place(&wants_cpu("p1", "1"), "p1", None), Verdict::Placed);
        // Assumed pods count: 3 more cpu fit on a (1 used), then b, then nowhere.
        assert_eq!(
            w.place(&wants_cpu("p3", "3"), "p3", None),
            Verdict::Bind("a".into())
        );
        assert_eq!(
            w.place(&wants_cpu("p4", "3"), "p4", None),
            Verdict::Bind("b".into())
        );
        assert_eq!(
            w.place(&wants_cpu("p5", "1"), "p5", None),
            Verdict::Unschedulable(
                "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are \
                 available: 2 No preemption victims found for incoming pod."
                    .into()
            )
        );
        // A failed binding gives its room back.
        w.pods.forget("p3");
        assert_eq!(
            w.place(&wants_cpu("p5", "1"), "p5", None),
            Verdict::Bind("a".into())
        );
    }

    #[test]
    fn the_node_holding_the_cache_is_preferred() {
        let mut w = world(vec![
            node("a", "4", json!({})),
            node("b", "4", json!({"imc.dev/holds-cache": "yes"})),
        ]);
        let holder: CacheHolder = Arc::new(|_, n: &Node| {
            n.labels()
                .get("imc.dev/holds-cache")
                .is_some_and(|v| v == "yes")
        });
        assert_eq!(
            w.place(&wants_cpu("p1", "1"), "p1", Some(&holder)),
            Verdict::Bind("b".into())
        );
    }

    #[test]
    fn no_nodes_and_invalid_requests_are_said_so() {
        let mut w = World::default();
        assert_eq!(
            w.place(&wants_cpu("p1", "1"), "p1", None),
            Verdict::Unschedulable("no nodes available to schedule pods".into())
        );
        let mut w = world(vec![node("a", "4", json!({}))]);
        assert_eq!(
            w.place(&wants_cpu("p1", "x"), "p1", None),
            Verdict::Unschedulable(
                "pod resources are invalid: containers[app].resources.requests[cpu]: \"x\" is \
                 not a quantity"
                    .into()
            )
        );
    }

    #[test]
    fn mixed_reasons_over_nodes() {
        let mut w = world(vec![
            node("small", "1", json!({"disk": "ssd"})),
            node("hdd", "8", json!({"disk": "hdd"})),
        ]);
        let p = pod(json!({"metadata": {"name": "p", "uid": "p"},
            "spec": {"nodeSelector": {"disk": "ssd"},
                     "containers": [{"name": "app", "resources": {"requests": {"cpu": "2"}}}]}}));
        assert_eq!(
            w.place(&p, "p", None),
            Verdict::Unschedulable(
                "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node \
                 affinity/selector. preemption: 0/2 nodes are available: 1 No preemption victims \
                 found for incoming pod, 1 Preemption is not helpful for scheduling."
                    .into()
            )
        );
    }
}
