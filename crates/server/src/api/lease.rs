//! The Lease service: call the server core; a keep-alive stream answers each request in
//! order.

use std::pin::Pin;
use std::sync::Arc;

use ferrokv_proto::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::etcdserver::{Caller, EtcdServer};

#[derive(Clone)]
pub struct LeaseService {
    server: Arc<EtcdServer>,
}

impl LeaseService {
    pub fn new(server: Arc<EtcdServer>) -> Self {
        LeaseService { server }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        self.server.reject_learner()?;
        // No permission is needed, but as in etcd the entry names the caller (and a bad token
        // is refused).
        let who = self.server.authorize(&Caller::of(&req), |_| Ok(()))?;
        Ok(Response::new(
            self.server.lease_grant(req.into_inner(), &who).await?,
        ))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.server.reject_learner()?;
        // etcd: revoking deletes the lease's keys, so the caller must be allowed to write them.
        let who = self
            .server
            .authorize_lease_keys(&Caller::of(&req), req.get_ref().id, true)?;
        Ok(Response::new(
            self.server.lease_revoke(req.into_inner(), &who).await?,
        ))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.server.reject_learner()?;
        Ok(Response::new(keepalive_stream(
            self.server.clone(),
            req.into_inner(),
        )))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.server.reject_learner()?;
        if req.get_ref().keys {
            // The key list is a read of those keys.
            self.server
                .authorize_lease_keys(&Caller::of(&req), req.get_ref().id, false)?;
        }
        Ok(Response::new(
            self.server.lease_time_to_live(req.into_inner()).await?,
        ))
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.server.reject_learner()?;
        // etcd 3.6 lists every lease only to the root role.
        self.server.authorize_admin(&Caller::of(&req))?;
        Ok(Response::new(self.server.lease_leases().await?))
    }
}

/// One response per keepalive request, in order; ends when the client closes its side.
fn keepalive_stream(
    server: Arc<EtcdServer>,
    input: Streaming<LeaseKeepAliveRequest>,
) -> KeepAliveStream {
    let stream = futures::stream::unfold((server, input), |(server, mut input)| async move {
        let out = match input.next().await? {
            Err(status) => Err(status),
            Ok(req) => server.lease_keep_alive(req.id).await.map_err(Status::from),
        };
        Some((out, (server, input)))
    });
    Box::pin(stream)
}
