//! Pod events (kubelet-style reasons, DESIGN §4), published in order by one background task so
//! that writing them never delays a container start.
//!
//! The same reason with the same note about the same pod again is counted in the event's
//! `series`; a new note is a new event (as the kubelet's event correlator keeps
//! `Unhealthy` messages of different probes and containers apart). kube-rs's `Recorder` is not
//! used: it folds every event of one reason into the series of the first, keeping the first
//! note, so `Created container b` would show as `Created container a`.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::warn;

/// Events remembered for counting repeats; beyond this the memory starts over (a repeat then
/// opens a new event rather than counting in the old one).
const REMEMBERED: usize = 4096;

/// Events waiting to be written; more are dropped (with a warning) rather than held.
const QUEUED: usize = 4096;

/// What identifies an event for counting its repeats: the pod (by uid), type, reason and note.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    warning: bool,
    reason: String,
    note: String,
}

/// An event written before: its name and how often it happened.
struct Written {
    name: String,
    count: i32,
}

/// Queues events for the publisher task.
#[derive(Clone)]
pub(crate) struct EventSink {
    tx: mpsc::Sender<(ObjectReference, Key)>,
}

impl EventSink {
    /// Starts the publisher; events are reported by `imc-node` on `node_name`.
    pub(crate) fn start(client: kube::Client, node_name: &str) -> Self {
        let (tx, mut rx) = mpsc::channel::<(ObjectReference, Key)>(QUEUED);
        let instance = node_name.to_owned();
        tokio::spawn(async move {
            let mut written: HashMap<Key, Written> = HashMap::new();
            while let Some((regarding, key)) = rx.recv().await {
                let reason = key.reason.clone();
                let published =
                    publish(&client, &instance, &mut written, regarding.clone(), key).await;
                if let Err(e) = published
                    && !crate::stopping::underway()
                {
                    warn!(pod = ?regarding.name, %reason, error = %e, "publishing an event");
                }
            }
        });
        Self { tx }
    }

    /// A Normal event.
    pub(crate) fn normal(&self, pod: &ObjectReference, reason: &str, note: String) {
        self.send(pod, false, reason, note);
    }

    /// A Warning event.
    pub(crate) fn warning(&self, pod: &ObjectReference, reason: &str, note: String) {
        self.send(pod, true, reason, note);
    }

    fn send(&self, pod: &ObjectReference, warning: bool, reason: &str, note: String) {
        let key = Key {
            uid: pod
                .uid
                .clone()
                .or_else(|| pod.name.clone())
                .unwrap_or_default(),
            warning,
            reason: reason.to_owned(),
            note,
        };
        if self.tx.try_send((pod.clone(), key)).is_err() {
            warn!(pod = ?pod.name, %reason, "too many events queued: one dropped");
        }
    }
}

/// Writes one event: a new one, or one more of the same in the series of the first.
async fn publish(
    client: &kube::Client,
    instance: &str,
    written: &mut HashMap<Key, Written>,
    regarding: ObjectReference,
    key: Key,
) -> Result<(), kube::Error> {
    let now = jiff::Timestamp::now();
    let ns = regarding
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    if let Some(w) = written.get_mut(&key) {
        w.count += 1;
        let series = EventSeries {
            count: w.count,
            last_observed_time: MicroTime(now),
        };
        let patch = json!({ "series": series });
        match api
            .patch(&w.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            // Gone (expired, deleted): written anew below.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let name = format!(
        "{}.{:x}",
        regarding.name.as_deref().unwrap_or("pod"),
        now.as_nanosecond()
    );
    let event = Event {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some(key.reason.clone()),
        reason: Some(key.reason.clone()),
        note: Some(key.note.clone()),
        regarding: Some(regarding),
        reporting_controller: Some("imc-node".to_owned()),
        reporting_instance: Some(instance.to_owned()),
        type_: Some(if key.warning { "Warning" } else { "Normal" }.to_owned()),
        ..Default::default()
    };
    api.create(&PostParams::default(), &event).await?;
    if written.len() >= REMEMBERED {
        written.clear();
    }
    written.insert(key, Written { name, count: 1 });
    Ok(())
}
