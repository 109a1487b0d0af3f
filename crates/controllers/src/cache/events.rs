//! The cache controller's events (`events.k8s.io/v1`), as `kubectl describe imagecache` shows
//! them.
//!
//! The same reason with the same note again is counted in the event's `series`; a new note is a
//! new event. kube-rs's `Recorder` is not used: it folds every event of one reason into the
//! series of the first, keeping the first note, so a `DeletionWaiting` naming other pods or a
//! `BuildStarted` for a changed spec would show the old text.

use std::collections::HashMap;
use std::sync::Mutex;

use imc_api::ImageCache;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

/// Events remembered for counting repeats; beyond this the memory starts over (a repeat then
/// opens a new event rather than counting in the old one).
const REMEMBERED: usize = 4096;

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something a user may want to know.
    Normal,
    /// Something went wrong.
    Warning,
}

/// What identifies an event for counting its repeats: the cache (by uid), reason and note.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    reason: String,
    note: String,
}

/// An event written before: its name and how often it happened.
struct Written {
    name: String,
    count: i32,
}

/// Writes the cache controller's events, reported by `controller` on `instance`.
pub struct CacheEvents {
    client: kube::Client,
    controller: String,
    instance: String,
    written: Mutex<HashMap<Key, Written>>,
}

impl CacheEvents {
    /// Events written through `client`, reported by `controller` (instance `instance`).
    pub fn new(client: kube::Client, controller: &str, instance: &str) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            instance: instance.to_owned(),
            written: Mutex::default(),
        }
    }

    /// Records `reason` with `note` about `cache`: a new event, or one more of the same.
    pub async fn publish(
        &self,
        cache: &ImageCache,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
    ) -> Result<(), kube::Error> {
        let regarding = cache.object_ref(&());
        let key = Key {
            uid: cache.uid().unwrap_or_else(|| cache.name_any()),
            reason: reason.to_owned(),
            note,
        };
        let now = jiff::Timestamp::now();
        let ns = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let repeat = self.written().get_mut(&key).map(|w| {
            w.count += 1;
            (w.name.clone(), w.count)
        });
        if let Some((name, count)) = repeat {
            let series = EventSeries {
                count,
                last_observed_time: MicroTime(now),
            };
            let patch = json!({ "series": series });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                // Gone (expired, deleted): write it anew below.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let name = format!("{}.{:x}", cache.name_any(), now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(action.to_owned()),
            reason: Some(key.reason.clone()),
            note: Some(key.note.clone()),
            regarding: Some(regarding),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        let mut written = self.written();
        if written.len() >= REMEMBERED {
            written.clear();
        }
        written.insert(key, Written { name, count: 1 });
        Ok(())
    }

    /// Forgets the events of the cache with `uid` (it is gone).
    pub fn forget(&self, uid: &str) {
        self.written().retain(|k, _| k.uid != uid);
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Written>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }
}
