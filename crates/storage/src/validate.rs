//! Pure request validation, done by the API layer before a request is proposed to raft, so
//! that a request that can never succeed never enters the log. Errors carry etcd's messages.

use crate::{Error, Result};
use ferrokv_proto::etcdserverpb as pb;
use pb::request_op::Request;
use std::collections::HashSet;

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

pub fn put(req: &pb::PutRequest) -> Result<()> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

pub fn range(req: &pb::RangeRequest) -> Result<()> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if pb::range_request::SortOrder::try_from(req.sort_order).is_err()
        || pb::range_request::SortTarget::try_from(req.sort_target).is_err()
    {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

pub fn delete_range(req: &pb::DeleteRangeRequest) -> Result<()> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// Validates a txn and all its nested txns: op counts per branch, each op, and that no key is
/// written twice on any path through the txn.
pub fn txn(req: &pb::TxnRequest, max_ops: usize) -> Result<()> {
    check_ops(req, max_ops)?;
    written_keys(&req.success)?;
    written_keys(&req.failure)?;
    Ok(())
}

fn check_ops(req: &pb::TxnRequest, max_ops: usize) -> Result<()> {
    let opc = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if opc > max_ops {
        return Err(Error::TooManyOps);
    }
    // etcd's checkTxnRequest hands nested txns what is left of the budget, so a txn nested
    // deeper than max_ops levels is refused (128 levels deep is etcd 3.6's deepest).
    let max_ops = max_ops - opc;
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) => range(r)?,
            Some(Request::RequestPut(r)) => put(r)?,
            Some(Request::RequestDeleteRange(r)) => delete_range(r)?,
            Some(Request::RequestTxn(t)) => check_ops(t, max_ops)?,
            // etcd's checkRequestOp: an op with no request ("empty op / nil entry").
            None => return Err(Error::KeyNotFound),
        }
    }
    Ok(())
}

/// A deleted interval `[start, end)`; `end == None` is unbounded.
struct DelInterval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl DelInterval {
    fn covers(&self, k: &[u8]) -> bool {
        k >= self.start.as_slice() && self.end.as_ref().is_none_or(|e| k < e.as_slice())
    }
}

/// Puts and deletes of one branch, including its nested txns (either side of those).
struct Writes {
    puts: HashSet<Vec<u8>>,
    dels: Vec<DelInterval>,
}

/// Collects the keys written by one list of ops and fails when two writes may hit one key.
///
/// Rules (etcd's checkIntervals): deletes may overlap each other; a put may not hit a key put
/// elsewhere or covered by a delete on the same path; the success and failure branches of a
/// nested txn are exclusive, so the same put on both sides is fine.
fn written_keys(ops: &[pb::RequestOp]) -> Result<Writes> {
    let mut dels: Vec<DelInterval> = Vec::new();
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            dels.push(delete_interval(&d.key, &d.range_end));
        }
    }
    let covered = |dels: &[DelInterval], k: &[u8]| dels.iter().any(|d| d.covers(k));

    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    let mut child_dels: Vec<DelInterval> = Vec::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let then = written_keys(&t.success)?;
        let els = written_keys(&t.failure)?;
        for k in &then.puts {
            if puts.contains(k) || covered(&dels, k) {
                return Err(Error::DuplicateKey);
            }
        }
        for k in &els.puts {
            if (puts.contains(k) && !then.puts.contains(k)) || covered(&dels, k) {
                return Err(Error::DuplicateKey);
            }
        }
        puts.extend(then.puts);
        puts.extend(els.puts);
        child_dels.extend(then.dels);
        child_dels.extend(els.dels);
    }
    dels.extend(child_dels);

    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || covered(&dels, &p.key) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok(Writes { puts, dels })
}

fn delete_interval(key: &[u8], range_end: &[u8]) -> DelInterval {
    if range_end.is_empty() {
        let mut end = key.to_vec();
        end.push(0);
        return DelInterval {
            start: key.to_vec(),
            end: Some(end),
        };
    }
    if range_end == [0] {
        return DelInterval {
            start: key.to_vec(),
            end: None,
        };
    }
    DelInterval {
        start: key.to_vec(),
        end: Some(range_end.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestPut(pb::PutRequest {
                key: k.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }
    }
    fn del_op(k: &str, end: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn range_op(k: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestRange(pb::RangeRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }
    fn txn_op(success: Vec<pb::RequestOp>, failure: Vec<pb::RequestOp>) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestTxn(pb::TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }
    fn txn_of(success: Vec<pb::RequestOp>) -> pb::TxnRequest {
        pb::TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        }
    }

    #[test]
    fn put_rules() {
        let rows: Vec<(&str, pb::PutRequest, Option<&str>)> = vec![
            (
                "ok",
                pb::PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                },
                None,
            ),
            (
                "empty key",
                pb::PutRequest {
                    key: vec![],
                    ..Default::default()
                },
                Some("etcdserver: key is not provided"),
            ),
            (
                "ignore_value with value",
                pb::PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    ignore_value: true,
                    ..Default::default()
                },
                Some("etcdserver: value is provided"),
            ),
            (
                "ignore_value without value",
                pb::PutRequest {
                    key: b"k".to_vec(),
                    ignore_value: true,
                    ..Default::default()
                },
                None,
            ),
            (
                "ignore_lease with lease",
                pb::PutRequest {
                    key: b"k".to_vec(),
                    lease: 5,
                    ignore_lease: true,
                    ..Default::default()
                },
                Some("etcdserver: lease is provided"),
            ),
            (
                "ignore_lease without lease",
                pb::PutRequest {
                    key: b"k".to_vec(),
                    ignore_lease: true,
                    ..Default::default()
                },
                None,
            ),
        ];
        for (name, req, want) in rows {
            let got = put(&req).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), want, "{name}");
        }
    }

    #[test]
    fn range_and_delete_rules() {
        let rows: Vec<(&str, pb::RangeRequest, Option<&str>)> = vec![
            (
                "ok",
                pb::RangeRequest {
                    key: b"k".to_vec(),
                    sort_order: 2,
                    sort_target: 4,
                    ..Default::default()
                },
                None,
            ),
            (
                "empty key",
                pb::RangeRequest::default(),
                Some("etcdserver: key is not provided"),
            ),
            (
                "bad order",
                pb::RangeRequest {
                    key: b"k".to_vec(),
                    sort_order: 3,
                    ..Default::default()
                },
                Some("etcdserver: invalid sort option"),
            ),
            (
                "bad target",
                pb::RangeRequest {
                    key: b"k".to_vec(),
                    sort_target: 5,
                    ..Default::default()
                },
                Some("etcdserver: invalid sort option"),
            ),
            (
                "negative order",
                pb::RangeRequest {
                    key: b"k".to_vec(),
                    sort_order: -1,
                    ..Default::default()
                },
                Some("etcdserver: invalid sort option"),
            ),
        ];
        for (name, req, want) in rows {
            let got = range(&req).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), want, "{name}");
        }
        assert!(matches!(
            delete_range(&pb::DeleteRangeRequest::default()),
            Err(Error::EmptyKey)
        ));
        assert!(delete_range(&pb::DeleteRangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })
        .is_ok());
    }

    #[test]
    fn txn_rules() {
        let many = |n: usize| (0..n).map(|i| put_op(&format!("k{i}"))).collect::<Vec<_>>();
        let rows: Vec<(&str, pb::TxnRequest, Option<&str>)> = vec![
            ("128 ops ok", txn_of(many(128)), None),
            (
                "empty RequestOp",
                txn_of(vec![pb::RequestOp { request: None }]),
                Some("etcdserver: key not found"),
            ),
            (
                "empty RequestOp in a nested failure branch",
                txn_of(vec![txn_op(vec![], vec![pb::RequestOp { request: None }])]),
                Some("etcdserver: key not found"),
            ),
            (
                "129 ops",
                txn_of(many(129)),
                Some("etcdserver: too many operations in txn request"),
            ),
            (
                "129 ops in failure",
                pb::TxnRequest {
                    compare: vec![],
                    success: vec![],
                    failure: many(129),
                },
                Some("etcdserver: too many operations in txn request"),
            ),
            (
                "129 ops nested",
                txn_of(vec![txn_op(many(129), vec![])]),
                Some("etcdserver: too many operations in txn request"),
            ),
            (
                "129 compares",
                pb::TxnRequest {
                    compare: vec![pb::Compare::default(); 129],
                    success: vec![],
                    failure: vec![],
                },
                Some("etcdserver: too many operations in txn request"),
            ),
            (
                "bad op inside",
                txn_of(vec![put_op("")]),
                Some("etcdserver: key is not provided"),
            ),
            (
                "bad nested op",
                txn_of(vec![txn_op(vec![], vec![range_op("")])]),
                Some("etcdserver: key is not provided"),
            ),
            (
                "put twice",
                txn_of(vec![put_op("a"), put_op("a")]),
                Some("etcdserver: duplicate key given in txn request"),
            ),
            (
                "put and delete same key",
                txn_of(vec![put_op("a"), del_op("a", "")]),
                Some("etcdserver: duplicate key given in txn request"),
            ),
            (
                "put inside deleted range",
                txn_of(vec![del_op("a", "c"), put_op("b")]),
                Some("etcdserver: duplicate key given in txn request"),
            ),
            (
                "put outside deleted range",
                txn_of(vec![del_op("a", "c"), put_op("c")]),
                None,
            ),
            (
                "put under unbounded delete",
                txn_of(vec![del_op("a", "\0"), put_op("zz")]),
                Some("etcdserver: duplicate key given in txn request"),
            ),
            (
                "overlapping deletes ok",
                txn_of(vec![del_op("a", "c"), del_op("b", "d")]),
                None,
            ),
            (
                "reads of a written key ok",
                txn_of(vec![put_op("a"), range_op("a")]),
                None,
            ),
            (
                "nested put clashes with outer put",
                txn_of(vec![put_op("a"), txn_op(vec![put_op("a")], vec![])]),
                Some("etcdserver: duplicate key given in txn request"),
            ),
            (
                "nested put under outer delete",
                txn_of(vec![del_op("a", "z"), txn_op(vec![], vec![put_op("b")])]),
                Some("etcdserver: duplicate key given in txn request"),
            ),
            (
                "outer put under nested delete",
                txn_of(vec![txn_op(vec![del_op("a", "z")], vec![]), put_op("b")]),
                Some("etcdserver: duplicate key given in txn request"),
            ),
            (
                "same put in then and else ok",
                txn_of(vec![txn_op(vec![put_op("a")], vec![put_op("a")])]),
                None,
            ),
            (
                "two nested txns put same key",
                txn_of(vec![
                    txn_op(vec![put_op("a")], vec![]),
                    txn_op(vec![put_op("a")], vec![]),
                ]),
                Some("etcdserver: duplicate key given in txn request"),
            ),
            (
                "same key in success and failure branch ok",
                pb::TxnRequest {
                    compare: vec![],
                    success: vec![put_op("a")],
                    failure: vec![put_op("a")],
                },
                None,
            ),
        ];
        for (name, req, want) in rows {
            let got = txn(&req, DEFAULT_MAX_TXN_OPS).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), want, "{name}");
        }
    }
}
