//! Where probes and hooks of one container instance run: commands in the container, sockets
//! in its pod's network namespace (DESIGN §5: the node opens them there with `setns`, so a
//! pod's loopback-only ports are reachable and nothing binds host addresses), or the host's
//! for a `hostNetwork` pod.

use std::net::{IpAddr, SocketAddr};

use imc_runtime::{ContainerExec, PodSandbox};
use tokio::net::TcpStream;

/// The container instance probes and hooks reach.
#[derive(Debug, Clone)]
pub(in crate::node) struct Target {
    /// Runs commands in the container; `None` when there is none to run them in.
    pub exec: Option<ContainerExec>,
    /// The pod's sandbox: its network namespace (none for `hostNetwork`).
    pub sandbox: PodSandbox,
    /// The pod's IP: where a handler without `host` connects.
    pub pod_ip: String,
}

impl Target {
    /// The address `host` (the pod's IP when `None`) and `port` name, resolved (a name by the
    /// host's resolver).
    pub(in crate::node) async fn address(
        &self,
        host: Option<&str>,
        port: u16,
    ) -> std::io::Result<SocketAddr> {
        let host = host.unwrap_or(&self.pod_ip);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("lookup {host}: no such host")))
    }

    /// A TCP connection to `addr` from inside the pod's network namespace.
    pub(in crate::node) async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = self
            .sandbox
            .tcp_socket(addr.is_ipv6())
            .await
            .map_err(std::io::Error::other)?;
        socket.connect(addr).await
    }
}
