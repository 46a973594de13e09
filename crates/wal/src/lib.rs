//! `ferrokv-wal`: the segmented write-ahead log of a ferrokv member.
//!
//! This crate owns the on-disk raft log: raft entries, the raft hard state and snapshot
//! markers, stored in etcd's WAL format (`walpb.Record`s framed and chained with CRC-32C as
//! etcd writes them, see `record.rs`) in segment files named
//! `<seq:016x>-<first_index:016x>.wal`, so etcd's tools read a ferrokv WAL and ferrokv reads
//! etcd's. A WAL in ferrokv's previous format (`legacy.rs`) is read and upgraded on open. [`Wal::append`] is the raft commit
//! point: it writes every record of the call at once and issues exactly one `fdatasync`.
//! [`Wal::open`] replays all segments, cuts off a torn tail left by a crash mid-append, and
//! refuses to start ([`Error::Corrupt`]) on any other damage, so data is never dropped
//! silently. After a failed write or sync the [`Wal`] refuses all further calls: the page
//! cache state is unknown, so the member must fail-stop.
//!
//! It must not depend on raft, tokio, the storage engine or the network: it is plain,
//! synchronous std file I/O behind the [`FileSystem`] seam (so tests can inject failures).
//! The raft node converts between `raft::eraftpb` types and the plain types here.

mod fs;
mod legacy;
mod pb;
mod purge;
mod record;
mod replay;
mod wal;

use std::path::{Path, PathBuf};

pub use crate::fs::{FaultFs, FileSystem, SegmentFile, StdFs};
pub use crate::pb::{crc32c, decode_metadata, encode_metadata};
pub use crate::purge::purge_segments;
pub use crate::wal::{NoObserver, Wal, WalObserver, WalOptions};

/// Builds the `map_err` closure for a failed file-system step on `path`.
pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure of the WAL. One variant per kind of failed step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system call failed. `op` names the step (e.g. "fdatasync segment").
    #[error("wal: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record that fails its CRC or cannot be decoded and is NOT at the tail of the last
    /// segment. The member must not start: repairing it would drop acknowledged data.
    #[error("wal: corrupt record in {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// `open()`/`read()` of a directory that holds no WAL segment.
    #[error("wal: no wal segments in {}", .0.display())]
    NotFound(PathBuf),
    /// `create()` of a directory that already holds a WAL.
    #[error("wal: a wal already exists in {}", .0.display())]
    AlreadyExists(PathBuf),
    /// The entry index sequence is broken: an entry skips ahead past `expected`.
    #[error("wal: entry index gap: expected index {expected}, found {found}")]
    Gap { expected: u64, found: u64 },
}

/// The raft hard state (term, vote, commit) as persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// One raft log entry. `entry_type` is the raft `EntryType` as i32, kept opaque here so the
/// crate does not depend on raft.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub entry_type: i32,
    pub data: Vec<u8>,
    pub context: Vec<u8>,
}

/// Records that a snapshot at `index`/`term` exists; entries up to `index` are covered by it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMarker {
    pub index: u64,
    pub term: u64,
}

/// What a replay of the WAL found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// Written at create: etcd's `etcdserverpb.Metadata` (member id, cluster id), see
    /// [`encode_metadata`]. A WAL of the previous format has its metadata converted.
    pub metadata: Vec<u8>,
    /// The last hard state saved.
    pub hard_state: HardState,
    /// The newest snapshot marker (snapshots only move forward: the highest index saved).
    pub snapshot: Option<SnapshotMarker>,
    /// Entries after `snapshot.index` (or from the start), contiguous. A later record for
    /// index i replaced entries >= i (raft log truncation).
    pub entries: Vec<Entry>,
    /// A torn/partial final record was found at the tail of the last segment. `open()` cut
    /// it off; `read()` only ignored it (it never writes).
    pub repaired_tail: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_name_what_failed() {
        let path = PathBuf::from("/data/member/wal/0000000000000002-0000000000000064.wal");
        let cases: Vec<(Error, &str)> = vec![
            (
                Error::Corrupt {
                    path: path.clone(),
                    offset: 4096,
                    reason: "crc mismatch".into(),
                },
                "wal: corrupt record in /data/member/wal/0000000000000002-0000000000000064.wal \
                 at offset 4096: crc mismatch",
            ),
            (
                Error::Io {
                    op: "fdatasync segment",
                    path: path.clone(),
                    source: std::io::Error::other("disk on fire"),
                },
                "wal: fdatasync segment /data/member/wal/0000000000000002-0000000000000064.wal: \
                 disk on fire",
            ),
            (
                Error::NotFound("/data/member/wal".into()),
                "wal: no wal segments in /data/member/wal",
            ),
            (
                Error::AlreadyExists("/data/member/wal".into()),
                "wal: a wal already exists in /data/member/wal",
            ),
            (
                Error::Gap {
                    expected: 11,
                    found: 13,
                },
                "wal: entry index gap: expected index 11, found 13",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }
}
