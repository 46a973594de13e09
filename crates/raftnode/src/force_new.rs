//! `--force-new-cluster`: etcd's restart of an existing member as a one-member cluster.
//!
//! As etcd's `bootstrapWALFromSnapshot` does: the commit index becomes the larger of the
//! WAL's and the keyspace's applied index, every entry after it is dropped (never
//! acknowledged), and one committed conf-change entry per other member removes it (self added
//! first if the log had removed it, so the voter set is never empty). The entries are written
//! to the WAL at the current term right after the commit index and come out of raft as
//! ordinary committed conf changes, so the member list, the keyspace's configuration and the
//! peer transport follow them the usual way. Member id, cluster id and the data stay.

use std::collections::BTreeSet;

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType};

use crate::{Error, Result};

/// The members of `base` changed by the conf-change entries of `entries`, as etcd's
/// `GetEffectiveNodeIDsFromWALEntries` (voters and learners alike).
pub(crate) fn effective_ids(base: &ConfState, entries: &[Entry]) -> Result<BTreeSet<u64>> {
    let mut ids: BTreeSet<u64> = base
        .voters
        .iter()
        .chain(&base.learners)
        .chain(&base.voters_outgoing)
        .chain(&base.learners_next)
        .copied()
        .collect();
    for e in entries {
        let changes: Vec<(ConfChangeType, u64)> = match e.get_entry_type() {
            EntryType::EntryNormal => continue,
            EntryType::EntryConfChange => {
                let cc = ConfChange::parse_from_bytes(&e.data)
                    .map_err(|err| Error::Raft(raft::Error::CodecError(err)))?;
                vec![(cc.get_change_type(), cc.node_id)]
            }
            EntryType::EntryConfChangeV2 => {
                let cc = ConfChangeV2::parse_from_bytes(&e.data)
                    .map_err(|err| Error::Raft(raft::Error::CodecError(err)))?;
                cc.changes
                    .iter()
                    .map(|c| (c.get_change_type(), c.node_id))
                    .collect()
            }
        };
        for (kind, id) in changes {
            match kind {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    ids.insert(id);
                }
                ConfChangeType::RemoveNode => {
                    ids.remove(&id);
                }
            }
        }
    }
    Ok(ids)
}

/// etcd's `CreateConfigChangeEnts`: add `me` if it is not a member, then remove every other
/// member, as single (v1) conf changes at `term` from `commit + 1` on.
pub(crate) fn conf_change_entries(
    ids: &BTreeSet<u64>,
    me: u64,
    term: u64,
    commit: u64,
) -> Result<Vec<Entry>> {
    let mut changes = Vec::new();
    if !ids.contains(&me) {
        changes.push((ConfChangeType::AddNode, me));
    }
    changes.extend(
        ids.iter()
            .filter(|id| **id != me)
            .map(|id| (ConfChangeType::RemoveNode, *id)),
    );
    let mut out = Vec::with_capacity(changes.len());
    for (i, (kind, id)) in changes.into_iter().enumerate() {
        let mut cc = ConfChange::default();
        cc.set_change_type(kind);
        cc.node_id = id;
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        e.term = term;
        e.index = commit + 1 + i as u64;
        e.data = cc
            .write_to_bytes()
            .map_err(|err| Error::Raft(raft::Error::CodecError(err)))?
            .into();
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc_v2(kind: ConfChangeType, id: u64, index: u64) -> Entry {
        let mut single = raft::eraftpb::ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = id;
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChangeV2);
        e.index = index;
        e.data = cc.write_to_bytes().unwrap().into();
        e
    }

    #[test]
    fn ids_follow_the_log_and_entries_remove_the_others() {
        let mut base = ConfState::default();
        base.voters = vec![1, 2, 3];
        let log = vec![
            cc_v2(ConfChangeType::AddLearnerNode, 4, 10),
            cc_v2(ConfChangeType::RemoveNode, 2, 11),
        ];
        let ids = effective_ids(&base, &log).unwrap();
        assert_eq!(ids.iter().copied().collect::<Vec<_>>(), vec![1, 3, 4]);

        let ents = conf_change_entries(&ids, 3, 7, 20).unwrap();
        let got: Vec<(u64, u64, ConfChangeType, u64)> = ents
            .iter()
            .map(|e| {
                assert_eq!(e.get_entry_type(), EntryType::EntryConfChange);
                let cc = ConfChange::parse_from_bytes(&e.data).unwrap();
                (e.index, e.term, cc.get_change_type(), cc.node_id)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (21, 7, ConfChangeType::RemoveNode, 1),
                (22, 7, ConfChangeType::RemoveNode, 4),
            ]
        );

        // A member the log removed adds itself back first.
        let ents = conf_change_entries(&ids, 2, 7, 20).unwrap();
        let first = ConfChange::parse_from_bytes(&ents[0].data).unwrap();
        assert_eq!(
            (first.get_change_type(), first.node_id),
            (ConfChangeType::AddNode, 2)
        );
        assert_eq!(ents.len(), 4);
    }
}
