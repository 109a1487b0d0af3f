//! The `tcpSocket` probe (the kubelet's `pkg/probe/tcp`): a connect that succeeds within the
//! timeout is a success; the connection is closed at once.

use std::time::Duration;

use super::{Outcome, Target, dial_error, join_host_port};

/// Connects to `host` (the pod's IP when `None`) and `port`.
pub(super) async fn probe(
    target: &Target,
    host: Option<&str>,
    port: u16,
    timeout: Duration,
) -> Outcome {
    let shown = join_host_port(host.unwrap_or(&target.pod_ip), port);
    let connect = async {
        let addr = target.address(host, port).await?;
        target.connect(addr).await
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(_stream)) => Outcome::Success(String::new()),
        Ok(Err(e)) => Outcome::Failure(format!("dial tcp {shown}: {}", dial_error(&e))),
        Err(_) => Outcome::Failure(format!("dial tcp {shown}: i/o timeout")),
    }
}
