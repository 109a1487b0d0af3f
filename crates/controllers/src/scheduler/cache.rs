//! What runs where, as the scheduler counts it: every bound, unfinished pod seen in the pod
//! watch, plus the pods this scheduler bound whose binding the watch has not shown yet
//! ("assumed", as kube-scheduler's cache calls them), summed per node. Kept up to date one
//! event at a time, so a scheduling attempt never lists pods.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use tracing::warn;

use super::fit::{NodeUsage, PodDemand};

/// How long an assumed binding waits for the watch to confirm it before it is dropped (the
/// pod was deleted while the watch was down, say).
const ASSUME_TTL: Duration = Duration::from_secs(300);

/// A pod counted on a node.
#[derive(Debug, Clone)]
struct Placed {
    node: String,
    demand: PodDemand,
}

/// The per-node usage of bound and assumed pods.
#[derive(Debug, Default)]
pub struct PodCache {
    /// Bound, unfinished pods by uid, as the watch shows them.
    bound: HashMap<String, Placed>,
    /// Pods bound by this scheduler, not yet seen bound, by uid.
    assumed: HashMap<String, (Placed, Instant)>,
    /// Sum over `bound` per node name.
    usage: HashMap<String, NodeUsage>,
}

/// Whether a change to the cache may let a pending pod fit somewhere now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freed {
    /// Nothing was released.
    No,
    /// A pod left a node or asks for less.
    Yes,
}

/// The node `pod` is bound to and what it takes there, when it counts (bound, not finished).
fn placement(pod: &Pod) -> Option<Placed> {
    let node = pod
        .spec
        .as_ref()?
        .node_name
        .clone()
        .filter(|n| !n.is_empty())?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    // An unreadable quantity cannot come from a bound pod the API validated; count nothing
    // rather than refuse to count the pod at all.
    let demand = PodDemand::of(pod).unwrap_or_else(|e| {
        warn!(pod = ?pod.metadata.name, error = %e, "counting a bound pod without its requests");
        PodDemand::default()
    });
    Some(Placed { node, demand })
}

impl PodCache {
    /// A pod was added or changed.
    pub fn apply(&mut self, pod: &Pod) -> Freed {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return Freed::No;
        };
        let now = placement(pod);
        if now.is_some() {
            self.assumed.remove(uid);
        }
        let before = self.bound.get(uid).cloned();
        let freed = match (&before, &now) {
            (Some(_), None) => Freed::Yes,
            (Some(b), Some(n)) if b.node != n.node || b.demand != n.demand => Freed::Yes,
            _ => Freed::No,
        };
        if let Some(b) = before {
            if now
                .as_ref()
                .is_some_and(|n| n.node == b.node && n.demand == b.demand)
            {
                return Freed::No;
            }
            self.uncount(&b);
            self.bound.remove(uid);
        }
        if let Some(n) = now {
            self.usage.entry(n.node.clone()).or_default().add(&n.demand);
            self.bound.insert(uid.to_owned(), n);
        }
        freed
    }

    /// A pod was deleted.
    pub fn delete(&mut self, pod: &Pod) -> Freed {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return Freed::No;
        };
        let assumed = self.assumed.remove(uid).is_some();
        match self.bound.remove(uid) {
            Some(b) => {
                self.uncount(&b);
                Freed::Yes
            }
            None if assumed => Freed::Yes,
            None => Freed::No,
        }
    }

    /// Takes over `fresh`, a cache built from a new list of pods (after the watch restarted),
    /// keeping this cache's assumptions the list does not show bound yet.
    pub fn replace(&mut self, mut fresh: PodCache) {
        for (uid, entry) in std::mem::take(&mut self.assumed) {
            if !fresh.bound.contains_key(&uid) && entry.1.elapsed() < ASSUME_TTL {
                fresh.assumed.insert(uid, entry);
            }
        }
        *self = fresh;
    }

    fn uncount(&mut self, p: &Placed) {
        if let Some(u) = self.usage.get_mut(&p.node) {
            u.remove(&p.demand);
            if u.pods == 0 {
                self.usage.remove(&p.node);
            }
        }
    }

    /// Counts `uid` on `node` until the watch shows it bound (or [`PodCache::forget`]).
    pub fn assume(&mut self, uid: &str, node: &str, demand: PodDemand) {
        let placed = Placed {
            node: node.to_owned(),
            demand,
        };
        self.assumed
            .insert(uid.to_owned(), (placed, Instant::now()));
    }

    /// Drops an assumption whose binding failed.
    pub fn forget(&mut self, uid: &str) -> Freed {
        match self.assumed.remove(uid) {
            Some(_) => Freed::Yes,
            None => Freed::No,
        }
    }

    /// Whether the pod is bound (as seen, or as assumed): it needs no scheduling.
    pub fn is_placed(&self, uid: &str) -> bool {
        self.bound.contains_key(uid) || self.assumed.contains_key(uid)
    }

    /// What the pods on `node` take, assumed ones included.
    pub fn usage(&mut self, node: &str) -> NodeUsage {
        self.assumed.retain(|_, (_, at)| at.elapsed() < ASSUME_TTL);
        let mut usage = self.usage.get(node).cloned().unwrap_or_default();
        for (p, _) in self.assumed.values() {
            if p.node == node {
                usage.add(&p.demand);
            }
        }
        usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, node: Option<&str>, phase: &str, cpu: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "default", "uid": uid},
            "spec": {"nodeName": node, "containers": [{"name": "app", "resources": {"requests": {"cpu": cpu}}}]},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    fn cpu(cache: &mut PodCache, node: &str) -> (u64, u64) {
        let u = cache.usage(node);
        (u.requested.get("cpu").copied().unwrap_or(0), u.pods)
    }

    #[test]
    fn counts_bound_unfinished_pods_per_node() {
        let mut c = PodCache::default();
        assert_eq!(c.apply(&pod("a", None, "Pending", "1")), Freed::No);
        assert_eq!(cpu(&mut c, "n1"), (0, 0));
        assert_eq!(c.apply(&pod("a", Some("n1"), "Pending", "1")), Freed::No);
        assert_eq!(c.apply(&pod("b", Some("n1"), "Running", "500m")), Freed::No);
        assert_eq!(c.apply(&pod("c", Some("n2"), "Running", "2")), Freed::No);
        assert_eq!(cpu(&mut c, "n1"), (1500, 2));
        assert_eq!(cpu(&mut c, "n2"), (2000, 1));
        // A status update that changes nothing counted frees nothing.
        assert_eq!(c.apply(&pod("b", Some("n1"), "Running", "500m")), Freed::No);
        // Finishing frees.
        assert_eq!(
            c.apply(&pod("b", Some("n1"), "Succeeded", "500m")),
            Freed::Yes
        );
        assert_eq!(cpu(&mut c, "n1"), (1000, 1));
        // Deleting frees.
        assert_eq!(c.delete(&pod("a", Some("n1"), "Running", "1")), Freed::Yes);
        assert_eq!(cpu(&mut c, "n1"), (0, 0));
        // Deleting a pod never counted frees nothing.
        assert_eq!(c.delete(&pod("z", None, "Pending", "1")), Freed::No);
    }

    #[test]
    fn assumed_pods_count_until_the_watch_confirms_them() {
        let mut c = PodCache::default();
        let p = pod("a", None, "Pending", "1");
        c.assume("a", "n1", PodDemand::of(&p).unwrap());
        assert!(c.is_placed("a"));
        assert_eq!(cpu(&mut c, "n1"), (1000, 1));
        // The watch shows it bound: counted once, not twice.
        c.apply(&pod("a", Some("n1"), "Pending", "1"));
        assert_eq!(cpu(&mut c, "n1"), (1000, 1));
        // A failed binding is forgotten and frees its share.
        c.assume("b", "n1", PodDemand::of(&p).unwrap());
        assert_eq!(c.forget("b"), Freed::Yes);
        assert_eq!(cpu(&mut c, "n1"), (1000, 1));
        assert!(!c.is_placed("b"));
    }

    #[test]
    fn replace_rebuilds_from_a_list_and_keeps_unconfirmed_assumptions() {
        let mut c = PodCache::default();
        c.apply(&pod("gone", Some("n1"), "Running", "1"));
        c.assume(
            "new",
            "n1",
            PodDemand::of(&pod("new", None, "Pending", "2")).unwrap(),
        );
        c.assume(
            "seen",
            "n1",
            PodDemand::of(&pod("seen", None, "Pending", "2")).unwrap(),
        );
        let mut fresh = PodCache::default();
        fresh.apply(&pod("kept", Some("n1"), "Running", "500m"));
        fresh.apply(&pod("seen", Some("n1"), "Running", "2"));
        c.replace(fresh);
        assert_eq!(cpu(&mut c, "n1"), (4500, 3));
        assert!(!c.is_placed("gone"));
    }
}
