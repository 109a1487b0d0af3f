//! `imc cache build|inspect`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use imc_api::Reference;
use imc_layers::{LayerStore, NoProgress, Puller};
use imc_snapshot::{BackendChoice, BuildImage, BuildOptions, SnapshotBuilder, SnapshotDisk};

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
        CacheCommand::Build(args) => build(*args).await,
    }
}

async fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let backend = match args.backend.as_str() {
        "auto" => BackendChoice::Auto,
        "erofs" => BackendChoice::Erofs,
        "dir" | "directory" => BackendChoice::Directory,
        other => anyhow::bail!("--backend {other:?}: expected auto, erofs or dir"),
    };
    // Fail before downloading anything when the disk cannot be written here.
    backend.resolve()?;
    let references = args
        .images
        .iter()
        .map(|r| {
            r.parse::<Reference>()
                .with_context(|| format!("invalid image reference {r:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let store = LayerStore::open(&args.data.data_dir)?;
    let client = imc_registry::Client::new(args.registry.options()?)?;
    let platform = args.registry.platform()?;
    let puller = Puller::new(store.clone(), client, args.registry.jobs);
    let json = args.format.as_deref() == Some("json");

    let mut pulls = Vec::new();
    let mut images = Vec::new();
    for reference in &references {
        let report = puller
            .pull(reference, &platform, &NoProgress)
            .await
            .with_context(|| format!("pulling {reference}"))?;
        if !json {
            eprintln!(
                "pulled {reference} ({} bytes downloaded)",
                report.downloaded_bytes
            );
        }
        let record = store.image(reference)?.with_context(|| {
            format!("image {reference} missing from the layer store after its pull")
        })?;
        images.push(BuildImage {
            reference: record.reference.clone(),
            manifest_digest: record.manifest_digest.clone(),
            config: record.config.clone(),
            layers: record.layers.iter().map(|l| l.diff_id.clone()).collect(),
        });
        pulls.push(report);
    }

    let layer_store = store.clone();
    let builder = SnapshotBuilder::new(move |d| layer_store.layer_path(d));
    let options = BuildOptions {
        output: args.output.clone(),
        size_limit: args.size_gib.saturating_mul(1 << 30),
        backend,
        // Staging hard-links from the layer store, so it must be on the same filesystem.
        work_dir: args.data.data_dir.join("tmp"),
    };
    let report = tokio::task::spawn_blocking(move || builder.build(&images, &options))
        .await?
        .with_context(|| format!("building cache disk {}", args.output.display()))?;
    if json {
        let out = serde_json::json!({"build": report, "pulls": pulls});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "wrote {} ({:?}, {} images, {} layers, {} bytes unpacked, disk id {}) in {:.1}s",
            report.output.display(),
            report.backend,
            report.images,
            report.layers,
            report.unpacked_size,
            report.disk_id,
            report.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
