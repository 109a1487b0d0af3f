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
    /// Reads the `config` object of an OCI image config.
    pub fn from_oci(image: &str, config: &serde_json::Value) -> Result<Self, RuntimeError> {
        let c = match config.get("config") {
            None | Some(serde_json::Value::Null) => return Ok(ImageConfig::default()),
            Some(c) => c,
        };
        let invalid = |reason: String| RuntimeError::InvalidConfig {
            image: image.to_string(),
            reason,
        };
        let strings = |key: &str| -> Result<Vec<String>, RuntimeError> {
            match c.get(key) {
                None | Some(serde_json::Value::Null) => Ok(Vec::new()),
                Some(v) => {
                    serde_json::from_value(v.clone()).map_err(|e| invalid(format!("{key}: {e}")))
                }
            }
        };
        let string = |key: &str| {
            c.get(key)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let mut exposed_ports: Vec<String> = c
            .get("ExposedPorts")
            .and_then(|v| v.as_object())
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        exposed_ports.sort();
        Ok(ImageConfig {
            entrypoint: strings("Entrypoint")?,
            cmd: strings("Cmd")?,
            env: strings("Env")?,
            working_dir: string("WorkingDir"),
            user: string("User"),
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
    if let Some(cache) = cache
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
    let in_cache = |d: &Digest| cache.is_some_and(|c| c.index.has_layer(d));
    let pull_error = |cause| RuntimeError::Pull {
        image: name.clone(),
        cause: Box::new(cause),
    };
    let record = match store.image(reference).map_err(pull_error)? {
        Some(r)
            if r.layers
                .iter()
                .all(|l| in_cache(&l.diff_id) || store.has_layer(&l.diff_id)) =>
        {
            r
        }
        _ => {
            let Some(puller) = puller else {
                return Err(RuntimeError::ImageNotPresent { image: name });
            };
            let report = puller
                .pull_with(reference, platform, &in_cache, &NoProgress)
                .await
                .map_err(pull_error)?;
            debug!(image = %name, downloaded = report.downloaded_bytes, "pulled the layers the cache lacks");
            store.image(reference).map_err(pull_error)?.ok_or_else(|| {
                RuntimeError::ImageNotPresent {
                    image: name.clone(),
                }
            })?
        }
    };
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
