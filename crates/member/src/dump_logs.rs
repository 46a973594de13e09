//! `ferrokv dump-logs <data-dir>`: prints a member's raft log the way `etcd-dump-logs` does
//! (snapshot marker, WAL metadata and hard state, then one line per entry with its decoded
//! request). It only reads: `Wal::read` never repairs or truncates, so it is safe to run on
//! the data dir of a stopped (or crashed) member.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use ferrokv_proto::authpb::permission::Type as PermType;
use ferrokv_proto::entry::Format;
use ferrokv_proto::etcdserverpb::alarm_request::AlarmAction;
use ferrokv_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use ferrokv_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use ferrokv_proto::etcdserverpb::{
    request_op::Request as Op, AlarmType, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest,
};
use ferrokv_proto::ferrokvpb::{internal_raft_request::Request, InternalRaftRequest};
use ferrokv_raftnode::eraftpb::{ConfChange, ConfChangeType, EntryType, SnapshotMetadata};
use ferrokv_wal::{Entry, Replay, Wal};
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

/// The output of etcd-dump-logs v3.6 (default flags) for this WAL and snapshot, byte for
/// byte (ferrokv's entries are etcd's `InternalRaftRequest`s). Like etcd-dump-logs it lists
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

/// The data column of a normal entry: what etcd-dump-logs prints, `rr.String()` of the
/// entry's `InternalRaftRequest` (gogo's compact text format). Entries of ferrokv's earlier
/// format are printed as the etcd request they apply as, without a header (etcd-dump-logs
/// cannot read those).
fn describe_normal(e: &Entry) -> String {
    match ferrokv_proto::entry::decode(e.data.as_slice()) {
        Ok((mut req, format)) => {
            if format == Format::Legacy {
                req.header = None;
            }
            // etcd-dump-logs never shows a password, even the (never written) clear one.
            if let Some(Request::AuthUserChangePassword(r)) = &mut req.request {
                if !r.password.is_empty() {
                    r.password = "<value removed>".into();
                }
            }
            describe_request(&req)
        }
        // etcd-dump-logs' line for an entry it cannot decode.
        Err(_) => "???".to_string(),
    }
}

/// gogo/protobuf's `CompactTextString` of an `InternalRaftRequest`: fields in declaration
/// order, each `name:value ` (messages as `name:<...> `), proto3 zero values left out but
/// for a oneof's, strings and bytes C-escaped, enums by name.
pub fn describe_request(r: &InternalRaftRequest) -> String {
    let mut t = Text::default();
    if let Some(h) = &r.header {
        t.msg("header", |t| {
            t.uint("ID", h.id);
            t.str("username", &h.username);
            t.uint("auth_revision", h.auth_revision);
        });
    }
    let Some(req) = &r.request else {
        return t.0;
    };
    match req {
        Request::Range(r) => t.msg("range", |t| range(t, r)),
        Request::Put(p) => t.msg("put", |t| put(t, p)),
        Request::DeleteRange(d) => t.msg("delete_range", |t| delete(t, d)),
        Request::Txn(x) => t.msg("txn", |t| txn(t, x)),
        Request::Compaction(c) => t.msg("compaction", |t| {
            t.int("revision", c.revision);
            t.bool("physical", c.physical);
        }),
        Request::LeaseGrant(g) => t.msg("lease_grant", |t| {
            t.int("TTL", g.ttl);
            t.int("ID", g.id);
        }),
        Request::LeaseRevoke(r) => t.msg("lease_revoke", |t| t.int("ID", r.id)),
        Request::Alarm(a) => t.msg("alarm", |t| {
            t.enumeration("action", a.action, |v| {
                AlarmAction::try_from(v).ok().map(|x| x.as_str_name())
            });
            t.uint("memberID", a.member_id);
            t.enumeration("alarm", a.alarm, |v| {
                AlarmType::try_from(v).ok().map(|x| x.as_str_name())
            });
        }),
        Request::LeaseCheckpoint(c) => t.msg("lease_checkpoint", |t| {
            for cp in &c.checkpoints {
                t.msg("checkpoints", |t| {
                    t.int("ID", cp.id);
                    t.int("remaining_TTL", cp.remaining_ttl);
                });
            }
        }),
        Request::AuthEnable(_) => t.msg("auth_enable", |_| {}),
        Request::AuthDisable(_) => t.msg("auth_disable", |_| {}),
        Request::AuthStatus(_) => t.msg("auth_status", |_| {}),
        Request::Authenticate(a) => t.msg("authenticate", |t| {
            t.str("name", &a.name);
            t.str("password", &a.password);
            t.str("simple_token", &a.simple_token);
        }),
        Request::AuthUserAdd(u) => t.msg("auth_user_add", |t| {
            t.str("name", &u.name);
            t.str("password", &u.password);
            if let Some(o) = &u.options {
                t.msg("options", |t| t.bool("no_password", o.no_password));
            }
            t.str("hashedPassword", &u.hashed_password);
        }),
        Request::AuthUserDelete(u) => t.msg("auth_user_delete", |t| t.str("name", &u.name)),
        Request::AuthUserGet(u) => t.msg("auth_user_get", |t| t.str("name", &u.name)),
        Request::AuthUserChangePassword(u) => t.msg("auth_user_change_password", |t| {
            t.str("name", &u.name);
            t.str("password", &u.password);
            t.str("hashedPassword", &u.hashed_password);
        }),
        Request::AuthUserGrantRole(u) => t.msg("auth_user_grant_role", |t| {
            t.str("user", &u.user);
            t.str("role", &u.role);
        }),
        Request::AuthUserRevokeRole(u) => t.msg("auth_user_revoke_role", |t| {
            t.str("name", &u.name);
            t.str("role", &u.role);
        }),
        Request::AuthUserList(_) => t.msg("auth_user_list", |_| {}),
        Request::AuthRoleList(_) => t.msg("auth_role_list", |_| {}),
        Request::AuthRoleAdd(r) => t.msg("auth_role_add", |t| t.str("name", &r.name)),
        Request::AuthRoleDelete(r) => t.msg("auth_role_delete", |t| t.str("role", &r.role)),
        Request::AuthRoleGet(r) => t.msg("auth_role_get", |t| t.str("role", &r.role)),
        Request::AuthRoleGrantPermission(r) => t.msg("auth_role_grant_permission", |t| {
            t.str("name", &r.name);
            if let Some(p) = &r.perm {
                t.msg("perm", |t| {
                    t.enumeration("permType", p.perm_type, |v| {
                        PermType::try_from(v).ok().map(|x| x.as_str_name())
                    });
                    t.bytes("key", &p.key);
                    t.bytes("range_end", &p.range_end);
                });
            }
        }),
        Request::AuthRoleRevokePermission(r) => t.msg("auth_role_revoke_permission", |t| {
            t.str("role", &r.role);
            t.bytes("key", &r.key);
            t.bytes("range_end", &r.range_end);
        }),
        Request::ClusterVersionSet(v) => t.msg("cluster_version_set", |t| t.str("ver", &v.ver)),
        Request::ClusterMemberAttrSet(m) => t.msg("cluster_member_attr_set", |t| {
            t.uint("member_ID", m.member_id);
            if let Some(a) = &m.member_attributes {
                t.msg("member_attributes", |t| {
                    t.str("name", &a.name);
                    for u in &a.client_urls {
                        t.str_always("client_urls", u);
                    }
                });
            }
        }),
        Request::DowngradeInfoSet(d) => t.msg("downgrade_info_set", |t| {
            t.bool("enabled", d.enabled);
            t.str("ver", &d.ver);
        }),
    }
    t.0
}

fn range(t: &mut Text, r: &RangeRequest) {
    t.bytes("key", &r.key);
    t.bytes("range_end", &r.range_end);
    t.int("limit", r.limit);
    t.int("revision", r.revision);
    t.enumeration("sort_order", r.sort_order, |v| {
        SortOrder::try_from(v).ok().map(|x| x.as_str_name())
    });
    t.enumeration("sort_target", r.sort_target, |v| {
        SortTarget::try_from(v).ok().map(|x| x.as_str_name())
    });
    t.bool("serializable", r.serializable);
    t.bool("keys_only", r.keys_only);
    t.bool("count_only", r.count_only);
    t.int("min_mod_revision", r.min_mod_revision);
    t.int("max_mod_revision", r.max_mod_revision);
    t.int("min_create_revision", r.min_create_revision);
    t.int("max_create_revision", r.max_create_revision);
}

fn put(t: &mut Text, p: &PutRequest) {
    t.bytes("key", &p.key);
    t.bytes("value", &p.value);
    t.int("lease", p.lease);
    t.bool("prev_kv", p.prev_kv);
    t.bool("ignore_value", p.ignore_value);
    t.bool("ignore_lease", p.ignore_lease);
}

fn delete(t: &mut Text, d: &DeleteRangeRequest) {
    t.bytes("key", &d.key);
    t.bytes("range_end", &d.range_end);
    t.bool("prev_kv", d.prev_kv);
}

fn txn(t: &mut Text, x: &TxnRequest) {
    for c in &x.compare {
        t.msg("compare", |t| {
            t.enumeration("result", c.result, |v| {
                CompareResult::try_from(v).ok().map(|x| x.as_str_name())
            });
            t.enumeration("target", c.target, |v| {
                CompareTarget::try_from(v).ok().map(|x| x.as_str_name())
            });
            t.bytes("key", &c.key);
            // A oneof's value is printed even when it is zero.
            match &c.target_union {
                Some(TargetUnion::Version(v)) => t.int_always("version", *v),
                Some(TargetUnion::CreateRevision(v)) => t.int_always("create_revision", *v),
                Some(TargetUnion::ModRevision(v)) => t.int_always("mod_revision", *v),
                Some(TargetUnion::Value(v)) => t.bytes_always("value", v),
                Some(TargetUnion::Lease(v)) => t.int_always("lease", *v),
                None => {}
            }
            t.bytes("range_end", &c.range_end);
        });
    }
    for (name, ops) in [("success", &x.success), ("failure", &x.failure)] {
        for op in ops {
            t.msg(name, |t| match &op.request {
                Some(Op::RequestRange(r)) => t.msg("request_range", |t| range(t, r)),
                Some(Op::RequestPut(p)) => t.msg("request_put", |t| put(t, p)),
                Some(Op::RequestDeleteRange(d)) => t.msg("request_delete_range", |t| delete(t, d)),
                Some(Op::RequestTxn(x)) => t.msg("request_txn", |t| txn(t, x)),
                None => {}
            });
        }
    }
}

/// A gogo/protobuf compact text writer: every field is followed by one space.
#[derive(Default)]
struct Text(String);

impl Text {
    fn msg(&mut self, name: &str, body: impl FnOnce(&mut Text)) {
        self.0.push_str(name);
        self.0.push_str(":<");
        body(self);
        self.0.push_str("> ");
    }

    fn int(&mut self, name: &str, v: i64) {
        if v != 0 {
            self.int_always(name, v);
        }
    }

    fn int_always(&mut self, name: &str, v: i64) {
        let _ = write!(self.0, "{name}:{v} ");
    }

    fn uint(&mut self, name: &str, v: u64) {
        if v != 0 {
            let _ = write!(self.0, "{name}:{v} ");
        }
    }

    fn bool(&mut self, name: &str, v: bool) {
        if v {
            let _ = write!(self.0, "{name}:true ");
        }
    }

    /// By name when the value is one of the enum's, else the number (as Go prints it).
    fn enumeration(&mut self, name: &str, v: i32, names: impl Fn(i32) -> Option<&'static str>) {
        if v == 0 {
            return;
        }
        match names(v) {
            Some(n) => {
                let _ = write!(self.0, "{name}:{n} ");
            }
            None => {
                let _ = write!(self.0, "{name}:{v} ");
            }
        }
    }

    fn str(&mut self, name: &str, v: &str) {
        self.bytes(name, v.as_bytes());
    }

    fn str_always(&mut self, name: &str, v: &str) {
        self.bytes_always(name, v.as_bytes());
    }

    fn bytes(&mut self, name: &str, v: &[u8]) {
        if !v.is_empty() {
            self.bytes_always(name, v);
        }
    }

    fn bytes_always(&mut self, name: &str, v: &[u8]) {
        self.0.push_str(name);
        self.0.push_str(":\"");
        for &c in v {
            match c {
                b'\n' => self.0.push_str("\\n"),
                b'\r' => self.0.push_str("\\r"),
                b'\t' => self.0.push_str("\\t"),
                b'"' => self.0.push_str("\\\""),
                b'\\' => self.0.push_str("\\\\"),
                0x20..=0x7e => self.0.push(c as char),
                _ => {
                    let _ = write!(self.0, "\\{c:03o}");
                }
            }
        }
        self.0.push_str("\" ");
    }
}

fn describe_conf_change(data: &[u8]) -> String {
    match <ConfChange as protobuf::Message>::parse_from_bytes(data) {
        // etcd-dump-logs' `method=<type> id=<hex>`.
        Ok(cc) => format!(
            "method={} id={:x}",
            change_name(cc.get_change_type()),
            cc.node_id
        ),
        // etcd-dump-logs' line for a conf change it cannot decode.
        Err(_) => "???".to_string(),
    }
}

fn change_name(t: ConfChangeType) -> &'static str {
    match t {
        ConfChangeType::AddNode => "ConfChangeAddNode",
        ConfChangeType::RemoveNode => "ConfChangeRemoveNode",
        ConfChangeType::AddLearnerNode => "ConfChangeAddLearnerNode",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrokv_proto::authpb::Permission;
    use ferrokv_proto::etcdserverpb::{
        AlarmRequest, AuthRoleDeleteRequest, AuthRoleGrantPermissionRequest,
        AuthRoleRevokePermissionRequest, AuthUserAddRequest, AuthUserChangePasswordRequest,
        AuthUserGrantRoleRequest, CompactionRequest, Compare, LeaseGrantRequest,
        LeaseRevokeRequest, Member, RequestOp,
    };
    use ferrokv_proto::ferrokvpb::{
        Attributes, ClusterMemberAttrSetRequest, ConfChangeContext, InternalAuthenticateRequest,
        RequestHeader,
    };
    use ferrokv_raftnode::eraftpb::ConfChangeSingle;
    use ferrokv_raftnode::eraftpb::ConfChangeV2;
    use ferrokv_wal::{HardState, SnapshotMarker, WalOptions};
    use prost::Message as _;

    fn normal(index: u64, term: u64, req: Option<Request>) -> Entry {
        let data = match req {
            Some(r) => InternalRaftRequest {
                header: Some(RequestHeader {
                    id: index * 10,
                    ..Default::default()
                }),
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

    fn text(r: Request) -> String {
        describe_request(&InternalRaftRequest {
            header: None,
            request: Some(r),
        })
    }

    /// One row per request kind, in the text etcd-dump-logs v3.6.8's own expected output
    /// (tools/etcd-dump-logs/expectedoutput/listAll.output) shows for the same requests.
    #[test]
    fn describes_each_request_kind_as_etcd_dump_logs() {
        let dr = || DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            ..Default::default()
        };
        let rows: Vec<(Request, &str)> = vec![
            (
                Request::Put(PutRequest {
                    key: b"foo1".to_vec(),
                    value: b"bar1".to_vec(),
                    lease: 1,
                    ignore_lease: true,
                    ..Default::default()
                }),
                r#"put:<key:"foo1" value:"bar1" lease:1 ignore_lease:true > "#,
            ),
            (
                Request::DeleteRange(DeleteRangeRequest {
                    key: b"0".to_vec(),
                    range_end: b"9".to_vec(),
                    prev_kv: true,
                }),
                r#"delete_range:<key:"0" range_end:"9" prev_kv:true > "#,
            ),
            (
                Request::Txn(TxnRequest {
                    compare: vec![],
                    success: vec![RequestOp {
                        request: Some(Op::RequestDeleteRange(dr())),
                    }],
                    failure: vec![RequestOp {
                        request: Some(Op::RequestDeleteRange(dr())),
                    }],
                }),
                r#"txn:<success:<request_delete_range:<key:"a" range_end:"b" > > failure:<request_delete_range:<key:"a" range_end:"b" > > > "#,
            ),
            (
                Request::Range(RangeRequest {
                    key: b"1".to_vec(),
                    range_end: b"hi".to_vec(),
                    limit: 6,
                    revision: 1,
                    sort_order: 1,
                    max_mod_revision: 20000,
                    max_create_revision: 20000,
                    ..Default::default()
                }),
                r#"range:<key:"1" range_end:"hi" limit:6 revision:1 sort_order:ASCEND max_mod_revision:20000 max_create_revision:20000 > "#,
            ),
            (
                Request::Compaction(CompactionRequest {
                    revision: 0,
                    physical: true,
                }),
                "compaction:<physical:true > ",
            ),
            (
                Request::LeaseGrant(LeaseGrantRequest { ttl: 1, id: 1 }),
                "lease_grant:<TTL:1 ID:1 > ",
            ),
            (
                Request::LeaseRevoke(LeaseRevokeRequest { id: 2 }),
                "lease_revoke:<ID:2 > ",
            ),
            (
                Request::Alarm(AlarmRequest {
                    action: 3,
                    member_id: 4,
                    alarm: 5,
                }),
                "alarm:<action:3 memberID:4 alarm:5 > ",
            ),
            (
                Request::Alarm(AlarmRequest {
                    action: 1,
                    member_id: 0xab,
                    alarm: 1,
                }),
                "alarm:<action:ACTIVATE memberID:171 alarm:NOSPACE > ",
            ),
            (Request::AuthEnable(Default::default()), "auth_enable:<> "),
            (
                Request::Authenticate(InternalAuthenticateRequest {
                    name: "myname".into(),
                    password: "password".into(),
                    simple_token: "token".into(),
                }),
                r#"authenticate:<name:"myname" password:"password" simple_token:"token" > "#,
            ),
            (
                Request::AuthUserAdd(AuthUserAddRequest {
                    name: "name1".into(),
                    password: "pass1".into(),
                    options: Some(Default::default()),
                    hashed_password: String::new(),
                }),
                r#"auth_user_add:<name:"name1" password:"pass1" options:<> > "#,
            ),
            (
                Request::AuthUserGrantRole(AuthUserGrantRoleRequest {
                    user: "user1".into(),
                    role: "role1".into(),
                }),
                r#"auth_user_grant_role:<user:"user1" role:"role1" > "#,
            ),
            (
                Request::AuthRoleGrantPermission(AuthRoleGrantPermissionRequest {
                    name: "role3".into(),
                    perm: Some(Permission {
                        perm_type: 1,
                        key: b"Keys".to_vec(),
                        range_end: b"RangeEnd".to_vec(),
                    }),
                }),
                r#"auth_role_grant_permission:<name:"role3" perm:<permType:WRITE key:"Keys" range_end:"RangeEnd" > > "#,
            ),
            (
                Request::AuthRoleRevokePermission(AuthRoleRevokePermissionRequest {
                    role: "role3".into(),
                    key: b"key".to_vec(),
                    range_end: b"rangeend".to_vec(),
                }),
                r#"auth_role_revoke_permission:<role:"role3" key:"key" range_end:"rangeend" > "#,
            ),
            (
                Request::AuthRoleDelete(AuthRoleDeleteRequest {
                    role: "role1".into(),
                }),
                r#"auth_role_delete:<role:"role1" > "#,
            ),
            // Beyond etcd's golden file: escapes, a compare's zero oneof value, member attrs.
            (put(b"k\x00\xff\"\n", b""), r#"put:<key:"k\000\377\"\n" > "#),
            (
                Request::Txn(TxnRequest {
                    compare: vec![
                        Compare {
                            target: 3,
                            key: b"x".to_vec(),
                            target_union: Some(TargetUnion::Value(b"1".to_vec())),
                            ..Default::default()
                        },
                        Compare {
                            key: b"y".to_vec(),
                            target_union: Some(TargetUnion::Version(0)),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }),
                r#"txn:<compare:<target:VALUE key:"x" value:"1" > compare:<key:"y" version:0 > > "#,
            ),
            (
                Request::ClusterMemberAttrSet(ClusterMemberAttrSetRequest {
                    member_id: 255,
                    member_attributes: Some(Attributes {
                        name: "n1".into(),
                        client_urls: vec!["http://a:2379".into(), "http://b:2379".into()],
                    }),
                }),
                r#"cluster_member_attr_set:<member_ID:255 member_attributes:<name:"n1" client_urls:"http://a:2379" client_urls:"http://b:2379" > > "#,
            ),
        ];
        for (req, want) in rows {
            assert_eq!(text(req), want);
        }
    }

    #[test]
    fn the_header_comes_first_and_passwords_are_removed() {
        let e = Entry {
            index: 1,
            term: 1,
            entry_type: EntryType::EntryNormal as i32,
            data: InternalRaftRequest {
                header: Some(RequestHeader {
                    id: 7,
                    username: "root".into(),
                    auth_revision: 3,
                }),
                request: Some(Request::AuthUserChangePassword(
                    AuthUserChangePasswordRequest {
                        name: "name1".into(),
                        password: "secret".into(),
                        hashed_password: String::new(),
                    },
                )),
            }
            .encode_to_vec(),
            context: Vec::new(),
        };
        assert_eq!(
            describe_normal(&e),
            r#"header:<ID:7 username:"root" auth_revision:3 > auth_user_change_password:<name:"name1" password:"<value removed>" > "#
        );
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
            "   2\t         2\tnorm\t",
            "   2\t         3\tnorm\theader:<ID:30 > put:<key:\"foo\" value:\"bar\" > ",
        ];
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(&lines[..want.len()], &want[..], "{text}");
        assert!(
            // The ConfChangeV2 entry 4 is skipped, as etcd-dump-logs skips it.
            lines[want.len()] == "   2\t         5\tnorm\t???",
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
        assert!(!text.contains("key:\"a\""), "{text}");
        assert!(
            text.contains("header:<ID:20 > put:<key:\"b\" value:\"22\" > "),
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
