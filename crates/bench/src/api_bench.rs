//! `imc-bench api`: the API server's own cost (issue 4, DESIGN §7): sequential ImageCache creates
//! per second, the list of 10,000 ImageCaches and watch event latency, against a real
//! `imc server --api-only` with a fresh data dir; the baseline is the same kube-rs client's
//! `GET /version` (the HTTP + TLS round trip every request pays) in the same run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use imc_api::ImageCache;
use imc_testkit::apiserver::TestServer;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use crate::machine::{Machine, load_average};
use crate::report::{Figure, Report, Target, median, percentile};

/// What to measure and how.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    pub imc: PathBuf,
    /// ImageCaches created (one at a time) and then listed.
    pub objects: usize,
    /// Full lists timed.
    pub lists: usize,
    /// Patches whose watch event is timed.
    pub watch_events: usize,
}

fn cache(name: &str) -> anyhow::Result<ImageCache> {
    serde_json::from_value(json!({
        "apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
        "metadata": {"name": name},
        "spec": {"images": ["registry.example/ns/app:1"]}
    }))
    .context("build an ImageCache")
}

/// Latency (ms) of `n` overwrites of 4 KiB in a preallocated file, each followed by
/// fdatasync, in `dir`: a durable commit's cost on this disk before any server work (SQLite's
/// WAL is rewritten in place the same way once it has reached its size, so no metadata change).
fn fsync_floor(dir: &Path, n: usize) -> anyhow::Result<Vec<f64>> {
    use std::os::unix::fs::FileExt;
    const SLOTS: u64 = 1024;
    let path = dir.join("bench-fsync-probe");
    let file = std::fs::File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    let block = [7u8; 4096];
    for slot in 0..SLOTS {
        file.write_all_at(&block, slot * 4096)
            .with_context(|| format!("fill {}", path.display()))?;
    }
    file.sync_all()
        .with_context(|| format!("sync {}", path.display()))?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        file.write_all_at(&block, (i % SLOTS) * 4096)
            .and_then(|()| file.sync_data())
            .with_context(|| format!("write {}", path.display()))?;
        out.push(ms(t.elapsed()));
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the whole API benchmark.
pub fn run(options: &ApiOptions) -> anyhow::Result<Report> {
    let load_before = load_average();
    if !options.imc.is_file() {
        bail!("no imc binary at {}", options.imc.display());
    }
    let server =
        TestServer::start_api_only(&options.imc, None).context("start imc server --api-only")?;
    eprintln!(
        "imc server --api-only on {} (data dir {})",
        server.addr(),
        server.data_dir().display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a tokio runtime")?;
    let figures = runtime.block_on(measure(&server, options))?;
    Ok(Report {
        machine: Machine::describe(),
        image: "-".into(),
        imc: options.imc.display().to_string(),
        load_average_before: load_before,
        load_average_after: load_average(),
        figures,
        notes: vec![
            format!(
                "one kube-rs client, one request in flight; {} creates, {} lists, {} watch events; data dir on {}",
                options.objects,
                options.lists,
                options.watch_events,
                server.data_dir().display()
            ),
            "baseline = GET /version by the same client (HTTP/2 + TLS round trip, no storage)"
                .into(),
        ],
        imc_not_available: None,
    })
}

async fn measure(server: &TestServer, options: &ApiOptions) -> anyhow::Result<Vec<Figure>> {
    let client = server.client().await.context("kube client")?;
    let api: Api<ImageCache> = Api::all(client.clone());

    // The floor: what one request costs with nothing behind it.
    let mut version = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        client.apiserver_version().await.context("GET /version")?;
        version.push(ms(t.elapsed()));
    }
    let version_p50 = median(&version).unwrap_or(f64::NAN);
    // The storage floor: one durable append in the server's data dir (a create commits once).
    let fsyncs = fsync_floor(server.data_dir(), 500)?;

    eprintln!("creating {} ImageCaches one at a time", options.objects);
    let mut creates = Vec::with_capacity(options.objects);
    let started = Instant::now();
    for i in 0..options.objects {
        let t = Instant::now();
        api.create(&PostParams::default(), &cache(&format!("bench-{i}"))?)
            .await
            .with_context(|| format!("create ImageCache bench-{i}"))?;
        creates.push(ms(t.elapsed()));
    }
    let creates_per_sec = options.objects as f64 / started.elapsed().as_secs_f64();
    // The same number of /version requests the same way: the rate the transport alone allows.
    let version_per_sec = 1e3 / version_p50;

    eprintln!(
        "listing {} ImageCaches {} times",
        options.objects, options.lists
    );
    let mut lists = Vec::new();
    for _ in 0..options.lists {
        let t = Instant::now();
        let list = api
            .list(&ListParams::default())
            .await
            .context("list ImageCaches")?;
        lists.push(ms(t.elapsed()));
        if list.items.len() != options.objects {
            bail!(
                "listed {} ImageCaches, created {}",
                list.items.len(),
                options.objects
            );
        }
    }

    // The same list as raw JSON: the server's share, without kube-rs decoding 10,000 objects.
    let mut raw_lists = Vec::new();
    for _ in 0..options.lists {
        let request = kube::core::Request::new("/apis/eci.alibabacloud.com/v1/imagecaches")
            .list(&ListParams::default())
            .context("build a list request")?;
        let t = Instant::now();
        let text = client
            .request_text(request)
            .await
            .context("list ImageCaches (raw)")?;
        raw_lists.push(ms(t.elapsed()));
        if text.len() < options.objects {
            bail!(
                "a raw list of {} ImageCaches returned {} bytes",
                options.objects,
                text.len()
            );
        }
    }

    eprintln!("timing {} watch events", options.watch_events);
    let rv = api
        .list_metadata(&ListParams::default().limit(1))
        .await
        .context("list for a resourceVersion")?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .context("watch ImageCaches")?
        .boxed();
    let (mut events, mut acks) = (Vec::new(), Vec::new());
    for i in 0..options.watch_events {
        let name = format!("bench-{}", i % options.objects.max(1));
        let t = Instant::now();
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"n": i.to_string()}}})),
        )
        .await
        .with_context(|| format!("patch {name}"))?;
        acks.push(ms(t.elapsed()));
        loop {
            match stream.next().await {
                Some(Ok(WatchEvent::Modified(o))) if o.metadata.name.as_deref() == Some(&name) => {
                    break;
                }
                Some(Ok(_)) => continue,
                other => bail!("the watch ended: {other:?}"),
            }
        }
        events.push(ms(t.elapsed()));
    }

    drop(stream);
    let target = format!("bench-{}", options.objects.saturating_sub(1));
    eprintln!("{CONCURRENT_CLIENTS} clients, {CONCURRENT_GETS} GETs each, at once");
    let concurrent = concurrent_gets(server, &target).await?;
    eprintln!("{IDLE_SOCKETS} idle connections (no TLS handshake) held open");
    let (idle_gets, idle_versions) = with_idle_sockets(server, &client, &api, &target).await?;

    let after_ack: Vec<f64> = events.iter().zip(&acks).map(|(e, a)| e - a).collect();
    let base = |name: &str,
                imc: Option<f64>,
                baseline: Option<f64>,
                unit,
                aggregate,
                target,
                runs: &[f64],
                base_runs: &[f64]| Figure {
        name: name.to_owned(),
        unit,
        imc,
        baseline_name: "GET /version".into(),
        baseline,
        target,
        aggregate,
        imc_runs: runs.to_vec(),
        baseline_runs: base_runs.to_vec(),
    };
    Ok(vec![
        base(
            "ImageCache creates/s, one at a time",
            Some(creates_per_sec),
            Some(version_per_sec),
            "/s",
            "rate",
            Target::AtLeast(3000.0),
            &[creates_per_sec],
            &[version_per_sec],
        ),
        base(
            "create latency",
            median(&creates),
            Some(version_p50),
            "ms",
            "p50",
            Target::None,
            &creates,
            &version,
        ),
        Figure {
            baseline_name: "4 KiB overwrite + fdatasync, same dir".into(),
            ..base(
                "create latency",
                median(&creates),
                median(&fsyncs),
                "ms",
                "p50",
                Target::None,
                &creates,
                &fsyncs,
            )
        },
        base(
            "create latency",
            percentile(&creates, 0.99),
            percentile(&version, 0.99),
            "ms",
            "p99",
            Target::None,
            &creates,
            &version,
        ),
        base(
            &format!("list of {} ImageCaches", options.objects),
            median(&lists),
            Some(version_p50),
            "ms",
            "p50",
            Target::AtMost(50.0),
            &lists,
            &version,
        ),
        base(
            &format!("list of {} ImageCaches", options.objects),
            percentile(&lists, 1.0),
            percentile(&version, 1.0),
            "ms",
            "max",
            Target::None,
            &lists,
            &version,
        ),
        base(
            "watch: patch sent -> event received",
            percentile(&events, 0.99),
            percentile(&version, 0.99),
            "ms",
            "p99",
            Target::AtMost(1.0),
            &events,
            &version,
        ),
        base(
            &format!(
                "list of {} ImageCaches, raw JSON (no client decode)",
                options.objects
            ),
            median(&raw_lists),
            Some(version_p50),
            "ms",
            "p50",
            Target::None,
            &raw_lists,
            &version,
        ),
        base(
            "watch: event after the patch response",
            percentile(&after_ack, 0.99),
            percentile(&version, 0.99),
            "ms",
            "p99",
            Target::None,
            &after_ack,
            &version,
        ),
        base(
            "watch: patch sent -> event received",
            median(&events),
            Some(version_p50),
            "ms",
            "p50",
            Target::None,
            &events,
            &version,
        ),
        base(
            &format!("GET one ImageCache, {CONCURRENT_CLIENTS} clients at once"),
            percentile(&concurrent, 0.99),
            percentile(&version, 0.99),
            "ms",
            "p99",
            Target::None,
            &concurrent,
            &version,
        ),
        base(
            &format!("GET one ImageCache, {CONCURRENT_CLIENTS} clients at once"),
            median(&concurrent),
            Some(version_p50),
            "ms",
            "p50",
            Target::None,
            &concurrent,
            &version,
        ),
        base(
            &format!("GET one ImageCache, {IDLE_SOCKETS} idle connections open"),
            percentile(&idle_gets, 0.99),
            percentile(&idle_versions, 0.99),
            "ms",
            "p99",
            Target::None,
            &idle_gets,
            &idle_versions,
        ),
        base(
            "patch response (ack) alone",
            percentile(&acks, 0.99),
            percentile(&version, 0.99),
            "ms",
            "p99",
            Target::None,
            &acks,
            &version,
        ),
    ])
}

/// Clients that each hold their own connection and send at the same time.
const CONCURRENT_CLIENTS: usize = 200;
/// GETs each of them sends, one after the other.
const CONCURRENT_GETS: usize = 20;
/// Idle TCP connections (no TLS handshake, no token) held open while GETs are timed.
const IDLE_SOCKETS: usize = 2000;

/// Latency of every GET of ImageCache `name` by [`CONCURRENT_CLIENTS`] clients at once, each
/// with its own connection.
async fn concurrent_gets(server: &TestServer, name: &str) -> anyhow::Result<Vec<f64>> {
    let mut clients = Vec::with_capacity(CONCURRENT_CLIENTS);
    for _ in 0..CONCURRENT_CLIENTS {
        let client = server.client().await.context("kube client")?;
        let api: Api<ImageCache> = Api::all(client);
        // The connection is made before the clock starts.
        api.get(name).await.context("first GET")?;
        clients.push(api);
    }
    let runs = clients.into_iter().map(|api| async move {
        let mut times = Vec::with_capacity(CONCURRENT_GETS);
        for _ in 0..CONCURRENT_GETS {
            let t = Instant::now();
            api.get(name).await.context("GET ImageCache")?;
            times.push(ms(t.elapsed()));
        }
        anyhow::Ok(times)
    });
    let mut all = Vec::with_capacity(CONCURRENT_CLIENTS * CONCURRENT_GETS);
    for times in futures::future::join_all(runs).await {
        all.extend(times?);
    }
    Ok(all)
}

/// (GET of ImageCache `name`, GET /version) latencies, 500 each, while [`IDLE_SOCKETS`] TCP
/// connections that never start a TLS handshake are held open (timed within the server's 10 s
/// handshake timeout, so all of them are open throughout).
async fn with_idle_sockets(
    server: &TestServer,
    client: &kube::Client,
    api: &Api<ImageCache>,
    name: &str,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut sockets = Vec::with_capacity(IDLE_SOCKETS);
    for i in 0..IDLE_SOCKETS {
        let socket = tokio::net::TcpStream::connect(server.addr())
            .await
            .with_context(|| format!("idle connection {i}"))?;
        sockets.push(socket);
    }
    let (mut gets, mut versions) = (Vec::new(), Vec::new());
    for _ in 0..500 {
        let t = Instant::now();
        api.get(name).await.context("GET ImageCache")?;
        gets.push(ms(t.elapsed()));
        let t = Instant::now();
        client.apiserver_version().await.context("GET /version")?;
        versions.push(ms(t.elapsed()));
    }
    drop(sockets);
    Ok((gets, versions))
}
