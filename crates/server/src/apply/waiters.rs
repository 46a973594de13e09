//! Waiters: the proposers waiting for their entry to be applied, and what the apply loop
//! hands each of them.
//!
//! Owns the request-id → oneshot table. Must not depend on raft, the transport or the gRPC
//! layer: the apply loop completes waiters, the server core registers them.

use std::collections::HashMap;

use ferrokv_proto::etcdserverpb::{
    AlarmResponse, CompactionResponse, DeleteRangeResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutResponse, TxnResponse,
};
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// The outcome of one applied request, handed to the proposer's waiter.
#[derive(Debug)]
pub enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    Alarm(AlarmResponse),
    /// Requests whose only answer is "done" (member attributes, lease checkpoints).
    Done,
}

/// A per-request failure is the storage error etcd would return for that request.
pub type ApplyResult = std::result::Result<Applied, ferrokv_storage::Error>;

/// Request id -> the proposer waiting for the entry to be applied.
#[derive(Default)]
pub struct Waiters {
    inner: Mutex<HashMap<u64, oneshot::Sender<ApplyResult>>>,
}

impl Waiters {
    /// Register before proposing: the entry may be applied before `propose` returns.
    pub fn register(&self, id: u64) -> oneshot::Receiver<ApplyResult> {
        let (tx, rx) = oneshot::channel();
        self.inner.lock().insert(id, tx);
        rx
    }

    pub fn cancel(&self, id: u64) {
        self.inner.lock().remove(&id);
    }

    pub(crate) fn complete(&self, id: u64, result: ApplyResult) {
        if let Some(tx) = self.inner.lock().remove(&id) {
            // The proposer may have timed out and gone; nothing to do then.
            let _ = tx.send(result);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
