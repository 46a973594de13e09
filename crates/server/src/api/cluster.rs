//! The Cluster service: call the server core (served on the client and the peer port).

use std::sync::Arc;

use ferrokv_proto::etcdserverpb::{
    cluster_server::Cluster, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use crate::etcdserver::{Caller, EtcdServer};

#[derive(Clone)]
pub struct ClusterService {
    server: Arc<EtcdServer>,
}

impl ClusterService {
    pub fn new(server: Arc<EtcdServer>) -> Self {
        ClusterService { server }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        // etcd's checkMembershipOperationPermission: changes need the root role.
        self.server.authorize_admin(&Caller::of(&req))?;
        Ok(Response::new(
            self.server.member_add(req.into_inner()).await?,
        ))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.server.authorize_admin(&Caller::of(&req))?;
        Ok(Response::new(
            self.server.member_remove(req.into_inner().id).await?,
        ))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.server.authorize_admin(&Caller::of(&req))?;
        Ok(Response::new(
            self.server.member_update(req.into_inner()).await?,
        ))
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(
            self.server
                .member_list(req.into_inner().linearizable)
                .await?,
        ))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.server.authorize_admin(&Caller::of(&req))?;
        Ok(Response::new(
            self.server.member_promote(req.into_inner().id).await?,
        ))
    }
}
