//! The two seams of raft snapshots between the transport and the keyspace: the leader's
//! transport streams what a [`SnapshotSource`] writes, and the follower's peer service hands
//! what it received to a [`SnapshotInstaller`]. The transport never holds the keyspace (in
//! etcd too, the server builds the snapshot message and rafthttp only streams it).

use std::path::{Path, PathBuf};

use crate::error::Result;

/// Produces the keyspace copy a lagging follower receives (the server core implements it).
#[tonic::async_trait]
pub trait SnapshotSource: Send + Sync + 'static {
    /// Writes to `path` (which must not exist) a copy of the keyspace that holds at least
    /// raft index `index`, waiting, bounded, until the keyspace has applied that far: the
    /// index is raft's commit index, and a copy behind it would let the follower skip
    /// entries nobody applied for it. `to` is the follower it is for (the source may refuse
    /// one that could not read it).
    async fn write_snapshot(&self, to: u64, index: u64, path: &Path) -> Result<()>;
}

/// Installs a keyspace file received from the leader (the apply loop, the keyspace's only
/// writer) and answers with the applied index the keyspace has afterwards.
#[tonic::async_trait]
pub trait SnapshotInstaller: Send + Sync + 'static {
    async fn install(&self, path: PathBuf) -> Result<u64>;
}
