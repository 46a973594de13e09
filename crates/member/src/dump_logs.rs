//! `ferrokv dump-logs <data-dir>`: prints a member's raft log the way `etcd-dump-logs` does
//! (snapshot marker, WAL metadata and hard state, then one line per entry with its decoded
//! request). It only reads: `Wal::read` never repairs or truncates, so it is safe to run on
//! the data dir of a stopped (or crashed) member.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use ferrokv_proto::etcdserverpb::{
    request_op::Request as Op, AlarmType, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest,
};
use ferrokv_proto::ferrokvpb::{internal_request::Request, InternalRequest};
use ferrokv_raftnode::eraftpb::{ConfChange, ConfChangeType, EntryType, SnapshotMetadata};
use ferrokv_wal::{Entry, Replay, Wal};
use prost::Message as _;
use protobuf::ProtobufEnum as _;

use crate::error::{Error, Result};

/// The WAL directory of a data dir (`<data-dir>/member/wal`, etcd's layout). A directory that
/// already is a WAL directory is taken as is.
pub fn wal_dir(data_dir: &Path) -> PathBuf {
    ferrokv_datadir::DataDir::wal_of_either(data_dir)
}

pub fn run(data_dir: &Path, out: &mut impl Write) -> Result<()> {
    let dir = wal_dir(data_dir);
    // etcd-dump-logs takes the snapshot from the newest `.snap` file; read only.
    let snap = dir
        .parent()
        .and_then(|member| ferrokv_raftnode::newest_snapshot(member).ok())
        .flatten();
    let replay = Wal::read(&dir).map_err(|source| Error::Wal {
        dir: dir.clone(),
        source,
    })?;
    out.write_all(render(&replay, snap.as_ref()).as_bytes())
        .map_err(|e| Error::io("writing", "stdout", e))
}

/// The output of etcd-dump-logs v3.6 (default flags) for this WAL and snapshot: the same
/// lines, with ferrokv's own description of each normal entry's request in the data column
/// (ferrokv's entries are not etcd's `InternalRaftRequest`s). Like etcd-dump-logs it lists
/// only Normal and ConfChange (v1) entries.
pub fn render(r: &Replay, snap: Option<&SnapshotMetadata>) -> String {
    let mut s = String::new();
    s.push_str("Snapshot:\n");
    match snap {
        Some(m) => {
            let cs = m.get_conf_state();
            let nodes: Vec<String> = cs.voters.iter().map(|v| format!("{v:x}")).collect();
            let _ = writeln!(
                s,
                "term={} index={} nodes=[{}] confstate={}",
                m.term,
                m.index,
                nodes.join(" "),
                conf_state_json(cs)
            );
        }
        None => s.push_str("empty\n"),
    }
    s.push_str("Start dumping log entries from snapshot.\n");
    s.push_str("WAL metadata:\n");
    let hs = &r.hard_state;
    let (node, cluster) = ferrokv_wal::decode_metadata(&r.metadata).unwrap_or_default();
    let _ = writeln!(
        s,
        "nodeID={node:x} clusterID={cluster:x} term={} commitIndex={} vote={:x}",
        hs.term, hs.commit, hs.vote
    );
    let _ = writeln!(s, "WAL entries: {}", r.entries.len());
    if let Some(last) = r.entries.last() {
        let _ = writeln!(s, "lastIndex={}", last.index);
    }
    let _ = writeln!(s, "{:>4}\t{:>10}\ttype\tdata", "term", "index");
    let mut count = 0usize;
    for e in &r.entries {
        let (kind, data) = match EntryType::from_i32(e.entry_type) {
            Some(EntryType::EntryNormal) => ("norm", describe_normal(e)),
            Some(EntryType::EntryConfChange) => ("conf", describe_conf_change(&e.data)),
            // etcd-dump-logs has no filter for ConfChangeV2 entries: not listed, not counted.
            _ => continue,
        };
        count += 1;
        let _ = writeln!(s, "{:>4}\t{:>10}\t{kind}\t{data}", e.term, e.index);
    }
    let _ = writeln!(s, "\nEntry types (Normal,ConfigChange) count is : {count}");
    s
}

/// Go's `json.Marshal` of a `raftpb.ConfState` (empty lists omitted, `auto_leave` always).
fn conf_state_json(cs: &ferrokv_raftnode::eraftpb::ConfState) -> String {
    let mut parts = Vec::new();
    for (name, ids) in [
        ("voters", &cs.voters),
        ("learners", &cs.learners),
        ("voters_outgoing", &cs.voters_outgoing),
        ("learners_next", &cs.learners_next),
    ] {
        if !ids.is_empty() {
            let v: Vec<String> = ids.iter().map(u64::to_string).collect();
            parts.push(format!("\"{name}\":[{}]", v.join(",")));
        }
    }
    parts.push(format!("\"auto_leave\":{}", cs.auto_leave));
    format!("{{{}}}", parts.join(","))
}

fn describe_normal(e: &Entry) -> String {
    if e.data.is_empty() {
        // Raft appends an empty entry when a leader takes office.
        return "(empty)".to_string();
    }
    match InternalRequest::decode(e.data.as_slice()) {
        Ok(req) => {
            let body = match &req.request {
                Some(r) => describe_request(r),
                None => "no request".to_string(),
            };
            format!("{body} req_id={:x}", req.id)
        }
        Err(err) => format!("undecodable ({} bytes): {err}", e.data.len()),
    }
}

pub fn describe_request(r: &Request) -> String {
    match r {
        Request::Put(p) => describe_put(p),
        Request::DeleteRange(d) => describe_delete(d),
        Request::Txn(t) => describe_txn(t),
        Request::Compaction(c) => {
            format!("compaction revision={} physical={}", c.revision, c.physical)
        }
        Request::LeaseGrant(g) => format!("lease_grant id={} ttl={}", g.id, g.ttl),
        Request::LeaseRevoke(r) => format!("lease_revoke id={}", r.id),
        Request::LeaseCheckpoint(c) => {
            let items: Vec<String> = c
                .checkpoints
                .iter()
                .map(|c| format!("{}:{}", c.id, c.remaining_ttl))
                .collect();
            format!("lease_checkpoint [{}]", items.join(" "))
        }
        Request::Alarm(a) => {
            let action =
                ferrokv_proto::etcdserverpb::alarm_request::AlarmAction::try_from(a.action)
                    .map(|x| x.as_str_name().to_string())
                    .unwrap_or_else(|_| a.action.to_string());
            let alarm = AlarmType::try_from(a.alarm)
                .map(|x| x.as_str_name().to_string())
                .unwrap_or_else(|_| a.alarm.to_string());
            format!(
                "alarm action={action} member_id={:x} alarm={alarm}",
                a.member_id
            )
        }
        Request::MemberAttributes(m) => format!(
            "member_attributes member_id={:x} name={:?} client_urls=[{}]",
            m.member_id,
            m.name,
            m.client_urls.join(",")
        ),
        // Auth entries: names only; the log holds password hashes, never shown.
        Request::AuthEnable(_) => "auth_enable".to_string(),
        Request::AuthDisable(_) => "auth_disable".to_string(),
        Request::Authenticate(a) => format!("authenticate name={:?}", a.name),
        Request::AuthUserAdd(u) => format!("auth_user_add name={:?}", u.name),
        Request::AuthUserDelete(u) => format!("auth_user_delete name={:?}", u.name),
        Request::AuthUserChangePassword(u) => {
            format!("auth_user_change_password name={:?}", u.name)
        }
        Request::AuthUserGrantRole(u) => {
            format!("auth_user_grant_role user={:?} role={:?}", u.user, u.role)
        }
        Request::AuthUserRevokeRole(u) => {
            format!("auth_user_revoke_role name={:?} role={:?}", u.name, u.role)
        }
        Request::AuthRoleAdd(r) => format!("auth_role_add name={:?}", r.name),
        Request::AuthRoleDelete(r) => format!("auth_role_delete role={:?}", r.role),
        Request::AuthRoleGrantPermission(r) => {
            format!("auth_role_grant_permission name={:?}", r.name)
        }
        Request::AuthRoleRevokePermission(r) => format!(
            "auth_role_revoke_permission role={:?} key={}",
            r.role,
            quote(&r.key)
        ),
    }
}

fn describe_put(p: &PutRequest) -> String {
    let mut s = format!("put key={}", quote(&p.key));
    if p.ignore_value {
        s.push_str(" ignore_value");
    } else {
        let _ = write!(s, " value_len={}", p.value.len());
    }
    if p.ignore_lease {
        s.push_str(" ignore_lease");
    } else if p.lease != 0 {
        let _ = write!(s, " lease={}", p.lease);
    }
    if p.prev_kv {
        s.push_str(" prev_kv");
    }
    s
}

fn describe_delete(d: &DeleteRangeRequest) -> String {
    let mut s = format!("delete_range key={}", quote(&d.key));
    if !d.range_end.is_empty() {
        let _ = write!(s, " range_end={}", quote(&d.range_end));
    }
    if d.prev_kv {
        s.push_str(" prev_kv");
    }
    s
}

fn describe_range(r: &RangeRequest) -> String {
    let mut s = format!("range key={}", quote(&r.key));
    if !r.range_end.is_empty() {
        let _ = write!(s, " range_end={}", quote(&r.range_end));
    }
    s
}

fn describe_txn(t: &TxnRequest) -> String {
    let ops = |ops: &[ferrokv_proto::etcdserverpb::RequestOp]| {
        ops.iter()
            .map(|op| match &op.request {
                Some(Op::RequestRange(r)) => describe_range(r),
                Some(Op::RequestPut(p)) => describe_put(p),
                Some(Op::RequestDeleteRange(d)) => describe_delete(d),
                Some(Op::RequestTxn(t)) => describe_txn(t),
                None => "empty_op".to_string(),
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    format!(
        "txn compares={} success=[{}] failure=[{}]",
        t.compare.len(),
        ops(&t.success),
        ops(&t.failure)
    )
}

fn describe_conf_change(data: &[u8]) -> String {
    match <ConfChange as protobuf::Message>::parse_from_bytes(data) {
        // etcd-dump-logs' `method=<type> id=<hex>`.
        Ok(cc) => format!(
            "method={} id={:x}",
            change_name(cc.get_change_type()),
            cc.node_id
        ),
        Err(e) => format!("undecodable conf change ({} bytes): {e}", data.len()),
    }
}

fn change_name(t: ConfChangeType) -> &'static str {
    match t {
        ConfChangeType::AddNode => "ConfChangeAddNode",
        ConfChangeType::RemoveNode => "ConfChangeRemoveNode",
        ConfChangeType::AddLearnerNode => "ConfChangeAddLearnerNode",
    }
}

/// Bytes as a quoted string with non-printable bytes escaped (`"foo"`, `"a\x00"`).
fn quote(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() + 2);
    s.push('"');
    for c in b.iter().flat_map(|c| std::ascii::escape_default(*c)) {
        s.push(c as char);
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrokv_proto::etcdserverpb::{CompactionRequest, LeaseGrantRequest, Member, RequestOp};
    use ferrokv_proto::ferrokvpb::ConfChangeContext;
    use ferrokv_raftnode::eraftpb::ConfChangeSingle;
    use ferrokv_raftnode::eraftpb::ConfChangeV2;
    use ferrokv_wal::{HardState, SnapshotMarker, WalOptions};

    fn normal(index: u64, term: u64, req: Option<Request>) -> Entry {
        let data = match req {
            Some(r) => InternalRequest {
                id: index * 10,
                request: Some(r),
            }
            .encode_to_vec(),
            None => Vec::new(),
        };
        Entry {
            index,
            term,
            entry_type: EntryType::EntryNormal as i32,
            data,
            context: Vec::new(),
        }
    }

    fn put(key: &[u8], value: &[u8]) -> Request {
        Request::Put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })
    }

    /// One row per request kind: what a dump line must say about it.
    #[test]
    fn describes_each_request_kind() {
        let rows: Vec<(Request, &str)> = vec![
            (put(b"foo", b"bar"), "put key=\"foo\" value_len=3"),
            (
                Request::Put(PutRequest {
                    key: b"k\x00".to_vec(),
                    lease: 7,
                    prev_kv: true,
                    ..Default::default()
                }),
                "put key=\"k\\x00\" value_len=0 lease=7 prev_kv",
            ),
            (
                Request::Put(PutRequest {
                    key: b"k".to_vec(),
                    ignore_value: true,
                    ignore_lease: true,
                    ..Default::default()
                }),
                "put key=\"k\" ignore_value ignore_lease",
            ),
            (
                Request::DeleteRange(DeleteRangeRequest {
                    key: b"a".to_vec(),
                    range_end: b"b".to_vec(),
                    ..Default::default()
                }),
                "delete_range key=\"a\" range_end=\"b\"",
            ),
            (
                Request::Txn(TxnRequest {
                    compare: vec![Default::default()],
                    success: vec![RequestOp {
                        request: Some(Op::RequestPut(PutRequest {
                            key: b"x".to_vec(),
                            value: b"1".to_vec(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![RequestOp {
                        request: Some(Op::RequestRange(RangeRequest {
                            key: b"x".to_vec(),
                            ..Default::default()
                        })),
                    }],
                }),
                "txn compares=1 success=[put key=\"x\" value_len=1] failure=[range key=\"x\"]",
            ),
            (
                Request::Compaction(CompactionRequest {
                    revision: 5,
                    physical: true,
                }),
                "compaction revision=5 physical=true",
            ),
            (
                Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 9 }),
                "lease_grant id=9 ttl=60",
            ),
            (
                Request::Alarm(ferrokv_proto::etcdserverpb::AlarmRequest {
                    action: 1,
                    member_id: 0xab,
                    alarm: 1,
                }),
                "alarm action=ACTIVATE member_id=ab alarm=NOSPACE",
            ),
            (
                Request::MemberAttributes(ferrokv_proto::ferrokvpb::MemberAttributes {
                    member_id: 0xff,
                    name: "n1".into(),
                    client_urls: vec!["http://a:2379".into()],
                }),
                "member_attributes member_id=ff name=\"n1\" client_urls=[http://a:2379]",
            ),
        ];
        for (req, want) in rows {
            assert_eq!(describe_request(&req), want);
        }
    }

    /// Writes a WAL with the real `ferrokv_wal::Wal` and checks the whole dump.
    #[test]
    fn dumps_a_wal_written_by_the_wal_crate() {
        let dir = tempfile::tempdir().unwrap();
        let wal_path = dir.path().join("member").join("wal");
        std::fs::create_dir_all(&wal_path).unwrap();
        let meta = ferrokv_wal::encode_metadata(0x1234, 0xabcd);
        let mut wal = Wal::create(&wal_path, &meta, WalOptions::default()).unwrap();

        let ctx = ConfChangeContext {
            member: Some(Member {
                id: 0x1234,
                name: "n1".into(),
                peer_ur_ls: vec!["http://127.0.0.1:2380".into()],
                ..Default::default()
            }),
        }
        .encode_to_vec();
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddNode);
        cc.node_id = 0x1234;
        cc.context = ctx.into();
        let mut cc2 = ConfChangeV2::default();
        let mut single = ConfChangeSingle::default();
        single.set_change_type(ConfChangeType::AddLearnerNode);
        single.node_id = 0x99;
        cc2.changes.push(single);
        let entries = vec![
            Entry {
                index: 1,
                term: 1,
                entry_type: EntryType::EntryConfChange as i32,
                data: protobuf::Message::write_to_bytes(&cc).unwrap(),
                context: Vec::new(),
            },
            normal(2, 2, None),
            normal(3, 2, Some(put(b"foo", b"bar"))),
            Entry {
                index: 4,
                term: 2,
                entry_type: EntryType::EntryConfChangeV2 as i32,
                data: protobuf::Message::write_to_bytes(&cc2).unwrap(),
                context: Vec::new(),
            },
            Entry {
                index: 5,
                term: 2,
                entry_type: EntryType::EntryNormal as i32,
                data: vec![0xff, 0xff, 0xff],
                context: Vec::new(),
            },
        ];
        let hs = HardState {
            term: 2,
            vote: 0x1234,
            commit: 4,
        };
        wal.append(&entries, Some(&hs)).unwrap();
        drop(wal);

        let mut out = Vec::new();
        run(dir.path(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let want = [
            "Snapshot:",
            "empty",
            "Start dumping log entries from snapshot.",
            "WAL metadata:",
            "nodeID=1234 clusterID=abcd term=2 commitIndex=4 vote=1234",
            "WAL entries: 5",
            "lastIndex=5",
            "term\t     index\ttype\tdata",
            "   1\t         1\tconf\tmethod=ConfChangeAddNode id=1234",
            "   2\t         2\tnorm\t(empty)",
            "   2\t         3\tnorm\tput key=\"foo\" value_len=3 req_id=1e",
        ];
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(&lines[..want.len()], &want[..], "{text}");
        assert!(
            // The ConfChangeV2 entry 4 is skipped, as etcd-dump-logs skips it.
            lines[want.len()].starts_with("   2\t         5\tnorm\tundecodable (3 bytes)"),
            "{text}"
        );
        assert!(
            text.ends_with("Entry types (Normal,ConfigChange) count is : 4\n"),
            "{text}"
        );
    }

    #[test]
    fn shows_the_snapshot_marker_and_only_later_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::create(dir.path(), b"raw", WalOptions::default()).unwrap();
        wal.append(&[normal(1, 1, Some(put(b"a", b"1")))], None)
            .unwrap();
        wal.save_snapshot(SnapshotMarker { index: 1, term: 1 })
            .unwrap();
        wal.append(&[normal(2, 1, Some(put(b"b", b"22")))], None)
            .unwrap();
        drop(wal);
        // A bare WAL directory works as well as a data dir.
        let mut out = Vec::new();
        run(dir.path(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        // No .snap file: etcd-dump-logs reports no snapshot, and dumps the WAL after its marker.
        assert!(text.starts_with("Snapshot:\nempty\n"), "{text}");
        assert!(!text.contains("key=\"a\""), "{text}");
        assert!(
            text.contains("put key=\"b\" value_len=2 req_id=14"),
            "{text}"
        );
    }

    #[test]
    fn a_dir_without_a_wal_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(dir.path(), &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }
}
