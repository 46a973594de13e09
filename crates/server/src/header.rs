//! Response headers: every etcd response carries the cluster id, the answering member's id,
//! a revision and the raft term. The ids and term change rarely and are read on every
//! request, so they live in atomics shared by all services.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ferrokv_proto::etcdserverpb::ResponseHeader;

#[derive(Clone, Debug, Default)]
pub struct HeaderSource {
    inner: Arc<Ids>,
}

#[derive(Debug, Default)]
struct Ids {
    cluster_id: AtomicU64,
    member_id: AtomicU64,
    raft_term: AtomicU64,
}

impl HeaderSource {
    pub fn new(cluster_id: u64, member_id: u64) -> Self {
        let s = Self::default();
        s.inner.cluster_id.store(cluster_id, Ordering::Relaxed);
        s.inner.member_id.store(member_id, Ordering::Relaxed);
        s
    }

    pub fn set_cluster_id(&self, id: u64) {
        self.inner.cluster_id.store(id, Ordering::Relaxed);
    }

    pub fn set_raft_term(&self, term: u64) {
        self.inner.raft_term.store(term, Ordering::Relaxed);
    }

    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id.load(Ordering::Relaxed)
    }

    pub fn member_id(&self) -> u64 {
        self.inner.member_id.load(Ordering::Relaxed)
    }

    pub fn raft_term(&self) -> u64 {
        self.inner.raft_term.load(Ordering::Relaxed)
    }

    /// A header for a response at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id(),
            member_id: self.member_id(),
            revision,
            raft_term: self.raft_term(),
        }
    }

    /// Completes a header the storage layer filled with only the revision.
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = Some(self.header(revision));
    }
}
