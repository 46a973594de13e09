//! Store-level tests: one table row per etcd rule, durability across reopen, and a model check.

use super::*;
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request;
use pb::response_op::Response;
use redb::ReadableTableMetadata;
use std::collections::BTreeMap;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("db")).unwrap();
    (dir, s)
}

#[derive(Clone)]
enum Op {
    Put(&'static str, &'static str),
    PutLease(&'static str, &'static str, i64),
    Del(&'static str, &'static str),
    Grant(i64),
    Revoke(i64),
    Compact(i64),
    Txn(pb::TxnRequest),
}

fn put_req(k: &str, v: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

fn del_req(k: &str, end: &str) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: k.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

fn range_req(k: &str, end: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: k.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

fn op_put(k: &str, v: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestPut(put_req(k, v))),
    }
}
fn op_put_lease(k: &str, v: &str, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestPut(pb::PutRequest {
            lease,
            ..put_req(k, v)
        })),
    }
}
fn op_del(k: &str, end: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestDeleteRange(del_req(k, end))),
    }
}
fn op_range(k: &str, end: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestRange(range_req(k, end))),
    }
}
fn op_txn(t: pb::TxnRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestTxn(t)),
    }
}

fn cmp(
    key: &str,
    end: &str,
    target: CompareTarget,
    result: CompareResult,
    tu: TargetUnion,
) -> pb::Compare {
    pb::Compare {
        result: result as i32,
        target: target as i32,
        key: key.into(),
        range_end: end.into(),
        target_union: Some(tu),
    }
}

fn apply(s: &Store, ops: &[Op]) {
    let mut b = s.write_batch().unwrap();
    for op in ops {
        match op {
            Op::Put(k, v) => drop(b.put(&put_req(k, v)).unwrap()),
            Op::PutLease(k, v, l) => drop(
                b.put(&pb::PutRequest {
                    lease: *l,
                    ..put_req(k, v)
                })
                .unwrap(),
            ),
            Op::Del(k, e) => drop(b.delete_range(&del_req(k, e)).unwrap()),
            Op::Grant(id) => b.lease_grant(*id, 60).unwrap(),
            Op::Revoke(id) => drop(b.lease_revoke(*id).unwrap()),
            Op::Compact(r) => drop(b.compact(*r).unwrap()),
            Op::Txn(t) => drop(b.txn(t).unwrap()),
        }
    }
    b.commit(false).unwrap();
}

fn get(s: &Store, k: &str) -> Option<mvccpb::KeyValue> {
    s.range(&range_req(k, "")).unwrap().kvs.into_iter().next()
}

fn pairs(kvs: &[mvccpb::KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}

/// a=1 @2, b=2 @3, c=3 @4, a=11 @5, d=4 @6, delete c @7. Current revision 7.
fn base_ops() -> Vec<Op> {
    vec![
        Op::Put("a", "1"),
        Op::Put("b", "2"),
        Op::Put("c", "3"),
        Op::Put("a", "11"),
        Op::Put("d", "4"),
        Op::Del("c", ""),
    ]
}

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Store>();
}

#[test]
fn revision_rules() {
    let rows: Vec<(&str, Vec<Op>, i64)> = vec![
        ("empty store is at revision 1", vec![], 1),
        ("a put bumps by one", vec![Op::Put("a", "1")], 2),
        (
            "re-putting the same value still bumps",
            vec![Op::Put("a", "1"), Op::Put("a", "1")],
            3,
        ),
        ("deleting nothing does not bump", vec![Op::Del("a", "")], 1),
        (
            "deleting a key bumps",
            vec![Op::Put("a", "1"), Op::Del("a", "")],
            3,
        ),
        (
            "deleting many keys bumps once",
            vec![
                Op::Put("a", "1"),
                Op::Put("b", "1"),
                Op::Put("c", "1"),
                Op::Del("a", "\0"),
            ],
            5,
        ),
        (
            "read-only txn does not bump",
            vec![Op::Txn(pb::TxnRequest {
                compare: vec![],
                success: vec![op_range("a", "")],
                failure: vec![],
            })],
            1,
        ),
        (
            "txn with deletes of nothing does not bump",
            vec![Op::Txn(pb::TxnRequest {
                compare: vec![],
                success: vec![op_del("a", "z")],
                failure: vec![],
            })],
            1,
        ),
        (
            "txn with several writes bumps once",
            vec![Op::Txn(pb::TxnRequest {
                compare: vec![],
                success: vec![
                    op_put("a", "1"),
                    op_put("b", "2"),
                    op_txn(pb::TxnRequest {
                        compare: vec![],
                        success: vec![op_put("c", "3")],
                        failure: vec![],
                    }),
                ],
                failure: vec![],
            })],
            2,
        ),
        ("lease grant does not bump", vec![Op::Grant(7)], 1),
        (
            "revoking a lease without keys does not bump",
            vec![Op::Grant(7), Op::Revoke(7)],
            1,
        ),
        (
            "revoking a lease with keys bumps once",
            vec![
                Op::Grant(7),
                Op::PutLease("a", "1", 7),
                Op::PutLease("b", "1", 7),
                Op::Revoke(7),
            ],
            4,
        ),
        (
            "compaction does not bump",
            vec![Op::Put("a", "1"), Op::Compact(2)],
            2,
        ),
    ];
    for (name, ops, want) in rows {
        let (_d, s) = open();
        apply(&s, &ops);
        assert_eq!(s.current_revision(), want, "{name}");
        // The header of a read carries the same revision.
        let hdr = s.range(&range_req("a", "")).unwrap().header.unwrap();
        assert_eq!(hdr.revision, want, "{name}: range header");
    }
}

enum Want {
    Kvs(Vec<(&'static str, &'static str)>, bool, i64),
    Err(&'static str),
}

/// A read-only txn in a read transaction gives exactly what the write path gives it: same
/// branch, responses, headers and errors, and no revision bump.
#[test]
fn read_txn_matches_the_write_path() {
    let (_d, s) = open();
    apply(&s, &base_ops());
    apply(&s, &[Op::Compact(3)]);
    let eq_a = |v: &str| {
        cmp(
            "a",
            "",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(v.into()),
        )
    };
    let at = |k: &str, rev: i64| pb::RequestOp {
        request: Some(Request::RequestRange(pb::RangeRequest {
            key: k.into(),
            revision: rev,
            ..Default::default()
        })),
    };
    let bad_sort = pb::RequestOp {
        request: Some(Request::RequestRange(pb::RangeRequest {
            key: "a".into(),
            sort_order: 9,
            ..Default::default()
        })),
    };
    let rows: Vec<(&str, pb::TxnRequest)> = vec![
        ("empty", pb::TxnRequest::default()),
        (
            "success branch",
            pb::TxnRequest {
                compare: vec![eq_a("11")],
                success: vec![op_range("a", "z"), op_range("c", "")],
                failure: vec![op_range("b", "")],
            },
        ),
        (
            "failure branch",
            pb::TxnRequest {
                compare: vec![eq_a("nope")],
                success: vec![op_range("a", "")],
                failure: vec![op_range("b", ""), pb::RequestOp { request: None }],
            },
        ),
        (
            "nested",
            pb::TxnRequest {
                compare: vec![],
                success: vec![op_txn(pb::TxnRequest {
                    compare: vec![eq_a("11")],
                    success: vec![op_range("d", "")],
                    failure: vec![],
                })],
                failure: vec![],
            },
        ),
        (
            "old revision",
            pb::TxnRequest {
                success: vec![at("a", 4)],
                ..Default::default()
            },
        ),
        (
            "compacted",
            pb::TxnRequest {
                success: vec![at("a", 2)],
                ..Default::default()
            },
        ),
        (
            "future",
            pb::TxnRequest {
                success: vec![at("a", 99)],
                ..Default::default()
            },
        ),
        (
            "bad sort",
            pb::TxnRequest {
                success: vec![bad_sort],
                ..Default::default()
            },
        ),
    ];
    for (name, t) in rows {
        let before = s.current_revision();
        let via_write = {
            let mut b = s.write_batch().unwrap();
            let r = b.txn(&t).map(|(resp, events)| {
                assert!(events.is_empty(), "{name}");
                resp
            });
            drop(b);
            r
        };
        let via_read = s.read_txn(&t);
        match (via_write, via_read) {
            (Ok(w), Ok(r)) => assert_eq!(w, r, "{name}"),
            (Err(w), Err(r)) => assert_eq!(w.to_string(), r.to_string(), "{name}"),
            (w, r) => panic!("{name}: write path {w:?}, read path {r:?}"),
        }
        assert_eq!(s.current_revision(), before, "{name}");
    }
    let with_put = pb::TxnRequest {
        success: vec![op_put("x", "1")],
        ..Default::default()
    };
    assert!(s.read_txn(&with_put).is_err(), "writes are refused");
}

#[test]
fn range_rules() {
    use pb::range_request::{SortOrder as O, SortTarget as T};
    let sorted = |order: O, target: T| pb::RangeRequest {
        sort_order: order as i32,
        sort_target: target as i32,
        ..range_req("a", "\0")
    };
    let all = || range_req("\0", "\0");
    let rows: Vec<(&str, pb::RangeRequest, Want)> = vec![
        (
            "single key",
            range_req("a", ""),
            Want::Kvs(vec![("a", "11")], false, 1),
        ),
        (
            "missing key is empty, not an error",
            range_req("zz", ""),
            Want::Kvs(vec![], false, 0),
        ),
        (
            "deleted key is absent",
            range_req("c", ""),
            Want::Kvs(vec![], false, 0),
        ),
        (
            "interval [a, c)",
            range_req("a", "c"),
            Want::Kvs(vec![("a", "11"), ("b", "2")], false, 2),
        ),
        (
            "prefix a -> range_end b",
            range_req("a", "b"),
            Want::Kvs(vec![("a", "11")], false, 1),
        ),
        (
            "range_end \\0 = every key >= key",
            range_req("b", "\0"),
            Want::Kvs(vec![("b", "2"), ("d", "4")], false, 2),
        ),
        (
            "key \\0 range_end \\0 = everything",
            all(),
            Want::Kvs(vec![("a", "11"), ("b", "2"), ("d", "4")], false, 3),
        ),
        (
            "range_end before key selects nothing",
            range_req("d", "b"),
            Want::Kvs(vec![], false, 0),
        ),
        (
            "limit cuts kvs, count ignores it",
            pb::RangeRequest { limit: 2, ..all() },
            Want::Kvs(vec![("a", "11"), ("b", "2")], true, 3),
        ),
        (
            "limit equal to size has no more",
            pb::RangeRequest { limit: 3, ..all() },
            Want::Kvs(vec![("a", "11"), ("b", "2"), ("d", "4")], false, 3),
        ),
        (
            "revision 0 is latest",
            pb::RangeRequest {
                revision: 0,
                ..all()
            },
            Want::Kvs(vec![("a", "11"), ("b", "2"), ("d", "4")], false, 3),
        ),
        (
            "negative revision is latest",
            pb::RangeRequest {
                revision: -3,
                ..all()
            },
            Want::Kvs(vec![("a", "11"), ("b", "2"), ("d", "4")], false, 3),
        ),
        (
            "current revision",
            pb::RangeRequest {
                revision: 7,
                ..all()
            },
            Want::Kvs(vec![("a", "11"), ("b", "2"), ("d", "4")], false, 3),
        ),
        (
            "old revision sees old values and deleted keys",
            pb::RangeRequest {
                revision: 4,
                ..all()
            },
            Want::Kvs(vec![("a", "1"), ("b", "2"), ("c", "3")], false, 3),
        ),
        (
            "old revision before later keys existed",
            pb::RangeRequest {
                revision: 2,
                ..all()
            },
            Want::Kvs(vec![("a", "1")], false, 1),
        ),
        (
            "revision 1 is empty",
            pb::RangeRequest {
                revision: 1,
                ..all()
            },
            Want::Kvs(vec![], false, 0),
        ),
        (
            "old revision just before a delete",
            pb::RangeRequest {
                revision: 6,
                ..all()
            },
            Want::Kvs(
                vec![("a", "11"), ("b", "2"), ("c", "3"), ("d", "4")],
                false,
                4,
            ),
        ),
        (
            "old revision single key",
            pb::RangeRequest {
                revision: 3,
                ..range_req("a", "")
            },
            Want::Kvs(vec![("a", "1")], false, 1),
        ),
        (
            "old revision with limit",
            pb::RangeRequest {
                revision: 4,
                limit: 2,
                ..all()
            },
            Want::Kvs(vec![("a", "1"), ("b", "2")], true, 3),
        ),
        (
            "future revision",
            pb::RangeRequest {
                revision: 8,
                ..all()
            },
            Want::Err("mvcc: required revision is a future revision"),
        ),
        (
            "count_only returns no kvs",
            pb::RangeRequest {
                count_only: true,
                ..all()
            },
            Want::Kvs(vec![], false, 3),
        ),
        (
            "count_only with limit still counts all",
            pb::RangeRequest {
                count_only: true,
                limit: 1,
                ..all()
            },
            Want::Kvs(vec![], false, 3),
        ),
        (
            "keys_only drops values",
            pb::RangeRequest {
                keys_only: true,
                ..all()
            },
            Want::Kvs(vec![("a", ""), ("b", ""), ("d", "")], false, 3),
        ),
        (
            "KEY target NONE = natural ascending",
            sorted(O::None, T::Key),
            Want::Kvs(vec![("a", "11"), ("b", "2"), ("d", "4")], false, 3),
        ),
        (
            "KEY ASCEND",
            sorted(O::Ascend, T::Key),
            Want::Kvs(vec![("a", "11"), ("b", "2"), ("d", "4")], false, 3),
        ),
        (
            "KEY DESCEND",
            sorted(O::Descend, T::Key),
            Want::Kvs(vec![("d", "4"), ("b", "2"), ("a", "11")], false, 3),
        ),
        (
            "KEY DESCEND with limit",
            pb::RangeRequest {
                limit: 2,
                ..sorted(O::Descend, T::Key)
            },
            Want::Kvs(vec![("d", "4"), ("b", "2")], true, 3),
        ),
        (
            "VERSION with NONE means ASCEND",
            sorted(O::None, T::Version),
            Want::Kvs(vec![("b", "2"), ("d", "4"), ("a", "11")], false, 3),
        ),
        (
            "VERSION DESCEND",
            sorted(O::Descend, T::Version),
            Want::Kvs(vec![("a", "11"), ("b", "2"), ("d", "4")], false, 3),
        ),
        (
            "CREATE ASCEND",
            sorted(O::Ascend, T::Create),
            Want::Kvs(vec![("a", "11"), ("b", "2"), ("d", "4")], false, 3),
        ),
        (
            "CREATE DESCEND",
            sorted(O::Descend, T::Create),
            Want::Kvs(vec![("d", "4"), ("b", "2"), ("a", "11")], false, 3),
        ),
        (
            "MOD ASCEND",
            sorted(O::Ascend, T::Mod),
            Want::Kvs(vec![("b", "2"), ("a", "11"), ("d", "4")], false, 3),
        ),
        (
            "MOD DESCEND",
            sorted(O::Descend, T::Mod),
            Want::Kvs(vec![("d", "4"), ("a", "11"), ("b", "2")], false, 3),
        ),
        (
            "VALUE ASCEND (bytewise)",
            sorted(O::Ascend, T::Value),
            Want::Kvs(vec![("a", "11"), ("b", "2"), ("d", "4")], false, 3),
        ),
        (
            "VALUE DESCEND",
            sorted(O::Descend, T::Value),
            Want::Kvs(vec![("d", "4"), ("b", "2"), ("a", "11")], false, 3),
        ),
        (
            "sort before limit",
            pb::RangeRequest {
                limit: 1,
                ..sorted(O::Descend, T::Mod)
            },
            Want::Kvs(vec![("d", "4")], true, 3),
        ),
        (
            "keys_only with VALUE sort orders by value, drops it",
            pb::RangeRequest {
                keys_only: true,
                ..sorted(O::Descend, T::Value)
            },
            Want::Kvs(vec![("d", ""), ("b", ""), ("a", "")], false, 3),
        ),
        (
            "invalid sort order",
            pb::RangeRequest {
                sort_order: 9,
                ..all()
            },
            Want::Err("etcdserver: invalid sort option"),
        ),
        (
            "min_mod_revision (inclusive), count ignores filters",
            pb::RangeRequest {
                min_mod_revision: 5,
                ..all()
            },
            Want::Kvs(vec![("a", "11"), ("d", "4")], false, 3),
        ),
        (
            "max_mod_revision (inclusive)",
            pb::RangeRequest {
                max_mod_revision: 3,
                ..all()
            },
            Want::Kvs(vec![("b", "2")], false, 3),
        ),
        (
            "min_create_revision",
            pb::RangeRequest {
                min_create_revision: 3,
                ..all()
            },
            Want::Kvs(vec![("b", "2"), ("d", "4")], false, 3),
        ),
        (
            "max_create_revision",
            pb::RangeRequest {
                max_create_revision: 2,
                ..all()
            },
            Want::Kvs(vec![("a", "11")], false, 3),
        ),
        (
            "filter before limit; more after filtering",
            pb::RangeRequest {
                min_mod_revision: 5,
                limit: 1,
                ..all()
            },
            Want::Kvs(vec![("a", "11")], true, 3),
        ),
        (
            "limit equal to filtered size: no more",
            pb::RangeRequest {
                min_mod_revision: 5,
                limit: 2,
                ..all()
            },
            Want::Kvs(vec![("a", "11"), ("d", "4")], false, 3),
        ),
        (
            "filters at an old revision",
            pb::RangeRequest {
                revision: 4,
                min_create_revision: 3,
                ..all()
            },
            Want::Kvs(vec![("b", "2"), ("c", "3")], false, 3),
        ),
    ];
    let (_d, s) = open();
    apply(&s, &base_ops());
    for (name, req, want) in rows {
        match (s.range(&req), want) {
            (Ok(resp), Want::Kvs(kvs, more, count)) => {
                let want_kvs: Vec<(String, String)> = kvs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                assert_eq!(pairs(&resp.kvs), want_kvs, "{name}: kvs");
                assert_eq!(resp.more, more, "{name}: more");
                assert_eq!(resp.count, count, "{name}: count");
                assert_eq!(
                    resp.header.unwrap().revision,
                    7,
                    "{name}: header is the current revision"
                );
            }
            (Err(e), Want::Err(msg)) => assert_eq!(e.to_string(), msg, "{name}"),
            (Ok(resp), Want::Err(msg)) => panic!("{name}: wanted {msg}, got {resp:?}"),
            (Err(e), Want::Kvs(..)) => panic!("{name}: unexpected error {e}"),
        }
    }
}

#[test]
fn kv_fields_follow_etcd() {
    let (_d, s) = open();
    apply(&s, &base_ops());
    let a = get(&s, "a").unwrap();
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version, a.lease),
        (2, 5, 2, 0)
    );
    // Re-created after a delete: new create revision, version restarts at 1.
    apply(&s, &[Op::Put("c", "again")]);
    let c = get(&s, "c").unwrap();
    assert_eq!((c.create_revision, c.mod_revision, c.version), (8, 8, 1));
    // The old incarnation is still readable at its revision.
    let old = s
        .range(&pb::RangeRequest {
            revision: 4,
            ..range_req("c", "")
        })
        .unwrap()
        .kvs;
    assert_eq!(
        (old[0].create_revision, old[0].mod_revision, old[0].version),
        (4, 4, 1)
    );
}

/// (prev value and lease in the response, value after, lease after)
type PutOutcome = (Option<(&'static str, i64)>, &'static str, i64);

#[test]
fn put_rules() {
    struct Row {
        name: &'static str,
        setup: Vec<Op>,
        req: pb::PutRequest,
        want: Result<PutOutcome, &'static str>,
    }
    let rows = vec![
        Row {
            name: "new key, no prev_kv",
            setup: vec![],
            req: pb::PutRequest {
                prev_kv: true,
                ..put_req("k", "v")
            },
            want: Ok((None, "v", 0)),
        },
        Row {
            name: "prev_kv returned when asked",
            setup: vec![Op::Put("k", "old")],
            req: pb::PutRequest {
                prev_kv: true,
                ..put_req("k", "v")
            },
            want: Ok((Some(("old", 0)), "v", 0)),
        },
        Row {
            name: "prev_kv omitted when not asked",
            setup: vec![Op::Put("k", "old")],
            req: put_req("k", "v"),
            want: Ok((None, "v", 0)),
        },
        Row {
            name: "ignore_value keeps the value",
            setup: vec![Op::Put("k", "old")],
            req: pb::PutRequest {
                ignore_value: true,
                ..put_req("k", "")
            },
            want: Ok((None, "old", 0)),
        },
        Row {
            name: "ignore_value may change the lease",
            setup: vec![Op::Grant(5), Op::Put("k", "old")],
            req: pb::PutRequest {
                ignore_value: true,
                lease: 5,
                ..put_req("k", "")
            },
            want: Ok((None, "old", 5)),
        },
        Row {
            name: "ignore_lease keeps the lease",
            setup: vec![Op::Grant(5), Op::PutLease("k", "old", 5)],
            req: pb::PutRequest {
                ignore_lease: true,
                ..put_req("k", "new")
            },
            want: Ok((None, "new", 5)),
        },
        Row {
            name: "ignore_value on a missing key",
            setup: vec![],
            req: pb::PutRequest {
                ignore_value: true,
                ..put_req("k", "")
            },
            want: Err("etcdserver: key not found"),
        },
        Row {
            name: "ignore_lease on a missing key",
            setup: vec![],
            req: pb::PutRequest {
                ignore_lease: true,
                ..put_req("k", "v")
            },
            want: Err("etcdserver: key not found"),
        },
        Row {
            name: "ignore_value on a deleted key",
            setup: vec![Op::Put("k", "v"), Op::Del("k", "")],
            req: pb::PutRequest {
                ignore_value: true,
                ..put_req("k", "")
            },
            want: Err("etcdserver: key not found"),
        },
        Row {
            name: "unknown lease",
            setup: vec![Op::Put("k", "old")],
            req: pb::PutRequest {
                lease: 9,
                ..put_req("k", "v")
            },
            want: Err("etcdserver: requested lease not found"),
        },
        Row {
            name: "revoked lease",
            setup: vec![Op::Grant(9), Op::Revoke(9)],
            req: pb::PutRequest {
                lease: 9,
                ..put_req("k", "v")
            },
            want: Err("etcdserver: requested lease not found"),
        },
        Row {
            name: "lease attached",
            setup: vec![Op::Grant(9)],
            req: pb::PutRequest {
                lease: 9,
                ..put_req("k", "v")
            },
            want: Ok((None, "v", 9)),
        },
        Row {
            name: "lease 0 detaches",
            setup: vec![Op::Grant(9), Op::PutLease("k", "v", 9)],
            req: put_req("k", "v2"),
            want: Ok((None, "v2", 0)),
        },
        Row {
            name: "re-put moves to another lease",
            setup: vec![Op::Grant(9), Op::Grant(10), Op::PutLease("k", "v", 9)],
            req: pb::PutRequest {
                lease: 10,
                prev_kv: true,
                ..put_req("k", "v2")
            },
            want: Ok((Some(("v", 9)), "v2", 10)),
        },
    ];
    for row in rows {
        let (_d, s) = open();
        apply(&s, &row.setup);
        let before_rev = s.current_revision();
        let before = get(&s, "k");
        let before_leases: Vec<_> = s
            .leases()
            .unwrap()
            .iter()
            .map(|l| (l.id, s.lease_keys(l.id).unwrap()))
            .collect();
        let mut b = s.write_batch().unwrap();
        let got = b.put(&row.req);
        match (got, row.want) {
            (Ok((resp, events)), Ok((prev, value, lease))) => {
                b.commit(true).unwrap();
                let name = row.name;
                assert_eq!(resp.header.unwrap().revision, before_rev + 1, "{name}");
                assert_eq!(
                    resp.prev_kv
                        .as_ref()
                        .map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.lease)),
                    prev.map(|(v, l)| (v.to_string(), l)),
                    "{name}: prev_kv"
                );
                let kv = get(&s, "k").unwrap();
                assert_eq!(
                    (kv.value.as_slice(), kv.lease),
                    (value.as_bytes(), lease),
                    "{name}: stored"
                );
                assert_eq!(events.len(), 1);
                assert_eq!(events[0].r#type, mvccpb::event::EventType::Put as i32);
                assert_eq!(events[0].kv.as_ref(), Some(&kv), "{name}: event kv");
                assert_eq!(
                    events[0].prev_kv, before,
                    "{name}: event prev_kv is always filled"
                );
                for l in s.leases().unwrap() {
                    let keys = s.lease_keys(l.id).unwrap();
                    assert_eq!(
                        keys.contains(&b"k".to_vec()),
                        l.id == lease,
                        "{name}: lease {} keys {keys:?}",
                        l.id
                    );
                }
            }
            (Err(e), Err(msg)) => {
                assert_eq!(e.to_string(), msg, "{}", row.name);
                b.commit(true).unwrap();
                assert_eq!(
                    s.current_revision(),
                    before_rev,
                    "{}: failed put changed the revision",
                    row.name
                );
                assert_eq!(
                    get(&s, "k"),
                    before,
                    "{}: failed put changed the key",
                    row.name
                );
                let after_leases: Vec<_> = s
                    .leases()
                    .unwrap()
                    .iter()
                    .map(|l| (l.id, s.lease_keys(l.id).unwrap()))
                    .collect();
                assert_eq!(after_leases, before_leases, "{}", row.name);
            }
            (Ok(r), Err(msg)) => panic!("{}: wanted {msg}, got {r:?}", row.name),
            (Err(e), Ok(_)) => panic!("{}: unexpected {e}", row.name),
        }
    }
}

#[test]
fn delete_rules() {
    let (_d, s) = open();
    apply(
        &s,
        &[
            Op::Grant(3),
            Op::PutLease("a", "1", 3),
            Op::Put("b", "2"),
            Op::Put("c", "3"),
        ],
    );
    let mut b = s.write_batch().unwrap();
    let (resp, events) = b
        .delete_range(&pb::DeleteRangeRequest {
            prev_kv: true,
            ..del_req("a", "c")
        })
        .unwrap();
    b.commit(false).unwrap();
    assert_eq!(resp.deleted, 2);
    assert_eq!(resp.header.unwrap().revision, 5);
    assert_eq!(
        pairs(&resp.prev_kvs),
        vec![("a".into(), "1".into()), ("b".into(), "2".into())]
    );
    assert_eq!(events.len(), 2);
    for (ev, key) in events.iter().zip(["a", "b"]) {
        assert_eq!(ev.r#type, mvccpb::event::EventType::Delete as i32);
        // DELETE event kv: key and the delete revision, every other field zero.
        assert_eq!(
            ev.kv,
            Some(mvccpb::KeyValue {
                key: key.into(),
                mod_revision: 5,
                ..Default::default()
            })
        );
        assert_eq!(ev.prev_kv.as_ref().unwrap().key, key.as_bytes());
    }
    assert!(
        s.lease_keys(3).unwrap().is_empty(),
        "a deleted key leaves its lease"
    );
    // Without prev_kv: count only. Deleting nothing reports the unchanged revision.
    let mut b = s.write_batch().unwrap();
    let (resp, events) = b.delete_range(&del_req("c", "")).unwrap();
    assert_eq!((resp.deleted, resp.prev_kvs.len(), events.len()), (1, 0, 1));
    let (resp, events) = b.delete_range(&del_req("zz", "")).unwrap();
    assert_eq!(
        (resp.deleted, events.len(), resp.header.unwrap().revision),
        (0, 0, 6)
    );
    b.commit(false).unwrap();
    assert_eq!(s.current_revision(), 6);
}

#[test]
fn compare_rules() {
    use CompareResult::*;
    use CompareTarget as T;
    let v = TargetUnion::Version;
    let rows: Vec<(&str, Vec<pb::Compare>, bool)> = vec![
        (
            "VERSION EQUAL",
            vec![cmp("a", "", T::Version, Equal, v(2))],
            true,
        ),
        (
            "VERSION GREATER",
            vec![cmp("a", "", T::Version, Greater, v(1))],
            true,
        ),
        (
            "VERSION LESS false",
            vec![cmp("a", "", T::Version, Less, v(2))],
            false,
        ),
        (
            "VERSION NOT_EQUAL false",
            vec![cmp("a", "", T::Version, NotEqual, v(2))],
            false,
        ),
        (
            "CREATE EQUAL",
            vec![cmp(
                "a",
                "",
                T::Create,
                Equal,
                TargetUnion::CreateRevision(2),
            )],
            true,
        ),
        (
            "MOD EQUAL",
            vec![cmp("a", "", T::Mod, Equal, TargetUnion::ModRevision(5))],
            true,
        ),
        (
            "MOD GREATER false",
            vec![cmp("a", "", T::Mod, Greater, TargetUnion::ModRevision(5))],
            false,
        ),
        (
            "MOD LESS",
            vec![cmp("a", "", T::Mod, Less, TargetUnion::ModRevision(6))],
            true,
        ),
        (
            "VALUE EQUAL",
            vec![cmp(
                "a",
                "",
                T::Value,
                Equal,
                TargetUnion::Value(b"11".to_vec()),
            )],
            true,
        ),
        (
            "VALUE LESS is bytewise",
            vec![cmp(
                "a",
                "",
                T::Value,
                Less,
                TargetUnion::Value(b"2".to_vec()),
            )],
            true,
        ),
        (
            "VALUE NOT_EQUAL",
            vec![cmp(
                "a",
                "",
                T::Value,
                NotEqual,
                TargetUnion::Value(b"x".to_vec()),
            )],
            true,
        ),
        (
            "LEASE EQUAL",
            vec![cmp("l", "", T::Lease, Equal, TargetUnion::Lease(4))],
            true,
        ),
        (
            "LEASE of a key without lease is 0",
            vec![cmp("a", "", T::Lease, Equal, TargetUnion::Lease(0))],
            true,
        ),
        (
            "missing key: VERSION is 0",
            vec![cmp("zz", "", T::Version, Equal, v(0))],
            true,
        ),
        (
            "missing key: MOD is 0 (kube create)",
            vec![cmp("zz", "", T::Mod, Equal, TargetUnion::ModRevision(0))],
            true,
        ),
        (
            "missing key: CREATE LESS 1",
            vec![cmp(
                "zz",
                "",
                T::Create,
                Less,
                TargetUnion::CreateRevision(1),
            )],
            true,
        ),
        (
            "deleted key compares as missing",
            vec![cmp("c", "", T::Version, Equal, v(0))],
            true,
        ),
        (
            "missing key: VALUE EQUAL empty is false",
            vec![cmp("zz", "", T::Value, Equal, TargetUnion::Value(vec![]))],
            false,
        ),
        (
            "missing key: VALUE NOT_EQUAL is false",
            vec![cmp(
                "zz",
                "",
                T::Value,
                NotEqual,
                TargetUnion::Value(b"x".to_vec()),
            )],
            false,
        ),
        (
            "range: all keys satisfy",
            vec![cmp("a", "e", T::Version, Greater, v(0))],
            true,
        ),
        (
            "range: one key fails",
            vec![cmp("a", "e", T::Version, Equal, v(1))],
            false,
        ),
        (
            "range over \\0: all keys",
            vec![cmp("a", "\0", T::Mod, Less, TargetUnion::ModRevision(100))],
            true,
        ),
        (
            "range with no keys compares as 0",
            vec![cmp("x", "z", T::Mod, Equal, TargetUnion::ModRevision(0))],
            true,
        ),
        (
            "range with no keys: VALUE false",
            vec![cmp("x", "z", T::Value, Equal, TargetUnion::Value(vec![]))],
            false,
        ),
        (
            "compares are ANDed: both true",
            vec![
                cmp("a", "", T::Version, Equal, v(2)),
                cmp("b", "", T::Version, Equal, v(1)),
            ],
            true,
        ),
        (
            "compares are ANDed: one false",
            vec![
                cmp("a", "", T::Version, Equal, v(2)),
                cmp("b", "", T::Version, Equal, v(9)),
            ],
            false,
        ),
        ("no compares succeed", vec![], true),
    ];
    let (_d, s) = open();
    let mut setup = base_ops();
    setup.extend([Op::Grant(4), Op::PutLease("l", "x", 4)]);
    apply(&s, &setup);
    for (name, compare, want) in rows {
        let before = s.current_revision();
        let txn = pb::TxnRequest {
            compare,
            success: vec![op_range("a", "")],
            failure: vec![op_range("b", "")],
        };
        let mut b = s.write_batch().unwrap();
        let (resp, events) = b.txn(&txn).unwrap();
        b.commit(false).unwrap();
        assert_eq!(resp.succeeded, want, "{name}");
        let Some(Response::ResponseRange(r)) = &resp.responses[0].response else {
            panic!("{name}: {resp:?}")
        };
        assert_eq!(
            r.kvs[0].key,
            if want { b"a".to_vec() } else { b"b".to_vec() },
            "{name}: branch"
        );
        assert!(events.is_empty());
        assert_eq!(
            resp.header.unwrap().revision,
            before,
            "{name}: read-only txn header is current"
        );
    }
}

#[test]
fn txn_rules() {
    let (_d, s) = open();
    apply(&s, &[Op::Put("a", "1"), Op::Grant(1)]); // rev 2
                                                   // Writes share one revision; sub-revisions order events; ranges see earlier writes.
    let txn = pb::TxnRequest {
        compare: vec![cmp(
            "a",
            "",
            CompareTarget::Mod,
            CompareResult::Equal,
            TargetUnion::ModRevision(2),
        )],
        success: vec![
            op_put("b", "2"),
            op_range("b", ""),
            op_del("a", ""),
            op_txn(pb::TxnRequest {
                // Nested compares see the state before the outer txn wrote anything.
                compare: vec![cmp(
                    "b",
                    "",
                    CompareTarget::Version,
                    CompareResult::Equal,
                    TargetUnion::Version(0),
                )],
                success: vec![op_put_lease("c", "3", 1)],
                failure: vec![op_put("x", "wrong")],
            }),
        ],
        failure: vec![],
    };
    let mut b = s.write_batch().unwrap();
    let (resp, events) = b.txn(&txn).unwrap();
    b.commit(false).unwrap();
    assert!(resp.succeeded);
    assert_eq!(s.current_revision(), 3);
    assert_eq!(resp.header.as_ref().unwrap().revision, 3);
    let kinds: Vec<(String, i64, i32)> = events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
                e.r#type,
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![("b".into(), 3, 0), ("a".into(), 3, 1), ("c".into(), 3, 0)]
    );
    let Some(Response::ResponseRange(r)) = &resp.responses[1].response else {
        panic!()
    };
    assert_eq!(
        pairs(&r.kvs),
        vec![("b".into(), "2".into())],
        "range sees the txn's own put"
    );
    assert_eq!(r.header.as_ref().unwrap().revision, 3);
    let Some(Response::ResponseTxn(inner)) = &resp.responses[3].response else {
        panic!()
    };
    assert!(inner.succeeded);
    assert_eq!(
        inner.header.as_ref().unwrap().revision,
        0,
        "a nested txn's header is empty, as in etcd"
    );
    assert_eq!(get(&s, "a"), None);
    assert_eq!(get(&s, "x"), None);
    assert_eq!(s.lease_keys(1).unwrap(), vec![b"c".to_vec()]);

    // A txn that would fail part-way (unknown lease, missing key for ignore_value, future
    // revision) applies nothing.
    let failing: Vec<(&str, pb::TxnRequest, &str)> = vec![
        (
            "unknown lease in a later put",
            pb::TxnRequest {
                compare: vec![],
                success: vec![op_put("p", "1"), op_put_lease("q", "1", 99)],
                failure: vec![],
            },
            "etcdserver: requested lease not found",
        ),
        (
            "unknown lease in a nested put",
            pb::TxnRequest {
                compare: vec![],
                success: vec![
                    op_put("p", "1"),
                    op_txn(pb::TxnRequest {
                        compare: vec![],
                        success: vec![op_put_lease("q", "1", 99)],
                        failure: vec![],
                    }),
                ],
                failure: vec![],
            },
            "etcdserver: requested lease not found",
        ),
        (
            "ignore_value on a missing key",
            pb::TxnRequest {
                compare: vec![],
                success: vec![
                    op_put("p", "1"),
                    pb::RequestOp {
                        request: Some(Request::RequestPut(pb::PutRequest {
                            ignore_value: true,
                            ..put_req("nope", "")
                        })),
                    },
                ],
                failure: vec![],
            },
            "etcdserver: key not found",
        ),
        (
            "future revision range",
            pb::TxnRequest {
                compare: vec![],
                success: vec![
                    op_put("p", "1"),
                    pb::RequestOp {
                        request: Some(Request::RequestRange(pb::RangeRequest {
                            revision: 100,
                            ..range_req("b", "")
                        })),
                    },
                ],
                failure: vec![],
            },
            "mvcc: required revision is a future revision",
        ),
    ];
    for (name, txn, msg) in failing {
        let before = s.current_revision();
        let mut b = s.write_batch().unwrap();
        assert_eq!(b.txn(&txn).unwrap_err().to_string(), msg, "{name}");
        b.commit(false).unwrap();
        assert_eq!(s.current_revision(), before, "{name}");
        assert_eq!(get(&s, "p"), None, "{name}: nothing applied");
    }
    // An unknown lease on the branch not taken does not matter.
    let txn = pb::TxnRequest {
        compare: vec![cmp(
            "zz",
            "",
            CompareTarget::Version,
            CompareResult::Greater,
            TargetUnion::Version(0),
        )],
        success: vec![op_put_lease("p", "1", 99)],
        failure: vec![op_put("p", "else")],
    };
    apply(&s, &[Op::Txn(txn)]);
    assert_eq!(get(&s, "p").unwrap().value, b"else");
}

#[test]
fn kube_apiserver_patterns() {
    let (_d, s) = open();
    let mod_eq = |k: &str, r: i64| {
        cmp(
            k,
            "",
            CompareTarget::Mod,
            CompareResult::Equal,
            TargetUnion::ModRevision(r),
        )
    };
    let run = |t: pb::TxnRequest| {
        let mut b = s.write_batch().unwrap();
        let r = b.txn(&t).unwrap().0;
        b.commit(false).unwrap();
        r
    };
    // create
    let r = run(pb::TxnRequest {
        compare: vec![mod_eq("/registry/pods/x", 0)],
        success: vec![op_put("/registry/pods/x", "v1")],
        failure: vec![],
    });
    assert!(r.succeeded);
    let rev = r.header.unwrap().revision;
    // create again fails
    assert!(
        !run(pb::TxnRequest {
            compare: vec![mod_eq("/registry/pods/x", 0)],
            success: vec![op_put("/registry/pods/x", "v1")],
            failure: vec![]
        })
        .succeeded
    );
    // update with stale revision gets the current object back
    let r = run(pb::TxnRequest {
        compare: vec![mod_eq("/registry/pods/x", rev - 1)],
        success: vec![op_put("/registry/pods/x", "v2")],
        failure: vec![op_range("/registry/pods/x", "")],
    });
    assert!(!r.succeeded);
    let Some(Response::ResponseRange(got)) = &r.responses[0].response else {
        panic!()
    };
    assert_eq!(got.kvs[0].mod_revision, rev);
    // update, then delete with the right revisions
    let r = run(pb::TxnRequest {
        compare: vec![mod_eq("/registry/pods/x", rev)],
        success: vec![op_put("/registry/pods/x", "v2")],
        failure: vec![],
    });
    let rev2 = r.header.unwrap().revision;
    assert_eq!(rev2, rev + 1);
    let r = run(pb::TxnRequest {
        compare: vec![mod_eq("/registry/pods/x", rev2)],
        success: vec![op_del("/registry/pods/x", "")],
        failure: vec![],
    });
    assert!(r.succeeded);
    assert_eq!(get(&s, "/registry/pods/x"), None);
    // paged list at one revision: next page from lastKey + "\0"
    apply(
        &s,
        &(0..5)
            .map(|i| Op::Put(["/r/0", "/r/1", "/r/2", "/r/3", "/r/4"][i], "v"))
            .collect::<Vec<_>>(),
    );
    let at = s.current_revision();
    apply(&s, &[Op::Put("/r/5", "late"), Op::Del("/r/0", "")]);
    let mut start = b"/r/".to_vec();
    let mut seen = Vec::new();
    loop {
        let resp = s
            .range(&pb::RangeRequest {
                key: start.clone(),
                range_end: b"/r0".to_vec(),
                limit: 2,
                revision: at,
                ..Default::default()
            })
            .unwrap();
        seen.extend(resp.kvs.iter().map(|kv| kv.key.clone()));
        if !resp.more {
            break;
        }
        start = resp.kvs.last().unwrap().key.clone();
        start.push(0);
    }
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[0], b"/r/0");
}

#[test]
fn compaction_rules() {
    let (_d, s) = open();
    apply(&s, &base_ops()); // a@2,b@3,c@4,a@5,d@6,del c@7
    let err = |r: i64| {
        let mut b = s.write_batch().unwrap();
        b.compact(r).unwrap_err().to_string()
    };
    assert_eq!(err(8), "mvcc: required revision is a future revision");
    apply(&s, &[Op::Compact(4)]);
    assert_eq!(s.compacted_revision(), 4);
    assert_eq!(err(4), "mvcc: required revision has been compacted");
    assert_eq!(err(3), "mvcc: required revision has been compacted");
    let at = |rev: i64| {
        s.range(&pb::RangeRequest {
            revision: rev,
            ..range_req("\0", "\0")
        })
    };
    assert_eq!(
        at(3).unwrap_err().to_string(),
        "mvcc: required revision has been compacted"
    );
    // == compacted is allowed and still complete.
    assert_eq!(
        pairs(&at(4).unwrap().kvs),
        vec![
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("c".into(), "3".into())
        ]
    );
    assert_eq!(pairs(&at(6).unwrap().kvs).len(), 4);
    assert_eq!(
        s.events_since(3, b"\0", b"\0", false, 100)
            .unwrap_err()
            .to_string(),
        "mvcc: required revision has been compacted"
    );
    // A watch may start at exactly the compacted revision (etcd serves it): whatever of
    // revisions >= 4 survived compaction comes back.
    let from_compacted = s.events_since(4, b"\0", b"\0", false, 100).unwrap();
    assert!(from_compacted
        .iter()
        .all(|e| e.kv.as_ref().unwrap().mod_revision >= 4));
    assert_eq!(
        from_compacted.len(),
        s.events_since(5, b"\0", b"\0", false, 100).unwrap().len()
            + from_compacted
                .iter()
                .filter(|e| e.kv.as_ref().unwrap().mod_revision == 4)
                .count()
    );
    let evs = s.events_since(5, b"\0", b"\0", true, 100).unwrap();
    assert_eq!(evs.len(), 3);
    // prev_kv of a@5 is a@2, kept because it was a's newest revision <= 4.
    assert_eq!(evs[0].prev_kv.as_ref().unwrap().value, b"1");

    // Compacting past the delete of c drops c entirely; re-creating it starts fresh.
    apply(&s, &[Op::Compact(7)]);
    assert_eq!(
        pairs(&at(7).unwrap().kvs),
        vec![
            ("a".into(), "11".into()),
            ("b".into(), "2".into()),
            ("d".into(), "4".into())
        ]
    );
    {
        let rtx = s.db().begin_read().unwrap();
        let latest = rtx.open_table(LATEST).unwrap();
        assert!(
            latest.get(b"c".as_slice()).unwrap().is_none(),
            "tombstone of c removed"
        );
        let history = rtx.open_table(HISTORY).unwrap();
        // Exactly one revision per live key remains: its newest, which `latest` names and
        // the key index leaves out.
        assert_eq!(history.len().unwrap(), 3);
        assert_eq!(rtx.open_table(KEY_INDEX).unwrap().len().unwrap(), 0);
    }
    apply(&s, &[Op::Put("c", "new")]);
    let c = get(&s, "c").unwrap();
    assert_eq!((c.create_revision, c.version), (8, 1));
    assert_eq!(s.current_revision(), 8);
}

#[test]
fn events_since_rules() {
    let (_d, s) = open();
    apply(&s, &[Op::Put("a", "1"), Op::Put("b", "1")]); // 2, 3
    apply(
        &s,
        &[Op::Txn(pb::TxnRequest {
            compare: vec![],
            success: vec![op_put("a", "2"), op_put("c", "1")],
            failure: vec![],
        })],
    ); // 4
    apply(&s, &[Op::Del("a", "")]); // 5
    let revs = |evs: &[mvccpb::Event]| {
        evs.iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect::<Vec<_>>()
    };
    let all = s.events_since(1, b"\0", b"\0", false, 100).unwrap();
    assert_eq!(revs(&all), vec![2, 3, 4, 4, 5]);
    assert!(all.iter().all(|e| e.prev_kv.is_none()));
    // A txn's events are never split by max_revisions.
    assert_eq!(
        revs(&s.events_since(3, b"\0", b"\0", false, 2).unwrap()),
        vec![3, 4, 4]
    );
    assert_eq!(
        revs(&s.events_since(3, b"\0", b"\0", false, 1).unwrap()),
        vec![3]
    );
    // Key filter; max_revisions counts revisions with matching events.
    assert_eq!(
        revs(&s.events_since(1, b"a", b"", true, 2).unwrap()),
        vec![2, 4]
    );
    let a = s.events_since(1, b"a", b"", true, 100).unwrap();
    assert_eq!(a[0].prev_kv, None);
    assert_eq!(a[1].prev_kv.as_ref().unwrap().value, b"1");
    assert_eq!(a[2].r#type, mvccpb::event::EventType::Delete as i32);
    assert_eq!(a[2].prev_kv.as_ref().unwrap().value, b"2");
    assert_eq!(
        a[2].kv,
        Some(mvccpb::KeyValue {
            key: b"a".to_vec(),
            mod_revision: 5,
            ..Default::default()
        })
    );
    // Past the current revision: nothing.
    assert!(s
        .events_since(6, b"\0", b"\0", false, 100)
        .unwrap()
        .is_empty());
    // Re-created key: prev_kv of the new PUT is none (the previous revision was a delete).
    apply(&s, &[Op::Put("a", "3")]);
    let evs = s.events_since(6, b"a", b"", true, 100).unwrap();
    assert_eq!(evs[0].prev_kv, None);
}

#[test]
fn lease_rules() {
    let (_d, s) = open();
    apply(
        &s,
        &[
            Op::Grant(1),
            Op::Grant(2),
            Op::PutLease("a", "1", 1),
            Op::PutLease("b", "1", 1),
            Op::PutLease("c", "1", 2),
        ],
    );
    let mut b = s.write_batch().unwrap();
    assert_eq!(
        b.lease_grant(1, 10).unwrap_err().to_string(),
        "etcdserver: lease already exists"
    );
    assert_eq!(
        b.lease_revoke(3).unwrap_err().to_string(),
        "etcdserver: requested lease not found"
    );
    assert_eq!(
        b.lease_checkpoint(3, 5).unwrap_err().to_string(),
        "etcdserver: requested lease not found"
    );
    b.lease_checkpoint(2, 17).unwrap();
    b.commit(false).unwrap();
    assert_eq!(
        s.lease(2).unwrap(),
        Some(LeaseRecord {
            id: 2,
            ttl: 60,
            remaining_ttl: 17
        })
    );
    assert_eq!(s.lease(3).unwrap(), None);
    assert_eq!(
        s.leases().unwrap().iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(s.lease_keys(1).unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
    let mut b = s.write_batch().unwrap();
    let events = b.lease_revoke(1).unwrap();
    b.commit(false).unwrap();
    assert_eq!(events.len(), 2);
    assert!(events
        .iter()
        .all(|e| e.kv.as_ref().unwrap().mod_revision == 5 && e.r#type == 1));
    assert_eq!(s.current_revision(), 5);
    assert_eq!(s.lease(1).unwrap(), None);
    assert!(s.lease_keys(1).unwrap().is_empty());
    assert_eq!(get(&s, "a"), None);
    assert_eq!(get(&s, "c").unwrap().lease, 2);
}

#[test]
fn reopen_keeps_committed_data_and_applied_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let hash;
    {
        let s = Store::open(&path).unwrap();
        assert_eq!(s.applied_index(), (0, 0));
        let mut b = s.write_batch().unwrap();
        b.lease_grant(5, 30).unwrap();
        b.put(&pb::PutRequest {
            lease: 5,
            ..put_req("a", "1")
        })
        .unwrap();
        b.put(&put_req("b", "2")).unwrap();
        b.set_applied_index(10, 2).unwrap();
        b.set_meta("members", b"m1,m2").unwrap();
        b.commit(false).unwrap();
        let mut b = s.write_batch().unwrap();
        b.compact(2).unwrap();
        b.put(&put_req("a", "3")).unwrap();
        b.set_applied_index(11, 2).unwrap();
        b.commit(false).unwrap();
        // An uncommitted batch disappears.
        let mut b = s.write_batch().unwrap();
        b.put(&put_req("lost", "x")).unwrap();
        b.set_applied_index(12, 2).unwrap();
        drop(b);
        assert_eq!(s.applied_index(), (11, 2));
        s.sync().unwrap();
        hash = s.hash().unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.current_revision(), 4);
    assert_eq!(s.compacted_revision(), 2);
    assert_eq!(s.applied_index(), (11, 2));
    assert_eq!(s.meta("members").unwrap(), Some(b"m1,m2".to_vec()));
    assert_eq!(s.meta("other").unwrap(), None);
    assert_eq!(get(&s, "a").unwrap().value, b"3");
    assert_eq!(get(&s, "lost"), None);
    assert!(
        s.lease_keys(5).unwrap().is_empty(),
        "re-put without lease detached a"
    );
    assert_eq!(s.lease(5).unwrap().unwrap().ttl, 30);
    assert_eq!(s.hash().unwrap(), hash);
}

#[test]
fn reopen_after_durable_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let s = Store::open(&path).unwrap();
        let mut b = s.write_batch().unwrap();
        b.put(&put_req("k", "v")).unwrap();
        b.set_applied_index(3, 1).unwrap();
        b.commit(true).unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!((s.current_revision(), s.applied_index()), (2, (3, 1)));
    assert_eq!(get(&s, "k").unwrap().value, b"v");
}

#[test]
fn reads_run_beside_an_open_batch() {
    let (_d, s) = open();
    apply(&s, &[Op::Put("a", "1")]);
    let mut b = s.write_batch().unwrap();
    b.put(&put_req("a", "2")).unwrap();
    // Not visible until commit, and readers are not blocked.
    std::thread::scope(|scope| {
        scope
            .spawn(|| assert_eq!(get(&s, "a").unwrap().value, b"1"))
            .join()
            .unwrap();
    });
    b.commit(false).unwrap();
    assert_eq!(get(&s, "a").unwrap().value, b"2");
}

#[test]
fn hashes_snapshot_and_size() {
    let ops = base_ops();
    let (_d1, s1) = open();
    let (_d2, s2) = open();
    apply(&s1, &ops);
    apply(&s2, &ops);
    let h1 = s1.hash_kv(0).unwrap();
    assert_eq!(h1, s2.hash_kv(0).unwrap());
    assert_eq!((h1.1, h1.2), (0, 7));
    let old = s1.hash_kv(5).unwrap();
    apply(&s1, &[Op::Put("z", "1")]);
    assert_ne!(s1.hash_kv(0).unwrap().0, h1.0);
    assert_eq!(
        s1.hash_kv(5).unwrap(),
        old,
        "hash at an old revision is stable"
    );
    assert_eq!(
        s1.hash_kv(9).unwrap_err().to_string(),
        "mvcc: required revision is a future revision"
    );
    apply(&s1, &[Op::Compact(6)]);
    assert_eq!(
        s1.hash_kv(5).unwrap_err().to_string(),
        "mvcc: required revision has been compacted"
    );

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("snap.db");
    s1.snapshot_to(&dest).unwrap();
    assert!(s1.snapshot_to(&dest).is_err(), "never overwrites");
    let copy = Store::open(&dest).unwrap();
    assert_eq!(copy.hash().unwrap(), s1.hash().unwrap());
    assert_eq!(copy.current_revision(), 8);
    assert_eq!(copy.compacted_revision(), 6);
    assert_eq!(
        copy.range(&range_req("\0", "\0")).unwrap(),
        s1.range(&range_req("\0", "\0")).unwrap()
    );

    // A member far behind takes the whole keyspace over: s2 had other data, now it has
    // exactly s1's, revision and compaction included.
    drop(copy);
    apply(&s2, &[Op::Put("only-in-s2", "x")]);
    // A file that is not a keyspace is refused and changes nothing.
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, b"not a redb file").unwrap();
    let before = s2.hash().unwrap();
    assert!(matches!(
        s2.restore_from(&garbage),
        Err(Error::BadSnapshot(_))
    ));
    assert_eq!(s2.hash().unwrap(), before);
    s2.restore_from(&dest).unwrap();
    assert_eq!(s2.hash().unwrap(), s1.hash().unwrap());
    assert_eq!(s2.current_revision(), 8);
    assert_eq!(s2.compacted_revision(), 6);
    assert_eq!(s2.applied_index(), s1.applied_index());
    assert_eq!(
        s2.range(&range_req("\0", "\0")).unwrap(),
        s1.range(&range_req("\0", "\0")).unwrap()
    );

    let (file, in_use) = s1.db_size().unwrap();
    assert!(file > 0 && in_use > 0 && in_use <= file, "{file} {in_use}");
}

mod model {
    //! Random put/delete/txn/compact sequences checked against a naive model that keeps the
    //! whole keyspace at every revision.
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum MOp {
        Put(u8, u8),
        Del(u8, u8),
        /// if mod(key) == mod_rev_of_current(key) (or 0) then put else delete range
        Txn(u8, bool, u8, u8),
        Compact(u8),
    }

    /// Keys that are prefixes of each other and contain 0x00/0xff, so index seeks for one key
    /// must never pick up another.
    fn key(k: u8) -> Vec<u8> {
        const KEYS: [&[u8]; 17] = [
            b"a",
            b"a\0",
            b"a\0\0",
            b"ab",
            b"abc",
            b"b",
            b"b\xff",
            b"b\xff\xff",
            b"c",
            b"k",
            b"k0",
            b"k00",
            b"k1",
            b"k\xff",
            b"l",
            b"ll",
            b"m",
        ];
        KEYS[k as usize % KEYS.len()].to_vec()
    }
    fn bput(k: Vec<u8>, v: Vec<u8>) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestPut(pb::PutRequest {
                key: k,
                value: v,
                ..Default::default()
            })),
        }
    }

    #[derive(Clone, Debug, PartialEq)]
    struct MKv {
        value: Vec<u8>,
        create: i64,
        modr: i64,
        version: i64,
    }

    type State = BTreeMap<Vec<u8>, MKv>;

    fn mop() -> impl Strategy<Value = MOp> {
        prop_oneof![
            4 => (0u8..6, any::<u8>()).prop_map(|(k, v)| MOp::Put(k, v)),
            2 => (0u8..6, 0u8..4).prop_map(|(k, w)| MOp::Del(k, w)),
            2 => (0u8..6, any::<bool>(), 0u8..6, any::<u8>()).prop_map(|(k, m, o, v)| MOp::Txn(k, m, o, v)),
            1 => any::<u8>().prop_map(MOp::Compact),
        ]
    }

    fn model_put(st: &mut State, k: Vec<u8>, v: Vec<u8>, rev: i64) {
        let (create, version) = st.get(&k).map_or((rev, 1), |p| (p.create, p.version + 1));
        st.insert(
            k,
            MKv {
                value: v,
                create,
                modr: rev,
                version,
            },
        );
    }

    fn model_del(st: &mut State, lo: &[u8], hi: &[u8]) -> bool {
        let keys: Vec<_> = st
            .keys()
            .filter(|k| k.as_slice() >= lo && k.as_slice() < hi)
            .cloned()
            .collect();
        for k in &keys {
            st.remove(k);
        }
        !keys.is_empty()
    }

    fn check_at(s: &Store, st: &State, rev: i64) {
        let resp = s
            .range(&pb::RangeRequest {
                revision: rev,
                ..range_req("\0", "\0")
            })
            .unwrap();
        let got: Vec<(Vec<u8>, MKv)> = resp
            .kvs
            .iter()
            .map(|kv| {
                (
                    kv.key.clone(),
                    MKv {
                        value: kv.value.clone(),
                        create: kv.create_revision,
                        modr: kv.mod_revision,
                        version: kv.version,
                    },
                )
            })
            .collect();
        let want: Vec<(Vec<u8>, MKv)> = st.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(got, want, "at revision {rev}");
        assert_eq!(resp.count as usize, st.len());
        // A paged read with limit 2 sees the same keys.
        let page = s
            .range(&pb::RangeRequest {
                revision: rev,
                limit: 2,
                ..range_req("\0", "\0")
            })
            .unwrap();
        assert_eq!(page.more, st.len() > 2);
        assert_eq!(page.count as usize, st.len());

        // Sorted and filtered reads: filter, then sort (stable, key order on ties), then limit.
        use pb::range_request::{SortOrder as O, SortTarget as T};
        let specs = [
            (O::Descend, T::Mod, rev / 2, 3i64),
            (O::Ascend, T::Value, 0, 2),
            (O::None, T::Version, 0, 0),
            (O::Descend, T::Key, 0, 2),
            (O::Descend, T::Create, 3, 0),
        ];
        for (order, target, min_mod, limit) in specs {
            let resp = s
                .range(&pb::RangeRequest {
                    revision: rev,
                    sort_order: order as i32,
                    sort_target: target as i32,
                    min_mod_revision: min_mod,
                    limit,
                    ..range_req("\0", "\0")
                })
                .unwrap();
            let mut want: Vec<(&Vec<u8>, &MKv)> = st
                .iter()
                .filter(|(_, v)| min_mod == 0 || v.modr >= min_mod)
                .collect();
            let field = |e: &(&Vec<u8>, &MKv)| -> (Vec<u8>, i64) {
                match target {
                    T::Key => (e.0.clone(), 0),
                    T::Version => (vec![], e.1.version),
                    T::Create => (vec![], e.1.create),
                    T::Mod => (vec![], e.1.modr),
                    T::Value => (e.1.value.clone(), 0),
                }
            };
            if order == O::Descend {
                want.sort_by_key(|e| std::cmp::Reverse(field(e)));
            } else {
                want.sort_by_key(|e| field(e));
            }
            let more = limit > 0 && want.len() > limit as usize;
            if limit > 0 {
                want.truncate(limit as usize);
            }
            let want_keys: Vec<Vec<u8>> = want.iter().map(|e| e.0.clone()).collect();
            let got_keys: Vec<Vec<u8>> = resp.kvs.iter().map(|kv| kv.key.clone()).collect();
            assert_eq!(
                got_keys, want_keys,
                "{order:?} {target:?} min_mod {min_mod} limit {limit} at {rev}"
            );
            assert_eq!(resp.more, more, "{order:?} {target:?} more");
            assert_eq!(resp.count as usize, st.len());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
        #[test]
        fn store_matches_model(ops in proptest::collection::vec(mop(), 1..40)) {
            let (_d, s) = open();
            // states[r] = keyspace at revision r (index 0 unused).
            let mut states: Vec<State> = vec![State::new(), State::new()];
            let mut compacted = 0i64;
            for op in ops {
                let cur = s.current_revision();
                let mut st = states[cur as usize].clone();
                let rev = cur + 1;
                let mut b = s.write_batch().unwrap();
                let changed = match op {
                    MOp::Put(k, v) => {
                        b.put(&pb::PutRequest { key: key(k), value: vec![v], ..Default::default() }).unwrap();
                        model_put(&mut st, key(k), vec![v], rev);
                        true
                    }
                    MOp::Del(k, w) => {
                        let hi = key(k.saturating_add(w).min(9));
                        let mut hi = if w == 0 { key(k) } else { hi };
                        if w == 0 { hi.push(0); }
                        b.delete_range(&pb::DeleteRangeRequest { key: key(k), range_end: if w == 0 { vec![] } else { hi.clone() }, ..Default::default() }).unwrap();
                        model_del(&mut st, &key(k), &hi)
                    }
                    MOp::Txn(k, use_current, other, v) => {
                        let want_mod = if use_current { st.get(&key(k)).map_or(0, |kv| kv.modr) } else { 999 };
                        let t = pb::TxnRequest {
                            compare: vec![pb::Compare { key: key(k), ..cmp("", "", CompareTarget::Mod, CompareResult::Equal, TargetUnion::ModRevision(want_mod)) }],
                            success: vec![bput(key(k), b"t".to_vec()), bput(key((k + 1 + other) % 7 + 10), v.to_string().into_bytes())],
                            failure: vec![pb::RequestOp { request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest { key: key(other), ..Default::default() })) }],
                        };
                        let (resp, _) = b.txn(&t).unwrap();
                        prop_assert_eq!(resp.succeeded, use_current);
                        if use_current {
                            model_put(&mut st, key(k), b"t".to_vec(), rev);
                            model_put(&mut st, key((k + 1 + other) % 7 + 10), v.to_string().into_bytes(), rev);
                            true
                        } else {
                            let mut hi = key(other);
                            hi.push(0);
                            model_del(&mut st, &key(other), &hi)
                        }
                    }
                    MOp::Compact(r) => {
                        let target = (r as i64) % (cur + 1);
                        match b.compact(target) {
                            Ok(_) => { prop_assert!(target > compacted); compacted = target; }
                            Err(Error::Compacted) => prop_assert!(target <= compacted),
                            Err(e) => panic!("{e}"),
                        }
                        false
                    }
                };
                b.commit(false).unwrap();
                if changed {
                    states.push(st);
                }
                prop_assert_eq!(s.current_revision() as usize, states.len() - 1);
                // Every readable revision matches the model; older ones are compacted.
                for r in 1..states.len() as i64 {
                    if r < compacted {
                        let res = s.range(&pb::RangeRequest { revision: r, ..range_req("\0", "\0") });
                        prop_assert!(matches!(res, Err(Error::Compacted)), "revision {} below compacted {}", r, compacted);
                    } else {
                        check_at(&s, &states[r as usize], r);
                    }
                }
                check_at(&s, &states[states.len() - 1], 0);
                // Watch replay from just after the compaction rebuilds the latest state.
                let mut replay = states[(compacted.max(1)) as usize].clone();
                for ev in s.events_since(compacted + 1, b"\0", b"\0", true, usize::MAX).unwrap() {
                    let kv = ev.kv.unwrap();
                    if ev.r#type == 1 {
                        prop_assert!(replay.remove(&kv.key).is_some());
                    } else {
                        prop_assert_eq!(ev.prev_kv.map(|p| p.value), replay.get(&kv.key).map(|p| p.value.clone()));
                        replay.insert(kv.key.clone(), MKv { value: kv.value, create: kv.create_revision, modr: kv.mod_revision, version: kv.version });
                    }
                }
                prop_assert_eq!(&replay, &states[states.len() - 1]);
            }
        }
    }
}

#[test]
fn compare_grid_every_target_and_result() {
    use CompareResult as R;
    use CompareTarget as T;
    // Key "g": version 2, create 2, mod 3, value "m", lease 7.
    let (_d, s) = open();
    apply(
        &s,
        &[
            Op::Grant(7),
            Op::PutLease("g", "a", 7),
            Op::PutLease("g", "m", 7),
        ],
    );
    let kv = get(&s, "g").unwrap();
    assert_eq!(
        (kv.version, kv.create_revision, kv.mod_revision, kv.lease),
        (2, 2, 3, 7)
    );
    // (target, operand below, equal, above)
    let targets: Vec<(T, TargetUnion, TargetUnion, TargetUnion)> = vec![
        (
            T::Version,
            TargetUnion::Version(1),
            TargetUnion::Version(2),
            TargetUnion::Version(3),
        ),
        (
            T::Create,
            TargetUnion::CreateRevision(1),
            TargetUnion::CreateRevision(2),
            TargetUnion::CreateRevision(3),
        ),
        (
            T::Mod,
            TargetUnion::ModRevision(2),
            TargetUnion::ModRevision(3),
            TargetUnion::ModRevision(4),
        ),
        (
            T::Value,
            TargetUnion::Value(b"l".to_vec()),
            TargetUnion::Value(b"m".to_vec()),
            TargetUnion::Value(b"n".to_vec()),
        ),
        (
            T::Lease,
            TargetUnion::Lease(6),
            TargetUnion::Lease(7),
            TargetUnion::Lease(8),
        ),
    ];
    // (result, want vs below, vs equal, vs above): the stored field is compared to the operand.
    let results = [
        (R::Equal, [false, true, false]),
        (R::Greater, [true, false, false]),
        (R::Less, [false, false, true]),
        (R::NotEqual, [true, false, true]),
    ];
    for (target, below, equal, above) in targets {
        for (result, wants) in results {
            for (operand, want) in [below.clone(), equal.clone(), above.clone()]
                .into_iter()
                .zip(wants)
            {
                let name = format!("{target:?} {result:?} {operand:?}");
                let txn = pb::TxnRequest {
                    compare: vec![cmp("g", "", target, result, operand)],
                    success: vec![],
                    failure: vec![],
                };
                let mut b = s.write_batch().unwrap();
                assert_eq!(b.txn(&txn).unwrap().0.succeeded, want, "{name}");
            }
        }
    }
}

/// Overwrites the `latest` row of `key` with `row` (what a flipped byte on disk amounts to).
fn tamper_latest(s: &Store, key: &[u8], f: impl FnOnce(&mut Vec<u8>)) {
    let txn = s.db().begin_write().unwrap();
    {
        let mut t = txn.open_table(LATEST).unwrap();
        let mut row = t.get(key).unwrap().unwrap().value().to_vec();
        f(&mut row);
        t.insert(key, row.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn kv_hash_covers_latest_and_verify_finds_corruption() {
    let ops = base_ops();
    let (_d1, s1) = open();
    let (d2, s2) = open();
    apply(&s1, &ops);
    apply(&s2, &ops);
    let good = s1.kv_hash(0).unwrap();
    assert_eq!(good, s2.kv_hash(0).unwrap());
    assert_eq!(good.inconsistency, None);
    assert!(s2.verify().unwrap().ok(), "{:?}", s2.verify().unwrap());
    assert_eq!(s1.hash().unwrap(), s2.hash().unwrap(), "Hash is comparable");
    // A flipped byte in `latest` only (its create revision): history still says the old one.
    let key = s2
        .range(&pb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .unwrap()
        .kvs[0]
        .key
        .clone();
    tamper_latest(&s2, &key, |row| {
        row[1] ^= 0x20;
    });
    let bad = s2.kv_hash(0).unwrap();
    assert_ne!(bad.hash, good.hash, "a corrupt latest changes HashKV");
    assert!(bad
        .inconsistency
        .as_deref()
        .unwrap()
        .contains("latest record differs from its history record"));
    let report = s2.verify().unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    let path = d2.path().join("db");
    drop(s2);
    let err = Store::open_with(&path, true).err().unwrap().to_string();
    assert!(err.contains("failed the keyspace check"), "{err}");
    // redb's own check passes (the tampering went through redb); only the cross-check sees it.
    check_pages(&path).unwrap();
}

/// The sequential check that runs on every start must see every kind of damage the detailed
/// check names (else a damaged keyspace would be served), and pass a healthy one (else every
/// start pays for the detailed check).
#[test]
fn the_sequential_keyspace_check_finds_what_the_detailed_one_finds() {
    type Tamper = fn(&redb::WriteTransaction);
    let big = "v".repeat(3 * crate::record::INLINE_MAX);
    let big: &'static str = Box::leak(big.into_boxed_str());
    let ops = vec![
        Op::Grant(7),
        Op::Put("a", "1"),
        Op::PutLease("b", "2", 7),
        Op::Put("c", "3"),
        Op::Put("a", "11"),
        Op::Put("big", big),
        Op::Del("c", ""),
        Op::Put("d", "4"),
    ];
    fn history_key_of(t: &redb::Table<HistoryKey, &'static [u8]>, key: &[u8]) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        for r in t.iter().unwrap() {
            let (k, v) = r.unwrap();
            let (m, s) = k.value();
            let (_, hk, _) = crate::record::decode_history(m, s, v.value()).unwrap();
            if hk == key {
                out.push((m, s));
            }
        }
        out
    }
    let cases: Vec<(&str, Tamper)> = vec![
        ("a latest row's create revision flipped", |w| {
            let mut t = w.open_table(LATEST).unwrap();
            let mut row = t.get(b"a".as_slice()).unwrap().unwrap().value().to_vec();
            row[1] ^= 0x20;
            t.insert(b"a".as_slice(), row.as_slice()).unwrap();
        }),
        ("a latest row removed", |w| {
            w.open_table(LATEST)
                .unwrap()
                .remove(b"d".as_slice())
                .unwrap();
        }),
        ("a latest row without history", |w| {
            let mut t = w.open_table(LATEST).unwrap();
            let row = t.get(b"d".as_slice()).unwrap().unwrap().value().to_vec();
            t.insert(b"dd".as_slice(), row.as_slice()).unwrap();
        }),
        ("the newest history record of a key removed", |w| {
            let mut t = w.open_table(HISTORY).unwrap();
            let revs = history_key_of(&t, b"d");
            t.remove(revs[revs.len() - 1]).unwrap();
        }),
        ("an older history record of a key removed", |w| {
            let mut t = w.open_table(HISTORY).unwrap();
            let revs = history_key_of(&t, b"a");
            t.remove(revs[0]).unwrap();
        }),
        ("a key index row removed", |w| {
            let t = w.open_table(HISTORY).unwrap();
            let revs = history_key_of(&t, b"a");
            let mut i = w.open_table(KEY_INDEX).unwrap();
            i.remove((b"a".as_slice(), revs[0].0, revs[0].1)).unwrap();
        }),
        ("a key's newest revision in the key index too", |w| {
            let t = w.open_table(HISTORY).unwrap();
            let revs = history_key_of(&t, b"d");
            let (m, s) = revs[revs.len() - 1];
            let mut i = w.open_table(KEY_INDEX).unwrap();
            i.insert((b"d".as_slice(), m, s), false).unwrap();
        }),
        ("a key index row of a key without a latest row", |w| {
            let t = w.open_table(HISTORY).unwrap();
            let revs = history_key_of(&t, b"a");
            let mut i = w.open_table(KEY_INDEX).unwrap();
            i.insert((b"aa".as_slice(), revs[0].0, revs[0].1), false)
                .unwrap();
        }),
        ("a key index row's tombstone flag flipped", |w| {
            let t = w.open_table(HISTORY).unwrap();
            let revs = history_key_of(&t, b"c");
            let mut i = w.open_table(KEY_INDEX).unwrap();
            i.insert((b"c".as_slice(), revs[0].0, revs[0].1), true)
                .unwrap();
        }),
        ("a chunk of a large value removed", |w| {
            let mut c = w.open_table(CHUNKS).unwrap();
            let first = c.iter().unwrap().next().unwrap().unwrap().0.value();
            c.remove(first).unwrap();
        }),
        ("a lease removed", |w| {
            w.open_table(LEASES).unwrap().remove(7).unwrap();
        }),
        ("a lease key list row removed", |w| {
            w.open_table(LEASE_KEYS)
                .unwrap()
                .remove((7, b"b".as_slice()))
                .unwrap();
        }),
        ("a lease key list row for a key not attached", |w| {
            w.open_table(LEASE_KEYS)
                .unwrap()
                .insert((7, b"a".as_slice()), ())
                .unwrap();
        }),
    ];
    let (_d, healthy) = open();
    apply(&healthy, &ops);
    assert_eq!(healthy.sequential_problem().unwrap(), None);
    assert!(healthy.verify().unwrap().ok());
    for (name, tamper) in cases {
        let (_d, s) = open();
        apply(&s, &ops);
        let w = s.db().begin_write().unwrap();
        tamper(&w);
        w.commit().unwrap();
        let quick = s.sequential_problem().unwrap();
        assert!(quick.is_some(), "{name}: the sequential check saw nothing");
        let report = s.verify().unwrap();
        assert!(
            !report.ok(),
            "{name}: the detailed check saw nothing ({quick:?})"
        );
    }
}

#[test]
fn compaction_records_a_hash_equal_to_a_later_hash_kv() {
    let (_d, s) = open();
    apply(&s, &base_ops());
    apply(&s, &[Op::Compact(5)]);
    let hashes = s.compaction_hashes();
    assert_eq!(hashes.len(), 1);
    assert_eq!((hashes[0].revision, hashes[0].compact_revision), (5, 5));
    apply(&s, &[Op::Put("zz", "later")]);
    assert_eq!(s.kv_hash(5).unwrap(), hashes[0]);
}

/// Overwrites then a compaction leave free pages in the file; a defragment gives them back
/// and keeps every key, its revisions, the hashes and the meta of the keyspace.
#[test]
fn defragment_reclaims_free_pages_and_keeps_the_data() {
    let (dir, s) = open();
    let value = vec![7u8; 2000];
    for round in 0..20 {
        let mut b = s.write_batch().unwrap();
        for i in 0..200 {
            b.put(&pb::PutRequest {
                key: format!("k{i:04}").into(),
                value: [value.as_slice(), &[round as u8]].concat(),
                ..Default::default()
            })
            .unwrap();
        }
        b.commit(true).unwrap();
    }
    let mut b = s.write_batch().unwrap();
    b.set_meta("m", b"v").unwrap();
    let rev = b.revision();
    b.compact(rev).unwrap();
    b.commit(true).unwrap();
    let before_hash = s.kv_hash(0).unwrap();
    let before_all = s.range(&range_req("\0", "\0")).unwrap();
    let (file_before, in_use_before) = s.db_size().unwrap();
    assert!(
        in_use_before < file_before / 2,
        "{in_use_before} of {file_before}"
    );

    let (a, b2) = s.defragment().unwrap();
    assert_eq!(a as i64, file_before);
    let (file_after, in_use_after) = s.db_size().unwrap();
    assert_eq!(b2 as i64, file_after);
    assert!(
        file_after < file_before / 2,
        "defragment left {file_after} of {file_before} bytes"
    );
    assert!(in_use_after <= file_after);
    assert!(!dir.path().join("db.defrag").exists());
    assert_eq!(s.kv_hash(0).unwrap(), before_hash);
    assert_eq!(s.range(&range_req("\0", "\0")).unwrap(), before_all);
    assert_eq!(s.meta("m").unwrap().as_deref(), Some(b"v".as_slice()));
    assert!(s.verify().unwrap().ok());
    // Writes go on against the new file, and the store reopens from it.
    let mut b = s.write_batch().unwrap();
    b.put(&put_req("after", "defrag")).unwrap();
    b.commit(true).unwrap();
    drop(s);
    let s = Store::open(&dir.path().join("db")).unwrap();
    assert_eq!(
        s.range(&range_req("after", "")).unwrap().kvs[0].value,
        b"defrag"
    );
    assert_eq!(
        s.range(&range_req("k0000", "")).unwrap().kvs[0].value.len(),
        2001
    );
}

/// A defragment killed before its rename leaves its copy next to the keyspace: the next
/// open removes it and serves the old file, untouched.
#[test]
fn an_interrupted_defragment_copy_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let s = Store::open(&path).unwrap();
        let mut b = s.write_batch().unwrap();
        b.put(&put_req("a", "1")).unwrap();
        b.commit(true).unwrap();
    }
    std::fs::write(dir.path().join("db.defrag"), b"half a copy").unwrap();
    let s = Store::open_with(&path, true).unwrap();
    assert!(!dir.path().join("db.defrag").exists());
    assert_eq!(s.range(&range_req("a", "")).unwrap().kvs[0].value, b"1");
}

/// Reads that run while a defragment swaps the file see consistent data before and after.
#[test]
fn reads_during_a_defragment_see_the_data() {
    let (_dir, s) = open();
    let mut b = s.write_batch().unwrap();
    for i in 0..2000 {
        b.put(&put_req(&format!("k{i:05}"), "v")).unwrap();
    }
    b.commit(true).unwrap();
    std::thread::scope(|sc| {
        let reader = sc.spawn(|| {
            for _ in 0..200 {
                let r = s
                    .range(&pb::RangeRequest {
                        key: b"k".to_vec(),
                        range_end: b"l".to_vec(),
                        count_only: true,
                        ..Default::default()
                    })
                    .unwrap();
                assert_eq!(r.count, 2000);
            }
        });
        for _ in 0..3 {
            s.defragment().unwrap();
        }
        reader.join().unwrap();
    });
}

/// A file closed cleanly passes redb's page check as clean: the "repaired on open (unclean
/// shutdown)" warning is kept for files that really needed a repair.
#[test]
fn a_cleanly_closed_file_checks_clean() {
    let (dir, s) = open();
    apply(&s, &base_ops());
    drop(s);
    let path = dir.path().join("db");
    assert!(
        check_pages(&path).unwrap(),
        "clean close reported as repaired"
    );
    assert!(check_pages(&path).unwrap(), "second check");
}

/// A new keyspace starts from the small-region template (`empty.redb`), so its file grows in
/// region steps instead of doubling: after 40 MB of values it is within two 4 MiB regions of
/// what its tables use. (A file of redb's default geometry would be 64 MiB here.)
#[test]
fn a_new_keyspace_file_stays_within_two_regions_of_its_data() {
    let (_d, s) = open();
    let mut seed = 1u64;
    for batch in 0..40 {
        let mut b = s.write_batch().unwrap();
        for i in 0..100 {
            let value: Vec<u8> = (0..10_000)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 33) as u8
                })
                .collect();
            b.put(&pb::PutRequest {
                key: format!("k/{batch:02}/{i:03}").into(),
                value,
                ..Default::default()
            })
            .unwrap();
        }
        b.commit(true).unwrap();
    }
    let (file, in_use) = s.db_size().unwrap();
    assert!(in_use > 40_000_000, "in use {in_use}");
    assert!(
        file <= in_use + 2 * (4 << 20),
        "file {file} B for {in_use} B in use: the template's regions are not in effect \
         (regenerate it with scripts/gen-redb-template.sh)"
    );
    assert_eq!(s.range(&range_req("k/", "k0")).unwrap().count, 4000);
}

/// A page's values come from one walk over `history` when their revisions lie together and
/// from one lookup each otherwise; both give every key its own value.
#[test]
fn range_values_match_point_gets_dense_and_scattered() {
    let (_d, s) = open();
    let mut b = s.write_batch().unwrap();
    for i in 0..200 {
        b.put(&put_req(&format!("k{i:03}"), &format!("v{i}")))
            .unwrap();
    }
    b.commit(false).unwrap();
    let check = |s: &Store| {
        let all = s.range(&range_req("k", "l")).unwrap().kvs;
        assert_eq!(all.len(), 200);
        for kv in &all {
            let k = String::from_utf8(kv.key.clone()).unwrap();
            assert_eq!(get(s, &k).unwrap().value, kv.value, "{k}");
        }
    };
    check(&s);
    // Rewrite every 7th key much later, with filler revisions in between: scattered.
    for round in 0..3 {
        let mut b = s.write_batch().unwrap();
        for i in (round..200).step_by(7) {
            b.put(&put_req(&format!("k{i:03}"), &format!("w{i}/{round}")))
                .unwrap();
            for f in 0..20 {
                b.put(&put_req(&format!("filler{f}"), "x")).unwrap();
            }
        }
        b.commit(false).unwrap();
        check(&s);
    }
}
