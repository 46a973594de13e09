//! The KV requests of the server core: writes are proposed (behind the quota), reads are
//! served locally after the read barrier unless serializable. Reads never create raft
//! entries.

use ferrokv_proto::etcdserverpb::{
    request_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};

use super::EtcdServer;
use crate::apply::AuthInfo;
use crate::error::{Error, Result};
use crate::metrics::MvccOps;

impl EtcdServer {
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        if !req.serializable {
            self.reject_learner()?;
            self.read_barrier().await?;
        }
        let reading = std::time::Instant::now();
        // A one-key get is a few microseconds of redb work, less than the hop to a blocking
        // thread costs (docs/performance.md), so it runs on the async worker; a range may
        // scan many keys and still goes to a blocking thread.
        let resp = if req.range_end.is_empty() {
            self.store.range(&req).map_err(Error::from)?
        } else {
            self.blocking(move |s| s.range(&req).map_err(Error::from))
                .await?
        };
        crate::metrics::stages::RANGE_LOCAL.observe(reading.elapsed());
        self.metrics.mvcc(MvccOps::range());
        Ok(self.filled(resp))
    }

    pub async fn put(&self, req: PutRequest, who: &AuthInfo) -> Result<PutResponse> {
        Ok(self.filled(self.propose_within_quota(req, who).await?))
    }

    pub async fn delete_range(
        &self,
        req: DeleteRangeRequest,
        who: &AuthInfo,
    ) -> Result<DeleteRangeResponse> {
        // A delete never grows the store, so it passes even under NOSPACE (etcd's rule).
        Ok(self.filled(self.propose_write(req, who).await?))
    }

    pub async fn txn(&self, req: TxnRequest, who: &AuthInfo) -> Result<TxnResponse> {
        let read_only = txn_is_read_only(&req);
        let serializable = txn_is_serializable(&req);
        if !(read_only && serializable) {
            self.reject_learner()?;
        }
        if read_only {
            if !serializable {
                self.read_barrier().await?;
            }
            // Served locally like a Range: a read-only txn writes nothing and does not bump
            // the revision, so it needs no raft entry.
            let (resp, ops) = self
                .blocking(move |s| {
                    let resp = s.read_txn(&req).map_err(Error::from)?;
                    // Compares and ops run in one read transaction.
                    let ops = MvccOps::compares(&req) + MvccOps::branch(&req, &resp);
                    Ok((resp, ops))
                })
                .await?;
            self.metrics.mvcc(ops);
            return Ok(self.filled(resp));
        }
        Ok(self.filled(self.propose_within_quota(req, who).await?))
    }

    pub async fn compact(
        &self,
        req: CompactionRequest,
        who: &AuthInfo,
    ) -> Result<CompactionResponse> {
        // Storage compacts synchronously while applying, so `physical` needs no extra wait.
        Ok(self.filled(self.propose_write(req, who).await?))
    }
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
