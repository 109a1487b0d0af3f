//! Event: core `v1` Event with kubectl's columns, and `events.k8s.io/v1` Event served from the
//! same storage (fields renamed both ways, as Kubernetes converts them).
//!
//! Every stored Event has the core fields kubectl sorts and prints by (`count`,
//! `firstTimestamp`, `lastTimestamp`, `source`), also when it was written through
//! `events.k8s.io/v1` with only `eventTime` and `series`. A new Event like one seen in the last
//! ten minutes (same source, object, type, reason and message) is counted on that one instead
//! of stored again, as client-go's event recorder aggregates them for its clients: `kubectl get
//! events` shows one line with its count, also for writers without such a recorder.

use serde_json::{Value, json};

use super::Strategy;
use crate::clock;
use crate::resources::{Cell, Column, ResourceDef, SharedStorage};

/// How recent an Event must be for a new one like it to be counted on it (client-go's
/// aggregation window).
const AGGREGATION_WINDOW_SECS: i64 = 600;

/// The Event strategy (both versions; it works on the stored, core form).
pub struct EventStrategy;

impl Strategy for EventStrategy {
    fn default(&self, obj: &mut Value) {
        if obj.get("apiVersion").and_then(Value::as_str) == Some("v1") {
            fill_core_fields(obj);
        }
    }

    fn absorbs(&self) -> bool {
        true
    }

    fn absorb(&self, new: &Value, existing: &Value) -> Option<Value> {
        absorb(new, existing)
    }
}

/// Fills `count`, `firstTimestamp`, `lastTimestamp` and `source` of a core Event from its
/// `eventTime`, `series` and reporting fields when they are missing (a `series` count and last
/// observation win over older values).
pub fn fill_core_fields(obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let missing = |v: Option<&Value>| v.is_none_or(|v| v.is_null() || v == "");
    let event_time = map.get("eventTime").filter(|v| !v.is_null()).cloned();
    let series_last = map
        .get("series")
        .and_then(|s| s.get("lastObservedTime"))
        .filter(|v| !v.is_null())
        .cloned();
    let series_count = map
        .get("series")
        .and_then(|s| s.get("count"))
        .and_then(Value::as_i64);
    let first = if missing(map.get("firstTimestamp")) {
        let t = event_time
            .as_ref()
            .and_then(Value::as_str)
            .map(whole_seconds)
            .unwrap_or_else(clock::now_time);
        map.insert("firstTimestamp".into(), json!(t));
        json!(t)
    } else {
        map["firstTimestamp"].clone()
    };
    if let Some(last) = series_last.as_ref().and_then(Value::as_str) {
        map.insert("lastTimestamp".into(), json!(whole_seconds(last)));
    } else if missing(map.get("lastTimestamp")) {
        map.insert("lastTimestamp".into(), first);
    }
    match series_count {
        Some(n) => {
            map.insert("count".into(), json!(n));
        }
        None if map
            .get("count")
            .and_then(Value::as_i64)
            .is_none_or(|c| c < 1) =>
        {
            map.insert("count".into(), json!(1));
        }
        None => {}
    }
    if missing(map.get("source").and_then(|s| s.get("component"))) {
        let component = map.get("reportingComponent").cloned();
        let host = map.get("reportingInstance").cloned();
        if let Some(c) = component.filter(|c| !c.is_null() && c != "") {
            let mut source = json!({"component": c});
            if let Some(h) = host.filter(|h| !h.is_null() && h != "") {
                source["host"] = h;
            }
            map.insert("source".into(), source);
        }
    }
}

/// `metav1.Time` (whole seconds) of a MicroTime or Time string.
fn whole_seconds(t: &str) -> String {
    t.parse::<jiff::Timestamp>()
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| t.to_owned())
}

/// What makes two Events the same one happening again (client-go's `getEventKey`).
fn event_key(e: &Value) -> Vec<&Value> {
    [
        "/source/component",
        "/source/host",
        "/involvedObject/kind",
        "/involvedObject/namespace",
        "/involvedObject/name",
        "/involvedObject/uid",
        "/involvedObject/apiVersion",
        "/involvedObject/fieldPath",
        "/type",
        "/reason",
        "/message",
        "/reportingComponent",
        "/reportingInstance",
        "/action",
    ]
    .iter()
    .map(|p| e.pointer(p).unwrap_or(&Value::Null))
    .collect()
}

fn seconds(v: Option<&Value>) -> Option<i64> {
    v.and_then(Value::as_str)
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
}

/// `existing` counting `new` too, when `new` repeats it within the aggregation window (both in
/// the stored, core form, their fields filled).
fn absorb(new: &Value, existing: &Value) -> Option<Value> {
    if existing.pointer("/metadata/deletionTimestamp").is_some()
        || event_key(new) != event_key(existing)
    {
        return None;
    }
    let last = seconds(existing.get("lastTimestamp"))?;
    let now =
        seconds(new.get("lastTimestamp")).unwrap_or_else(|| jiff::Timestamp::now().as_second());
    if now.saturating_sub(last) > AGGREGATION_WINDOW_SECS {
        return None;
    }
    let mut updated = existing.clone();
    let added = new.get("count").and_then(Value::as_i64).unwrap_or(1).max(1);
    let count = existing.get("count").and_then(Value::as_i64).unwrap_or(1) + added;
    updated["count"] = json!(count);
    let stamp = new
        .get("lastTimestamp")
        .cloned()
        .unwrap_or_else(|| json!(clock::now_time()));
    updated["lastTimestamp"] = stamp.clone();
    if updated.get("series").is_some_and(Value::is_object) {
        updated["series"]["count"] = json!(count);
        updated["series"]["lastObservedTime"] = new
            .get("eventTime")
            .filter(|t| !t.is_null())
            .cloned()
            .unwrap_or(stamp);
    }
    Some(updated)
}

/// Core `v1` Event.
pub fn def() -> ResourceDef {
    let mut event = ResourceDef::new("", "v1", "Event", "events", true)
        .short(&["ev"])
        .with_strategy(EventStrategy);
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
    let mut new_event = ResourceDef::new("events.k8s.io", "v1", "Event", "events", true)
        .short(&["ev"])
        .with_strategy(EventStrategy);
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
    fill_core_fields(&mut obj);
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
        assert_eq!(core["count"], 1);
        let back = event_from_core(core);
        assert_eq!(back["note"], "hi");
        assert_eq!(back["apiVersion"], "events.k8s.io/v1");
    }

    #[test]
    fn core_fields_come_from_event_time_and_series() {
        let mut e = json!({"apiVersion": "v1", "eventTime": "2024-05-01T10:00:00.123456Z",
            "series": {"count": 4, "lastObservedTime": "2024-05-01T10:05:00.000001Z"},
            "reportingComponent": "imc-node", "reportingInstance": "host-1"});
        fill_core_fields(&mut e);
        assert_eq!(e["firstTimestamp"], "2024-05-01T10:00:00Z");
        assert_eq!(e["lastTimestamp"], "2024-05-01T10:05:00Z");
        assert_eq!(e["count"], 4);
        assert_eq!(
            e["source"],
            json!({"component": "imc-node", "host": "host-1"})
        );
    }

    #[test]
    fn a_repeated_event_is_counted_on_the_first() {
        let now = clock::now_time();
        let first = json!({"metadata": {"name": "p.1"}, "involvedObject": {"kind": "Pod", "name": "p", "uid": "u"},
            "type": "Warning", "reason": "BackOff", "message": "back-off", "source": {"component": "kubelet"},
            "count": 1, "firstTimestamp": now, "lastTimestamp": now});
        let mut again = first.clone();
        again["metadata"]["name"] = json!("p.2");
        let merged = absorb(&again, &first).unwrap();
        assert_eq!(
            (merged["count"].clone(), merged["metadata"]["name"].clone()),
            (json!(2), json!("p.1"))
        );
        let mut other = again.clone();
        other["message"] = json!("something else");
        assert!(absorb(&other, &first).is_none());
        let mut old = first.clone();
        old["lastTimestamp"] = json!("2020-01-01T00:00:00Z");
        assert!(absorb(&again, &old).is_none());
    }
}
