//! An OCI image layout on disk (`oci-layout`, `index.json`, `blobs/sha256/`), written blob by blob
//! while streaming, so no layer is ever held in memory.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// A `sha256:<hex>` digest and the size of the bytes it names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Descriptor {
    pub digest: String,
    pub size: u64,
}

/// A writer that hashes and counts what passes through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The inner writer and the descriptor of everything written.
    pub fn finish(self) -> (W, Descriptor) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (
            self.inner,
            Descriptor {
                digest,
                size: self.written,
            },
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An OCI image layout being written in `dir`.
#[derive(Debug)]
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// Creates the layout skeleton in `dir` (which should be empty).
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("create {}", dir.display()))?;
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
            .with_context(|| format!("write {}/oci-layout", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// An existing layout in `dir`.
    pub fn open(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// Where the blob `digest` lives.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Starts a blob: bytes written go to a temporary file and are hashed on the way.
    pub fn blob_writer(&self) -> anyhow::Result<BlobWriter> {
        let file = tempfile::NamedTempFile::new_in(self.dir.join("blobs"))
            .with_context(|| format!("create a blob file in {}", self.dir.display()))?;
        Ok(BlobWriter {
            file: HashingWriter::new(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Writes a small blob held in memory (config, manifest).
    pub fn write_blob(&self, bytes: &[u8]) -> anyhow::Result<Descriptor> {
        let mut writer = self.blob_writer()?;
        writer.write_all(bytes).context("write blob")?;
        self.commit(writer)
    }

    /// Moves a finished blob to its content address.
    pub fn commit(&self, writer: BlobWriter) -> anyhow::Result<Descriptor> {
        let (buffered, descriptor) = writer.file.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| e.into_error())
            .context("flush blob")?;
        let path = self.blob_path(&descriptor.digest);
        file.persist(&path)
            .with_context(|| format!("store blob {}", path.display()))?;
        Ok(descriptor)
    }

    /// Writes `index.json` naming one image manifest under `tag`.
    pub fn write_index(
        &self,
        manifest: &Descriptor,
        media_type: &str,
        tag: &str,
    ) -> anyhow::Result<()> {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": media_type,
                "digest": manifest.digest,
                "size": manifest.size,
                "annotations": { "org.opencontainers.image.ref.name": tag },
            }],
        });
        let bytes = serde_json::to_vec_pretty(&index).context("encode index.json")?;
        fs::write(self.dir.join("index.json"), bytes)
            .with_context(|| format!("write {}/index.json", self.dir.display()))
    }
}

/// A blob being written; finish it with [`OciLayout::commit`].
#[derive(Debug)]
pub struct BlobWriter {
    file: HashingWriter<BufWriter<tempfile::NamedTempFile>>,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_land_at_their_digest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let layout = OciLayout::create(dir.path()).expect("layout");
        let descriptor = layout.write_blob(b"hello").expect("blob");
        assert_eq!(
            descriptor.digest,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(descriptor.size, 5);
        assert_eq!(
            fs::read(layout.blob_path(&descriptor.digest)).expect("read blob"),
            b"hello"
        );
        layout
            .write_index(
                &descriptor,
                "application/vnd.oci.image.manifest.v1+json",
                "v1",
            )
            .expect("index");
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).expect("index.json"))
                .expect("json");
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "v1"
        );
        assert!(dir.path().join("oci-layout").is_file());
    }
}
