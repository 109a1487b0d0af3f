//! `imc`: the command-line entry point. It parses arguments and calls the library crates; it
//! holds no logic of its own (see docs/architecture.md).

mod cmd;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cmd::Cli::parse();
    cmd::init_tracing(cli.verbose);
    // kube (ring) and the registry client both reach rustls: one process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cmd::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
