//! How one cache reaches its registries: the server-wide settings plus the cache's own
//! annotations (`plain-http-registry`, `insecure-registry`, `imc-cpu-arch`) and pull secrets.

use imc_api::ImageCache;
use imc_api::annotations::{CPU_ARCH, INSECURE_REGISTRY, PLAIN_HTTP_REGISTRY, host_list};
use imc_registry::{Credentials, Platform, RegistryOptions};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::error::CacheError;
use crate::manager::Settings;

/// The registry options and platform for building `cache`. Pull secrets are read through
/// `client` (`namespace:name`, key `.dockerconfigjson`); a missing one is an error naming it.
pub async fn pull_config(
    client: &kube::Client,
    settings: &Settings,
    cache: &ImageCache,
) -> Result<(RegistryOptions, Platform), CacheError> {
    let name = cache.name_any();
    let annotations = cache.annotations();
    let mut options = settings.registry.clone();
    if let Some(hosts) = annotations.get(PLAIN_HTTP_REGISTRY) {
        options.plain_http.extend(host_list(hosts));
    }
    if let Some(hosts) = annotations.get(INSECURE_REGISTRY) {
        options.insecure.extend(host_list(hosts));
    }
    let platform = match annotations.get(CPU_ARCH) {
        Some(value) => value
            .parse::<Platform>()
            .map_err(|e| CacheError::BadPlatform {
                cache: name.clone(),
                value: value.clone(),
                reason: e.to_string(),
            })?,
        None => settings.platform.clone(),
    };
    for secret in cache.spec.image_pull_secrets.iter().flatten() {
        options
            .credentials
            .merge(secret_credentials(client, &name, secret).await?);
    }
    Ok((options, platform))
}

async fn secret_credentials(
    client: &kube::Client,
    cache: &str,
    secret: &str,
) -> Result<Credentials, CacheError> {
    let bad = |reason: String| CacheError::BadSecret {
        cache: cache.to_owned(),
        secret: secret.to_owned(),
        reason,
    };
    let Some((namespace, secret_name)) = secret.split_once(':') else {
        return Err(bad("expected namespace:name".to_owned()));
    };
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let found = api
        .get_opt(secret_name)
        .await
        .map_err(CacheError::kube(cache, "reading a pull secret"))?
        .ok_or_else(|| CacheError::MissingSecret {
            cache: cache.to_owned(),
            secret: secret.to_owned(),
        })?;
    let bytes = found
        .data
        .as_ref()
        .and_then(|d| d.get(".dockerconfigjson"))
        .map(|b| b.0.clone())
        .or_else(|| {
            found
                .string_data
                .as_ref()
                .and_then(|d| d.get(".dockerconfigjson"))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| bad("it has no .dockerconfigjson key".to_owned()))?;
    // The registry error never carries the secret's content.
    Credentials::from_dockerconfigjson(&bytes).map_err(|e| bad(e.to_string()))
}
