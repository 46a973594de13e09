//! The server core every gRPC service calls: the store, the raft handle and the waiters
//! behind private fields, and the two paths every write and linearizable read take
//! (typed propose-and-wait, read barrier).

use std::sync::Arc;
use std::time::Duration;

use ferrokv_proto::etcdserverpb::{AlarmMember, ResponseHeader};
use ferrokv_proto::ferrokvpb::{ClusterMemberAttrSetRequest, InternalRaftRequest, RequestHeader};
use ferrokv_raftnode::{RaftHandle, RaftStatus};
use ferrokv_storage::Store;
use prost::Message as _;
use tokio::sync::watch;

use crate::apply::{
    Alarms, AuthData, AuthInfo, AuthStore, DbSize, EntryFormat, Lessor, Proposal, Waiters,
};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::header::HeaderSource;
use crate::ids::IdGenerator;
use crate::metrics::{Gauges, Metrics};
use crate::peer::{connect_peer, peer_client_tls};

/// Pause before retrying a proposal or read round that raft dropped.
const RETRY_DELAY: Duration = Duration::from_millis(20);
/// How often a member checks whether it is time to propose the entry format switch (only
/// until the cluster has switched).
const SWITCH_POLL: Duration = Duration::from_millis(500);

/// What the server core is built from (the node creates these during bootstrap).
pub struct ServerParts {
    pub cfg: Config,
    pub store: Arc<Store>,
    pub raft: RaftHandle,
    pub header: HeaderSource,
    /// The applied index, published by the apply loop after each batch.
    pub applied: watch::Receiver<u64>,
    pub metrics: Arc<Metrics>,
    pub db_size: DbSize,
}

/// The server core (etcd's `EtcdServer`). Its state is private: services call its methods.
pub struct EtcdServer {
    pub(super) cfg: Config,
    pub(super) store: Arc<Store>,
    pub(super) raft: RaftHandle,
    pub(super) header: HeaderSource,
    pub(super) waiters: Arc<Waiters>,
    pub(super) applied: watch::Receiver<u64>,
    pub(super) ids: IdGenerator,
    pub(super) lessor: Arc<Lessor>,
    pub(super) alarms: Arc<Alarms>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) db_size: DbSize,
    /// Users, roles and tokens; shared with the apply loop, which changes it.
    pub(super) auth: Arc<AuthStore>,
    /// `--auth-token=jwt`: signs and verifies tokens instead of the simple-token table.
    pub(super) jwt: Option<super::jwt::Jwt>,
    /// How long a client request may wait for raft (etcd: 5 s + 2 × election timeout).
    pub(super) request_timeout: Duration,
    /// TLS for member-to-member connections (https peer URLs).
    pub(super) peer_client_tls: Option<crate::peer::PeerClientTls>,
    /// A connection to the leader's peer port, for requests only the leader can answer.
    leader_conn: parking_lot::Mutex<Option<(u64, tonic::transport::Channel)>>,
    /// Whether the cluster writes etcd's entry format yet (`apply::entry_gate`); the apply
    /// loop sets it.
    pub(super) entry_format: EntryFormat,
}

impl EtcdServer {
    pub fn new(p: ServerParts) -> Result<EtcdServer> {
        let member_id = p.header.member_id();
        let auth = Arc::new(AuthStore::new(
            AuthData::load(&p.store)?,
            p.cfg.auth_token_ttl,
        ));
        let jwt = match &p.cfg.auth_token {
            crate::config::AuthToken::Jwt(o) => Some(super::jwt::Jwt::new(o)?),
            crate::config::AuthToken::Simple => None,
        };
        let entry_format = EntryFormat::load(&p.store)?;
        Ok(EtcdServer {
            auth,
            entry_format,
            jwt,
            request_timeout: Duration::from_secs(5) + 2 * p.cfg.election_timeout,
            peer_client_tls: peer_client_tls(&p.cfg.peer_tls)?,
            leader_conn: parking_lot::Mutex::new(None),
            cfg: p.cfg,
            store: p.store,
            raft: p.raft,
            header: p.header,
            waiters: Arc::new(Waiters::default()),
            applied: p.applied,
            ids: IdGenerator::new(member_id),
            lessor: Arc::new(Lessor::default()),
            alarms: Arc::new(Alarms::default()),
            metrics: p.metrics,
            db_size: p.db_size,
        })
    }

    /// The state the apply loop shares with the server: it completes the waiters and keeps
    /// the lessor and the alarms current.
    pub fn shared_with_apply(&self) -> (Arc<Waiters>, Arc<Lessor>, Arc<Alarms>) {
        (
            self.waiters.clone(),
            self.lessor.clone(),
            self.alarms.clone(),
        )
    }

    /// The entry format switch the apply loop keeps current.
    pub fn entry_format(&self) -> EntryFormat {
        self.entry_format.clone()
    }

    /// The auth store the apply loop keeps current.
    pub fn auth_store(&self) -> Arc<AuthStore> {
        self.auth.clone()
    }

    pub fn raft_status(&self) -> RaftStatus {
        self.raft.status().borrow().clone()
    }

    pub fn member_id(&self) -> u64 {
        self.header.member_id()
    }

    pub fn cluster_id(&self) -> u64 {
        self.header.cluster_id()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn alarm_list(&self) -> Vec<AlarmMember> {
        self.alarms.list()
    }

    /// The point-in-time values `/metrics` renders.
    pub fn gauges(&self) -> Gauges {
        let st = self.raft_status();
        let has_leader = st.leader_id != 0;
        let (db_size, db_size_in_use) = self.store.db_size().unwrap_or((0, 0));
        Gauges {
            member_id: self.member_id(),
            has_leader,
            is_leader: has_leader && st.leader_id == st.id,
            is_learner: st.is_learner,
            leader_changes: st.leader_changes,
            term: st.term,
            commit_index: st.commit_index,
            quota_backend_bytes: self.quota_bytes(),
            db_size,
            db_size_in_use,
            revision: self.store.current_revision(),
            compact_revision: self.store.compacted_revision(),
            version: super::ETCD_VERSION,
        }
    }

    /// A learner serves only serializable reads, Status and MemberList to clients (etcd's
    /// rule); its own proposals (member attributes) are not client requests.
    pub fn reject_learner(&self) -> Result<()> {
        if self.raft_status().is_learner {
            return Err(Error::LearnerRpc);
        }
        Ok(())
    }

    /// A header at the store's current revision.
    pub fn header_now(&self) -> ResponseHeader {
        self.header.header(self.store.current_revision())
    }

    /// A channel to the current leader's peer port (cached per leader).
    pub(super) async fn leader_channel(&self) -> Result<tonic::transport::Channel> {
        let leader = self.raft_status().leader_id;
        if leader == 0 {
            return Err(Error::NoLeader);
        }
        if let Some((id, ch)) = self.leader_conn.lock().as_ref() {
            if *id == leader {
                return Ok(ch.clone());
            }
        }
        let members = crate::apply::membership::load(&self.store)?;
        let urls = members
            .iter()
            .find(|m| m.id == leader)
            .map(|m| m.peer_ur_ls.clone())
            .unwrap_or_default();
        for url in &urls {
            if let Ok(ch) = connect_peer(url, self.peer_client_tls.as_ref()).await {
                *self.leader_conn.lock() = Some((leader, ch.clone()));
                return Ok(ch);
            }
        }
        Err(Error::LeaderChanged)
    }

    /// Waits (bounded by the request timeout) until some member is leader: right after start,
    /// or during an election, proposals would otherwise be dropped.
    pub(super) async fn wait_leader(&self) -> Result<()> {
        let mut rx = self.raft.status();
        let wait = async { rx.wait_for(|s| s.leader_id != 0).await.map(|_| ()) };
        let outcome = tokio::time::timeout(self.request_timeout, wait).await;
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::NoLeader),
        }
    }

    /// Replicates `proposal` through raft and waits for the response applying it yielded. A
    /// proposal of the member itself (no user).
    pub(super) async fn propose<P: Proposal>(&self, proposal: P) -> Result<P::Response> {
        self.propose_as(proposal, &AuthInfo::default()).await
    }

    /// Replicates `proposal` as sent by `who`: the entry's header names the user and the auth
    /// revision its permissions were checked at, and the apply loop checks them again (etcd's
    /// auth applier), so a permission revoked in between is not bypassed.
    pub(super) async fn propose_as<P: Proposal>(
        &self,
        proposal: P,
        who: &AuthInfo,
    ) -> Result<P::Response> {
        self.propose_encoded(proposal, who, self.entry_format.is_etcd())
            .await
    }

    /// Proposes in etcd's format (`etcd`) or in the encoding of the previous version, which
    /// the cluster keeps until every member reads etcd's (`apply::entry_gate`).
    async fn propose_encoded<P: Proposal>(
        &self,
        proposal: P,
        who: &AuthInfo,
        etcd: bool,
    ) -> Result<P::Response> {
        let started = std::time::Instant::now();
        let id = self.ids.next();
        let req = InternalRaftRequest {
            header: Some(RequestHeader {
                id,
                username: who.username.clone(),
                auth_revision: who.revision,
            }),
            request: Some(proposal.into_request()),
        };
        // Requests the old encoding has no field for are never proposed by ferrokv; should
        // one be, etcd's format is the only one that can carry it.
        let legacy = (!etcd)
            .then(|| ferrokv_proto::entry::encode_legacy(&req))
            .flatten();
        let data = legacy.unwrap_or_else(|| req.encode_to_vec());
        if data.len() > self.cfg.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        self.wait_leader().await?;
        let leader_at_start = self.raft_status().leader_id;
        let rx = self.waiters.register::<P>(id);
        // Removes the waiter however this future ends (error, timeout, client gone).
        let _guard = WaiterGuard {
            waiters: &self.waiters,
            id,
        };
        self.metrics.proposal_started();
        let mut pending = PendingProposal {
            metrics: &self.metrics,
            failed: false,
        };
        let outcome = tokio::time::timeout(self.request_timeout, async {
            // A dropped proposal was not appended anywhere, so proposing again cannot apply
            // it twice; drops happen around elections and leader transfers.
            loop {
                match self.raft.propose(data.clone()).await {
                    Ok(()) => break,
                    Err(ferrokv_raftnode::Error::ProposalDropped) => {
                        tokio::time::sleep(RETRY_DELAY).await;
                        self.wait_leader().await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            rx.await.map_err(|_| Error::Stopped)
        })
        .await;
        match outcome {
            // Applied: a storage or auth error is the request's answer, not a failed proposal.
            Ok(Ok(result)) => {
                crate::metrics::stages::PROPOSE.observe(started.elapsed());
                result
            }
            Ok(Err(e)) => {
                pending.failed = true;
                Err(e)
            }
            Err(_) => {
                pending.failed = true;
                Err(self.proposal_timeout(leader_at_start))
            }
        }
    }

    /// Why a proposal timed out, as etcd tells it: when another member became leader while it
    /// waited, the entry was most likely lost with the old leader, and clients are told so.
    fn proposal_timeout(&self, leader_at_start: u64) -> Error {
        let leader = self.raft_status().leader_id;
        if leader != 0 && leader != leader_at_start {
            Error::TimeoutDueToLeaderFail
        } else {
            Error::Timeout
        }
    }

    /// Publishes this member's name and client URLs through raft (into every member list).
    /// Until the cluster writes etcd's entry format, it goes out twice: in the old encoding
    /// for members of the previous version, then in etcd's, which they skip and which
    /// announces that this member reads etcd's format (`apply::entry_gate`).
    pub async fn publish_attributes(&self, attr: ClusterMemberAttrSetRequest) -> Result<()> {
        if self.entry_format.is_etcd() {
            return self.propose(attr).await;
        }
        let who = AuthInfo::default();
        self.propose_encoded(attr.clone(), &who, false).await?;
        self.propose_encoded(attr, &who, true).await
    }

    /// Proposes the switch to etcd's entry format once this member's records show that every
    /// member announced it reads it (`apply::entry_gate`). Returns once the cluster has
    /// switched, or when the member stops.
    pub async fn drive_entry_format_switch(&self, stop: &mut tokio::sync::watch::Receiver<bool>) {
        while !self.entry_format.is_etcd() {
            let gate = crate::apply::GateState::load(&self.store);
            let members = crate::apply::membership::load(&self.store);
            if let (Ok(g), Ok(m)) = (gate, members) {
                if g.complete(&m) {
                    // etcd's entry for a cluster version all members support, which the
                    // previous version skips; the member that sees it complete proposes it.
                    let switch = ferrokv_proto::ferrokvpb::ClusterVersionSetRequest {
                        ver: "3.6.0".into(),
                    };
                    match self
                        .propose_encoded(switch, &AuthInfo::default(), true)
                        .await
                    {
                        Ok(()) => tracing::info!(
                            members = m.len(),
                            "every member announced etcd's entry format; proposed the switch"
                        ),
                        Err(e) => tracing::debug!(error = %e, "proposing the entry format switch"),
                    }
                }
            }
            tokio::select! {
                _ = crate::stop::until_stopped(stop) => return,
                _ = tokio::time::sleep(SWITCH_POLL) => {}
            }
        }
    }

    /// Linearizable read barrier: after it returns, local reads see every write acknowledged
    /// before the call started.
    pub(super) async fn read_barrier(&self) -> Result<()> {
        self.wait_leader().await?;
        let mut applied = self.applied.clone();
        let outcome = tokio::time::timeout(self.request_timeout, async {
            let asked = std::time::Instant::now();
            let index = loop {
                match self.raft.read_index().await {
                    Ok(i) => break i,
                    // No round could complete (election, leader change): a new round is safe.
                    Err(ferrokv_raftnode::Error::ProposalDropped) => {
                        tokio::time::sleep(RETRY_DELAY).await;
                        self.wait_leader().await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let indexed = std::time::Instant::now();
            crate::metrics::stages::READ_INDEX.observe(indexed - asked);
            applied
                .wait_for(|a| *a >= index)
                .await
                .map_err(|_| Error::Stopped)?;
            crate::metrics::stages::READ_APPLY_WAIT.observe(indexed.elapsed());
            Ok::<(), Error>(())
        })
        .await;
        let result = match outcome {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout),
        };
        if result.is_err() {
            self.metrics.read_index_failed();
        }
        result
    }

    /// Runs synchronous storage work off the async workers.
    pub(super) async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::Fatal(format!("storage task: {e}")))?
    }

    /// A leader that stops gracefully hands leadership to another voter first, so the
    /// cluster does not wait an election timeout (what etcd does on SIGTERM).
    pub async fn transfer_leadership_away(&self) {
        let st = self.raft_status();
        if st.leader_id != st.id {
            return;
        }
        let Some(&to) = st.voters.iter().find(|v| **v != st.id) else {
            return;
        };
        tracing::info!(
            to = format!("{to:x}"),
            "transferring leadership before stopping"
        );
        if let Err(e) = self.raft.transfer_leader(to).await {
            tracing::warn!(error = %e, "leadership transfer failed");
            return;
        }
        let mut rx = self.raft.status();
        let moved = async {
            rx.wait_for(|s| s.leader_id != 0 && s.leader_id != st.id)
                .await
                .map(|_| ())
        };
        if tokio::time::timeout(self.cfg.election_timeout * 2, moved)
            .await
            .is_err()
        {
            tracing::warn!("leadership did not move before stopping");
        }
    }

    /// Stops the raft node (shutdown, after every task has ended).
    pub async fn stop_raft(&self) {
        self.raft.shutdown().await;
    }

    /// Makes every applied batch durable (the last step of shutdown).
    pub fn sync_storage(&self) -> Result<()> {
        self.store.sync().map_err(Error::from)
    }
}

struct WaiterGuard<'a> {
    waiters: &'a Waiters,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.waiters.cancel(self.id);
    }
}

/// Counts a proposal in `etcd_server_proposals_pending` while it waits (also when the client
/// goes away and drops the future) and, when raft failed it or it timed out, in
/// `etcd_server_proposals_failed_total`.
struct PendingProposal<'a> {
    metrics: &'a Metrics,
    failed: bool,
}

impl Drop for PendingProposal<'_> {
    fn drop(&mut self) {
        self.metrics.proposal_ended(self.failed);
    }
}
