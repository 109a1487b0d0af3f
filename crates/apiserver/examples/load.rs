//! Throwaway load check against a running server: creates/s, list latency, watch event latency.
//! `cargo run --release -p imc-apiserver --example load -- KUBECONFIG [CREATES]`
//! (The project's benchmark harness owns the real numbers; this is a quick probe.)

use std::time::{Duration, Instant};

use futures::StreamExt;
use imc_api::ImageCache;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

fn cache(name: &str) -> ImageCache {
    serde_json::from_value(
        json!({"apiVersion": "eci.alibabacloud.com/v1", "kind": "ImageCache",
        "metadata": {"name": name}, "spec": {"images": ["registry.example/ns/app:1"]}}),
    )
    .expect("static manifest")
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    imc_apiserver::install_crypto_provider();
    let mut args = std::env::args().skip(1);
    let kubeconfig = args.next().ok_or("usage: load KUBECONFIG [TOTAL]")?;
    let total: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let api: Api<ImageCache> = Api::all(client);

    // Sequential creates: one request in flight, each acknowledged after fsync.
    let n_seq = 1000.min(total);
    let t = Instant::now();
    for i in 0..n_seq {
        api.create(&PostParams::default(), &cache(&format!("seq-{i}")))
            .await?;
    }
    let seq = n_seq as f64 / t.elapsed().as_secs_f64();
    // Concurrent creates: 16 in flight.
    let rest = total - n_seq;
    let t = Instant::now();
    futures::stream::iter(0..rest)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &cache(&format!("par-{i}")))
                    .await
            }
        })
        .buffer_unordered(16)
        .for_each(|r| async move {
            if let Err(e) = r {
                eprintln!("create failed: {e}");
            }
        })
        .await;
    let par = rest as f64 / t.elapsed().as_secs_f64();
    println!("creates/s sequential: {seq:.0}  (16 concurrent: {par:.0})");

    let mut lists = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let l = api.list(&ListParams::default()).await?;
        lists.push(t.elapsed());
        assert_eq!(l.items.len(), total);
    }
    println!(
        "list of {total} ImageCaches (kube-rs, typed decode): p50 {:?} max {:?}",
        pct(lists.clone(), 0.5),
        pct(lists, 1.0)
    );

    let rv = api
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut stream = api.watch(&WatchParams::default(), &rv).await?.boxed();
    let mut lat = Vec::new();
    let mut e2e = Vec::new();
    for i in 0..500 {
        let name = format!("seq-{}", i % n_seq);
        let t = Instant::now();
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"n": i.to_string()}}})),
        )
        .await?;
        let acked = t.elapsed();
        loop {
            match stream.next().await {
                Some(Ok(WatchEvent::Modified(_))) => break,
                Some(Ok(_)) => continue,
                other => return Err(format!("watch ended: {other:?}").into()),
            }
        }
        let seen = t.elapsed();
        e2e.push(seen);
        lat.push(seen.saturating_sub(acked));
    }
    println!(
        "watch: patch sent -> event received: p50 {:?} p99 {:?}",
        pct(e2e.clone(), 0.5),
        pct(e2e, 0.99)
    );
    println!(
        "watch event latency after write ack: p50 {:?} p99 {:?}",
        pct(lat.clone(), 0.5),
        pct(lat, 0.99)
    );
    Ok(())
}
