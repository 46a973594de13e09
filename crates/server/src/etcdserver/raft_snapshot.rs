//! The server core as the source of raft snapshots: the keyspace copy the leader's
//! transport streams to a lagging follower.

use std::path::Path;
use std::time::Duration;

use super::EtcdServer;
use crate::error::{Error, Result};
use crate::peer::SnapshotSource;

/// How long the leader waits for its own keyspace to reach a snapshot's index.
const SNAPSHOT_APPLY_WAIT: Duration = Duration::from_secs(30);

#[tonic::async_trait]
impl SnapshotSource for EtcdServer {
    async fn write_snapshot(&self, to: u64, index: u64, path: &Path) -> Result<()> {
        // The previous version reads a keyspace of schema 2 (this version's layout) with its
        // schema 1 reader: it would serve garbage. Until the cluster has switched to etcd's
        // entry format, only a member that announced it is of this version gets a copy; any
        // other stays behind (raft retries the snapshot) until it is upgraded.
        let gate = crate::apply::GateState::load(&self.store)?;
        if !gate.switched && !gate.announced.contains(&to) {
            tracing::warn!(
                to = format!("{to:x}"),
                "not sending a keyspace snapshot to a member that may run the previous version \
                 (it cannot read this version's keyspace); it catches up once upgraded"
            );
            return Err(Error::Unimplemented(
                "keyspace snapshot for a member of the previous version",
            ));
        }
        // The apply loop publishes the applied index after every batch and install, so this
        // wakes when the keyspace gets there instead of polling it.
        let mut applied = self.applied.clone();
        tokio::time::timeout(SNAPSHOT_APPLY_WAIT, applied.wait_for(|a| *a >= index))
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(|_| Error::Stopped)?;
        let path = path.to_path_buf();
        self.blocking(move |s| s.snapshot_to(&path).map_err(Error::from))
            .await
    }
}
