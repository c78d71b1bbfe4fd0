//! Statement latency by backend, in fixed buckets, and bytes relayed: recorded by sessions
//! without a lock (each thread its own shard), summed when `/metrics` is read.

use super::*;

/// Upper bounds of the latency buckets, in microseconds (then +Inf).
const BOUNDS_MICROS: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];
const BUCKETS: usize = BOUNDS_MICROS.len() + 1;
const SHARDS: usize = 16;

/// Statement latency by target role, as Prometheus histograms. Session threads write their own
/// shard (one relaxed add to a bucket and one to the sum, no contention between threads); a
/// scrape adds the shards up.
pub struct Latency {
    shards: Box<[Shard]>,
}

/// One thread's counters: `[primary, replica]` buckets and sums (micros).
#[repr(align(128))]
struct Shard {
    counts: [[AtomicU64; BUCKETS]; 2],
    micros: [AtomicU64; 2],
    /// Bytes received from clients, from backends.
    bytes: [AtomicU64; 2],
    /// The same buckets per backend, for `ctl status --watch`.
    by_backend: Box<[[AtomicU64; BUCKETS]]>,
}

impl Default for Shard {
    fn default() -> Self {
        Self {
            counts: Default::default(),
            micros: Default::default(),
            bytes: Default::default(),
            by_backend: (0..sqlswitch_config::MAX_BACKENDS).map(|_| Default::default()).collect(),
        }
    }
}

impl Default for Latency {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| Shard::default()).collect() }
    }
}

/// The latency buckets' upper bounds in milliseconds (the last bucket has none: +Inf).
pub fn latency_bounds_ms() -> Vec<f64> {
    BOUNDS_MICROS.iter().map(|b| *b as f64 / 1000.0).collect()
}

impl Latency {
    /// Counts one statement (or pipeline) answered by a replica or the primary after `elapsed`.
    pub fn record(&self, backend: usize, replica: bool, elapsed: std::time::Duration) {
        let Some(shard) = self.own_shard() else { return };
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MICROS.partition_point(|&bound| bound < micros);
        let role = usize::from(replica);
        if let (Some(count), Some(sum)) = (shard.counts.get(role).and_then(|c| c.get(bucket)), shard.micros.get(role)) {
            count.fetch_add(1, Ordering::Relaxed);
            sum.fetch_add(micros, Ordering::Relaxed);
        }
        if let Some(count) = shard.by_backend.get(backend).and_then(|c| c.get(bucket)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Statements answered by backend `backend` so far, per bucket (not cumulative).
    pub fn backend_buckets(&self, backend: usize) -> Vec<u64> {
        (0..BUCKETS)
            .map(|b| {
                self.shards
                    .iter()
                    .map(|s| s.by_backend.get(backend).and_then(|c| c.get(b)).map_or(0, |c| c.load(Ordering::Relaxed)))
                    .sum()
            })
            .collect()
    }

    /// Counts bytes a session received from its client and from its backends since it last
    /// counted (sessions add them up themselves and count once per answer).
    pub fn add_bytes(&self, client: u64, backend: u64) {
        if let Some(shard) = self.own_shard() {
            let [c, b] = &shard.bytes;
            c.fetch_add(client, Ordering::Relaxed);
            b.fetch_add(backend, Ordering::Relaxed);
        }
    }

    /// The calling thread's shard (the control thread's is the first).
    fn own_shard(&self) -> Option<&Shard> {
        self.shards.get(crate::workers::current().wrapping_add(1) % SHARDS)
    }

    /// Bytes received so far: from clients (0) or from backends (1).
    pub(super) fn bytes(&self, which: usize) -> u64 {
        self.shards.iter().map(|s| s.bytes.get(which).map_or(0, |b| b.load(Ordering::Relaxed))).sum()
    }

    pub(super) fn render(&self, cluster: &str, out: &mut String) {
        use std::fmt::Write as _;
        let cluster = escape(cluster);
        for (role, target) in ["primary", "replica"].iter().enumerate() {
            let mut cumulative = 0u64;
            let mut micros = 0u64;
            for shard in self.shards.iter() {
                micros = micros.wrapping_add(shard.micros.get(role).map_or(0, |m| m.load(Ordering::Relaxed)));
            }
            for bucket in 0..BUCKETS {
                for shard in self.shards.iter() {
                    let count = shard.counts.get(role).and_then(|c| c.get(bucket));
                    cumulative += count.map_or(0, |c| c.load(Ordering::Relaxed));
                }
                let le = BOUNDS_MICROS.get(bucket).map_or("+Inf".to_owned(), |b| format!("{}", *b as f64 / 1e6));
                let _ = writeln!(
                    out,
                    "sqlswitch_statement_duration_seconds_bucket{{cluster=\"{cluster}\",target=\"{target}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "sqlswitch_statement_duration_seconds_sum{{cluster=\"{cluster}\",target=\"{target}\"}} {}",
                micros as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "sqlswitch_statement_duration_seconds_count{{cluster=\"{cluster}\",target=\"{target}\"}} {cumulative}"
            );
        }
    }
}
