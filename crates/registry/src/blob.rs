//! Blob downloads: streamed to a file with sha256 and size verified while streaming (a blob is
//! never held whole in memory), retried with backoff, and resumed with HTTP Range.

use std::io::SeekFrom;

use imc_api::Digest;
use imc_api::Reference;
use imc_api::digest::Hasher;
use reqwest::header::{HeaderMap, HeaderValue, RANGE};
use serde::Serialize;
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};
use tracing::{Instrument as _, debug, info_span, warn};

use crate::client::{Client, describe_reqwest, read_limited};
use crate::error::RegistryError;
use crate::mirror::Endpoint;

/// Bytes gathered before one file write.
const WRITE_BATCH: usize = 1 << 20;

/// A blob as a manifest names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobDescriptor {
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Media type from the manifest.
    pub media_type: String,
}

/// How one download attempt ended short of a verified blob.
enum AttemptError {
    /// Retry (resuming where possible); `progressed` says whether bytes arrived this attempt.
    Transient {
        error: RegistryError,
        progressed: bool,
    },
    /// The content is wrong (digest or size): start again from zero.
    Corrupt(RegistryError),
    /// Give up now.
    Fatal(RegistryError),
}

/// Download state carried across attempts so a retry can resume.
struct Progress {
    written: u64,
    hasher: Hasher,
}

impl Client {
    /// Streams blob `blob` of `image` into `file` from offset 0 (truncating), verifying size and
    /// digest while streaming. Transient faults are retried per the client's `RetryPolicy`,
    /// resuming with `Range: bytes=N-` (restarting from 0 when the registry ignores Range); a
    /// digest mismatch discards what was written and retries, then fails naming expected and
    /// actual digests. `progress` gets the bytes written so far (monotonic within an attempt;
    /// it restarts at 0 when the download does). The file is NOT fsynced.
    pub async fn fetch_blob_to(
        &self,
        image: &Reference,
        blob: &BlobDescriptor,
        file: &mut tokio::fs::File,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        let span =
            info_span!("fetch_blob", image = %image, digest = %blob.digest, size = blob.size);
        self.fetch_blob_inner(image, blob, file, progress)
            .instrument(span)
            .await
    }

    async fn fetch_blob_inner(
        &self,
        image: &Reference,
        blob: &BlobDescriptor,
        file: &mut tokio::fs::File,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        let ep = self.endpoint(image);
        let policy = self.inner.options.retry.clone();
        let mut state = Progress {
            written: 0,
            hasher: Hasher::new(),
        };
        // Failures in a row without progress, and corrupt downloads: each is bounded by attempts.
        let (mut failures, mut corrupt) = (0u32, 0u32);
        loop {
            let outcome = self
                .blob_attempt(image, &ep, blob, file, &mut state, progress)
                .await;
            let (error, retry_after) = match outcome {
                Ok(()) => {
                    file.flush()
                        .await
                        .map_err(|source| write_error(image, blob, source))?;
                    return Ok(());
                }
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::Corrupt(e)) => {
                    corrupt += 1;
                    warn!(attempt = corrupt, error = %e, "blob failed verification, discarding it");
                    state = Progress {
                        written: 0,
                        hasher: Hasher::new(),
                    };
                    file.set_len(0)
                        .await
                        .map_err(|source| write_error(image, blob, source))?;
                    progress(0);
                    if corrupt >= policy.attempts {
                        return Err(e);
                    }
                    (e, None)
                }
                Err(AttemptError::Transient { error, progressed }) => {
                    failures = if progressed { 1 } else { failures + 1 };
                    if failures >= policy.attempts {
                        return Err(error);
                    }
                    let after = error.retry_after();
                    (error, after)
                }
            };
            let wait = policy.backoff(failures.max(corrupt).max(1), retry_after);
            warn!(resume_at = state.written, wait_ms = wait.as_millis() as u64, error = %error, "blob download interrupted, retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// One GET of the blob, from `state.written` on.
    async fn blob_attempt(
        &self,
        image: &Reference,
        ep: &Endpoint,
        blob: &BlobDescriptor,
        file: &mut tokio::fs::File,
        state: &mut Progress,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), AttemptError> {
        let image_name = image.to_string();
        let what = format!("blob {}", blob.digest);
        let url = format!(
            "{}/v2/{}/blobs/{}",
            ep.base,
            image.repository(),
            blob.digest
        );
        let mut headers = HeaderMap::new();
        let resume_from = state.written;
        if resume_from > 0 {
            let range = HeaderValue::from_str(&format!("bytes={resume_from}-")).map_err(|_| {
                AttemptError::Fatal(RegistryError::Options {
                    reason: "unrepresentable Range header".to_owned(),
                })
            })?;
            headers.insert(RANGE, range);
        }
        let resp = match self.get(image, ep, &url, &what, headers).await {
            Ok(r) => r,
            Err(e) if e.is_transient() => {
                return Err(AttemptError::Transient {
                    error: e,
                    progressed: false,
                });
            }
            Err(e) => return Err(AttemptError::Fatal(e)),
        };
        let partial = resp.status().as_u16() == 206;
        let range_start = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.parse::<u64>().ok());
        if resume_from > 0 && !(partial && range_start == Some(resume_from)) {
            // The registry ignored (or mangled) the Range: take the whole body from the start.
            debug!(
                resume_from,
                status = resp.status().as_u16(),
                "registry did not resume, restarting blob"
            );
            if partial {
                // A 206 for some other range is useless; ask again without Range.
                state.written = 0;
                state.hasher = Hasher::new();
                return Err(AttemptError::Transient {
                    error: RegistryError::Truncated {
                        image: image_name,
                        digest: blob.digest.clone(),
                        received: 0,
                        expected: blob.size,
                    },
                    progressed: false,
                });
            }
            state.written = 0;
            state.hasher = Hasher::new();
            progress(0);
        }
        let io = |source| AttemptError::Fatal(write_error(image, blob, source));
        file.set_len(state.written).await.map_err(io)?;
        file.seek(SeekFrom::Start(state.written))
            .await
            .map_err(io)?;
        let start = state.written;
        let mut resp = resp;
        // Chunks arrive in a few KiB; batching them cuts the per-write round trips of tokio's
        // file (each is a blocking-pool hop) by two orders of magnitude. `state.written` counts
        // pending bytes too, so they are flushed on every way out of this loop but corruption.
        let mut pending: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
        let failure = loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break None,
                Err(e) => {
                    break Some(RegistryError::Connection {
                        image: image_name.clone(),
                        what: what.clone(),
                        host: ep.host.clone(),
                        reason: describe_reqwest(&e),
                    });
                }
            };
            if state.written + chunk.len() as u64 > blob.size {
                return Err(AttemptError::Corrupt(RegistryError::SizeMismatch {
                    image: image_name,
                    what,
                    expected: blob.size,
                    actual: state.written + chunk.len() as u64,
                }));
            }
            state.hasher.update(&chunk);
            pending.extend_from_slice(&chunk);
            state.written += chunk.len() as u64;
            if pending.len() >= WRITE_BATCH {
                file.write_all(&pending).await.map_err(io)?;
                pending.clear();
            }
            progress(state.written);
        };
        file.write_all(&pending).await.map_err(io)?;
        if let Some(error) = failure {
            return Err(AttemptError::Transient {
                error,
                progressed: state.written > start,
            });
        }
        if state.written < blob.size {
            return Err(AttemptError::Transient {
                error: RegistryError::Truncated {
                    image: image_name,
                    digest: blob.digest.clone(),
                    received: state.written,
                    expected: blob.size,
                },
                progressed: state.written > start,
            });
        }
        let actual = state.hasher.clone().finish();
        if actual != blob.digest {
            return Err(AttemptError::Corrupt(RegistryError::DigestMismatch {
                image: image_name,
                what,
                expected: blob.digest.clone(),
                actual,
            }));
        }
        Ok(())
    }

    /// Fetches a small blob (an image config) into memory, verified against its descriptor.
    pub(crate) async fn fetch_small_blob(
        &self,
        image: &Reference,
        ep: &Endpoint,
        blob: &BlobDescriptor,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let image_name = image.to_string();
        let what = format!("config blob {}", blob.digest);
        if blob.size > limit {
            return Err(RegistryError::InvalidConfig {
                image: image_name,
                reason: format!(
                    "{what} is {} bytes, more than the {limit} accepted",
                    blob.size
                ),
            });
        }
        let url = format!(
            "{}/v2/{}/blobs/{}",
            ep.base,
            image.repository(),
            blob.digest
        );
        let resp = self.get(image, ep, &url, &what, HeaderMap::new()).await?;
        let body =
            read_limited(resp, blob.size + 1)
                .await
                .map_err(|e| RegistryError::Connection {
                    image: image_name.clone(),
                    what: what.clone(),
                    host: ep.host.clone(),
                    reason: describe_reqwest(&e),
                })?;
        if (body.len() as u64) < blob.size {
            return Err(RegistryError::Truncated {
                image: image_name,
                digest: blob.digest.clone(),
                received: body.len() as u64,
                expected: blob.size,
            });
        }
        let actual = Digest::of(&body);
        if actual != blob.digest {
            return Err(RegistryError::DigestMismatch {
                image: image_name,
                what,
                expected: blob.digest.clone(),
                actual,
            });
        }
        Ok(body)
    }
}

fn write_error(image: &Reference, blob: &BlobDescriptor, source: std::io::Error) -> RegistryError {
    RegistryError::Write {
        image: image.to_string(),
        digest: blob.digest.clone(),
        source,
    }
}
