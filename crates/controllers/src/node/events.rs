//! Pod events (kubelet-style reasons, DESIGN §4), published in order by one background task so
//! that writing them never delays a container start.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tracing::warn;

/// Queues events for the publisher task.
#[derive(Clone)]
pub(crate) struct EventSink {
    tx: mpsc::UnboundedSender<(ObjectReference, Event)>,
}

impl EventSink {
    /// Starts the publisher; events are reported by `imc-node` on `node_name`.
    pub(crate) fn start(client: kube::Client, node_name: &str) -> Self {
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "imc-node".into(),
                instance: Some(node_name.to_owned()),
            },
        );
        let (tx, mut rx) = mpsc::unbounded_channel::<(ObjectReference, Event)>();
        tokio::spawn(async move {
            while let Some((reference, event)) = rx.recv().await {
                if let Err(e) = recorder.publish(&event, &reference).await {
                    warn!(pod = ?reference.name, reason = %event.reason, error = %e, "publishing an event");
                }
            }
        });
        Self { tx }
    }

    /// A Normal event.
    pub(crate) fn normal(&self, pod: &ObjectReference, reason: &str, note: String) {
        self.send(pod, EventType::Normal, reason, note);
    }

    /// A Warning event.
    pub(crate) fn warning(&self, pod: &ObjectReference, reason: &str, note: String) {
        self.send(pod, EventType::Warning, reason, note);
    }

    fn send(&self, pod: &ObjectReference, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: None,
        };
        // The receiver lives as long as the process.
        let _ = self.tx.send((pod.clone(), event));
    }
}
