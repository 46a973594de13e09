//! Fuzz harnesses: each takes arbitrary bytes and panics when an invariant breaks. The
//! cargo-fuzz targets in `fuzz/fuzz_targets` call them; `tests/corpus.rs` replays the
//! checked-in corpus (`fuzz/corpus/<target>/`) through them in `make test`.

use ferrokv_proto::codec::decode_as_etcd;
use ferrokv_proto::etcdserverpb as pb;
use ferrokv_storage::validate;
use prost::Message;
use tonic_code::is_etcd_decode_code;

mod tonic_code {
    /// The codes etcd answers bytes that do not make a request with: INTERNAL for
    /// undecodable bytes, INVALID_ARGUMENT for a txn nested past the op budget.
    pub fn is_etcd_decode_code(c: tonic::Code) -> bool {
        matches!(c, tonic::Code::Internal | tonic::Code::InvalidArgument)
    }
}

/// Decodes `bytes` as `T` the way the gRPC services do; a request that decodes must survive
/// an encode/decode round trip unchanged.
fn decode_one<T: Message + Default + PartialEq + std::fmt::Debug + 'static>(
    bytes: &[u8],
) -> Option<T> {
    match decode_as_etcd::<T>(bytes) {
        Ok(m) => {
            let again = T::decode(m.encode_to_vec().as_slice()).expect("re-decode");
            assert_eq!(again, m, "round trip changed the message");
            Some(m)
        }
        Err(s) => {
            assert!(is_etcd_decode_code(s.code()), "unexpected code {s:?}");
            assert!(!s.message().is_empty(), "empty status message");
            None
        }
    }
}

/// Every request type a client sends over the client port, by index.
macro_rules! request_types {
    ($($t:ident),* $(,)?) => {
        const REQUEST_TYPES: usize = [$(stringify!($t)),*].len();
        fn decode_nth(n: usize, bytes: &[u8]) {
            let mut i = 0;
            $(
                if n == i {
                    let _ = decode_one::<pb::$t>(bytes);
                    return;
                }
                i += 1;
            )*
            let _ = i;
        }
    };
}

request_types!(
    RangeRequest,
    PutRequest,
    DeleteRangeRequest,
    TxnRequest,
    CompactionRequest,
    WatchRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    LeaseKeepAliveRequest,
    LeaseTimeToLiveRequest,
    LeaseLeasesRequest,
    MemberAddRequest,
    MemberRemoveRequest,
    MemberUpdateRequest,
    MemberListRequest,
    MemberPromoteRequest,
    AlarmRequest,
    StatusRequest,
    DefragmentRequest,
    HashRequest,
    HashKvRequest,
    SnapshotRequest,
    MoveLeaderRequest,
    DowngradeRequest,
    AuthEnableRequest,
    AuthDisableRequest,
    AuthStatusRequest,
    AuthenticateRequest,
    AuthUserAddRequest,
    AuthUserGetRequest,
    AuthUserListRequest,
    AuthUserDeleteRequest,
    AuthUserChangePasswordRequest,
    AuthUserGrantRoleRequest,
    AuthUserRevokeRoleRequest,
    AuthRoleAddRequest,
    AuthRoleGetRequest,
    AuthRoleListRequest,
    AuthRoleDeleteRequest,
    AuthRoleGrantPermissionRequest,
    AuthRoleRevokePermissionRequest,
);

/// Target `decode_request`: the first byte picks the request type, the rest is its body.
/// Decoding never panics, fails only with etcd's codes, and a KV request that decodes is
/// validated as the API layer does (which must not panic either).
pub fn decode_request(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let n = usize::from(which) % REQUEST_TYPES;
    decode_nth(n, body);
    // The KV requests also go through validation.
    match n {
        0 => {
            if let Some(r) = decode_one::<pb::RangeRequest>(body) {
                let _ = validate::range(&r);
            }
        }
        1 => {
            if let Some(r) = decode_one::<pb::PutRequest>(body) {
                let _ = validate::put(&r);
            }
        }
        2 => {
            if let Some(r) = decode_one::<pb::DeleteRangeRequest>(body) {
                let _ = validate::delete_range(&r);
            }
        }
        3 => {
            if let Some(r) = decode_one::<pb::TxnRequest>(body) {
                let _ = validate::txn(&r, validate::DEFAULT_MAX_TXN_OPS);
            }
        }
        _ => {}
    }
}

/// At most this many operations per input, so one input stays fast.
const MAX_OPS: usize = 64;

/// Target `apply`: `data` is a sequence of operations, each one kind byte, a little-endian
/// u16 length and that many body bytes (decoded as the kind's request). Each valid op is
/// applied in its own committed write batch to a fresh store, as the applier does; failing
/// ops are rolled back. Afterwards the store's integrity check passes, and `Hash` and
/// `HashKV` are the same after a reopen.
pub fn apply(data: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let store = ferrokv_storage::Store::open(&path).expect("open store");
    let mut rest = data;
    let mut ops = 0;
    while rest.len() >= 3 && ops < MAX_OPS {
        ops += 1;
        let kind = rest[0] % 6;
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let body = &rest[3..3 + len];
        rest = &rest[3 + len..];
        let mut batch = store.write_batch().expect("write batch");
        let ok = match kind {
            0 => decode_one::<pb::PutRequest>(body)
                .filter(|r| validate::put(r).is_ok())
                .map(|r| batch.put(&r).is_ok()),
            1 => decode_one::<pb::DeleteRangeRequest>(body)
                .filter(|r| validate::delete_range(r).is_ok())
                .map(|r| batch.delete_range(&r).is_ok()),
            2 => decode_one::<pb::TxnRequest>(body)
                .filter(|r| validate::txn(r, validate::DEFAULT_MAX_TXN_OPS).is_ok())
                .map(|r| batch.txn(&r).is_ok()),
            3 => decode_one::<pb::CompactionRequest>(body).map(|r| {
                // Aim inside the history most of the time.
                let rev = r.revision.rem_euclid(batch.revision() + 2);
                batch.compact(rev).is_ok()
            }),
            4 => decode_one::<pb::LeaseGrantRequest>(body)
                .map(|r| batch.lease_grant(r.id, r.ttl).is_ok()),
            _ => {
                decode_one::<pb::LeaseRevokeRequest>(body).map(|r| batch.lease_revoke(r.id).is_ok())
            }
        };
        if ok == Some(true) {
            batch.commit(false).expect("commit");
        }
    }
    let report = store.verify().expect("verify");
    assert!(report.ok(), "integrity check failed: {:?}", report.problems);
    let hash = store.hash().expect("hash");
    let hash_kv = store.hash_kv(0).expect("hash_kv");
    let revision = store.current_revision();
    drop(store);
    let store = ferrokv_storage::Store::open(&path).expect("reopen store");
    assert_eq!(store.current_revision(), revision, "revision after reopen");
    assert_eq!(
        store.hash().expect("hash"),
        hash,
        "Hash changed across a reopen"
    );
    assert_eq!(
        store.hash_kv(0).expect("hash_kv"),
        hash_kv,
        "HashKV changed across a reopen"
    );
    let report = store.verify().expect("verify after reopen");
    assert!(report.ok(), "integrity after reopen: {:?}", report.problems);
}
