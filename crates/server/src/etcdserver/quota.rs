//! The backend quota (`--quota-backend-bytes`): a decorator in front of every proposal that
//! can grow the store. The size it compares is the one the apply loop last measured
//! ([`DbSize`]), read from memory: a write does not `stat` the file.

use ferrokv_proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};

use super::{EtcdServer, DEFAULT_QUOTA_BYTES};
use crate::apply::{AuthInfo, Proposal};
use crate::error::{Error, Result};

impl EtcdServer {
    /// The backend quota in bytes (0 = etcd's 2 GiB default).
    pub fn quota_bytes(&self) -> u64 {
        match self.cfg.quota_backend_bytes {
            0 => DEFAULT_QUOTA_BYTES as u64,
            q => q,
        }
    }

    /// Proposes a write that can grow the store, unless the quota refuses it.
    pub(super) async fn propose_within_quota<P: Proposal>(
        &self,
        p: P,
        who: &AuthInfo,
    ) -> Result<P::Response> {
        self.check_quota().await?;
        self.propose_as(p, who).await
    }

    /// Proposes a write that cannot grow the store (delete, compaction, lease revoke):
    /// refused only under a CORRUPT alarm, as etcd's corrupt applier refuses it.
    pub(super) async fn propose_write<P: Proposal>(
        &self,
        p: P,
        who: &AuthInfo,
    ) -> Result<P::Response> {
        self.refuse_if_corrupt()?;
        self.propose_as(p, who).await
    }

    /// etcd refuses Put, DeleteRange, Txn, Compaction, LeaseGrant and LeaseRevoke while any
    /// member is CORRUPT, with `etcdserver: corrupt cluster`.
    pub(super) fn refuse_if_corrupt(&self) -> Result<()> {
        if self.alarms.corrupt() {
            return Err(Error::CorruptCluster);
        }
        Ok(())
    }

    /// Refuses writes once NOSPACE is raised; raises it (through raft, so every member
    /// refuses) when the backend file is over quota.
    async fn check_quota(&self) -> Result<()> {
        self.refuse_if_corrupt()?;
        if self.alarms.no_space() {
            return Err(Error::NoSpace);
        }
        let size = self.db_size.get();
        if size <= self.quota_bytes() {
            return Ok(());
        }
        tracing::warn!(
            size,
            quota = self.quota_bytes(),
            "backend over quota; raising NOSPACE"
        );
        let alarm = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.member_id(),
            alarm: AlarmType::Nospace as i32,
        };
        if let Err(e) = self.propose(alarm).await {
            tracing::warn!(error = %e, "raising NOSPACE failed");
        }
        Err(Error::NoSpace)
    }
}
