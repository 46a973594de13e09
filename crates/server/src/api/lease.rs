//! The Lease service. Deadlines are the leader's (see `apply::lessor`); a follower forwards
//! keep-alives and TTL queries to the leader's peer port.

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
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::apply::lessor::{min_ttl, MAX_LEASE_TTL};
use crate::apply::Applied;
use crate::error::{to_status, Error};
use crate::etcdserver::Core;

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
