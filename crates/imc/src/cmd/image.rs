//! `imc image pull|ls|rm`.

use std::process::ExitCode;

use super::DataDirArg;
use super::registry_args::RegistryArgs;

#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// Pull an image into the layer store.
    Pull {
        /// Image reference, e.g. docker.io/library/busybox:1.36 or HOST:PORT/repo@sha256:...
        reference: String,
        #[command(flatten)]
        data: DataDirArg,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Output format: "json" prints one JSON object with the pull's result.
        #[arg(short = 'o', long = "output", value_name = "FORMAT")]
        output: Option<String>,
    },
    /// List images held in the layer store.
    Ls {
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Remove images and garbage-collect layers no image uses.
    Rm {
        /// Image references to remove.
        #[arg(required = true)]
        references: Vec<String>,
        #[command(flatten)]
        data: DataDirArg,
    },
}

pub async fn run(_cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("imc image is not implemented yet")
}
