//! The node's presence in the API: a `Node` object with capacity and a Ready condition, and a
//! heartbeat `Lease` in `kube-node-lease` renewed every [`HEARTBEAT`].

use std::collections::BTreeMap;
use std::path::Path;
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
const MAX_PODS: &str = "110";

/// What the node offers: cpu, memory, ephemeral storage (of the data dir's filesystem), pods.
pub fn capacity(data_dir: &Path) -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let storage = rustix::fs::statvfs(data_dir)
        .map(|s| s.f_blocks * s.f_frsize)
        .unwrap_or(0);
    BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpus.to_string())),
        ("memory".to_owned(), Quantity(format!("{memory_kib}Ki"))),
        (
            "ephemeral-storage".to_owned(),
            Quantity(storage.to_string()),
        ),
        ("pods".to_owned(), Quantity(MAX_PODS.to_owned())),
    ])
}

fn node_status(data_dir: &Path, node_name: &str, since: Timestamp) -> NodeStatus {
    let capacity = capacity(data_dir);
    let now = Timestamp::now();
    NodeStatus {
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
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
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH.into(),
            operating_system: std::env::consts::OS.into(),
            container_runtime_version: "runc".into(),
            kubelet_version: format!("imc-{}", env!("CARGO_PKG_VERSION")),
            kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            machine_id: std::fs::read_to_string("/etc/machine-id")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            os_image: "imc".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates (or takes over) the Node object and the lease, then renews both every
/// [`HEARTBEAT`] until the process ends.
pub async fn register(
    client: kube::Client,
    node_name: String,
    data_dir: std::path::PathBuf,
) -> Result<(), NodeError> {
    let since = Timestamp::now();
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes
        .get_opt(&node_name)
        .await
        .map_err(NodeError::api(format!("reading node {node_name}")))?
        .is_none()
    {
        let node = Node {
            metadata: ObjectMeta {
                name: Some(node_name.clone()),
                labels: Some(BTreeMap::from([
                    ("kubernetes.io/hostname".to_owned(), node_name.clone()),
                    (
                        "kubernetes.io/os".to_owned(),
                        std::env::consts::OS.to_owned(),
                    ),
                    ("kubernetes.io/arch".to_owned(), go_arch().to_owned()),
                    ("type".to_owned(), "virtual-kubelet".to_owned()),
                ])),
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
        let status = json!({"status": node_status(&data_dir, &node_name, since)});
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
        let c = capacity(Path::new("/"));
        for k in ["cpu", "memory", "ephemeral-storage", "pods"] {
            let v = &c.get(k).unwrap().0;
            assert!(!v.is_empty() && !v.starts_with('0'), "{k}={v}");
        }
    }
}
