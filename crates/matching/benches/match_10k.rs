//! P4: automatic matching among 10,000 caches for a 5-image pod (target ≤ 1 ms), index upkeep
//! included: a watch event for one cache updates the index in place (target ≤ 1 ms).
//!
//! Baselines in the same run: the full scan that `explain` performs over every cache (for the
//! query) and a full rebuild of the index (for the upkeep, what admission did on every event
//! before). Run with `cargo bench -p imc-matching`.

use std::hint::black_box;
use std::time::Instant;

use imc_api::{Digest, Reference};
use imc_matching::{CacheEntry, CacheIndex, CachedImage, MatchRequest, PodImage};

fn main() {
    const CACHES: usize = 10_000;
    const REPOS: usize = 400;
    let reference = |repo: usize, tag: usize| -> Reference {
        format!("registry.example/team{}/app{repo}:v{tag}", repo % 17)
            .parse()
            .expect("valid reference")
    };
    let layer = |repo: usize, n: usize| Digest::of(format!("{repo}/{n}").as_bytes());
    // A deterministic spread: each cache holds 5 images of pseudo-random repositories and tags.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |m: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % m as u64) as usize
    };
    let entries: Vec<CacheEntry> = (0..CACHES)
        .map(|c| CacheEntry {
            name: format!("cache-{c}"),
            id: format!("imc-{c:020}"),
            ready: c % 10 != 0,
            capacity_bytes: 20 << 30,
            size_bytes: ((c % 50) as u64 + 1) << 28,
            created: c as i64,
            images: (0..5)
                .map(|_| {
                    let repo = next(REPOS);
                    CachedImage {
                        reference: reference(repo, next(4)),
                        manifest_digest: None,
                        layers: (0..5).map(|n| (layer(repo, n), 40 << 20)).collect(),
                    }
                })
                .collect(),
        })
        .collect();
    // Baseline of the upkeep: rebuilding the whole index (the copy of the entries is not timed).
    const REBUILDS: u32 = 5;
    let mut rebuild = std::time::Duration::ZERO;
    for _ in 0..REBUILDS {
        let copy = entries.clone();
        let t = Instant::now();
        black_box(CacheIndex::new(copy));
        rebuild += t.elapsed();
    }
    let rebuild = rebuild / REBUILDS;
    let mut index = CacheIndex::new(entries.clone());

    // Upkeep: one watch event per cache for 1,000 caches, three kinds of event.
    const EVENTS: usize = 1000;
    // A build's progress moved: nothing the ranking reads changed.
    let same: Vec<CacheEntry> = entries[..EVENTS].to_vec();
    // A rebuild finished: the cache now holds other images (new postings, old ones dropped).
    let changed: Vec<CacheEntry> = entries[..EVENTS]
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut e = e.clone();
            let repo = (i * 7) % REPOS;
            e.images[0] = CachedImage {
                reference: reference(repo, 3),
                manifest_digest: None,
                layers: (0..5).map(|n| (layer(repo, n + 10), 40 << 20)).collect(),
            };
            e
        })
        .collect();
    let upkeep = |index: &mut CacheIndex, events: Vec<CacheEntry>| {
        let t = Instant::now();
        let mut applied = 0;
        for e in events {
            applied += usize::from(index.upsert(e));
        }
        (t.elapsed() / EVENTS as u32, applied)
    };
    let (progress, applied_progress) = upkeep(&mut index, same);
    assert_eq!(
        applied_progress, 0,
        "a progress-only event must not touch the index"
    );
    let (update, applied_update) = upkeep(&mut index, changed);
    assert_eq!(applied_update, EVENTS);
    // A cache deleted and another created.
    let gone: Vec<String> = entries[EVENTS..2 * EVENTS]
        .iter()
        .map(|e| e.name.clone())
        .collect();
    let t = Instant::now();
    for (name, e) in gone.iter().zip(&entries[EVENTS..2 * EVENTS]) {
        black_box(index.remove(name));
        index.upsert(e.clone());
    }
    let churn = t.elapsed() / EVENTS as u32;
    // The index kept up event by event ranks as one built from scratch.
    let mut current = entries.clone();
    for (i, e) in current.iter_mut().enumerate().take(EVENTS) {
        let repo = (i * 7) % REPOS;
        e.images[0] = CachedImage {
            reference: reference(repo, 3),
            manifest_digest: None,
            layers: (0..5).map(|n| (layer(repo, n + 10), 40 << 20)).collect(),
        };
    }
    let fresh = CacheIndex::new(current);
    let build = rebuild;
    let request = MatchRequest::new(
        (0..5)
            .map(|i| PodImage {
                reference: reference(i * 31, 1),
                layers: (0..5).map(|n| (layer(i * 31, n), 40 << 20)).collect(),
            })
            .collect(),
    );

    let time = |f: &dyn Fn() -> Option<String>, iterations: u32| {
        let start = Instant::now();
        let mut winner = None;
        for _ in 0..iterations {
            winner = black_box(f());
        }
        (start.elapsed() / iterations, winner)
    };
    let (fast, w1) = time(&|| index.best(&request).map(|c| c.name.clone()), 2000);
    let (scan, w2) = time(
        &|| index.explain(&request).winner().map(|c| c.name.clone()),
        20,
    );
    assert_eq!(w1, w2, "indexed and full-scan rankings disagree");
    assert_eq!(
        w1,
        fresh.best(&request).map(|c| c.name.clone()),
        "the index kept up event by event ranks differently from a fresh one"
    );
    println!("P4 automatic matching, {CACHES} caches, 5-image pod (winner {w1:?})");
    println!("  {:<36} {:>12}", "query", "per query");
    println!("  {:<36} {:>12?}", "imc (indexed)", fast);
    println!("  {:<36} {:>12?}", "baseline (full scan)", scan);
    println!(
        "  ratio imc/baseline {:.3}; imc vs 1 ms target {:.3}",
        fast.as_secs_f64() / scan.as_secs_f64(),
        fast.as_secs_f64() / 1e-3
    );
    println!(
        "  {:<36} {:>12}",
        "index upkeep, one watch event", "per event"
    );
    println!("  {:<36} {:>12?}", "imc: progress only (skipped)", progress);
    println!("  {:<36} {:>12?}", "imc: images changed (update)", update);
    println!("  {:<36} {:>12?}", "imc: deleted + created", churn);
    println!("  {:<36} {:>12?}", "baseline (full rebuild)", build);
    let worst = update.max(churn);
    println!(
        "  ratio imc/baseline {:.4} (progress {:.6}); worst event vs 1 ms target {:.3}",
        worst.as_secs_f64() / build.as_secs_f64(),
        progress.as_secs_f64() / build.as_secs_f64(),
        worst.as_secs_f64() / 1e-3
    );
}
