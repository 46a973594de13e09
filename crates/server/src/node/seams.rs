//! The node plugs the concrete layers into each other's seams: raft, the transport and the
//! watch hub into the apply loop's traits, the apply loop into the peer service's installer.

use std::path::PathBuf;

use ferrokv_proto::mvccpb::Event;
use ferrokv_raftnode::RaftHandle;
use tokio::sync::{mpsc, oneshot};

use crate::apply::{DurableIndexSink, EventSink, InstallRequest, PeerDirectory};
use crate::error::{Error, Result};
use crate::peer::{PeerTransport, SnapshotInstaller};
use crate::watch::WatchHub;

impl DurableIndexSink for RaftHandle {
    fn report_durable_applied(&self, index: u64) {
        RaftHandle::report_durable_applied(self, index)
    }
}

impl PeerDirectory for PeerTransport {
    fn add_peer(&self, id: u64, urls: Vec<String>) {
        PeerTransport::add_peer(self, id, urls)
    }

    fn remove_peer(&self, id: u64) {
        PeerTransport::remove_peer(self, id)
    }
}

impl EventSink for WatchHub {
    fn publish(&self, events: Vec<Event>, revision: i64) {
        WatchHub::publish(self, events, revision)
    }

    fn resync_all(&self, revision: i64) {
        WatchHub::resync_all(self, revision)
    }
}

/// Received keyspace snapshots go to the apply loop's install queue.
pub(super) struct ApplyLoopInstaller(pub mpsc::Sender<InstallRequest>);

#[tonic::async_trait]
impl SnapshotInstaller for ApplyLoopInstaller {
    async fn install(&self, path: PathBuf) -> Result<u64> {
        let (done, rx) = oneshot::channel();
        self.0
            .send(InstallRequest { path, done })
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }
}
