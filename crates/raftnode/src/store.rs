//! The raft log as raft sees it: `MemStorage` (the in-memory cache of the WAL) behind a thin
//! wrapper that refuses to produce snapshots.
//!
//! `MemStorage::snapshot` would hand a lagging follower a snapshot with metadata but no
//! keyspace, and the follower would then believe it holds data it never received. Until the
//! keyspace can be streamed, a snapshot is reported as temporarily unavailable; raft keeps the
//! follower in probe state and retries, and the leader keeps enough catch-up entries in memory
//! that a follower which is only a little behind never needs one.

use std::collections::HashSet;
use std::sync::Mutex;

use raft::eraftpb::{Entry, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

#[derive(Clone, Default)]
pub(crate) struct LogStore {
    pub(crate) mem: MemStorage,
    /// Peers we already warned about, so a stuck follower does not log on every heartbeat.
    warned: std::sync::Arc<Mutex<HashSet<u64>>>,
}

impl LogStore {
    pub(crate) fn new(mem: MemStorage) -> Self {
        LogStore {
            mem,
            warned: Default::default(),
        }
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let first_time = match self.warned.lock() {
            Ok(mut w) => w.insert(to),
            Err(_) => true,
        };
        if first_time {
            tracing::warn!(
                peer = to,
                request_index,
                "follower needs a raft snapshot, keyspace streaming is not available yet; \
                 it stays behind until the log can catch it up"
            );
        } else {
            tracing::debug!(peer = to, request_index, "snapshot still unavailable");
        }
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_is_always_unavailable() {
        let s = LogStore::new(MemStorage::new());
        for _ in 0..3 {
            assert!(matches!(
                s.snapshot(5, 2),
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable
                ))
            ));
        }
    }
}
