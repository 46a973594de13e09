//! Integrity of the keyspace: the hashes members compare, and the checks that find local
//! corruption.
//!
//! Reads at the current revision are answered from `latest`, while `history` is what every
//! member holds identically for an identical log. Hashing `latest` itself cannot be compared
//! across members at a given revision (a member that has applied more has moved some keys
//! forward in `latest`), so `latest` is instead *verified against* `history`: it is derived
//! data, and every `latest` row must be exactly the newest `history` record of its key (same
//! header, same value), with one `latest` row per key that still has history. The check runs
//! in the same read transaction as every HashKV, so:
//! - a healthy member's HashKV is the CRC32 of its `history` up to the revision, equal on every
//!   member that applied the same log;
//! - a member whose `latest` disagrees with its `history` folds the disagreeing rows into the
//!   hash, so its HashKV differs from its peers' and their comparison (initial, periodic,
//!   compaction-time check) flags it, exactly as a corrupt `history` would; it also reports the
//!   disagreement itself ([`KvHash::inconsistency`]) so the member can raise the alarm for
//!   itself without waiting for a peer.

use crate::record::decode_latest;
use crate::tables::*;
use crate::{Error, Result, Store};
use redb::{ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use std::path::Path;

/// One HashKV: etcd's `KeyValueHash` plus what the `latest` check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The revision hashed (the current one when 0 was asked for).
    pub revision: i64,
    /// The compacted revision of the keyspace when it was hashed (0 = never compacted).
    pub compact_revision: i64,
    /// The first disagreement between `latest` and `history`, when there is one: local
    /// corruption of the data reads are served from.
    pub inconsistency: Option<String>,
}

/// A `latest` row that is not what `history` says it must be.
pub(crate) struct Mismatch {
    key: Vec<u8>,
    /// The raw `latest` row (empty when it is missing).
    latest: Vec<u8>,
    what: String,
}

impl Mismatch {
    fn describe(&self) -> String {
        format!(
            "key {:?}: {}",
            String::from_utf8_lossy(&self.key),
            self.what
        )
    }
}

/// What [`Store::verify`] found: counts and every problem (capped).
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub keys: u64,
    pub history_records: u64,
    pub leases: u64,
    pub problems: Vec<String>,
    /// Problems beyond the ones listed.
    pub more_problems: u64,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, p: String) {
        if self.problems.len() < MAX_LISTED {
            self.problems.push(p);
        } else {
            self.more_problems += 1;
        }
    }
}

const MAX_LISTED: usize = 50;

type Latest = ReadOnlyTable<&'static [u8], &'static [u8]>;
type Index = ReadOnlyTable<IndexKey, bool>;
type History = ReadOnlyTable<HistoryKey, &'static [u8]>;

/// Every `latest` row that disagrees with `history`/`key_index`, in key order. `latest` and
/// `key_index` are both ordered by key, so one merge walk pairs each `latest` row with its
/// key's index rows (the revisions it replaced, which must all be older than it) and finds
/// index rows of keys that have no `latest` row.
pub(crate) fn latest_mismatches(
    latest: &Latest,
    index: &Index,
    history: &History,
) -> Result<Vec<Mismatch>> {
    let mut out = Vec::new();
    let mut rows = index.iter()?;
    let mut pending = rows.next().transpose()?;
    for r in latest.iter()? {
        let (k, v) = r?;
        let key = k.value();
        // Index rows of keys before this one have no latest row.
        let mut orphan: Option<Vec<u8>> = None;
        // The newest index row of this key.
        let mut replaced: Option<(u64, u32)> = None;
        while let Some((ik, _)) = &pending {
            let (ikey, main, sub) = ik.value();
            match ikey.cmp(key) {
                std::cmp::Ordering::Greater => break,
                std::cmp::Ordering::Equal => replaced = Some((main, sub)),
                std::cmp::Ordering::Less => {
                    if orphan.as_deref() != Some(ikey) {
                        out.push(Mismatch {
                            key: ikey.to_vec(),
                            latest: Vec::new(),
                            what: format!(
                                "history has revision {main} but there is no latest record"
                            ),
                        });
                        orphan = Some(ikey.to_vec());
                    }
                }
            }
            pending = rows.next().transpose()?;
        }
        check_key(history, key, v.value(), replaced, &mut out)?;
    }
    let mut orphan: Option<Vec<u8>> = None;
    while let Some((ik, _)) = pending {
        let (ikey, main, _) = ik.value();
        if orphan.as_deref() != Some(ikey) {
            out.push(Mismatch {
                key: ikey.to_vec(),
                latest: Vec::new(),
                what: format!("history has revision {main} but there is no latest record"),
            });
            orphan = Some(ikey.to_vec());
        }
        pending = rows.next().transpose()?;
    }
    Ok(out)
}

/// Checks one `latest` row: decodable, newer than every revision it replaced (`replaced`, the
/// key's newest index row), and exactly the header of the history record it names.
fn check_key(
    history: &History,
    key: &[u8],
    row: &[u8],
    replaced: Option<(u64, u32)>,
    out: &mut Vec<Mismatch>,
) -> Result<()> {
    let mismatch = |what: String| Mismatch {
        key: key.to_vec(),
        latest: row.to_vec(),
        what,
    };
    let h = match decode_latest(row) {
        Ok(x) => x,
        Err(e) => {
            out.push(mismatch(format!("undecodable latest record: {e}")));
            return Ok(());
        }
    };
    let (main, sub) = h.history_key();
    if let Some((m, s)) = replaced.filter(|&r| r >= (main, sub)) {
        out.push(mismatch(format!(
            "latest record is at revision {main}/{sub}, the key index has a later one at {m}/{s}"
        )));
        return Ok(());
    }
    // The value lives only in history; what `latest` holds (the header) must be exactly
    // what the history record says.
    match history.get((main, sub))? {
        None => out.push(mismatch(format!(
            "history record {main}/{sub} of the latest record is missing"
        ))),
        Some(rec) => match crate::record::decode_history(main, sub, rec.value()) {
            Ok((hh, hk, _)) if hh == h && hk == key => {}
            Ok(_) => out.push(mismatch(format!(
                "latest record differs from its history record at revision {main}"
            ))),
            Err(e) => out.push(mismatch(format!(
                "history record {main}/{sub} of the latest record: {e}"
            ))),
        },
    }
    Ok(())
}

impl Store {
    /// etcd's HashKV (CRC-32C over every kept key revision with main revision <= `revision`,
    /// 0 = current, as etcd stores it; see [`Store::etcd_kv_hash`]), with `latest` verified against `history` in the same snapshot (see the
    /// module docs): equal on members that applied the same log, different on a member whose
    /// served data disagrees with its history.
    pub fn kv_hash(&self, revision: i64) -> Result<KvHash> {
        self.etcd_kv_hash(revision, |h, v, rev, compacted| {
            let mismatches = latest_mismatches(v.latest, crate::view::IndexSource::index(v.index)?, v.history)?;
            for m in &mismatches {
                h.update(&m.key);
                h.update(&m.latest);
            }
            let inconsistency = mismatches.first().map(|m| {
                format!(
                    "{} ({} latest record(s) disagree with history)",
                    m.describe(),
                    mismatches.len()
                )
            });
            if let Some(i) = &inconsistency {
                tracing::error!(inconsistency = %i, "keyspace corrupt: latest disagrees with history");
            }
            Ok(KvHash {
                hash: h.finish(),
                revision: rev,
                compact_revision: compacted,
                inconsistency,
            })
        })
    }

    /// The hashes taken right after each of the last compactions, newest last (etcd keeps
    /// them for the compaction-time check).
    pub fn compaction_hashes(&self) -> Vec<KvHash> {
        self.compaction_hashes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub(crate) fn record_compaction_hash(&self, revision: i64) {
        match self.kv_hash(revision) {
            Ok(h) => {
                let mut list = self
                    .compaction_hashes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                list.push_back(h);
                while list.len() > COMPACTION_HASHES_KEPT {
                    list.pop_front();
                }
            }
            Err(e) => tracing::warn!(revision, error = %e, "cannot hash the compacted keyspace"),
        }
    }

    /// The logical check of the whole keyspace: `latest` against `history`, every history
    /// record decodable and either its key's newest (in `latest`) or indexed, and the lease
    /// tables against `latest`.
    ///
    /// A member runs it on every start, so it must cost about one sequential read of the
    /// tables: [`sequential_check`] proves a healthy keyspace healthy that way. Only when it
    /// finds something does the record-by-record check below run, to name every problem.
    pub fn verify(&self) -> Result<VerifyReport> {
        // Held while the transaction lives: a defragment may swap the file meanwhile.
        let db = self.db();
        let rtx = db.begin_read()?;
        let latest = rtx.open_table(LATEST)?;
        let index = rtx.open_table(KEY_INDEX)?;
        let history = rtx.open_table(HISTORY)?;
        let chunks = rtx.open_table(CHUNKS)?;
        let leases = rtx.open_table(LEASES)?;
        let lease_keys = rtx.open_table(LEASE_KEYS)?;
        let mut report = VerifyReport {
            keys: latest.len()?,
            history_records: history.len()?,
            leases: leases.len()?,
            ..Default::default()
        };
        let tables = VerifyTables {
            latest: &latest,
            index: &index,
            history: &history,
            chunks: &chunks,
            leases: &leases,
            lease_keys: &lease_keys,
        };
        match sequential_check(&tables) {
            Ok(None) => return Ok(report),
            Ok(Some(first)) => {
                tracing::warn!(problem = %first, "keyspace check: looking for every problem");
            }
            // An unreadable record is named by the detailed check too (or fails it the same way).
            Err(e) => tracing::warn!(error = %e, "keyspace check: looking for every problem"),
        }
        for m in latest_mismatches(&latest, &index, &history)? {
            report.problem(m.describe());
        }
        for r in history.iter()? {
            let (k, rec) = r?;
            let (main, sub) = k.value();
            match crate::record::decode_history(main, sub, rec.value()) {
                Err(e) => report.problem(format!("history record {main}/{sub}: {e}")),
                Ok((h, key, body)) => {
                    if let Err(e) = crate::view::assemble(&chunks, main, sub, body) {
                        report.problem(format!("history record {main}/{sub}: {e}"));
                    }
                    // Each record is either its key's newest (named by `latest`) or in
                    // the key index.
                    let newest = match latest.get(key)? {
                        Some(g) => decode_latest(g.value())
                            .map(|l| l.history_key() == (main, sub) && l.tombstone == h.tombstone)
                            .unwrap_or(false),
                        None => false,
                    };
                    if !newest
                        && index.get((key, main, sub))?.map(|g| g.value()) != Some(h.tombstone)
                    {
                        report.problem(format!(
                            "history record {main}/{sub} of key {:?} is neither its latest record nor in the key index",
                            String::from_utf8_lossy(key)
                        ));
                    }
                }
            }
        }
        // The other direction: every index row names a history record of its key (the walk
        // above checks only the records that exist).
        for r in index.iter()? {
            let (k, _) = r?;
            let (key, main, sub) = k.value();
            let found = match history.get((main, sub))? {
                Some(rec) => crate::record::decode_history(main, sub, rec.value())
                    .map(|(_, hk, _)| hk == key)
                    .unwrap_or(true), // an undecodable record is reported above
                None => false,
            };
            if !found {
                report.problem(format!(
                    "key index row {main}/{sub} of key {:?} has no history record of that key",
                    String::from_utf8_lossy(key)
                ));
            }
        }
        for r in latest.iter()? {
            let (k, v) = r?;
            let Ok(h) = decode_latest(v.value()) else {
                continue; // reported above
            };
            if h.tombstone || h.lease == 0 {
                continue;
            }
            let key = k.value();
            if leases.get(h.lease)?.is_none() {
                report.problem(format!(
                    "key {:?} is attached to lease {:x}, which does not exist",
                    String::from_utf8_lossy(key),
                    h.lease
                ));
            }
            if lease_keys.get((h.lease, key))?.is_none() {
                report.problem(format!(
                    "key {:?} is attached to lease {:x} but not in its key list",
                    String::from_utf8_lossy(key),
                    h.lease
                ));
            }
        }
        for r in lease_keys.iter()? {
            let (k, _) = r?;
            let (lease, key) = k.value();
            if leases.get(lease)?.is_none() {
                report.problem(format!("lease {lease:x} of key list entry does not exist"));
            }
            let attached = match latest.get(key)? {
                Some(g) => decode_latest(g.value())
                    .map(|h| !h.tombstone && h.lease == lease)
                    .unwrap_or(false),
                None => false,
            };
            if !attached {
                report.problem(format!(
                    "lease {lease:x} lists key {:?}, which is not attached to it",
                    String::from_utf8_lossy(key)
                ));
            }
        }
        Ok(report)
    }
}

impl Store {
    /// The first problem [`sequential_check`] sees, for tests that hold it to the detailed
    /// check.
    #[cfg(test)]
    pub(crate) fn sequential_problem(&self) -> Result<Option<String>> {
        let db = self.db();
        let rtx = db.begin_read()?;
        sequential_check(&VerifyTables {
            latest: &rtx.open_table(LATEST)?,
            index: &rtx.open_table(KEY_INDEX)?,
            history: &rtx.open_table(HISTORY)?,
            chunks: &rtx.open_table(CHUNKS)?,
            leases: &rtx.open_table(LEASES)?,
            lease_keys: &rtx.open_table(LEASE_KEYS)?,
        })
    }
}

/// The tables [`Store::verify`] reads, in one read transaction.
struct VerifyTables<'a> {
    latest: &'a Latest,
    index: &'a Index,
    history: &'a History,
    chunks: &'a ReadOnlyTable<ChunkKey, &'static [u8]>,
    leases: &'a ReadOnlyTable<i64, (i64, i64)>,
    lease_keys: &'a ReadOnlyTable<(i64, &'static [u8]), ()>,
}

/// A 128-bit fingerprint of one revision of a key. Sums of these compare tables as multisets:
/// `history` holds exactly the (key, main, sub, tombstone) rows of `key_index` and `latest`
/// together when the sums and counts agree (up to a 2^-128-scale accident).
fn fingerprint(key: &[u8], main: u64, sub: u32, tombstone: bool) -> u128 {
    use std::hash::{Hash, Hasher};
    let half = |salt: u8| {
        let mut h = std::hash::DefaultHasher::new();
        (salt, key, main, sub, tombstone).hash(&mut h);
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// What a `latest` row says of its key's newest history record, to be compared with the
/// record itself during the walk of `history`.
fn header_digest(header: &crate::record::Header, key: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (header, key).hash(&mut h);
    h.finish()
}

/// Every property [`Store::verify`] checks, proven by walking each table once in its own order
/// instead of looking records up one by one (on 1M keys: millions of B-tree descents against
/// three scans). Returns the first problem seen, or None when the keyspace is consistent:
/// - `key_index` and `latest` are both ordered by key, so one merge walk pairs each `latest`
///   row with its key's index rows, which must all be older than it (and finds index rows of
///   a key without a `latest` row);
/// - the `latest` rows name their history records; sorted by revision, those names are then
///   checked against the walk of `history`, which is ordered by revision;
/// - `history` and `key_index` plus `latest` are compared as multisets by fingerprint sums
///   (every history record is a key's newest or indexed, with its tombstone flag; no index or
///   `latest` row without its record);
/// - every attached `latest` row has its lease and its `lease_keys` row, and `lease_keys` has
///   no other rows (equal counts), which is all the detailed lease checks ask.
fn sequential_check(t: &VerifyTables<'_>) -> Result<Option<String>> {
    let mut named_sum = 0u128;
    let mut named_rows = 0u64;
    // (main, sub, digest of the latest row) of each key's newest revision.
    let mut newest: Vec<(u64, u32, u64)> = Vec::new();
    let mut attached = 0u64;
    let mut index_rows = t.index.iter()?;
    let mut pending = index_rows.next().transpose()?;
    for r in t.latest.iter()? {
        let (lk, lv) = r?;
        let key = lk.value();
        let h = match decode_latest(lv.value()) {
            Ok(h) => h,
            Err(e) => return Ok(Some(format!("key {:?}: {e}", lossy(key)))),
        };
        let (main, sub) = h.history_key();
        while let Some((ik, iv)) = &pending {
            let (ikey, m, s) = ik.value();
            match ikey.cmp(key) {
                std::cmp::Ordering::Greater => break,
                std::cmp::Ordering::Less => {
                    return Ok(Some(format!("key {:?} has no latest record", lossy(ikey))))
                }
                std::cmp::Ordering::Equal => {}
            }
            if (m, s) >= (main, sub) {
                return Ok(Some(format!(
                    "key {:?}: latest record and key index disagree",
                    lossy(key)
                )));
            }
            named_sum = named_sum.wrapping_add(fingerprint(ikey, m, s, iv.value()));
            named_rows += 1;
            pending = index_rows.next().transpose()?;
        }
        named_sum = named_sum.wrapping_add(fingerprint(key, main, sub, h.tombstone));
        named_rows += 1;
        if !h.tombstone && h.lease != 0 {
            attached += 1;
            if t.leases.get(h.lease)?.is_none() || t.lease_keys.get((h.lease, key))?.is_none() {
                return Ok(Some(format!(
                    "key {:?}: lease {:x} or its key list entry is missing",
                    lossy(key),
                    h.lease
                )));
            }
        }
        newest.push((main, sub, header_digest(&h, key)));
    }
    if let Some((ik, _)) = pending {
        return Ok(Some(format!(
            "key {:?} has no latest record",
            lossy(ik.value().0)
        )));
    }
    if t.lease_keys.len()? != attached {
        return Ok(Some(format!(
            "lease_keys has {} rows for {attached} attached keys",
            t.lease_keys.len()?
        )));
    }

    newest.sort_unstable_by_key(|&(m, s, _)| (m, s));
    let mut want = newest.iter().peekable();
    let mut history_sum = 0u128;
    let mut history_rows = 0u64;
    for r in t.history.iter()? {
        let (k, rec) = r?;
        let (main, sub) = k.value();
        let (h, key, body) = match crate::record::decode_history(main, sub, rec.value()) {
            Ok(x) => x,
            Err(e) => return Ok(Some(format!("history record {main}/{sub}: {e}"))),
        };
        if let Err(e) = crate::view::assemble(t.chunks, main, sub, body) {
            return Ok(Some(format!("history record {main}/{sub}: {e}")));
        }
        history_sum = history_sum.wrapping_add(fingerprint(key, main, sub, h.tombstone));
        history_rows += 1;
        if let Some(&&(m, s, digest)) = want.peek() {
            if (m, s) < (main, sub) {
                return Ok(Some(format!(
                    "history record {m}/{s} of a latest record is missing"
                )));
            }
            if (m, s) == (main, sub) {
                if digest != header_digest(&h, key) {
                    return Ok(Some(format!(
                        "latest record differs from its history record at revision {main}"
                    )));
                }
                want.next();
            }
        }
    }
    if let Some(&(m, s, _)) = want.next() {
        return Ok(Some(format!(
            "history record {m}/{s} of a latest record is missing"
        )));
    }
    if history_rows != named_rows || history_sum != named_sum {
        return Ok(Some(format!(
            "key index and latest ({named_rows} rows) and history ({history_rows} records) disagree"
        )));
    }
    Ok(None)
}

fn lossy(key: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(key)
}

/// How many post-compaction hashes are kept (etcd: `hashStorageMaxSize` = 10).
const COMPACTION_HASHES_KEPT: usize = 10;

/// redb's own check of the file at `path`: every page checksum of the committed trees and
/// the allocator state. Runs redb's check-and-repair, so it must be given a copy when the
/// original must stay untouched. Ok(true) = clean, Ok(false) = redb repaired it (after an
/// unclean shutdown that is normal: the last non-durable commits are rolled back).
pub fn check_pages(path: &Path) -> Result<bool> {
    // redb calls the repair callback on open only when the file was not closed cleanly; with
    // `set_check_integrity_on_open` it would call it on every open, which says nothing. So the
    // plain open tells whether the shutdown was clean, and `check_integrity` then verifies
    // every page checksum (true = nothing needed repair).
    let repaired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = repaired.clone();
    let mut builder = redb::Builder::new();
    // Every page is read once: redb's default cache (1 GiB) would only keep them resident.
    builder.set_cache_size(crate::SCAN_CACHE_BYTES);
    builder.set_repair_callback(move |_| flag.store(true, std::sync::atomic::Ordering::Relaxed));
    let corrupt = |m: String| Error::Corrupt(format!("redb integrity check failed: {m}"));
    let mut db = match builder.open(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(m))) => {
            return Err(corrupt(m))
        }
        Err(e) => return Err(e.into()),
    };
    match db.check_integrity() {
        Ok(clean) => Ok(clean && !repaired.load(std::sync::atomic::Ordering::Relaxed)),
        Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(m))) => Err(corrupt(m)),
        Err(e) => Err(e.into()),
    }
}
