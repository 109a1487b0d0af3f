//! How pods on the pod network reach the API server: `imc server` listens on loopback by
//! default, which a pod's network namespace cannot reach, so the node forwards TCP
//! connections from the pod network's gateway (the first address of `--pod-cidr`, which the
//! CNI bridge holds on the host) to the API server's address. TLS goes through untouched;
//! the serving certificate names the gateway, so in-pod clients verify it with the mounted
//! `ca.crt`. The socket is bound with `IP_FREEBIND`: the bridge (and so the address) only
//! exists once the first pod joined it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

/// Connections forwarded at once at most (beyond, new ones wait in the backlog).
const MAX_CONNECTIONS: usize = 512;

/// The pod network's gateway for `cidr` (`a.b.c.d/n`): its first address, which imc's CNI
/// configuration gives the bridge.
pub(crate) fn gateway(cidr: &str) -> Option<Ipv4Addr> {
    let (ip, bits) = cidr.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let bits: u32 = bits.parse().ok().filter(|b| *b <= 30)?;
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    Some(Ipv4Addr::from((u32::from(ip) & mask) + 1))
}

/// Listens on `from` and forwards every connection to `to`, until the process ends.
pub(crate) fn start(from: SocketAddr, to: SocketAddr) -> std::io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    rustix::net::sockopt::set_ip_freebind(&socket, true)?;
    socket.bind(from)?;
    let listener = socket.listen(128)?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _permit = permit;
                if let Ok(mut outbound) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_is_the_first_address() {
        let cases = [
            ("10.88.0.0/16", Some("10.88.0.1")),
            ("10.88.7.9/16", Some("10.88.0.1")),
            ("192.168.50.0/24", Some("192.168.50.1")),
            ("10.0.0.0/31", None),
            ("nonsense", None),
        ];
        for (cidr, want) in cases {
            assert_eq!(
                gateway(cidr).map(|g| g.to_string()).as_deref(),
                want,
                "{cidr}"
            );
        }
    }
}
