//! Finding a container's image on this node: on the attached cache disk, in the layer store, or
//! pulled (only the layers neither holds), with the figures the `Pulled` event reports.

use std::time::Instant;

use imc_api::quantity::human_bytes;
use imc_api::{Digest, Reference};
use imc_layers::{LayerStore, NoProgress, Puller};
use imc_registry::{Platform, RegistryOptions};
use imc_runtime::{PreparedImage, Presence, in_cache};
use imc_snapshot::AttachedCache;

use super::NodeError;

/// `imagePullPolicy`, defaulted as Kubernetes does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Ask the registry even when the image is on the node.
    Always,
    /// Ask the registry only when the image is not on the node.
    IfNotPresent,
    /// Never ask the registry: the image must be on the node.
    Never,
}

impl PullPolicy {
    /// The container's policy; absent means Always for `:latest` (or no tag), else IfNotPresent.
    pub fn of(policy: Option<&str>, reference: &Reference) -> Self {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ if reference.digest().is_none() && reference.tag().is_none_or(|t| t == "latest") => {
                PullPolicy::Always
            }
            _ => PullPolicy::IfNotPresent,
        }
    }
}

/// Where the image will come from, decided before any registry is contacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The cache disk holds the whole image.
    Cache,
    /// The layer store (with the cache disk) holds every layer.
    Local,
    /// The registry is asked (for the layers neither holds).
    Registry,
}

/// A prepared image and how it was obtained.
#[derive(Debug)]
pub struct Obtained {
    /// The image's config and layers, ready for the runtime.
    pub image: PreparedImage,
    /// The manifest digest (the container status' `imageID`).
    pub manifest_digest: Digest,
    /// Where the image came from.
    pub source: Source,
    /// Layer bytes downloaded from the registry.
    pub downloaded_bytes: u64,
    /// Layers taken from the cache disk.
    pub layers_from_cache: usize,
    /// Unpacked bytes of those layers.
    pub bytes_from_cache: u64,
    /// Seconds spent.
    pub seconds: f64,
}

/// Decides where `reference` comes from, honouring `policy` (a matched cache makes it behave as
/// IfNotPresent).
pub fn plan(
    store: &LayerStore,
    reference: &Reference,
    policy: PullPolicy,
    cache: Option<&AttachedCache>,
) -> Result<Source, NodeError> {
    let presence = imc_runtime::presence(store, reference, cache)?;
    if presence == Presence::Cache {
        return Ok(Source::Cache);
    }
    let policy = if cache.is_some() && policy == PullPolicy::Always {
        PullPolicy::IfNotPresent
    } else {
        policy
    };
    let complete = presence == Presence::Local;
    match policy {
        PullPolicy::Always => Ok(Source::Registry),
        _ if complete => Ok(Source::Local),
        PullPolicy::Never => Err(NodeError::ImageNeverPull {
            image: reference.to_string(),
        }),
        PullPolicy::IfNotPresent => Ok(Source::Registry),
    }
}

/// Gets the image from `source` (see [`plan`]).
#[allow(clippy::too_many_arguments)]
pub async fn obtain(
    store: &LayerStore,
    registry: &RegistryOptions,
    jobs: usize,
    platform: &Platform,
    reference: &Reference,
    source: Source,
    cache: Option<&AttachedCache>,
) -> Result<Obtained, NodeError> {
    let t = Instant::now();
    let name = reference.to_string();
    let store_dir = |d: &Digest| store.layer_path(d);
    let mut downloaded_bytes = 0;
    let (config, diff_ids, manifest_digest) = match (source, cache) {
        (Source::Cache, Some(c)) if c.index.image(&name).is_some() => {
            let i = c
                .index
                .image(&name)
                .ok_or_else(|| NodeError::ImageNeverPull {
                    image: name.clone(),
                })?;
            (
                i.config.clone(),
                i.layers.clone(),
                i.manifest_digest.clone(),
            )
        }
        _ => {
            if source != Source::Local {
                let client = imc_registry::Client::new(registry.clone()).map_err(|source| {
                    NodeError::Registry {
                        image: name.clone(),
                        source: Box::new(source),
                    }
                })?;
                let puller = Puller::new(store.clone(), client, jobs);
                let report = puller
                    .pull_with(reference, platform, &|d| in_cache(cache, d), &NoProgress)
                    .await
                    .map_err(|source| NodeError::Pull {
                        image: name.clone(),
                        source: Box::new(source),
                    })?;
                downloaded_bytes = report.downloaded_bytes;
            }
            let record = store
                .image(reference)?
                .ok_or_else(|| NodeError::ImageNeverPull {
                    image: name.clone(),
                })?;
            let diff_ids = record.layers.iter().map(|l| l.diff_id.clone()).collect();
            (record.config, diff_ids, record.manifest_digest)
        }
    };
    let image = PreparedImage::locate(&name, config, &diff_ids, cache, &store_dir)?;
    let from_cache: Vec<&Digest> = image
        .layers
        .iter()
        .filter(|l| l.from_cache)
        .map(|l| &l.diff_id)
        .collect();
    let bytes_from_cache = cache.map_or(0, |c| {
        c.index
            .layers
            .iter()
            .filter(|l| from_cache.contains(&&l.diff_id))
            .map(|l| l.unpacked_size)
            .sum()
    });
    Ok(Obtained {
        layers_from_cache: from_cache.len(),
        bytes_from_cache,
        image,
        manifest_digest,
        source,
        downloaded_bytes,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// The `Pulled` event's message.
pub fn pulled_message(image: &str, got: &Obtained, cache_id: Option<&str>) -> String {
    if got.source == Source::Local && got.layers_from_cache == 0 {
        return format!("Container image {image:?} already present on machine");
    }
    let mut detail = format!("{} downloaded", human_bytes(got.downloaded_bytes));
    if let Some(id) = cache_id
        && got.layers_from_cache > 0
    {
        let s = if got.layers_from_cache == 1 { "" } else { "s" };
        detail.push_str(&format!(
            ", {} layer{s} from cache {id}",
            got.layers_from_cache
        ));
    }
    format!(
        "Successfully pulled image {image:?} in {:.3}s ({detail})",
        got.seconds
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pull_policy() {
        let r = |s: &str| s.parse::<Reference>().unwrap();
        assert_eq!(PullPolicy::of(None, &r("r.io/a")), PullPolicy::Always);
        assert_eq!(
            PullPolicy::of(None, &r("r.io/a:latest")),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::of(None, &r("r.io/a:1")),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::of(Some("Never"), &r("r.io/a:latest")),
            PullPolicy::Never
        );
    }
}
