//! `imc cache build|inspect`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use imc_snapshot::SnapshotDisk;

use super::DataDirArg;
use super::registry_args::RegistryArgs;

#[derive(clap::Subcommand, Debug)]
pub enum CacheCommand {
    /// Build a cache disk from a list of images: pulls what the layer store lacks, then writes
    /// one read-only EROFS disk (or a plain directory where EROFS or loop devices are missing).
    Build(Box<BuildArgs>),
    /// Print the index of a cache disk.
    Inspect {
        /// The cache disk (EROFS file or cache directory).
        disk: PathBuf,
        /// Output format: "json" prints the index as JSON.
        #[arg(short = 'o', long = "output", value_name = "FORMAT")]
        format: Option<String>,
    },
}

/// Arguments of `imc cache build`.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Image to put on the disk (repeatable, 1-20).
    #[arg(long = "image", value_name = "REF", required = true)]
    pub images: Vec<String>,
    /// Refuse when the unpacked content exceeds this many GiB.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub size_gib: u64,
    /// Where to write the disk; it appears only when complete.
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// Disk format: auto (EROFS when possible), erofs, dir.
    #[arg(long, value_name = "KIND", default_value = "auto")]
    pub backend: String,
    #[command(flatten)]
    pub data: DataDirArg,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Output format: "json" prints one JSON object with the build's result.
    #[arg(short = 'o', long = "output-format", value_name = "FORMAT")]
    format: Option<String>,
}

pub async fn run(cmd: CacheCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CacheCommand::Inspect { disk, format } => {
            let disk = SnapshotDisk::inspect(&disk)
                .with_context(|| format!("reading cache disk {}", disk.display()))?;
            if format.as_deref() == Some("json") {
                println!("{}", serde_json::to_string_pretty(&disk.index)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("disk:      {} ({:?})", disk.path.display(), disk.kind);
            println!("disk id:   {}", disk.index.disk_id);
            println!(
                "unpacked:  {} bytes in {} layers",
                disk.index.unpacked_size,
                disk.index.layers.len()
            );
            for image in &disk.index.images {
                println!("image {}", image.reference);
                println!("  manifest {}", image.manifest_digest);
                for d in &image.layers {
                    println!(
                        "  layer    {}  {}",
                        d,
                        disk.index.layer_path(d).unwrap_or("(missing)")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Build(_) => {
            anyhow::bail!("imc cache build needs the layer store's puller, not available yet")
        }
    }
}
