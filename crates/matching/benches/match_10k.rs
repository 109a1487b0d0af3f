//! P4: automatic matching among 10,000 caches for a 5-image pod (target ≤ 1 ms).
//!
//! Baseline in the same run: the full scan that `explain` performs over every cache. Run with
//! `cargo bench -p imc-matching`.

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
    let build = Instant::now();
    let index = CacheIndex::new(entries);
    let build = build.elapsed();
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
    println!("P4 automatic matching, {CACHES} caches, 5-image pod (winner {w1:?})");
    println!("  index build (once per cache change): {build:?}");
    println!("  {:<28} {:>12}", "figure", "per query");
    println!("  {:<28} {:>12?}", "imc (indexed)", fast);
    println!("  {:<28} {:>12?}", "baseline (full scan)", scan);
    println!(
        "  ratio imc/baseline {:.3}; imc vs 1 ms target {:.3}",
        fast.as_secs_f64() / scan.as_secs_f64(),
        fast.as_secs_f64() / 1e-3
    );
}
