//! Serving the snapshots gRPC API on a Unix socket, where containerd's proxy plugin connects.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use containerd_snapshots::tonic::transport::Server;
use tokio_stream::wrappers::UnixListenerStream;
use tracing::info;

use crate::{ImcSnapshotter, SnapshotterError};

/// Serves `snapshotter` on `socket` (replacing a stale socket file, mode 0600) until `shutdown`
/// completes.
pub async fn serve(
    snapshotter: ImcSnapshotter,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SnapshotterError> {
    if let Some(dir) = socket.parent() {
        fs::create_dir_all(dir).map_err(SnapshotterError::io("creating", dir))?;
    }
    match fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(SnapshotterError::io("removing stale socket", socket)(e)),
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .map_err(SnapshotterError::io("listening on", socket))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600))
        .map_err(SnapshotterError::io("restricting", socket))?;
    info!(socket = %socket.display(), "serving containerd snapshots API");
    let service = containerd_snapshots::server(Arc::new(snapshotter));
    let result = Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = fs::remove_file(socket);
    result.map_err(|e| SnapshotterError::Internal(format!("serving {}: {e}", socket.display())))
}
