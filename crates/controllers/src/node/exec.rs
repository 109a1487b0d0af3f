//! `kubectl exec` and `kubectl port-forward` on the node: a command started in a running
//! container (`runc exec`, with a terminal when asked), and connections to a port on
//! localhost of a pod's network namespace (opened there with `setns` on the sandbox's thread,
//! or on the host for a `hostNetwork` pod).

use std::net::{Ipv4Addr, SocketAddr};

use imc_runtime::{ExecProcess, ExecSpawn};
use tokio::net::TcpStream;

use super::{Node, NodeError};

impl Node {
    /// Whether container `container` of pod `pod_uid` runs (with `None`: any container of
    /// it), else the error [`Node::exec`] or [`Node::port_forward`] would give.
    pub fn streamable(
        &self,
        pod_uid: &str,
        pod_name: &str,
        container: Option<&str>,
    ) -> Result<(), NodeError> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let found = running
            .keys()
            .any(|(uid, c)| uid == pod_uid && container.is_none_or(|want| want == c));
        match (found, container) {
            (true, _) => Ok(()),
            (false, Some(c)) => Err(NodeError::ContainerNotFound {
                container: c.to_owned(),
            }),
            (false, None) => Err(NodeError::PodNotRunning {
                pod: pod_name.to_owned(),
            }),
        }
    }

    /// Starts `spec.command` in container `container` of pod `pod_uid`. A container without a
    /// running instance is refused with the kubelet's `container not found ("NAME")`; runc
    /// failing to start the command shows when the process is waited for.
    pub async fn exec(
        &self,
        pod_uid: &str,
        container: &str,
        spec: ExecSpawn,
    ) -> Result<ExecProcess, NodeError> {
        imc_runtime::check_component("pod uid", pod_uid)?;
        imc_runtime::check_component("container name", container)?;
        let exec = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(pod_uid.to_owned(), container.to_owned()))
            .and_then(|t| t.exec.clone());
        let Some(exec) = exec else {
            return Err(NodeError::ContainerNotFound {
                container: container.to_owned(),
            });
        };
        Ok(exec.spawn(spec).await?)
    }

    /// A connection to `port` on localhost in the network namespace of pod `pod_uid` (named
    /// `pod_name` in messages), which must have a running container.
    pub async fn port_forward(
        &self,
        pod_uid: &str,
        pod_name: &str,
        port: u16,
    ) -> Result<TcpStream, NodeError> {
        let target = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|((uid, _), _)| uid == pod_uid)
            .map(|(_, t)| t.clone());
        let Some(target) = target else {
            return Err(NodeError::PodNotRunning {
                pod: pod_name.to_owned(),
            });
        };
        target
            .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .map_err(|source| NodeError::Forward { port, source })
    }
}
