//! Always-on latency histograms of the hot path's stages, for the breakdown in
//! `docs/performance.md` (issue 10). They are rendered on `/metrics` as `ferrokv_debug_*`,
//! outside etcd's namespace, so dashboards built for etcd never see them.
//!
//! Observing costs two relaxed atomic adds and a short bucket scan, cheap enough to leave on:
//! the breakdown must be measurable on any running member, not only on a special build.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// 25 µs doubling 18 times (to ~6.5 s): fine enough below a millisecond, where the in-memory
/// stages live, and wide enough for a loaded fsync.
const BOUNDS: [f64; 19] = {
    let mut b = [0.0; 19];
    let mut i = 0;
    let mut v = 0.000_025;
    while i < b.len() {
        b[i] = v;
        v *= 2.0;
        i += 1;
    }
    b
};

/// One stage's histogram; a `static` in the crate that times the stage.
pub struct StageHistogram {
    name: &'static str,
    help: &'static str,
    /// Non-cumulative counts; the last slot is `+Inf`.
    counts: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl StageHistogram {
    /// `name` is the part after `ferrokv_debug_` and before `_seconds`.
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        StageHistogram {
            name,
            help,
            counts: [const { AtomicU64::new(0) }; BOUNDS.len() + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS.len());
        if let Some(c) = self.counts.get(slot) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Appends the Prometheus text of this histogram.
    pub fn render(&self, out: &mut String) {
        let name = self.name;
        let _ = writeln!(out, "# HELP ferrokv_debug_{name}_seconds {}", self.help);
        let _ = writeln!(out, "# TYPE ferrokv_debug_{name}_seconds histogram");
        let mut cumulative = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            match BOUNDS.get(i) {
                Some(b) => {
                    let _ = writeln!(
                        out,
                        "ferrokv_debug_{name}_seconds_bucket{{le=\"{b}\"}} {cumulative}"
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "ferrokv_debug_{name}_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
                    );
                }
            }
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "ferrokv_debug_{name}_seconds_sum {sum}");
        let _ = writeln!(out, "ferrokv_debug_{name}_seconds_count {cumulative}");
    }
}

/// Leader: a proposal waited this long in the raft thread's inbox.
pub static PROPOSE_QUEUE: StageHistogram = StageHistogram::new(
    "raft_propose_queue",
    "Leader: time a proposal waited in the raft thread's inbox.",
);
/// Leader: from raft accepting a proposal to the start of the WAL append that holds it.
pub static PROPOSE_TO_APPEND: StageHistogram = StageHistogram::new(
    "raft_propose_to_append",
    "Leader: from raft accepting a proposal to the start of the WAL append holding it.",
);
/// Leader: one Ready's WAL append with its fsync.
pub static WAL_APPEND_LEADER: StageHistogram = StageHistogram::new(
    "raft_wal_append_leader",
    "Leader: one Ready's WAL append including its fsync.",
);
/// Follower: one Ready's WAL append with its fsync (before the append response goes out).
pub static WAL_APPEND_FOLLOWER: StageHistogram = StageHistogram::new(
    "raft_wal_append_follower",
    "Follower: one Ready's WAL append including its fsync, before the ack is sent.",
);
/// Leader: from the end of the leader's own append+fsync to the entry being handed to apply:
/// the quorum's round trip (send, follower receive + fsync + ack) not hidden behind the fsync.
pub static APPEND_TO_COMMIT: StageHistogram = StageHistogram::new(
    "raft_append_to_commit",
    "Leader: from the end of its own WAL append to the entry being handed to apply.",
);
/// Leader: from raft accepting a proposal to the entry being handed to apply.
pub static PROPOSE_TO_COMMIT: StageHistogram = StageHistogram::new(
    "raft_propose_to_commit",
    "Leader: from raft accepting a proposal to the entry being handed to apply.",
);
/// A message from a peer waited this long in the raft thread's inbox.
pub static STEP_QUEUE: StageHistogram = StageHistogram::new(
    "raft_step_queue",
    "Time a message from a peer waited in the raft thread's inbox.",
);
/// Handing a committed batch to the apply loop (blocks when the apply loop lags).
pub static HAND_OUT: StageHistogram = StageHistogram::new(
    "raft_hand_out",
    "Handing a committed batch to the apply loop (blocks when the apply loop lags).",
);
/// One whole Ready (send, persist, hand out, advance).
pub static READY: StageHistogram =
    StageHistogram::new("raft_ready", "One whole Ready handled by the raft thread.");
/// A ReadIndex request from its arrival at the raft thread to its read state.
pub static READ_INDEX_ROUND: StageHistogram = StageHistogram::new(
    "raft_read_index_round",
    "A ReadIndex request from its arrival at the raft thread to its read state.",
);

const ALL: [&StageHistogram; 10] = [
    &PROPOSE_QUEUE,
    &PROPOSE_TO_APPEND,
    &WAL_APPEND_LEADER,
    &WAL_APPEND_FOLLOWER,
    &APPEND_TO_COMMIT,
    &PROPOSE_TO_COMMIT,
    &STEP_QUEUE,
    &HAND_OUT,
    &READY,
    &READ_INDEX_ROUND,
];

/// Appends the raft node's stage histograms in Prometheus text.
pub fn render(out: &mut String) {
    for h in ALL {
        h.render(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets_sum_and_count() {
        let h = StageHistogram::new("t", "test");
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out);
        let line = |prefix: &str| {
            out.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in {out}"))
                .to_string()
        };
        assert_eq!(
            line("ferrokv_debug_t_seconds_bucket{le=\"0.000025\"}"),
            "ferrokv_debug_t_seconds_bucket{le=\"0.000025\"} 1"
        );
        assert_eq!(
            line("ferrokv_debug_t_seconds_bucket{le=\"0.00005\"}"),
            "ferrokv_debug_t_seconds_bucket{le=\"0.00005\"} 2"
        );
        assert_eq!(
            line("ferrokv_debug_t_seconds_bucket{le=\"+Inf\"}"),
            "ferrokv_debug_t_seconds_bucket{le=\"+Inf\"} 3"
        );
        assert_eq!(
            line("ferrokv_debug_t_seconds_count"),
            "ferrokv_debug_t_seconds_count 3"
        );
        assert!(
            line("ferrokv_debug_t_seconds_sum").starts_with("ferrokv_debug_t_seconds_sum 60.00004")
        );
    }
}
