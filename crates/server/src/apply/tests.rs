//! The apply state machine, unit-tested through its seams: committed entries in, exact typed
//! responses, events, lessor/peer effects and persisted state out. No raft, network or
//! watchers: recorders stand in for them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrokv_proto::etcdserverpb::{
    compare, request_op, AlarmRequest, CompactionRequest, Compare, DeleteRangeRequest,
    LeaseGrantRequest, LeaseRevokeRequest, Member, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use ferrokv_proto::ferrokvpb::{InternalRaftRequest, LegacyInternalRequest, RequestHeader};
use ferrokv_proto::mvccpb::{event::EventType, Event};
use ferrokv_raftnode::eraftpb::{self, ConfChangeType, EntryType};
use ferrokv_raftnode::Committed;
use ferrokv_storage::Store;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::{oneshot, watch};

use super::seams::{DurableIndexSink, EventSink, PeerDirectory};
use super::{membership, Alarms, Applier, ApplyResult, DbSize, Lessor, Proposal, Waiters};

const ME: u64 = 1;

#[derive(Default)]
struct Recorder {
    durable: Mutex<Vec<u64>>,
    peers: Mutex<Vec<String>>,
    published: Mutex<Vec<(Vec<Event>, i64)>>,
}

impl DurableIndexSink for Recorder {
    fn report_durable_applied(&self, index: u64) {
        self.durable.lock().push(index);
    }
}

impl PeerDirectory for Recorder {
    fn add_peer(&self, id: u64, urls: Vec<String>) {
        self.peers.lock().push(format!("add {id} {urls:?}"));
    }
    fn remove_peer(&self, id: u64) {
        self.peers.lock().push(format!("remove {id}"));
    }
}

impl EventSink for Recorder {
    fn publish(&self, events: Vec<Event>, revision: i64) {
        self.published.lock().push((events, revision));
    }
    fn resync_all(&self, _revision: i64) {}
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    applier: Applier,
    rec: Arc<Recorder>,
    applied: watch::Receiver<u64>,
    stop_requested: Arc<watch::Sender<bool>>,
    next_index: u64,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
    let rec = Arc::new(Recorder::default());
    let (applied_tx, applied) = watch::channel(0);
    let stop_requested = Arc::new(watch::channel(false).0);
    let applier = Applier {
        store: store.clone(),
        raft: rec.clone(),
        events: rec.clone(),
        waiters: Arc::new(Waiters::default()),
        lessor: Arc::new(Lessor::default()),
        alarms: Arc::new(Alarms::default()),
        applied_tx,
        metrics: Arc::new(crate::metrics::Metrics::default()),
        db_size: DbSize::default(),
        stop: watch::channel(false).1,
        peers: rec.clone(),
        member_id: ME,
        request_stop: stop_requested.clone(),
        auth: Arc::new(crate::apply::AuthStore::new(
            crate::apply::AuthData::default(),
            std::time::Duration::from_secs(300),
        )),
        entry_format: crate::apply::EntryFormat::default(),
    };
    Fixture {
        _dir: dir,
        store,
        applier,
        rec,
        applied,
        stop_requested,
        next_index: 1,
    }
}

/// One normal entry carrying `p` under request id `id`, proposed with auth disabled.
fn entry<P: Proposal>(index: u64, id: u64, p: P) -> eraftpb::Entry {
    entry_as(index, id, p, "", 0)
}

/// One normal entry carrying `p`, proposed by `user` checked at auth revision `rev`.
fn entry_as<P: Proposal>(index: u64, id: u64, p: P, user: &str, rev: u64) -> eraftpb::Entry {
    normal_entry(
        index,
        InternalRaftRequest {
            header: Some(RequestHeader {
                id,
                username: user.into(),
                auth_revision: rev,
            }),
            request: Some(p.into_request()),
        }
        .encode_to_vec(),
    )
}

fn normal_entry(index: u64, data: Vec<u8>) -> eraftpb::Entry {
    let mut e = eraftpb::Entry {
        index,
        term: 1,
        ..Default::default()
    };
    e.set_entry_type(EntryType::EntryNormal);
    e.data = data.into();
    e
}

fn conf_change(index: u64, kind: ConfChangeType, member: Member) -> eraftpb::Entry {
    let cc = membership::conf_change(kind, member);
    let mut e = eraftpb::Entry {
        index,
        term: 1,
        ..Default::default()
    };
    e.set_entry_type(EntryType::EntryConfChangeV2);
    e.data = protobuf::Message::write_to_bytes(&cc).unwrap().into();
    e
}

impl Fixture {
    /// Applies `proposals` as one committed batch; the typed result of each.
    fn apply<P: Proposal>(&mut self, proposals: Vec<P>) -> Vec<ApplyResult<P::Response>> {
        let mut entries = Vec::new();
        let mut waiting: Vec<oneshot::Receiver<ApplyResult<P::Response>>> = Vec::new();
        for p in proposals {
            let (index, id) = (self.next_index, 1000 + self.next_index);
            self.next_index += 1;
            waiting.push(self.applier.waiters.register::<P>(id));
            entries.push(entry(index, id, p));
        }
        self.applier
            .apply_batch(Committed {
                entries,
                conf_state: None,
            })
            .unwrap();
        waiting
            .into_iter()
            .map(|mut rx| rx.try_recv().expect("completed after the batch"))
            .collect()
    }

    fn one<P: Proposal>(&mut self, p: P) -> ApplyResult<P::Response> {
        self.apply(vec![p]).pop().unwrap()
    }

    /// Applies one entry (its own batch) and returns what its waiter got.
    fn one_entry<P: Proposal>(
        &mut self,
        make: impl FnOnce(u64, u64) -> eraftpb::Entry,
    ) -> ApplyResult<P::Response> {
        let (index, id) = (self.next_index, 1000 + self.next_index);
        self.next_index += 1;
        let mut rx = self.applier.waiters.register::<P>(id);
        self.applier
            .apply_batch(Committed {
                entries: vec![make(index, id)],
                conf_state: None,
            })
            .unwrap();
        rx.try_recv().expect("completed after the batch")
    }

    /// `p` as `user` at auth revision `rev`.
    fn one_as<P: Proposal>(&mut self, p: P, user: &str, rev: u64) -> ApplyResult<P::Response> {
        self.one_entry::<P>(|index, id| entry_as(index, id, p, user, rev))
    }

    fn auth_revision(&self) -> u64 {
        self.applier.auth.data().revision
    }

    fn conf(&mut self, kind: ConfChangeType, member: Member) {
        let e = conf_change(self.next_index, kind, member);
        self.next_index += 1;
        self.applier
            .apply_batch(Committed {
                entries: vec![e],
                conf_state: None,
            })
            .unwrap();
    }

    fn keys(&self) -> Vec<String> {
        self.store
            .range(&RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            })
            .unwrap()
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

fn kinds(events: &[Event]) -> Vec<(EventType, String)> {
    events
        .iter()
        .map(|e| {
            let kv = e.kv.clone().unwrap_or_default();
            (
                EventType::try_from(e.r#type).unwrap(),
                String::from_utf8_lossy(&kv.key).into_owned(),
            )
        })
        .collect()
}

#[test]
fn puts_in_one_batch_share_a_commit_and_one_publish() {
    let mut f = fixture();
    let r = f.apply(vec![put("a", "1"), put("b", "2")]);
    let revs: Vec<i64> = r
        .iter()
        .map(|r| r.as_ref().unwrap().header.unwrap().revision)
        .collect();
    assert_eq!(revs, vec![2, 3]);
    assert_eq!(*f.applied.borrow(), 2);
    assert_eq!(f.store.applied_index(), (2, 1));
    let published = f.rec.published.lock().clone();
    assert_eq!(published.len(), 1, "one publish per batch");
    assert_eq!(published[0].1, 3);
    assert_eq!(
        kinds(&published[0].0),
        vec![(EventType::Put, "a".into()), (EventType::Put, "b".into())]
    );
    assert!(
        f.rec.durable.lock().is_empty(),
        "a batch is not durable until the periodic sync"
    );
}

#[test]
fn delete_and_txn_give_their_own_responses() {
    let mut f = fixture();
    f.apply(vec![put("a", "1"), put("b", "2")]);
    let del = f
        .one(DeleteRangeRequest {
            key: "a".into(),
            prev_kv: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(del.deleted, 1);
    assert_eq!(del.prev_kvs[0].value, b"1");
    assert_eq!(del.header.unwrap().revision, 4);
    let txn = f
        .one(TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Value as i32,
                key: "b".into(),
                range_end: vec![],
                target_union: Some(compare::TargetUnion::Value("2".into())),
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(put("c", "3"))),
            }],
            failure: vec![],
        })
        .unwrap();
    assert!(txn.succeeded);
    assert_eq!(txn.header.unwrap().revision, 5);
    assert_eq!(f.keys(), vec!["b", "c"]);
    let published = f.rec.published.lock().clone();
    assert_eq!(
        kinds(&published[1].0),
        vec![(EventType::Delete, "a".into())]
    );
    assert_eq!(kinds(&published[2].0), vec![(EventType::Put, "c".into())]);
}

#[test]
fn a_failed_request_fails_alone() {
    let mut f = fixture();
    let r = f.one(PutRequest {
        lease: 99,
        ..put("a", "1")
    });
    assert!(matches!(
        r,
        Err(crate::error::Error::Storage(
            ferrokv_storage::Error::LeaseNotFound
        ))
    ));
    assert_eq!(f.store.current_revision(), 1, "nothing written");
    assert_eq!(*f.applied.borrow(), 1, "the entry is still applied");
    assert!(f.one(put("b", "2")).is_ok());
}

#[test]
fn lease_grant_expiry_and_revoke() {
    let mut f = fixture();
    let grant = f.one(LeaseGrantRequest { ttl: 10, id: 7 }).unwrap();
    assert_eq!((grant.id, grant.ttl), (7, 10));
    assert!(
        f.applier.lessor.remaining(7).is_some(),
        "lessor told after commit"
    );
    f.one(PutRequest {
        lease: 7,
        ..put("k", "v")
    })
    .unwrap();
    // The leader's lessor finds it expired; lease expiry proposes the revoke.
    f.applier.lessor.promote(&[(7, 10)]);
    let later = Instant::now() + Duration::from_secs(11);
    assert_eq!(f.applier.lessor.take_expired(later), vec![7]);
    f.one(LeaseRevokeRequest { id: 7 }).unwrap();
    assert_eq!(f.applier.lessor.renew(7), None);
    assert!(f.keys().is_empty(), "the lease's keys are deleted");
    let published = f.rec.published.lock().clone();
    assert_eq!(
        kinds(&published.last().unwrap().0),
        vec![(EventType::Delete, "k".into())]
    );
    assert!(matches!(
        f.one(LeaseRevokeRequest { id: 7 }),
        Err(crate::error::Error::Storage(
            ferrokv_storage::Error::LeaseNotFound
        ))
    ));
}

#[test]
fn compaction_and_alarms() {
    let mut f = fixture();
    f.apply(vec![put("a", "1"), put("a", "2"), put("a", "3")]);
    let c = f.one(CompactionRequest {
        revision: 3,
        physical: true,
    });
    assert!(c.is_ok());
    assert_eq!(f.store.compacted_revision(), 3);
    assert!(matches!(
        f.one(CompactionRequest {
            revision: 3,
            physical: false
        }),
        Err(crate::error::Error::Storage(
            ferrokv_storage::Error::Compacted
        ))
    ));
    let raised = f
        .one(AlarmRequest {
            action: 1,
            member_id: ME,
            alarm: 1,
        })
        .unwrap();
    assert_eq!(raised.alarms.len(), 1);
    assert!(f.applier.alarms.no_space());
}

#[test]
fn conf_changes_follow_the_member_list_and_the_transport() {
    let mut f = fixture();
    let two = Member {
        id: 2,
        peer_ur_ls: vec!["http://10.0.0.2:2380".into()],
        ..Default::default()
    };
    f.conf(ConfChangeType::AddNode, two.clone());
    let list = membership::load(&f.store).unwrap();
    assert_eq!(list.iter().map(|m| m.id).collect::<Vec<_>>(), vec![2]);
    f.conf(ConfChangeType::RemoveNode, two);
    assert!(membership::load(&f.store).unwrap().is_empty());
    assert_eq!(
        *f.rec.peers.lock(),
        vec![
            "add 2 [\"http://10.0.0.2:2380\"]".to_string(),
            "remove 2".to_string()
        ]
    );
    assert!(!*f.stop_requested.borrow());
    f.conf(
        ConfChangeType::RemoveNode,
        Member {
            id: ME,
            ..Default::default()
        },
    );
    assert!(*f.stop_requested.borrow(), "a removed member asks to stop");
    assert_eq!(f.rec.peers.lock().len(), 2, "no peer entry for ourselves");
}

#[test]
fn entries_already_applied_are_skipped() {
    let mut f = fixture();
    f.one(put("a", "1")).unwrap();
    // Raft hands the same entry again (after a keyspace snapshot, say).
    let again = entry(1, 5000, put("a", "other"));
    let mut rx = f.applier.waiters.register::<PutRequest>(5000);
    f.applier
        .apply_batch(Committed {
            entries: vec![again],
            conf_state: None,
        })
        .unwrap();
    assert!(rx.try_recv().is_err(), "not applied twice");
    assert_eq!(f.store.current_revision(), 2);
}

/// An entry as ferrokv wrote them before they took etcd's format: still applied, and, having
/// no user in it, not re-checked (it was checked when proposed).
#[test]
fn a_legacy_entry_applies_even_with_auth_enabled() {
    use ferrokv_proto::ferrokvpb::legacy_internal_request::Request as Legacy;
    let mut f = fixture();
    enable_auth_with_alice(&mut f);
    let r = f.one_entry::<PutRequest>(|index, id| {
        normal_entry(
            index,
            LegacyInternalRequest {
                id,
                request: Some(Legacy::Put(put("zzz", "old"))),
            }
            .encode_to_vec(),
        )
    });
    assert!(r.is_ok(), "{r:?}");
    assert!(f.keys().contains(&"zzz".to_string()));
}

/// root (root role) and alice (readwrite on "a"..."b"), auth enabled.
fn enable_auth_with_alice(f: &mut Fixture) {
    use ferrokv_proto::authpb::{permission::Type, Permission, UserAddOptions};
    use ferrokv_proto::etcdserverpb as pb;
    let no_pw = Some(UserAddOptions { no_password: true });
    for name in ["root", "alice"] {
        f.one(pb::AuthUserAddRequest {
            name: name.into(),
            options: no_pw,
            ..Default::default()
        })
        .unwrap()
        .unwrap();
    }
    f.one(pb::AuthRoleAddRequest {
        name: "root".into(),
    })
    .unwrap()
    .unwrap();
    f.one(pb::AuthRoleAddRequest { name: "rw".into() })
        .unwrap()
        .unwrap();
    f.one(pb::AuthRoleGrantPermissionRequest {
        name: "rw".into(),
        perm: Some(Permission {
            perm_type: Type::Readwrite as i32,
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
        }),
    })
    .unwrap()
    .unwrap();
    for (user, role) in [("root", "root"), ("alice", "rw")] {
        f.one(pb::AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .unwrap()
        .unwrap();
    }
    f.one(pb::AuthEnableRequest {}).unwrap().unwrap();
}

/// etcd's auth applier: a write is re-checked when applied, as the user in its header and
/// at the auth revision the serving member checked it at.
#[test]
fn writes_are_checked_again_when_applied() {
    use crate::error::Error;
    use ferrokv_proto::etcdserverpb as pb;
    let mut f = fixture();
    enable_auth_with_alice(&mut f);
    let rev = f.auth_revision();
    assert!(f.one_as(put("a1", "x"), "alice", rev).is_ok());
    // Outside alice's range.
    assert!(matches!(
        f.one_as(put("c", "x"), "alice", rev),
        Err(Error::PermissionDenied)
    ));
    // No user (proposed while auth was disabled, or without a token).
    assert!(matches!(f.one(put("a2", "x")), Err(Error::UserEmpty)));
    // The permission is revoked between the serving member's check and the apply.
    f.one_as(
        pb::AuthRoleRevokePermissionRequest {
            role: "rw".into(),
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
        },
        "root",
        rev,
    )
    .unwrap()
    .unwrap();
    assert!(f.auth_revision() > rev);
    for r in [
        f.one_as(put("a3", "x"), "alice", rev),
        f.one_as(put("a3", "x"), "root", rev),
    ] {
        assert!(matches!(r, Err(Error::AuthOldRevision)), "{r:?}");
    }
    let del = DeleteRangeRequest {
        key: b"a1".to_vec(),
        ..Default::default()
    };
    assert!(matches!(
        f.one_as(del.clone(), "alice", rev),
        Err(Error::AuthOldRevision)
    ));
    let txn = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put("a4", "x"))),
        }],
        ..Default::default()
    };
    assert!(matches!(
        f.one_as(txn.clone(), "alice", rev),
        Err(Error::AuthOldRevision)
    ));
    // Checked again at the new revision: denied, root still allowed.
    let now = f.auth_revision();
    assert!(matches!(
        f.one_as(put("a3", "x"), "alice", now),
        Err(Error::PermissionDenied)
    ));
    assert!(matches!(
        f.one_as(txn, "alice", now),
        Err(Error::PermissionDenied)
    ));
    assert!(f.one_as(put("a3", "x"), "root", now).is_ok());
    assert!(f.one_as(del, "root", now).is_ok());
    let keys = f.keys();
    assert!(!keys.contains(&"a2".to_string()), "{keys:?}");
    assert!(!keys.contains(&"a4".to_string()), "{keys:?}");
    assert!(!keys.contains(&"a1".to_string()), "{keys:?}");
    // Admin requests need the root role when applied.
    let r = f.one_as(pb::AuthRoleAddRequest { name: "x".into() }, "alice", now);
    assert!(matches!(r, Ok(Err(Error::PermissionDenied))), "{r:?}");
    let r = f.one_as(pb::AuthRoleAddRequest { name: "x".into() }, "root", now);
    assert!(matches!(r, Ok(Ok(_))), "{r:?}");
}

/// A lease revoke needs write permission on every key attached to the lease.
#[test]
fn a_lease_revoke_is_checked_against_the_leases_keys() {
    use crate::error::Error;
    let mut f = fixture();
    f.one(LeaseGrantRequest { ttl: 600, id: 7 }).unwrap();
    f.one(PutRequest {
        lease: 7,
        ..put("c", "1")
    })
    .unwrap();
    enable_auth_with_alice(&mut f);
    let rev = f.auth_revision();
    assert!(matches!(
        f.one_as(LeaseRevokeRequest { id: 7 }, "alice", rev),
        Err(Error::PermissionDenied)
    ));
    // Nor may alice attach a key she may write to that lease.
    assert!(matches!(
        f.one_as(
            PutRequest {
                lease: 7,
                ..put("a1", "1")
            },
            "alice",
            rev
        ),
        Err(Error::PermissionDenied)
    ));
    assert!(f.one_as(LeaseRevokeRequest { id: 7 }, "root", rev).is_ok());
    assert!(!f.keys().contains(&"c".to_string()));
}

fn attrs(member_id: u64) -> ferrokv_proto::ferrokvpb::ClusterMemberAttrSetRequest {
    ferrokv_proto::ferrokvpb::ClusterMemberAttrSetRequest {
        member_id,
        member_attributes: Some(ferrokv_proto::ferrokvpb::Attributes {
            name: format!("m{member_id}"),
            client_urls: vec![format!("http://127.0.0.1:{member_id}")],
        }),
    }
}

fn peer(id: u64, learner: bool) -> Member {
    Member {
        id,
        name: format!("m{id}"),
        peer_ur_ls: vec![format!("http://127.0.0.1:{}", 2000 + id)],
        is_learner: learner,
        ..Default::default()
    }
}

/// Member attributes in the old encoding, as a member of the previous version publishes them.
fn legacy_attrs_entry(index: u64, id: u64, member_id: u64) -> eraftpb::Entry {
    let req = InternalRaftRequest {
        header: Some(RequestHeader {
            id,
            ..Default::default()
        }),
        request: Some(attrs(member_id).into_request()),
    };
    normal_entry(index, ferrokv_proto::entry::encode_legacy(&req).unwrap())
}

/// The switch entry (etcd's cluster version set), as a member proposes it.
fn switch_entry(index: u64) -> eraftpb::Entry {
    normal_entry(
        index,
        InternalRaftRequest {
            header: Some(RequestHeader {
                id: 9_999,
                ..Default::default()
            }),
            request: Some(
                ferrokv_proto::ferrokvpb::ClusterVersionSetRequest {
                    ver: "3.6.0".into(),
                }
                .into_request(),
            ),
        }
        .encode_to_vec(),
    )
}

/// The entry format gate: the old encoding announces nothing; etcd's attributes entry of each
/// member, learners included, does; the switch entry switches (persisted in the meta).
#[test]
fn the_entry_format_switches_at_the_switch_entry_once_every_member_announced() {
    use super::entry_gate::GateState;
    let mut f = fixture();
    f.conf(ConfChangeType::AddNode, peer(1, false));
    f.conf(ConfChangeType::AddNode, peer(2, false));
    f.conf(ConfChangeType::AddLearnerNode, peer(3, true));
    for m in [1, 2, 3] {
        f.one_entry::<ferrokv_proto::ferrokvpb::ClusterMemberAttrSetRequest>(|i, id| {
            legacy_attrs_entry(i, id, m)
        })
        .unwrap();
    }
    let members = membership::load(&f.store).unwrap();
    assert!(GateState::load(&f.store).unwrap().announced.is_empty());
    f.one(attrs(1)).unwrap();
    f.one(attrs(2)).unwrap();
    assert!(!GateState::load(&f.store).unwrap().complete(&members));
    f.one(attrs(3)).unwrap();
    let g = GateState::load(&f.store).unwrap();
    assert!(g.complete(&members) && !g.switched);
    assert!(!f.applier.entry_format.is_etcd());
    let e = switch_entry(f.next_index);
    f.next_index += 1;
    f.applier
        .apply_batch(Committed {
            entries: vec![e],
            conf_state: None,
        })
        .unwrap();
    assert!(f.applier.entry_format.is_etcd());
    assert!(GateState::load(&f.store).unwrap().switched);
    // For good: a member added later does not switch it back.
    f.conf(ConfChangeType::AddNode, peer(4, false));
    assert!(f.applier.entry_format.is_etcd());
    assert!(GateState::load(&f.store).unwrap().switched);
}

/// Removing the one member that never announced (an old member replaced) completes it.
#[test]
fn removing_the_member_that_did_not_announce_completes_the_gate() {
    use super::entry_gate::GateState;
    let mut f = fixture();
    f.conf(ConfChangeType::AddNode, peer(1, false));
    f.conf(ConfChangeType::AddNode, peer(2, false));
    f.one(attrs(1)).unwrap();
    let members = membership::load(&f.store).unwrap();
    assert!(!GateState::load(&f.store).unwrap().complete(&members));
    f.conf(ConfChangeType::RemoveNode, peer(2, false));
    let members = membership::load(&f.store).unwrap();
    assert!(GateState::load(&f.store).unwrap().complete(&members));
}
