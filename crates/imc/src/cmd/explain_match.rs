//! `imc explain-match -f pod.yaml`: which cache would this pod start from, and why.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use imc_controllers::admission::{self, Decision};
use imc_matching::CacheIndex;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use super::DEFAULT_DATA_DIR;

/// Explain automatic cache selection for a pod manifest.
#[derive(clap::Args, Debug)]
pub struct ExplainMatchArgs {
    /// Pod manifest (YAML or JSON); `-` reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Kubeconfig of the API server holding the ImageCaches [default: $KUBECONFIG, else
    /// /var/lib/imc/kubeconfig.yaml when present, else ~/.kube/config].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

pub async fn run(args: ExplainMatchArgs) -> anyhow::Result<ExitCode> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the pod from standard input")?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let pod: Pod = serde_saphyr::from_str(&text)
        .with_context(|| format!("{} is not a Pod manifest", args.file.display()))?;
    let client = client(args.kubeconfig).await?;
    let caches = Api::<imc_api::ImageCache>::all(client)
        .list(&ListParams::default())
        .await
        .context("listing ImageCaches")?
        .items;
    let index = CacheIndex::new(caches.iter().filter_map(admission::cache_entry).collect());

    if let Some(id) = admission::pinned_cache_id(&pod) {
        println!("pod pins cache {id}: automatic selection is not used");
    } else if !admission::wants_automatic(&pod) {
        println!(
            "pod does not ask for automatic selection ({} is not \"true\"); showing what it would get",
            imc_api::annotations::IMAGE_CACHE
        );
    }
    let request = admission::match_request(&pod, &|_| Vec::new()).map_err(anyhow::Error::msg)?;
    let explanation = index.explain(&request);
    println!(
        "{:<32} {:<24} {:<12} {:>5} {:>9} {:>12} {:>10}  VERDICT",
        "NAME", "CACHEID", "PHASE", "EXACT", "SAME-REPO", "SHARED-BYTES", "SIZE-DIST"
    );
    for c in &explanation.candidates {
        let phase = caches
            .iter()
            .find(|ic| ic.metadata.name.as_deref() == Some(c.cache.name.as_str()))
            .and_then(|ic| ic.status.as_ref()?.phase)
            .map_or("-", |p| p.as_str());
        let verdict = match &c.excluded {
            None if explanation.winner().map(|w| &w.name) == Some(&c.cache.name) => {
                "WINNER".to_owned()
            }
            None => "candidate".to_owned(),
            Some(why) => format!("excluded: {why}"),
        };
        println!(
            "{:<32} {:<24} {:<12} {:>5} {:>9} {:>12} {:>10}  {verdict}",
            c.cache.name,
            c.cache.id,
            phase,
            c.score.exact,
            c.score.same_repository,
            c.score.shared_bytes,
            c.size_distance
        );
    }
    match admission::decide(&pod, &caches, &index, &|_| Vec::new()) {
        Decision::Deny { message } => println!("admission would deny the pod: {message}"),
        Decision::Admit {
            matched: Some((id, how)),
            ..
        } => {
            println!("admission would choose {id} ({how:?})")
        }
        Decision::Admit {
            matched: None,
            missed: true,
        } => {
            println!(
                "no cache qualifies: the pod would pull its images and an auto cache would be created"
            )
        }
        Decision::Admit {
            matched: None,
            missed: false,
        } => println!("admission would not choose a cache"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A client from the given kubeconfig, `$KUBECONFIG`, the single-machine server's kubeconfig, or
/// the usual defaults, in that order.
async fn client(kubeconfig: Option<PathBuf>) -> anyhow::Result<kube::Client> {
    let server_config = PathBuf::from(DEFAULT_DATA_DIR).join("kubeconfig.yaml");
    let path = kubeconfig.or_else(|| {
        (std::env::var_os("KUBECONFIG").is_none() && server_config.exists())
            .then_some(server_config)
    });
    let config = match path {
        Some(p) => super::kubeconfig_file(&p).await?,
        None => kube::Config::infer().await.context("no kubeconfig found")?,
    };
    Ok(kube::Client::try_from(config)?)
}
