//! Leases: the Lease gRPC service and the lessor.
//!
//! Grants and revokes are replicated through raft (the store holds the lease table). Expiry
//! deadlines live only in memory on the leader: a new leader renews every lease (deadline =
//! now + TTL, as etcd does), and an expired lease is revoked by proposing LeaseRevoke through
//! the log, so every member deletes the same keys at the same revision.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrokv_proto::etcdserverpb::{
    lease_client::LeaseClient, lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use ferrokv_proto::ferrokvpb::internal_request::Request as Internal;
use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::apply::Applied;
use crate::core::Core;
use crate::error::{to_status, Error};

/// etcd's `MaxLeaseTTL`.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// How often the leader looks for expired leases.
const EXPIRY_CHECK: Duration = Duration::from_millis(250);

/// The minimum TTL etcd grants: ceil(1.5 × election timeout) seconds, so a lease cannot
/// expire during a normal leader election.
pub fn min_ttl(election_timeout: Duration) -> i64 {
    let ms = election_timeout.as_millis() as i64 * 3 / 2;
    ((ms + 999) / 1000).max(1)
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    ttl: i64,
    deadline: Instant,
}

#[derive(Default)]
struct State {
    leader: bool,
    leases: HashMap<i64, Entry>,
    /// Leases whose revoke has been proposed; not proposed again until it fails.
    revoking: HashSet<i64>,
}

/// In-memory lease deadlines; authoritative only while this member is leader.
#[derive(Default)]
pub struct Lessor {
    state: Mutex<State>,
}

impl Lessor {
    /// A grant was applied (on every member).
    pub fn granted(&self, id: i64, ttl: i64) {
        let deadline = Instant::now() + secs(ttl);
        self.state.lock().leases.insert(id, Entry { ttl, deadline });
    }

    /// A revoke was applied.
    pub fn revoked(&self, id: i64) {
        let mut st = self.state.lock();
        st.leases.remove(&id);
        st.revoking.remove(&id);
    }

    /// The keyspace was replaced by a snapshot from the leader: these are now the leases,
    /// each with its full TTL from now (only a leader acts on deadlines, and it renews them
    /// all when it takes over anyway).
    pub fn replace_all(&self, leases: &[(i64, i64)]) {
        let now = Instant::now();
        let mut st = self.state.lock();
        st.revoking.clear();
        st.leases = leases
            .iter()
            .map(|&(id, ttl)| {
                (
                    id,
                    Entry {
                        ttl,
                        deadline: now + secs(ttl),
                    },
                )
            })
            .collect();
    }

    /// This member became leader: every lease gets its full TTL again from now.
    pub fn promote(&self, leases: &[(i64, i64)]) {
        let now = Instant::now();
        let mut st = self.state.lock();
        st.leader = true;
        st.revoking.clear();
        for &(id, ttl) in leases {
            st.leases.insert(
                id,
                Entry {
                    ttl,
                    deadline: now + secs(ttl),
                },
            );
        }
    }

    pub fn demote(&self) {
        let mut st = self.state.lock();
        st.leader = false;
        st.revoking.clear();
    }

    pub fn is_leader(&self) -> bool {
        self.state.lock().leader
    }

    /// KeepAlive: resets the deadline; the granted TTL, or None for an unknown lease.
    pub fn renew(&self, id: i64) -> Option<i64> {
        let mut st = self.state.lock();
        if st.revoking.contains(&id) {
            return None;
        }
        let e = st.leases.get_mut(&id)?;
        e.deadline = Instant::now() + secs(e.ttl);
        Some(e.ttl)
    }

    /// Seconds left (rounded up, as etcd), or None when this member does not track it.
    pub fn remaining(&self, id: i64) -> Option<i64> {
        let st = self.state.lock();
        let e = st.leases.get(&id)?;
        let left = e.deadline.saturating_duration_since(Instant::now());
        Some(((left.as_millis() as i64) + 999) / 1000)
    }

    /// Leases past their deadline that nobody is revoking yet; they are marked as revoking.
    pub fn take_expired(&self, now: Instant) -> Vec<i64> {
        let mut st = self.state.lock();
        if !st.leader {
            return Vec::new();
        }
        let expired: Vec<i64> = st
            .leases
            .iter()
            .filter(|(id, e)| e.deadline <= now && !st.revoking.contains(id))
            .map(|(id, _)| *id)
            .collect();
        st.revoking.extend(expired.iter().copied());
        expired
    }

    /// A revoke proposal failed: try again at the next check.
    pub fn revoke_failed(&self, id: i64) {
        self.state.lock().revoking.remove(&id);
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

/// Follows leadership and revokes expired leases through raft until `stop` fires.
pub async fn run_expiry(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut status = core.raft.status();
    let mut ticker = tokio::time::interval(EXPIRY_CHECK);
    loop {
        tokio::select! {
            _ = crate::core::until_stopped(&mut stop) => return,
            _ = ticker.tick() => {}
        }
        let leader = {
            let s = status.borrow_and_update();
            s.leader_id != 0 && s.leader_id == s.id
        };
        if leader && !core.lessor.is_leader() {
            let store = core.store.clone();
            match tokio::task::spawn_blocking(move || store.leases()).await {
                Ok(Ok(list)) => {
                    let pairs: Vec<(i64, i64)> = list.iter().map(|l| (l.id, l.ttl)).collect();
                    tracing::info!(leases = pairs.len(), "became leader; renewing all leases");
                    core.lessor.promote(&pairs);
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot load leases"),
                Err(e) => tracing::warn!(error = %e, "lease load task failed"),
            }
            continue;
        }
        if !leader && core.lessor.is_leader() {
            core.lessor.demote();
        }
        for id in core.lessor.take_expired(Instant::now()) {
            let core = core.clone();
            tokio::spawn(async move {
                tracing::info!(lease = id, "lease expired; revoking");
                match core
                    .propose(Internal::LeaseRevoke(LeaseRevokeRequest { id }))
                    .await
                {
                    Ok(_) | Err(Error::Storage(ferrokv_storage::Error::LeaseNotFound)) => {
                        core.lessor.revoked(id)
                    }
                    Err(e) => {
                        tracing::warn!(lease = id, error = %e, "revoking expired lease failed");
                        core.lessor.revoke_failed(id);
                    }
                }
            });
        }
    }
}

#[derive(Clone)]
pub struct LeaseService {
    core: Arc<Core>,
}

impl LeaseService {
    pub fn new(core: Arc<Core>) -> Self {
        LeaseService { core }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    #[tracing::instrument(skip_all, fields(ttl = req.get_ref().ttl, id = req.get_ref().id))]
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        self.core.metrics.request("LeaseGrant");
        self.core.reject_learner().map_err(|e| to_status(&e))?;
        let mut req = req.into_inner();
        if req.ttl > MAX_LEASE_TTL {
            return Err(to_status(&Error::LeaseTtlTooLarge));
        }
        self.core.check_quota().await.map_err(|e| to_status(&e))?;
        req.ttl = req.ttl.max(min_ttl(self.core.cfg.election_timeout));
        if req.id == 0 {
            // Positive, and unique per member (the generator is prefixed with our id).
            req.id = (self.core.ids.next() & (i64::MAX as u64)) as i64;
        }
        match self
            .core
            .propose(Internal::LeaseGrant(req))
            .await
            .map_err(|e| to_status(&e))?
        {
            Applied::LeaseGrant(mut resp) => {
                resp.header = Some(self.core.header_now());
                Ok(Response::new(resp))
            }
            _ => Err(to_status(&Error::Fatal(
                "unexpected apply result for lease grant".into(),
            ))),
        }
    }

    #[tracing::instrument(skip_all, fields(id = req.get_ref().id))]
    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.core.metrics.request("LeaseRevoke");
        self.core.reject_learner().map_err(|e| to_status(&e))?;
        let req = req.into_inner();
        match self
            .core
            .propose(Internal::LeaseRevoke(req))
            .await
            .map_err(|e| to_status(&e))?
        {
            Applied::LeaseRevoke(mut resp) => {
                resp.header = Some(self.core.header_now());
                Ok(Response::new(resp))
            }
            _ => Err(to_status(&Error::Fatal(
                "unexpected apply result for lease revoke".into(),
            ))),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.core.metrics.request("LeaseKeepAlive");
        self.core.reject_learner().map_err(|e| to_status(&e))?;
        let core = self.core.clone();
        let input = req.into_inner();
        Ok(Response::new(keepalive_stream(core, input)))
    }

    #[tracing::instrument(skip_all, fields(id = req.get_ref().id))]
    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.core.metrics.request("LeaseTimeToLive");
        self.core.reject_learner().map_err(|e| to_status(&e))?;
        let req = req.into_inner();
        let st = self.core.status();
        if st.leader_id != 0 && st.leader_id != st.id {
            // The remaining TTL is the leader's to know.
            let ch = self
                .core
                .leader_channel()
                .await
                .map_err(|e| to_status(&e))?;
            return LeaseClient::new(ch).lease_time_to_live(req).await;
        }
        let id = req.id;
        let (record, keys) = self
            .core
            .blocking(move |s| {
                let rec = s.lease(id)?;
                let keys = if req.keys && rec.is_some() {
                    s.lease_keys(id)?
                } else {
                    Vec::new()
                };
                Ok((rec, keys))
            })
            .await
            .map_err(|e| to_status(&e))?;
        let header = Some(self.core.header_now());
        let resp = match record {
            None => LeaseTimeToLiveResponse {
                header,
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
            Some(rec) => {
                let ttl = self
                    .core
                    .lessor
                    .remaining(id)
                    .unwrap_or(if rec.remaining_ttl > 0 {
                        rec.remaining_ttl
                    } else {
                        rec.ttl
                    });
                LeaseTimeToLiveResponse {
                    header,
                    id,
                    ttl,
                    granted_ttl: rec.ttl,
                    keys,
                }
            }
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.core.metrics.request("LeaseLeases");
        self.core.reject_learner().map_err(|e| to_status(&e))?;
        let list = self
            .core
            .blocking(|s| s.leases().map_err(Error::from))
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.core.header_now()),
            leases: list.into_iter().map(|l| LeaseStatus { id: l.id }).collect(),
        }))
    }
}

/// One response per keepalive request, in order; ends when the client closes its side.
fn keepalive_stream(core: Arc<Core>, input: Streaming<LeaseKeepAliveRequest>) -> KeepAliveStream {
    let stream = futures::stream::unfold((core, input), |(core, mut input)| async move {
        let out = match input.next().await? {
            Err(status) => Err(status),
            Ok(req) => keep_alive_once(&core, req.id).await,
        };
        Some((out, (core, input)))
    });
    Box::pin(stream)
}

async fn keep_alive_once(core: &Core, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
    // Deadlines live on the leader: a follower forwards the renewal there.
    if !core.lessor.is_leader() {
        core.wait_leader().await.map_err(|e| to_status(&e))?;
        let s = core.status();
        if s.leader_id != s.id {
            return forward_keep_alive(core, id).await;
        }
        // Leader, but the expiry task has not promoted the lessor yet: wait for it briefly.
        let deadline = Instant::now() + core.request_timeout;
        while !core.lessor.is_leader() {
            if Instant::now() > deadline {
                return Err(to_status(&Error::Timeout));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let ttl = match core.lessor.renew(id) {
        Some(ttl) => ttl,
        None => {
            // Maybe granted but not applied here yet (a follower can apply before the
            // leader): catch up to the commit index, then decide.
            core.read_barrier().await.map_err(|e| to_status(&e))?;
            core.lessor.renew(id).unwrap_or(0)
        }
    };
    Ok(LeaseKeepAliveResponse {
        header: Some(core.header_now()),
        id,
        ttl,
    })
}

async fn forward_keep_alive(core: &Core, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
    let mut client = LeaseClient::new(core.leader_channel().await.map_err(|e| to_status(&e))?);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    // Closing our side after one request makes the leader answer once and end the stream.
    let _ = tx.send(LeaseKeepAliveRequest { id }).await;
    drop(tx);
    let mut stream = client
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match stream.message().await? {
        Some(resp) => Ok(resp),
        None => Err(to_status(&Error::LeaderChanged)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ttl_is_ceil_of_one_and_a_half_election_timeouts() {
        let rows = [(1000, 2), (100, 1), (2000, 3), (5000, 8), (10, 1)];
        for (ms, want) in rows {
            assert_eq!(min_ttl(Duration::from_millis(ms)), want, "{ms} ms");
        }
    }

    #[test]
    fn lessor_expiry_only_on_leader_and_once() {
        let l = Lessor::default();
        l.granted(7, 1);
        let later = Instant::now() + Duration::from_secs(2);
        assert!(
            l.take_expired(later).is_empty(),
            "followers never expire leases"
        );
        l.promote(&[(7, 1), (8, 100)]);
        assert_eq!(l.take_expired(later), vec![7]);
        assert!(
            l.take_expired(later).is_empty(),
            "a revoke in flight is not proposed twice"
        );
        assert_eq!(
            l.renew(7),
            None,
            "a lease being revoked cannot be kept alive"
        );
        l.revoke_failed(7);
        assert_eq!(l.take_expired(later), vec![7]);
        l.revoked(7);
        assert_eq!(l.renew(7), None);
        assert_eq!(l.renew(8), Some(100));
        assert!(l.remaining(8).unwrap() > 98);
        l.demote();
        assert!(l
            .take_expired(Instant::now() + Duration::from_secs(1000))
            .is_empty());
    }
}
