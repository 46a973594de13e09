//! The raft log as raft sees it: `MemStorage` (the in-memory cache of the WAL) behind a thin
//! wrapper.
//!
//! A snapshot raft asks for (to send a follower that needs entries the leader no longer has)
//! carries only metadata: the index, term and configuration at the commit index. The keyspace
//! travels beside it: the server's transport sees the outgoing `MsgSnapshot`, waits until its
//! own keyspace has applied at least that index, and streams a copy of it with the message
//! (`SendSnapshot`); the follower installs the keyspace before it lets raft see the message.

use std::collections::HashSet;
use std::sync::Mutex;

use raft::eraftpb::{Entry, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage};

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
        let snap = self.mem.snapshot(request_index, to)?;
        let first_time = match self.warned.lock() {
            Ok(mut w) => w.insert(to),
            Err(_) => true,
        };
        let index = snap.get_metadata().index;
        if first_time {
            tracing::info!(
                peer = to,
                index,
                "follower needs a snapshot of the keyspace"
            );
        } else {
            tracing::debug!(peer = to, index, "snapshot for a follower again");
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_is_metadata_at_the_commit_index() {
        let mem = MemStorage::new_with_conf_state((vec![1, 2], vec![3]));
        let mut e = Entry::default();
        e.index = 1;
        e.term = 2;
        mem.wl().append(&[e]).expect("append");
        let mut hs = raft::eraftpb::HardState::default();
        hs.commit = 1;
        hs.term = 2;
        mem.wl().set_hardstate(hs);
        let s = LogStore::new(mem);
        let snap = s.snapshot(0, 2).expect("snapshot");
        let meta = snap.get_metadata();
        assert_eq!((meta.index, meta.term), (1, 2));
        assert_eq!(meta.get_conf_state().voters, vec![1, 2]);
        assert_eq!(meta.get_conf_state().learners, vec![3]);
        assert!(
            snap.data.is_empty(),
            "the keyspace travels beside the message"
        );
    }
}
