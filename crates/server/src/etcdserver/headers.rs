//! Response headers: every etcd response carries the cluster id, the answering member's id,
//! a revision and the raft term. Storage fills the revision of what it answers; the server
//! completes the rest, or stamps a header at the current revision.

use ferrokv_proto::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse,
    MemberAddResponse, MemberPromoteResponse, MemberRemoveResponse, PutResponse, RangeResponse,
    ResponseHeader, TxnResponse,
};

use super::EtcdServer;
use crate::error::Result;

/// A response with an etcd header.
pub(super) trait Headed {
    fn header_mut(&mut self) -> &mut Option<ResponseHeader>;
}

macro_rules! headed {
    ($($t:ty),*) => {$(
        impl Headed for $t {
            fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
                &mut self.header
            }
        }
    )*};
}

headed!(
    RangeResponse,
    PutResponse,
    DeleteRangeResponse,
    TxnResponse,
    CompactionResponse,
    LeaseGrantResponse,
    LeaseRevokeResponse,
    MemberAddResponse,
    MemberRemoveResponse,
    MemberPromoteResponse
);

impl EtcdServer {
    /// Completes the header storage filled (its revision) with ids and term.
    pub(super) fn filled<R: Headed>(&self, mut resp: R) -> R {
        self.header.fill(resp.header_mut());
        resp
    }

    /// Replaces the header with one of this member at the current revision.
    pub(super) fn stamped<R: Headed>(&self, mut resp: R) -> R {
        *resp.header_mut() = Some(self.header_now());
        resp
    }

    /// The leader's answer to a request this member forwarded, with this member's header
    /// (the client asked this member).
    pub(super) async fn forwarded<R: Headed>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<tonic::Response<R>, tonic::Status>>,
    ) -> Result<R> {
        Ok(self.stamped(call.await?.into_inner()))
    }

    /// The header of Cluster RPCs: etcd's `ClusterServer` gives ids and raft term but no
    /// revision (membership is not part of the keyspace).
    pub(super) fn cluster_header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: 0,
            ..self.header_now()
        }
    }

    /// [`Self::forwarded`] for a Cluster RPC: this member's header, without a revision.
    pub(super) async fn forwarded_cluster<R: Headed>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<tonic::Response<R>, tonic::Status>>,
    ) -> Result<R> {
        let mut resp = self.forwarded(call).await?;
        // The leader answered once the change applied there; wait until it applied here too,
        // so this member's next MemberList shows it, as when etcd's follower waits for its own
        // apply of the change before answering.
        self.read_barrier().await?;
        *resp.header_mut() = Some(self.cluster_header());
        Ok(resp)
    }
}
