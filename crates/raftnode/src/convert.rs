//! Conversions between the raft crate's protobuf types and the WAL's plain records. The WAL
//! deliberately knows nothing about raft, so these live on this side of the boundary.

use protobuf::ProtobufEnum;
use raft::eraftpb::{Entry, EntryType, HardState};

use crate::{Error, Result};

pub(crate) fn entry_to_wal(e: &Entry) -> ferrokv_wal::Entry {
    ferrokv_wal::Entry {
        index: e.index,
        term: e.term,
        entry_type: e.get_entry_type().value(),
        data: e.data.to_vec(),
        context: e.context.to_vec(),
    }
}

pub(crate) fn entry_from_wal(w: ferrokv_wal::Entry) -> Result<Entry> {
    // An unknown type cannot be applied safely; refusing to start is better than guessing.
    let entry_type = EntryType::from_i32(w.entry_type).ok_or_else(|| {
        Error::Io(format!(
            "wal entry {} has unknown entry type {}",
            w.index, w.entry_type
        ))
    })?;
    let mut e = Entry::default();
    e.index = w.index;
    e.term = w.term;
    e.set_entry_type(entry_type);
    e.data = w.data.into();
    e.context = w.context.into();
    Ok(e)
}

pub(crate) fn hard_state_to_wal(hs: &HardState) -> ferrokv_wal::HardState {
    ferrokv_wal::HardState {
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit,
    }
}

pub(crate) fn hard_state_from_wal(hs: &ferrokv_wal::HardState) -> HardState {
    let mut out = HardState::default();
    out.term = hs.term;
    out.vote = hs.vote;
    out.commit = hs.commit;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_wal_records() {
        let cases = [
            (EntryType::EntryNormal, b"put".to_vec(), b"".to_vec()),
            (EntryType::EntryConfChange, b"cc".to_vec(), b"ctx".to_vec()),
            (EntryType::EntryConfChangeV2, Vec::new(), Vec::new()),
        ];
        for (i, (ty, data, ctx)) in cases.into_iter().enumerate() {
            let mut e = Entry::default();
            e.index = 10 + i as u64;
            e.term = 3;
            e.set_entry_type(ty);
            e.data = data.into();
            e.context = ctx.into();
            let back = entry_from_wal(entry_to_wal(&e)).unwrap();
            assert_eq!(back, e, "case {i}");
        }
    }

    #[test]
    fn unknown_entry_type_is_refused() {
        let w = ferrokv_wal::Entry {
            index: 1,
            term: 1,
            entry_type: 99,
            data: Vec::new(),
            context: Vec::new(),
        };
        assert!(matches!(entry_from_wal(w), Err(Error::Io(_))));
    }

    #[test]
    fn hard_state_round_trips() {
        let mut hs = HardState::default();
        hs.term = 7;
        hs.vote = 2;
        hs.commit = 41;
        assert_eq!(hard_state_from_wal(&hard_state_to_wal(&hs)), hs);
    }
}
