//! The KV service: validate (etcd's exact errors) → propose through raft or read locally →
//! fill the header. Reads never create raft entries; linearizable ones pass the read barrier.

use std::sync::Arc;

use ferrokv_proto::etcdserverpb::{
    kv_server::Kv, request_op, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest,
    TxnResponse,
};
use ferrokv_proto::ferrokvpb::internal_request::Request as Internal;
use ferrokv_storage::validate;
use tonic::{Request, Response, Status};

use crate::apply::Applied;
use crate::error::{to_status, Error};
use crate::etcdserver::Core;

/// etcd's limit of operations per txn branch (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

#[derive(Clone)]
pub struct KvService {
    core: Arc<Core>,
}

impl KvService {
    pub fn new(core: Arc<Core>) -> Self {
        KvService { core }
    }
}

fn unexpected(what: &str) -> Status {
    to_status(&Error::Fatal(format!("unexpected apply result for {what}")))
}

/// A txn that writes nothing can be answered from local state like a Range.
pub fn txn_is_read_only(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(txn.failure.iter())
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(t)) => txn_is_read_only(t),
            Some(_) => false,
        })
}

/// Every range in a read-only txn asked for serializable: no read barrier needed.
fn txn_is_serializable(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(txn.failure.iter())
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(r)) => r.serializable,
            Some(request_op::Request::RequestTxn(t)) => txn_is_serializable(t),
            _ => true,
        })
}

#[tonic::async_trait]
impl Kv for KvService {
    #[tracing::instrument(skip_all, fields(key_len = req.get_ref().key.len()))]
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        self.core.metrics.request("Range");
        let req = req.into_inner();
        validate::range(&req).map_err(|e| to_status(&e.into()))?;
        if !req.serializable {
            self.core.reject_learner().map_err(|e| to_status(&e))?;
            self.core.read_barrier().await.map_err(|e| to_status(&e))?;
        }
        let mut resp = self
            .core
            .blocking(move |s| s.range(&req).map_err(Error::from))
            .await
            .map_err(|e| to_status(&e))?;
        self.core.header.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    #[tracing::instrument(skip_all)]
    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.core.metrics.request("Put");
        self.core.reject_learner().map_err(|e| to_status(&e))?;
        let req = req.into_inner();
        validate::put(&req).map_err(|e| to_status(&e.into()))?;
        self.core.check_quota().await.map_err(|e| to_status(&e))?;
        match self
            .core
            .propose(Internal::Put(req))
            .await
            .map_err(|e| to_status(&e))?
        {
            Applied::Put(mut resp) => {
                self.core.header.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("put")),
        }
    }

    #[tracing::instrument(skip_all)]
    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        self.core.metrics.request("DeleteRange");
        self.core.reject_learner().map_err(|e| to_status(&e))?;
        let req = req.into_inner();
        validate::delete_range(&req).map_err(|e| to_status(&e.into()))?;
        match self
            .core
            .propose(Internal::DeleteRange(req))
            .await
            .map_err(|e| to_status(&e))?
        {
            Applied::DeleteRange(mut resp) => {
                self.core.header.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("delete range")),
        }
    }

    #[tracing::instrument(skip_all, fields(compares = req.get_ref().compare.len()))]
    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.core.metrics.request("Txn");
        let req = req.into_inner();
        validate::txn(&req, MAX_TXN_OPS).map_err(|e| to_status(&e.into()))?;
        if !(txn_is_read_only(&req) && txn_is_serializable(&req)) {
            self.core.reject_learner().map_err(|e| to_status(&e))?;
        }
        if txn_is_read_only(&req) {
            if !txn_is_serializable(&req) {
                self.core.read_barrier().await.map_err(|e| to_status(&e))?;
            }
            // Evaluated in a write transaction that is dropped uncommitted: it changes nothing
            // (a read-only txn does not bump the revision) and needs no raft entry.
            let mut resp = self
                .core
                .blocking(move |s| {
                    let mut batch = s.write_batch()?;
                    let (resp, _) = batch.txn(&req)?;
                    drop(batch);
                    Ok(resp)
                })
                .await
                .map_err(|e| to_status(&e))?;
            self.core.header.fill(&mut resp.header);
            return Ok(Response::new(resp));
        }
        self.core.check_quota().await.map_err(|e| to_status(&e))?;
        match self
            .core
            .propose(Internal::Txn(req))
            .await
            .map_err(|e| to_status(&e))?
        {
            Applied::Txn(mut resp) => {
                self.core.header.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("txn")),
        }
    }

    #[tracing::instrument(skip_all, fields(revision = req.get_ref().revision))]
    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        self.core.metrics.request("Compact");
        self.core.reject_learner().map_err(|e| to_status(&e))?;
        let req = req.into_inner();
        // Storage compacts synchronously while applying, so `physical` needs no extra wait.
        match self
            .core
            .propose(Internal::Compaction(req))
            .await
            .map_err(|e| to_status(&e))?
        {
            Applied::Compaction(mut resp) => {
                self.core.header.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("compact")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrokv_proto::etcdserverpb::RequestOp;

    fn op(r: request_op::Request) -> RequestOp {
        RequestOp { request: Some(r) }
    }

    #[test]
    fn read_only_detection() {
        let range = |s| {
            op(request_op::Request::RequestRange(RangeRequest {
                key: b"a".to_vec(),
                serializable: s,
                ..Default::default()
            }))
        };
        let put = op(request_op::Request::RequestPut(PutRequest {
            key: b"a".to_vec(),
            ..Default::default()
        }));
        let rows: Vec<(TxnRequest, bool, bool)> = vec![
            (TxnRequest::default(), true, true),
            (
                TxnRequest {
                    success: vec![range(false)],
                    ..Default::default()
                },
                true,
                false,
            ),
            (
                TxnRequest {
                    success: vec![range(true)],
                    failure: vec![range(true)],
                    ..Default::default()
                },
                true,
                true,
            ),
            (
                TxnRequest {
                    success: vec![range(true)],
                    failure: vec![put.clone()],
                    ..Default::default()
                },
                false,
                true,
            ),
            (
                TxnRequest {
                    success: vec![op(request_op::Request::RequestTxn(TxnRequest {
                        failure: vec![put],
                        ..Default::default()
                    }))],
                    ..Default::default()
                },
                false,
                true,
            ),
        ];
        for (i, (t, ro, ser)) in rows.into_iter().enumerate() {
            assert_eq!(txn_is_read_only(&t), ro, "row {i}");
            assert_eq!(txn_is_serializable(&t), ser, "row {i}");
        }
    }
}
