//! The pod's quality-of-service class (`status.qosClass`), as `qos.GetPodQOS` computes it from
//! the cpu and memory requests and limits of every container (init containers included).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::quantity::Quantity;

const QOS_RESOURCES: [&str; 2] = ["cpu", "memory"];

/// The positive cpu/memory quantities of `list` (`requests` or `limits`), parsed.
fn positive(list: Option<&Value>) -> BTreeMap<&'static str, Quantity> {
    let mut out = BTreeMap::new();
    for r in QOS_RESOURCES {
        if let Some(q) = list
            .and_then(|l| l.get(r))
            .and_then(quantity_of)
            .filter(|q| *q > Quantity::ZERO)
        {
            out.insert(r, q);
        }
    }
    out
}

fn quantity_of(v: &Value) -> Option<Quantity> {
    match v {
        Value::String(s) => Quantity::parse(s).ok(),
        Value::Number(n) => Quantity::parse(&n.to_string()).ok(),
        _ => None,
    }
}

/// `Guaranteed`, `Burstable` or `BestEffort` for a pod (after defaulting, so requests default
/// to limits).
pub fn qos_class(pod: &Value) -> &'static str {
    let mut requests: BTreeMap<&str, Quantity> = BTreeMap::new();
    let mut limits: BTreeMap<&str, Quantity> = BTreeMap::new();
    let mut guaranteed = true;
    let containers = ["initContainers", "containers"]
        .into_iter()
        .filter_map(|l| pod.pointer(&format!("/spec/{l}")).and_then(Value::as_array))
        .flatten();
    for c in containers {
        for (r, q) in positive(c.pointer("/resources/requests")) {
            let sum = requests.entry(r).or_default();
            *sum = sum.saturating_add(q);
        }
        let found = positive(c.pointer("/resources/limits"));
        if found.len() < QOS_RESOURCES.len() {
            guaranteed = false;
        }
        for (r, q) in found {
            let sum = limits.entry(r).or_default();
            *sum = sum.saturating_add(q);
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed
        && requests.len() == limits.len()
        && requests.iter().all(|(r, q)| limits.get(r) == Some(q))
    {
        return "Guaranteed";
    }
    "Burstable"
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(resources: &[Value]) -> Value {
        let containers: Vec<Value> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| json!({"name": format!("c{i}"), "image": "i", "resources": r}))
            .collect();
        json!({"spec": {"containers": containers}})
    }

    #[test]
    fn qos_classes_as_kubernetes_computes_them() {
        let full = json!({"limits": {"cpu": "1", "memory": "64Mi"}, "requests": {"cpu": "1", "memory": "64Mi"}});
        // (case, containers' resources, class)
        let rows: &[(&str, Vec<Value>, &str)] = &[
            ("nothing set", vec![json!({})], "BestEffort"),
            (
                "zero requests count as unset",
                vec![json!({"requests": {"cpu": "0"}})],
                "BestEffort",
            ),
            (
                "other resources do not count",
                vec![
                    json!({"limits": {"ephemeral-storage": "1Gi"}, "requests": {"ephemeral-storage": "1Gi"}}),
                ],
                "BestEffort",
            ),
            (
                "equal limits and requests",
                vec![full.clone()],
                "Guaranteed",
            ),
            (
                "1000m equals 1",
                vec![
                    json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1024Mi"}}),
                ],
                "Guaranteed",
            ),
            (
                "every container guaranteed",
                vec![full.clone(), full.clone()],
                "Guaranteed",
            ),
            (
                "one container without limits",
                vec![full.clone(), json!({})],
                "Burstable",
            ),
            (
                "requests below limits",
                vec![
                    json!({"limits": {"cpu": "1", "memory": "64Mi"}, "requests": {"cpu": "500m", "memory": "64Mi"}}),
                ],
                "Burstable",
            ),
            (
                "only a memory limit",
                vec![json!({"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}})],
                "Burstable",
            ),
            (
                "only requests",
                vec![json!({"requests": {"cpu": "100m"}})],
                "Burstable",
            ),
        ];
        for (case, resources, class) in rows {
            assert_eq!(qos_class(&pod(resources)), *class, "{case}");
        }
    }
}
