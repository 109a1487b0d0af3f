//! `imc cache build|inspect`.

use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum CacheCommand {
    /// Build a cache disk from a list of images.
    Build {},
    /// Print the index of a cache disk.
    Inspect {},
}

pub async fn run(_cmd: CacheCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("imc cache is not implemented yet")
}
