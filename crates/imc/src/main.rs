//! `imc`: the command-line entry point. It parses arguments and calls the library crates; it
//! holds no logic of its own (see docs/architecture.md).

mod cmd;
mod logging;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cmd::Cli::parse();
    logging::init(cli.verbose);
    // kube (ring) and the registry client both reach rustls: one process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cmd::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", logging::error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
