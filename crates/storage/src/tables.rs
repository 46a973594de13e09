//! Every redb table of the keyspace, in one place so the on-disk layout can be read at a glance.
//!
//! Layout:
//! - `latest`: user key -> record of its newest revision (a tombstone when the newest change was
//!   a delete). The hot path: a range at the current revision reads only this table.
//! - `history`: (main revision, sub revision) -> record including the key. Watch replay and
//!   reads at older revisions; trimmed by compaction.
//! - `key_index`: (user key, main, sub) -> tombstone flag. Finds a key's state at an older
//!   revision with one O(log n) seek instead of scanning history.
//! - `leases`: lease id -> (granted ttl, remaining ttl checkpoint).
//! - `lease_keys`: (lease id, user key) -> (). Keys currently attached to a lease.
//! - `meta`: internal bookkeeping (revision, compaction, applied index) and free-form entries.

use redb::TableDefinition;

pub(crate) type HistoryKey = (u64, u32);
pub(crate) type IndexKey = (&'static [u8], u64, u32);

pub(crate) const LATEST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("latest");
pub(crate) const HISTORY: TableDefinition<HistoryKey, &[u8]> = TableDefinition::new("history");
pub(crate) const KEY_INDEX: TableDefinition<IndexKey, bool> = TableDefinition::new("key_index");
pub(crate) const LEASES: TableDefinition<i64, (i64, i64)> = TableDefinition::new("leases");
pub(crate) const LEASE_KEYS: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("lease_keys");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Meta key of the current main revision (i64 LE).
pub(crate) const META_REVISION: &str = "sys/revision";
/// Meta key of the compacted revision (i64 LE).
pub(crate) const META_COMPACTED: &str = "sys/compacted";
/// Meta key of the applied raft (index, term) (two u64 LE).
pub(crate) const META_APPLIED: &str = "sys/applied";
/// Free-form entries live under this prefix so they can never clobber the keys above.
pub(crate) const META_USER_PREFIX: &str = "user/";

pub(crate) fn user_meta_key(key: &str) -> String {
    format!("{META_USER_PREFIX}{key}")
}
