//! etcd's accounting of `etcd_mvcc_{range,put,delete,txn}_total`: each storage transaction
//! counts its range, put and delete calls, and counts as a txn when it made more than one.
//! So a Put with `prev_kv` is a range, a put and a txn; a Txn's compares run in a read
//! transaction of their own before the branch runs in the write transaction; a DeleteRange
//! is one delete however many keys it removes; a lease revoke is one delete per key.
//! (Measured against etcd 3.6.16.)

use ferrokv_proto::etcdserverpb::{
    request_op, response_op, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, TxnResponse,
};

/// The calls one storage transaction made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MvccOps {
    pub ranges: u64,
    pub puts: u64,
    pub deletes: u64,
}

impl MvccOps {
    pub fn range() -> Self {
        MvccOps {
            ranges: 1,
            ..MvccOps::default()
        }
    }

    /// A Put reads the previous key first when it must return or keep part of it.
    pub fn put(r: &PutRequest) -> Self {
        MvccOps {
            ranges: u64::from(r.prev_kv || r.ignore_value || r.ignore_lease),
            puts: 1,
            deletes: 0,
        }
    }

    pub fn delete(r: &DeleteRangeRequest) -> Self {
        MvccOps {
            ranges: u64::from(r.prev_kv),
            puts: 0,
            deletes: 1,
        }
    }

    /// `n` deletes (the keys of a revoked lease).
    pub fn deletes(n: u64) -> Self {
        MvccOps {
            deletes: n,
            ..MvccOps::default()
        }
    }

    /// The compares of a txn: one range each.
    pub fn compares(r: &TxnRequest) -> Self {
        MvccOps {
            ranges: r.compare.len() as u64,
            ..MvccOps::default()
        }
    }

    /// The ops of the branch a txn ran, nested txns (their compares included) too.
    pub fn branch(req: &TxnRequest, resp: &TxnResponse) -> Self {
        let ops: &[RequestOp] = if resp.succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut n = MvccOps::default();
        for (op, result) in ops.iter().zip(&resp.responses) {
            let add = match (&op.request, &result.response) {
                (Some(request_op::Request::RequestRange(_)), _) => MvccOps::range(),
                (Some(request_op::Request::RequestPut(p)), _) => MvccOps::put(p),
                (Some(request_op::Request::RequestDeleteRange(d)), _) => MvccOps::delete(d),
                (
                    Some(request_op::Request::RequestTxn(t)),
                    Some(response_op::Response::ResponseTxn(tr)),
                ) => MvccOps::compares(t) + MvccOps::branch(t, tr),
                _ => MvccOps::default(),
            };
            n = n + add;
        }
        n
    }

    pub fn total(&self) -> u64 {
        self.ranges + self.puts + self.deletes
    }
}

impl std::ops::Add for MvccOps {
    type Output = MvccOps;

    fn add(self, o: MvccOps) -> MvccOps {
        MvccOps {
            ranges: self.ranges + o.ranges,
            puts: self.puts + o.puts,
            deletes: self.deletes + o.deletes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrokv_proto::etcdserverpb::{Compare, RangeRequest, ResponseOp};

    fn op(r: request_op::Request) -> RequestOp {
        RequestOp { request: Some(r) }
    }

    #[test]
    fn counts_as_etcd_does() {
        let plain = PutRequest::default();
        assert_eq!(MvccOps::put(&plain).total(), 1);
        let prev = PutRequest {
            prev_kv: true,
            ..PutRequest::default()
        };
        assert_eq!(MvccOps::put(&prev).total(), 2);
        let txn = TxnRequest {
            compare: vec![Compare::default()],
            success: vec![
                op(request_op::Request::RequestPut(plain.clone())),
                op(request_op::Request::RequestRange(RangeRequest::default())),
            ],
            failure: vec![op(request_op::Request::RequestPut(plain))],
        };
        let ran = |succeeded: bool, n: usize| TxnResponse {
            succeeded,
            responses: vec![ResponseOp::default(); n],
            ..TxnResponse::default()
        };
        assert_eq!(
            MvccOps::branch(&txn, &ran(true, 2)),
            MvccOps {
                ranges: 1,
                puts: 1,
                deletes: 0
            }
        );
        assert_eq!(MvccOps::branch(&txn, &ran(false, 1)).total(), 1);
        assert_eq!(MvccOps::compares(&txn).ranges, 1);
    }
}
