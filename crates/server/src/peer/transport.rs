//! The peer transport: raft messages between members over the `ferrokvpb.Peer` gRPC service.
//!
//! Outbound, each peer has a bounded queue drained by its own task into one long-lived
//! client stream; `send` never blocks raft: when a queue is full or the peer is down the
//! message is dropped (raft retransmits) and raft is told the peer is unreachable. Inbound,
//! the Peer service decodes each message and steps it into the local raft node.
//!
//!
//! A raft snapshot (for a follower that needs entries the leader has compacted away) takes
//! its own path: `SendSnapshot` streams the `MsgSnapshot` and then the keyspace copy the
//! [`SnapshotSource`] writes (one that holds at least the snapshot's index). The follower
//! hands the keyspace to its installer, and only then steps the message into raft, so raft
//! never believes in data the keyspace does not hold.
//!
//! The transport also keeps etcd's per-peer network metrics: bytes sent, send failures,
//! whether a stream is up (`active_peers`) and the TCP round trip measured by a prober.

use ferrokv_datadir::{DataDir, Scratch};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use super::PeerClientTls;
use ferrokv_proto::ferrokvpb::{peer_client::PeerClient, RaftBatch, SnapshotChunk};
use ferrokv_raftnode::{eraftpb, RaftHandle, Transport};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use super::SnapshotSource;
use crate::error::Error;
use crate::metrics::{Metrics, PeerStats};
use crate::snapshot_file::RemoveOnDrop;

/// Keyspace bytes per `SnapshotChunk`.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 4096;
/// Messages per RaftBatch on the wire.
const BATCH: usize = 256;
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// How often the prober measures the round trip to each peer (etcd probes every 4 s... 5 s).
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// A peer's URLs, the queue its sender task drains, and its metrics.
type PeerQueue = (Vec<String>, mpsc::Sender<Vec<u8>>, Arc<PeerStats>);

pub struct PeerTransport {
    queues: RwLock<HashMap<u64, PeerQueue>>,
    /// Set once raft has started (the transport must exist before it).
    raft: Arc<OnceLock<RaftHandle>>,
    stop: watch::Receiver<bool>,
    /// Peers are added from the apply thread, which is not a runtime thread.
    rt: tokio::runtime::Handle,
    tls: Option<PeerClientTls>,
    /// What writes a keyspace snapshot, and where the copy is written; set at start.
    /// Weak: the transport can outlive the member for a moment at shutdown, and must not keep
    /// the keyspace file open (a restart in the same process would find it locked).
    snapshots: OnceLock<(std::sync::Weak<dyn SnapshotSource>, DataDir)>,
    metrics: Arc<Metrics>,
}

impl PeerTransport {
    /// Starts one sender task per peer (`member id -> peer URLs`); they end when `stop` fires.
    /// Must be called within the tokio runtime.
    pub fn start(
        peers: HashMap<u64, Vec<String>>,
        stop: watch::Receiver<bool>,
        tls: Option<PeerClientTls>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let t = PeerTransport {
            queues: RwLock::new(HashMap::new()),
            raft: Arc::new(OnceLock::new()),
            stop,
            rt: tokio::runtime::Handle::current(),
            tls,
            snapshots: OnceLock::new(),
            metrics,
        };
        for (id, urls) in peers {
            t.add_peer(id, urls);
        }
        t
    }

    pub fn set_raft(&self, raft: RaftHandle) {
        let _ = self.raft.set(raft);
    }

    /// What writes keyspace snapshots for lagging followers, and the data dir whose
    /// scratch files hold them while they are sent.
    pub fn set_snapshot_source(
        &self,
        source: std::sync::Weak<dyn SnapshotSource>,
        layout: DataDir,
    ) {
        let _ = self.snapshots.set((source, layout));
    }

    /// Sends a `MsgSnapshot` with a copy of the keyspace on its own task, and tells raft how
    /// it ended.
    fn send_snapshot(&self, m: eraftpb::Message) {
        let to = m.to;
        let urls = self
            .queues
            .read()
            .get(&to)
            .map(|(u, _, _)| u.clone())
            .unwrap_or_default();
        let (Some(raft), Some((source, dir))) = (self.raft.get().cloned(), self.snapshots.get())
        else {
            return;
        };
        let Some(source) = source.upgrade() else {
            return;
        };
        let (dir, tls) = (dir.clone(), self.tls.clone());
        self.rt.spawn(async move {
            let index = m.get_snapshot().get_metadata().index;
            let started = Instant::now();
            let result = send_snapshot(m, &urls, source.as_ref(), &dir, tls.as_ref()).await;
            match &result {
                Ok(bytes) => tracing::info!(
                    peer = format!("{to:x}"),
                    index,
                    bytes,
                    took = ?started.elapsed(),
                    "sent a keyspace snapshot"
                ),
                Err(e) => tracing::warn!(
                    peer = format!("{to:x}"),
                    index,
                    error = %e,
                    "sending a keyspace snapshot failed"
                ),
            }
            raft.report_snapshot(to, result.is_ok());
        });
    }

    /// A member joined or changed its peer URLs (conf change applied): send to it there.
    /// Idempotent; replacing the queue ends the old sender task.
    pub fn add_peer(&self, id: u64, urls: Vec<String>) {
        let mut queues = self.queues.write();
        if urls.is_empty() || queues.get(&id).is_some_and(|(u, _, _)| *u == urls) {
            return;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let stats = self.metrics.peer(id);
        self.rt.spawn(probe_round_trips(
            urls.clone(),
            tx.downgrade(),
            stats.clone(),
            self.stop.clone(),
        ));
        queues.insert(id, (urls.clone(), tx, stats.clone()));
        self.rt.spawn(run_peer(
            Peer { id, urls, stats },
            rx,
            self.raft.clone(),
            self.stop.clone(),
            self.tls.clone(),
        ));
    }

    /// A member left: dropping its queue ends its sender task (and its prober).
    pub fn remove_peer(&self, id: u64) {
        self.queues.write().remove(&id);
        self.metrics.remove_peer(id);
    }
}

impl Transport for PeerTransport {
    fn send(&self, msgs: Vec<eraftpb::Message>) {
        for m in msgs {
            if m.get_msg_type() == eraftpb::MessageType::MsgSnapshot {
                self.send_snapshot(m);
                continue;
            }
            let queues = self.queues.read();
            let Some((_, q, stats)) = queues.get(&m.to) else {
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
                stats.sent_failures.fetch_add(1, Ordering::Relaxed);
                if m.get_msg_type() == eraftpb::MessageType::MsgHeartbeat {
                    self.metrics.heartbeat_send_failed();
                }
                if let Some(r) = self.raft.get() {
                    r.report_unreachable(m.to);
                }
            }
        }
    }
}

/// Who a sender task sends to.
struct Peer {
    id: u64,
    urls: Vec<String>,
    stats: Arc<PeerStats>,
}

async fn run_peer(
    peer: Peer,
    mut rx: mpsc::Receiver<Vec<u8>>,
    raft: Arc<OnceLock<RaftHandle>>,
    mut stop: watch::Receiver<bool>,
    tls: Option<PeerClientTls>,
) {
    let Peer { id, urls, stats } = peer;
    let mut attempt = 0usize;
    let mut outage = Outage::default();
    loop {
        if *stop.borrow() || urls.is_empty() {
            return;
        }
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        let channel = super::connect_peer(url, tls.as_ref()).await;
        let channel = match channel {
            Ok(c) => c,
            Err(e) => {
                outage.failed(id, url, &e, "cannot connect to peer");
                unreachable(&raft, id, &mut rx, &stats);
                tokio::select! {
                    _ = crate::stop::until_stopped(&mut stop) => return,
                    _ = tokio::time::sleep(RECONNECT_DELAY) => continue,
                }
            }
        };
        stats.active.store(true, Ordering::Relaxed);
        let (tx, batches) = mpsc::channel::<RaftBatch>(16);
        let mut client = PeerClient::new(channel);
        let connected = tokio::time::Instant::now();
        let mut call = Box::pin(async move {
            client
                .send(tokio_stream::wrappers::ReceiverStream::new(batches))
                .await
        });
        loop {
            tokio::select! {
                _ = crate::stop::until_stopped(&mut stop) => return,
                r = &mut call => {
                    if connected.elapsed() >= HEALTHY_STREAM {
                        outage = Outage::default();
                    }
                    match r {
                        // A peer that refuses this member's certificate ends the stream
                        // right after the handshake (TLS 1.3 checks it last).
                        Err(status) => outage.failed(id, url, &status, "peer stream failed"),
                        Ok(_) => tracing::debug!(peer = id, "peer stream ended"),
                    }
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
                    let bytes: usize = messages.iter().map(Vec::len).sum();
                    if tx.send(RaftBatch { messages }).await.is_err() {
                        break;
                    }
                    stats.sent_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                }
            }
        }
        stats.active.store(false, Ordering::Relaxed);
        unreachable(&raft, id, &mut rx, &stats);
        tokio::select! {
            _ = crate::stop::until_stopped(&mut stop) => return,
            _ = tokio::time::sleep(RECONNECT_DELAY) => {}
        }
    }
}

/// A stream that stayed up this long was working: a failure after it starts a new outage.
const HEALTHY_STREAM: Duration = Duration::from_secs(5);

/// The failures of one peer's connection since it last worked. etcd warns when a peer cannot
/// be reached or refuses this member (a rejected certificate, say); a warning per reconnect
/// (every 100 ms) would drown the log, so each distinct failure warns once per outage.
#[derive(Default)]
struct Outage {
    warned: Vec<String>,
}

impl Outage {
    fn failed(&mut self, peer: u64, url: &str, error: &dyn std::fmt::Debug, what: &str) {
        let error = format!("{error:?}");
        // Bounded: errors that name something new each time warn at most a few times.
        if self.warned.contains(&error) || self.warned.len() >= 8 {
            tracing::debug!(peer, url, error, "{what}");
        } else {
            tracing::warn!(peer, url, error, "{what}");
            self.warned.push(error);
        }
    }
}

/// Tells raft and drops what was queued: stale messages are worse than none after a gap.
fn unreachable(
    raft: &OnceLock<RaftHandle>,
    id: u64,
    rx: &mut mpsc::Receiver<Vec<u8>>,
    stats: &PeerStats,
) {
    if let Some(r) = raft.get() {
        r.report_unreachable(id);
    }
    while rx.try_recv().is_ok() {
        stats.sent_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// Measures the round trip to a peer every [`PROBE_INTERVAL`] as the time a TCP connect to
/// its peer address takes (one SYN / SYN-ACK exchange), into
/// `etcd_network_peer_round_trip_time_seconds`. Ends with the peer's queue (the peer was
/// removed or its URLs changed) or at stop.
async fn probe_round_trips(
    urls: Vec<String>,
    queue: mpsc::WeakSender<Vec<u8>>,
    stats: Arc<PeerStats>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(addr) = urls
        .first()
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
    else {
        return;
    };
    loop {
        if queue.upgrade().is_none() {
            return;
        }
        let started = Instant::now();
        let probe = tokio::time::timeout(PROBE_INTERVAL, tokio::net::TcpStream::connect(&addr));
        if let Ok(Ok(conn)) = probe.await {
            stats.round_trip.observe(started.elapsed());
            drop(conn);
        }
        tokio::select! {
            _ = crate::stop::until_stopped(&mut stop) => return,
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}

/// Has the source write a keyspace copy holding the snapshot's index and streams message +
/// copy to the first of the peer's URLs that takes it. Returns the keyspace bytes sent.
async fn send_snapshot(
    m: eraftpb::Message,
    urls: &[String],
    source: &dyn SnapshotSource,
    dir: &DataDir,
    tls: Option<&PeerClientTls>,
) -> Result<u64, Error> {
    let index = m.get_snapshot().get_metadata().index;
    let path = dir.scratch(Scratch::Send, &format!("{:x}-{index}", m.to));
    let _ = std::fs::remove_file(&path);
    let _cleanup = RemoveOnDrop(path.clone());
    source.write_snapshot(m.to, index, &path).await?;
    let message = protobuf::Message::write_to_bytes(&m)
        .map_err(|e| Error::Io(format!("encode snapshot message: {e}")))?;
    let mut last = Error::LeaderChanged;
    for url in urls {
        let channel = match super::connect_peer(url, tls).await {
            Ok(c) => c,
            Err(e) => {
                last = Error::Io(format!("{url}: {e}"));
                continue;
            }
        };
        let mut file = tokio::fs::File::open(&path).await?;
        let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
        let first = SnapshotChunk {
            raft_message: message.clone(),
            data: Vec::new(),
        };
        let reader = tokio::spawn(async move {
            let mut sent = 0u64;
            if tx.send(first).await.is_err() {
                return Ok(sent);
            }
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<u64, std::io::Error>(sent);
                }
                buf.truncate(n);
                sent += n as u64;
                if tx
                    .send(SnapshotChunk {
                        raft_message: Vec::new(),
                        data: buf,
                    })
                    .await
                    .is_err()
                {
                    return Ok(sent);
                }
            }
        });
        let call = PeerClient::new(channel)
            .max_encoding_message_size(64 * 1024 * 1024)
            .send_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        let sent = reader
            .await
            .map_err(|e| Error::Fatal(format!("snapshot reader: {e}")))??;
        match call {
            Ok(_) => return Ok(sent),
            Err(status) => last = Error::Io(format!("{url}: {}", status.message())),
        }
    }
    Err(last)
}
