//! Reads over the keyspace tables, shared by read transactions (`Store::range`) and by the
//! write path (txn compares, ranges inside a txn that must see the txn's own writes).

use crate::record::{decode_history, decode_latest, to_kv, Body, Header};
use crate::span::Span;
use crate::tables::{ChunkKey, HistoryKey, IndexKey};
use crate::{Error, Result};
use ferrokv_proto::{etcdserverpb as pb, mvccpb};
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::range_request::{SortOrder, SortTarget};
use redb::ReadableTable;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::ops::Bound;

/// Called with (key, header, value) per key of a scan; returns false to stop. The value is
/// empty when the scan was asked for no values.
pub(crate) type Visitor<'f> = dyn FnMut(&[u8], &Header, &[u8]) -> Result<bool> + 'f;

/// Borrowed handles of the four keyspace tables, from either kind of redb transaction.
pub(crate) struct View<'a, L, I, H, C> {
    pub latest: &'a L,
    pub index: &'a I,
    pub history: &'a H,
    pub chunks: &'a C,
}

/// A key revision as found by a read.
pub(crate) struct Found {
    pub header: Header,
    pub value: Vec<u8>,
}

/// Where the chunks of large values are read from: the `chunks` table itself, or a read
/// transaction that opens it only when a large value is met, so reads of small values do not
/// pay for opening it.
pub(crate) trait ChunkSource {
    /// Appends the chunks of history record (main, sub) to `out`; returns how many.
    fn read_chunks(&self, main: u64, sub: u32, out: &mut Vec<u8>) -> Result<usize>;
}

fn read_from<C: ReadableTable<ChunkKey, &'static [u8]>>(
    t: &C,
    main: u64,
    sub: u32,
    out: &mut Vec<u8>,
) -> Result<usize> {
    let mut n = 0;
    for r in t.range((main, sub, 0u32)..=(main, sub, u32::MAX))? {
        let (_, c) = r?;
        out.extend_from_slice(c.value());
        n += 1;
    }
    Ok(n)
}

impl ChunkSource for redb::Table<'_, ChunkKey, &'static [u8]> {
    fn read_chunks(&self, main: u64, sub: u32, out: &mut Vec<u8>) -> Result<usize> {
        read_from(self, main, sub, out)
    }
}

impl ChunkSource for redb::ReadOnlyTable<ChunkKey, &'static [u8]> {
    fn read_chunks(&self, main: u64, sub: u32, out: &mut Vec<u8>) -> Result<usize> {
        read_from(self, main, sub, out)
    }
}

/// The `chunks` table of a read transaction, opened on first use.
pub(crate) struct LazyChunks<'t> {
    pub txn: &'t redb::ReadTransaction,
    pub table: std::cell::OnceCell<redb::ReadOnlyTable<ChunkKey, &'static [u8]>>,
}

impl ChunkSource for LazyChunks<'_> {
    fn read_chunks(&self, main: u64, sub: u32, out: &mut Vec<u8>) -> Result<usize> {
        let t = match self.table.get() {
            Some(t) => t,
            None => {
                let t = self.txn.open_table(crate::tables::CHUNKS)?;
                self.table.get_or_init(|| t)
            }
        };
        read_from(t, main, sub, out)
    }
}

/// Where the key index is read from: the table itself, or a read transaction that opens it
/// on first use (reads at the current revision never need it; opening a table is a lookup).
pub(crate) trait IndexSource {
    type T: ReadableTable<IndexKey, bool>;
    fn index(&self) -> Result<&Self::T>;
}

impl<'t> IndexSource for redb::Table<'t, IndexKey, bool> {
    type T = redb::Table<'t, IndexKey, bool>;
    fn index(&self) -> Result<&Self::T> {
        Ok(self)
    }
}

impl IndexSource for redb::ReadOnlyTable<IndexKey, bool> {
    type T = redb::ReadOnlyTable<IndexKey, bool>;
    fn index(&self) -> Result<&Self::T> {
        Ok(self)
    }
}

/// The key index of a read transaction, opened on first use.
pub(crate) struct LazyIndex<'t> {
    pub txn: &'t redb::ReadTransaction,
    pub table: std::cell::OnceCell<redb::ReadOnlyTable<IndexKey, bool>>,
}

impl IndexSource for LazyIndex<'_> {
    type T = redb::ReadOnlyTable<IndexKey, bool>;
    fn index(&self) -> Result<&Self::T> {
        if let Some(t) = self.table.get() {
            return Ok(t);
        }
        let t = self.txn.open_table(crate::tables::KEY_INDEX)?;
        Ok(self.table.get_or_init(|| t))
    }
}

/// The whole value of a history record: borrowed when inline, assembled from its chunks
/// otherwise.
pub(crate) fn assemble<'b, C: ChunkSource + ?Sized>(
    chunks: &C,
    main: u64,
    sub: u32,
    body: Body<'b>,
) -> Result<Cow<'b, [u8]>> {
    let (len, n, tail) = match body {
        Body::Inline(v) => return Ok(Cow::Borrowed(v)),
        Body::Chunked { len, chunks, tail } => (len, chunks, tail),
    };
    let mut out = Vec::with_capacity(len);
    let seen = chunks.read_chunks(main, sub, &mut out)?;
    out.extend_from_slice(tail);
    if seen != n || out.len() != len {
        return Err(Error::Corrupt(format!(
            "history record {main}/{sub}: {seen} of {n} chunks, {} of {len} value bytes",
            out.len()
        )));
    }
    Ok(Cow::Owned(out))
}

impl<L, I, H, C> View<'_, L, I, H, C>
where
    L: ReadableTable<&'static [u8], &'static [u8]>,
    I: IndexSource,
    H: ReadableTable<HistoryKey, &'static [u8]>,
    C: ChunkSource,
{
    /// The header (as the history record says), key and value of history record (m, s).
    pub(crate) fn record(&self, m: u64, s: u32) -> Result<(Header, Vec<u8>, Vec<u8>)> {
        let g = self
            .history
            .get((m, s))?
            .ok_or_else(|| missing_history(m, s))?;
        let (h, key, body) = decode_history(m, s, g.value())?;
        let value = assemble(self.chunks, m, s, body)?.into_owned();
        Ok((h, key.to_vec(), value))
    }

    /// The value of the revision `h` names.
    pub(crate) fn value_of(&self, h: &Header) -> Result<Vec<u8>> {
        let (m, s) = h.history_key();
        let g = self
            .history
            .get((m, s))?
            .ok_or_else(|| missing_history(m, s))?;
        let (_, _, body) = decode_history(m, s, g.value())?;
        Ok(assemble(self.chunks, m, s, body)?.into_owned())
    }

    /// Calls `f` with the value of the revision `h` names, without copying an inline one.
    fn with_value<T>(&self, h: &Header, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
        let (m, s) = h.history_key();
        let g = self
            .history
            .get((m, s))?
            .ok_or_else(|| missing_history(m, s))?;
        let (_, _, body) = decode_history(m, s, g.value())?;
        let v = assemble(self.chunks, m, s, body)?;
        f(&v)
    }

    /// Sets the value of each kv from the history record its header names. When the records
    /// lie close together in revision order (keys loaded or rewritten together, the common
    /// case for a page of a list) one walk over that stretch of `history` reads them all,
    /// instead of one tree descent per key.
    fn fill_values(&self, kvs: &mut [mvccpb::KeyValue], kept: &[Header]) -> Result<()> {
        let mut want: Vec<(HistoryKey, usize)> = kept
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.tombstone)
            .map(|(i, h)| (h.history_key(), i))
            .collect();
        want.sort_unstable();
        let dense = match (want.first(), want.last()) {
            (Some(lo), Some(hi)) => want.len() >= 16 && hi.0 .0 - lo.0 .0 < 4 * want.len() as u64,
            _ => false,
        };
        if !dense {
            for (_, i) in want {
                kvs[i].value = self.value_of(&kept[i])?;
            }
            return Ok(());
        }
        let (lo, hi) = (want[0].0, want[want.len() - 1].0);
        let mut next = want.iter().peekable();
        for r in self.history.range(lo..=hi)? {
            let (k, rec) = r?;
            let at = k.value();
            let Some(&&(w, i)) = next.peek() else { break };
            if at < w {
                continue;
            }
            if at > w {
                return Err(missing_history(w.0, w.1));
            }
            let (_, _, body) = decode_history(at.0, at.1, rec.value())?;
            kvs[i].value = assemble(self.chunks, at.0, at.1, body)?.into_owned();
            next.next();
        }
        match next.next() {
            Some(&(w, _)) => Err(missing_history(w.0, w.1)),
            None => Ok(()),
        }
    }

    /// The live (not deleted) newest revision of `key`.
    pub(crate) fn live(&self, key: &[u8]) -> Result<Option<Found>> {
        let Some(header) = self.live_header(key)? else {
            return Ok(None);
        };
        Ok(Some(Found {
            value: self.value_of(&header)?,
            header,
        }))
    }

    /// The header of the live newest revision of `key`, without its value.
    pub(crate) fn live_header(&self, key: &[u8]) -> Result<Option<Header>> {
        let Some(g) = self.latest.get(key)? else {
            return Ok(None);
        };
        let header = decode_latest(g.value())?;
        Ok((!header.tombstone).then_some(header))
    }

    /// Newest revision of `key` at or below `rev`: (main, sub, tombstone). `latest` names the
    /// key's newest revision of all, the key index the older ones.
    pub(crate) fn revision_at(&self, key: &[u8], rev: i64) -> Result<Option<(u64, u32, bool)>> {
        if let Some(g) = self.latest.get(key)? {
            let h = decode_latest(g.value())?;
            if h.mod_revision <= rev {
                let (m, s) = h.history_key();
                return Ok(Some((m, s, h.tombstone)));
            }
        }
        self.index_at(key, rev)
    }

    /// Newest index entry of `key` at or below `rev`: (main, sub, tombstone). The index holds
    /// every kept revision but the key's newest, so this is the revision at `rev` only when
    /// the newest (in `latest`) is later than `rev`; [`View::revision_at`] covers both.
    pub(crate) fn index_at(&self, key: &[u8], rev: i64) -> Result<Option<(u64, u32, bool)>> {
        let lo: (&[u8], u64, u32) = (key, 0, 0);
        let hi: (&[u8], u64, u32) = (key, rev_u64(rev), u32::MAX);
        let mut it = self
            .index
            .index()?
            .range((Bound::Included(lo), Bound::Included(hi)))?;
        match it.next_back() {
            Some(r) => {
                let (k, v) = r?;
                let (_, m, s) = k.value();
                Ok(Some((m, s, v.value())))
            }
            None => Ok(None),
        }
    }

    /// The live revision of `key` just before `(main, sub)`; used for events' prev_kv.
    pub(crate) fn live_before(
        &self,
        key: &[u8],
        main: u64,
        sub: u32,
    ) -> Result<Option<mvccpb::KeyValue>> {
        let lo: (&[u8], u64, u32) = (key, 0, 0);
        let hi: (&[u8], u64, u32) = (key, main, sub);
        let mut it = self
            .index
            .index()?
            .range((Bound::Included(lo), Bound::Excluded(hi)))?;
        let Some(r) = it.next_back() else {
            return Ok(None);
        };
        let (k, v) = r?;
        if v.value() {
            return Ok(None);
        }
        let (_, m, s) = k.value();
        let (h, key, value) = self.record(m, s)?;
        Ok(Some(to_kv(&key, &h, &value)))
    }

    /// Calls `f(key, header, value)` for every live key of `span` at revision `at` (None =
    /// newest) in key order (reversed when `reverse`), until `f` returns false. Without
    /// `values` the value given is empty and no history record is read at the newest
    /// revision (counting, keys-only, compares on revisions).
    ///
    /// At an older revision the `latest` table still drives the walk (it holds every key that
    /// has history, tombstones included, until compaction), and only keys changed after `at`
    /// cost an index seek; so paging a list at a recent revision stays close to latest speed.
    pub(crate) fn scan(
        &self,
        span: &Span,
        at: Option<i64>,
        reverse: bool,
        values: bool,
        f: &mut Visitor<'_>,
    ) -> Result<()> {
        let mut visit = |key: &[u8], rec: &[u8]| -> Result<bool> {
            let h = decode_latest(rec)?;
            let h = match at {
                Some(rev) if h.mod_revision > rev => match self.index_at(key, rev)? {
                    None | Some((_, _, true)) => return Ok(true),
                    Some((m, s, false)) => {
                        let g = self
                            .history
                            .get((m, s))?
                            .ok_or_else(|| missing_history(m, s))?;
                        let (h, _, body) = decode_history(m, s, g.value())?;
                        if !values {
                            return f(key, &h, &[]);
                        }
                        let v = assemble(self.chunks, m, s, body)?;
                        return f(key, &h, &v);
                    }
                },
                _ if h.tombstone => return Ok(true),
                _ => h,
            };
            if values {
                self.with_value(&h, |v| f(key, &h, v))
            } else {
                f(key, &h, &[])
            }
        };
        match span {
            Span::Empty => Ok(()),
            Span::Single(key) => {
                if let Some(g) = self.latest.get(key.as_slice())? {
                    visit(key, g.value())?;
                }
                Ok(())
            }
            Span::Interval { .. } => {
                let it = self.latest.range::<&[u8]>(span.bounds())?;
                if reverse {
                    for r in it.rev() {
                        let (k, v) = r?;
                        if !visit(k.value(), v.value())? {
                            break;
                        }
                    }
                } else {
                    for r in it {
                        let (k, v) = r?;
                        if !visit(k.value(), v.value())? {
                            break;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// etcd's Range. `current`/`compacted` are the revisions the request is checked against;
    /// the response header revision is `current`.
    pub(crate) fn range(
        &self,
        req: &pb::RangeRequest,
        current: i64,
        compacted: i64,
    ) -> Result<pb::RangeResponse> {
        check_revision(req.revision, current, compacted)?;
        let order = SortOrder::try_from(req.sort_order).map_err(|_| Error::InvalidSortOption)?;
        let target = SortTarget::try_from(req.sort_target).map_err(|_| Error::InvalidSortOption)?;
        let at = (req.revision > 0).then_some(req.revision);
        let span = Span::new(&req.key, &req.range_end);
        let limit = usize::try_from(req.limit).unwrap_or(0);
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;

        let mut count: i64 = 0;
        let mut kvs: Vec<mvccpb::KeyValue> = Vec::new();
        let mut more = false;
        // Values are fetched (from history) only for the kvs that are returned: counted keys
        // beyond `limit` and filtered-out keys never cost a value read.
        let mut kept: Vec<Header> = Vec::new();
        if req.count_only {
            self.scan(&span, at, false, false, &mut |_, _, _| {
                count += 1;
                Ok(true)
            })?;
        } else if !filtered && target == SortTarget::Key {
            // Key order is the table order: walk it (backwards for DESCEND), keep `limit`
            // entries and only count the rest.
            let reverse = order == SortOrder::Descend;
            self.scan(&span, at, reverse, false, &mut |k, h, _| {
                count += 1;
                if limit == 0 || kvs.len() < limit {
                    kvs.push(to_kv(k, h, &[]));
                    kept.push(*h);
                }
                Ok(true)
            })?;
            more = (kvs.len() as i64) < count;
        } else {
            // Sorting by value needs every value; any other order only the kept ones'.
            let by_value = target == SortTarget::Value;
            let mut rows: Vec<(mvccpb::KeyValue, Header)> = Vec::new();
            self.scan(&span, at, false, by_value, &mut |k, h, v| {
                count += 1;
                if passes_filters(req, h) {
                    rows.push((to_kv(k, h, v), *h));
                }
                Ok(true)
            })?;
            sort_rows(&mut rows, order, target);
            if limit > 0 && rows.len() > limit {
                rows.truncate(limit);
                more = true;
            }
            if by_value {
                if req.keys_only {
                    rows.iter_mut().for_each(|(kv, _)| kv.value.clear());
                }
                kvs = rows.into_iter().map(|(kv, _)| kv).collect();
            } else {
                (kvs, kept) = rows.into_iter().unzip();
            }
        }
        if !req.keys_only {
            self.fill_values(&mut kvs, &kept)?;
        }
        Ok(pb::RangeResponse {
            header: Some(header(current)),
            kvs,
            more,
            count,
        })
    }

    /// One txn compare against the newest state. All keys of a compare range must satisfy it.
    pub(crate) fn compare(&self, c: &pb::Compare) -> Result<bool> {
        let span = Span::new(&c.key, &c.range_end);
        let mut any = false;
        let mut all = true;
        let values = c.target == CompareTarget::Value as i32;
        self.scan(&span, None, false, values, &mut |_, h, v| {
            any = true;
            if !compare_kv(c, h, v) {
                all = false;
                return Ok(false);
            }
            Ok(true)
        })?;
        if !any {
            // A missing key compares as a zero kv, except that no value can equal a missing
            // value (gRPC cannot tell nil from empty).
            if c.target == CompareTarget::Value as i32 {
                return Ok(false);
            }
            return Ok(compare_kv(c, &Header::default(), &[]));
        }
        Ok(all)
    }
}

pub(crate) fn header(revision: i64) -> pb::ResponseHeader {
    pb::ResponseHeader {
        revision,
        ..Default::default()
    }
}

pub(crate) fn check_revision(rev: i64, current: i64, compacted: i64) -> Result<()> {
    if rev > current {
        return Err(Error::FutureRevision);
    }
    if rev > 0 && rev < compacted {
        return Err(Error::Compacted);
    }
    Ok(())
}

pub(crate) fn rev_u64(rev: i64) -> u64 {
    u64::try_from(rev).unwrap_or(0)
}

pub(crate) fn missing_history(m: u64, s: u32) -> Error {
    Error::Corrupt(format!(
        "key index points at missing history record {m}.{s}"
    ))
}

fn passes_filters(req: &pb::RangeRequest, h: &Header) -> bool {
    (req.min_mod_revision == 0 || h.mod_revision >= req.min_mod_revision)
        && (req.max_mod_revision == 0 || h.mod_revision <= req.max_mod_revision)
        && (req.min_create_revision == 0 || h.create_revision >= req.min_create_revision)
        && (req.max_create_revision == 0 || h.create_revision <= req.max_create_revision)
}

/// Sorts key-ordered rows. A stable sort keeps key order among equal targets.
fn sort_rows(rows: &mut [(mvccpb::KeyValue, Header)], order: SortOrder, target: SortTarget) {
    let by =
        |(a, _): &(mvccpb::KeyValue, Header), (b, _): &(mvccpb::KeyValue, Header)| -> Ordering {
            match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
    match order {
        // A non-KEY target with NONE sorts ascending, as etcd does.
        SortOrder::None | SortOrder::Ascend => {
            if target != SortTarget::Key {
                rows.sort_by(by);
            }
        }
        SortOrder::Descend => rows.sort_by(|a, b| by(b, a)),
    }
}

fn compare_kv(c: &pb::Compare, h: &Header, value: &[u8]) -> bool {
    let int_target =
        |want: fn(&TargetUnion) -> Option<i64>| c.target_union.as_ref().and_then(want).unwrap_or(0);
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Version) => h.version.cmp(&int_target(|t| match t {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Create) => h.create_revision.cmp(&int_target(|t| match t {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => h.mod_revision.cmp(&int_target(|t| match t {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => h.lease.cmp(&int_target(|t| match t {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            value.cmp(want)
        }
        Err(_) => return false,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Err(_) => false,
    }
}
