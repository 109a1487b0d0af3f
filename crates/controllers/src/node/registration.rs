//! The node's presence in the API: a `Node` object with capacity, allocatable, the well-known
//! labels and a Ready condition, and a heartbeat `Lease` in `kube-node-lease` renewed every
//! [`HEARTBEAT`].
//!
//! The node owns only what it writes: the well-known labels (merged in, so labels added with
//! `kubectl label node` stay) and the status (written through the status subresource, so
//! `spec.taints` from `kubectl taint node` and `spec.unschedulable` from `kubectl cordon` stay).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Namespace, Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tracing::warn;

use super::NodeError;

/// How often the lease and the Ready condition are renewed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// The namespace of node heartbeat leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Pods this node accepts.
const MAX_PODS: u64 = 110;
/// The kubelet's default hard eviction threshold `memory.available<100Mi`: memory kept back
/// from pods.
const EVICTION_MEMORY_BYTES: u64 = 100 << 20;
/// The kubelet's default hard eviction threshold `nodefs.available<10%`: the share of the data
/// dir's filesystem kept back from pods, in percent.
const EVICTION_NODEFS_PERCENT: u64 = 10;

/// What the machine has, in plain numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Logical cpus this process may use.
    pub cpus: u64,
    /// `MemTotal` of `/proc/meminfo`, bytes.
    pub memory_bytes: u64,
    /// Size of the data dir's filesystem, bytes.
    pub storage_bytes: u64,
    /// Pods the node accepts.
    pub pods: u64,
}

impl Capacity {
    /// Reads the machine (blocking: `/proc` and `statvfs` of the data dir).
    pub fn read(data_dir: &Path) -> Capacity {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        let storage = rustix::fs::statvfs(data_dir)
            .map(|s| s.f_blocks.saturating_mul(s.f_frsize))
            .unwrap_or(0);
        Capacity {
            cpus,
            memory_bytes: memory_kib.saturating_mul(1024),
            storage_bytes: storage,
            pods: MAX_PODS,
        }
    }

    /// What pods may be given: the capacity less the kubelet's default hard eviction
    /// thresholds (no kube-reserved or system-reserved).
    pub fn allocatable(&self) -> Capacity {
        // 10% of the filesystem, rounded down as the kubelet's threshold is.
        let nodefs_reserve = u64::try_from(
            u128::from(self.storage_bytes) * u128::from(EVICTION_NODEFS_PERCENT) / 100,
        )
        .unwrap_or(u64::MAX);
        Capacity {
            memory_bytes: self.memory_bytes.saturating_sub(EVICTION_MEMORY_BYTES),
            storage_bytes: self.storage_bytes.saturating_sub(nodefs_reserve),
            ..*self
        }
    }

    /// As the `capacity`/`allocatable` map of a Node status (memory in Ki, as the kubelet
    /// writes it, when it divides evenly).
    pub fn quantities(&self) -> BTreeMap<String, Quantity> {
        let memory = if self.memory_bytes.is_multiple_of(1024) {
            format!("{}Ki", self.memory_bytes / 1024)
        } else {
            self.memory_bytes.to_string()
        };
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(self.cpus.to_string())),
            ("memory".to_owned(), Quantity(memory)),
            (
                "ephemeral-storage".to_owned(),
                Quantity(self.storage_bytes.to_string()),
            ),
            ("pods".to_owned(), Quantity(self.pods.to_string())),
        ])
    }
}

/// The labels the node owns: `kubernetes.io/hostname`, `kubernetes.io/os`,
/// `kubernetes.io/arch` (as Kubernetes names architectures), and `type: virtual-kubelet`.
pub fn owned_labels(node_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), node_name.to_owned()),
        (
            "kubernetes.io/os".to_owned(),
            std::env::consts::OS.to_owned(),
        ),
        ("kubernetes.io/arch".to_owned(), go_arch().to_owned()),
        ("type".to_owned(), "virtual-kubelet".to_owned()),
    ])
}

/// What does not change while the process runs: capacity and system info.
#[derive(Debug, Clone)]
struct Machine {
    capacity: Capacity,
    info: NodeSystemInfo,
}

impl Machine {
    /// Reads the machine (blocking).
    fn read(data_dir: &Path) -> Machine {
        let first_line = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        Machine {
            capacity: Capacity::read(data_dir),
            info: NodeSystemInfo {
                architecture: go_arch().into(),
                operating_system: std::env::consts::OS.into(),
                container_runtime_version: "runc".into(),
                kubelet_version: format!("imc-{}", env!("CARGO_PKG_VERSION")),
                kernel_version: first_line("/proc/sys/kernel/osrelease"),
                machine_id: first_line("/etc/machine-id"),
                os_image: "imc".into(),
                ..Default::default()
            },
        }
    }
}

fn node_status(machine: &Machine, node_name: &str, since: Timestamp) -> NodeStatus {
    let now = Timestamp::now();
    NodeStatus {
        allocatable: Some(machine.capacity.allocatable().quantities()),
        capacity: Some(machine.capacity.quantities()),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: Some("KubeletReady".into()),
            message: Some("imc node is posting ready status".into()),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(Time(since)),
        }]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: "127.0.0.1".into(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: node_name.into(),
            },
        ]),
        node_info: Some(machine.info.clone()),
        ..Default::default()
    }
}

/// Creates the Node object (or takes it over, adding the labels the node owns and leaving
/// every other label, the taints and `unschedulable` as they are) and the lease, then renews
/// the status and the lease every [`HEARTBEAT`] until the process ends.
pub async fn register(
    client: kube::Client,
    node_name: String,
    data_dir: PathBuf,
) -> Result<(), NodeError> {
    let since = Timestamp::now();
    let machine = match tokio::task::spawn_blocking(move || Machine::read(&data_dir)).await {
        Ok(m) => m,
        // Reading /proc and statvfs does not panic; if it did, the panic is the node's.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let labels = owned_labels(&node_name);
    let existing = nodes
        .get_opt(&node_name)
        .await
        .map_err(NodeError::api(format!("reading node {node_name}")))?;
    match existing {
        Some(node) => {
            let current = node.metadata.labels.unwrap_or_default();
            if labels.iter().any(|(k, v)| current.get(k) != Some(v)) {
                let patch = json!({"metadata": {"labels": labels}});
                nodes
                    .patch(&node_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(NodeError::api(format!("labelling node {node_name}")))?;
            }
        }
        None => {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(node_name.clone()),
                    labels: Some(labels),
                    ..Default::default()
                },
                ..Default::default()
            };
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(NodeError::api(format!("creating node {node_name}"))(e)),
            }
        }
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(LEASE_NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => {
            return Err(NodeError::api(format!(
                "creating namespace {LEASE_NAMESPACE}"
            ))(e));
        }
    }
    let leases: Api<Lease> = Api::namespaced(client, LEASE_NAMESPACE);
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(node_name.clone()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node_name.clone()),
            lease_duration_seconds: Some(40),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    };
    match leases.create(&PostParams::default(), &lease).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(NodeError::api(format!("creating lease {node_name}"))(e)),
    }
    loop {
        // Status only: spec (taints, unschedulable) and metadata are never written here.
        let status = json!({"status": node_status(&machine, &node_name, since)});
        if let Err(e) = nodes
            .patch_status(&node_name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            warn!(node = %node_name, error = %e, "updating the node status");
        }
        let renew = json!({"spec": {"holderIdentity": node_name, "renewTime": MicroTime(Timestamp::now())}});
        if let Err(e) = leases
            .patch(&node_name, &PatchParams::default(), &Patch::Merge(&renew))
            .await
        {
            warn!(node = %node_name, error = %e, "renewing the node lease");
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// The architecture as Kubernetes labels it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_names_every_resource() {
        let c = Capacity::read(Path::new("/")).quantities();
        for k in ["cpu", "memory", "ephemeral-storage", "pods"] {
            let v = &c.get(k).unwrap().0;
            assert!(!v.is_empty() && !v.starts_with('0'), "{k}={v}");
        }
    }

    #[test]
    fn allocatable_is_capacity_less_the_kubelet_eviction_thresholds() {
        let cases = [
            (
                "24 GiB, 100 GB disk, 2 cpus",
                Capacity {
                    cpus: 2,
                    memory_bytes: 24 << 30,
                    storage_bytes: 100_000_000_000,
                    pods: 110,
                },
                Capacity {
                    cpus: 2,
                    memory_bytes: (24 << 30) - (100 << 20),
                    storage_bytes: 90_000_000_000,
                    pods: 110,
                },
            ),
            (
                "10% of the disk rounds down",
                Capacity {
                    cpus: 1,
                    memory_bytes: 1 << 30,
                    storage_bytes: 1005,
                    pods: 110,
                },
                Capacity {
                    cpus: 1,
                    memory_bytes: (1 << 30) - (100 << 20),
                    storage_bytes: 905,
                    pods: 110,
                },
            ),
            (
                "less memory than the threshold leaves none",
                Capacity {
                    cpus: 1,
                    memory_bytes: 50 << 20,
                    storage_bytes: 0,
                    pods: 110,
                },
                Capacity {
                    cpus: 1,
                    memory_bytes: 0,
                    storage_bytes: 0,
                    pods: 110,
                },
            ),
        ];
        for (case, capacity, want) in cases {
            assert_eq!(capacity.allocatable(), want, "{case}");
        }
    }

    #[test]
    fn quantities_as_the_kubelet_writes_them() {
        let q = Capacity {
            cpus: 2,
            memory_bytes: 24 << 30,
            storage_bytes: 1234,
            pods: 110,
        }
        .allocatable()
        .quantities();
        let text: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_str(), v.0.as_str())).collect();
        assert_eq!(
            text,
            [
                ("cpu", "2"),
                ("ephemeral-storage", "1111"),
                ("memory", "25063424Ki"),
                ("pods", "110"),
            ]
        );
        // What the node writes, the scheduler reads back exactly.
        assert_eq!(
            crate::quantity::parse_bytes("25063424Ki"),
            Some((24 << 30) - (100 << 20))
        );
    }

    #[test]
    fn owned_labels_are_the_well_known_ones() {
        let l = owned_labels("n1");
        assert_eq!(l["kubernetes.io/hostname"], "n1");
        assert_eq!(l["kubernetes.io/os"], "linux");
        assert!(["amd64", "arm64"].contains(&l["kubernetes.io/arch"].as_str()));
    }
}
