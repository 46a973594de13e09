//! The inbound side of the peer transport: the `ferrokvpb.Peer` gRPC service. Steps every
//! received raft message into the local raft node; a snapshot's keyspace is handed to its
//! installer (the apply loop) first, and only then is the `MsgSnapshot` stepped, so raft never
//! believes in data the keyspace does not hold.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ferrokv_datadir::{DataDir, Scratch};
use ferrokv_proto::ferrokvpb::{peer_server::Peer, RaftAck, RaftBatch, SnapshotChunk};
use ferrokv_raftnode::{eraftpb, RaftHandle};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::SnapshotInstaller;
use crate::error::Error;
use crate::metrics::{Metrics, PeerStats};
use crate::snapshot_file::RemoveOnDrop;

/// The inbound side: steps every received message into the local raft node; snapshots are
/// installed by the apply loop first.
#[derive(Clone)]
pub struct PeerService {
    raft: RaftHandle,
    installer: Arc<dyn SnapshotInstaller>,
    layout: DataDir,
    metrics: Arc<Metrics>,
}

impl PeerService {
    pub fn new(
        raft: RaftHandle,
        installer: Arc<dyn SnapshotInstaller>,
        layout: DataDir,
        metrics: Arc<Metrics>,
    ) -> Self {
        PeerService {
            raft,
            installer,
            layout,
            metrics,
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn send(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<RaftAck>, Status> {
        let mut input = req.into_inner();
        // One stream carries one peer's messages: its counters are looked up once.
        let mut from: Option<Arc<PeerStats>> = None;
        while let Some(batch) = input.next().await {
            let batch = match batch {
                Ok(b) => b,
                Err(status) => {
                    if let Some(p) = &from {
                        p.received_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(status);
                }
            };
            for bytes in batch.messages {
                let msg: eraftpb::Message = protobuf::Message::parse_from_bytes(&bytes)
                    .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
                from.get_or_insert_with(|| self.metrics.peer(msg.from))
                    .received_bytes
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                self.raft.step(msg).await.map_err(Error::Raft)?;
            }
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn send_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftAck>, Status> {
        let mut input = req.into_inner();
        let first = input
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let msg: eraftpb::Message = protobuf::Message::parse_from_bytes(&first.raft_message)
            .map_err(|e| Status::invalid_argument(format!("bad snapshot message: {e}")))?;
        if msg.get_msg_type() != eraftpb::MessageType::MsgSnapshot {
            return Err(Status::invalid_argument("first chunk is not a MsgSnapshot"));
        }
        let index = msg.get_snapshot().get_metadata().index;
        let path = self.layout.scratch(Scratch::Recv, &index.to_string());
        let _cleanup = RemoveOnDrop(path.clone());
        let mut file = tokio::fs::File::create(&path).await.map_err(Error::from)?;
        file.write_all(&first.data).await.map_err(Error::from)?;
        let mut bytes = first.data.len() as u64;
        while let Some(chunk) = input.next().await {
            let chunk = chunk?;
            bytes += chunk.data.len() as u64;
            file.write_all(&chunk.data).await.map_err(Error::from)?;
        }
        file.flush().await.map_err(Error::from)?;
        drop(file);
        tracing::info!(index, bytes, "received a keyspace snapshot from the leader");
        let applied = self.installer.install(path.clone()).await?;
        if applied < index {
            return Err(Status::internal(format!(
                "snapshot keyspace holds index {applied}, below the snapshot's {index}"
            )));
        }
        self.raft.step(msg).await.map_err(Error::Raft)?;
        Ok(Response::new(RaftAck {}))
    }
}
