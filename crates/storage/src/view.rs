//! Reads over the keyspace tables, shared by read transactions (`Store::range`) and by the
//! write path (txn compares, ranges inside a txn that must see the txn's own writes).

use crate::record::{decode_history, decode_latest, to_kv, Header};
use crate::span::Span;
use crate::tables::{HistoryKey, IndexKey};
use crate::{Error, Result};
use ferrokv_proto::{etcdserverpb as pb, mvccpb};
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::range_request::{SortOrder, SortTarget};
use redb::ReadableTable;
use std::cmp::Ordering;
use std::ops::Bound;

/// Called with (key, header, value) per key of a scan; returns false to stop.
pub(crate) type Visitor<'f> = dyn FnMut(&[u8], &Header, &[u8]) -> Result<bool> + 'f;

/// Borrowed handles of the three keyspace tables, from either kind of redb transaction.
pub(crate) struct View<'a, L, I, H> {
    pub latest: &'a L,
    pub index: &'a I,
    pub history: &'a H,
}

/// A key revision as found by a read.
pub(crate) struct Found {
    pub header: Header,
    pub value: Vec<u8>,
}

impl<L, I, H> View<'_, L, I, H>
where
    L: ReadableTable<&'static [u8], &'static [u8]>,
    I: ReadableTable<IndexKey, bool>,
    H: ReadableTable<HistoryKey, &'static [u8]>,
{
    /// The live (not deleted) newest revision of `key`.
    pub(crate) fn live(&self, key: &[u8]) -> Result<Option<Found>> {
        let Some(g) = self.latest.get(key)? else {
            return Ok(None);
        };
        let (header, value) = decode_latest(g.value())?;
        if header.tombstone {
            return Ok(None);
        }
        Ok(Some(Found {
            header,
            value: value.to_vec(),
        }))
    }

    /// Newest index entry of `key` at or below `rev`: (main, sub, tombstone).
    pub(crate) fn index_at(&self, key: &[u8], rev: i64) -> Result<Option<(u64, u32, bool)>> {
        let lo: (&[u8], u64, u32) = (key, 0, 0);
        let hi: (&[u8], u64, u32) = (key, rev_u64(rev), u32::MAX);
        let mut it = self
            .index
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
            .range((Bound::Included(lo), Bound::Excluded(hi)))?;
        let Some(r) = it.next_back() else {
            return Ok(None);
        };
        let (k, v) = r?;
        if v.value() {
            return Ok(None);
        }
        let (_, m, s) = k.value();
        let g = self
            .history
            .get((m, s))?
            .ok_or_else(|| missing_history(m, s))?;
        let (h, key, value) = decode_history(g.value())?;
        Ok(Some(to_kv(key, &h, value)))
    }

    /// Calls `f(key, header, value)` for every live key of `span` at revision `at` (None =
    /// newest) in key order (reversed when `reverse`), until `f` returns false.
    ///
    /// At an older revision the `latest` table still drives the walk (it holds every key that
    /// has history, tombstones included, until compaction), and only keys changed after `at`
    /// cost an index seek; so paging a list at a recent revision stays close to latest speed.
    pub(crate) fn scan(
        &self,
        span: &Span,
        at: Option<i64>,
        reverse: bool,
        f: &mut Visitor<'_>,
    ) -> Result<()> {
        let mut visit = |key: &[u8], rec: &[u8]| -> Result<bool> {
            let (h, value) = decode_latest(rec)?;
            match at {
                Some(rev) if h.mod_revision > rev => match self.index_at(key, rev)? {
                    None | Some((_, _, true)) => Ok(true),
                    Some((m, s, false)) => {
                        let g = self
                            .history
                            .get((m, s))?
                            .ok_or_else(|| missing_history(m, s))?;
                        let (h, _, value) = decode_history(g.value())?;
                        f(key, &h, value)
                    }
                },
                _ if h.tombstone => Ok(true),
                _ => f(key, &h, value),
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
        if req.count_only {
            self.scan(&span, at, false, &mut |_, _, _| {
                count += 1;
                Ok(true)
            })?;
        } else if !filtered && target == SortTarget::Key {
            // Key order is the table order: walk it (backwards for DESCEND), keep `limit`
            // entries and only count the rest without copying values.
            let reverse = order == SortOrder::Descend;
            self.scan(&span, at, reverse, &mut |k, h, v| {
                count += 1;
                if limit == 0 || kvs.len() < limit {
                    kvs.push(to_kv(k, h, if req.keys_only { &[] } else { v }));
                }
                Ok(true)
            })?;
            more = (kvs.len() as i64) < count;
        } else {
            let keep_value = !req.keys_only || target == SortTarget::Value;
            self.scan(&span, at, false, &mut |k, h, v| {
                count += 1;
                if passes_filters(req, h) {
                    kvs.push(to_kv(k, h, if keep_value { v } else { &[] }));
                }
                Ok(true)
            })?;
            sort_kvs(&mut kvs, order, target);
            if limit > 0 && kvs.len() > limit {
                kvs.truncate(limit);
                more = true;
            }
            if req.keys_only {
                kvs.iter_mut().for_each(|kv| kv.value.clear());
            }
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
        self.scan(&span, None, false, &mut |_, h, v| {
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

/// Sorts key-ordered kvs. A stable sort keeps key order among equal targets.
fn sort_kvs(kvs: &mut [mvccpb::KeyValue], order: SortOrder, target: SortTarget) {
    let by = |a: &mvccpb::KeyValue, b: &mvccpb::KeyValue| -> Ordering {
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
                kvs.sort_by(by);
            }
        }
        SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
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
