//! The schema version of a keyspace file and the migration of older layouts to the current
//! one ([`SCHEMA`]), run by [`crate::Store::open`] and [`crate::Store::restore_from`] inside
//! their write transaction: redb commits it whole or not at all, so a crash (SIGKILL) in the
//! middle of a migration leaves the old file, which the next open migrates again.

use crate::legacy::{self, HISTORY_V1, LATEST_V1};
use crate::record::{decode_latest, encode_history, encode_latest};
use crate::tables::*;
use crate::{meta_i64, Error, Result};
use redb::{ReadableTable, TableHandle};
use std::ops::Bound;

/// What a migration did.
#[derive(Debug)]
pub(crate) struct Migrated {
    pub records: u64,
    pub keys: u64,
}

fn has_v1<T: TableHandle>(names: impl Iterator<Item = T>) -> bool {
    names.into_iter().any(|t| t.name() == HISTORY_V1.name())
}

/// The layout of the file `rtx` reads: its recorded schema, 1 for a file of the code before
/// the schema was recorded.
pub(crate) fn schema_of(rtx: &redb::ReadTransaction) -> Result<i64> {
    if has_v1(rtx.list_tables()?) {
        return Ok(1);
    }
    match rtx.open_table(META) {
        Ok(meta) => Ok(meta_i64(&meta, META_SCHEMA)?.unwrap_or(SCHEMA)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(SCHEMA),
        Err(e) => Err(e.into()),
    }
}

/// Copies the tables of a schema 1 file as they are (its records are migrated afterwards).
pub(crate) fn copy_v1_tables(
    src: &redb::ReadTransaction,
    dst: &redb::WriteTransaction,
) -> Result<()> {
    crate::copy_table(src, dst, LATEST_V1)?;
    crate::copy_table(src, dst, HISTORY_V1)?;
    crate::copy_table(src, dst, KEY_INDEX)?;
    crate::copy_table(src, dst, LEASES)?;
    crate::copy_table(src, dst, LEASE_KEYS)?;
    crate::copy_table(src, dst, META)
}

/// Creates every table of the current layout and rewrites schema 1 tables into them.
/// Returns what was migrated, None when the file already had the current layout (or was new).
pub(crate) fn to_current(txn: &redb::WriteTransaction) -> Result<Option<Migrated>> {
    let v1 = has_v1(txn.list_tables()?);
    {
        txn.open_table(LATEST)?;
        txn.open_table(HISTORY)?;
        txn.open_table(CHUNKS)?;
        txn.open_table(KEY_INDEX)?;
        txn.open_table(LEASES)?;
        txn.open_table(LEASE_KEYS)?;
        let mut meta = txn.open_table(META)?;
        let recorded = meta_i64(&meta, META_SCHEMA)?;
        match recorded {
            Some(s) if s > SCHEMA => {
                return Err(Error::Corrupt(format!(
                    "keyspace schema {s} is newer than this ferrokv's ({SCHEMA})"
                )))
            }
            Some(s) if s == SCHEMA && !v1 => return Ok(None),
            // Schema 2: the records are as they are now, only the key index has more rows.
            Some(2) if !v1 => {
                drop(meta);
                let keys = index_without_newest(txn)?;
                txn.open_table(META)?
                    .insert(META_SCHEMA, SCHEMA.to_le_bytes().as_slice())?;
                return Ok(Some(Migrated { records: 0, keys }));
            }
            _ => {}
        }
        if !v1 {
            // A new file.
            meta.insert(META_SCHEMA, SCHEMA.to_le_bytes().as_slice())?;
            return Ok(None);
        }
    }
    let mut done = v1_to_v2(txn)?;
    done.keys = index_without_newest(txn)?;
    txn.open_table(META)?
        .insert(META_SCHEMA, SCHEMA.to_le_bytes().as_slice())?;
    Ok(Some(done))
}

/// Schema 2 -> 3: the key index drops each key's newest revision, which `latest` names (see
/// `write::set_latest`). Returns the number of keys.
fn index_without_newest(txn: &redb::WriteTransaction) -> Result<u64> {
    let latest = txn.open_table(LATEST)?;
    let mut index = txn.open_table(KEY_INDEX)?;
    let mut keys = 0;
    for r in latest.iter()? {
        let (k, rec) = r?;
        let h = decode_latest(rec.value())?;
        let (main, sub) = h.history_key();
        if index.remove((k.value(), main, sub))?.is_none() {
            return Err(Error::Corrupt(format!(
                "migrating: latest row of {:?} at revision {main}/{sub} has no key index entry",
                String::from_utf8_lossy(k.value())
            )));
        }
        keys += 1;
    }
    Ok(keys)
}

/// Schema 3 -> 2, for a copy of the keyspace that a member of the version before schema 3
/// may read: each key's newest revision is added to the key index. Latest and the index are
/// both in key order, so the rows go in in order.
pub(crate) fn to_schema_2(txn: &redb::WriteTransaction) -> Result<()> {
    let latest = txn.open_table(LATEST)?;
    let mut index = txn.open_table(KEY_INDEX)?;
    for r in latest.iter()? {
        let (k, rec) = r?;
        let h = decode_latest(rec.value())?;
        let (main, sub) = h.history_key();
        index.insert((k.value(), main, sub), h.tombstone)?;
    }
    txn.open_table(META)?
        .insert(META_SCHEMA, 2i64.to_le_bytes().as_slice())?;
    Ok(())
}

/// Schema 1 -> 2: the records rewritten into the new tables, the old ones deleted.
fn v1_to_v2(txn: &redb::WriteTransaction) -> Result<Migrated> {
    let mut done = Migrated {
        records: 0,
        keys: 0,
    };
    {
        let old_history = txn.open_table(HISTORY_V1)?;
        let mut history = txn.open_table(HISTORY)?;
        let mut chunks = txn.open_table(CHUNKS)?;
        for r in old_history.iter()? {
            let (k, rec) = r?;
            let (main, sub) = k.value();
            let (mut h, key, value) = legacy::decode_history(rec.value())?;
            h.sub = sub;
            let (rec, pieces) = encode_history(&h, key, value);
            history.insert((main, sub), rec.as_slice())?;
            for (n, c) in pieces.iter().enumerate() {
                chunks.insert((main, sub, n as u32), *c)?;
            }
            done.records += 1;
        }
        let old_latest = txn.open_table(LATEST_V1)?;
        let index = txn.open_table(KEY_INDEX)?;
        let mut latest = txn.open_table(LATEST)?;
        for r in old_latest.iter()? {
            let (k, rec) = r?;
            let key = k.value();
            // Schema 1 rows did not carry the sub revision: the key index has it.
            let mut h = legacy::decode_latest_header(rec.value())?;
            let main = u64::try_from(h.mod_revision).unwrap_or(0);
            let lo: (&[u8], u64, u32) = (key, main, 0);
            let hi: (&[u8], u64, u32) = (key, main, u32::MAX);
            let Some(e) = index
                .range((Bound::Included(lo), Bound::Included(hi)))?
                .next_back()
            else {
                return Err(Error::Corrupt(format!(
                    "migrating: latest row of {:?} at revision {main} has no key index entry",
                    String::from_utf8_lossy(key)
                )));
            };
            h.sub = e?.0.value().2;
            latest.insert(key, encode_latest(&h).as_slice())?;
            done.keys += 1;
        }
    }
    txn.delete_table(LATEST_V1)?;
    txn.delete_table(HISTORY_V1)?;
    Ok(done)
}
