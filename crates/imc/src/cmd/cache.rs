//! `imc cache build|inspect|ls`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use imc_api::Reference;
use imc_layers::{LayerStore, NoProgress, Puller};
use imc_snapshot::{
    Backend, BackendChoice, BuildImage, BuildOptions, SnapshotBuilder, SnapshotDisk,
};

use super::DataDirArg;
use super::registry_args::RegistryArgs;

#[derive(clap::Subcommand, Debug)]
pub enum CacheCommand {
    /// Build a cache disk from a list of images: pulls what the layer store lacks, then writes
    /// one read-only EROFS disk (or a plain directory where EROFS or loop devices are missing).
    Build(Box<BuildArgs>),
    /// List the cache disks under DIR/caches/ and the images each holds.
    Ls {
        #[command(flatten)]
        data: DataDirArg,
        /// Output format: "json" prints one JSON array.
        #[arg(short = 'o', long = "output", value_name = "FORMAT")]
        format: Option<String>,
    },
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
    /// Where to write the disk; it appears only when complete [default:
    /// DIR/caches/cli-<hash of the image list>.erofs, where `imc snapshotter` finds it].
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
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
        CacheCommand::Ls { data, format } => list(data, format).await,
    }
}

/// One disk as `imc cache ls` shows it.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ListedDisk {
    name: String,
    path: PathBuf,
    kind: String,
    images: Vec<String>,
    layers: usize,
    unpacked_size: u64,
    error: Option<String>,
}

async fn list(data: DataDirArg, format: Option<String>) -> anyhow::Result<ExitCode> {
    let dir = data.data_dir.join("caches");
    let disks = tokio::task::spawn_blocking(move || list_disks(&dir)).await?;
    if format.as_deref() == Some("json") {
        println!("{}", serde_json::to_string_pretty(&disks)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<40} {:<9} {:>6} {:>12}  IMAGES",
        "NAME", "KIND", "LAYERS", "SIZE"
    );
    for d in &disks {
        let images = match &d.error {
            Some(e) => format!("(unreadable: {e})"),
            None => d.images.join(","),
        };
        println!(
            "{:<40} {:<9} {:>6} {:>12}  {images}",
            d.name, d.kind, d.layers, d.unpacked_size
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Every cache disk in `dir` (EROFS files, symlinks to them, directory disks), by name.
fn list_disks(dir: &std::path::Path) -> Vec<ListedDisk> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<(String, PathBuf)> = entries
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, p)| {
            !n.starts_with('.')
                && (n.ends_with(".erofs") && p.is_file() || p.join("index.json").is_file())
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|(name, path)| match SnapshotDisk::inspect(&path) {
            Ok(disk) => ListedDisk {
                name,
                kind: format!("{:?}", disk.kind).to_lowercase(),
                images: disk
                    .index
                    .images
                    .iter()
                    .map(|i| i.reference.clone())
                    .collect(),
                layers: disk.index.layers.len(),
                unpacked_size: disk.index.unpacked_size,
                path,
                error: None,
            },
            Err(e) => ListedDisk {
                name,
                path,
                kind: "?".into(),
                images: Vec::new(),
                layers: 0,
                unpacked_size: 0,
                error: Some(e.to_string()),
            },
        })
        .collect()
}

/// Where `imc cache build` writes without `--output`: `DIR/caches/cli-<hash>.erofs` (a
/// directory `cli-<hash>` for the directory backend), the hash taken over the sorted image list
/// so building the same images again replaces the same disk.
fn default_output(data_dir: &std::path::Path, images: &[Reference], backend: Backend) -> PathBuf {
    let mut refs: Vec<String> = images.iter().map(|r| r.to_string()).collect();
    refs.sort();
    refs.dedup();
    let hash = imc_api::Digest::of(refs.join("\n").as_bytes());
    let name = format!("cli-{}", &hash.hex()[..16]);
    let dir = data_dir.join("caches");
    match backend {
        Backend::Erofs => dir.join(format!("{name}.erofs")),
        Backend::Directory => dir.join(name),
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
    let resolved = backend.resolve()?;
    let references = args
        .images
        .iter()
        .map(|r| {
            r.parse::<Reference>()
                .with_context(|| format!("invalid image reference {r:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let output = match &args.output {
        Some(o) => o.clone(),
        None => default_output(&args.data.data_dir, &references, resolved),
    };
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
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
        output: output.clone(),
        size_limit: args.size_gib.saturating_mul(1 << 30),
        backend,
        // Staging hard-links from the layer store, so it must be on the same filesystem.
        work_dir: args.data.data_dir.join("tmp"),
    };
    let report = tokio::task::spawn_blocking(move || builder.build(&images, &options))
        .await?
        .with_context(|| format!("building cache disk {}", output.display()))?;
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
