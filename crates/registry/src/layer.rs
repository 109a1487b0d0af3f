//! Layer descriptors: which layer media types imc accepts and how each is compressed.

use imc_api::Digest;
use serde::Serialize;

use crate::blob::BlobDescriptor;
use crate::error::RegistryError;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// One layer of a resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDescriptor {
    /// The blob as the registry holds it.
    pub blob: BlobDescriptor,
    /// How the blob is compressed.
    pub compression: Compression,
    /// Digest of the uncompressed tar, from the image config's `rootfs.diff_ids`.
    pub diff_id: Digest,
}

/// Whether a layer media type is a foreign / non-distributable one (content that must come from
/// elsewhere than the registry, like Windows base layers).
fn is_foreign(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.docker.image.rootfs.foreign.")
        || media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
}

/// The compression a layer media type implies, or why the layer cannot be used.
pub(crate) fn layer_compression(
    image: &str,
    digest: &Digest,
    media_type: &str,
) -> Result<Compression, RegistryError> {
    if is_foreign(media_type) {
        return Err(RegistryError::ForeignLayer {
            image: image.to_owned(),
            digest: digest.clone(),
            media_type: media_type.to_owned(),
        });
    }
    let compression = match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
        // Other tar layer types with a known compression suffix (e.g. vendor `...tar+zstd`).
        t if t.contains(".tar") && (t.ends_with("+zstd") || t.ends_with(".zstd")) => {
            Some(Compression::Zstd)
        }
        t if t.contains(".tar") && (t.ends_with("+gzip") || t.ends_with(".gzip")) => {
            Some(Compression::Gzip)
        }
        _ => None,
    };
    compression.ok_or_else(|| RegistryError::UnsupportedLayer {
        image: image.to_owned(),
        digest: digest.clone(),
        media_type: media_type.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        let d = Digest::of(b"x");
        let rows = [
            (
                "application/vnd.oci.image.layer.v1.tar",
                Some(Compression::None),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Some(Compression::Zstd),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar",
                Some(Compression::None),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.zstd",
                Some(Compression::Zstd),
            ),
            ("application/octet-stream", None),
        ];
        for (mt, want) in rows {
            assert_eq!(layer_compression("img", &d, mt).ok(), want, "{mt}");
        }
        for foreign in [
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        ] {
            let err = layer_compression("img", &d, foreign).expect_err("foreign");
            assert!(matches!(err, RegistryError::ForeignLayer { .. }), "{err}");
            assert!(err.to_string().contains("foreign"), "{err}");
        }
    }
}
