//! The registry client: resolves a reference to a platform manifest, its verified config and its
//! layers, sending requests to the right endpoint (registry, plain HTTP, mirror) with the right
//! authorization, and retrying transient faults.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use imc_api::{Digest, Reference};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use tracing::{Instrument as _, debug, info_span, warn};

use crate::auth::{Authenticator, parse_challenge};
use crate::blob::BlobDescriptor;
use crate::error::{RegistryAnswer, RegistryError};
use crate::layer::{LayerDescriptor, layer_compression};
use crate::push::RequestBody;
use oci_spec::image::{Descriptor, RootFs};

use crate::manifest::{self, MAX_MANIFEST_BYTES, Manifest, descriptor_digest, select_platform};
use crate::mirror::{Endpoint, Mirrors};
use crate::options::RegistryOptions;
use crate::platform::Platform;

/// Largest image config accepted; real ones are a few KiB, large ones a few hundred.
pub(crate) const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// How many index levels are followed before giving up (an index may name another index).
const MAX_INDEX_DEPTH: usize = 3;

/// A registry client. Cheap to clone (an `Arc` inside); Send + Sync.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    http: reqwest::Client,
    /// Used only for hosts listed in `insecure`: it does not verify TLS certificates.
    insecure_http: reqwest::Client,
    pub(crate) options: RegistryOptions,
    mirrors: Mirrors,
    auth: Authenticator,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // RegistryOptions' Debug goes through Credentials' Debug, which redacts secrets.
        f.debug_struct("Client")
            .field("options", &self.inner.options)
            .finish()
    }
}

/// An image resolved to one platform: manifest, verified config and layers.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference as asked (original name, even when fetched via a mirror).
    pub reference: Reference,
    /// Digest of the platform manifest (not of the index).
    pub manifest_digest: Digest,
    /// Raw platform manifest bytes.
    pub manifest: Vec<u8>,
    /// The config blob's descriptor.
    pub config: BlobDescriptor,
    /// Raw config bytes, verified against `config.digest`.
    pub config_bytes: Vec<u8>,
    /// Layers, bottom first.
    pub layers: Vec<LayerDescriptor>,
}

/// The host whose credentials apply besides the endpoint's own: the reference's registry, except
/// for a mirror, which gets only its own credentials, never those of the registry it stands in for.
fn fallback_host<'a>(image: &'a Reference, ep: &'a Endpoint) -> &'a str {
    if ep.mirrored {
        &ep.host
    } else {
        image.registry()
    }
}

/// Renders a reqwest error with its causes (e.g. "error sending request: connection refused"),
/// which carry no credentials: URLs never hold them and headers are not part of errors.
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut text = e.without_url_ref().to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Whether a request failed in the TLS handshake (untrusted or invalid certificate, protocol
/// mismatch): retrying cannot help, so these are not connection faults.
fn is_tls_error(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        source = s.source();
    }
    // The TLS error may sit behind a boxed connector error that hides its type; its text is
    // rustls's own wording.
    let text = describe_reqwest(e);
    text.contains("peer certificate") || text.contains("received corrupt message")
}

/// A Retry-After header in seconds (HTTP dates are ignored: registries send seconds).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

trait WithoutUrlRef {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrlRef for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut text = self.to_string();
        if let Some(url) = self.url() {
            text = text
                .replace(&format!(" ({url})"), "")
                .replace(url.as_str(), "");
        }
        text
    }
}

impl Client {
    /// Builds a client. Installs the ring rustls crypto provider (reqwest is built without one).
    pub fn new(options: RegistryOptions) -> Result<Self, RegistryError> {
        // Err means some provider is already installed, which is all we need.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let build = |insecure: bool| {
            reqwest::Client::builder()
                .user_agent(concat!("imc/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(30))
                // A stall this long on one read is a dead connection; the retry resumes it.
                .read_timeout(Duration::from_secs(60))
                .tls_danger_accept_invalid_certs(insecure)
                .build()
                .map_err(|e| RegistryError::Options {
                    reason: format!("cannot build the HTTP client: {}", describe_reqwest(&e)),
                })
        };
        if options.retry.attempts == 0 {
            return Err(RegistryError::Options {
                reason: "retry attempts must be at least 1".to_owned(),
            });
        }
        let mirrors = Mirrors::new(&options.mirrors)?;
        Ok(Client {
            inner: Arc::new(Inner {
                http: build(false)?,
                insecure_http: build(true)?,
                auth: Authenticator::new(options.credentials.clone()),
                mirrors,
                options,
            }),
        })
    }

    pub(crate) fn endpoint(&self, image: &Reference) -> Endpoint {
        self.inner.mirrors.endpoint(image, &self.inner.options)
    }

    /// The endpoint pushes to `image` go to: its own registry, never a mirror.
    pub(crate) fn push_endpoint(&self, image: &Reference) -> Endpoint {
        Mirrors::direct(image, &self.inner.options)
    }

    fn http_for(&self, ep: &Endpoint) -> &reqwest::Client {
        if self.inner.options.insecure.iter().any(|h| h == &ep.host) {
            &self.inner.insecure_http
        } else {
            &self.inner.http
        }
    }

    /// GETs `url` for `image`, answering one auth challenge. Returns the response when it is a
    /// success (2xx); otherwise the error the status means, with the registry's answer.
    pub(crate) async fn get(
        &self,
        image: &Reference,
        ep: &Endpoint,
        url: &str,
        what: &str,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, RegistryError> {
        let scope = format!("repository:{}:pull", image.repository());
        self.request(
            image,
            ep,
            reqwest::Method::GET,
            url,
            what,
            headers,
            &scope,
            &RequestBody::None,
        )
        .await
    }

    /// Sends one request for `image` with the authorization `scope` needs, answering one auth
    /// challenge (the body is built again for the second try, so a file is streamed afresh).
    /// Returns the response when it is a success (2xx); otherwise the error the status means.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn request(
        &self,
        image: &Reference,
        ep: &Endpoint,
        method: reqwest::Method,
        url: &str,
        what: &str,
        headers: HeaderMap,
        scope: &str,
        body: &RequestBody,
    ) -> Result<reqwest::Response, RegistryError> {
        let image_name = image.to_string();
        let http = self.http_for(ep);
        let auth = &self.inner.auth;
        let fallback_host = fallback_host(image, ep);
        let connection_err = |e: reqwest::Error| {
            if is_tls_error(&e) {
                RegistryError::Tls {
                    image: image_name.clone(),
                    host: ep.host.clone(),
                    reason: describe_reqwest(&e),
                }
            } else {
                RegistryError::Connection {
                    image: image_name.clone(),
                    what: what.to_owned(),
                    host: ep.host.clone(),
                    reason: describe_reqwest(&e),
                }
            }
        };
        let mut answered = false;
        loop {
            let mut rb = http.request(method.clone(), url).headers(headers.clone());
            if let Some(value) = auth.authorization(&ep.host, fallback_host, scope) {
                rb = rb.header(AUTHORIZATION, value);
            }
            rb = body.attach(rb, &image_name, what, &ep.host).await?;
            let resp = rb.send().await.map_err(connection_err)?;
            let status = resp.status().as_u16();
            if status == 401 && !answered {
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                if let Some(challenge) = challenge {
                    answered = true;
                    debug!(host = %ep.host, "answering auth challenge");
                    if auth
                        .answer(
                            http,
                            &image_name,
                            &ep.host,
                            fallback_host,
                            scope,
                            &challenge,
                        )
                        .await?
                    {
                        continue;
                    }
                }
            }
            if resp.status().is_success() {
                return Ok(resp);
            }
            return Err(self.status_error(image, ep, what, resp).await);
        }
    }

    /// The error an unsuccessful answer means, with the registry's answer read from the body.
    async fn status_error(
        &self,
        image: &Reference,
        ep: &Endpoint,
        what: &str,
        resp: reqwest::Response,
    ) -> RegistryError {
        let status = resp.status().as_u16();
        let after = retry_after(resp.headers());
        let body = read_limited(resp, 64 << 10).await.unwrap_or_default();
        let mut answer = RegistryAnswer::from_body(status, &body);
        answer.retry_after = after;
        let image_name = image.to_string();
        match status {
            401 | 403 => {
                let hint = if self
                    .inner
                    .auth
                    .has_credentials(&ep.host, fallback_host(image, ep))
                {
                    format!("; check the credentials configured for {}", ep.host)
                } else {
                    format!("; no credentials are configured for {}", ep.host)
                };
                RegistryError::AccessDenied {
                    image: image_name,
                    host: ep.host.clone(),
                    answer: Box::new(answer),
                    hint,
                }
            }
            404 => RegistryError::NotFound {
                image: image_name,
                what: what.to_owned(),
                host: ep.host.clone(),
                answer: Box::new(answer),
            },
            _ => RegistryError::Status {
                image: image_name,
                what: what.to_owned(),
                host: ep.host.clone(),
                answer: Box::new(answer),
            },
        }
    }

    /// Runs `op` until it succeeds, fails for good, or the retry policy is used up.
    pub(crate) async fn with_retries<T, F, Fut>(
        &self,
        what: &str,
        mut op: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let policy = &self.inner.options.retry;
        let mut failures = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && failures + 1 < policy.attempts => {
                    failures += 1;
                    let wait = policy.backoff(failures, e.retry_after());
                    warn!(what, attempt = failures, wait_ms = wait.as_millis() as u64, error = %e, "transient registry fault, retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Resolves `image` for `platform`: the manifest (following an index or manifest list to the
    /// platform's manifest), the config blob fetched and verified, and the layers with their
    /// diffIDs from the config.
    pub async fn resolve(
        &self,
        image: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let span = info_span!("resolve", image = %image, platform = %platform);
        self.resolve_inner(image, platform).instrument(span).await
    }

    async fn resolve_inner(
        &self,
        image: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let ep = self.endpoint(image);
        let image_name = image.to_string();
        let mut reference = image.manifest_ref();
        let mut expected: Option<(Digest, Option<u64>)> = image.digest().map(|d| (d.clone(), None));
        for _ in 0..MAX_INDEX_DEPTH {
            let (bytes, digest, manifest) = self
                .with_retries("manifest", || {
                    self.fetch_manifest(image, &ep, &reference, expected.as_ref())
                })
                .await?;
            match manifest {
                Manifest::Index(index) => {
                    let entry = select_platform(&image_name, index.manifests(), platform)?;
                    let (d, size) = descriptor_digest(&image_name, entry)?;
                    debug!(index = %digest, manifest = %d, "selected platform manifest");
                    reference = d.to_string();
                    expected = Some((d, Some(size)));
                }
                Manifest::Image(m) => {
                    return self
                        .finish_resolve(image, &ep, digest, bytes, m.config(), m.layers())
                        .await;
                }
            }
        }
        Err(RegistryError::InvalidManifest {
            image: image_name,
            reason: format!("more than {MAX_INDEX_DEPTH} nested indexes"),
        })
    }

    async fn finish_resolve(
        &self,
        image: &Reference,
        ep: &Endpoint,
        manifest_digest: Digest,
        manifest: Vec<u8>,
        config: &Descriptor,
        layers: &[Descriptor],
    ) -> Result<ResolvedImage, RegistryError> {
        let image_name = image.to_string();
        let (config_digest, config_size) = descriptor_digest(&image_name, config)?;
        let config_desc = BlobDescriptor {
            digest: config_digest,
            size: config_size,
            media_type: config.media_type().to_string(),
        };
        // Check every layer before fetching anything, so an unusable image fails fast.
        let mut blobs = Vec::with_capacity(layers.len());
        for l in layers {
            let (digest, size) = descriptor_digest(&image_name, l)?;
            let media_type = l.media_type().to_string();
            let compression = layer_compression(&image_name, &digest, &media_type)?;
            blobs.push((
                BlobDescriptor {
                    digest,
                    size,
                    media_type,
                },
                compression,
            ));
        }
        let config_bytes = self
            .with_retries("config", || {
                self.fetch_small_blob(image, ep, &config_desc, MAX_CONFIG_BYTES)
            })
            .await?;
        let diff_ids = config_diff_ids(&image_name, &config_bytes)?;
        if diff_ids.len() != blobs.len() {
            return Err(RegistryError::InvalidConfig {
                image: image_name,
                reason: format!(
                    "the manifest lists {} layers but the config's rootfs.diff_ids lists {}",
                    blobs.len(),
                    diff_ids.len()
                ),
            });
        }
        let layers = blobs
            .into_iter()
            .zip(diff_ids)
            .map(|((blob, compression), diff_id)| LayerDescriptor {
                blob,
                compression,
                diff_id,
            })
            .collect();
        Ok(ResolvedImage {
            reference: image.clone(),
            manifest_digest,
            manifest,
            config: config_desc,
            config_bytes,
            layers,
        })
    }

    /// GETs one manifest and checks it: classified first (so schema1 is named as such), then its
    /// digest against the pinned/descriptor digest or the registry's Docker-Content-Digest.
    async fn fetch_manifest(
        &self,
        image: &Reference,
        ep: &Endpoint,
        reference: &str,
        expected: Option<&(Digest, Option<u64>)>,
    ) -> Result<(Vec<u8>, Digest, Manifest), RegistryError> {
        let url = format!(
            "{}/v2/{}/manifests/{reference}",
            ep.base,
            image.repository()
        );
        let what = format!("manifest {reference}");
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(manifest::ACCEPT));
        let resp = self.get(image, ep, &url, &what, headers).await?;
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let image_name = image.to_string();
        let body = read_limited(resp, MAX_MANIFEST_BYTES + 1)
            .await
            .map_err(|e| RegistryError::Connection {
                image: image_name.clone(),
                what: what.clone(),
                host: ep.host.clone(),
                reason: describe_reqwest(&e),
            })?;
        if body.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(RegistryError::InvalidManifest {
                image: image_name,
                reason: format!("{what} is larger than {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        let parsed = manifest::parse(&image_name, content_type.as_deref(), &body)?;
        let actual = Digest::of(&body);
        let want = expected.map(|(d, _)| d.clone()).or(header_digest);
        if let Some(want) = want
            && want != actual
        {
            return Err(RegistryError::DigestMismatch {
                image: image_name,
                what,
                expected: want,
                actual,
            });
        }
        if let Some((_, Some(size))) = expected
            && *size != body.len() as u64
        {
            return Err(RegistryError::SizeMismatch {
                image: image_name,
                what,
                expected: *size,
                actual: body.len() as u64,
            });
        }
        Ok((body, actual, parsed))
    }
}

/// The config's `rootfs.diff_ids`, read with the image-spec's `RootFs` type (only `rootfs` is
/// required here: a config lacking other fields still names its layers).
fn config_diff_ids(image: &str, config: &[u8]) -> Result<Vec<Digest>, RegistryError> {
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    let invalid = |reason: String| RegistryError::InvalidConfig {
        image: image.to_owned(),
        reason,
    };
    let c: Config = serde_json::from_slice(config)
        .map_err(|e| invalid(format!("no usable rootfs.diff_ids: {e}")))?;
    c.rootfs
        .diff_ids()
        .iter()
        .map(|d| d.parse().map_err(|e| invalid(format!("bad diff_id: {e}"))))
        .collect()
}

/// Reads a body, stopping after `limit` bytes (the caller decides whether more is an error).
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    limit: u64,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        out.extend_from_slice(&chunk);
        if out.len() as u64 >= limit {
            break;
        }
    }
    Ok(out)
}
