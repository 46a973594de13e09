//! The layout of a member's data directory, spelled once.
//!
//! ferrokv keeps etcd's shape so that operators' habits (and tools that look for
//! `member/wal` or `member/snap/db`) carry over:
//!
//! ```text
//! <data-dir>/member/wal/<seq>-<index>.wal     raft log segments
//! <data-dir>/member/snap/<term>-<index>.snap  raft snapshot metadata
//! <data-dir>/member/snap/db                   the redb keyspace
//! ```
//!
//! Every crate that touches these paths (raft node, server, the `ferrokv` binary's admin
//! commands, the test harness) asks this type rather than joining path pieces itself, so a
//! change of layout is one change here. It owns names (and clearing its own scratch files); it
//! creates nothing and depends on nothing.

use std::path::{Path, PathBuf};

const MEMBER: &str = "member";
const WAL: &str = "wal";
const SNAP: &str = "snap";
const DB: &str = "db";
const SCRATCH_SUFFIX: &str = ".tmp";

/// What a scratch copy of the keyspace in `member/snap` is for. A crash mid-copy leaves one
/// behind; [`DataDir::remove_stale_scratch`] clears them on the next start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scratch {
    /// A `Maintenance.Snapshot` stream to a client.
    Stream,
    /// A raft snapshot being sent to a peer.
    Send,
    /// A raft snapshot being received from the leader.
    Recv,
}

impl Scratch {
    const ALL: [Scratch; 3] = [Scratch::Stream, Scratch::Send, Scratch::Recv];

    fn prefix(self) -> &'static str {
        match self {
            Scratch::Stream => "stream-",
            Scratch::Send => "send-",
            Scratch::Recv => "recv-",
        }
    }
}

/// A member's data directory (`--data-dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    /// The directory given as `--data-dir`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<data-dir>/member`: everything the member owns lives below it.
    pub fn member(&self) -> PathBuf {
        self.root.join(MEMBER)
    }

    /// `<data-dir>/member/wal`: the raft log segments.
    pub fn wal(&self) -> PathBuf {
        self.member().join(WAL)
    }

    /// `<data-dir>/member/snap`: raft snapshot metadata and the keyspace.
    pub fn snap(&self) -> PathBuf {
        self.member().join(SNAP)
    }

    /// `<data-dir>/member/snap/db`: the redb keyspace file.
    pub fn db(&self) -> PathBuf {
        self.snap().join(DB)
    }

    /// A scratch file in `member/snap`; `tag` makes it unique among those of its purpose.
    pub fn scratch(&self, purpose: Scratch, tag: &str) -> PathBuf {
        self.snap()
            .join(format!("{}{tag}{SCRATCH_SUFFIX}", purpose.prefix()))
    }

    /// Whether `name` (a file name in [`DataDir::snap`]) is a scratch file.
    pub fn is_scratch(name: &str) -> bool {
        name.ends_with(SCRATCH_SUFFIX) && Scratch::ALL.iter().any(|p| name.starts_with(p.prefix()))
    }

    /// Removes the scratch files a crash left behind. Best effort: a file that cannot be
    /// removed is only wasted space, never read again.
    pub fn remove_stale_scratch(&self) {
        let Ok(entries) = std::fs::read_dir(self.snap()) else {
            return;
        };
        for e in entries.flatten() {
            if DataDir::is_scratch(&e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// The WAL directory for tools that accept either a data dir or a WAL dir itself (etcd's
    /// `etcd-dump-logs` does): `<dir>/member/wal` when it exists, else `dir` as given.
    pub fn wal_of_either(dir: &Path) -> PathBuf {
        let nested = DataDir::new(dir).wal();
        if nested.is_dir() {
            nested
        } else {
            dir.to_path_buf()
        }
    }
}

/// The member directory's layout seen from the member directory itself, for the layers (the
/// raft node) that are handed `<data-dir>/member` and nothing above it.
pub fn wal_in(member_dir: &Path) -> PathBuf {
    member_dir.join(WAL)
}

/// See [`wal_in`].
pub fn snap_in(member_dir: &Path) -> PathBuf {
    member_dir.join(SNAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_etcds() {
        let d = DataDir::new("/var/lib/etcd");
        assert_eq!(d.member(), Path::new("/var/lib/etcd/member"));
        assert_eq!(d.wal(), Path::new("/var/lib/etcd/member/wal"));
        assert_eq!(d.snap(), Path::new("/var/lib/etcd/member/snap"));
        assert_eq!(d.db(), Path::new("/var/lib/etcd/member/snap/db"));
        assert_eq!(wal_in(&d.member()), d.wal());
        assert_eq!(snap_in(&d.member()), d.snap());
    }

    #[test]
    fn scratch_files_are_recognised_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let d = DataDir::new(tmp.path());
        std::fs::create_dir_all(d.snap()).unwrap();
        for purpose in Scratch::ALL {
            let p = d.scratch(purpose, "7-42");
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            assert!(DataDir::is_scratch(name), "{name}");
            std::fs::write(&p, b"x").unwrap();
        }
        let keep = [
            "db",
            "0000000000000002-000000000000001e.snap",
            "stream-1.snap",
        ];
        for k in keep {
            assert!(!DataDir::is_scratch(k), "{k}");
            std::fs::write(d.snap().join(k), b"x").unwrap();
        }
        d.remove_stale_scratch();
        let mut left: Vec<String> = std::fs::read_dir(d.snap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn wal_of_either_takes_a_data_dir_or_a_wal_dir() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(DataDir::wal_of_either(tmp.path()), tmp.path());
        let d = DataDir::new(tmp.path());
        std::fs::create_dir_all(d.wal()).unwrap();
        assert_eq!(DataDir::wal_of_either(tmp.path()), d.wal());
    }
}
