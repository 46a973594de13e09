//! `ferrokv-raftnode`: the raft node of a ferrokv member.
//!
//! Owns the tikv `raft::RawNode` on one dedicated OS thread, the raft log (the WAL under
//! `member/wal/` as the durable copy, `raft::storage::MemStorage` as the in-memory cache) and
//! the raft snapshot metadata files `member/snap/<term>-<index>.snap`. It runs the Ready loop in
//! the order the raft crate documents (see `node.rs`), batches concurrent proposals into one
//! WAL fsync, batches ReadIndex requests into one raft round, and hands committed entries to
//! the server's apply loop over a bounded channel.
//!
//! It must not depend on the storage (MVCC) crate, on the server, or on any network code: the
//! keyspace is the server's business and peers are reached through the [`Transport`] trait.

// The raft protobuf messages are built field by field, as raft-rs's own examples do: the
// generated structs carry codec-specific hidden fields, so struct literals would tie this code
// to one codec.
#![allow(clippy::field_reassign_with_default)]

mod convert;
mod force_new;
mod handle;
mod logger;
mod node;
mod read_index;
mod snap_purge;
mod snapfile;
pub mod stages;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use handle::RaftHandle;
pub use node::PreparedLog;
pub use raft::eraftpb;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A started node: its handle, the committed entries for the apply loop, and the raft
/// thread, which ends with Err on a fatal error (WAL write/fsync failure).
pub type StartedNode = (
    RaftHandle,
    tokio::sync::mpsc::Receiver<Committed>,
    std::thread::JoinHandle<Result<()>>,
);

/// Everything that can go wrong in the raft node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node has stopped (fatal error or shutdown); the member must exit or restart.
    #[error("raft node stopped")]
    Stopped,
    /// Raft refused the proposal (no leader known, leader transfer or conf change in progress).
    #[error("raft proposal dropped")]
    ProposalDropped,
    /// The operation must run on the leader.
    #[error("not the raft leader")]
    NotLeader,
    #[error("wal: {0}")]
    Wal(#[from] ferrokv_wal::Error),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("raft node I/O: {0}")]
    Io(String),
}

/// How to start (or restart) the raft node of one member.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This member's raft id (non-zero).
    pub id: u64,
    /// `<data-dir>/member`; the node owns `member/wal/` and `member/snap/*.snap`.
    pub member_dir: PathBuf,
    /// Bootstrap only (no WAL yet, not joining): the initial voters.
    pub initial_voters: Vec<u64>,
    /// Bootstrap only: the initial learners.
    pub initial_learners: Vec<u64>,
    /// `--initial-cluster-state=existing`: start with an empty configuration and learn it from
    /// the leader.
    pub join_existing: bool,
    /// Written into a new WAL (the server encodes member id + cluster id).
    pub wal_metadata: Vec<u8>,
    /// Storage's consistent index: committed entries after it are handed out again. On a
    /// bootstrap with `applied_index > 0` (a restored keyspace), the raft log starts with a
    /// snapshot at that index so that every member restored from the same file agrees.
    pub applied_index: u64,
    /// Storage's conf state at `applied_index` (None on first boot).
    pub conf_state: Option<eraftpb::ConfState>,
    /// `--heartbeat-interval`: one raft tick.
    pub tick_interval: Duration,
    /// `--election-timeout / --heartbeat-interval`.
    pub election_ticks: usize,
    /// Heartbeat every this many ticks (1).
    pub heartbeat_ticks: usize,
    /// `--snapshot-count`: a raft snapshot is taken at the end of the first committed batch
    /// that puts the applied index more than this many entries past the last snapshot, as
    /// etcd does (0 = never; the server maps etcd's 0 to its default before).
    pub snapshot_count: u64,
    /// `--snapshot-catchup-entries`: entries kept in memory below the applied index when the
    /// log is compacted, so a slightly lagging follower catches up without a snapshot.
    pub snapshot_catchup_entries: u64,
    /// `--max-snapshots`: `.snap` files kept (0 = unlimited).
    pub max_snapshots: usize,
    /// `--max-wals`: WAL segments kept (0 = unlimited); only released ones are purged.
    pub max_wals: usize,
    /// `--force-new-cluster`: on a restart from an existing WAL, become a one-member cluster
    /// (see `force_new.rs`). Ignored on a first boot, as in etcd.
    pub force_new_cluster: bool,
}

/// Outbound raft messages. Must not block: queue per peer, drop when full (raft retransmits).
pub trait Transport: Send + Sync + 'static {
    fn send(&self, msgs: Vec<eraftpb::Message>);
}

/// Committed entries, in log order, for the apply loop. Conf-change entries have already been
/// applied to raft's configuration by the node; `conf_state` is the resulting config (to be
/// stored in the same storage transaction as the applied index).
///
/// Every committed entry is handed out, including the empty entries a new leader appends, so
/// the apply loop can advance its consistent index over them.
#[derive(Debug)]
pub struct Committed {
    pub entries: Vec<eraftpb::Entry>,
    /// Some if this batch changed the configuration.
    pub conf_state: Option<eraftpb::ConfState>,
}

/// What the node currently knows about the cluster, published on every change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    /// 0 = no leader known.
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub is_learner: bool,
    /// How many times a (new) leader became known since the node started.
    pub leader_changes: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

/// The leader's replication progress, from [`RaftHandle::progress`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The last index of the leader's log.
    pub last_index: u64,
    /// (member id, highest index known to match the leader's log), voters and learners,
    /// sorted by id; the leader's own entry is its last index.
    pub matched: Vec<(u64, u64)>,
    /// Members (the leader included) the leader heard from within the last election timeout,
    /// sorted by id.
    pub active: Vec<u64>,
}

impl Progress {
    /// etcd's rule for promoting a learner: its log matches at least 90% of the leader's.
    pub fn is_caught_up(&self, id: u64) -> bool {
        self.matched
            .iter()
            .find(|(m, _)| *m == id)
            .is_some_and(|(_, matched)| *matched as f64 >= self.last_index as f64 * 0.9)
    }
}

/// Opens or creates the WAL under `member_dir/wal`, rebuilds the raft log, starts the node on
/// its own OS thread. The JoinHandle ends with Err on a fatal error (WAL write/fsync failure):
/// the member must then exit (fail-stop).
pub fn start(cfg: NodeConfig, transport: Arc<dyn Transport>) -> Result<StartedNode> {
    node::start(cfg, transport, ferrokv_wal::WalOptions::default(), None)
}

/// [`start`] with explicit WAL options: the segment size, or a fault-injecting file system
/// (tests of fail-stop here and in the server).
pub fn start_with_wal_options(
    cfg: NodeConfig,
    transport: Arc<dyn Transport>,
    wal_options: ferrokv_wal::WalOptions,
) -> Result<StartedNode> {
    node::start(cfg, transport, wal_options, None)
}

/// Opens and replays the WAL under `member_dir/wal` without starting raft, so that the
/// member can do it on another thread while it checks its keyspace (the two are the
/// longest steps of a restart and touch different files). `Ok(None)`: there is no WAL yet.
/// Hand the result to [`start_prepared`].
pub fn prepare_log(
    member_dir: &Path,
    wal_options: ferrokv_wal::WalOptions,
) -> Result<Option<PreparedLog>> {
    node::prepare_log(member_dir, wal_options)
}

/// [`start_with_wal_options`] with the WAL [`prepare_log`] opened; `wal_options` then only
/// matter when `prepared` is `None`.
pub fn start_prepared(
    cfg: NodeConfig,
    transport: Arc<dyn Transport>,
    wal_options: ferrokv_wal::WalOptions,
    prepared: Option<PreparedLog>,
) -> Result<StartedNode> {
    node::start(cfg, transport, wal_options, prepared)
}

/// The metadata (index, term, configuration) of the newest readable `member/snap/*.snap`
/// file, for `ferrokv dump-logs`. Read only.
pub fn newest_snapshot(member_dir: &Path) -> Result<Option<eraftpb::SnapshotMetadata>> {
    snapfile::newest(&snap_dir(member_dir))
}

/// Read the WAL metadata without starting (the server needs member/cluster id on restart).
/// `Ok(None)` when there is no WAL yet.
pub fn read_wal_metadata(member_dir: &Path) -> Result<Option<Vec<u8>>> {
    let wal_dir = wal_dir(member_dir);
    if !ferrokv_wal::Wal::exists(&wal_dir) {
        return Ok(None);
    }
    Ok(Some(ferrokv_wal::Wal::read_metadata(&wal_dir)?))
}

pub(crate) fn wal_dir(member_dir: &Path) -> PathBuf {
    ferrokv_datadir::wal_in(member_dir)
}

pub(crate) fn snap_dir(member_dir: &Path) -> PathBuf {
    ferrokv_datadir::snap_in(member_dir)
}

#[cfg(test)]
mod progress_tests {
    use super::Progress;

    #[test]
    fn caught_up_means_ninety_percent_of_the_leaders_log() {
        let p = Progress {
            last_index: 100,
            matched: vec![(1, 100), (2, 90), (3, 89), (4, 0)],
            active: vec![1, 2, 3],
        };
        let rows = [(1, true), (2, true), (3, false), (4, false), (9, false)];
        for (id, want) in rows {
            assert_eq!(p.is_caught_up(id), want, "member {id}");
        }
    }
}
