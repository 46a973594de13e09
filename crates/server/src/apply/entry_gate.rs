//! The entry format gate: when the cluster starts writing raft entries in etcd's
//! `InternalRaftRequest` instead of ferrokv's earlier encoding.
//!
//! A member of the previous version misreads etcd's field numbers (its compaction is etcd's
//! lease revoke, ...), so a rolling upgrade must not write etcd's format while such a member
//! may apply it. Every member of this version announces that it reads both formats by
//! publishing its attributes once more in etcd's format (`cluster_member_attr_set`, 1301,
//! which the previous version decodes as a request with no body and skips). Applying such an
//! entry records the member. Those records differ between members (one of the previous
//! version skipped the announcements made before its own upgrade), so they only tell a
//! member when to ask for the switch: once every current member (voters and learners) is in
//! its records, they were all of this version when they announced, and it proposes the switch,
//! etcd's `cluster_version_set` (1300, as etcd proposes its cluster version once every member
//! reported its own; skipped by the previous version too). Applying that entry switches the
//! cluster to etcd's format for good, at the same index on every member, kept in the keyspace
//! meta (so raft snapshots carry it). A membership change re-evaluates it (removing the last
//! member that had not announced lets the switch be proposed). Proposers read the switch from
//! the applied state; an entry still encoded the old way after it is harmless, every member
//! then reads both.
//!
//! A cluster bootstrapped by this version starts switched (its initial members are all of
//! it); one whose keyspace has no gate state (written by the previous version) starts not
//! switched.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferrokv_proto::etcdserverpb::Member;
use ferrokv_storage::Store;

/// The meta entry that holds the encoded [`GateState`].
pub const ENTRY_FORMAT_META_KEY: &str = "entry_format";

/// Leading byte of the encoding once switched (followed by nothing).
const SWITCHED: u8 = 1;
/// Leading byte while not switched, followed by the announced member ids (8 bytes each, BE).
const ANNOUNCING: u8 = 0;

/// The applied state of the gate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateState {
    pub switched: bool,
    /// Members that announced they read etcd's format (emptied at the switch).
    pub announced: BTreeSet<u64>,
}

impl GateState {
    /// The state of a cluster this version bootstraps.
    pub fn bootstrapped() -> Self {
        GateState {
            switched: true,
            announced: BTreeSet::new(),
        }
    }

    /// The stored state; none stored (a keyspace of the previous version) is "not switched".
    pub fn load(store: &Store) -> ferrokv_storage::Result<Self> {
        match store.meta(ENTRY_FORMAT_META_KEY)? {
            None => Ok(GateState::default()),
            Some(b) => Self::decode(&b),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        if self.switched {
            return vec![SWITCHED];
        }
        let mut out = Vec::with_capacity(1 + 8 * self.announced.len());
        out.push(ANNOUNCING);
        for id in &self.announced {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> ferrokv_storage::Result<Self> {
        let corrupt = || ferrokv_storage::Error::Corrupt(format!("entry format gate: {b:02x?}"));
        match b.split_first() {
            Some((&SWITCHED, [])) => Ok(Self::bootstrapped()),
            Some((&ANNOUNCING, ids)) if ids.len() % 8 == 0 => Ok(GateState {
                switched: false,
                announced: ids
                    .chunks_exact(8)
                    .map(|c| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(c);
                        u64::from_be_bytes(a)
                    })
                    .collect(),
            }),
            _ => Err(corrupt()),
        }
    }

    /// Records that `member` announced; true when the state changed.
    pub fn announce(&mut self, member: u64) -> bool {
        !self.switched && self.announced.insert(member)
    }

    /// Whether every member of `members` announced: the switch may then be proposed.
    pub fn complete(&self, members: &[Member]) -> bool {
        !self.switched
            && !members.is_empty()
            && members.iter().all(|m| self.announced.contains(&m.id))
    }

    /// Applies the switch entry; true when the state changed.
    pub fn switch(&mut self) -> bool {
        let changed = !self.switched;
        *self = Self::bootstrapped();
        changed
    }
}

/// The switch as proposers read it: set by the apply loop after the batch that switched
/// commits (and after a snapshot install), loaded from the keyspace at start.
#[derive(Clone, Debug, Default)]
pub struct EntryFormat(Arc<AtomicBool>);

impl EntryFormat {
    pub fn load(store: &Store) -> ferrokv_storage::Result<Self> {
        let f = EntryFormat::default();
        f.set(GateState::load(store)?.switched);
        Ok(f)
    }

    /// Whether entries are written in etcd's format.
    pub fn is_etcd(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub fn set(&self, switched: bool) {
        self.0.store(switched, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, learner: bool) -> Member {
        Member {
            id,
            is_learner: learner,
            ..Default::default()
        }
    }

    #[test]
    fn complete_once_every_member_announced_learners_included() {
        let members = [member(1, false), member(2, false), member(3, true)];
        let mut g = GateState::default();
        assert!(g.announce(1) && g.announce(2));
        assert!(!g.complete(&members));
        assert!(g.announce(3));
        assert!(g.complete(&members));
        // Removing the member that had not announced completes it too.
        let mut h = GateState::default();
        h.announce(1);
        assert!(!h.complete(&[member(1, false), member(2, false)]));
        assert!(h.complete(&[member(1, false)]));
        // For good: once switched, nothing is recorded and nothing is left to propose.
        assert!(g.switch() && g.switched && !g.switch());
        assert!(!g.announce(4) && !g.complete(&members));
    }

    #[test]
    fn encoding_round_trips() {
        let mut g = GateState::default();
        g.announce(u64::MAX);
        g.announce(7);
        assert_eq!(GateState::decode(&g.encode()).unwrap(), g);
        let s = GateState::bootstrapped();
        assert_eq!(GateState::decode(&s.encode()).unwrap(), s);
        assert!(GateState::decode(&[0, 1]).is_err());
        assert!(GateState::decode(&[]).is_err());
    }
}
