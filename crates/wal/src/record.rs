//! etcd's WAL record format.
//!
//! Every record is a `walpb.Record {type = 1, crc = 2, data = 3}` framed by a u64
//! little-endian length word and padded with zeros to a multiple of 8 bytes; when padding is
//! present the top byte of the length word is `0x80 | pad`. `crc` is CRC-32C chained over the
//! `data` of every record since the start of the log (each segment starts with a crc record
//! carrying the running value, so a segment can be checked on its own once older ones are
//! gone). Payloads are etcd's messages: `etcdserverpb.Metadata`, `raftpb.Entry`,
//! `raftpb.HardState`, `walpb.Snapshot`.

use crate::pb::{self, crc32c};
use crate::{Entry, HardState, SnapshotMarker};

pub(crate) const METADATA: i64 = 1;
pub(crate) const ENTRY: i64 = 2;
pub(crate) const STATE: i64 = 3;
pub(crate) const CRC: i64 = 4;
pub(crate) const SNAPSHOT: i64 = 5;

/// Bytes of the length word before each record.
pub(crate) const FRAME_LEN: usize = 8;
/// etcd refuses records above 10 MB... of length word; we refuse what cannot be a record.
const MAX_RECORD: u64 = 1 << 40;

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Metadata(Vec<u8>),
    Entry(Entry),
    HardState(HardState),
    Snapshot(SnapshotMarker),
    /// The running CRC at the start of a segment.
    Crc(u32),
}

/// Appends one framed record. `crc` is the running CRC: advanced over `data` for every
/// record but a crc record, which carries it as is.
fn put_record(buf: &mut Vec<u8>, ty: i64, data: Option<&[u8]>, crc: &mut u32) {
    if let Some(d) = data {
        *crc = crc32c::append(*crc, d);
    }
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_LEN]);
    // gogo writes int64 as the two's-complement varint.
    pb::put_uint(buf, 1, ty as u64);
    pb::put_uint(buf, 2, u64::from(*crc));
    if let Some(d) = data {
        pb::put_bytes(buf, 3, d);
    }
    let len = (buf.len() - start - FRAME_LEN) as u64;
    let pad = (8 - (len % 8)) % 8;
    let mut word = len;
    if pad != 0 {
        word |= (0x80 | pad) << 56;
        buf.resize(buf.len() + pad as usize, 0);
    }
    buf[start..start + FRAME_LEN].copy_from_slice(&word.to_le_bytes());
}

pub(crate) fn put_crc(buf: &mut Vec<u8>, crc: &mut u32) {
    put_record(buf, CRC, None, crc);
}

pub(crate) fn put_metadata(buf: &mut Vec<u8>, metadata: &[u8], crc: &mut u32) {
    put_record(buf, METADATA, Some(metadata), crc);
}

pub(crate) fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut b = Vec::with_capacity(e.data.len() + 24);
    pb::put_uint(&mut b, 1, e.entry_type as u64);
    pb::put_uint(&mut b, 2, e.term);
    pb::put_uint(&mut b, 3, e.index);
    pb::put_bytes(&mut b, 4, &e.data);
    // raft-rs's context (field 6); etcd's Entry has no such field and skips it. Only
    // written when set, so ferrokv's entries (which never set it) are byte-identical to etcd's.
    if !e.context.is_empty() {
        pb::put_bytes(&mut b, 6, &e.context);
    }
    b
}

pub(crate) fn put_entry(buf: &mut Vec<u8>, e: &Entry, crc: &mut u32, scratch: &mut Vec<u8>) {
    scratch.clear();
    scratch.extend_from_slice(&encode_entry(e));
    put_record(buf, ENTRY, Some(scratch), crc);
}

pub(crate) fn put_hard_state(buf: &mut Vec<u8>, hs: &HardState, crc: &mut u32) {
    let mut b = Vec::with_capacity(24);
    pb::put_uint(&mut b, 1, hs.term);
    pb::put_uint(&mut b, 2, hs.vote);
    pb::put_uint(&mut b, 3, hs.commit);
    put_record(buf, STATE, Some(&b), crc);
}

pub(crate) fn put_snapshot(buf: &mut Vec<u8>, m: &SnapshotMarker, crc: &mut u32) {
    let mut b = Vec::with_capacity(20);
    pb::put_uint(&mut b, 1, m.index);
    pb::put_uint(&mut b, 2, m.term);
    put_record(buf, SNAPSHOT, Some(&b), crc);
}

/// A frame whose `walpb.Record` parsed; its CRC is not checked yet (that needs the running
/// value, which the reader keeps).
pub(crate) struct Framed<'a> {
    pub ty: i64,
    pub crc: u32,
    pub data: Option<&'a [u8]>,
    /// Offset just past this record and its padding.
    pub end: usize,
}

/// Why the bytes at an offset are not a record.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// A zero length word: etcd's end of the written part of a (preallocated) file.
    Zero,
    /// The frame claims more bytes than the file has (a write cut short).
    Truncated(String),
    Malformed(String),
}

impl FrameError {
    pub fn reason(&self) -> String {
        match self {
            FrameError::Zero => "zero length word (zero-filled space)".into(),
            FrameError::Truncated(s) | FrameError::Malformed(s) => s.clone(),
        }
    }
}

/// Reads the frame at `off` (8-aligned).
pub(crate) fn read_frame(buf: &[u8], off: usize) -> Result<Framed<'_>, FrameError> {
    let left = buf.len().saturating_sub(off);
    if left < FRAME_LEN {
        if buf[off..].iter().all(|&b| b == 0) {
            return Err(FrameError::Zero);
        }
        return Err(FrameError::Truncated(format!(
            "truncated length word ({left} of {FRAME_LEN} bytes)"
        )));
    }
    let mut w = [0u8; 8];
    w.copy_from_slice(&buf[off..off + FRAME_LEN]);
    let word = u64::from_le_bytes(w);
    if word == 0 {
        return Err(FrameError::Zero);
    }
    let (len, pad) = if word >> 63 == 1 {
        (word & !(0xff << 56), (word >> 56) & 0x7)
    } else {
        (word, 0)
    };
    if word >> 63 == 1 && (word >> 59) & 0xf != 0 {
        return Err(FrameError::Malformed(format!(
            "bad length word {word:016x}"
        )));
    }
    if len > MAX_RECORD || (len + pad) % 8 != 0 {
        return Err(FrameError::Malformed(format!(
            "bad length word {word:016x} (length {len}, padding {pad})"
        )));
    }
    let total = (len + pad) as usize;
    let have = left - FRAME_LEN;
    if total > have {
        return Err(FrameError::Truncated(format!(
            "record of {total} bytes exceeds the {have} bytes left in the file"
        )));
    }
    let body = &buf[off + FRAME_LEN..off + FRAME_LEN + len as usize];
    let (mut ty, mut crc, mut data) = (None, None, None);
    for f in pb::fields(body) {
        let (n, v) = f.map_err(|e| FrameError::Malformed(format!("record: {e}")))?;
        let bad = |e: String| FrameError::Malformed(format!("record: {e}"));
        match n {
            1 => ty = Some(pb::want_varint(n, &v).map_err(bad)? as i64),
            2 => {
                let c = pb::want_varint(n, &v).map_err(bad)?;
                crc = Some(u32::try_from(c).map_err(|_| bad(format!("crc {c} overflows")))?)
            }
            3 => data = Some(pb::want_bytes(n, &v).map_err(bad)?),
            _ => {}
        }
    }
    let ty = ty.ok_or_else(|| FrameError::Malformed("record without a type".into()))?;
    if !(METADATA..=SNAPSHOT).contains(&ty) {
        return Err(FrameError::Malformed(format!("unknown record type {ty}")));
    }
    Ok(Framed {
        ty,
        crc: crc.unwrap_or(0),
        data,
        end: off + FRAME_LEN + total,
    })
}

/// Decodes a frame's payload.
pub(crate) fn decode(f: &Framed<'_>) -> Result<Record, String> {
    let data = f.data.unwrap_or(&[]);
    Ok(match f.ty {
        METADATA => Record::Metadata(data.to_vec()),
        CRC => Record::Crc(f.crc),
        ENTRY => Record::Entry(decode_entry(data)?),
        STATE => {
            let mut hs = HardState::default();
            for fl in pb::fields(data) {
                let (n, v) = fl?;
                match n {
                    1 => hs.term = pb::want_varint(n, &v)?,
                    2 => hs.vote = pb::want_varint(n, &v)?,
                    3 => hs.commit = pb::want_varint(n, &v)?,
                    // etcd's CRC does not cover the record type: an entry whose type byte
                    // flipped to "state" must not pass as a hard state.
                    _ => return Err(format!("hard state with unknown field {n}")),
                }
            }
            Record::HardState(hs)
        }
        SNAPSHOT => {
            let mut m = SnapshotMarker::default();
            for fl in pb::fields(data) {
                let (n, v) = fl?;
                match n {
                    1 => m.index = pb::want_varint(n, &v)?,
                    2 => m.term = pb::want_varint(n, &v)?,
                    3 => {
                        pb::want_bytes(n, &v)?;
                    }
                    _ => return Err(format!("snapshot record with unknown field {n}")),
                }
            }
            Record::Snapshot(m)
        }
        other => return Err(format!("unknown record type {other}")),
    })
}

/// An entry's fields, borrowed from its record's bytes.
pub(crate) struct EntryView<'a> {
    pub index: u64,
    pub term: u64,
    pub entry_type: i32,
    pub data: &'a [u8],
    pub context: &'a [u8],
}

/// Parses and checks an entry without copying its data: replay checks every entry of the log
/// but keeps only those after the snapshot.
pub(crate) fn view_entry(data: &[u8]) -> Result<EntryView<'_>, String> {
    let mut e = EntryView {
        index: 0,
        term: 0,
        entry_type: 0,
        data: &[],
        context: &[],
    };
    let mut has_data = false;
    for fl in pb::fields(data) {
        let (n, v) = fl?;
        has_data |= n == 4;
        match n {
            1 => e.entry_type = pb::want_varint(n, &v)? as i32,
            2 => e.term = pb::want_varint(n, &v)?,
            3 => e.index = pb::want_varint(n, &v)?,
            4 => e.data = pb::want_bytes(n, &v)?,
            6 => e.context = pb::want_bytes(n, &v)?,
            _ => {}
        }
    }
    // etcd's CRC does not cover the record type, and a hard state's fields (term, vote,
    // commit) read as an entry's (type, term, index). Only etcd's empty normal entries (a new
    // leader's) lack data; ferrokv always writes the field.
    if !has_data && e.entry_type != 0 {
        return Err(format!(
            "entry {} of type {} has no data (a damaged record type?)",
            e.index, e.entry_type
        ));
    }
    Ok(e)
}

pub(crate) fn decode_entry(data: &[u8]) -> Result<Entry, String> {
    let v = view_entry(data)?;
    Ok(Entry {
        index: v.index,
        term: v.term,
        entry_type: v.entry_type,
        data: v.data.to_vec(),
        context: v.context.to_vec(),
    })
}

/// Whether a record frame that parses and decodes starts at `off`: used to tell a torn tail
/// (nothing valid after the bad bytes) from damage in the middle. With a chained CRC a later
/// record's checksum cannot be verified without the damaged one, so the test is structural.
pub(crate) fn plausible_record_at(buf: &[u8], off: usize) -> bool {
    match read_frame(buf, off) {
        Ok(f) => f.data.is_some() == (f.ty != CRC) && decode(&f).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term: 7,
            entry_type: 2,
            data: data.to_vec(),
            context: Vec::new(),
        }
    }

    #[test]
    fn frames_are_padded_to_8_bytes_with_the_pad_in_the_top_byte() {
        let mut buf = Vec::new();
        let mut crc = 0;
        put_entry(&mut buf, &entry(1, b"abc"), &mut crc, &mut Vec::new());
        assert_eq!(buf.len() % 8, 0);
        let word = u64::from_le_bytes(buf[..8].try_into().unwrap());
        let len = word & 0x00ff_ffff_ffff_ffff;
        let pad = (word >> 56) & 0x7f;
        assert_eq!(word >> 63, 1);
        assert_eq!(8 + len + pad, buf.len() as u64);
    }

    #[test]
    fn every_record_type_round_trips_and_chains_the_crc() {
        let mut buf = Vec::new();
        let mut crc = 0;
        put_crc(&mut buf, &mut crc);
        put_metadata(&mut buf, &pb::encode_metadata(1, 2), &mut crc);
        let e = entry(42, b"hello");
        put_entry(&mut buf, &e, &mut crc, &mut Vec::new());
        let hs = HardState {
            term: 1,
            vote: 2,
            commit: 3,
        };
        put_hard_state(&mut buf, &hs, &mut crc);
        let m = SnapshotMarker {
            index: u64::MAX,
            term: 9,
        };
        put_snapshot(&mut buf, &m, &mut crc);
        let mut off = 0;
        let mut running = 0;
        let mut got = Vec::new();
        while off < buf.len() {
            let f = read_frame(&buf, off).unwrap();
            if f.ty != CRC {
                running = crc32c::append(running, f.data.unwrap());
                assert_eq!(f.crc, running);
            }
            got.push(decode(&f).unwrap());
            off = f.end;
        }
        assert_eq!(
            got,
            vec![
                Record::Crc(0),
                Record::Metadata(pb::encode_metadata(1, 2)),
                Record::Entry(e),
                Record::HardState(hs),
                Record::Snapshot(m)
            ]
        );
        assert_eq!(running, crc);
    }

    #[test]
    fn zero_filled_bytes_are_the_end_not_a_record() {
        assert!(matches!(read_frame(&[0u8; 64], 0), Err(FrameError::Zero)));
        assert!(matches!(read_frame(&[0u8; 3], 0), Err(FrameError::Zero)));
    }
}
