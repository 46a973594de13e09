//! Typed proposals: which response each kind of replicated request yields, and the waiters
//! through which the apply loop hands that response to the proposer.
//!
//! A request keeps its type from proposer to waiter: `propose::<PutRequest>` registers a
//! waiter for a `PutResponse`, and the apply loop, having executed a decoded `Put` entry,
//! completes the waiter of that id with the `PutResponse`. There is no "any response" enum to
//! match on afterwards.
//!
//! Owns the request-id → waiter table. Must not depend on raft, the transport or the gRPC
//! layer: the apply loop completes waiters, the server core registers them.

use std::any::Any;
use std::collections::HashMap;

use ferrokv_proto::etcdserverpb as pb;
use ferrokv_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse, TxnRequest, TxnResponse,
};
use ferrokv_proto::ferrokvpb::{
    internal_raft_request::Request, ClusterMemberAttrSetRequest, ClusterVersionSetRequest,
    InternalAuthenticateRequest,
};
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// A per-request failure: the storage error etcd would return for that request, or the auth
/// store's refusal of a request re-checked when applied (etcd's auth applier).
pub type ApplyResult<R> = std::result::Result<R, crate::error::Error>;

/// A request that is replicated through raft, and the response applying it yields.
pub trait Proposal: Send + 'static {
    type Response: Send + 'static;
    fn into_request(self) -> Request;
}

macro_rules! proposals {
    ($($req:ty => $resp:ty, $variant:ident;)*) => {
        $(impl Proposal for $req {
            type Response = $resp;
            fn into_request(self) -> Request {
                Request::$variant(self)
            }
        })*
    };
}

proposals! {
    PutRequest => PutResponse, Put;
    DeleteRangeRequest => DeleteRangeResponse, DeleteRange;
    TxnRequest => TxnResponse, Txn;
    CompactionRequest => CompactionResponse, Compaction;
    LeaseGrantRequest => LeaseGrantResponse, LeaseGrant;
    LeaseRevokeRequest => LeaseRevokeResponse, LeaseRevoke;
    AlarmRequest => AlarmResponse, Alarm;
    // Requests whose only answer is "done".
    LeaseCheckpointRequest => (), LeaseCheckpoint;
    ClusterMemberAttrSetRequest => (), ClusterMemberAttrSet;
    ClusterVersionSetRequest => (), ClusterVersionSet;
    // Auth requests: an auth store refusal (user exists, role not found, ...) is the
    // request's answer, not a storage failure, so it travels inside the response.
    pb::AuthEnableRequest => AuthResult<pb::AuthEnableResponse>, AuthEnable;
    pb::AuthDisableRequest => AuthResult<pb::AuthDisableResponse>, AuthDisable;
    InternalAuthenticateRequest => AuthResult<pb::AuthenticateResponse>, Authenticate;
    pb::AuthUserAddRequest => AuthResult<pb::AuthUserAddResponse>, AuthUserAdd;
    pb::AuthUserDeleteRequest => AuthResult<pb::AuthUserDeleteResponse>, AuthUserDelete;
    pb::AuthUserChangePasswordRequest =>
        AuthResult<pb::AuthUserChangePasswordResponse>, AuthUserChangePassword;
    pb::AuthUserGrantRoleRequest => AuthResult<pb::AuthUserGrantRoleResponse>, AuthUserGrantRole;
    pb::AuthUserRevokeRoleRequest =>
        AuthResult<pb::AuthUserRevokeRoleResponse>, AuthUserRevokeRole;
    pb::AuthRoleAddRequest => AuthResult<pb::AuthRoleAddResponse>, AuthRoleAdd;
    pb::AuthRoleDeleteRequest => AuthResult<pb::AuthRoleDeleteResponse>, AuthRoleDelete;
    pb::AuthRoleGrantPermissionRequest =>
        AuthResult<pb::AuthRoleGrantPermissionResponse>, AuthRoleGrantPermission;
    pb::AuthRoleRevokePermissionRequest =>
        AuthResult<pb::AuthRoleRevokePermissionResponse>, AuthRoleRevokePermission;
}

/// What applying an auth request yields: its response or the auth store's etcd error.
pub type AuthResult<R> = std::result::Result<R, crate::error::Error>;

/// Request id -> the proposer waiting for the entry to be applied. Each waiter is a
/// `oneshot::Sender<ApplyResult<R>>` for the `R` its proposal yields, stored type-erased
/// because one table holds every kind.
#[derive(Default)]
pub struct Waiters {
    inner: Mutex<HashMap<u64, Box<dyn Any + Send>>>,
}

impl Waiters {
    /// Register before proposing: the entry may be applied before `propose` returns.
    pub fn register<P: Proposal>(&self, id: u64) -> oneshot::Receiver<ApplyResult<P::Response>> {
        let (tx, rx) = oneshot::channel::<ApplyResult<P::Response>>();
        self.inner.lock().insert(id, Box::new(tx));
        rx
    }

    pub fn cancel(&self, id: u64) {
        self.inner.lock().remove(&id);
    }

    /// Hands the result of applying request `id` to its proposer, if it is still waiting.
    pub(crate) fn complete<R: Send + 'static>(&self, id: u64, result: ApplyResult<R>) {
        let Some(waiter) = self.inner.lock().remove(&id) else {
            return;
        };
        // Ids are unique per member and the waiter was registered for the very request
        // that was encoded under this id, so the types agree.
        match waiter.downcast::<oneshot::Sender<ApplyResult<R>>>() {
            // The proposer may have timed out and gone; nothing to do then.
            Ok(tx) => {
                let _ = tx.send(result);
            }
            Err(_) => tracing::error!(id, "waiter registered for another response type"),
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_proposal_encodes_as_its_own_request_kind() {
        assert!(matches!(
            PutRequest::default().into_request(),
            Request::Put(_)
        ));
        assert!(matches!(
            TxnRequest::default().into_request(),
            Request::Txn(_)
        ));
        assert!(matches!(
            LeaseGrantRequest::default().into_request(),
            Request::LeaseGrant(_)
        ));
        assert!(matches!(
            ClusterMemberAttrSetRequest::default().into_request(),
            Request::ClusterMemberAttrSet(_)
        ));
    }

    #[tokio::test]
    async fn a_waiter_receives_its_typed_response() {
        let w = Waiters::default();
        let put = w.register::<PutRequest>(1);
        let grant = w.register::<LeaseGrantRequest>(2);
        assert_eq!(w.len(), 2);
        w.complete(
            2,
            Ok(LeaseGrantResponse {
                id: 7,
                ttl: 5,
                ..Default::default()
            }),
        );
        w.complete::<PutResponse>(
            1,
            Err(crate::error::Error::Storage(
                ferrokv_storage::Error::LeaseNotFound,
            )),
        );
        assert_eq!(grant.await.unwrap().unwrap().id, 7);
        assert!(matches!(
            put.await.unwrap(),
            Err(crate::error::Error::Storage(
                ferrokv_storage::Error::LeaseNotFound
            ))
        ));
        assert!(w.is_empty());
    }

    #[tokio::test]
    async fn cancelled_and_unknown_waiters_are_ignored() {
        let w = Waiters::default();
        let rx = w.register::<PutRequest>(1);
        w.cancel(1);
        w.complete(1, Ok(PutResponse::default()));
        w.complete(9, Ok(PutResponse::default()));
        assert!(rx.await.is_err(), "a cancelled waiter gets nothing");
        assert!(w.is_empty());
    }
}
