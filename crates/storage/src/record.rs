//! Binary encoding of one key revision.
//!
//! A fixed 33-byte header (flags, create, mod, version, lease) comes first so that counting and
//! revision filters never touch the value bytes. `latest` records omit the key (it is the table
//! key); `history` records carry it after the header as `u32 len + bytes`.

use crate::{Error, Result};
use ferrokv_proto::mvccpb;

pub(crate) const HEADER_LEN: usize = 33;
const FLAG_TOMBSTONE: u8 = 1;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub tombstone: bool,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl Header {
    pub(crate) fn tombstone(mod_revision: i64) -> Header {
        Header {
            tombstone: true,
            mod_revision,
            ..Header::default()
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(if self.tombstone { FLAG_TOMBSTONE } else { 0 });
        out.extend_from_slice(&self.create_revision.to_le_bytes());
        out.extend_from_slice(&self.mod_revision.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.lease.to_le_bytes());
    }

    pub(crate) fn read(buf: &[u8]) -> Result<Header> {
        if buf.len() < HEADER_LEN {
            return Err(Error::Corrupt(format!(
                "record of {} bytes is shorter than its header",
                buf.len()
            )));
        }
        let flags = buf[0];
        if flags & !FLAG_TOMBSTONE != 0 {
            return Err(Error::Corrupt(format!(
                "record has unknown flags {flags:#x}"
            )));
        }
        Ok(Header {
            tombstone: flags & FLAG_TOMBSTONE != 0,
            create_revision: read_i64(buf, 1),
            mod_revision: read_i64(buf, 9),
            version: read_i64(buf, 17),
            lease: read_i64(buf, 25),
        })
    }
}

fn read_i64(buf: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    i64::from_le_bytes(b)
}

pub(crate) fn encode_latest(h: &Header, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + value.len());
    h.write(&mut out);
    out.extend_from_slice(value);
    out
}

/// Returns the header and the value bytes of a `latest` record.
pub(crate) fn decode_latest(buf: &[u8]) -> Result<(Header, &[u8])> {
    let h = Header::read(buf)?;
    Ok((h, &buf[HEADER_LEN..]))
}

pub(crate) fn encode_history(h: &Header, key: &[u8], value: &[u8]) -> Result<Vec<u8>> {
    let key_len =
        u32::try_from(key.len()).map_err(|_| Error::Backend("key longer than 4 GiB".into()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + key.len() + value.len());
    h.write(&mut out);
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    Ok(out)
}

/// Returns header, key and value of a `history` record.
pub(crate) fn decode_history(buf: &[u8]) -> Result<(Header, &[u8], &[u8])> {
    let h = Header::read(buf)?;
    let rest = &buf[HEADER_LEN..];
    if rest.len() < 4 {
        return Err(Error::Corrupt("history record without key length".into()));
    }
    let key_len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let rest = &rest[4..];
    if rest.len() < key_len {
        return Err(Error::Corrupt(
            "history record key runs past its end".into(),
        ));
    }
    Ok((h, &rest[..key_len], &rest[key_len..]))
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
        let cases = [
            (
                Header {
                    tombstone: false,
                    create_revision: 2,
                    mod_revision: 5,
                    version: 3,
                    lease: 7,
                },
                b"k".as_slice(),
                b"value".as_slice(),
            ),
            (Header::tombstone(9), b"key".as_slice(), b"".as_slice()),
            (
                Header {
                    tombstone: false,
                    create_revision: i64::MAX,
                    mod_revision: 1,
                    version: 1,
                    lease: -1,
                },
                b"".as_slice(),
                b"\0\xff".as_slice(),
            ),
        ];
        for (h, key, value) in cases {
            let l = encode_latest(&h, value);
            assert_eq!(decode_latest(&l).unwrap(), (h, value));
            let hist = encode_history(&h, key, value).unwrap();
            assert_eq!(decode_history(&hist).unwrap(), (h, key, value));
        }
    }

    #[test]
    fn corrupt_records_are_rejected() {
        let good = encode_history(&Header::tombstone(3), b"abc", b"v").unwrap();
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            good[..HEADER_LEN - 1].to_vec(),
            good[..HEADER_LEN + 2].to_vec(),
            good[..HEADER_LEN + 5].to_vec(),
            {
                let mut b = good.clone();
                b[0] = 0x80;
                b
            },
        ];
        for c in cases {
            assert!(
                matches!(decode_history(&c), Err(Error::Corrupt(_))),
                "{c:?}"
            );
        }
    }
}
