//! The KV service: validate (etcd's exact errors), call the server core.

use std::sync::Arc;

use ferrokv_proto::etcdserverpb::{
    kv_server::Kv, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use ferrokv_storage::validate;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::etcdserver::{Caller, EtcdServer};

/// etcd's limit of operations per txn branch (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

#[derive(Clone)]
pub struct KvService {
    server: Arc<EtcdServer>,
}

impl KvService {
    pub fn new(server: Arc<EtcdServer>) -> Self {
        KvService { server }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.server
            .authorize(&Caller::of(&req), |v| v.range_request(req.get_ref()))?;
        let req = req.into_inner();
        validate::range(&req).map_err(Error::from)?;
        Ok(Response::new(self.server.range(req).await?))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.server.reject_learner()?;
        let who = self
            .server
            .authorize(&Caller::of(&req), |v| v.put(req.get_ref()))?;
        let req = req.into_inner();
        validate::put(&req).map_err(Error::from)?;
        Ok(Response::new(self.server.put(req, &who).await?))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.server.reject_learner()?;
        let who = self
            .server
            .authorize(&Caller::of(&req), |v| v.delete(req.get_ref()))?;
        let req = req.into_inner();
        validate::delete_range(&req).map_err(Error::from)?;
        Ok(Response::new(self.server.delete_range(req, &who).await?))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let who = self
            .server
            .authorize(&Caller::of(&req), |v| v.txn(req.get_ref()))?;
        let req = req.into_inner();
        validate::txn(&req, MAX_TXN_OPS).map_err(Error::from)?;
        Ok(Response::new(self.server.txn(req, &who).await?))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        self.server.reject_learner()?;
        // etcd 3.6 lets only the root role compact.
        let who = self.server.authorize_admin(&Caller::of(&req))?;
        Ok(Response::new(
            self.server.compact(req.into_inner(), &who).await?,
        ))
    }
}
