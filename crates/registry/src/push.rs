//! Pushing to a registry (OCI distribution spec, "push"): blobs uploaded monolithically (POST to
//! open an upload session, then one PUT carrying the whole body, streamed from its file, and the
//! `digest` the registry must find) after a HEAD that skips a blob the repository already holds,
//! and manifests PUT by digest or tag. The registry's `Docker-Content-Digest` is checked against
//! what was sent. Pushes go to the reference's own registry, never to a mirror; they use the same
//! credentials, plain-HTTP and insecure settings as pulls, with a `pull,push` token scope.

use std::path::PathBuf;

use bytes::Bytes;
use imc_api::{Digest, Reference};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION};
use tokio::io::AsyncReadExt as _;
use tracing::{debug, info};

use crate::blob::BlobDescriptor;
use crate::client::Client;
use crate::error::RegistryError;
use crate::mirror::Endpoint;

/// Bytes read from a file per chunk of a streamed upload body (bounded memory per upload).
const UPLOAD_CHUNK: usize = 256 << 10;

/// The body of a request: none, bytes in memory (small documents), or a file streamed from disk.
#[derive(Debug, Clone)]
pub(crate) enum RequestBody {
    /// No body.
    None,
    /// A small body held in memory (manifests, the empty config).
    Bytes(Bytes),
    /// A file streamed in chunks; read through tokio's file, so on the blocking pool.
    File(PathBuf),
}

impl RequestBody {
    /// Attaches the body (opening the file afresh) to `rb`.
    pub(crate) async fn attach(
        &self,
        rb: reqwest::RequestBuilder,
        image: &str,
        what: &str,
        host: &str,
    ) -> Result<reqwest::RequestBuilder, RegistryError> {
        match self {
            RequestBody::None => Ok(rb),
            RequestBody::Bytes(b) => Ok(rb.body(b.clone())),
            RequestBody::File(path) => {
                let file =
                    tokio::fs::File::open(path)
                        .await
                        .map_err(|source| RegistryError::Read {
                            path: path.clone(),
                            source,
                        })?;
                let (image, what, host) = (image.to_owned(), what.to_owned(), host.to_owned());
                let stream = futures::stream::try_unfold(file, move |mut file| {
                    let (image, what, host) = (image.clone(), what.clone(), host.clone());
                    async move {
                        let mut buf = vec![0u8; UPLOAD_CHUNK];
                        let n = file.read(&mut buf).await.map_err(|e| {
                            // Surfaces as a connection error of this request.
                            std::io::Error::other(format!(
                                "pushing {image}: reading the body of {what} for {host}: {e}"
                            ))
                        })?;
                        if n == 0 {
                            return Ok::<_, std::io::Error>(None);
                        }
                        buf.truncate(n);
                        Ok(Some((Bytes::from(buf), file)))
                    }
                });
                Ok(rb.body(reqwest::Body::wrap_stream(stream)))
            }
        }
    }
}

/// What a blob push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPush {
    /// The repository held the blob already (HEAD answered 200): nothing was uploaded.
    Existed,
    /// The blob was uploaded.
    Uploaded,
}

fn push_scope(image: &Reference) -> String {
    format!("repository:{}:pull,push", image.repository())
}

fn wrap(target: &Reference, step: &str) -> impl FnOnce(RegistryError) -> RegistryError {
    let (target, step) = (target.to_string(), step.to_owned());
    move |e| match e {
        // Already wrapped by an inner step.
        e @ RegistryError::Push { .. } => e,
        e => RegistryError::Push {
            target,
            step,
            source: Box::new(e),
        },
    }
}

/// `url` with `key=value` appended to its query.
fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

/// The registry's Docker-Content-Digest, when it sent a valid one.
fn content_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

impl Client {
    /// Whether `image`'s repository holds `digest` (HEAD on the blob), asked of the registry
    /// itself.
    pub async fn blob_exists(
        &self,
        image: &Reference,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let ep = self.push_endpoint(image);
        let url = format!("{}/v2/{}/blobs/{digest}", ep.base, image.repository());
        let what = format!("blob {digest}");
        let scope = push_scope(image);
        let answer = self
            .with_retries("blob check", || {
                self.request(
                    image,
                    &ep,
                    reqwest::Method::HEAD,
                    &url,
                    &what,
                    HeaderMap::new(),
                    &scope,
                    &RequestBody::None,
                )
            })
            .await;
        match answer {
            Ok(_) => Ok(true),
            Err(RegistryError::NotFound { .. }) => Ok(false),
            Err(e) => Err(wrap(image, &format!("checking for blob {digest}"))(e)),
        }
    }

    /// Pushes the file at `path` as blob `blob` of `image`'s repository, unless the repository
    /// holds it already. The body is streamed from the file; the caller computed `blob`'s digest
    /// and size from the same file. Transient faults are retried per the client's policy (the
    /// upload starts over).
    pub async fn push_blob_file(
        &self,
        image: &Reference,
        blob: &BlobDescriptor,
        path: &std::path::Path,
    ) -> Result<BlobPush, RegistryError> {
        self.push_blob(image, blob, RequestBody::File(path.to_path_buf()))
            .await
    }

    /// Pushes `data` as a blob of `image`'s repository (small blobs: configs).
    pub async fn push_blob_bytes(
        &self,
        image: &Reference,
        data: Bytes,
        media_type: &str,
    ) -> Result<(BlobDescriptor, BlobPush), RegistryError> {
        let blob = BlobDescriptor {
            digest: Digest::of(&data),
            size: data.len() as u64,
            media_type: media_type.to_owned(),
        };
        let pushed = self
            .push_blob(image, &blob, RequestBody::Bytes(data))
            .await?;
        Ok((blob, pushed))
    }

    async fn push_blob(
        &self,
        image: &Reference,
        blob: &BlobDescriptor,
        body: RequestBody,
    ) -> Result<BlobPush, RegistryError> {
        if self.blob_exists(image, &blob.digest).await? {
            debug!(image = %image, digest = %blob.digest, "blob already in the repository");
            return Ok(BlobPush::Existed);
        }
        let ep = self.push_endpoint(image);
        let step = format!("uploading blob {}", blob.digest);
        self.with_retries("blob upload", || self.upload_once(image, &ep, blob, &body))
            .await
            .map_err(wrap(image, &step))?;
        info!(image = %image, digest = %blob.digest, size = blob.size, "blob pushed");
        Ok(BlobPush::Uploaded)
    }

    /// One monolithic upload: POST opens the session, PUT sends the body with the digest.
    async fn upload_once(
        &self,
        image: &Reference,
        ep: &Endpoint,
        blob: &BlobDescriptor,
        body: &RequestBody,
    ) -> Result<(), RegistryError> {
        let scope = push_scope(image);
        let what = format!("upload of blob {}", blob.digest);
        let start = format!("{}/v2/{}/blobs/uploads/", ep.base, image.repository());
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
        let opened = self
            .request(
                image,
                ep,
                reqwest::Method::POST,
                &start,
                &what,
                headers,
                &scope,
                &RequestBody::None,
            )
            .await?;
        let location = opened
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::InvalidManifest {
                image: image.to_string(),
                reason: format!("{} opened an upload without a Location header", ep.host),
            })?;
        let base = reqwest::Url::parse(&start).map_err(|e| RegistryError::Options {
            reason: format!("bad registry URL {start}: {e}"),
        })?;
        let session = base
            .join(location)
            .map_err(|e| RegistryError::InvalidManifest {
                image: image.to_string(),
                reason: format!(
                    "{} answered an unusable upload Location {location:?}: {e}",
                    ep.host
                ),
            })?;
        let put = with_query(session.as_str(), "digest", &blob.digest.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(blob.size));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let done = self
            .request(
                image,
                ep,
                reqwest::Method::PUT,
                &put,
                &what,
                headers,
                &scope,
                body,
            )
            .await?;
        if let Some(answered) = content_digest(done.headers())
            && answered != blob.digest
        {
            return Err(RegistryError::DigestMismatch {
                image: image.to_string(),
                what: format!("blob {} as stored by {}", blob.digest, ep.host),
                expected: blob.digest.clone(),
                actual: answered,
            });
        }
        Ok(())
    }

    /// PUTs `manifest` (of `media_type`) under `reference` (a tag or a digest) in `image`'s
    /// repository and returns its digest, checked against the registry's answer.
    pub async fn push_manifest(
        &self,
        image: &Reference,
        reference: &str,
        manifest: Bytes,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let ep = self.push_endpoint(image);
        let digest = Digest::of(&manifest);
        let url = format!(
            "{}/v2/{}/manifests/{reference}",
            ep.base,
            image.repository()
        );
        let what = format!("manifest {reference}");
        let scope = push_scope(image);
        let mut headers = HeaderMap::new();
        let content_type =
            HeaderValue::from_str(media_type).map_err(|_| RegistryError::Options {
                reason: format!("media type {media_type:?} is not a header value"),
            })?;
        headers.insert(CONTENT_TYPE, content_type);
        let body = RequestBody::Bytes(manifest);
        let step = format!("putting manifest {reference}");
        let done = self
            .with_retries("manifest push", || {
                self.request(
                    image,
                    &ep,
                    reqwest::Method::PUT,
                    &url,
                    &what,
                    headers.clone(),
                    &scope,
                    &body,
                )
            })
            .await
            .map_err(wrap(image, &step))?;
        if let Some(answered) = content_digest(done.headers())
            && answered != digest
        {
            return Err(wrap(image, &step)(RegistryError::DigestMismatch {
                image: image.to_string(),
                what,
                expected: digest,
                actual: answered,
            }));
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_goes_into_the_upload_query() {
        for (url, want) in [
            (
                "http://r/v2/a/blobs/uploads/x",
                "http://r/v2/a/blobs/uploads/x?digest=d",
            ),
            (
                "http://r/v2/a/blobs/uploads/x?_state=abc",
                "http://r/v2/a/blobs/uploads/x?_state=abc&digest=d",
            ),
        ] {
            assert_eq!(with_query(url, "digest", "d"), want);
        }
    }
}
