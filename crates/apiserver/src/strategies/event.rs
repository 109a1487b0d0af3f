//! Event: core `v1` Event with kubectl's columns, and `events.k8s.io/v1` Event served from the
//! same storage (fields renamed both ways, as Kubernetes converts them).

use serde_json::{Value, json};

use crate::clock;
use crate::resources::{Cell, Column, ResourceDef, SharedStorage};

/// Core `v1` Event.
pub fn def() -> ResourceDef {
    let mut event = ResourceDef::new("", "v1", "Event", "events", true).short(&["ev"]);
    event.columns = vec![
        Column::new("Last Seen", Cell::Func(event_last_seen)),
        Column::new("Type", Cell::Path(".type".into())),
        Column::new("Reason", Cell::Path(".reason".into())),
        Column::new("Object", Cell::Func(event_object)),
        Column::new("Message", Cell::Path(".message".into())),
    ];
    event.name_priority = 1;
    event
}

/// `events.k8s.io/v1` Event, stored as core `v1` Events.
pub fn events_k8s_io_def() -> ResourceDef {
    let mut new_event =
        ResourceDef::new("events.k8s.io", "v1", "Event", "events", true).short(&["ev"]);
    new_event.storage = Some(SharedStorage {
        res: "/events".into(),
        to_storage: event_to_core,
        from_storage: event_from_core,
    });
    new_event
}

fn event_last_seen(o: &Value) -> Value {
    let t = ["lastTimestamp", "eventTime", "firstTimestamp"]
        .iter()
        .find_map(|f| o.get(*f).and_then(Value::as_str))
        .or(o
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str));
    Value::String(clock::age(t))
}

fn event_object(o: &Value) -> Value {
    let kind = o
        .pointer("/involvedObject/kind")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = o
        .pointer("/involvedObject/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    Value::String(format!("{}/{name}", kind.to_lowercase()))
}

/// Field renames between `events.k8s.io/v1` and core `v1` Event (served ↔ stored).
const EVENT_RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedCount", "count"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
];

fn rename(mut obj: Value, api_version: &str, forward: bool) -> Value {
    if let Some(map) = obj.as_object_mut() {
        for (new, old) in EVENT_RENAMES {
            let (from, to) = if forward { (new, old) } else { (old, new) };
            if let Some(v) = map.remove(*from) {
                map.insert((*to).to_owned(), v);
            }
        }
        map.insert("apiVersion".into(), json!(api_version));
    }
    obj
}

fn event_to_core(obj: Value) -> Value {
    let mut obj = rename(obj, "v1", true);
    // `kubectl describe` shows "From" from source.component when set.
    if obj.get("source").is_none()
        && let Some(c) = obj.get("reportingComponent").cloned()
    {
        obj["source"] = json!({"component": c});
    }
    obj
}

fn event_from_core(obj: Value) -> Value {
    rename(obj, "events.k8s.io/v1", false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_convert_both_ways() {
        let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "regarding": {"name": "c"}, "note": "hi", "reportingController": "imc"});
        let core = event_to_core(new.clone());
        assert_eq!(core["involvedObject"]["name"], "c");
        assert_eq!(core["message"], "hi");
        assert_eq!(core["source"]["component"], "imc");
        let back = event_from_core(core);
        assert_eq!(back["note"], "hi");
        assert_eq!(back["apiVersion"], "events.k8s.io/v1");
    }
}
