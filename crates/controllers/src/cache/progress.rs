//! Build progress: bytes fetched (or found already held) over the bytes of every layer of the
//! cache. Pulling counts for the first 90%; writing the disk takes it to 100% at `Ready`.

use std::collections::HashMap;
use std::sync::Mutex;

use imc_api::Digest;
use imc_layers::PullProgress;

/// The share of the progress bar that pulling covers.
const PULL_SHARE: u64 = 90;

#[derive(Default)]
struct State {
    /// Compressed bytes of every layer of every image.
    total: u64,
    /// Bytes of the images already pulled.
    before: u64,
    /// Per layer of the image being pulled: its size and the bytes held so far.
    layers: HashMap<Digest, (u64, u64)>,
    /// Every image is pulled; only the disk remains.
    pulled: bool,
}

/// Progress of one build. Percentages never go down: a download that restarts from zero does
/// not move the bar back, and a resumed build starts from what the status showed.
pub struct Tracker {
    floor: u32,
    state: Mutex<State>,
}

impl Tracker {
    /// A tracker that never reports less than `floor` percent.
    pub fn new(floor: u32) -> Self {
        Tracker {
            floor: floor.min(99),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts over with `total` bytes to fetch (a retried attempt).
    pub fn reset(&self, total: u64) {
        *self.state() = State {
            total,
            ..State::default()
        };
    }

    /// The image being pulled is complete.
    pub fn image_pulled(&self) {
        let mut s = self.state();
        let bytes: u64 = s.layers.values().map(|(size, _)| size).sum();
        s.before += bytes;
        s.layers.clear();
    }

    /// Every image is pulled.
    pub fn all_pulled(&self) {
        self.state().pulled = true;
    }

    /// The percentage to show, below 100 (only a Ready cache shows 100%).
    pub fn percent(&self) -> u32 {
        let s = self.state();
        let pct = if s.pulled {
            PULL_SHARE
        } else if s.total == 0 {
            0
        } else {
            let done = s.before + s.layers.values().map(|(_, d)| d).sum::<u64>();
            (u128::from(done.min(s.total)) * u128::from(PULL_SHARE) / u128::from(s.total)) as u64
        };
        (pct as u32).clamp(self.floor, 99)
    }
}

impl PullProgress for Tracker {
    fn layer_started(&self, digest: &Digest, size: u64) {
        self.state().layers.insert(digest.clone(), (size, 0));
    }
    fn layer_progress(&self, digest: &Digest, bytes: u64) {
        let mut s = self.state();
        let entry = s.layers.entry(digest.clone()).or_insert((bytes, 0));
        entry.1 = bytes.min(entry.0);
    }
    fn layer_done(&self, digest: &Digest, _reused: bool) {
        let mut s = self.state();
        let entry = s.layers.entry(digest.clone()).or_insert((0, 0));
        entry.1 = entry.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        format!("sha256:{}", hex_of(n)).parse().unwrap()
    }
    fn hex_of(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    #[test]
    fn rises_with_bytes_and_stops_below_100() {
        let t = Tracker::new(0);
        t.reset(200);
        assert_eq!(t.percent(), 0);
        t.layer_started(&digest(1), 100);
        t.layer_progress(&digest(1), 50);
        assert_eq!(t.percent(), 22);
        t.layer_done(&digest(1), false);
        t.image_pulled();
        assert_eq!(t.percent(), 45);
        t.layer_started(&digest(2), 100);
        t.layer_done(&digest(2), true);
        assert_eq!(t.percent(), 90);
        t.all_pulled();
        assert_eq!(t.percent(), 90);
        // A resumed build never shows less than before.
        let resumed = Tracker::new(60);
        resumed.reset(200);
        assert_eq!(resumed.percent(), 60);
    }
}
