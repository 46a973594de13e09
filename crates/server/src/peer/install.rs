//! What the peer service hands to the keyspace's writer when a snapshot arrives from the
//! leader. Defined here, at the bottom of the stack, so the peer layer needs nothing above it.

use crate::error::Result;
use tokio::sync::oneshot;

/// A keyspace snapshot received from the leader, to be installed by the apply loop (the
/// keyspace's only writer) before raft sees the snapshot message. Answered with the applied
/// index the keyspace has afterwards.
pub struct InstallRequest {
    pub path: std::path::PathBuf,
    pub done: oneshot::Sender<Result<u64>>,
}
