//! `imc server`: the all-in-one single-machine server.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {}

pub async fn run(_args: ServerArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("imc server is not implemented yet")
}
