//! The image a container runs: its config and where each of its layers is on this host.

use std::path::PathBuf;

use imc_api::{Digest, Reference};
use imc_layers::{LayerStore, NoProgress, Puller};
use imc_registry::Platform;
use imc_snapshot::AttachedCache;
use serde::Serialize;
use tracing::debug;

use crate::RuntimeError;

/// The parts of an OCI image config a container start uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env` (`NAME=value`).
    pub env: Vec<String>,
    /// `WorkingDir`, when set and not empty.
    pub working_dir: Option<String>,
    /// `User` (`uid`, `uid:gid`, `name`, `name:group`), when set and not empty.
    pub user: Option<String>,
    /// Exposed ports (`8080/tcp` etc.), sorted.
    pub exposed_ports: Vec<String>,
}

impl ImageConfig {
    /// Reads the `config` object of an OCI image config (with the image-spec's `Config` type).
    pub fn from_oci(image: &str, config: &serde_json::Value) -> Result<Self, RuntimeError> {
        let c = match config.get("config") {
            None | Some(serde_json::Value::Null) => return Ok(ImageConfig::default()),
            Some(c) => c,
        };
        let c: oci_spec::image::Config =
            serde_json::from_value(c.clone()).map_err(|e| RuntimeError::InvalidConfig {
                image: image.to_string(),
                reason: format!("config: {e}"),
            })?;
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        let mut exposed_ports = c.exposed_ports().clone().unwrap_or_default();
        exposed_ports.sort();
        Ok(ImageConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: non_empty(c.working_dir()),
            user: non_empty(c.user()),
            exposed_ports,
        })
    }

    /// The first exposed TCP port, if any.
    pub fn first_port(&self) -> Option<u16> {
        self.exposed_ports.iter().find_map(|p| {
            let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
            (proto == "tcp").then(|| port.parse().ok()).flatten()
        })
    }
}

/// Where one layer of the image comes from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerSource {
    /// The layer's diffID.
    pub diff_id: Digest,
    /// The unpacked tree (read-only: a cache mount or a layer store dir).
    pub dir: PathBuf,
    /// Whether it is on the cache disk.
    pub from_cache: bool,
}

/// An image ready to be mounted: config and layers (bottom first), all present on this host.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// The image reference as the user gave it (normalised).
    pub reference: String,
    /// The full OCI image config.
    pub config: serde_json::Value,
    /// Layers, bottom first.
    pub layers: Vec<LayerSource>,
}

impl PreparedImage {
    /// Places each diffID on the cache disk when it holds it, else in the layer store
    /// (`store_dir(diff_id)`, which must exist).
    pub fn locate(
        reference: &str,
        config: serde_json::Value,
        diff_ids: &[Digest],
        cache: Option<&AttachedCache>,
        store_dir: &dyn Fn(&Digest) -> PathBuf,
    ) -> Result<Self, RuntimeError> {
        let layers = diff_ids
            .iter()
            .map(|d| {
                if let Some(dir) = cache.and_then(|c| c.layer_dir(d)) {
                    return Ok(LayerSource {
                        diff_id: d.clone(),
                        dir,
                        from_cache: true,
                    });
                }
                let dir = store_dir(d);
                if dir.is_dir() {
                    Ok(LayerSource {
                        diff_id: d.clone(),
                        dir,
                        from_cache: false,
                    })
                } else {
                    Err(RuntimeError::LayerUnavailable {
                        image: reference.to_string(),
                        diff_id: d.clone(),
                    })
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(PreparedImage {
            reference: reference.to_string(),
            config,
            layers,
        })
    }
}

/// Where an image is found on this host, without asking a registry: the one rule both `imc run`
/// ([`prepare_image`]) and the node's pull policy build on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The attached cache disk holds the image (config and every layer).
    Cache,
    /// The layer store has the image's record and every layer is on the disk or in the store.
    Local,
    /// Neither: a pull is needed (of the layers the disk lacks only).
    Missing,
}

/// Whether `reference` is on the cache disk, complete locally, or missing (see [`Presence`]).
pub fn presence(
    store: &LayerStore,
    reference: &Reference,
    cache: Option<&AttachedCache>,
) -> Result<Presence, imc_layers::LayerError> {
    if cache.is_some_and(|c| c.index.image(&reference.to_string()).is_some()) {
        return Ok(Presence::Cache);
    }
    let complete = store.image(reference)?.is_some_and(|r| {
        r.layers
            .iter()
            .all(|l| in_cache(cache, &l.diff_id) || store.has_layer(&l.diff_id))
    });
    Ok(if complete {
        Presence::Local
    } else {
        Presence::Missing
    })
}

/// Whether the cache disk (if any) holds the layer `diff_id`: the layers a pull skips.
pub fn in_cache(cache: Option<&AttachedCache>, diff_id: &Digest) -> bool {
    cache.is_some_and(|c| c.index.has_layer(diff_id))
}

/// Finds the image's config and layers for a container start: an image the cache disk holds
/// needs no registry; an image the layer store holds with every layer present (on the disk or
/// in the store) needs none either; otherwise it is pulled with `puller`, skipping every layer
/// the disk holds, so only the layers neither has are downloaded.
pub async fn prepare_image(
    store: &LayerStore,
    puller: Option<&Puller>,
    reference: &Reference,
    platform: &Platform,
    cache: Option<&AttachedCache>,
) -> Result<PreparedImage, RuntimeError> {
    let name = reference.to_string();
    let store_dir = |d: &Digest| store.layer_path(d);
    let pull_error = |cause| RuntimeError::Pull {
        image: name.clone(),
        cause: Box::new(cause),
    };
    let presence = presence(store, reference, cache).map_err(pull_error)?;
    if presence == Presence::Cache
        && let Some(cache) = cache
        && let Some(image) = cache.index.image(&name)
    {
        debug!(image = %name, cache = %cache.id, "image found on the cache disk");
        return PreparedImage::locate(
            &name,
            image.config.clone(),
            &image.layers,
            Some(cache),
            &store_dir,
        );
    }
    if presence == Presence::Missing {
        let Some(puller) = puller else {
            return Err(RuntimeError::ImageNotPresent { image: name });
        };
        let report = puller
            .pull_with(reference, platform, &|d| in_cache(cache, d), &NoProgress)
            .await
            .map_err(pull_error)?;
        debug!(image = %name, downloaded = report.downloaded_bytes, "pulled the layers the cache lacks");
    }
    let record = store.image(reference).map_err(pull_error)?.ok_or_else(|| {
        RuntimeError::ImageNotPresent {
            image: name.clone(),
        }
    })?;
    let diff_ids: Vec<Digest> = record.layers.iter().map(|l| l.diff_id.clone()).collect();
    PreparedImage::locate(&name, record.config, &diff_ids, cache, &store_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_style_config() {
        let v = serde_json::json!({"config": {"Entrypoint": null, "Cmd": ["sh"], "Env": ["A=1"], "WorkingDir": "", "User": "1000:1000", "ExposedPorts": {"9090/udp": {}, "8080/tcp": {}}}});
        let c = ImageConfig::from_oci("x", &v).unwrap();
        assert_eq!(c.cmd, vec!["sh"]);
        assert!(c.entrypoint.is_empty());
        assert_eq!(c.working_dir, None);
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.first_port(), Some(8080));
    }
}
