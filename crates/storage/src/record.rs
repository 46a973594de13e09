//! Binary encoding of one key revision (schema 2).
//!
//! Every value is stored once, in its `history` record; a `latest` row is only the header of
//! the key's newest revision, (main, sub) included, so a current read finds the value with one
//! more point lookup, and counting, keys-only and revision filters never touch value bytes.
//!
//! Numbers are LEB128 varints (signed ones zigzag), because most revisions, versions and
//! leases are small: a `latest` row of a fresh key is 7 bytes where the fixed layout took 33.
//!
//! - `latest` row: flags, create, mod, sub, version, lease.
//! - `history` record (its table key is (mod, sub)): flags, create, version, lease, key length,
//!   key, then the value: inline, or with `FLAG_CHUNKED` its length and the tail that does not
//!   fill a whole chunk, the rest in `chunks` rows of `CHUNK` bytes.
//!
//! Why chunks: redb stores an entry larger than a page on a power-of-two run of pages (a
//! 128 KiB value took 256 KiB). `CHUNK` is what one 4 KiB leaf page holds beside one
//! fixed-width `(u64, u32, u32)` key: page header 4 + value end offset 4 + key 16 bytes.

use crate::{Error, Result};
use ferrokv_proto::mvccpb;

const FLAG_TOMBSTONE: u8 = 1;
const FLAG_CHUNKED: u8 = 2;

/// Bytes of one chunk: exactly one redb leaf page each.
pub(crate) const CHUNK: usize = 4096 - 4 - 4 - 16;
/// Values up to this size stay inline in the history record, and so does the tail of a
/// chunked value when it is no longer: such records share leaf pages with their neighbours.
pub(crate) const INLINE_MAX: usize = 2048;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Header {
    pub tombstone: bool,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The sub revision of `mod_revision`: with it the header names its history record.
    pub sub: u32,
    pub version: i64,
    pub lease: i64,
}

impl Header {
    pub(crate) fn tombstone(mod_revision: i64, sub: u32) -> Header {
        Header {
            tombstone: true,
            mod_revision,
            sub,
            ..Header::default()
        }
    }

    /// The (main, sub) key of this revision's history record.
    pub(crate) fn history_key(&self) -> (u64, u32) {
        (u64::try_from(self.mod_revision).unwrap_or(0), self.sub)
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_ivarint(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// A cursor over one record.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn uvarint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.at) else {
                return Err(Error::Corrupt("record ends inside a number".into()));
            };
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::Corrupt("record has an overlong number".into()))
    }

    fn ivarint(&mut self) -> Result<i64> {
        let u = self.uvarint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    fn u32(&mut self) -> Result<u32> {
        u32::try_from(self.uvarint()?).map_err(|_| Error::Corrupt("record field overflows".into()))
    }

    fn len(&mut self) -> Result<usize> {
        let n = usize::try_from(self.uvarint()?)
            .map_err(|_| Error::Corrupt("record length overflows".into()))?;
        Ok(n)
    }

    fn flags(&mut self, allowed: u8) -> Result<u8> {
        let Some(&f) = self.buf.get(self.at) else {
            return Err(Error::Corrupt("empty record".into()));
        };
        self.at += 1;
        if f & !allowed != 0 {
            return Err(Error::Corrupt(format!("record has unknown flags {f:#x}")));
        }
        Ok(f)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| Error::Corrupt("record field runs past its end".into()))?;
        let b = &self.buf[self.at..end];
        self.at = end;
        Ok(b)
    }

    fn rest(&self) -> &'a [u8] {
        &self.buf[self.at..]
    }
}

pub(crate) fn encode_latest(h: &Header) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.push(if h.tombstone { FLAG_TOMBSTONE } else { 0 });
    put_ivarint(&mut out, h.create_revision);
    put_ivarint(&mut out, h.mod_revision);
    put_uvarint(&mut out, u64::from(h.sub));
    put_ivarint(&mut out, h.version);
    put_ivarint(&mut out, h.lease);
    out
}

pub(crate) fn decode_latest(buf: &[u8]) -> Result<Header> {
    let mut r = Reader { buf, at: 0 };
    let f = r.flags(FLAG_TOMBSTONE)?;
    let h = Header {
        tombstone: f & FLAG_TOMBSTONE != 0,
        create_revision: r.ivarint()?,
        mod_revision: r.ivarint()?,
        sub: r.u32()?,
        version: r.ivarint()?,
        lease: r.ivarint()?,
    };
    if !r.rest().is_empty() {
        return Err(Error::Corrupt("latest record has trailing bytes".into()));
    }
    Ok(h)
}

/// How a value of `len` bytes is split: (whole chunks, tail bytes kept inline). A tail longer
/// than `INLINE_MAX` becomes one more (short) chunk instead.
pub(crate) fn split(len: usize) -> (usize, usize) {
    if len <= INLINE_MAX {
        return (0, len);
    }
    let (full, tail) = (len / CHUNK, len % CHUNK);
    if tail <= INLINE_MAX {
        (full, tail)
    } else {
        (full + 1, 0)
    }
}

/// The history record of `h` and the chunks (in order) to store beside it.
pub(crate) fn encode_history<'v>(
    h: &Header,
    key: &[u8],
    value: &'v [u8],
) -> (Vec<u8>, Vec<&'v [u8]>) {
    let (chunks, tail) = split(value.len());
    let chunked = chunks > 0;
    let mut out = Vec::with_capacity(16 + key.len() + tail);
    out.push(if h.tombstone { FLAG_TOMBSTONE } else { 0 } | if chunked { FLAG_CHUNKED } else { 0 });
    put_ivarint(&mut out, h.create_revision);
    put_ivarint(&mut out, h.version);
    put_ivarint(&mut out, h.lease);
    put_uvarint(&mut out, key.len() as u64);
    out.extend_from_slice(key);
    if chunked {
        put_uvarint(&mut out, value.len() as u64);
    }
    let body = value.len() - tail;
    out.extend_from_slice(&value[body..]);
    (out, value[..body].chunks(CHUNK).collect())
}

/// Where a history record's value is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Body<'a> {
    Inline(&'a [u8]),
    /// `chunks` rows of the value, then `tail` bytes at the end of the value.
    Chunked {
        len: usize,
        chunks: usize,
        tail: &'a [u8],
    },
}

/// Header, key and value location of a `history` record stored at (main, sub).
pub(crate) fn decode_history(main: u64, sub: u32, buf: &[u8]) -> Result<(Header, &[u8], Body<'_>)> {
    let mut r = Reader { buf, at: 0 };
    let f = r.flags(FLAG_TOMBSTONE | FLAG_CHUNKED)?;
    let h = Header {
        tombstone: f & FLAG_TOMBSTONE != 0,
        create_revision: r.ivarint()?,
        mod_revision: i64::try_from(main)
            .map_err(|_| Error::Corrupt(format!("history revision {main} overflows")))?,
        sub,
        version: r.ivarint()?,
        lease: r.ivarint()?,
    };
    let key_len = r.len()?;
    let key = r.bytes(key_len)?;
    let body = if f & FLAG_CHUNKED != 0 {
        let len = r.len()?;
        let (chunks, tail_len) = split(len);
        let tail = r.rest();
        if chunks == 0 || tail.len() != tail_len {
            return Err(Error::Corrupt(format!(
                "chunked history record {main}/{sub}: {} inline bytes for a value of {len}",
                tail.len()
            )));
        }
        Body::Chunked { len, chunks, tail }
    } else {
        Body::Inline(r.rest())
    };
    Ok((h, key, body))
}

/// The wire form of a record. A tombstone becomes etcd's DELETE event kv: key and
/// mod_revision only.
pub(crate) fn to_kv(key: &[u8], h: &Header, value: &[u8]) -> mvccpb::KeyValue {
    if h.tombstone {
        return mvccpb::KeyValue {
            key: key.to_vec(),
            mod_revision: h.mod_revision,
            ..Default::default()
        };
    }
    mvccpb::KeyValue {
        key: key.to_vec(),
        create_revision: h.create_revision,
        mod_revision: h.mod_revision,
        version: h.version,
        value: value.to_vec(),
        lease: h.lease,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_latest_and_history() {
        let big: Vec<u8> = (0..3 * CHUNK + 100).map(|i| i as u8).collect();
        let long_tail: Vec<u8> = (0..CHUNK + INLINE_MAX + 1).map(|i| i as u8).collect();
        let cases = [
            (
                Header {
                    tombstone: false,
                    create_revision: 2,
                    mod_revision: 5,
                    sub: 3,
                    version: 3,
                    lease: 7,
                },
                b"k".as_slice(),
                b"value".as_slice(),
            ),
            (Header::tombstone(9, 0), b"key".as_slice(), b"".as_slice()),
            (
                Header {
                    tombstone: false,
                    create_revision: i64::MAX,
                    mod_revision: 1,
                    sub: u32::MAX,
                    version: 1,
                    lease: -1,
                },
                b"".as_slice(),
                b"\0\xff".as_slice(),
            ),
            (
                Header {
                    mod_revision: 77,
                    create_revision: 70,
                    version: 2,
                    lease: i64::MIN,
                    ..Header::default()
                },
                b"big".as_slice(),
                big.as_slice(),
            ),
            (
                Header {
                    mod_revision: 78,
                    ..Header::default()
                },
                b"tail".as_slice(),
                long_tail.as_slice(),
            ),
        ];
        for (h, key, value) in cases {
            assert_eq!(decode_latest(&encode_latest(&h)).unwrap(), h);
            let (rec, chunks) = encode_history(&h, key, value);
            let (got, k, body) = decode_history(h.history_key().0, h.sub, &rec).unwrap();
            assert_eq!((got, k), (h, key));
            let whole = match body {
                Body::Inline(v) => {
                    assert!(chunks.is_empty());
                    v.to_vec()
                }
                Body::Chunked {
                    len,
                    chunks: n,
                    tail,
                } => {
                    assert_eq!((len, n), (value.len(), chunks.len()));
                    assert!(chunks.iter().all(|c| c.len() <= CHUNK));
                    [chunks.concat().as_slice(), tail].concat()
                }
            };
            assert_eq!(whole, value);
        }
        assert_eq!(split(CHUNK + INLINE_MAX + 1), (2, 0));
        assert_eq!(split(32 * 4096), (32, 32 * 4096 - 32 * CHUNK));
    }

    #[test]
    fn corrupt_records_are_rejected() {
        let (good, _) = encode_history(&Header::tombstone(3, 0), b"abc", b"v");
        let (chunked, _) = encode_history(&Header::default(), b"k", &[1u8; 3 * CHUNK]);
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            good[..2].to_vec(),
            good[..5].to_vec(),
            {
                let mut b = good.clone();
                b[0] = 0x80;
                b
            },
            vec![
                0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            [chunked.as_slice(), b"x"].concat(),
        ];
        for c in cases {
            assert!(
                matches!(decode_history(3, 0, &c), Err(Error::Corrupt(_))),
                "{c:?}"
            );
        }
        assert!(
            decode_latest(&[0, 2, 2, 0, 2, 0, 9]).is_err(),
            "trailing bytes"
        );
    }
}
