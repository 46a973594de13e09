//! The server's share of the `ferrokv_debug_*` stage histograms (issue 10's latency
//! breakdown; the raft node's share is `ferrokv_raftnode::stages`). Outside etcd's namespace.

use ferrokv_raftnode::stages::StageHistogram;

/// A proposal from its encoding to the applied response (raft, apply and the waiter).
pub static PROPOSE: StageHistogram = StageHistogram::new(
    "server_propose",
    "A proposal from its encoding to its applied response (raft, apply, waiter).",
);
/// One apply batch: decode, execute, storage commit, events, waiters.
pub static APPLY_BATCH: StageHistogram = StageHistogram::new(
    "server_apply_batch",
    "One apply batch: decode, execute, storage commit, watch events, waiters.",
);
/// The read barrier's ReadIndex call (queue, raft round, reply).
pub static READ_INDEX: StageHistogram = StageHistogram::new(
    "server_read_index",
    "Linearizable read: the ReadIndex call (inbox, raft round, reply).",
);
/// The read barrier's wait for the applied index to reach the read index.
pub static READ_APPLY_WAIT: StageHistogram = StageHistogram::new(
    "server_read_apply_wait",
    "Linearizable read: waiting for the applied index to reach the read index.",
);
/// A Range in its storage read transaction (on a blocking thread).
pub static RANGE_LOCAL: StageHistogram = StageHistogram::new(
    "server_range_local",
    "A Range run in its storage read transaction, blocking-thread hop included.",
);

/// Appends every stage histogram (raft node's and server's) in Prometheus text.
pub fn render(out: &mut String) {
    ferrokv_raftnode::stages::render(out);
    for h in [
        &PROPOSE,
        &APPLY_BATCH,
        &READ_INDEX,
        &READ_APPLY_WAIT,
        &RANGE_LOCAL,
    ] {
        h.render(out);
    }
}
