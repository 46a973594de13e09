//! ferrokv's previous WAL record format, kept to read (and upgrade) data dirs it wrote.
//!
//! A record is `len: u32 LE | type: u8 | crc: u32 LE | payload[len]`, where the CRC32 covers
//! the type byte and the payload. The CRC includes the type so that a flipped type byte is
//! caught, and a zero-filled region (type 0, CRC 0) never passes as a record. Integers in
//! payloads are little-endian fixed width: simple to decode and to reason about when a
//! payload is inspected by hand.

// The writers are kept for the tests that build old-format WALs; the member only reads.
#![cfg_attr(not(test), allow(dead_code))]

use crate::{Entry, HardState, SnapshotMarker};

/// Bytes before the payload: length (4) + type (1) + CRC (4).
pub(crate) const HEADER_LEN: usize = 9;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RecordType {
    /// Opaque bytes given at create; first record of every segment.
    Metadata = 1,
    Entry = 2,
    HardState = 3,
    Snapshot = 4,
}

impl RecordType {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Metadata),
            2 => Some(Self::Entry),
            3 => Some(Self::HardState),
            4 => Some(Self::Snapshot),
            _ => None,
        }
    }
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Metadata(Vec<u8>),
    Entry(Entry),
    HardState(HardState),
    Snapshot(SnapshotMarker),
}

/// A payload longer than the u32 length field can describe.
#[derive(Debug)]
#[cfg_attr(test, allow(dead_code))]
pub(crate) struct TooLarge(pub usize);

/// Appends one framed record to `buf`; `write_payload` writes the payload bytes.
fn put_record(
    buf: &mut Vec<u8>,
    ty: RecordType,
    write_payload: impl FnOnce(&mut Vec<u8>),
) -> Result<(), TooLarge> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER_LEN]);
    write_payload(buf);
    let payload_len = buf.len() - start - HEADER_LEN;
    let Ok(len) = u32::try_from(payload_len) else {
        buf.truncate(start);
        return Err(TooLarge(payload_len));
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[ty as u8]);
    crc.update(&buf[start + HEADER_LEN..]);
    let crc = crc.finalize();
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4] = ty as u8;
    buf[start + 5..start + 9].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    // Only called inside a record whose total length is checked against u32 afterwards, so
    // a field that does not fit is reported as TooLarge by put_record; saturate here.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(bytes);
}

pub(crate) fn put_metadata(buf: &mut Vec<u8>, metadata: &[u8]) -> Result<(), TooLarge> {
    put_record(buf, RecordType::Metadata, |b| b.extend_from_slice(metadata))
}

pub(crate) fn put_entry(buf: &mut Vec<u8>, e: &Entry) -> Result<(), TooLarge> {
    put_record(buf, RecordType::Entry, |b| {
        b.extend_from_slice(&e.index.to_le_bytes());
        b.extend_from_slice(&e.term.to_le_bytes());
        b.extend_from_slice(&e.entry_type.to_le_bytes());
        put_bytes(b, &e.data);
        put_bytes(b, &e.context);
    })
}

pub(crate) fn put_hard_state(buf: &mut Vec<u8>, hs: &HardState) -> Result<(), TooLarge> {
    put_record(buf, RecordType::HardState, |b| {
        b.extend_from_slice(&hs.term.to_le_bytes());
        b.extend_from_slice(&hs.vote.to_le_bytes());
        b.extend_from_slice(&hs.commit.to_le_bytes());
    })
}

pub(crate) fn put_snapshot(buf: &mut Vec<u8>, m: &SnapshotMarker) -> Result<(), TooLarge> {
    put_record(buf, RecordType::Snapshot, |b| {
        b.extend_from_slice(&m.index.to_le_bytes());
        b.extend_from_slice(&m.term.to_le_bytes());
    })
}

/// A record framed correctly at some offset, payload not yet decoded.
pub(crate) struct Framed<'a> {
    pub ty: RecordType,
    pub payload: &'a [u8],
    /// Offset just past this record.
    pub end: usize,
}

/// Reads the frame at `off`. Err explains why the bytes there are not a valid record.
pub(crate) fn read_frame(buf: &[u8], off: usize) -> Result<Framed<'_>, String> {
    let left = buf.len().saturating_sub(off);
    if left < HEADER_LEN {
        return Err(format!(
            "truncated record header ({left} of {HEADER_LEN} bytes)"
        ));
    }
    let h = &buf[off..off + HEADER_LEN];
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let ty = h[4];
    let stored = u32::from_le_bytes([h[5], h[6], h[7], h[8]]);
    let payload_left = left - HEADER_LEN;
    if len > payload_left {
        return Err(format!(
            "record length {len} exceeds the {payload_left} bytes left in the file"
        ));
    }
    let payload = &buf[off + HEADER_LEN..off + HEADER_LEN + len];
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[ty]);
    crc.update(payload);
    let computed = crc.finalize();
    if computed != stored {
        return Err(format!(
            "crc mismatch (stored {stored:08x}, computed {computed:08x})"
        ));
    }
    let ty = RecordType::from_u8(ty).ok_or_else(|| format!("unknown record type {ty}"))?;
    Ok(Framed {
        ty,
        payload,
        end: off + HEADER_LEN + len,
    })
}

/// Sequential reader over a payload; every read checks the remaining length.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!(
                "payload too short for {what} ({} of {n} bytes)",
                self.buf.len()
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes(&mut self, what: &str) -> Result<Vec<u8>, String> {
        let len = self.u32(what)? as usize;
        Ok(self.take(len, what)?.to_vec())
    }
    fn finish(self, what: &str) -> Result<(), String> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} trailing bytes after {what} payload",
                self.buf.len()
            ))
        }
    }
}

/// Decodes a framed record's payload.
pub(crate) fn decode(f: &Framed<'_>) -> Result<Record, String> {
    let mut c = Cursor { buf: f.payload };
    let rec = match f.ty {
        RecordType::Metadata => return Ok(Record::Metadata(f.payload.to_vec())),
        RecordType::Entry => {
            let index = c.u64("entry index")?;
            let term = c.u64("entry term")?;
            let entry_type = c.u32("entry type")? as i32;
            let data = c.bytes("entry data")?;
            let context = c.bytes("entry context")?;
            c.finish("entry")?;
            Record::Entry(Entry {
                index,
                term,
                entry_type,
                data,
                context,
            })
        }
        RecordType::HardState => {
            let term = c.u64("hard state term")?;
            let vote = c.u64("hard state vote")?;
            let commit = c.u64("hard state commit")?;
            c.finish("hard state")?;
            Record::HardState(HardState { term, vote, commit })
        }
        RecordType::Snapshot => {
            let index = c.u64("snapshot index")?;
            let term = c.u64("snapshot term")?;
            c.finish("snapshot")?;
            Record::Snapshot(SnapshotMarker { index, term })
        }
    };
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term: 7,
            entry_type: -3,
            data: data.to_vec(),
            context: b"ctx".to_vec(),
        }
    }

    fn roundtrip(put: impl FnOnce(&mut Vec<u8>) -> Result<(), TooLarge>) -> Record {
        let mut buf = Vec::new();
        put(&mut buf).unwrap();
        let f = read_frame(&buf, 0).unwrap();
        assert_eq!(f.end, buf.len());
        decode(&f).unwrap()
    }

    #[test]
    fn every_record_type_round_trips() {
        let e = entry(42, b"hello");
        assert_eq!(roundtrip(|b| put_entry(b, &e)), Record::Entry(e.clone()));
        let empty = Entry {
            data: vec![],
            context: vec![],
            ..e
        };
        assert_eq!(
            roundtrip(|b| put_entry(b, &empty)),
            Record::Entry(empty.clone())
        );
        let hs = HardState {
            term: 1,
            vote: 2,
            commit: 3,
        };
        assert_eq!(roundtrip(|b| put_hard_state(b, &hs)), Record::HardState(hs));
        let m = SnapshotMarker {
            index: u64::MAX,
            term: 9,
        };
        assert_eq!(roundtrip(|b| put_snapshot(b, &m)), Record::Snapshot(m));
        assert_eq!(
            roundtrip(|b| put_metadata(b, b"member=1")),
            Record::Metadata(b"member=1".to_vec())
        );
    }

    #[test]
    fn zero_filled_bytes_are_not_a_record() {
        let zeros = [0u8; 64];
        let err = read_frame(&zeros, 0).err().unwrap();
        assert!(err.contains("crc mismatch"), "{err}");
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let mut buf = Vec::new();
        put_entry(&mut buf, &entry(5, b"payload bytes")).unwrap();
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(
                read_frame(&bad, 0).is_err(),
                "flip at byte {i} not detected"
            );
        }
    }

    #[test]
    fn frame_errors_explain_the_problem() {
        let mut buf = Vec::new();
        put_entry(&mut buf, &entry(1, b"abc")).unwrap();
        // (bytes kept, expected words in the reason)
        let cases: &[(usize, &str)] = &[
            (0, "truncated record header"),
            (HEADER_LEN - 1, "truncated record header"),
            (HEADER_LEN, "exceeds"),
            (buf.len() - 1, "exceeds"),
        ];
        for &(keep, want) in cases {
            let err = read_frame(&buf[..keep], 0).err().unwrap();
            assert!(err.contains(want), "keep {keep}: {err}");
        }
    }

    #[test]
    fn crc_valid_but_malformed_payload_is_a_decode_error() {
        let mut buf = Vec::new();
        put_record(&mut buf, RecordType::HardState, |b| {
            b.extend_from_slice(&[1, 2, 3])
        })
        .unwrap();
        let f = read_frame(&buf, 0).unwrap();
        assert!(decode(&f).unwrap_err().contains("too short"));
    }
}
