//! Every redb table of the keyspace, in one place so the on-disk layout can be read at a glance.
//!
//! Layout (schema 3, see `record.rs` for the rows; schema 1 is in `legacy.rs`, schema 2 is
//! schema 3 with every revision of a key in `key_index`, its newest too):
//! - `kv_latest`: user key -> header of its newest revision (a tombstone when the newest change
//!   was a delete), no value. The hot path: a range at the current revision walks this table
//!   and fetches each value from `kv_history` by its (main, sub).
//! - `kv_history`: (main revision, sub revision) -> record including the key and the value
//!   (the one copy of it). Values, watch replay and reads at older revisions; trimmed by
//!   compaction.
//! - `kv_chunks`: (main, sub, n) -> the n-th page-sized piece of a large value of that
//!   history record.
//! - `key_index`: (user key, main, sub) -> tombstone flag, for every kept revision of a key
//!   except its newest (which `kv_latest` names). Finds a key's state at an older revision
//!   with one O(log n) seek instead of scanning history. Leaving the newest out keeps a key
//!   written once out of the index: with keys written out of order redb's splits leave this
//!   table's pages about half full, so each row costs about twice its size.
//! - `leases`: lease id -> (granted ttl, remaining ttl checkpoint).
//! - `lease_keys`: (lease id, user key) -> (). Keys currently attached to a lease.
//! - `meta`: internal bookkeeping (revision, compaction, applied index) and free-form entries.

use redb::TableDefinition;

pub(crate) type HistoryKey = (u64, u32);
pub(crate) type IndexKey = (&'static [u8], u64, u32);

pub(crate) type ChunkKey = (u64, u32, u32);

pub(crate) const LATEST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv_latest");
pub(crate) const HISTORY: TableDefinition<HistoryKey, &[u8]> = TableDefinition::new("kv_history");
pub(crate) const CHUNKS: TableDefinition<ChunkKey, &[u8]> = TableDefinition::new("kv_chunks");
pub(crate) const KEY_INDEX: TableDefinition<IndexKey, bool> = TableDefinition::new("key_index");
pub(crate) const LEASES: TableDefinition<i64, (i64, i64)> = TableDefinition::new("leases");
pub(crate) const LEASE_KEYS: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("lease_keys");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Meta key of the current main revision (i64 LE).
pub(crate) const META_REVISION: &str = "sys/revision";
/// Meta key of the layout version of the file (i64 LE); missing in schema 1 files.
pub(crate) const META_SCHEMA: &str = "sys/schema";
/// The layout this code reads and writes.
pub(crate) const SCHEMA: i64 = 3;
/// Meta key of the compacted revision (i64 LE).
pub(crate) const META_COMPACTED: &str = "sys/compacted";
/// Meta key of the applied raft (index, term) (two u64 LE).
pub(crate) const META_APPLIED: &str = "sys/applied";
/// Free-form entries live under this prefix so they can never clobber the keys above.
pub(crate) const META_USER_PREFIX: &str = "user/";

pub(crate) fn user_meta_key(key: &str) -> String {
    format!("{META_USER_PREFIX}{key}")
}
