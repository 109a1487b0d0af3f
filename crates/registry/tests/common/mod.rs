//! Shared helpers of the registry integration tests: building and pushing images, a client for a
//! test registry, and downloading a whole image.

#![allow(dead_code)]

use std::time::Duration;

use imc_api::Reference;
use imc_registry::{Client, Credentials, Platform, RegistryOptions, ResolvedImage, RetryPolicy};
use imc_testkit::image::{
    BuiltImage, Compression, Format, ImageBuilder, ImageConfig, LayerBuilder,
};

/// Quick retries so fault tests finish fast; same logic as the default policy.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 5,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
    }
}

/// A client speaking plain HTTP to `hosts`.
pub fn client_for(hosts: &[&str], credentials: Credentials) -> Client {
    Client::new(RegistryOptions {
        plain_http: hosts.iter().map(|h| (*h).to_owned()).collect(),
        credentials,
        retry: fast_retry(),
        ..Default::default()
    })
    .expect("client")
}

pub fn reference(s: &str) -> Reference {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

pub fn amd64() -> Platform {
    "linux/amd64".parse().expect("platform")
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// An image with one layer per compression (none, gzip, zstd) in `format`.
pub fn three_layer_image(format: Format) -> BuiltImage {
    let mut b = ImageBuilder::new(format).config(ImageConfig {
        entrypoint: Some(vec!["/bin/app".into()]),
        ..Default::default()
    });
    for (i, c) in [Compression::None, Compression::Gzip, Compression::Zstd]
        .into_iter()
        .enumerate()
    {
        b = b.layer(
            LayerBuilder::new()
                .compression(c)
                .file(&format!("layer{i}/data"), noise(20_000, i as u64))
                .build(),
        );
    }
    b.build()
}

/// An image whose single uncompressed layer is `size` bytes of noise (so byte offsets in the
/// blob are predictable for fault injection).
pub fn big_layer_image(size: usize) -> BuiltImage {
    ImageBuilder::new(Format::Oci)
        .layer(
            LayerBuilder::new()
                .compression(Compression::None)
                .file("big.bin", noise(size, 42))
                .build(),
        )
        .build()
}

/// Downloads every layer of `resolved` into temp files and returns their bytes.
pub async fn fetch_layers(client: &Client, resolved: &ResolvedImage) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut out = Vec::new();
    for (i, layer) in resolved.layers.iter().enumerate() {
        let path = dir.path().join(format!("layer{i}"));
        let mut file = tokio::fs::File::create(&path).await.expect("create");
        client
            .fetch_blob_to(&resolved.reference, &layer.blob, &mut file, &|_| {})
            .await
            .unwrap_or_else(|e| panic!("fetch layer {i}: {e}"));
        drop(file);
        out.push(std::fs::read(&path).expect("read layer"));
    }
    out
}

/// Asserts `resolved` is exactly `built`, and its blobs download byte-identical.
pub async fn assert_pulls_as_built(client: &Client, resolved: &ResolvedImage, built: &BuiltImage) {
    assert_eq!(resolved.manifest_digest, built.manifest_digest);
    assert_eq!(resolved.manifest, built.manifest);
    assert_eq!(resolved.config.digest, built.config_digest);
    assert_eq!(resolved.config_bytes, built.config);
    assert_eq!(resolved.layers.len(), built.layers.len());
    for (got, want) in resolved.layers.iter().zip(&built.layers) {
        assert_eq!(got.blob.digest, want.digest);
        assert_eq!(got.blob.size, want.blob.len() as u64);
        assert_eq!(got.diff_id, want.diff_id);
        let want_c = match want.compression {
            Compression::None => imc_registry::Compression::None,
            Compression::Gzip => imc_registry::Compression::Gzip,
            Compression::Zstd => imc_registry::Compression::Zstd,
        };
        assert_eq!(got.compression, want_c);
    }
    let blobs = fetch_layers(client, resolved).await;
    for (got, want) in blobs.iter().zip(&built.layers) {
        assert!(got == &want.blob, "layer {} bytes differ", want.digest);
    }
}

/// Standard base64, as Docker config files and Basic auth use it.
pub fn base64_std(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}
