//! Proxies in front of a real registry: fault injection (resets, 5xx, flipped bytes, slow links) and bandwidth/latency shaping.
//!
//! A [`Proxy`] listens on a free `127.0.0.1` port and forwards HTTP/1.1 to one upstream
//! `host:port` (normally a real `docker-registry` from [`crate::registry`]). It parses each request
//! and response far enough to know where bodies start and end (Content-Length, chunked, or
//! close-delimited), so keep-alive connections work and a fault can target one request: a GET
//! whose path contains a pattern (e.g. `"/blobs/"`). Everything else is forwarded byte for byte.
//!
//! The proxy runs on its own thread with its own tokio runtime, so it serves requests whether the
//! test drives it from async or blocking code, and a busy test runtime cannot distort its timing.
//! It stops when the [`Proxy`] is dropped.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use std::time::Duration;
//! use imc_testkit::proxy::{Fault, Proxy, Shaping};
//!
//! let registry = "127.0.0.1:5000"; // e.g. TestRegistry::host()
//! let proxy = Proxy::start_with(registry, Shaping::link(8_000_000, Duration::from_millis(20)))?;
//! proxy.add_fault("/blobs/", Fault::ResetAfter { bytes: 1 << 20, times: 1 });
//! proxy.add_fault("/blobs/", Fault::Status { code: 500, times: 1 });
//! // ... pull `{proxy.host_port()}/repo:tag` with plain HTTP ...
//! let stats = proxy.stats();
//! println!("{} requests, {} with Range, {} faults", stats.requests, stats.range_requests, stats.faults_injected);
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, debug_span};

/// Largest request or response head the proxy accepts; registries send a few hundred bytes.
const MAX_HEAD: usize = 64 * 1024;
/// Largest slice written to the client at once; small enough that shaping stays smooth.
const MAX_CHUNK: usize = 16 * 1024;
/// Idle credit of the bandwidth bucket: after a pause, this much time's worth of bytes may go at
/// once, as on a real link whose buffers drained.
const BURST: Duration = Duration::from_millis(20);

/// Link shaping applied to what the proxy sends to clients (upstream → client).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shaping {
    /// Bandwidth in bytes per second, shared by all connections like one link; `None` = unlimited.
    pub bandwidth: Option<u64>,
    /// Added one-way latency: each new upstream connection and each request is held this long
    /// before it is forwarded, so the first byte of every response arrives this much later.
    pub latency: Duration,
}

impl Shaping {
    /// No shaping: loopback speed.
    pub fn none() -> Self {
        Self::default()
    }

    /// A link of `bytes_per_sec` with `latency` added to each request.
    pub fn link(bytes_per_sec: u64, latency: Duration) -> Self {
        Self {
            bandwidth: Some(bytes_per_sec),
            latency,
        }
    }
}

/// A fault injected into HTTP GET requests whose path contains a rule's pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward the response head and `bytes` body bytes, then close the connection (the client
    /// sees a truncated body), for the first `times` matching requests.
    ResetAfter {
        /// How many body bytes to forward before closing the connection.
        bytes: u64,
        /// How many matching requests to cut short; later ones pass untouched.
        times: u32,
    },
    /// Answer with this HTTP status (e.g. 500, 429) without contacting upstream, for the first
    /// `times` matching requests.
    Status {
        /// The HTTP status to answer with.
        code: u16,
        /// How many matching requests to answer so; later ones are forwarded.
        times: u32,
    },
    /// Invert every bit of the body byte at `offset` (0-based), for the first `times` matching
    /// requests whose body is that long.
    FlipByte {
        /// The 0-based position in the body of the byte to invert.
        offset: u64,
        /// How many matching requests to corrupt; later ones pass untouched.
        times: u32,
    },
    /// Send matching response bodies at most this fast (on top of the link's bandwidth), for every
    /// matching request.
    Slow {
        /// The most body bytes per second sent for a matching request.
        bytes_per_sec: u64,
    },
}

/// One request the proxy saw, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// Request target as sent, e.g. `/v2/bench/ref/blobs/sha256:...`.
    pub path: String,
    /// The `Range` header's value, when there was one (e.g. `bytes=1024-`).
    pub range: Option<String>,
}

/// Counters a test reads to prove what happened on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Requests seen (all methods).
    pub requests: u64,
    /// Requests that carried a `Range` header.
    pub range_requests: u64,
    /// Faults actually applied (a `FlipByte` past the end of a body does not count).
    pub faults_injected: u64,
    /// Response bytes (heads and bodies) sent to clients.
    pub bytes_to_client: u64,
}

/// A fault rule with its remaining count.
#[derive(Debug)]
struct Rule {
    pattern: String,
    fault: Fault,
    remaining: u32,
}

/// State shared by the accept loop, every connection and the test's [`Proxy`] handle.
#[derive(Debug)]
struct Shared {
    upstream: String,
    shaping: Mutex<Shaping>,
    /// Virtual clock of the shared link: the instant at which everything reserved so far has been
    /// sent. A token bucket written as a deadline.
    link_free_at: Mutex<Instant>,
    rules: Mutex<Vec<Rule>>,
    seen: Mutex<Vec<SeenRequest>>,
    connections: AtomicU64,
    requests: AtomicU64,
    range_requests: AtomicU64,
    faults_injected: AtomicU64,
    bytes_to_client: AtomicU64,
}

/// The faults chosen for one request.
#[derive(Debug, Default, Clone, Copy)]
struct Actions {
    status: Option<u16>,
    reset_after: Option<u64>,
    flip_at: Option<u64>,
    slow: Option<u64>,
}

/// A running proxy. Dropping it stops the proxy and closes every connection.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts an unshaped, fault-free proxy in front of `upstream` (`host:port`).
    pub fn start(upstream: &str) -> io::Result<Self> {
        Self::start_with(upstream, Shaping::none())
    }

    /// Starts a proxy in front of `upstream` (`host:port`) with the given shaping.
    pub fn start_with(upstream: &str, shaping: Shaping) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            shaping: Mutex::new(shaping),
            link_free_at: Mutex::new(Instant::now()),
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            range_requests: AtomicU64::new(0),
            faults_injected: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel();
        let accept_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            tokio::select! {
                                _ = accept_loop(listener, accept_shared) => {}
                                _ = stopped => {}
                            }
                        }
                        Err(error) => debug!(%error, "proxy listener unusable"),
                    }
                });
                // Dropping the runtime here cancels every connection task.
            })?;
        debug!(%addr, upstream, "proxy started");
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, the form `--plain-http` and image references want.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// The current shaping.
    pub fn shaping(&self) -> Shaping {
        *lock(&self.shared.shaping)
    }

    /// Changes the shaping; applies from the next slice of bytes on every connection.
    pub fn set_shaping(&self, shaping: Shaping) {
        *lock(&self.shared.shaping) = shaping;
    }

    /// Adds a fault for GET requests whose path contains `pattern`. Rules apply in the order
    /// added; several rules of different kinds may apply to one request.
    pub fn add_fault(&self, pattern: &str, fault: Fault) {
        let remaining = match fault {
            Fault::ResetAfter { times, .. }
            | Fault::Status { times, .. }
            | Fault::FlipByte { times, .. } => times,
            Fault::Slow { .. } => u32::MAX,
        };
        lock(&self.shared.rules).push(Rule {
            pattern: pattern.to_owned(),
            fault,
            remaining,
        });
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        lock(&self.shared.rules).clear();
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            connections: s.connections.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            range_requests: s.range_requests.load(Ordering::Relaxed),
            faults_injected: s.faults_injected.load(Ordering::Relaxed),
            bytes_to_client: s.bytes_to_client.load(Ordering::Relaxed),
        }
    }

    /// Every request seen so far, in arrival order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.shared.seen).clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // The set owns every connection task, so dropping the loop ends them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let n = shared.connections.fetch_add(1, Ordering::Relaxed);
                    let shared = shared.clone();
                    let span = debug_span!("proxy connection", n, %peer);
                    connections.spawn(async move {
                        if let Err(error) = serve_connection(&shared, client).await {
                            debug!(%error, "proxy connection ended");
                        }
                    }.instrument(span));
                }
                Err(error) => {
                    debug!(%error, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

impl Shared {
    fn shaping(&self) -> Shaping {
        *lock(&self.shaping)
    }

    fn record(&self, head: &Head) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let range = head.header("range").map(str::to_owned);
        if range.is_some() {
            self.range_requests.fetch_add(1, Ordering::Relaxed);
        }
        lock(&self.seen).push(SeenRequest {
            method: head.method().to_owned(),
            path: head.target().to_owned(),
            range,
        });
    }

    /// Picks (and uses up) the faults for one request.
    fn take_faults(&self, path: &str) -> Actions {
        let mut actions = Actions::default();
        for rule in lock(&self.rules).iter_mut() {
            if rule.remaining == 0 || !path.contains(&rule.pattern) {
                continue;
            }
            let taken = match rule.fault {
                Fault::Status { code, .. } if actions.status.is_none() => {
                    actions.status = Some(code);
                    true
                }
                Fault::ResetAfter { bytes, .. } if actions.reset_after.is_none() => {
                    actions.reset_after = Some(bytes);
                    true
                }
                Fault::FlipByte { offset, .. } if actions.flip_at.is_none() => {
                    actions.flip_at = Some(offset);
                    true
                }
                Fault::Slow { bytes_per_sec } if actions.slow.is_none() => {
                    actions.slow = Some(bytes_per_sec);
                    false
                }
                _ => false,
            };
            if taken {
                rule.remaining -= 1;
            }
        }
        actions
    }

    /// Reserves `n` bytes on the shared link; returns when they may be sent.
    fn reserve_link(&self, bytes_per_sec: u64, n: usize) -> Instant {
        let now = Instant::now();
        let mut free_at = lock(&self.link_free_at);
        let start = (*free_at).max(now.checked_sub(BURST).unwrap_or(now));
        *free_at = start + transfer_time(n, bytes_per_sec);
        *free_at
    }
}

fn transfer_time(n: usize, bytes_per_sec: u64) -> Duration {
    Duration::from_secs_f64(n as f64 / bytes_per_sec.max(1) as f64)
}

/// A parsed HTTP/1.1 request or response head, kept as raw lines for faithful forwarding.
#[derive(Debug)]
struct Head {
    /// Request or status line, without CRLF.
    first: String,
    /// Header lines `(name, value)`, in order.
    headers: Vec<(String, String)>,
}

impl Head {
    fn parse(raw: &[u8]) -> io::Result<Self> {
        let text = std::str::from_utf8(raw).map_err(|_| invalid("head is not UTF-8"))?;
        let mut lines = text.split("\r\n").flat_map(|l| l.split('\n'));
        let first = lines.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid("header without ':'"))?;
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        Ok(Self { first, headers })
    }

    fn method(&self) -> &str {
        self.first.split(' ').next().unwrap_or_default()
    }

    fn target(&self) -> &str {
        self.first.split(' ').nth(1).unwrap_or_default()
    }

    fn status(&self) -> io::Result<u16> {
        self.first
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| invalid("bad status line"))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn framing(&self) -> io::Result<Framing> {
        if self.has_token("transfer-encoding", "chunked") {
            return Ok(Framing::Chunked);
        }
        match self.header("content-length") {
            Some(len) => len
                .parse()
                .map(Framing::Length)
                .map_err(|_| invalid("bad content-length")),
            None => Ok(Framing::UntilClose),
        }
    }

    /// The head as bytes, leaving out headers named in `drop`.
    fn encode(&self, drop: &[&str]) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(self.first.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            if drop.iter().any(|d| name.eq_ignore_ascii_case(d)) {
                continue;
            }
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Reads one head (up to the blank line). `None` on a clean end of stream before any byte.
async fn read_head(reader: &mut BufReader<OwnedReadHalf>) -> io::Result<Option<Vec<u8>>> {
    let mut raw = Vec::new();
    loop {
        let start = raw.len();
        let n = reader.read_until(b'\n', &mut raw).await?;
        if n == 0 {
            return if raw.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "end of stream inside a head",
                ))
            };
        }
        if raw.len() > MAX_HEAD {
            return Err(invalid("head too large"));
        }
        let line = &raw[start..];
        if line == b"\r\n" || line == b"\n" {
            // Tolerate stray blank lines between messages (RFC 9112 §2.2).
            if start == 0 {
                raw.clear();
                continue;
            }
            return Ok(Some(raw));
        }
    }
}

/// Where forwarded bytes go: the client (shaped, counted, faults applied to the body) or the
/// upstream (plain).
struct Outbound<'a> {
    writer: &'a mut OwnedWriteHalf,
    shared: Option<&'a Shared>,
    actions: Actions,
    /// Body bytes sent so far in the current response.
    body_offset: u64,
    /// Per-response clock of a `Slow` fault.
    slow_free_at: Instant,
}

impl<'a> Outbound<'a> {
    fn to_upstream(writer: &'a mut OwnedWriteHalf) -> Self {
        Self {
            writer,
            shared: None,
            actions: Actions::default(),
            body_offset: 0,
            slow_free_at: Instant::now(),
        }
    }

    fn to_client(writer: &'a mut OwnedWriteHalf, shared: &'a Shared, actions: Actions) -> Self {
        Self {
            writer,
            shared: Some(shared),
            actions,
            body_offset: 0,
            slow_free_at: Instant::now(),
        }
    }

    /// Sends head or framing bytes (not counted as body).
    async fn send_meta(&mut self, bytes: &[u8]) -> io::Result<()> {
        for slice in bytes.chunks(MAX_CHUNK) {
            self.shape(slice.len(), false).await;
            self.writer.write_all(slice).await?;
            self.count(slice.len());
        }
        Ok(())
    }

    /// Sends body bytes, applying faults. Errors with `ConnectionAborted` once a reset fault fires.
    async fn send_body(&mut self, bytes: &mut [u8]) -> io::Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let (slice, tail) = rest.split_at_mut(rest.len().min(MAX_CHUNK));
            rest = tail;
            let start = self.body_offset;
            let end = start + slice.len() as u64;
            if let Some(offset) = self.actions.flip_at.filter(|o| (start..end).contains(o)) {
                slice[(offset - start) as usize] ^= 0xff;
                self.fault_applied("flip byte");
            }
            let mut send = slice.len();
            let reset = self.actions.reset_after.filter(|&limit| end > limit);
            if let Some(limit) = reset {
                send = limit.saturating_sub(start) as usize;
            }
            self.shape(send, true).await;
            self.writer.write_all(&slice[..send]).await?;
            self.count(send);
            self.body_offset += send as u64;
            if reset.is_some() {
                self.writer.flush().await?;
                self.fault_applied("reset");
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "injected reset",
                ));
            }
        }
        Ok(())
    }

    fn count(&self, n: usize) {
        if let Some(shared) = self.shared {
            shared
                .bytes_to_client
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    fn fault_applied(&self, what: &str) {
        if let Some(shared) = self.shared {
            shared.faults_injected.fetch_add(1, Ordering::Relaxed);
            debug!(fault = what, offset = self.body_offset, "fault injected");
        }
    }

    /// Waits until `n` bytes may go out under the link's bandwidth (and a `Slow` fault's rate).
    async fn shape(&mut self, n: usize, body: bool) {
        let Some(shared) = self.shared else { return };
        let mut deadline = None;
        if let Some(rate) = shared.shaping().bandwidth {
            deadline = Some(shared.reserve_link(rate, n));
        }
        if let (true, Some(rate)) = (body, self.actions.slow) {
            let now = Instant::now();
            let start = self.slow_free_at.max(now);
            self.slow_free_at = start + transfer_time(n, rate);
            deadline = deadline.max(Some(self.slow_free_at));
        }
        if let Some(deadline) = deadline.filter(|d| *d > Instant::now()) {
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// Copies one body with the given framing from `reader` to `out`.
async fn relay_body(
    reader: &mut BufReader<OwnedReadHalf>,
    framing: Framing,
    out: &mut Outbound<'_>,
) -> io::Result<()> {
    let mut buf = vec![0u8; MAX_CHUNK];
    match framing {
        Framing::Length(n) => relay_exact(reader, n, out, &mut buf).await,
        Framing::UntilClose => loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            out.send_body(&mut buf[..n]).await?;
        },
        Framing::Chunked => loop {
            let mut line = Vec::new();
            read_line(reader, &mut line).await?;
            out.send_meta(&line).await?;
            let text = std::str::from_utf8(&line).map_err(|_| invalid("bad chunk size"))?;
            let size_hex = text.split(';').next().unwrap_or_default().trim();
            let size = u64::from_str_radix(size_hex, 16).map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                // Trailers, then the blank line that ends the message.
                loop {
                    line.clear();
                    read_line(reader, &mut line).await?;
                    out.send_meta(&line).await?;
                    if line == b"\r\n" || line == b"\n" {
                        return Ok(());
                    }
                }
            }
            relay_exact(reader, size, out, &mut buf).await?;
            line.clear();
            read_line(reader, &mut line).await?;
            out.send_meta(&line).await?;
        },
    }
}

async fn read_line(reader: &mut BufReader<OwnedReadHalf>, line: &mut Vec<u8>) -> io::Result<()> {
    if reader.read_until(b'\n', line).await? == 0 || line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "end of stream inside chunked body",
        ));
    }
    Ok(())
}

async fn relay_exact(
    reader: &mut BufReader<OwnedReadHalf>,
    mut remaining: u64,
    out: &mut Outbound<'_>,
    buf: &mut [u8],
) -> io::Result<()> {
    while remaining > 0 {
        let want = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = reader.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "end of stream inside a body",
            ));
        }
        out.send_body(&mut buf[..n]).await?;
        remaining -= n as u64;
    }
    Ok(())
}

type Upstream = (BufReader<OwnedReadHalf>, OwnedWriteHalf);

/// Serves one client connection: request by request, in order (HTTP/1.1 clients do not pipeline).
async fn serve_connection(shared: &Shared, client: TcpStream) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let (client_read, mut client_write) = client.into_split();
    let mut client_read = BufReader::new(client_read);
    let mut upstream: Option<Upstream> = None;
    loop {
        let Some(raw) = read_head(&mut client_read).await? else {
            return Ok(());
        };
        let request = Head::parse(&raw)?;
        shared.record(&request);
        let actions = if request.method() == "GET" {
            shared.take_faults(request.target())
        } else {
            Actions::default()
        };
        let request_framing = match request.framing()? {
            // A request without length or chunking has no body (RFC 9112 §6.3).
            Framing::UntilClose => Framing::Length(0),
            framing => framing,
        };
        if request.has_token("expect", "100-continue") {
            // Answer the client ourselves and strip Expect, so no interim response has to be
            // relayed mid-body.
            client_write
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        let latency = shared.shaping().latency;

        if let Some(code) = actions.status {
            // Consume the request body so the connection stays usable, then answer.
            let mut sink = tokio::io::sink();
            discard_body(&mut client_read, request_framing, &mut sink).await?;
            tokio::time::sleep(latency).await;
            shared.faults_injected.fetch_add(1, Ordering::Relaxed);
            debug!(code, path = request.target(), "fault injected: status");
            let body =
                br#"{"errors":[{"code":"UNAVAILABLE","message":"injected by imc-testkit proxy"}]}"#;
            let mut head = format!(
                "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                reason(code),
                body.len()
            );
            if code == 429 || code == 503 {
                head.push_str("Retry-After: 0\r\n");
            }
            head.push_str("\r\n");
            let mut out = Outbound::to_client(&mut client_write, shared, Actions::default());
            out.send_meta(head.as_bytes()).await?;
            out.send_meta(body).await?;
            continue;
        }

        let mut attempt = 0;
        let (raw, head, status) = loop {
            attempt += 1;
            let reused = upstream.is_some();
            let exchanged = exchange(
                shared,
                &mut upstream,
                &request,
                request_framing,
                &mut client_read,
                &mut client_write,
            )
            .await;
            match exchanged {
                Ok(response) => break response,
                // A kept-alive upstream connection may have been closed while idle; a request
                // without a body can safely go again on a new one.
                Err(error) if reused && attempt == 1 && request_framing == Framing::Length(0) => {
                    debug!(%error, "upstream connection went away; retrying on a new one");
                    upstream = None;
                }
                Err(error) => return Err(error),
            }
        };
        let Some((upstream_read, _)) = upstream.as_mut() else {
            return Err(io::Error::other("no upstream connection after a response"));
        };
        let no_body = request.method() == "HEAD" || status == 204 || status == 304;
        let framing = if no_body {
            Framing::Length(0)
        } else {
            head.framing()?
        };
        let mut out = Outbound::to_client(&mut client_write, shared, actions);
        out.send_meta(&raw).await?;
        relay_body(upstream_read, framing, &mut out).await?;
        client_write.flush().await?;
        let close = framing == Framing::UntilClose
            || status == 101
            || head.has_token("connection", "close")
            || request.has_token("connection", "close");
        if close {
            client_write.shutdown().await?;
            return Ok(());
        }
    }
}

/// Sends one request upstream (connecting first when needed) and reads the final response head,
/// relaying interim 1xx responses to the client.
async fn exchange(
    shared: &Shared,
    upstream: &mut Option<Upstream>,
    request: &Head,
    request_framing: Framing,
    client_read: &mut BufReader<OwnedReadHalf>,
    client_write: &mut OwnedWriteHalf,
) -> io::Result<(Vec<u8>, Head, u16)> {
    let latency = shared.shaping().latency;
    let (upstream_read, upstream_write) = match upstream {
        Some(connection) => connection,
        None => {
            tokio::time::sleep(latency).await;
            let stream = TcpStream::connect(&shared.upstream).await?;
            let _ = stream.set_nodelay(true);
            let (r, w) = stream.into_split();
            upstream.insert((BufReader::new(r), w))
        }
    };
    upstream_write
        .write_all(&request.encode(&["expect"]))
        .await?;
    relay_body(
        client_read,
        request_framing,
        &mut Outbound::to_upstream(upstream_write),
    )
    .await?;
    upstream_write.flush().await?;
    tokio::time::sleep(latency).await;
    loop {
        let raw = read_head(upstream_read).await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed before answering",
            )
        })?;
        let head = Head::parse(&raw)?;
        let status = head.status()?;
        if (100..200).contains(&status) && status != 101 {
            if status != 100 {
                Outbound::to_client(client_write, shared, Actions::default())
                    .send_meta(&raw)
                    .await?;
            }
            continue;
        }
        return Ok((raw, head, status));
    }
}

async fn discard_body(
    reader: &mut BufReader<OwnedReadHalf>,
    framing: Framing,
    sink: &mut tokio::io::Sink,
) -> io::Result<()> {
    match framing {
        Framing::Length(n) => {
            tokio::io::copy(&mut (&mut *reader).take(n), sink).await?;
        }
        Framing::Chunked => loop {
            let mut line = Vec::new();
            read_line(reader, &mut line).await?;
            let text = std::str::from_utf8(&line).map_err(|_| invalid("bad chunk size"))?;
            let size = u64::from_str_radix(text.split(';').next().unwrap_or_default().trim(), 16)
                .map_err(|_| invalid("bad chunk size"))?;
            if size == 0 {
                loop {
                    line.clear();
                    read_line(reader, &mut line).await?;
                    if line == b"\r\n" || line == b"\n" {
                        return Ok(());
                    }
                }
            }
            tokio::io::copy(&mut (&mut *reader).take(size + 2), sink).await?;
        },
        Framing::UntilClose => {}
    }
    Ok(())
}

fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Injected",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::extract::State;
    use axum::routing::{get, post};

    /// Size of the test blob: several proxy slices, so faults land mid-stream.
    const BLOB_LEN: usize = 200_000;
    const BLOB_PATH: &str = "/v2/test/blobs/sha256:abc";

    fn blob() -> Vec<u8> {
        // Deterministic and not periodic at slice boundaries.
        (0..BLOB_LEN).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// A small real HTTP/1.1 server (axum on hyper) standing in for a registry. It counts the
    /// requests it really receives, so tests can prove which ones the proxy answered itself.
    struct Upstream {
        addr: SocketAddr,
        hits: Arc<AtomicU64>,
    }

    impl Upstream {
        fn hits(&self) -> u64 {
            self.hits.load(Ordering::Relaxed)
        }
    }

    async fn upstream() -> Upstream {
        let hits = Arc::new(AtomicU64::new(0));
        let app = Router::new()
            .route(
                "/v2/test/blobs/{digest}",
                get(|State(hits): State<Arc<AtomicU64>>| async move {
                    hits.fetch_add(1, Ordering::Relaxed);
                    blob()
                }),
            )
            .route(
                "/v2/test/manifests/{tag}",
                get(|State(hits): State<Arc<AtomicU64>>| async move {
                    hits.fetch_add(1, Ordering::Relaxed);
                    "manifest"
                }),
            )
            .route(
                "/chunked/blobs/x",
                get(|State(hits): State<Arc<AtomicU64>>| async move {
                    hits.fetch_add(1, Ordering::Relaxed);
                    // A streamed body has no Content-Length, so hyper sends it chunked.
                    let parts: Vec<Result<Vec<u8>, io::Error>> =
                        blob().chunks(30_000).map(|c| Ok(c.to_vec())).collect();
                    Body::from_stream(futures::stream::iter(parts))
                }),
            )
            .route(
                "/upload",
                post(
                    |State(hits): State<Arc<AtomicU64>>, body: axum::body::Bytes| async move {
                        hits.fetch_add(1, Ordering::Relaxed);
                        let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
                        format!("received {} bytes, sum {sum}", body.len())
                    },
                ),
            )
            .with_state(hits.clone());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Upstream { addr, hits }
    }

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder().build().expect("http client")
    }

    fn url(proxy: &Proxy, path: &str) -> String {
        format!("http://{}{path}", proxy.host_port())
    }

    /// Reads a body chunk by chunk, returning what arrived and whether it ended in an error.
    async fn read_body(response: reqwest::Response) -> (Vec<u8>, bool) {
        let mut response = response;
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => return (body, false),
                Err(_) => return (body, true),
            }
        }
    }

    #[tokio::test]
    async fn forwards_bodies_on_one_keep_alive_connection() {
        let upstream = upstream().await;
        let proxy = Proxy::start(&upstream.addr.to_string()).expect("proxy");
        let client = client();
        for _ in 0..3 {
            let response = client
                .get(url(&proxy, BLOB_PATH))
                .send()
                .await
                .expect("get blob");
            assert_eq!(response.status(), 200);
            assert_eq!(
                response.bytes().await.expect("blob body").as_ref(),
                blob().as_slice()
            );
        }
        let response = client
            .get(url(&proxy, "/chunked/blobs/x"))
            .send()
            .await
            .expect("get chunked");
        assert!(
            response.headers().get("content-length").is_none(),
            "upstream answered chunked"
        );
        assert_eq!(
            response.bytes().await.expect("chunked body").as_ref(),
            blob().as_slice()
        );
        let response = client
            .head(url(&proxy, BLOB_PATH))
            .send()
            .await
            .expect("head blob");
        assert_eq!(response.status(), 200);
        let upload = vec![3u8; 70_000];
        let response = client
            .post(url(&proxy, "/upload"))
            .body(upload)
            .send()
            .await
            .expect("post");
        assert_eq!(
            response.text().await.expect("post answer"),
            "received 70000 bytes, sum 210000"
        );

        let stats = proxy.stats();
        assert_eq!(stats.connections, 1, "keep-alive kept one connection");
        assert_eq!(stats.requests, 6);
        assert_eq!(upstream.hits(), 6);
        assert_eq!(stats.faults_injected, 0);
        assert!(stats.bytes_to_client > 4 * BLOB_LEN as u64);
    }

    #[tokio::test]
    async fn reset_after_truncates_the_first_matching_responses_only() {
        let upstream = upstream().await;
        let proxy = Proxy::start(&upstream.addr.to_string()).expect("proxy");
        proxy.add_fault(
            "/blobs/",
            Fault::ResetAfter {
                bytes: 50_000,
                times: 1,
            },
        );
        let client = client();

        let manifest = client
            .get(url(&proxy, "/v2/test/manifests/v1"))
            .send()
            .await
            .expect("manifest");
        assert_eq!(
            manifest.text().await.expect("manifest body"),
            "manifest",
            "path does not match"
        );

        let first = client
            .get(url(&proxy, BLOB_PATH))
            .send()
            .await
            .expect("head of first response");
        assert_eq!(first.status(), 200);
        let (body, failed) = read_body(first).await;
        assert!(failed, "the client saw the connection end inside the body");
        assert_eq!(body.len(), 50_000);
        assert_eq!(body, blob()[..50_000]);

        let second = client
            .get(url(&proxy, BLOB_PATH))
            .send()
            .await
            .expect("second request");
        assert_eq!(read_body(second).await, (blob(), false));
        assert_eq!(proxy.stats().faults_injected, 1);
    }

    #[tokio::test]
    async fn reset_after_applies_to_chunked_bodies() {
        let upstream = upstream().await;
        let proxy = Proxy::start(&upstream.addr.to_string()).expect("proxy");
        proxy.add_fault(
            "/blobs/",
            Fault::ResetAfter {
                bytes: 45_000,
                times: 1,
            },
        );
        let response = client()
            .get(url(&proxy, "/chunked/blobs/x"))
            .send()
            .await
            .expect("get");
        let (body, failed) = read_body(response).await;
        assert!(failed);
        assert_eq!(body, blob()[..45_000]);
    }

    #[tokio::test]
    async fn status_answers_without_contacting_upstream() {
        let upstream = upstream().await;
        let proxy = Proxy::start(&upstream.addr.to_string()).expect("proxy");
        proxy.add_fault(
            "/blobs/",
            Fault::Status {
                code: 500,
                times: 2,
            },
        );
        proxy.add_fault(
            "/manifests/",
            Fault::Status {
                code: 429,
                times: 1,
            },
        );
        let client = client();

        for _ in 0..2 {
            let response = client
                .get(url(&proxy, BLOB_PATH))
                .send()
                .await
                .expect("get");
            assert_eq!(response.status(), 500);
            assert!(
                response
                    .text()
                    .await
                    .expect("error body")
                    .contains("UNAVAILABLE")
            );
        }
        assert_eq!(
            upstream.hits(),
            0,
            "the proxy answered the faulted requests itself"
        );
        let response = client
            .get(url(&proxy, "/v2/test/manifests/v1"))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 429);
        assert_eq!(
            response.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
        let _ = response.bytes().await;

        let response = client
            .get(url(&proxy, BLOB_PATH))
            .send()
            .await
            .expect("third get");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.bytes().await.expect("body").as_ref(),
            blob().as_slice()
        );
        assert_eq!(upstream.hits(), 1);
        assert_eq!(proxy.stats().faults_injected, 3);
        assert_eq!(
            proxy.stats().connections,
            1,
            "faulted answers keep the connection usable"
        );
    }

    #[tokio::test]
    async fn flip_byte_changes_exactly_one_byte() {
        let upstream = upstream().await;
        let proxy = Proxy::start(&upstream.addr.to_string()).expect("proxy");
        // Past the first slice, to prove offsets are counted across slices.
        let offset = 20_000;
        proxy.add_fault("/blobs/", Fault::FlipByte { offset, times: 1 });
        let client = client();

        let body = client
            .get(url(&proxy, BLOB_PATH))
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        let expected = blob();
        let differing: Vec<usize> = (0..BLOB_LEN).filter(|&i| body[i] != expected[i]).collect();
        assert_eq!(differing, vec![offset as usize]);
        assert_eq!(body[offset as usize], !expected[offset as usize]);

        let body = client
            .get(url(&proxy, BLOB_PATH))
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert_eq!(
            body.as_ref(),
            expected.as_slice(),
            "only the first request is corrupted"
        );
        assert_eq!(proxy.stats().faults_injected, 1);
    }

    #[tokio::test]
    async fn range_headers_are_counted_and_logged() {
        let upstream = upstream().await;
        let proxy = Proxy::start(&upstream.addr.to_string()).expect("proxy");
        let client = client();
        let response = client
            .get(url(&proxy, BLOB_PATH))
            .header("Range", "bytes=1000-")
            .send()
            .await
            .expect("get");
        let _ = response.bytes().await;
        let _ = client
            .get(url(&proxy, "/v2/test/manifests/v1"))
            .send()
            .await
            .expect("get")
            .bytes()
            .await;

        assert_eq!(proxy.stats().range_requests, 1);
        assert_eq!(
            proxy.requests(),
            vec![
                SeenRequest {
                    method: "GET".into(),
                    path: BLOB_PATH.into(),
                    range: Some("bytes=1000-".into())
                },
                SeenRequest {
                    method: "GET".into(),
                    path: "/v2/test/manifests/v1".into(),
                    range: None
                },
            ]
        );
    }

    // Shaping can only be proven by time. These assert lower bounds the token bucket guarantees
    // (never "fast enough"), so a loaded machine cannot make them fail.

    #[tokio::test]
    async fn slow_fault_caps_the_rate_of_matching_bodies() {
        let upstream = upstream().await;
        let proxy = Proxy::start(&upstream.addr.to_string()).expect("proxy");
        let rate = 1_000_000;
        proxy.add_fault(
            "/blobs/",
            Fault::Slow {
                bytes_per_sec: rate,
            },
        );
        let started = Instant::now();
        let body = client()
            .get(url(&proxy, BLOB_PATH))
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert_eq!(body.len(), BLOB_LEN);
        assert!(
            started.elapsed() >= transfer_time(BLOB_LEN, rate),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn bandwidth_and_latency_shape_the_link_and_change_at_run_time() {
        let upstream = upstream().await;
        let rate = 2_000_000;
        let latency = Duration::from_millis(30);
        let proxy = Proxy::start_with(&upstream.addr.to_string(), Shaping::link(rate, latency))
            .expect("proxy");
        let client = client();

        let started = Instant::now();
        let body = client
            .get(url(&proxy, BLOB_PATH))
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert_eq!(body.len(), BLOB_LEN);
        // New connection + request: two latencies, then the body at `rate` minus the idle credit.
        let floor = 2 * latency + transfer_time(BLOB_LEN, rate) - BURST;
        assert!(
            started.elapsed() >= floor,
            "{:?} < {floor:?}",
            started.elapsed()
        );

        proxy.set_shaping(Shaping::link(rate / 4, Duration::ZERO));
        assert_eq!(proxy.shaping(), Shaping::link(rate / 4, Duration::ZERO));
        let started = Instant::now();
        let body = client
            .get(url(&proxy, BLOB_PATH))
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert_eq!(body.len(), BLOB_LEN);
        let floor = transfer_time(BLOB_LEN, rate / 4) - BURST;
        assert!(
            started.elapsed() >= floor,
            "{:?} < {floor:?}",
            started.elapsed()
        );
    }

    fn sha256(bytes: &[u8]) -> String {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
    }

    #[tokio::test]
    async fn faults_in_front_of_a_real_registry() {
        use crate::image::{self, Compression, Format, ImageBuilder, LayerBuilder};
        use crate::registry::{Auth, TestRegistry};

        let registry = TestRegistry::start(Auth::None);
        let proxy = Proxy::start(&registry.host()).expect("proxy");
        let layer = LayerBuilder::new()
            .compression(Compression::None)
            .file("data.bin", blob())
            .build();
        let built = ImageBuilder::new(Format::Oci).layer(layer).build();
        image::install_crypto_provider();
        // Pushing through the proxy proves request bodies (POST, PATCH, PUT) pass intact.
        image::push(&proxy.host_port(), "test/faults", "v1", &built, None)
            .await
            .expect("push through the proxy");
        let layer = &built.layers[0];
        let blob_url = url(&proxy, &format!("/v2/test/faults/blobs/{}", layer.digest));
        let client = client();

        proxy.add_fault(
            "/blobs/",
            Fault::ResetAfter {
                bytes: 100_000,
                times: 1,
            },
        );
        let (head, failed) = read_body(client.get(&blob_url).send().await.expect("get")).await;
        assert!(failed);
        assert_eq!(head.len(), 100_000);
        // The real registry answers a Range request for the rest through the proxy.
        let rest = client
            .get(&blob_url)
            .header("Range", format!("bytes={}-", head.len()))
            .send()
            .await
            .expect("range get");
        assert_eq!(rest.status(), 206);
        let whole = [head, rest.bytes().await.expect("rest").to_vec()].concat();
        assert_eq!(sha256(&whole), layer.digest.to_string());

        proxy.add_fault(
            "/blobs/",
            Fault::Status {
                code: 503,
                times: 1,
            },
        );
        assert_eq!(
            client.get(&blob_url).send().await.expect("get").status(),
            503
        );

        proxy.add_fault(
            "/blobs/",
            Fault::FlipByte {
                offset: 5,
                times: 1,
            },
        );
        let corrupted = client
            .get(&blob_url)
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert_eq!(corrupted.len(), layer.blob.len());
        assert_ne!(sha256(&corrupted), layer.digest.to_string());

        let clean = client
            .get(&blob_url)
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert_eq!(sha256(&clean), layer.digest.to_string());
        let manifest = client
            .get(url(&proxy, "/v2/test/faults/manifests/v1"))
            .header("Accept", built.manifest_media_type.as_str())
            .send()
            .await
            .expect("manifest");
        assert_eq!(
            manifest.bytes().await.expect("manifest body").as_ref(),
            built.manifest.as_slice()
        );

        let stats = proxy.stats();
        assert_eq!(stats.faults_injected, 3);
        assert_eq!(stats.range_requests, 1);
        assert!(
            proxy
                .requests()
                .iter()
                .any(|r| r.method == "PATCH" || r.method == "PUT")
        );
    }

    #[tokio::test]
    async fn a_request_is_retried_when_the_idle_upstream_connection_closed() {
        // An upstream that answers one request per connection and then closes it, although it
        // announced keep-alive, as a server whose idle timeout passed would.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                if read_head(&mut read).await.ok().flatten().is_some() {
                    let _ = write
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
            }
        });
        let proxy = Proxy::start(&addr.to_string()).expect("proxy");
        let client = client();
        for _ in 0..2 {
            let response = client.get(url(&proxy, "/v2/")).send().await.expect("get");
            assert_eq!(response.text().await.expect("body"), "ok");
        }
        assert_eq!(
            proxy.stats().connections,
            1,
            "the client kept its connection"
        );
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            2,
            "the proxy reconnected upstream"
        );
    }

    #[test]
    fn dropping_the_proxy_closes_its_port() {
        let proxy = Proxy::start("127.0.0.1:9").expect("proxy");
        let addr = proxy.addr();
        assert!(std::net::TcpStream::connect(addr).is_ok());
        drop(proxy);
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "port {addr} still accepts"
        );
    }
}
