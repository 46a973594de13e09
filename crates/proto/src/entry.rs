//! The payload of a normal raft entry: etcd's `InternalRaftRequest`, or the encoding ferrokv
//! wrote before it took etcd's (data dirs and WALs of those versions must still replay).
//!
//! The rule that tells them apart: etcd 3.6 (and ferrokv now) always writes the field 100
//! header, and the old encoding has no field 100. So an entry that decodes with a header is
//! etcd's format; one without is decoded the old way. An etcd 3.6 entry never lacks the
//! header (etcd itself panics on one), so nothing of etcd's is misread as old.

use prost::Message as _;

use crate::ferrokvpb::internal_raft_request::Request;
use crate::ferrokvpb::legacy_internal_request::Request as Legacy;
use crate::ferrokvpb::{
    Attributes, ClusterMemberAttrSetRequest, InternalAuthenticateRequest, InternalRaftRequest,
    LegacyAuthenticate, LegacyInternalRequest, MemberAttributes, RequestHeader,
};

/// Which encoding an entry was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// etcd's `InternalRaftRequest` with its header.
    Etcd,
    /// ferrokv's earlier encoding: the header then holds only the id (no user, revision 0),
    /// and the permission checks were made when it was proposed, under the old rules.
    Legacy,
}

/// Decodes an entry of either format into etcd's message.
pub fn decode(data: &[u8]) -> Result<(InternalRaftRequest, Format), prost::DecodeError> {
    if let Ok(req) = InternalRaftRequest::decode(data) {
        if req.header.is_some() {
            return Ok((req, Format::Etcd));
        }
    }
    let old = LegacyInternalRequest::decode(data)?;
    let request = old.request.map(|r| match r {
        Legacy::Put(r) => Request::Put(r),
        Legacy::DeleteRange(r) => Request::DeleteRange(r),
        Legacy::Txn(r) => Request::Txn(r),
        Legacy::Compaction(r) => Request::Compaction(r),
        Legacy::LeaseGrant(r) => Request::LeaseGrant(r),
        Legacy::LeaseRevoke(r) => Request::LeaseRevoke(r),
        Legacy::LeaseCheckpoint(r) => Request::LeaseCheckpoint(r),
        Legacy::Alarm(r) => Request::Alarm(r),
        Legacy::MemberAttributes(m) => Request::ClusterMemberAttrSet(ClusterMemberAttrSetRequest {
            member_id: m.member_id,
            member_attributes: Some(Attributes {
                name: m.name,
                client_urls: m.client_urls,
            }),
        }),
        Legacy::AuthEnable(r) => Request::AuthEnable(r),
        Legacy::AuthDisable(r) => Request::AuthDisable(r),
        Legacy::Authenticate(a) => Request::Authenticate(InternalAuthenticateRequest {
            name: a.name,
            password: String::new(),
            simple_token: a.simple_token,
        }),
        Legacy::AuthUserAdd(r) => Request::AuthUserAdd(r),
        Legacy::AuthUserDelete(r) => Request::AuthUserDelete(r),
        Legacy::AuthUserChangePassword(r) => Request::AuthUserChangePassword(r),
        Legacy::AuthUserGrantRole(r) => Request::AuthUserGrantRole(r),
        Legacy::AuthUserRevokeRole(r) => Request::AuthUserRevokeRole(r),
        Legacy::AuthRoleAdd(r) => Request::AuthRoleAdd(r),
        Legacy::AuthRoleDelete(r) => Request::AuthRoleDelete(r),
        Legacy::AuthRoleGrantPermission(r) => Request::AuthRoleGrantPermission(r),
        Legacy::AuthRoleRevokePermission(r) => Request::AuthRoleRevokePermission(r),
    });
    let req = InternalRaftRequest {
        header: Some(RequestHeader {
            id: old.id,
            ..Default::default()
        }),
        request,
    };
    Ok((req, Format::Legacy))
}

/// Encodes `req` the way ferrokv wrote entries before etcd's format, for a cluster whose
/// members have not all announced that they read etcd's (the entry format gate, applied state
/// of the server): a member of that version misreads etcd's field numbers (its compaction is
/// etcd's lease revoke, ...), so until every member reads both, entries stay in the encoding
/// all of them read. The header keeps only the id: those entries are not re-checked at apply.
///
/// `None` for the requests that encoding has no field for (etcd's linearizable auth reads,
/// cluster version, downgrades: ferrokv never proposes them).
pub fn encode_legacy(req: &InternalRaftRequest) -> Option<Vec<u8>> {
    let id = req.header.as_ref().map_or(0, |h| h.id);
    let request = match req.request.clone()? {
        Request::Put(r) => Legacy::Put(r),
        Request::DeleteRange(r) => Legacy::DeleteRange(r),
        Request::Txn(r) => Legacy::Txn(r),
        Request::Compaction(r) => Legacy::Compaction(r),
        Request::LeaseGrant(r) => Legacy::LeaseGrant(r),
        Request::LeaseRevoke(r) => Legacy::LeaseRevoke(r),
        Request::LeaseCheckpoint(r) => Legacy::LeaseCheckpoint(r),
        Request::Alarm(r) => Legacy::Alarm(r),
        Request::ClusterMemberAttrSet(m) => {
            let attrs = m.member_attributes.unwrap_or_default();
            Legacy::MemberAttributes(MemberAttributes {
                member_id: m.member_id,
                name: attrs.name,
                client_urls: attrs.client_urls,
            })
        }
        Request::AuthEnable(r) => Legacy::AuthEnable(r),
        Request::AuthDisable(r) => Legacy::AuthDisable(r),
        Request::Authenticate(a) => Legacy::Authenticate(LegacyAuthenticate {
            name: a.name,
            simple_token: a.simple_token,
        }),
        Request::AuthUserAdd(mut r) => {
            r.hashed_password = legacy_hash(&r.hashed_password);
            Legacy::AuthUserAdd(r)
        }
        Request::AuthUserDelete(r) => Legacy::AuthUserDelete(r),
        Request::AuthUserChangePassword(mut r) => {
            r.hashed_password = legacy_hash(&r.hashed_password);
            Legacy::AuthUserChangePassword(r)
        }
        Request::AuthUserGrantRole(r) => Legacy::AuthUserGrantRole(r),
        Request::AuthUserRevokeRole(r) => Legacy::AuthUserRevokeRole(r),
        Request::AuthRoleAdd(r) => Legacy::AuthRoleAdd(r),
        Request::AuthRoleDelete(r) => Legacy::AuthRoleDelete(r),
        Request::AuthRoleGrantPermission(r) => Legacy::AuthRoleGrantPermission(r),
        Request::AuthRoleRevokePermission(r) => Legacy::AuthRoleRevokePermission(r),
        Request::Range(_)
        | Request::AuthStatus(_)
        | Request::AuthUserGet(_)
        | Request::AuthUserList(_)
        | Request::AuthRoleList(_)
        | Request::AuthRoleGet(_)
        | Request::ClusterVersionSet(_)
        | Request::DowngradeInfoSet(_) => return None,
    };
    Some(
        LegacyInternalRequest {
            id,
            request: Some(request),
        }
        .encode_to_vec(),
    )
}

/// The old encoding carried the bcrypt text itself where etcd's carries it in base64, and a
/// member of that version stores what it finds: turn etcd's back into the text.
fn legacy_hash(hashed: &str) -> String {
    use base64::Engine as _;
    if hashed.is_empty() || hashed.starts_with('$') {
        return hashed.to_string();
    }
    base64::engine::general_purpose::STANDARD
        .decode(hashed)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| hashed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcdserverpb::{DeleteRangeRequest, PutRequest, TxnRequest};

    fn legacy(id: u64, r: Legacy) -> Vec<u8> {
        LegacyInternalRequest {
            id,
            request: Some(r),
        }
        .encode_to_vec()
    }

    #[test]
    fn an_etcd_entry_decodes_as_etcd_with_its_header() {
        let put = PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        let data = InternalRaftRequest {
            header: Some(RequestHeader {
                id: 7,
                username: "alice".into(),
                auth_revision: 3,
            }),
            request: Some(Request::Put(put.clone())),
        }
        .encode_to_vec();
        // etcd's numbers: put = 4 (tag 0x22) first, then header = 100 (tag 0xa2 0x06), in field
        // order as etcd's marshaller writes them.
        assert_eq!(data[0], 0x22);
        assert!(data.windows(2).any(|w| w == [0xa2, 0x06]));
        let (req, f) = decode(&data).unwrap();
        assert_eq!(f, Format::Etcd);
        assert_eq!(req.header.unwrap().username, "alice");
        assert_eq!(req.request, Some(Request::Put(put)));
    }

    #[test]
    fn an_empty_header_still_marks_etcd_format() {
        let data = InternalRaftRequest {
            header: Some(RequestHeader::default()),
            request: Some(Request::AuthEnable(Default::default())),
        }
        .encode_to_vec();
        let (req, f) = decode(&data).unwrap();
        assert_eq!(f, Format::Etcd);
        assert!(matches!(req.request, Some(Request::AuthEnable(_))));
    }

    /// Old entries whose numbers mean something else in etcd's message (old put = 2 is etcd's
    /// v2, old delete_range = 3 is etcd's range, old txn = 4 is etcd's put, ...).
    #[test]
    fn legacy_entries_decode_the_old_way() {
        let put = PutRequest {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
            ..Default::default()
        };
        let (req, f) = decode(&legacy(5, Legacy::Put(put.clone()))).unwrap();
        assert_eq!(f, Format::Legacy);
        assert_eq!(req.header.unwrap().id, 5);
        assert_eq!(req.request, Some(Request::Put(put)));

        let del = DeleteRangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            ..Default::default()
        };
        let (req, _) = decode(&legacy(6, Legacy::DeleteRange(del.clone()))).unwrap();
        assert_eq!(req.request, Some(Request::DeleteRange(del)));

        let txn = TxnRequest::default();
        let (req, _) = decode(&legacy(7, Legacy::Txn(txn.clone()))).unwrap();
        assert_eq!(req.request, Some(Request::Txn(txn)));

        let (req, _) = decode(&legacy(
            8,
            Legacy::MemberAttributes(MemberAttributes {
                member_id: 9,
                name: "m1".into(),
                client_urls: vec!["http://x".into()],
            }),
        ))
        .unwrap();
        let Some(Request::ClusterMemberAttrSet(m)) = req.request else {
            panic!("{req:?}")
        };
        assert_eq!(m.member_id, 9);
        assert_eq!(m.member_attributes.unwrap().name, "m1");

        let (req, _) = decode(&legacy(
            9,
            Legacy::Authenticate(LegacyAuthenticate {
                name: "u".into(),
                simple_token: "tok.1".into(),
            }),
        ))
        .unwrap();
        let Some(Request::Authenticate(a)) = req.request else {
            panic!("{req:?}")
        };
        assert_eq!((a.name.as_str(), a.simple_token.as_str()), ("u", "tok.1"));
        assert!(a.password.is_empty());
    }

    /// What the gate relies on: each request ferrokv proposes survives the old encoding (as the
    /// previous version reads it) and comes back the same from `decode`.
    #[test]
    fn legacy_encoding_round_trips() {
        use crate::etcdserverpb::{AuthUserAddRequest, CompactionRequest, LeaseRevokeRequest};
        let cases = [
            Request::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                lease: 5,
                ..Default::default()
            }),
            Request::Compaction(CompactionRequest {
                revision: 42,
                physical: false,
            }),
            Request::LeaseRevoke(LeaseRevokeRequest { id: 9 }),
            Request::Txn(TxnRequest::default()),
            Request::ClusterMemberAttrSet(ClusterMemberAttrSetRequest {
                member_id: 3,
                member_attributes: Some(Attributes {
                    name: "m".into(),
                    client_urls: vec!["http://127.0.0.1:1".into()],
                }),
            }),
        ];
        for r in cases {
            let req = InternalRaftRequest {
                header: Some(RequestHeader {
                    id: 11,
                    username: "u".into(),
                    auth_revision: 4,
                }),
                request: Some(r.clone()),
            };
            let data = encode_legacy(&req).unwrap();
            let (back, f) = decode(&data).unwrap();
            assert_eq!(f, Format::Legacy);
            assert_eq!(back.header.unwrap().id, 11);
            assert_eq!(back.request, Some(r));
        }
        // etcd's base64 of the bcrypt text goes back to the text the old version stored.
        let add = InternalRaftRequest {
            header: Some(RequestHeader::default()),
            request: Some(Request::AuthUserAdd(AuthUserAddRequest {
                name: "u".into(),
                hashed_password: "JDJhJDEwJGFiYw==".into(),
                ..Default::default()
            })),
        };
        let data = encode_legacy(&add).unwrap();
        let Some(Legacy::AuthUserAdd(r)) = LegacyInternalRequest::decode(data.as_slice())
            .unwrap()
            .request
        else {
            panic!()
        };
        assert_eq!(r.hashed_password, "$2a$10$abc");
    }

    /// The announcement: an etcd-format member attributes entry (1301 with header 100) is,
    /// to the previous version's decoder, a request with no id and no body, which it skips.
    #[test]
    fn an_etcd_attr_set_is_empty_to_the_old_decoder() {
        let data = InternalRaftRequest {
            header: Some(RequestHeader {
                id: 77,
                ..Default::default()
            }),
            request: Some(Request::ClusterMemberAttrSet(ClusterMemberAttrSetRequest {
                member_id: 3,
                member_attributes: Some(Attributes::default()),
            })),
        }
        .encode_to_vec();
        let old = LegacyInternalRequest::decode(data.as_slice()).unwrap();
        assert_eq!((old.id, old.request), (0, None));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
    }
}
