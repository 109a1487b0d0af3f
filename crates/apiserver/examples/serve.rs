//! Runs the API server alone: `cargo run -p imc-apiserver --example serve -- DIR ADDR [WINDOW]`.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "/tmp/imc-serve".into());
    let listen = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:6443".into())
        .parse()?;
    let mut config = imc_apiserver::ServerConfig::new(dir, listen);
    if let Some(w) = args.next() {
        config.watch_window = w.parse()?;
    }
    let server = imc_apiserver::Server::bind(config).await?;
    println!("kubeconfig: {}", server.kubeconfig().display());
    server
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
