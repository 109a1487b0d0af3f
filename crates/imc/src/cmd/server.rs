//! `imc server`: the all-in-one single-machine server.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use imc_apiserver::{Server, ServerConfig};

use super::DataDirArg;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    #[command(flatten)]
    pub data: DataDirArg,
    /// Address of the HTTPS API (loopback by default; port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// How many changes are kept for watchers to resume from; older versions get 410 Gone.
    #[arg(long, value_name = "N", default_value_t = 10_000, hide = true)]
    pub watch_window: u64,
    /// Testing only: serve the API alone, without controllers or the node (the API server's
    /// own tests set status by hand and must not race a controller).
    #[arg(long, hide = true)]
    pub api_only: bool,
}

pub async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let mut config = ServerConfig::new(&args.data.data_dir, args.listen);
    config.watch_window = args.watch_window;
    let server = Server::bind(config).await.with_context(|| {
        format!(
            "starting the API server in {}",
            args.data.data_dir.display()
        )
    })?;
    tracing::info!(addr = %server.local_addr(), api_only = args.api_only, "api server listening");
    // Printed on stdout so scripts (and tests) can pick the kubeconfig up.
    println!("listening on https://{}", server.local_addr());
    println!("kubeconfig: {}", server.kubeconfig().display());
    println!("  export KUBECONFIG={}", server.kubeconfig().display());
    server.serve(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
