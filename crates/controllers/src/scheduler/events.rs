//! The scheduler's pod events (`Scheduled`, `FailedScheduling`), reported by
//! `default-scheduler` as kube-scheduler reports them, published in order by one background
//! task so that a binding never waits for its event.
//!
//! Each event is a new `events.k8s.io/v1` Event. The scheduler only writes `FailedScheduling`
//! when a pod's message changes, so there is no series to aggregate; kube-rs's `Recorder` is
//! not used because it would fold a changed message into the series of the old one, and
//! `kubectl describe` would keep showing the old reason.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::mpsc;
use tracing::warn;

/// The reporting component, as `kubectl describe` shows it in the `From` column.
pub const REPORTER: &str = "default-scheduler";

/// Events waiting to be written; beyond this, new events are dropped with a warning rather
/// than held in memory without bound.
const QUEUE: usize = 4096;

/// One event to write.
struct Pending {
    regarding: ObjectReference,
    type_: &'static str,
    reason: &'static str,
    action: &'static str,
    note: String,
}

/// Queues events for the publisher task.
#[derive(Clone)]
pub struct EventWriter {
    tx: mpsc::Sender<Pending>,
}

impl EventWriter {
    /// Starts the publisher; `instance` is the reporting instance (this process).
    pub fn start(client: kube::Client, instance: String) -> Self {
        let (tx, mut rx) = mpsc::channel::<Pending>(QUEUE);
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let ns = p
                    .regarding
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                let now = jiff::Timestamp::now();
                let event = Event {
                    metadata: ObjectMeta {
                        name: Some(format!(
                            "{}.{:x}",
                            p.regarding.name.as_deref().unwrap_or(REPORTER),
                            now.as_nanosecond()
                        )),
                        namespace: Some(ns),
                        ..Default::default()
                    },
                    event_time: Some(MicroTime(now)),
                    action: Some(p.action.to_owned()),
                    reason: Some(p.reason.to_owned()),
                    note: Some(p.note),
                    regarding: Some(p.regarding),
                    reporting_controller: Some(REPORTER.to_owned()),
                    reporting_instance: Some(instance.clone()),
                    type_: Some(p.type_.to_owned()),
                    ..Default::default()
                };
                if let Err(e) = api.create(&PostParams::default(), &event).await {
                    warn!(pod = ?event.regarding.as_ref().and_then(|r| r.name.clone()),
                          reason = ?event.reason, error = %e, "publishing a scheduler event");
                }
            }
        });
        Self { tx }
    }

    /// `Scheduled`: the pod was bound to `node`.
    pub fn scheduled(&self, pod: ObjectReference, node: &str) {
        let note = format!(
            "Successfully assigned {}/{} to {node}",
            pod.namespace.as_deref().unwrap_or("default"),
            pod.name.as_deref().unwrap_or("")
        );
        self.send(pod, "Normal", "Scheduled", "Binding", note);
    }

    /// `FailedScheduling`: the pod fits nowhere, for the reasons in `message`.
    pub fn failed(&self, pod: ObjectReference, message: String) {
        self.send(pod, "Warning", "FailedScheduling", "Scheduling", message);
    }

    fn send(
        &self,
        regarding: ObjectReference,
        type_: &'static str,
        reason: &'static str,
        action: &'static str,
        note: String,
    ) {
        let pending = Pending {
            regarding,
            type_,
            reason,
            action,
            note,
        };
        if let Err(e) = self.tx.try_send(pending) {
            warn!(reason, error = %e, "scheduler event queue full: event dropped");
        }
    }
}
