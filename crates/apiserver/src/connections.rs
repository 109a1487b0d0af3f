//! Connections, defended as kube-apiserver's `http.Server` settings defend them, plus a cap:
//! a TLS handshake must finish within [`ConnectionConfig::handshake_timeout`], HTTP/1 request
//! headers within `header_read_timeout`, a connection with no open request and no traffic is
//! closed after `idle_timeout`, and at most `max_connections` are open at once. At the cap the
//! oldest connection that has not yet made an authenticated request is closed to make room,
//! so a flood of idle or handshaking sockets cannot lock kubectl out; when every connection
//! has authenticated, the new one is refused. The cap stays below the file descriptor limit,
//! which [`raise_nofile_limit`] raises to its hard maximum at start. Accept errors (EMFILE and
//! the like) back off (5 ms doubling to 1 s, as Go's server does) and are logged at most once
//! per [`LOG_EVERY`], with how many were not.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Rate of the warnings about refused or failed connections.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// How connections are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Open connections at once (lowered to fit the file descriptor limit).
    pub max_connections: usize,
    /// Time for a client to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// Time for an HTTP/1 client to send a request's headers (kube-apiserver: 32 s).
    pub header_read_timeout: Duration,
    /// A connection without open requests and without traffic this long is closed
    /// (kube-apiserver: 90 s, HTTP/1 and HTTP/2 alike).
    pub idle_timeout: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_connections: 10_000,
            // Go's own clients give up after 10 s (http.DefaultTransport), and a handshake on
            // a working link takes milliseconds.
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(32),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// Raises the soft limit on open files to the hard limit; the soft limit after (None when
/// unlimited).
pub fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return limit.maximum,
            Err(e) => {
                tracing::warn!(error = %e, "cannot raise the open files limit");
            }
        }
    }
    limit.current
}

/// The connection cap that leaves room for everything else the process opens (the state
/// database, container logs, cgroup files, registry connections): a quarter of the file
/// limit, at least 256 and at most 4096 descriptors, are kept back.
pub fn fit_cap(requested: usize, nofile: Option<u64>) -> usize {
    let Some(nofile) = nofile else {
        return requested;
    };
    let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
    let reserve = (nofile / 4).clamp(256, 4096);
    requested.min(nofile.saturating_sub(reserve)).max(1)
}

/// A warning that is printed at most once per [`LOG_EVERY`], saying how many were held back.
#[derive(Debug, Default)]
pub struct Throttled {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttled {
    /// Whether to log now; Some(number of occurrences not logged since the last time).
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < LOG_EVERY => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// One open connection, shared by its task and its requests.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    table: Weak<ConnectionTable>,
    proven: AtomicBool,
    open_requests: AtomicUsize,
    last_activity_ms: AtomicU64,
    evicted: Notify,
}

impl Connection {
    /// Marks the connection as one that made an authenticated request: it is no longer the
    /// first to go when the cap is reached.
    pub fn prove(&self) {
        if !self.proven.swap(true, Ordering::Relaxed)
            && let Some(table) = self.table.upgrade()
        {
            table.lock().unproven.remove(&self.id);
        }
    }

    /// Counts a request as open until the returned guard is dropped.
    pub fn open_request(self: &Arc<Self>) -> RequestGuard {
        self.open_requests.fetch_add(1, Ordering::Relaxed);
        self.touch();
        RequestGuard(self.clone())
    }

    fn touch(&self) {
        if let Some(table) = self.table.upgrade() {
            let now = table.started.elapsed().as_millis() as u64;
            self.last_activity_ms.store(now, Ordering::Relaxed);
        }
    }

    /// Whether the connection has had no open request and no traffic for `idle`.
    pub fn idle_for(&self, idle: Duration) -> bool {
        let Some(table) = self.table.upgrade() else {
            return true;
        };
        let now = table.started.elapsed().as_millis() as u64;
        self.open_requests.load(Ordering::Relaxed) == 0
            && now.saturating_sub(self.last_activity_ms.load(Ordering::Relaxed))
                >= idle.as_millis() as u64
    }

    /// Completes when the connection was chosen to make room for a new one.
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

/// Ends an open request's count when dropped.
#[derive(Debug)]
pub struct RequestGuard(Arc<Connection>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.open_requests.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

#[derive(Debug, Default)]
struct Table {
    open: BTreeMap<u64, Arc<Connection>>,
    /// Ids of open connections without an authenticated request yet, oldest first.
    unproven: BTreeSet<u64>,
    next_id: u64,
    refused: Throttled,
}

/// The open connections and the cap.
#[derive(Debug)]
pub struct ConnectionTable {
    table: Mutex<Table>,
    max: usize,
    started: Instant,
}

impl ConnectionTable {
    /// A table admitting at most `max` connections.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionTable {
            table: Mutex::new(Table::default()),
            max: max.max(1),
            started: Instant::now(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection: at the cap, the oldest unauthenticated one is told to go;
    /// None (refuse it) when all have authenticated.
    pub fn admit(self: &Arc<Self>) -> Option<Arc<Connection>> {
        let mut t = self.lock();
        if t.open.len() >= self.max {
            let oldest = t.unproven.pop_first();
            match oldest.and_then(|id| t.open.remove(&id)) {
                Some(victim) => victim.evicted.notify_one(),
                None => {
                    if let Some(held_back) = t.refused.check(Instant::now()) {
                        tracing::warn!(
                            max = self.max,
                            held_back,
                            "connection limit reached and every connection is authenticated: refusing new connections"
                        );
                    }
                    return None;
                }
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        let conn = Arc::new(Connection {
            id,
            table: Arc::downgrade(self),
            proven: AtomicBool::new(false),
            open_requests: AtomicUsize::new(0),
            last_activity_ms: AtomicU64::new(self.started.elapsed().as_millis() as u64),
            evicted: Notify::new(),
        });
        t.open.insert(id, conn.clone());
        t.unproven.insert(id);
        Some(conn)
    }

    /// Forgets a closed connection.
    pub fn remove(&self, conn: &Connection) {
        let mut t = self.lock();
        t.open.remove(&conn.id);
        t.unproven.remove(&conn.id);
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A socket that notes when bytes last went either way (for the idle timeout).
pub struct ActivityIo<T> {
    inner: T,
    conn: Arc<Connection>,
}

impl<T> ActivityIo<T> {
    /// `inner`, reporting its traffic to `conn`.
    pub fn new(inner: T, conn: Arc<Connection>) -> Self {
        ActivityIo { inner, conn }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_other_files() {
        for (requested, nofile, want) in [
            (10_000, None, 10_000),
            (10_000, Some(1_048_576), 10_000),
            (10_000, Some(20_000), 10_000),
            (10_000, Some(8_192), 6_144),
            (10_000, Some(1_024), 768),
            (10_000, Some(100), 1),
        ] {
            assert_eq!(fit_cap(requested, nofile), want, "{nofile:?}");
        }
    }

    #[test]
    fn warnings_are_throttled_and_counted() {
        let mut t = Throttled::default();
        let start = Instant::now();
        assert_eq!(t.check(start), Some(0));
        assert_eq!(t.check(start + Duration::from_secs(1)), None);
        assert_eq!(t.check(start + Duration::from_secs(2)), None);
        assert_eq!(t.check(start + LOG_EVERY + Duration::from_secs(1)), Some(2));
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_unauthenticated_connection_makes_room() {
        let table = ConnectionTable::new(3);
        let a = table.admit().unwrap();
        let b = table.admit().unwrap();
        let c = table.admit().unwrap();
        a.prove();
        // b is the oldest without an authenticated request: it goes.
        let d = table.admit().unwrap();
        tokio::time::timeout(Duration::from_secs(5), b.evicted())
            .await
            .unwrap();
        assert_eq!(table.len(), 3);
        c.prove();
        d.prove();
        // Everyone has authenticated: a newcomer is refused, nobody is evicted.
        assert!(table.admit().is_none());
        table.remove(&a);
        assert!(table.admit().is_some());
    }

    #[tokio::test]
    async fn a_connection_is_idle_only_without_open_requests() {
        let table = ConnectionTable::new(10);
        let conn = table.admit().unwrap();
        let guard = conn.open_request();
        assert!(!conn.idle_for(Duration::ZERO));
        drop(guard);
        assert!(conn.idle_for(Duration::ZERO));
        assert!(!conn.idle_for(Duration::from_secs(60)));
    }
}
