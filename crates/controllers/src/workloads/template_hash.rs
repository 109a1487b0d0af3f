//! The `pod-template-hash` of a Deployment's template: a 32-bit FNV-1a hash of the template
//! (and the collision count), written in the alphabet upstream's `rand.SafeEncodeString` uses,
//! so names read like upstream's (`web-7c5ddbdf54`). The exact value differs from upstream's,
//! which hashes Go's dump of the struct.

use k8s_openapi::api::core::v1::PodTemplateSpec;

/// The label a Deployment puts on its ReplicaSets' selectors, templates and pods.
pub const LABEL: &str = "pod-template-hash";

const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The hash of `template` (without its own `pod-template-hash` label) and `collision_count`.
pub fn compute(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut t = template.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(LABEL);
    }
    let mut bytes = serde_json::to_vec(&t).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(c.to_string().as_bytes());
    }
    fnv1a(&bytes)
        .to_string()
        .bytes()
        .map(|b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_hash_ignores_its_own_label_and_follows_the_template() {
        let t = |v: serde_json::Value| -> PodTemplateSpec {
            serde_json::from_value(v).expect("a template")
        };
        let a = t(
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}),
        );
        let labelled = t(
            json!({"metadata": {"labels": {"app": "web", LABEL: "x"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}),
        );
        let b = t(
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i:2"}]}}),
        );
        assert_eq!(compute(&a, None), compute(&labelled, None));
        assert_ne!(compute(&a, None), compute(&b, None));
        assert_ne!(compute(&a, None), compute(&a, Some(1)));
        assert!(compute(&a, None).bytes().all(|c| ALPHABET.contains(&c)));
    }
}
