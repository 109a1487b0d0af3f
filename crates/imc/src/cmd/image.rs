//! `imc image pull|ls|rm`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context;
use imc_api::quantity::human_bytes;
use imc_api::{Digest, Reference};
use imc_layers::{LayerStore, NoProgress, PullProgress, Puller};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

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

pub async fn run(cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Pull {
            reference,
            data,
            registry,
            output,
        } => pull(&reference, &data, &registry, output.as_deref()).await,
        ImageCommand::Ls { data } => ls(&data),
        ImageCommand::Rm { references, data } => rm(&references, &data).await,
    }
}

async fn pull(
    reference: &str,
    data: &DataDirArg,
    registry: &RegistryArgs,
    output: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let json = match output {
        None => false,
        Some("json") => true,
        Some(other) => anyhow::bail!("-o {other:?}: the only output format is \"json\""),
    };
    let image: Reference = reference
        .parse()
        .with_context(|| format!("invalid image reference {reference:?}"))?;
    let platform = registry.platform()?;
    let client = imc_registry::Client::new(registry.options()?)?;
    let store = LayerStore::open(&data.data_dir)?;
    let puller = Puller::new(store, client, registry.jobs);
    let report = if !json && std::io::stderr().is_terminal() {
        let bars = Bars::default();
        let report = puller.pull(&image, &platform, &bars).await;
        // The bars stay on screen; end their last line before the summary.
        eprintln!();
        report?
    } else {
        puller.pull(&image, &platform, &NoProgress).await?
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let rate = if report.seconds > 0.0 {
            report.downloaded_bytes as f64 / report.seconds
        } else {
            0.0
        };
        println!(
            "pulled {} ({}): {} downloaded, {} reused, {:.1} s, {}/s",
            report.reference,
            report.manifest_digest,
            human_bytes(report.downloaded_bytes),
            human_bytes(report.reused_bytes()),
            report.seconds,
            human_bytes(rate as u64),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn ls(data: &DataDirArg) -> anyhow::Result<ExitCode> {
    let store = LayerStore::open(&data.data_dir)?;
    let images = store.images()?;
    let rows: Vec<[String; 4]> = images
        .iter()
        .map(|i| {
            [
                i.reference.clone(),
                i.manifest_digest.short(),
                human_bytes(i.unpacked_size()),
                i.layers.len().to_string(),
            ]
        })
        .collect();
    let header = ["REFERENCE", "DIGEST", "SIZE", "LAYERS"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        println!(
            "{:<w0$}   {:<w1$}   {:>w2$}   {:>w3$}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn rm(references: &[String], data: &DataDirArg) -> anyhow::Result<ExitCode> {
    let store = LayerStore::open(&data.data_dir)?;
    let mut code = ExitCode::SUCCESS;
    for reference in references {
        let image: Reference = reference
            .parse()
            .with_context(|| format!("invalid image reference {reference:?}"))?;
        let store = store.clone();
        // GC waits for running pulls (file lock): keep it off the async threads.
        let result = tokio::task::spawn_blocking(move || store.remove_image(&image)).await?;
        match result {
            Ok(report) => println!(
                "removed {}: freed {} layers, {} blobs, {}",
                reference,
                report.layers.len(),
                report.blobs.len(),
                human_bytes(report.bytes_freed)
            ),
            Err(e) => {
                eprintln!("error: {e}");
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

/// One progress bar per layer on the terminal.
#[derive(Default)]
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Bars {
    fn bar(&self, digest: &Digest) -> Option<ProgressBar> {
        self.bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }
}

impl PullProgress for Bars {
    fn layer_started(&self, digest: &Digest, size: u64) {
        let bar = self.multi.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {decimal_bytes:>10}/{decimal_total_bytes:<10} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(digest.short());
        self.bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.clone(), bar);
    }
    fn layer_progress(&self, digest: &Digest, bytes: u64) {
        if let Some(bar) = self.bar(digest) {
            bar.set_position(bytes);
        }
    }
    fn layer_done(&self, digest: &Digest, reused: bool) {
        if let Some(bar) = self.bar(digest) {
            if reused {
                bar.finish_with_message("already held");
            } else {
                bar.set_position(bar.length().unwrap_or(0));
                bar.finish_with_message("done");
            }
        }
    }
}
