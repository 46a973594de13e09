//! The schema 1 layout (every store written before the schema version existed), kept to
//! migrate such files on open ([`crate::Store::open`]) and to write them in tests.
//!
//! Schema 1: `latest` held a fixed 33-byte header (flags, create, mod, version, lease as i64
//! LE) followed by the value; `history` the same header, `u32 len` + key, then the value
//! again. `key_index`, `leases`, `lease_keys` and `meta` are the same in schema 2
//! (schema 3 leaves each key's newest revision out of `key_index`).

use crate::record::Header;
use crate::tables::HistoryKey;
use crate::{Error, Result};
use redb::TableDefinition;

pub(crate) const LATEST_V1: TableDefinition<&[u8], &[u8]> = TableDefinition::new("latest");
pub(crate) const HISTORY_V1: TableDefinition<HistoryKey, &[u8]> = TableDefinition::new("history");

const HEADER_LEN: usize = 33;
const FLAG_TOMBSTONE: u8 = 1;

fn read_i64(buf: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    i64::from_le_bytes(b)
}

/// The header of a schema 1 record (its sub revision was not stored: 0 here).
fn read_header(buf: &[u8]) -> Result<Header> {
    if buf.len() < HEADER_LEN {
        return Err(Error::Corrupt(format!(
            "schema 1 record of {} bytes is shorter than its header",
            buf.len()
        )));
    }
    let flags = buf[0];
    if flags & !FLAG_TOMBSTONE != 0 {
        return Err(Error::Corrupt(format!(
            "schema 1 record has unknown flags {flags:#x}"
        )));
    }
    Ok(Header {
        tombstone: flags & FLAG_TOMBSTONE != 0,
        create_revision: read_i64(buf, 1),
        mod_revision: read_i64(buf, 9),
        sub: 0,
        version: read_i64(buf, 17),
        lease: read_i64(buf, 25),
    })
}

/// The header of a schema 1 `latest` row (its value, the copy of history's, is not needed).
pub(crate) fn decode_latest_header(buf: &[u8]) -> Result<Header> {
    read_header(buf)
}

/// Header and key of a schema 1 `history` record, and its value.
pub(crate) fn decode_history(buf: &[u8]) -> Result<(Header, &[u8], &[u8])> {
    let h = read_header(buf)?;
    let rest = &buf[HEADER_LEN..];
    if rest.len() < 4 {
        return Err(Error::Corrupt(
            "schema 1 history record without key length".into(),
        ));
    }
    let key_len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let rest = &rest[4..];
    if rest.len() < key_len {
        return Err(Error::Corrupt(
            "schema 1 history record key runs past its end".into(),
        ));
    }
    Ok((h, &rest[..key_len], &rest[key_len..]))
}

#[cfg(test)]
fn write_header(h: &Header, out: &mut Vec<u8>) {
    out.push(if h.tombstone { FLAG_TOMBSTONE } else { 0 });
    out.extend_from_slice(&h.create_revision.to_le_bytes());
    out.extend_from_slice(&h.mod_revision.to_le_bytes());
    out.extend_from_slice(&h.version.to_le_bytes());
    out.extend_from_slice(&h.lease.to_le_bytes());
}

/// The schema 1 writer, as the code before schema 2 wrote records: tests build old files
/// with it to check the migration.
#[cfg(test)]
pub(crate) fn encode_latest(h: &Header, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + value.len());
    write_header(h, &mut out);
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
pub(crate) fn encode_history(h: &Header, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + key.len() + value.len());
    write_header(h, &mut out);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}
