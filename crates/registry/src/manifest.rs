//! Manifests: OCI image manifest, Docker schema2 manifest, OCI image index and Docker manifest
//! list. Docker schema1 is recognised only to be rejected with a message saying so.

use imc_api::Digest;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::Deserialize;

use crate::error::RegistryError;
use crate::platform::Platform;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest v2 schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1 (unsigned), rejected.
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker schema 1 (signed), rejected.
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The Accept header for manifest requests. schema1 is listed so that a registry holding only a
/// schema1 manifest returns it and we can say so, instead of a vague 404.
pub(crate) const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.1, application/vnd.docker.distribution.manifest.v1+json;q=0.1";

/// Largest manifest accepted (the distribution spec suggests 4 MiB).
pub(crate) const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// The fields a manifest document is classified by before it is decoded as what it is.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shape {
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    fs_layers: Option<serde::de::IgnoredAny>,
}

/// A manifest document, classified and decoded with the OCI image-spec types of `oci-spec` (the
/// Docker schema2 manifest and manifest list have the same shape).
#[derive(Debug)]
pub(crate) enum Manifest {
    /// An image manifest (OCI or Docker schema2).
    Image(Box<ImageManifest>),
    /// An index / manifest list.
    Index(Box<ImageIndex>),
}

/// Parses and classifies a manifest body. `content_type` is the response's Content-Type.
pub(crate) fn parse(
    image: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Manifest, RegistryError> {
    let invalid = |reason: String| RegistryError::InvalidManifest {
        image: image.to_owned(),
        reason,
    };
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_owned())
        .filter(|c| !c.is_empty() && c != "application/json" && c != "text/plain");
    if let Some(ct) = &content_type
        && (ct == DOCKER_SCHEMA1 || ct == DOCKER_SCHEMA1_SIGNED)
    {
        return Err(RegistryError::Schema1 {
            image: image.to_owned(),
            media_type: ct.clone(),
        });
    }
    let shape: Shape = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("not a manifest JSON document: {e}")))?;
    if shape.schema_version == Some(1) || shape.fs_layers.is_some() {
        return Err(RegistryError::Schema1 {
            image: image.to_owned(),
            media_type: content_type.unwrap_or_else(|| DOCKER_SCHEMA1.to_owned()),
        });
    }
    let media_type = content_type.or(shape.media_type);
    let is_index = match media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => {
            return Err(RegistryError::UnsupportedManifest {
                image: image.to_owned(),
                media_type: other.to_owned(),
            });
        }
        // No media type anywhere: OCI allows that; go by shape.
        None => shape.manifests.is_some(),
    };
    if is_index {
        serde_json::from_slice(body)
            .map(|i| Manifest::Index(Box::new(i)))
            .map_err(|e| invalid(format!("not a usable index: {e}")))
    } else {
        serde_json::from_slice(body)
            .map(|m| Manifest::Image(Box::new(m)))
            .map_err(|e| invalid(format!("not a usable image manifest: {e}")))
    }
}

/// A descriptor's digest (as imc's [`Digest`], which admits sha256 only) and size.
pub(crate) fn descriptor_digest(
    image: &str,
    d: &Descriptor,
) -> Result<(Digest, u64), RegistryError> {
    let digest: Digest =
        d.digest()
            .as_ref()
            .parse()
            .map_err(|e| RegistryError::InvalidManifest {
                image: image.to_owned(),
                reason: format!("bad descriptor digest: {e}"),
            })?;
    Ok((digest, d.size()))
}

fn platform_of(d: &Descriptor) -> Option<Platform> {
    let p = d.platform().as_ref()?;
    Some(Platform::new(
        &p.os().to_string(),
        &p.architecture().to_string(),
        p.variant().as_deref(),
    ))
}

/// Picks the index entry for `wanted`: the first whose platform matches, preferring an exact
/// variant match. Entries without a platform or for `unknown/unknown` (attestations) are skipped.
pub(crate) fn select_platform<'a>(
    image: &str,
    manifests: &'a [Descriptor],
    wanted: &Platform,
) -> Result<&'a Descriptor, RegistryError> {
    let candidates: Vec<(&Descriptor, Platform)> = manifests
        .iter()
        .filter_map(|d| platform_of(d).map(|p| (d, p)))
        .filter(|(_, p)| p.os != "unknown" && p.architecture != "unknown")
        .collect();
    let exact = candidates.iter().find(|(_, p)| {
        wanted.variant.is_some() && p.variant == wanted.variant && wanted.matches(p)
    });
    if let Some((d, _)) = exact.or_else(|| candidates.iter().find(|(_, p)| wanted.matches(p))) {
        return Ok(d);
    }
    let mut available: Vec<String> = candidates.iter().map(|(_, p)| p.to_string()).collect();
    available.dedup();
    if available.is_empty() {
        available.push("(no platforms listed)".to_owned());
    }
    Err(RegistryError::NoMatchingPlatform {
        image: image.to_owned(),
        wanted: wanted.to_string(),
        available,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(platforms: &[(&str, &str, Option<&str>)]) -> Vec<Descriptor> {
        let manifests: Vec<serde_json::Value> = platforms
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                serde_json::json!({
                    "mediaType": OCI_MANIFEST,
                    "digest": Digest::of(&[i as u8]).to_string(),
                    "size": 1,
                    "platform": {"os": os, "architecture": arch, "variant": variant},
                })
            })
            .collect();
        serde_json::from_value(manifests.into()).expect("descriptors")
    }

    #[test]
    fn selects_platforms() {
        let m = index(&[
            ("linux", "amd64", None),
            ("linux", "arm", Some("v6")),
            ("linux", "arm", Some("v7")),
            ("linux", "arm64", Some("v8")),
            ("unknown", "unknown", None),
        ]);
        let pick = |s: &str| {
            select_platform("img", &m, &s.parse().expect("platform"))
                .map(|d| d.digest().to_string())
                .map_err(|e| e.to_string())
        };
        assert_eq!(pick("linux/amd64"), Ok(m[0].digest().to_string()));
        assert_eq!(pick("linux/x86_64"), Ok(m[0].digest().to_string()));
        assert_eq!(pick("linux/arm/v7"), Ok(m[2].digest().to_string()));
        assert_eq!(pick("linux/arm64"), Ok(m[3].digest().to_string()));
        let err = pick("linux/s390x").expect_err("no s390x");
        assert!(
            err.contains("linux/s390x")
                && err.contains("linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64/v8"),
            "{err}"
        );
        assert!(!err.contains("unknown"), "{err}");
    }

    #[test]
    fn classifies_documents() {
        let oci = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},"layers":[]}"#;
        assert!(matches!(parse("i", None, oci), Ok(Manifest::Image(_))));
        let no_type = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(parse("i", None, no_type), Ok(Manifest::Index(_))));
        let s1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        let err = parse("i", Some("application/json"), s1).expect_err("schema1");
        assert!(
            err.to_string().contains("schema1 is not supported"),
            "{err}"
        );
        let err = parse("i", Some(DOCKER_SCHEMA1_SIGNED), b"{}").expect_err("schema1 by type");
        assert!(matches!(err, RegistryError::Schema1 { .. }));
        let err = parse("i", Some("application/vnd.foo"), oci).expect_err("unknown type");
        assert!(matches!(err, RegistryError::UnsupportedManifest { .. }));
        let err = parse("i", None, b"<html>").expect_err("not json");
        assert!(matches!(err, RegistryError::InvalidManifest { .. }));
    }
}
