//! The peer transport: raft messages between members over the `ferrokvpb.Peer` gRPC service.
//!
//! Outbound, each peer has a bounded queue drained by its own task into one long-lived
//! client stream; `send` never blocks raft: when a queue is full or the peer is down the
//! message is dropped (raft retransmits) and raft is told the peer is unreachable. Inbound,
//! the Peer service decodes each message and steps it into the local raft node.
//!
//! Not yet carried: raft snapshots with the keyspace (`SendSnapshot`), so a follower that
//! fell behind a compacted log cannot catch up.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::RwLock;

use ferrokv_proto::ferrokvpb::{
    peer_client::PeerClient, peer_server::Peer, RaftAck, RaftBatch, SnapshotChunk,
};
use ferrokv_raftnode::{eraftpb, RaftHandle, Transport};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::transport::ClientTlsConfig;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{to_status, Error};

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 4096;
/// Messages per RaftBatch on the wire.
const BATCH: usize = 256;
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// A peer's URLs and the queue its sender task drains.
type PeerQueue = (Vec<String>, mpsc::Sender<Vec<u8>>);

pub struct PeerTransport {
    queues: RwLock<HashMap<u64, PeerQueue>>,
    /// Set once raft has started (the transport must exist before it).
    raft: Arc<OnceLock<RaftHandle>>,
    stop: watch::Receiver<bool>,
    /// Peers are added from the apply thread, which is not a runtime thread.
    rt: tokio::runtime::Handle,
    tls: Option<ClientTlsConfig>,
}

impl PeerTransport {
    /// Starts one sender task per peer (`member id -> peer URLs`); they end when `stop` fires.
    /// Must be called within the tokio runtime.
    pub fn start(
        peers: HashMap<u64, Vec<String>>,
        stop: watch::Receiver<bool>,
        tls: Option<ClientTlsConfig>,
    ) -> Self {
        let t = PeerTransport {
            queues: RwLock::new(HashMap::new()),
            raft: Arc::new(OnceLock::new()),
            stop,
            rt: tokio::runtime::Handle::current(),
            tls,
        };
        for (id, urls) in peers {
            t.add_peer(id, urls);
        }
        t
    }

    pub fn set_raft(&self, raft: RaftHandle) {
        let _ = self.raft.set(raft);
    }

    /// A member joined or changed its peer URLs (conf change applied): send to it there.
    /// Idempotent; replacing the queue ends the old sender task.
    pub fn add_peer(&self, id: u64, urls: Vec<String>) {
        let mut queues = self.queues.write();
        if urls.is_empty() || queues.get(&id).is_some_and(|(u, _)| *u == urls) {
            return;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        queues.insert(id, (urls.clone(), tx));
        self.rt.spawn(run_peer(
            id,
            urls,
            rx,
            self.raft.clone(),
            self.stop.clone(),
            self.tls.clone(),
        ));
    }

    /// A member left: dropping its queue ends its sender task.
    pub fn remove_peer(&self, id: u64) {
        self.queues.write().remove(&id);
    }
}

impl Transport for PeerTransport {
    fn send(&self, msgs: Vec<eraftpb::Message>) {
        for m in msgs {
            let queues = self.queues.read();
            let Some((_, q)) = queues.get(&m.to) else {
                tracing::debug!(to = m.to, "raft message for an unknown peer dropped");
                continue;
            };
            let bytes = match protobuf::Message::write_to_bytes(&m) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot encode raft message");
                    continue;
                }
            };
            if q.try_send(bytes).is_err() {
                tracing::debug!(to = m.to, "peer queue full; raft message dropped");
                if let Some(r) = self.raft.get() {
                    r.report_unreachable(m.to);
                }
            }
        }
    }
}

async fn run_peer(
    id: u64,
    urls: Vec<String>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    raft: Arc<OnceLock<RaftHandle>>,
    mut stop: watch::Receiver<bool>,
    tls: Option<ClientTlsConfig>,
) {
    let mut attempt = 0usize;
    loop {
        if *stop.borrow() || urls.is_empty() {
            return;
        }
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        let channel = crate::serve::connect_peer(url, tls.as_ref()).await;
        let channel = match channel {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(peer = id, url, error = %e, "peer unreachable");
                unreachable(&raft, id, &mut rx);
                tokio::select! {
                    _ = crate::core::until_stopped(&mut stop) => return,
                    _ = tokio::time::sleep(RECONNECT_DELAY) => continue,
                }
            }
        };
        let (tx, batches) = mpsc::channel::<RaftBatch>(16);
        let mut client = PeerClient::new(channel);
        let mut call = Box::pin(async move {
            client
                .send(tokio_stream::wrappers::ReceiverStream::new(batches))
                .await
        });
        loop {
            tokio::select! {
                _ = crate::core::until_stopped(&mut stop) => return,
                r = &mut call => {
                    tracing::debug!(peer = id, result = ?r.map(|_| ()), "peer stream ended");
                    break;
                }
                m = rx.recv() => {
                    let Some(first) = m else { return };
                    let mut messages = vec![first];
                    while messages.len() < BATCH {
                        match rx.try_recv() {
                            Ok(m) => messages.push(m),
                            Err(_) => break,
                        }
                    }
                    if tx.send(RaftBatch { messages }).await.is_err() {
                        break;
                    }
                }
            }
        }
        unreachable(&raft, id, &mut rx);
        tokio::select! {
            _ = crate::core::until_stopped(&mut stop) => return,
            _ = tokio::time::sleep(RECONNECT_DELAY) => {}
        }
    }
}

/// Tells raft and drops what was queued: stale messages are worse than none after a gap.
fn unreachable(raft: &OnceLock<RaftHandle>, id: u64, rx: &mut mpsc::Receiver<Vec<u8>>) {
    if let Some(r) = raft.get() {
        r.report_unreachable(id);
    }
    while rx.try_recv().is_ok() {}
}

/// The inbound side: steps every received message into the local raft node.
#[derive(Clone)]
pub struct PeerService {
    raft: RaftHandle,
}

impl PeerService {
    pub fn new(raft: RaftHandle) -> Self {
        PeerService { raft }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn send(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<RaftAck>, Status> {
        let mut input = req.into_inner();
        while let Some(batch) = input.next().await {
            let batch = batch?;
            for bytes in batch.messages {
                let msg: eraftpb::Message = protobuf::Message::parse_from_bytes(&bytes)
                    .map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))?;
                self.raft
                    .step(msg)
                    .await
                    .map_err(|e| to_status(&Error::Raft(e)))?;
            }
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn send_snapshot(
        &self,
        _req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftAck>, Status> {
        Err(to_status(&Error::Unimplemented("SendSnapshot")))
    }
}
