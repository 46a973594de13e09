//! The write path: one `WriteBatch` is one redb write transaction holding any number of
//! applied requests, plus the applied raft index, committed together.
//!
//! Every op validates everything that can fail for a non-backend reason *before* it changes a
//! table, so an `Err` other than `Corrupt`/`Backend` leaves the batch as it was. Those two are
//! fail-stop for the caller (the batch must be dropped, which aborts it).

use crate::record::{decode_history, decode_latest, encode_history, encode_latest, to_kv, Header};
use crate::span::Span;
use crate::tables::*;
use crate::view::{check_revision, header, rev_u64, View};
use crate::{Error, Result, Store};
use ferrokv_proto::{etcdserverpb as pb, mvccpb};
use pb::request_op::Request;
use pb::response_op::Response;
use redb::{ReadableTable, Table, WriteTransaction};
use std::collections::BTreeSet;
use std::ops::Bound;

/// One redb write transaction. Dropping it without `commit` aborts everything in it.
pub struct WriteBatch<'a> {
    store: &'a Store,
    txn: WriteTransaction,
    /// Keeps a defragment from swapping the file under this transaction.
    _gate: std::sync::RwLockReadGuard<'a, ()>,
    /// The database `txn` belongs to, alive at least as long as the transaction.
    _db: std::sync::Arc<redb::Database>,
    /// Current main revision including the ops applied in this batch.
    revision: i64,
    compacted: i64,
    applied: Option<(u64, u64)>,
    /// A compaction ran in this batch: hash the keyspace after the commit.
    compacted_here: bool,
}

/// The write-side tables of one op.
struct Tables<'t> {
    latest: Table<'t, &'static [u8], &'static [u8]>,
    history: Table<'t, HistoryKey, &'static [u8]>,
    chunks: Table<'t, ChunkKey, &'static [u8]>,
    index: Table<'t, IndexKey, bool>,
    leases: Table<'t, i64, (i64, i64)>,
    lease_keys: Table<'t, (i64, &'static [u8]), ()>,
}

type WView<'v, 't> = View<
    'v,
    Table<'t, &'static [u8], &'static [u8]>,
    Table<'t, IndexKey, bool>,
    Table<'t, HistoryKey, &'static [u8]>,
    Table<'t, ChunkKey, &'static [u8]>,
>;

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>> {
        Ok(Tables {
            latest: txn.open_table(LATEST)?,
            history: txn.open_table(HISTORY)?,
            chunks: txn.open_table(CHUNKS)?,
            index: txn.open_table(KEY_INDEX)?,
            leases: txn.open_table(LEASES)?,
            lease_keys: txn.open_table(LEASE_KEYS)?,
        })
    }

    fn view(&self) -> WView<'_, 't> {
        View {
            latest: &self.latest,
            index: &self.index,
            history: &self.history,
            chunks: &self.chunks,
        }
    }

    /// Writes one key revision to the keyspace tables: its header to `latest` (the revision
    /// it replaces to the key index) and the one copy of its value to `history` (and
    /// `chunks`).
    fn write_record(&mut self, key: &[u8], h: &Header, value: &[u8]) -> Result<()> {
        let (main, sub) = h.history_key();
        set_latest(&mut self.latest, &mut self.index, key, h)?;
        let (rec, chunks) = encode_history(h, key, value);
        self.history.insert((main, sub), rec.as_slice())?;
        for (n, c) in chunks.iter().enumerate() {
            let n = u32::try_from(n).map_err(|_| Error::Backend("value too large".into()))?;
            self.chunks.insert((main, sub, n), *c)?;
        }
        Ok(())
    }

    /// Removes history record (main, sub) and its chunks.
    fn remove_history(&mut self, main: u64, sub: u32) -> Result<()> {
        let chunked = match self.history.remove((main, sub))? {
            Some(g) => matches!(
                decode_history(main, sub, g.value())?.2,
                crate::record::Body::Chunked { .. }
            ),
            None => false,
        };
        if chunked {
            self.chunks
                .retain_in((main, sub, 0u32)..=(main, sub, u32::MAX), |_, _| false)?;
        }
        Ok(())
    }

    fn move_lease(&mut self, key: &[u8], from: i64, to: i64) -> Result<()> {
        if from == to {
            return Ok(());
        }
        if from != 0 {
            self.lease_keys.remove((from, key))?;
        }
        if to != 0 {
            self.lease_keys.insert((to, key), ())?;
        }
        Ok(())
    }

    /// Checks that can fail a put, against the state before the op (or txn) runs.
    fn check_put(&self, req: &pb::PutRequest) -> Result<()> {
        if (req.ignore_value || req.ignore_lease) && self.view().live_header(&req.key)?.is_none() {
            return Err(Error::KeyNotFound);
        }
        if !req.ignore_lease && req.lease != 0 && self.leases.get(req.lease)?.is_none() {
            return Err(Error::LeaseNotFound);
        }
        Ok(())
    }

    fn exec_put(
        &mut self,
        req: &pb::PutRequest,
        rev: i64,
        sub: &mut u32,
    ) -> Result<(pb::PutResponse, mvccpb::Event)> {
        let prev = self.view().live(&req.key)?;
        let value: &[u8] = match (&prev, req.ignore_value) {
            (Some(p), true) => &p.value,
            _ => &req.value,
        };
        let old_lease = prev.as_ref().map_or(0, |p| p.header.lease);
        let lease = if req.ignore_lease {
            old_lease
        } else {
            req.lease
        };
        let h = Header {
            tombstone: false,
            create_revision: prev.as_ref().map_or(rev, |p| p.header.create_revision),
            mod_revision: rev,
            sub: *sub,
            version: prev.as_ref().map_or(1, |p| p.header.version + 1),
            lease,
        };
        self.write_record(&req.key, &h, value)?;
        *sub += 1;
        self.move_lease(&req.key, old_lease, lease)?;
        let prev_kv = prev.as_ref().map(|p| to_kv(&req.key, &p.header, &p.value));
        let event = mvccpb::Event {
            r#type: mvccpb::event::EventType::Put as i32,
            kv: Some(to_kv(&req.key, &h, value)),
            prev_kv: prev_kv.clone(),
        };
        let resp = pb::PutResponse {
            header: None,
            prev_kv: if req.prev_kv { prev_kv } else { None },
        };
        Ok((resp, event))
    }

    fn exec_delete(
        &mut self,
        req: &pb::DeleteRangeRequest,
        rev: i64,
        sub: &mut u32,
    ) -> Result<(pb::DeleteRangeResponse, Vec<mvccpb::Event>)> {
        let span = Span::new(&req.key, &req.range_end);
        let mut victims: Vec<(Vec<u8>, Header, Vec<u8>)> = Vec::new();
        self.view().scan(&span, None, false, true, &mut |k, h, v| {
            victims.push((k.to_vec(), *h, v.to_vec()));
            Ok(true)
        })?;
        let mut events = Vec::with_capacity(victims.len());
        let mut prev_kvs = Vec::new();
        for (key, h, value) in &victims {
            events.push(self.delete_key(key, h, value, rev, sub)?);
            if req.prev_kv {
                prev_kvs.push(to_kv(key, h, value));
            }
        }
        let resp = pb::DeleteRangeResponse {
            header: None,
            deleted: victims.len() as i64,
            prev_kvs,
        };
        Ok((resp, events))
    }

    fn delete_key(
        &mut self,
        key: &[u8],
        prev: &Header,
        value: &[u8],
        rev: i64,
        sub: &mut u32,
    ) -> Result<mvccpb::Event> {
        let tomb = Header::tombstone(rev, *sub);
        self.write_record(key, &tomb, &[])?;
        *sub += 1;
        self.move_lease(key, prev.lease, 0)?;
        Ok(mvccpb::Event {
            r#type: mvccpb::event::EventType::Delete as i32,
            kv: Some(to_kv(key, &tomb, &[])),
            prev_kv: Some(to_kv(key, prev, value)),
        })
    }
}

/// Makes `h` the newest revision of `key` in `latest` and moves the revision it replaces, if
/// any, into the key index: the index holds every kept revision of a key but its newest, which
/// `latest` names already (schema 3). A key written once costs no index row, and the replaced
/// row comes back from the same insert, so this costs no extra lookup.
pub(crate) fn set_latest(
    latest: &mut Table<'_, &'static [u8], &'static [u8]>,
    index: &mut Table<'_, IndexKey, bool>,
    key: &[u8],
    h: &Header,
) -> Result<()> {
    let replaced = match latest.insert(key, encode_latest(h).as_slice())? {
        Some(old) => Some(decode_latest(old.value())?),
        None => None,
    };
    if let Some(old) = replaced {
        let (main, sub) = old.history_key();
        index.insert((key, main, sub), old.tombstone)?;
    }
    Ok(())
}

/// The branch taken by a txn and by each nested txn inside that branch, decided from the
/// state before the txn changes anything (as etcd does).
struct Plan {
    succeeded: bool,
    nested: Vec<Option<Plan>>,
}

fn plan<L, I, H, C>(view: &View<'_, L, I, H, C>, req: &pb::TxnRequest) -> Result<Plan>
where
    L: ReadableTable<&'static [u8], &'static [u8]>,
    I: crate::view::IndexSource,
    H: ReadableTable<HistoryKey, &'static [u8]>,
    C: crate::view::ChunkSource,
{
    let mut succeeded = true;
    for c in &req.compare {
        if !view.compare(c)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    let mut nested = Vec::with_capacity(ops.len());
    for op in ops {
        nested.push(match &op.request {
            Some(Request::RequestTxn(t)) => Some(plan(view, t)?),
            _ => None,
        });
    }
    Ok(Plan { succeeded, nested })
}

/// Everything the planned branch would reject, checked before any write so a txn is
/// all-or-nothing.
fn precheck(
    t: &Tables<'_>,
    req: &pb::TxnRequest,
    plan: &Plan,
    current: i64,
    compacted: i64,
) -> Result<()> {
    let ops = if plan.succeeded {
        &req.success
    } else {
        &req.failure
    };
    for (op, nested) in ops.iter().zip(&plan.nested) {
        match (&op.request, nested) {
            (Some(Request::RequestPut(p)), _) => t.check_put(p)?,
            (Some(Request::RequestRange(r)), _) => {
                check_revision(r.revision, current, compacted)?;
                if pb::range_request::SortOrder::try_from(r.sort_order).is_err()
                    || pb::range_request::SortTarget::try_from(r.sort_target).is_err()
                {
                    return Err(Error::InvalidSortOption);
                }
            }
            (Some(Request::RequestTxn(inner)), Some(p)) => {
                precheck(t, inner, p, current, compacted)?
            }
            _ => {}
        }
    }
    Ok(())
}

struct TxnRun {
    current: i64,
    compacted: i64,
    rev: i64,
    sub: u32,
    events: Vec<mvccpb::Event>,
}

fn exec_txn(
    t: &mut Tables<'_>,
    req: &pb::TxnRequest,
    plan: &Plan,
    run: &mut TxnRun,
) -> Result<pb::TxnResponse> {
    let ops = if plan.succeeded {
        &req.success
    } else {
        &req.failure
    };
    let mut responses = Vec::with_capacity(ops.len());
    for (op, nested) in ops.iter().zip(&plan.nested) {
        let response =
            match (&op.request, nested) {
                (Some(Request::RequestRange(r)), _) => Some(Response::ResponseRange(
                    t.view().range(r, run.current, run.compacted)?,
                )),
                (Some(Request::RequestPut(p)), _) => {
                    let (resp, ev) = t.exec_put(p, run.rev, &mut run.sub)?;
                    run.events.push(ev);
                    Some(Response::ResponsePut(resp))
                }
                (Some(Request::RequestDeleteRange(d)), _) => {
                    let (resp, evs) = t.exec_delete(d, run.rev, &mut run.sub)?;
                    run.events.extend(evs);
                    Some(Response::ResponseDeleteRange(resp))
                }
                (Some(Request::RequestTxn(inner)), Some(p)) => {
                    Some(Response::ResponseTxn(exec_txn(t, inner, p, run)?))
                }
                _ => None,
            };
        responses.push(pb::ResponseOp { response });
    }
    Ok(pb::TxnResponse {
        header: None,
        succeeded: plan.succeeded,
        responses,
    })
}

/// A txn of ranges only (nested read-only txns included), evaluated on any view, so that it
/// can run in a read transaction: the same branch choice, the same responses and headers as
/// [`WriteBatch::txn`] gives it, and no revision bump (it writes nothing).
pub(crate) fn read_only_txn<L, I, H, C>(
    view: &View<'_, L, I, H, C>,
    req: &pb::TxnRequest,
    current: i64,
    compacted: i64,
) -> Result<pb::TxnResponse>
where
    L: ReadableTable<&'static [u8], &'static [u8]>,
    I: crate::view::IndexSource,
    H: ReadableTable<HistoryKey, &'static [u8]>,
    C: crate::view::ChunkSource,
{
    let plan = plan(view, req)?;
    let mut resp = exec_read_only(view, req, &plan, current, compacted)?;
    fill_headers(&mut resp, current);
    Ok(resp)
}

fn exec_read_only<L, I, H, C>(
    view: &View<'_, L, I, H, C>,
    req: &pb::TxnRequest,
    plan: &Plan,
    current: i64,
    compacted: i64,
) -> Result<pb::TxnResponse>
where
    L: ReadableTable<&'static [u8], &'static [u8]>,
    I: crate::view::IndexSource,
    H: ReadableTable<HistoryKey, &'static [u8]>,
    C: crate::view::ChunkSource,
{
    let ops = if plan.succeeded {
        &req.success
    } else {
        &req.failure
    };
    let mut responses = Vec::with_capacity(ops.len());
    for (op, nested) in ops.iter().zip(&plan.nested) {
        let response = match (&op.request, nested) {
            (Some(Request::RequestRange(r)), _) => {
                Some(Response::ResponseRange(view.range(r, current, compacted)?))
            }
            (Some(Request::RequestTxn(inner)), Some(p)) => Some(Response::ResponseTxn(
                exec_read_only(view, inner, p, current, compacted)?,
            )),
            (Some(Request::RequestPut(_) | Request::RequestDeleteRange(_)), _) => {
                return Err(Error::Backend(
                    "a txn with writes cannot run in a read transaction".into(),
                ))
            }
            _ => None,
        };
        responses.push(pb::ResponseOp { response });
    }
    Ok(pb::TxnResponse {
        header: None,
        succeeded: plan.succeeded,
        responses,
    })
}

/// Every response inside a txn carries the txn's revision, except the header of a nested
/// txn: etcd leaves that one empty (revision 0), and clients comparing responses see it.
fn fill_headers(resp: &mut pb::TxnResponse, revision: i64) {
    resp.header = Some(header(revision));
    fill_op_headers(resp, revision);
}

fn fill_op_headers(resp: &mut pb::TxnResponse, revision: i64) {
    for op in &mut resp.responses {
        match &mut op.response {
            Some(Response::ResponseRange(r)) => r.header = Some(header(revision)),
            Some(Response::ResponsePut(r)) => r.header = Some(header(revision)),
            Some(Response::ResponseDeleteRange(r)) => r.header = Some(header(revision)),
            Some(Response::ResponseTxn(r)) => {
                r.header = Some(header(0));
                fill_op_headers(r, revision);
            }
            None => {}
        }
    }
}

pub(crate) fn attached_keys<T: ReadableTable<(i64, &'static [u8]), ()>>(
    t: &T,
    id: i64,
) -> Result<Vec<Vec<u8>>> {
    let lo: (i64, &[u8]) = (id, &[]);
    let mut out = Vec::new();
    for r in t.range((Bound::Included(lo), Bound::Unbounded))? {
        let (k, _) = r?;
        let (lease, key) = k.value();
        if lease != id {
            break;
        }
        out.push(key.to_vec());
    }
    Ok(out)
}

impl<'a> WriteBatch<'a> {
    pub(crate) fn begin(store: &'a Store) -> Result<WriteBatch<'a>> {
        let gate = store.write_gate.read().unwrap_or_else(|e| e.into_inner());
        let db = store.db();
        let txn = db.begin_write()?;
        // Read the revisions inside the transaction: the store's mirrors are published just
        // after the previous commit and could still be stale here.
        let (revision, compacted) = {
            let meta = txn.open_table(META)?;
            (
                crate::meta_i64(&meta, META_REVISION)?.unwrap_or(1),
                crate::meta_i64(&meta, META_COMPACTED)?.unwrap_or(0),
            )
        };
        Ok(WriteBatch {
            store,
            txn,
            _gate: gate,
            _db: db,
            revision,
            compacted,
            applied: None,
            compacted_here: false,
        })
    }

    /// The current revision including this batch's uncommitted ops.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// etcd Put. The response header carries the new revision (cluster/member/term are left
    /// for the server). Returned events always carry prev_kv when there was one; the watch
    /// hub strips it for watchers that did not ask.
    pub fn put(&mut self, req: &pb::PutRequest) -> Result<(pb::PutResponse, Vec<mvccpb::Event>)> {
        let mut t = Tables::open(&self.txn)?;
        t.check_put(req)?;
        let rev = self.revision + 1;
        let (mut resp, ev) = t.exec_put(req, rev, &mut 0)?;
        self.revision = rev;
        resp.header = Some(header(rev));
        Ok((resp, vec![ev]))
    }

    pub fn delete_range(
        &mut self,
        req: &pb::DeleteRangeRequest,
    ) -> Result<(pb::DeleteRangeResponse, Vec<mvccpb::Event>)> {
        let mut t = Tables::open(&self.txn)?;
        let mut sub = 0;
        let (mut resp, events) = t.exec_delete(req, self.revision + 1, &mut sub)?;
        if sub > 0 {
            self.revision += 1;
        }
        resp.header = Some(header(self.revision));
        Ok((resp, events))
    }

    /// etcd Txn, all-or-nothing: branches (nested ones too) are chosen from the state before
    /// the txn, everything that could fail is checked, then the branch runs. All writes share
    /// one revision; ranges inside see earlier writes of the txn. Events carry prev_kv.
    pub fn txn(&mut self, req: &pb::TxnRequest) -> Result<(pb::TxnResponse, Vec<mvccpb::Event>)> {
        let mut t = Tables::open(&self.txn)?;
        let plan = plan(&t.view(), req)?;
        precheck(&t, req, &plan, self.revision, self.compacted)?;
        let mut run = TxnRun {
            current: self.revision,
            compacted: self.compacted,
            rev: self.revision + 1,
            sub: 0,
            events: Vec::new(),
        };
        let mut resp = exec_txn(&mut t, req, &plan, &mut run)?;
        if run.sub > 0 {
            self.revision += 1;
        }
        fill_headers(&mut resp, self.revision);
        Ok((resp, run.events))
    }

    /// Drops every key revision that no read at `revision` or later can see: for each key all
    /// but its newest revision <= `revision`, and that one too when it is a delete.
    pub fn compact(&mut self, revision: i64) -> Result<pb::CompactionResponse> {
        if revision <= self.compacted {
            return Err(Error::Compacted);
        }
        if revision > self.revision {
            return Err(Error::FutureRevision);
        }
        let mut t = Tables::open(&self.txn)?;
        // Only keys written since the previous compaction can have become superseded.
        let from = rev_u64(self.compacted) + 1;
        let to = rev_u64(revision);
        let mut keys: BTreeSet<Vec<u8>> = BTreeSet::new();
        for r in t.history.range((from, 0u32)..=(to, u32::MAX))? {
            let (k, rec) = r?;
            let (m, s) = k.value();
            let (_, key, _) = decode_history(m, s, rec.value())?;
            keys.insert(key.to_vec());
        }
        let mut removed = 0u64;
        for key in &keys {
            let newest = match t.latest.get(key.as_slice())? {
                Some(g) => Some(decode_latest(g.value())?),
                None => None,
            };
            // The key's revisions <= `revision` other than its newest one (which only
            // `latest` names): all superseded.
            let lo: (&[u8], u64, u32) = (key, 0, 0);
            let hi: (&[u8], u64, u32) = (key, to, u32::MAX);
            let mut doomed: Vec<(u64, u32, bool)> = Vec::new();
            for r in t.index.range((Bound::Included(lo), Bound::Included(hi)))? {
                let (k, v) = r?;
                let (_, m, s) = k.value();
                doomed.push((m, s, v.value()));
            }
            match newest.filter(|h| rev_u64(h.mod_revision) <= to) {
                // The newest revision <= `revision` is the key's newest of all: it stays
                // unless it is a delete, every older one goes.
                Some(h) => {
                    if h.tombstone {
                        // The key is gone at every readable revision: forget it.
                        let (m, s) = h.history_key();
                        t.remove_history(m, s)?;
                        t.latest.remove(key.as_slice())?;
                        removed += 1;
                    }
                }
                // It is the last index row: kept unless it is a delete.
                None => {
                    let Some(&(_, _, newest_is_delete)) = doomed.last() else {
                        continue;
                    };
                    if !newest_is_delete {
                        doomed.pop();
                    }
                }
            }
            for (m, s, _) in &doomed {
                t.index.remove((key.as_slice(), *m, *s))?;
                t.remove_history(*m, *s)?;
                removed += 1;
            }
        }
        self.compacted = revision;
        self.compacted_here = true;
        tracing::info!(revision, keys = keys.len(), removed, "compacted keyspace");
        Ok(pb::CompactionResponse {
            header: Some(header(self.revision)),
        })
    }

    /// Records a lease; an id already present is `LeaseExists`. Expiry is the server's job.
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<()> {
        let mut t = self.txn.open_table(LEASES)?;
        if t.get(id)?.is_some() {
            return Err(Error::LeaseExists);
        }
        t.insert(id, (ttl, 0))?;
        Ok(())
    }

    /// Deletes the lease and every key attached to it, all in one revision.
    pub fn lease_revoke(&mut self, id: i64) -> Result<Vec<mvccpb::Event>> {
        let mut t = Tables::open(&self.txn)?;
        if t.leases.get(id)?.is_none() {
            return Err(Error::LeaseNotFound);
        }
        let keys = attached_keys(&t.lease_keys, id)?;
        let rev = self.revision + 1;
        let mut sub = 0;
        let mut events = Vec::with_capacity(keys.len());
        for key in &keys {
            let Some(found) = t.view().live(key)? else {
                return Err(Error::Corrupt(format!(
                    "lease {id} lists a key that does not exist"
                )));
            };
            events.push(t.delete_key(key, &found.header, &found.value, rev, &mut sub)?);
        }
        t.leases.remove(id)?;
        if sub > 0 {
            self.revision = rev;
        }
        Ok(events)
    }

    /// Remembers the remaining TTL so a new leader does not restart the lease from full.
    pub fn lease_checkpoint(&mut self, id: i64, remaining_ttl: i64) -> Result<()> {
        let mut t = self.txn.open_table(LEASES)?;
        let ttl = match t.get(id)? {
            Some(g) => g.value().0,
            None => return Err(Error::LeaseNotFound),
        };
        t.insert(id, (ttl, remaining_ttl))?;
        Ok(())
    }

    /// The raft (index, term) this batch brings the keyspace to; written in the same commit.
    pub fn set_applied_index(&mut self, index: u64, term: u64) -> Result<()> {
        self.applied = Some((index, term));
        Ok(())
    }

    /// A free-form metadata entry (membership etc.), read back with `Store::meta`.
    pub fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
        let mut t = self.txn.open_table(META)?;
        t.insert(user_meta_key(key).as_str(), value)?;
        Ok(())
    }

    /// Commits the batch. `durable == false` skips the fsync (redb `Durability::None`); such
    /// commits become durable with the next durable commit or `Store::sync`.
    pub fn commit(mut self, durable: bool) -> Result<()> {
        {
            let mut meta = self.txn.open_table(META)?;
            meta.insert(META_REVISION, self.revision.to_le_bytes().as_slice())?;
            meta.insert(META_COMPACTED, self.compacted.to_le_bytes().as_slice())?;
            if let Some((index, term)) = self.applied {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&index.to_le_bytes());
                b[8..].copy_from_slice(&term.to_le_bytes());
                meta.insert(META_APPLIED, b.as_slice())?;
            }
        }
        let durability = if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        self.txn.set_durability(durability)?;
        self.txn.commit()?;
        self.store
            .publish(self.revision, self.compacted, self.applied);
        if self.compacted_here {
            // etcd hashes at compaction time too; members compacted at the same revision
            // must hold the same history up to it.
            self.store.record_compaction_hash(self.compacted);
        }
        Ok(())
    }
}
