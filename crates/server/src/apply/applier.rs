//! The apply loop: executes committed raft entries against the MVCC store, one storage write
//! transaction per committed batch, and completes the waiting client requests.
//!
//! Ordering rules kept here:
//! - the applied index (and the conf state / member list when they change) is written in the
//!   SAME storage transaction as the data, so a restart replays exactly the entries after it;
//! - events are published to the watch hub and waiters are completed only AFTER the commit, so
//!   nobody observes a revision that a crash could take back from storage (the WAL has it);
//! - the batch is committed without fsync; `store.sync()` runs periodically and only then is
//!   the index reported durable to raft, which may then drop WAL entries up to it.
//!
//! It runs on its own OS thread: storage calls are synchronous and must not stall the async
//! runtime that serves clients.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrokv_proto::entry::Format;
use ferrokv_proto::etcdserverpb::{
    self as pb, DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, PutResponse,
    TxnResponse,
};
use ferrokv_proto::ferrokvpb::{
    internal_raft_request::Request, ConfChangeContext, InternalRaftRequest, RequestHeader,
};
use ferrokv_proto::mvccpb;
use ferrokv_raftnode::eraftpb::{ConfChangeType, EntryType};
use ferrokv_raftnode::{eraftpb, Committed};
use ferrokv_storage::{Store, WriteBatch};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};

use super::auth::{AuthData, AuthStore, AuthView, AUTH_META_KEY};
use super::entry_gate::{EntryFormat, GateState, ENTRY_FORMAT_META_KEY};
use super::seams::{DurableIndexSink, EventSink, PeerDirectory};
use super::{membership, Alarms, ApplyResult, AuthResult, DbSize, Lessor, Waiters};
use crate::error::{Error, Result};
use crate::metrics::MvccOps;

/// How often the apply loop makes storage durable (and lets raft compact the WAL).
const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// ...or after this many applied entries, whichever comes first.
const SYNC_ENTRIES: u64 = 10_000;

/// Everything the apply loop needs; moved onto its thread.
pub struct Applier {
    pub store: Arc<Store>,
    pub raft: Arc<dyn DurableIndexSink>,
    pub events: Arc<dyn EventSink>,
    pub waiters: Arc<Waiters>,
    pub lessor: Arc<Lessor>,
    pub alarms: Arc<Alarms>,
    pub applied_tx: watch::Sender<u64>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The keyspace file's size, measured at each sync for the quota check.
    pub db_size: DbSize,
    /// Set at shutdown: the loop ends once nothing more is queued, even if raft still holds
    /// the channel (anything not applied is in the WAL and replayed on restart).
    pub stop: watch::Receiver<bool>,
    pub peers: Arc<dyn PeerDirectory>,
    pub member_id: u64,
    /// Asks the member to stop (used when this member is removed from the cluster).
    pub request_stop: Arc<watch::Sender<bool>>,
    /// The auth store: Auth* entries change it, installed only after the batch commits.
    pub auth: Arc<AuthStore>,
    /// The entry format gate's switch, shared with the proposers (`entry_gate`).
    pub entry_format: EntryFormat,
}

/// The auth side of one batch: a working copy of the auth state (taken at the first auth
/// entry, written into the batch's transaction) and the tokens to register after commit.
#[derive(Default)]
struct AuthBatch {
    data: Option<AuthData>,
    changed: bool,
    tokens: Vec<(String, String)>,
}

/// A keyspace snapshot received from the leader, to be installed by the apply loop (the
/// keyspace's only writer) before raft sees the snapshot message. Answered with the applied
/// index the keyspace has afterwards.
pub struct InstallRequest {
    pub path: std::path::PathBuf,
    pub done: oneshot::Sender<Result<u64>>,
}

/// A proposer's answer, delivered once the batch is committed.
type Reply = Box<dyn FnOnce(&Waiters) + Send>;

/// The reply to request `id`, typed by what applying it yielded; storage failures that mean
/// the keyspace cannot be trusted end the loop instead (fail-stop).
fn reply<R: Send + 'static, E: Into<Error>>(
    id: u64,
    result: std::result::Result<R, E>,
) -> Result<Reply> {
    let result: ApplyResult<R> = result.map_err(Into::into);
    match result {
        Err(
            e @ Error::Storage(
                ferrokv_storage::Error::Backend(_) | ferrokv_storage::Error::Corrupt(_),
            ),
        ) => {
            tracing::error!(error = %e, "storage failed while applying; stopping the member");
            Err(e)
        }
        result => Ok(Box::new(move |w: &Waiters| w.complete(id, result))),
    }
}

/// Things to do once the batch is committed: telling the lessor about grants/revokes earlier
/// would let it act on a lease the store does not have yet.
enum AfterCommit {
    Granted(i64, i64),
    Revoked(i64),
    PeerAdded(u64, Vec<String>),
    PeerRemoved(u64),
}

impl Applier {
    /// Runs until raft closes the channel (shutdown). `Err` = fail-stop.
    pub fn run(
        self,
        mut rx: mpsc::Receiver<Committed>,
        mut installs: mpsc::Receiver<InstallRequest>,
    ) -> Result<()> {
        // A private single-threaded runtime only for the receive timeout: the loop must not
        // depend on the serving runtime, which may be shutting down while we drain.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| Error::Fatal(format!("apply loop runtime: {e}")))?;
        // The live-key gauge starts from a count of the keyspace, taken here because this
        // thread is the only writer (so no batch lands between the count and the deltas the
        // batches add) and so a large keyspace does not delay the member's start.
        self.metrics.set_keys(count_live_keys(&self.store));
        let mut durable = self.store.applied_index().0;
        let mut last_sync = Instant::now();
        self.raft.report_durable_applied(durable);
        loop {
            let next = rt.block_on(async {
                tokio::select! {
                    Some(req) = installs.recv() => Err(req),
                    b = tokio::time::timeout(SYNC_INTERVAL, rx.recv()) => Ok(b),
                }
            });
            let next = match next {
                Ok(next) => next,
                Err(req) => {
                    let result = self.install(&req.path);
                    match &result {
                        Ok(index) => {
                            // The install was one durable commit.
                            durable = durable.max(*index);
                            self.raft.report_durable_applied(durable);
                        }
                        // A failed write to our own keyspace is fail-stop, like any other;
                        // a bad file from the leader only fails this transfer.
                        Err(e) if e.is_fatal() => {
                            tracing::error!(error = %e, "installing a keyspace snapshot failed");
                            let fatal = Error::Fatal(format!("snapshot install: {e}"));
                            let _ = req.done.send(result);
                            return Err(fatal);
                        }
                        Err(e) => tracing::warn!(error = %e, "rejected a keyspace snapshot"),
                    }
                    let _ = req.done.send(result);
                    continue;
                }
            };
            match next {
                Ok(Some(batch)) => self.apply_batch(batch)?,
                Ok(None) => break,
                Err(_) => {
                    if *self.stop.borrow() {
                        while let Ok(batch) = rx.try_recv() {
                            self.apply_batch(batch)?;
                        }
                        break;
                    }
                }
            }
            let applied = *self.applied_tx.borrow();
            if applied > durable
                && (last_sync.elapsed() >= SYNC_INTERVAL || applied - durable >= SYNC_ENTRIES)
            {
                self.sync(applied)?;
                durable = applied;
                last_sync = Instant::now();
            }
        }
        let applied = *self.applied_tx.borrow();
        if applied > durable {
            self.sync(applied)?;
        }
        tracing::info!(applied, "apply loop stopped");
        Ok(())
    }

    fn sync(&self, applied: u64) -> Result<()> {
        self.store.sync().map_err(|e| {
            tracing::error!(error = %e, "storage fsync failed; stopping the member");
            Error::Fatal(format!("storage sync: {e}"))
        })?;
        self.raft.report_durable_applied(applied);
        self.db_size.measure(&self.store);
        Ok(())
    }

    /// Replaces the keyspace with a snapshot file from the leader and brings everything
    /// derived from it (applied index, leases, peers, watchers) along. A failed install
    /// leaves the old keyspace in place (one write transaction) and is reported, not fatal:
    /// the leader sends another snapshot.
    fn install(&self, path: &std::path::Path) -> Result<u64> {
        let (index, _) = self.store.restore_from(path)?;
        let revision = self.store.current_revision();
        let leases: Vec<(i64, i64)> = self.store.leases()?.iter().map(|l| (l.id, l.ttl)).collect();
        self.auth.replace(AuthData::load(&self.store)?);
        self.entry_format.set(
            GateState::load(&self.store)
                .map_err(Error::Storage)?
                .switched,
        );
        self.lessor.replace_all(&leases);
        for m in membership::load(&self.store)? {
            if m.id != self.member_id {
                self.peers.add_peer(m.id, m.peer_ur_ls.clone());
            }
        }
        self.applied_tx.send_replace(index);
        self.metrics.set_applied(index);
        self.metrics.set_keys(count_live_keys(&self.store));
        self.db_size.measure(&self.store);
        self.events.resync_all(revision);
        tracing::info!(
            applied_index = index,
            revision,
            leases = leases.len(),
            "installed a keyspace snapshot from the leader"
        );
        Ok(index)
    }

    /// Applies one committed batch in one storage transaction.
    pub fn apply_batch(&self, mut committed: Committed) -> Result<()> {
        // After a keyspace snapshot from the leader, the entries the snapshot already holds
        // come by again: applying them twice would apply them twice.
        let applied = self.store.applied_index().0;
        committed.entries.retain(|e| e.index > applied);
        let Some(last) = committed.entries.last() else {
            return Ok(());
        };
        let (last_index, last_term) = (last.index, last.term);
        let started = Instant::now();
        let span =
            tracing::debug_span!("apply_batch", entries = committed.entries.len(), last_index);
        let _enter = span.enter();

        let mut batch = self.store.write_batch().map_err(fatal)?;
        let mut events: Vec<mvccpb::Event> = Vec::new();
        let mut replies: Vec<Reply> = Vec::new();
        let mut after: Vec<AfterCommit> = Vec::new();
        let mut members: Option<Vec<pb::Member>> = None;
        let mut auth = AuthBatch::default();
        // The gate's working copy, taken at the first entry that may change it while the
        // cluster has not switched (once switched, nothing changes it again).
        let mut gate: Option<GateState> = None;
        let mut gate_changed = false;

        for entry in &committed.entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    // The leader appends an empty entry when elected: nothing to execute.
                    if entry.data.is_empty() {
                        continue;
                    }
                    let decoded =
                        ferrokv_proto::entry::decode(entry.data.as_ref()).map_err(|e| {
                            tracing::error!(index = entry.index, error = %e, "undecodable raft entry");
                            Error::Fatal(format!("entry {} does not decode: {e}", entry.index))
                        })?;
                    // The switch: proposed by a member that saw every member announce.
                    if let Some(Request::ClusterVersionSet(_)) = &decoded.0.request {
                        if let Some(g) = self.gate_open(&mut gate)? {
                            gate_changed |= g.switch();
                        }
                    }
                    // Only a member of this version writes etcd's format before the switch,
                    // and a member publishes only its own attributes: its announcement.
                    if let (Some(Request::ClusterMemberAttrSet(a)), Format::Etcd) =
                        (&decoded.0.request, decoded.1)
                    {
                        if let Some(g) = self.gate_open(&mut gate)? {
                            gate_changed |= g.announce(a.member_id);
                        }
                    }
                    replies.push(self.apply_request(
                        &mut batch,
                        decoded,
                        &mut events,
                        &mut after,
                        &mut members,
                        &mut auth,
                    )?);
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(entry, &mut members, &mut after)?;
                }
            }
        }

        batch
            .set_applied_index(last_index, last_term)
            .map_err(fatal)?;
        if let Some(cs) = &committed.conf_state {
            batch
                .set_meta(
                    membership::CONF_STATE_KEY,
                    &membership::encode_conf_state(cs)?,
                )
                .map_err(fatal)?;
        }
        if let Some(m) = &members {
            batch
                .set_meta(membership::MEMBERS_KEY, &membership::encode_members(m))
                .map_err(fatal)?;
        }
        if let (Some(data), true) = (&auth.data, auth.changed) {
            batch
                .set_meta(AUTH_META_KEY, &data.encode())
                .map_err(fatal)?;
        }
        if let (Some(g), true) = (&gate, gate_changed) {
            batch
                .set_meta(ENTRY_FORMAT_META_KEY, &g.encode())
                .map_err(fatal)?;
        }
        let committing = Instant::now();
        batch.commit(false).map_err(fatal)?;
        self.metrics
            .backend_committed(committing.elapsed(), started.elapsed());
        self.metrics.keys_changed(live_keys_delta(&events));
        if let (Some(data), true) = (auth.data, auth.changed) {
            self.auth.replace(data);
        }
        for (token, user) in auth.tokens {
            self.auth.assign_token(token, user);
        }
        if let Some(g) = gate.filter(|g| g.switched) {
            tracing::info!(
                index = last_index,
                "every member reads etcd's entry format: entries are written in it from now on"
            );
            self.entry_format.set(g.switched);
        }

        let revision = self.store.current_revision();
        for a in after {
            match a {
                AfterCommit::Granted(id, ttl) => {
                    self.metrics.lease_granted();
                    self.lessor.granted(id, ttl)
                }
                AfterCommit::Revoked(id) => {
                    self.metrics.lease_revoked();
                    self.lessor.revoked(id)
                }
                AfterCommit::PeerAdded(id, urls) if id != self.member_id => {
                    self.peers.add_peer(id, urls)
                }
                AfterCommit::PeerRemoved(id) if id == self.member_id => {
                    tracing::warn!("this member was removed from the cluster; stopping");
                    self.request_stop.send_replace(true);
                }
                AfterCommit::PeerRemoved(id) => self.peers.remove_peer(id),
                AfterCommit::PeerAdded(..) => {}
            }
        }
        self.events.publish(events, revision);
        for reply in replies {
            reply(&self.waiters);
        }
        self.metrics.set_applied(last_index);
        self.applied_tx.send_replace(last_index);
        crate::metrics::stages::APPLY_BATCH.observe(started.elapsed());
        Ok(())
    }

    /// Executes one request in the batch (with the format it was decoded from); returns the
    /// reply for its proposer (if it is waiting on this member).
    fn apply_request(
        &self,
        batch: &mut WriteBatch<'_>,
        (req, format): (InternalRaftRequest, Format),
        events: &mut Vec<mvccpb::Event>,
        after: &mut Vec<AfterCommit>,
        members: &mut Option<Vec<pb::Member>>,
        auth: &mut AuthBatch,
    ) -> Result<Reply> {
        let header = req.header.unwrap_or_default();
        let id = header.id;
        let Some(request) = req.request else {
            return reply(id, Ok::<(), Error>(()));
        };
        // Entries of ferrokv's earlier format carry no user: they were checked when proposed.
        if format == Format::Etcd {
            if let Some(e) = self.denied(auth, &header, &request) {
                return denial(id, &request, e);
            }
        }
        match request {
            Request::Put(r) => reply(
                id,
                batch.put(&r).map(|(resp, ev)| {
                    events.extend(ev);
                    self.metrics.mvcc(MvccOps::put(&r));
                    resp
                }),
            ),
            Request::DeleteRange(r) => reply(
                id,
                batch.delete_range(&r).map(|(resp, ev)| {
                    events.extend(ev);
                    self.metrics.mvcc(MvccOps::delete(&r));
                    resp
                }),
            ),
            Request::Txn(r) => reply(
                id,
                batch.txn(&r).map(|(resp, ev)| {
                    events.extend(ev);
                    // The compares run in a read transaction of their own, as in etcd.
                    self.metrics.mvcc(MvccOps::compares(&r));
                    self.metrics.mvcc(MvccOps::branch(&r, &resp));
                    resp
                }),
            ),
            Request::Compaction(r) => reply(id, batch.compact(r.revision)),
            Request::LeaseGrant(r) => reply(
                id,
                batch.lease_grant(r.id, r.ttl).map(|()| {
                    after.push(AfterCommit::Granted(r.id, r.ttl));
                    LeaseGrantResponse {
                        header: None,
                        id: r.id,
                        ttl: r.ttl,
                        error: String::new(),
                    }
                }),
            ),
            Request::LeaseRevoke(r) => reply(
                id,
                batch.lease_revoke(r.id).map(|ev| {
                    self.metrics.mvcc(MvccOps::deletes(ev.len() as u64));
                    events.extend(ev);
                    after.push(AfterCommit::Revoked(r.id));
                    LeaseRevokeResponse { header: None }
                }),
            ),
            Request::LeaseCheckpoint(r) => reply(
                id,
                r.checkpoints
                    .iter()
                    .try_for_each(|cp| batch.lease_checkpoint(cp.id, cp.remaining_ttl)),
            ),
            Request::Alarm(r) => reply(id, Ok::<_, Error>(self.alarms.apply(&r))),
            Request::ClusterMemberAttrSet(attr) => {
                let list = match members.take() {
                    Some(l) => l,
                    None => membership::load(&self.store).map_err(Error::Storage)?,
                };
                *members = Some(membership::with_attributes(list, &attr));
                reply(id, Ok::<(), Error>(()))
            }
            // etcd's entries that change nothing ferrokv keeps (its linearizable auth reads,
            // the cluster version, downgrades): found only in an etcd data dir's log.
            Request::Range(_)
            | Request::AuthStatus(_)
            | Request::AuthUserGet(_)
            | Request::AuthUserList(_)
            | Request::AuthRoleList(_)
            | Request::AuthRoleGet(_)
            | Request::ClusterVersionSet(_)
            | Request::DowngradeInfoSet(_) => reply(id, Ok::<(), Error>(())),
            Request::AuthEnable(_) => self.auth_op(id, auth, |d| {
                d.enable().map(|()| pb::AuthEnableResponse::default())
            }),
            Request::AuthDisable(_) => self.auth_op(id, auth, |d| {
                d.disable();
                Ok(pb::AuthDisableResponse::default())
            }),
            Request::Authenticate(r) => {
                let data = self.auth_data(auth);
                let out: AuthResult<pb::AuthenticateResponse> = if !data.enabled {
                    Err(Error::AuthNotEnabled)
                } else if !data.users.contains_key(&r.name) {
                    // Deleted between the password check and this entry.
                    Err(Error::AuthFailed)
                } else {
                    auth.tokens.push((r.simple_token.clone(), r.name));
                    Ok(pb::AuthenticateResponse {
                        header: None,
                        token: r.simple_token,
                    })
                };
                reply(id, Ok::<_, Error>(out))
            }
            Request::AuthUserAdd(r) => self.auth_op(id, auth, |d| {
                d.user_add(&r).map(|()| pb::AuthUserAddResponse::default())
            }),
            Request::AuthUserDelete(r) => self.auth_op(id, auth, |d| {
                d.user_delete(&r.name)
                    .map(|()| pb::AuthUserDeleteResponse::default())
            }),
            Request::AuthUserChangePassword(r) => self.auth_op(id, auth, |d| {
                d.user_change_password(&r.name, &r.hashed_password)
                    .map(|()| pb::AuthUserChangePasswordResponse::default())
            }),
            Request::AuthUserGrantRole(r) => self.auth_op(id, auth, |d| {
                d.user_grant_role(&r.user, &r.role)
                    .map(|()| pb::AuthUserGrantRoleResponse::default())
            }),
            Request::AuthUserRevokeRole(r) => self.auth_op(id, auth, |d| {
                d.user_revoke_role(&r.name, &r.role)
                    .map(|()| pb::AuthUserRevokeRoleResponse::default())
            }),
            Request::AuthRoleAdd(r) => self.auth_op(id, auth, |d| {
                d.role_add(&r.name)
                    .map(|()| pb::AuthRoleAddResponse::default())
            }),
            Request::AuthRoleDelete(r) => self.auth_op(id, auth, |d| {
                d.role_delete(&r.role)
                    .map(|()| pb::AuthRoleDeleteResponse::default())
            }),
            Request::AuthRoleGrantPermission(r) => self.auth_op(id, auth, |d| {
                d.role_grant_permission(&r.name, r.perm.as_ref())
                    .map(|()| pb::AuthRoleGrantPermissionResponse::default())
            }),
            Request::AuthRoleRevokePermission(r) => self.auth_op(id, auth, |d| {
                d.role_revoke_permission(&r.role, &r.key, &r.range_end)
                    .map(|()| pb::AuthRoleRevokePermissionResponse::default())
            }),
        }
    }

    /// The batch's working copy of the gate state, or `None` once the cluster has switched
    /// (as committed, or earlier in this batch).
    fn gate_open<'g>(&self, gate: &'g mut Option<GateState>) -> Result<Option<&'g mut GateState>> {
        if gate.is_none() {
            if self.entry_format.is_etcd() {
                return Ok(None);
            }
            *gate = Some(GateState::load(&self.store).map_err(Error::Storage)?);
        }
        Ok(gate.as_mut().filter(|g| !g.switched))
    }

    /// The batch's working copy of the auth state (the installed one until an auth entry).
    fn auth_data<'b>(&self, auth: &'b mut AuthBatch) -> &'b mut AuthData {
        auth.data.get_or_insert_with(|| (*self.auth.data()).clone())
    }

    /// Applies one auth store change to the batch's working copy. Every change validates
    /// before it modifies, so a refused request leaves the copy as it was.
    fn auth_op<R: Send + 'static>(
        &self,
        id: u64,
        auth: &mut AuthBatch,
        f: impl FnOnce(&mut AuthData) -> AuthResult<R>,
    ) -> Result<Reply> {
        let out = f(self.auth_data(auth));
        if out.is_ok() {
            auth.changed = true;
        }
        reply(id, Ok::<_, Error>(out))
    }

    /// etcd's auth applier: with auth enabled (as of this point of the batch), the request is
    /// checked again as the user in its header. Admin requests need the root role; writes
    /// need the permissions, checked at an auth revision no older than the store's (so a
    /// revoke that committed after the serving member's check wins); a lease revoke (and a put
    /// onto a lease) needs write permission on every key of the lease.
    fn denied(&self, auth: &AuthBatch, header: &RequestHeader, req: &Request) -> Option<Error> {
        let enabled = match &auth.data {
            Some(d) => d.enabled,
            None => self.auth.is_enabled(),
        };
        if !enabled {
            return None;
        }
        let installed;
        let data = match &auth.data {
            Some(d) => d,
            None => {
                installed = self.auth.data();
                &*installed
            }
        };
        let view = AuthView {
            data,
            user: &header.username,
        };
        // etcd's `isOpPermitted`: no revision means no user; an older one, a stale check.
        let fresh = || {
            if header.auth_revision == 0 {
                Err(Error::UserEmpty)
            } else if header.auth_revision < data.revision {
                Err(Error::AuthOldRevision)
            } else {
                Ok(())
            }
        };
        let lease_keys = |lease: i64| -> crate::error::Result<()> {
            if lease == 0 || view.is_admin() {
                return Ok(());
            }
            let keys = self.store.lease_keys(lease).unwrap_or_default();
            keys.iter().try_for_each(|k| {
                fresh()?;
                view.write(k, &[])
            })
        };
        let checked = match req {
            Request::Put(r) => fresh()
                .and_then(|()| view.put(r))
                .and_then(|()| lease_keys(r.lease)),
            Request::DeleteRange(r) => fresh().and_then(|()| view.delete(r)),
            Request::Txn(r) => fresh().and_then(|()| view.txn(r)),
            Request::LeaseRevoke(r) => lease_keys(r.id),
            Request::AuthEnable(_)
            | Request::AuthDisable(_)
            | Request::AuthStatus(_)
            | Request::AuthUserAdd(_)
            | Request::AuthUserDelete(_)
            | Request::AuthUserChangePassword(_)
            | Request::AuthUserGrantRole(_)
            | Request::AuthUserRevokeRole(_)
            | Request::AuthUserList(_)
            | Request::AuthRoleAdd(_)
            | Request::AuthRoleDelete(_)
            | Request::AuthRoleGrantPermission(_)
            | Request::AuthRoleRevokePermission(_)
            | Request::AuthRoleList(_) => view.admin(),
            _ => Ok(()),
        };
        checked.err()
    }

    /// Raft has already changed its configuration; here the member list follows it.
    fn apply_conf_change(
        &self,
        entry: &eraftpb::Entry,
        members: &mut Option<Vec<pb::Member>>,
        after: &mut Vec<AfterCommit>,
    ) -> Result<()> {
        let changes: Vec<(ConfChangeType, u64, Vec<u8>)> = match entry.get_entry_type() {
            EntryType::EntryConfChange => {
                let cc: eraftpb::ConfChange =
                    protobuf::Message::parse_from_bytes(entry.data.as_ref()).map_err(|e| {
                        Error::Fatal(format!("conf change {} does not decode: {e}", entry.index))
                    })?;
                vec![(cc.get_change_type(), cc.node_id, cc.context.to_vec())]
            }
            _ => {
                let cc: eraftpb::ConfChangeV2 =
                    protobuf::Message::parse_from_bytes(entry.data.as_ref()).map_err(|e| {
                        Error::Fatal(format!("conf change {} does not decode: {e}", entry.index))
                    })?;
                cc.changes
                    .iter()
                    .map(|c| (c.get_change_type(), c.node_id, cc.context.to_vec()))
                    .collect()
            }
        };
        let mut list = match members.take() {
            Some(l) => l,
            None => membership::load(&self.store).map_err(Error::Storage)?,
        };
        for (kind, node_id, context) in changes {
            let ctx_member = ConfChangeContext::decode(context.as_slice())
                .ok()
                .and_then(|c| c.member);
            list = membership::with_conf_change(list, kind, node_id, ctx_member);
            match kind {
                ConfChangeType::RemoveNode => after.push(AfterCommit::PeerRemoved(node_id)),
                _ => {
                    let urls = list
                        .iter()
                        .find(|m| m.id == node_id)
                        .map(|m| m.peer_ur_ls.clone())
                        .unwrap_or_default();
                    after.push(AfterCommit::PeerAdded(node_id, urls));
                }
            }
        }
        *members = Some(list);
        Ok(())
    }
}

/// How the events of one batch change the number of live keys: a put at version 1 creates a
/// key, a delete removes one.
fn live_keys_delta(events: &[mvccpb::Event]) -> i64 {
    events
        .iter()
        .map(|e| match mvccpb::event::EventType::try_from(e.r#type) {
            Ok(mvccpb::event::EventType::Delete) => -1,
            _ if e.kv.as_ref().is_some_and(|kv| kv.version == 1) => 1,
            _ => 0,
        })
        .sum()
}

/// The live keys of the whole keyspace (`etcd_debugging_mvcc_keys_total` after a start or a
/// snapshot install; the apply loop keeps it current from the events afterwards). A failed
/// count leaves the gauge at 0 rather than failing the member over a metric.
fn count_live_keys(store: &ferrokv_storage::Store) -> i64 {
    let all = pb::RangeRequest {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..Default::default()
    };
    store.range(&all).map_or(0, |r| r.count)
}

/// The reply to a request the auth applier refused, typed as its proposer's waiter expects.
fn denial(id: u64, req: &Request, e: Error) -> Result<Reply> {
    match req {
        Request::Put(_) => reply::<PutResponse, _>(id, Err(e)),
        Request::DeleteRange(_) => reply::<DeleteRangeResponse, _>(id, Err(e)),
        Request::Txn(_) => reply::<TxnResponse, _>(id, Err(e)),
        Request::LeaseRevoke(_) => reply::<LeaseRevokeResponse, _>(id, Err(e)),
        Request::AuthEnable(_) => refused::<pb::AuthEnableResponse>(id, e),
        Request::AuthDisable(_) => refused::<pb::AuthDisableResponse>(id, e),
        Request::AuthUserAdd(_) => refused::<pb::AuthUserAddResponse>(id, e),
        Request::AuthUserDelete(_) => refused::<pb::AuthUserDeleteResponse>(id, e),
        Request::AuthUserChangePassword(_) => refused::<pb::AuthUserChangePasswordResponse>(id, e),
        Request::AuthUserGrantRole(_) => refused::<pb::AuthUserGrantRoleResponse>(id, e),
        Request::AuthUserRevokeRole(_) => refused::<pb::AuthUserRevokeRoleResponse>(id, e),
        Request::AuthRoleAdd(_) => refused::<pb::AuthRoleAddResponse>(id, e),
        Request::AuthRoleDelete(_) => refused::<pb::AuthRoleDeleteResponse>(id, e),
        Request::AuthRoleGrantPermission(_) => {
            refused::<pb::AuthRoleGrantPermissionResponse>(id, e)
        }
        Request::AuthRoleRevokePermission(_) => {
            refused::<pb::AuthRoleRevokePermissionResponse>(id, e)
        }
        // Never refused (see `denied`), or never waited on by a ferrokv proposer.
        _ => reply(id, Err::<(), _>(e)),
    }
}

/// An auth request's refusal travels inside its `AuthResult`, like the auth store's own.
fn refused<R: Send + 'static>(id: u64, e: Error) -> Result<Reply> {
    reply(id, Ok::<AuthResult<R>, Error>(Err(e)))
}

fn fatal(e: ferrokv_storage::Error) -> Error {
    tracing::error!(error = %e, "storage write failed; stopping the member");
    Error::Fatal(format!("storage: {e}"))
}
