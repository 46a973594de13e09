//! ferrokv-storage: the MVCC keyspace of a ferrokv member, on redb.
//!
//! Owns: revisions (main, sub), the newest state of every key, history for reads at older
//! revisions and watch replay, range with limit/count/sort/filters, txn compare/execute,
//! compaction, the leases table, and the meta table with the applied raft index. It speaks
//! the etcd wire types (`ferrokv_proto`) as its request/response types and returns etcd's
//! exact error messages.
//!
//! Must not depend on: tokio, tonic, raft, or any networking. It is a synchronous library;
//! one `WriteBatch` (one redb write transaction) at a time, reads concurrently with it.

mod etcd_snapshot;
mod integrity;
mod legacy;
mod migrate;
mod record;
mod span;
mod tables;
mod view;
mod write;

pub mod validate;

pub use etcd_snapshot::{etcd_db_status, import_etcd, EtcdDbStatus, Imported};
pub use ferrokv_bbolt as bbolt;
pub use integrity::{check_pages, KvHash, VerifyReport};
pub use write::WriteBatch;

/// The read-only view of one read transaction, as [`Store::etcd_kv_hash`] hands it on.
pub(crate) type LatestView<'a> = view::View<
    'a,
    ReadOnlyTable<&'static [u8], &'static [u8]>,
    view::LazyIndex<'a>,
    ReadOnlyTable<tables::HistoryKey, &'static [u8]>,
    view::LazyChunks<'a>,
>;

use ferrokv_proto::{etcdserverpb as pb, mvccpb};
use record::decode_history;
use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use span::Span;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tables::*;
use view::View;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure of the storage layer. Display is etcd's exact message where one exists,
/// because clients match on the text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// An undecodable record: data loss; the member must stop.
    #[error("storage corrupt: {0}")]
    Corrupt(String),
    /// Any redb failure, with redb's message.
    #[error("storage backend: {0}")]
    Backend(String),
    /// A snapshot file received from another member does not open as a keyspace; the local
    /// keyspace is untouched.
    #[error("bad snapshot file: {0}")]
    BadSnapshot(String),
}

macro_rules! backend_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::Backend(e.to_string())
            }
        }
    )*};
}
backend_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    std::io::Error
);

/// A lease as stored: granted TTL and the last checkpointed remaining TTL (0 = unknown/full).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub id: i64,
    pub ttl: i64,
    pub remaining_ttl: i64,
}

/// One table's pages and bytes, as redb counts them ([`Store::table_stats`]).
#[derive(Clone, Debug)]
pub struct TableStats {
    pub name: &'static str,
    pub leaf_pages: u64,
    pub branch_pages: u64,
    pub stored_bytes: u64,
    pub fragmented_bytes: u64,
}

/// The keyspace. `Send + Sync`: reads run concurrently with the one open `WriteBatch`.
pub struct Store {
    /// Swapped whole by [`Store::defragment`]; a reader keeps the `Arc` it took, so a read
    /// that began before a swap finishes on the old file.
    db: RwLock<Arc<Database>>,
    /// Shared by every open `WriteBatch` (and `sync`), exclusive for a defragment or a
    /// restore: a defragment waits for the batch in flight and blocks new ones until the new
    /// file is in place, as etcd's defrag blocks writes.
    write_gate: RwLock<()>,
    path: PathBuf,
    // Mirrors of the meta table, updated after each commit, so that hot callers (headers,
    // watch) need no read transaction.
    revision: AtomicI64,
    compacted: AtomicI64,
    applied: Mutex<(u64, u64)>,
    /// HashKV right after each recent compaction, for the compaction-time check.
    compaction_hashes: Mutex<VecDeque<KvHash>>,
    /// redb's page cache for this file (kept for the file a defragment swaps in).
    cache_bytes: usize,
    /// The last measure of the bytes in use and when it was taken (see [`Store::db_size`]).
    in_use: Mutex<Option<(std::time::Instant, i64)>>,
}

/// How long a measure of the bytes in use is served before it is taken again. Measuring
/// walks every page of every table (half a second at 1M keys), and Status and each metrics
/// scrape ask for it; a defragment or a restore measures again at once.
const IN_USE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(10);

/// The default of [`Store::open_tuned`]'s page cache: most of a member's memory. redb's own
/// default (1 GiB) holds a keyspace of 1M keys whole in the process; with a bounded cache the
/// pages beyond it are read from the kernel's page cache, where etcd's mmap reads them too.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// The cache of a file read once from front to back (a snapshot copied in, the page check).
pub(crate) const SCAN_CACHE_BYTES: usize = 16 << 20;

type MetaTable = ReadOnlyTable<&'static str, &'static [u8]>;

impl Store {
    /// Opens the keyspace at `path`, creating an empty one (revision 1) if missing.
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_with(path, false)
    }

    /// [`Store::open`], and with `verify` the file is checked before it is trusted: redb's
    /// page checksums and allocator state ([`check_pages`], repairing what an unclean
    /// shutdown left, as a plain open does), then the logical check ([`Store::verify`]). A
    /// file that fails either is refused with `Corrupt`, so a damaged member never serves.
    pub fn open_with(path: &Path, verify: bool) -> Result<Store> {
        Store::open_tuned(path, verify, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open_with`] with a page cache of `cache_bytes` (`--keyspace-cache-bytes`).
    pub fn open_tuned(path: &Path, verify: bool, cache_bytes: usize) -> Result<Store> {
        let store = Store::open_pages_checked(path, verify, cache_bytes)?;
        if verify {
            store.check_keyspace()?;
        }
        Ok(store)
    }

    /// The first half of [`Store::open_tuned`]: redb's page checksums (when `check`),
    /// the open and the migration, without the keyspace check. The file is locked from here
    /// on, so a member can replay its WAL while it runs [`Store::check_keyspace`].
    pub fn open_pages_checked(path: &Path, check: bool, cache_bytes: usize) -> Result<Store> {
        if check && path.exists() && !check_pages(path)? {
            tracing::warn!(path = %path.display(), "redb repaired the keyspace file on open (unclean shutdown)");
        }
        // A defragment interrupted before its rename leaves its half-written copy behind.
        let tmp = defrag_path(path);
        if tmp.exists() {
            tracing::warn!(path = %tmp.display(), "removing the copy of an interrupted defragment");
            std::fs::remove_file(&tmp)?;
        }
        let db = create_db_cached(path, cache_bytes)?;
        // Create every table up front so read transactions never see a missing table, and
        // bring a file of an older layout to the current one (one transaction: a crash in
        // the middle leaves the old file as it was, and the next open migrates again).
        let mut txn = db.begin_write()?;
        let migrated = migrate::to_current(&txn)?;
        if migrated.is_some() {
            txn.set_durability(redb::Durability::Immediate)?;
        }
        txn.commit()?;
        if let Some(m) = migrated {
            tracing::info!(path = %path.display(), records = m.records, keys = m.keys, "migrated the keyspace to schema {SCHEMA}");
        }
        let rtx = db.begin_read()?;
        let meta = rtx.open_table(META)?;
        let revision = meta_i64(&meta, META_REVISION)?.unwrap_or(1);
        let compacted = meta_i64(&meta, META_COMPACTED)?.unwrap_or(0);
        let applied = meta_applied(&meta)?;
        tracing::info!(path = %path.display(), revision, compacted, applied_index = applied.0, "opened keyspace");
        let store = Store {
            db: RwLock::new(Arc::new(db)),
            write_gate: RwLock::new(()),
            path: path.to_path_buf(),
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            applied: Mutex::new(applied),
            compaction_hashes: Mutex::new(VecDeque::new()),
            cache_bytes,
            in_use: Mutex::new(None),
        };
        Ok(store)
    }

    /// The keyspace check of [`Store::open_tuned`]: every record against the indexes; a
    /// problem is [`Error::Corrupt`] naming what was found.
    pub fn check_keyspace(&self) -> Result<()> {
        let path = &self.path;
        let report = self.verify()?;
        if !report.ok() {
            return Err(Error::Corrupt(format!(
                "{} failed the keyspace check: {}{}",
                path.display(),
                report.problems.join("; "),
                if report.more_problems > 0 {
                    format!(" (and {} more)", report.more_problems)
                } else {
                    String::new()
                }
            )));
        }
        tracing::info!(path = %path.display(), keys = report.keys, "keyspace check passed");
        Ok(())
    }

    pub fn current_revision(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }

    pub fn compacted_revision(&self) -> i64 {
        self.compacted.load(Ordering::Acquire)
    }

    /// The (index, term) of the last raft entry applied to this keyspace.
    pub fn applied_index(&self) -> (u64, u64) {
        // A poisoned lock only means a panic elsewhere; the pair itself is always whole.
        *self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on a consistent read snapshot: the view plus its (current, compacted) revisions.
    fn read<T>(
        &self,
        f: impl FnOnce(
            &View<
                '_,
                ReadOnlyTable<&'static [u8], &'static [u8]>,
                view::LazyIndex<'_>,
                ReadOnlyTable<HistoryKey, &'static [u8]>,
                view::LazyChunks<'_>,
            >,
            i64,
            i64,
        ) -> Result<T>,
    ) -> Result<T> {
        // Held while the transaction lives: a defragment may swap the file meanwhile.
        let db = self.db();
        let rtx = db.begin_read()?;
        let latest = rtx.open_table(LATEST)?;
        let index = view::LazyIndex {
            txn: &rtx,
            table: Default::default(),
        };
        let history = rtx.open_table(HISTORY)?;
        let chunks = view::LazyChunks {
            txn: &rtx,
            table: Default::default(),
        };
        let meta = rtx.open_table(META)?;
        let current = meta_i64(&meta, META_REVISION)?.unwrap_or(1);
        let compacted = meta_i64(&meta, META_COMPACTED)?.unwrap_or(0);
        let view = View {
            latest: &latest,
            index: &index,
            history: &history,
            chunks: &chunks,
        };
        f(&view, current, compacted)
    }

    /// The current database handle (changes only when a defragment swaps the file).
    pub(crate) fn db(&self) -> Arc<Database> {
        self.db.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// etcd's defrag: rewrites the keyspace into a new, densely packed file and swaps it in,
    /// so the pages freed by compactions and overwrites go back to the filesystem. Writes
    /// (and syncs) wait until it is done; reads go on against the old file, then the new one.
    ///
    /// Crash safety is the rename: the copy is written to `<db>.defrag`, made durable, then
    /// renamed over the file and the directory synced. A crash before the rename leaves the
    /// old file untouched (the copy is removed on the next open); after it, the complete copy.
    /// Returns (file size before, file size after).
    pub fn defragment(&self) -> Result<(u64, u64)> {
        let _gate = self.write_gate.write().unwrap_or_else(|e| e.into_inner());
        let before = self.file_size()?;
        let tmp = defrag_path(&self.path);
        if tmp.exists() {
            std::fs::remove_file(&tmp)?;
        }
        {
            let old = self.db();
            let rtx = old.begin_read()?;
            let mut out = create_db(&tmp)?;
            let mut wtx = out.begin_write()?;
            copy_tables(&rtx, &wtx)?;
            wtx.set_durability(redb::Durability::Immediate)?;
            wtx.commit()?;
            // redb grows a file by doubling it, so the copy ends in free space; compacting the
            // fresh copy (nothing else has it open) truncates that tail.
            out.compact()
                .map_err(|e| Error::Backend(format!("compacting the defragmented copy: {e}")))?;
            // `out` closes here: the file is complete and synced by the durable commits.
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        let db = create_db_cached(&self.path, self.cache_bytes)?;
        *self.db.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(db);
        self.remeasure_in_use();
        let after = self.file_size()?;
        tracing::info!(path = %self.path.display(), before, after, "defragmented keyspace");
        Ok((before, after))
    }

    /// etcd Range on a consistent snapshot; header.revision is the current revision.
    pub fn range(&self, req: &pb::RangeRequest) -> Result<pb::RangeResponse> {
        self.read(|v, cur, comp| v.range(req, cur, comp))
    }

    /// etcd Txn for a txn of ranges only, on a consistent read snapshot: it neither waits for
    /// nor blocks the writer. Gives what `WriteBatch::txn` gives the same txn (which a
    /// read-only txn leaves unchanged). A txn with a put or delete is refused.
    pub fn read_txn(&self, req: &pb::TxnRequest) -> Result<pb::TxnResponse> {
        self.read(|v, cur, comp| write::read_only_txn(v, req, cur, comp))
    }

    /// Starts the one write transaction; blocks while another batch is open.
    pub fn write_batch(&self) -> Result<WriteBatch<'_>> {
        WriteBatch::begin(self)
    }

    /// Events with revision >= `start_rev` (and <= current) for keys in [key, range_end), in
    /// revision order, each with prev_kv when `prev_kv`. Err(Compacted) if start_rev <
    /// compacted. Like etcd, a start at exactly the compacted revision is served with what
    /// compaction kept of it (a delete tombstone at that revision is gone). Stops after
    /// `max_revisions` distinct revisions that had matching events, never splitting one.
    pub fn events_since(
        &self,
        start_rev: i64,
        key: &[u8],
        range_end: &[u8],
        prev_kv: bool,
        max_revisions: usize,
    ) -> Result<Vec<mvccpb::Event>> {
        self.read(|v, current, compacted| {
            if start_rev < compacted {
                return Err(Error::Compacted);
            }
            let span = Span::new(key, range_end);
            let mut events = Vec::new();
            let mut revisions = 0usize;
            let mut last_rev = None;
            let start = view::rev_u64(start_rev);
            let end = view::rev_u64(current);
            for r in v.history.range((start, 0u32)..=(end, u32::MAX))? {
                let (k, rec) = r?;
                let (main, sub) = k.value();
                let (h, key, body) = decode_history(main, sub, rec.value())?;
                if !span.contains(key) {
                    continue;
                }
                let value = view::assemble(v.chunks, main, sub, body)?;
                if last_rev != Some(main) {
                    if revisions == max_revisions {
                        break;
                    }
                    revisions += 1;
                    last_rev = Some(main);
                }
                let prev = if prev_kv {
                    v.live_before(key, main, sub)?
                } else {
                    None
                };
                let kind = if h.tombstone {
                    mvccpb::event::EventType::Delete
                } else {
                    mvccpb::event::EventType::Put
                };
                events.push(mvccpb::Event {
                    r#type: kind as i32,
                    kv: Some(record::to_kv(key, &h, &value)),
                    prev_kv: prev,
                });
            }
            Ok(events)
        })
    }

    pub fn leases(&self) -> Result<Vec<LeaseRecord>> {
        // Held while the transaction lives: a defragment may swap the file meanwhile.
        let db = self.db();
        let rtx = db.begin_read()?;
        let t = rtx.open_table(LEASES)?;
        let mut out = Vec::new();
        for r in t.iter()? {
            let (k, v) = r?;
            let (ttl, remaining_ttl) = v.value();
            out.push(LeaseRecord {
                id: k.value(),
                ttl,
                remaining_ttl,
            });
        }
        Ok(out)
    }

    pub fn lease(&self, id: i64) -> Result<Option<LeaseRecord>> {
        // Held while the transaction lives: a defragment may swap the file meanwhile.
        let db = self.db();
        let rtx = db.begin_read()?;
        let t = rtx.open_table(LEASES)?;
        Ok(t.get(id)?.map(|g| {
            let (ttl, remaining_ttl) = g.value();
            LeaseRecord {
                id,
                ttl,
                remaining_ttl,
            }
        }))
    }

    /// Keys currently attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        // Held while the transaction lives: a defragment may swap the file meanwhile.
        let db = self.db();
        let rtx = db.begin_read()?;
        let t = rtx.open_table(LEASE_KEYS)?;
        write::attached_keys(&t, id)
    }

    /// etcd's HashKV as (hash, compacted, hashed revision); see [`Store::kv_hash`].
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64)> {
        let h = self.kv_hash(revision)?;
        Ok((h.hash, h.compact_revision, h.revision))
    }

    /// etcd's `HashKV` state: CRC-32C of `"key"` then every kept key revision with main
    /// revision <= `revision` (0 = current) as etcd stores it (revision key,
    /// `mvccpb.KeyValue`), so the value equals etcd's for the same history (an etcd restored
    /// from our snapshot, or we from its). `then` sees the same read snapshot (the
    /// latest/history check of [`Store::kv_hash`] folds its findings in).
    pub(crate) fn etcd_kv_hash<T>(
        &self,
        revision: i64,
        then: impl FnOnce(&mut etcd_snapshot::Crc32c, &LatestView<'_>, i64, i64) -> Result<T>,
    ) -> Result<T> {
        self.read(|v, current, compacted| {
            let rev = if revision <= 0 { current } else { revision };
            view::check_revision(rev, current, compacted)?;
            // At or below the compacted revision etcd hashes only what a compaction at `rev`
            // would keep (each key's newest revision <= rev, unless a delete), and everything
            // when that set is empty.
            let mut any_live = false;
            v.scan(
                &Span::new(&[0], &[0]),
                Some(rev),
                false,
                false,
                &mut |_, _, _| {
                    any_live = true;
                    Ok(false)
                },
            )?;
            let mut h = etcd_snapshot::Crc32c::default();
            h.update(b"key");
            for r in v.history.range(..=(view::rev_u64(rev), u32::MAX))? {
                let (k, rec) = r?;
                let (main, sub) = k.value();
                let (hd, key, body) = decode_history(main, sub, rec.value())?;
                if any_live
                    && main <= view::rev_u64(compacted)
                    && v.revision_at(key, rev)? != Some((main, sub, false))
                {
                    continue;
                }
                h.update(&etcd_snapshot::revision_key(
                    main,
                    u64::from(sub),
                    hd.tombstone,
                ));
                let value: Cow<'_, [u8]> = view::assemble(v.chunks, main, sub, body)?;
                h.update(&etcd_snapshot::etcd_value(&hd, key, &value));
            }
            then(&mut h, v, rev, compacted)
        })
    }

    /// CRC32 over the logical content of every table of the keyspace (keys and values in
    /// table order, not pages), meta included except the applied raft index: that one is
    /// this member's bookkeeping (a member that applied a conf change or a lease renewal more
    /// has a higher one for the same data), so without it two members holding the same data
    /// hash the same. (etcd's Hash RPC hashes the whole bolt file, consistent index included,
    /// so it differs per member; ours is comparable.)
    pub fn hash(&self) -> Result<u32> {
        // Held while the transaction lives: a defragment may swap the file meanwhile.
        let db = self.db();
        let rtx = db.begin_read()?;
        let mut h = crc32fast::Hasher::new();
        fn feed<K: redb::Key + 'static, V: redb::Value + 'static>(
            h: &mut crc32fast::Hasher,
            t: &ReadOnlyTable<K, V>,
        ) -> Result<()> {
            for r in t.iter()? {
                let (k, v) = r?;
                h.update(K::as_bytes(&k.value()).as_ref());
                h.update(V::as_bytes(&v.value()).as_ref());
            }
            Ok(())
        }
        feed(&mut h, &rtx.open_table(LATEST)?)?;
        feed(&mut h, &rtx.open_table(HISTORY)?)?;
        feed(&mut h, &rtx.open_table(CHUNKS)?)?;
        feed(&mut h, &rtx.open_table(KEY_INDEX)?)?;
        feed(&mut h, &rtx.open_table(LEASES)?)?;
        feed(&mut h, &rtx.open_table(LEASE_KEYS)?)?;
        for r in rtx.open_table(META)?.iter()? {
            let (k, v) = r?;
            if k.value() == META_APPLIED {
                continue;
            }
            h.update(k.value().as_bytes());
            h.update(v.value());
        }
        Ok(h.finalize())
    }

    /// The size of the keyspace file in bytes (one `stat`, no read transaction).
    pub fn file_size(&self) -> Result<u64> {
        Ok(std::fs::metadata(&self.path)?.len())
    }

    /// (file size, bytes in use). In use is the bytes of every table's pages as redb reports
    /// them from a read snapshot (an estimate: free pages inside the file are not counted),
    /// so it never waits for the writer.
    pub fn db_size(&self) -> Result<(i64, i64)> {
        let file = std::fs::metadata(&self.path)?.len();
        let file = i64::try_from(file).unwrap_or(i64::MAX);
        let mut last = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, in_use)) = *last {
            if at.elapsed() < IN_USE_MAX_AGE {
                return Ok((file, in_use.min(file)));
            }
        }
        let in_use = self.measure_in_use()?;
        *last = Some((std::time::Instant::now(), in_use));
        Ok((file, in_use.min(file)))
    }

    /// Forgets the last measure of the bytes in use: the file was replaced.
    fn remeasure_in_use(&self) {
        *self.in_use.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn measure_in_use(&self) -> Result<i64> {
        // Held while the transaction lives: a defragment may swap the file meanwhile.
        let db = self.db();
        let rtx = db.begin_read()?;
        fn used<K: redb::Key + 'static, V: redb::Value + 'static>(
            t: &ReadOnlyTable<K, V>,
        ) -> Result<u64> {
            let st = t.stats()?;
            Ok(st.stored_bytes() + st.metadata_bytes() + st.fragmented_bytes())
        }
        let in_use = used(&rtx.open_table(LATEST)?)?
            + used(&rtx.open_table(HISTORY)?)?
            + used(&rtx.open_table(CHUNKS)?)?
            + used(&rtx.open_table(KEY_INDEX)?)?
            + used(&rtx.open_table(LEASES)?)?
            + used(&rtx.open_table(LEASE_KEYS)?)?
            + used(&rtx.open_table(META)?)?;
        Ok(i64::try_from(in_use).unwrap_or(i64::MAX))
    }

    /// Per keyspace table: where the file's bytes go.
    pub fn table_stats(&self) -> Result<Vec<TableStats>> {
        // Held while the transaction lives: a defragment may swap the file meanwhile.
        let db = self.db();
        let rtx = db.begin_read()?;
        fn st<K: redb::Key + 'static, V: redb::Value + 'static>(
            name: &'static str,
            t: &ReadOnlyTable<K, V>,
        ) -> Result<TableStats> {
            let s = t.stats()?;
            Ok(TableStats {
                name,
                leaf_pages: s.leaf_pages(),
                branch_pages: s.branch_pages(),
                stored_bytes: s.stored_bytes(),
                fragmented_bytes: s.fragmented_bytes(),
            })
        }
        Ok(vec![
            st("latest", &rtx.open_table(LATEST)?)?,
            st("history", &rtx.open_table(HISTORY)?)?,
            st("chunks", &rtx.open_table(CHUNKS)?)?,
            st("key_index", &rtx.open_table(KEY_INDEX)?)?,
        ])
    }

    /// A free-form metadata entry written with `WriteBatch::set_meta`.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        // Held while the transaction lives: a defragment may swap the file meanwhile.
        let db = self.db();
        let rtx = db.begin_read()?;
        let t = rtx.open_table(META)?;
        Ok(t.get(user_meta_key(key).as_str())?
            .map(|g| g.value().to_vec()))
    }

    /// Writes a consistent, self-contained copy of the keyspace to a new redb file at `dest`
    /// (which must not exist). Taken from one read snapshot, so writers are not blocked.
    ///
    /// The copy is in schema 2 (the key index holds each key's newest revision too): it is
    /// what a leader sends a lagging follower, and during a rolling upgrade that follower may
    /// still run the version before schema 3, which reads a schema 3 file without noticing
    /// and misses the newest revisions in its index. This version migrates the copy when it
    /// restores it ([`Store::restore_from`]).
    pub fn snapshot_to(&self, dest: &Path) -> Result<()> {
        self.snapshot_revision_to(dest).map(|_| ())
    }

    /// [`Store::snapshot_to`], returning the revision the copy holds: read from the same read
    /// transaction, so it is exact even while writes go on (`current_revision` afterwards may
    /// already be past it).
    pub fn snapshot_revision_to(&self, dest: &Path) -> Result<i64> {
        if dest.exists() {
            return Err(Error::Backend(format!(
                "snapshot destination {} already exists",
                dest.display()
            )));
        }
        // Held while the transaction lives: a defragment may swap the file meanwhile.
        let db = self.db();
        let rtx = db.begin_read()?;
        let out = create_db(dest)?;
        let wtx = out.begin_write()?;
        copy_tables(&rtx, &wtx)?;
        migrate::to_schema_2(&wtx)?;
        wtx.commit()?;
        let revision = meta_i64(&rtx.open_table(META)?, META_REVISION)?.unwrap_or(1);
        tracing::info!(dest = %dest.display(), revision, "wrote keyspace snapshot");
        Ok(revision)
    }

    /// Replaces this keyspace's whole content with the snapshot file at `src` (written by
    /// [`Store::snapshot_to`], on another member): how a follower too far behind the leader's
    /// log catches up. One durable write transaction, so a crash leaves either the old
    /// keyspace or the new one. Returns the applied (index, term) the snapshot carries.
    pub fn restore_from(&self, src: &Path) -> Result<(u64, u64)> {
        let bad = |e: &dyn std::fmt::Display| Error::BadSnapshot(format!("{}: {e}", src.display()));
        // Read once, front to back: a large cache would only hold the copied pages.
        let from = redb::Builder::new()
            .set_cache_size(SCAN_CACHE_BYTES)
            .open(src)
            .map_err(|e| bad(&e))?;
        let rtx = from.begin_read().map_err(|e| bad(&e))?;
        let _gate = self.write_gate.write().unwrap_or_else(|e| e.into_inner());
        // Held while the transaction lives: a defragment may swap the file meanwhile.
        let db = self.db();
        let mut wtx = db.begin_write()?;
        // Deleting the tables is cheaper than removing their rows one by one.
        wtx.delete_table(LATEST)?;
        wtx.delete_table(HISTORY)?;
        wtx.delete_table(CHUNKS)?;
        wtx.delete_table(KEY_INDEX)?;
        wtx.delete_table(LEASES)?;
        wtx.delete_table(LEASE_KEYS)?;
        wtx.delete_table(META)?;
        wtx.delete_table(legacy::LATEST_V1)?;
        wtx.delete_table(legacy::HISTORY_V1)?;
        // A member of an older version sends a file of an older schema: take its tables as
        // they are, then migrate them here, in the same transaction.
        match migrate::schema_of(&rtx)? {
            1 => {
                migrate::copy_v1_tables(&rtx, &wtx)?;
                migrate::to_current(&wtx)?;
            }
            s if s < SCHEMA => {
                copy_tables(&rtx, &wtx)?;
                migrate::to_current(&wtx)?;
            }
            _ => copy_tables(&rtx, &wtx)?,
        }
        let (revision, compacted, applied) = {
            // The same rows as just copied, read from the source.
            let meta = rtx.open_table(META)?;
            (
                meta_i64(&meta, META_REVISION)?.unwrap_or(1),
                meta_i64(&meta, META_COMPACTED)?.unwrap_or(0),
                meta_applied(&meta)?,
            )
        };
        wtx.set_durability(redb::Durability::Immediate)?;
        wtx.commit()?;
        self.remeasure_in_use();
        self.publish(revision, compacted, Some(applied));
        tracing::info!(
            src = %src.display(),
            revision,
            compacted,
            applied_index = applied.0,
            "replaced the keyspace with a snapshot"
        );
        Ok(applied)
    }

    /// Makes every commit so far durable: redb persists earlier non-durable commits with the
    /// next durable one, so an empty durable commit is enough.
    pub fn sync(&self) -> Result<()> {
        let _gate = self.write_gate.read().unwrap_or_else(|e| e.into_inner());
        // Held while the transaction lives: a defragment may swap the file meanwhile.
        let db = self.db();
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    }

    fn publish(&self, revision: i64, compacted: i64, applied: Option<(u64, u64)>) {
        self.revision.store(revision, Ordering::Release);
        self.compacted.store(compacted, Ordering::Release);
        if let Some(a) = applied {
            *self.applied.lock().unwrap_or_else(|e| e.into_inner()) = a;
        }
    }
}

/// The empty keyspace file every new one starts from: a redb database with 4 MiB regions
/// (`scripts/gen-redb-template.sh` writes it). redb grows a file by doubling it within a
/// region and by one region at a time past the first, and its default region is 4 GiB: a
/// file made by `Database::create` is up to twice its data. One made from this stays within
/// two regions (8 MiB) of it, as etcd's bbolt file grows in 16 MiB steps.
static EMPTY_DB: &[u8] = include_bytes!("empty.redb");

/// Opens or creates a keyspace file; a new one (missing or empty) starts as [`EMPTY_DB`].
pub(crate) fn create_db(path: &Path) -> Result<Database> {
    create_db_cached(path, DEFAULT_CACHE_BYTES)
}

fn create_db_cached(path: &Path, cache_bytes: usize) -> Result<Database> {
    let fresh = match std::fs::metadata(path) {
        Ok(m) => m.len() == 0,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(e.into()),
    };
    if fresh {
        // Written aside and renamed, so a crash never leaves a half-written template that
        // the next open would refuse as a damaged file.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".init");
        let tmp = PathBuf::from(tmp);
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(EMPTY_DB)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(path)?)
}

/// Where a defragment writes its copy before renaming it over the keyspace file.
fn defrag_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".defrag");
    PathBuf::from(p)
}

/// Copies one table from `src` into `dst`, row by row.
pub(crate) fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    src: &redb::ReadTransaction,
    dst: &redb::WriteTransaction,
    def: redb::TableDefinition<K, V>,
) -> Result<()> {
    let from = src.open_table(def)?;
    let mut to = dst.open_table(def)?;
    for r in from.iter()? {
        let (k, v) = r?;
        to.insert(k.value(), v.value())?;
    }
    Ok(())
}

/// Copies every table of the keyspace from `src` into `dst` (row by row: a redb file cannot
/// be copied byte for byte while it is being written).
fn copy_tables(src: &redb::ReadTransaction, dst: &redb::WriteTransaction) -> Result<()> {
    copy_table(src, dst, LATEST)?;
    copy_table(src, dst, HISTORY)?;
    copy_table(src, dst, CHUNKS)?;
    copy_table(src, dst, KEY_INDEX)?;
    copy_table(src, dst, LEASES)?;
    copy_table(src, dst, LEASE_KEYS)?;
    copy_table(src, dst, META)
}

pub(crate) fn meta_i64<M: ReadableTable<&'static str, &'static [u8]>>(
    meta: &M,
    key: &str,
) -> Result<Option<i64>> {
    let Some(g) = meta.get(key)? else {
        return Ok(None);
    };
    let b: [u8; 8] = g
        .value()
        .try_into()
        .map_err(|_| Error::Corrupt(format!("meta {key} is not 8 bytes")))?;
    Ok(Some(i64::from_le_bytes(b)))
}

fn meta_applied(meta: &MetaTable) -> Result<(u64, u64)> {
    let Some(g) = meta.get(META_APPLIED)? else {
        return Ok((0, 0));
    };
    let b = g.value();
    if b.len() != 16 {
        return Err(Error::Corrupt("meta applied index is not 16 bytes".into()));
    }
    let mut i = [0u8; 8];
    let mut t = [0u8; 8];
    i.copy_from_slice(&b[..8]);
    t.copy_from_slice(&b[8..]);
    Ok((u64::from_le_bytes(i), u64::from_le_bytes(t)))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod migrate_tests;
