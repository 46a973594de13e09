//! The Watch service through a real tonic server on 127.0.0.1:0 and the generated client,
//! fed by the in-memory event log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrokv_proto::etcdserverpb::watch_client::WatchClient;
use ferrokv_proto::etcdserverpb::watch_create_request::FilterType;
use ferrokv_proto::etcdserverpb::watch_request::RequestUnion;
use ferrokv_proto::etcdserverpb::watch_server::WatchServer;
use ferrokv_proto::etcdserverpb::{
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use super::memory::MemoryLog;
use super::{WatchHub, WatchLimits};
use crate::header::HeaderSource;

const CLUSTER_ID: u64 = 0xc1;
const MEMBER_ID: u64 = 0x42;
const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    log: Arc<MemoryLog>,
    hub: Arc<WatchHub>,
    leader: watch::Sender<bool>,
    client: WatchClient<Channel>,
}

struct Stream {
    tx: mpsc::Sender<WatchRequest>,
    rx: Streaming<WatchResponse>,
}

async fn start(limits: WatchLimits, progress_interval: Duration) -> Harness {
    let log = Arc::new(MemoryLog::default());
    let hub = WatchHub::with_limits(log.clone(), progress_interval, limits);
    let (leader, has_leader) = watch::channel(true);
    let service = hub.service(HeaderSource::new(CLUSTER_ID, MEMBER_ID), has_leader);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WatchServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let client = WatchClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    Harness {
        log,
        hub,
        leader,
        client,
    }
}

async fn start_default() -> Harness {
    start(WatchLimits::default(), Duration::from_secs(600)).await
}

impl Harness {
    async fn open(&self) -> Stream {
        self.open_with(tonic::metadata::MetadataMap::new())
            .await
            .expect("open stream")
    }

    async fn open_with(
        &self,
        metadata: tonic::metadata::MetadataMap,
    ) -> Result<Stream, tonic::Status> {
        let (tx, rx) = mpsc::channel(1024);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        *req.metadata_mut() = metadata;
        let rx = self.client.clone().watch(req).await?.into_inner();
        Ok(Stream { tx, rx })
    }
}

fn create(key: &[u8], end: &[u8], start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.to_vec(),
        range_end: end.to_vec(),
        start_revision: start,
        ..Default::default()
    }
}

impl Stream {
    async fn send(&self, req: RequestUnion) {
        self.tx
            .send(WatchRequest {
                request_union: Some(req),
            })
            .await
            .expect("send");
    }

    async fn create(&self, c: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(c)).await
    }

    async fn recv(&mut self) -> WatchResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("response in time")
            .expect("stream ok")
            .expect("stream open")
    }

    /// Asserts nothing arrives for a short while.
    async fn silent(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(200), self.rx.message()).await;
        assert!(got.is_err(), "unexpected response: {got:?}");
    }

    /// Receives until `n` events arrived; returns their (key, revision, has prev_kv).
    async fn events(&mut self, n: usize) -> Vec<(Vec<u8>, i64, bool)> {
        let mut out = Vec::new();
        while out.len() < n {
            let r = self.recv().await;
            out.extend(r.events.into_iter().map(|e| {
                let has_prev = e.prev_kv.is_some();
                let kv = e.kv.unwrap_or_default();
                (kv.key, kv.mod_revision, has_prev)
            }));
        }
        out
    }
}

fn rev(r: &WatchResponse) -> i64 {
    r.header.as_ref().map_or(-99, |h| h.revision)
}

#[tokio::test]
async fn watch_service_many_creates_get_created_replies_fifo() {
    let h = start_default().await;
    h.log.put(&h.hub, b"x", b"1");
    let mut s = h.open().await;
    // Explicit ids in between auto ids: auto ids skip the taken ones.
    let mut want = Vec::new();
    let mut auto = 0;
    for i in 0..100i64 {
        let explicit = if i % 10 == 5 { 1000 + i } else { 0 };
        s.create(WatchCreateRequest {
            watch_id: explicit,
            ..create(format!("k{i}").as_bytes(), b"", 0)
        })
        .await;
        if explicit != 0 {
            want.push(explicit);
        } else {
            want.push(auto);
            auto += 1;
        }
    }
    let mut got = Vec::new();
    for _ in 0..100 {
        let r = s.recv().await;
        assert!(r.created && !r.canceled);
        assert_eq!(rev(&r), 1);
        let hdr = r.header.unwrap_or_default();
        assert_eq!((hdr.cluster_id, hdr.member_id), (CLUSTER_ID, MEMBER_ID));
        got.push(r.watch_id);
    }
    assert_eq!(got, want);
    // A duplicate id is created and canceled at once, as etcd does.
    s.create(WatchCreateRequest {
        watch_id: 1005,
        ..create(b"a", b"", 0)
    })
    .await;
    let r = s.recv().await;
    assert_eq!((r.watch_id, r.created, r.canceled), (-1, true, true));
    assert_eq!(
        r.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
}

#[tokio::test]
async fn watch_service_live_events_filters_and_prev_kv() {
    let h = start_default().await;
    let mut s = h.open().await;
    s.create(create(b"k", b"", 0)).await;
    s.create(WatchCreateRequest {
        prev_kv: true,
        ..create(b"k", b"", 0)
    })
    .await;
    s.create(WatchCreateRequest {
        filters: vec![FilterType::Noput as i32],
        ..create(b"a", b"z", 0)
    })
    .await;
    for id in 0..3 {
        let r = s.recv().await;
        assert_eq!((r.watch_id, r.created), (id, true));
    }
    h.log.put(&h.hub, b"k", b"1");
    h.log.put(&h.hub, b"k", b"2");
    h.log.delete(&h.hub, b"k");
    let mut by_watch: Vec<Vec<(i64, i32, bool)>> = vec![Vec::new(); 3];
    let mut n = 0;
    while n < 7 {
        let r = s.recv().await;
        for e in &r.events {
            let kv = e.kv.clone().unwrap_or_default();
            by_watch[r.watch_id as usize].push((kv.mod_revision, e.r#type, e.prev_kv.is_some()));
            n += 1;
        }
    }
    assert_eq!(
        by_watch[0],
        vec![(1, 0, false), (2, 0, false), (3, 1, false)]
    );
    assert_eq!(by_watch[1], vec![(1, 0, false), (2, 0, true), (3, 1, true)]);
    assert_eq!(
        by_watch[2],
        vec![(3, 1, false)],
        "NOPUT leaves only the delete"
    );
    s.silent().await;
}

#[tokio::test]
async fn watch_service_catch_up_then_live_has_no_gap_or_duplicate() {
    let h = start(
        WatchLimits {
            catch_up_max_revisions: 7,
            ..Default::default()
        },
        Duration::from_secs(600),
    )
    .await;
    for i in 0..50 {
        h.log.put(&h.hub, format!("p/{i}").as_bytes(), b"v");
    }
    let mut s = h.open().await;
    s.create(WatchCreateRequest {
        prev_kv: true,
        ..create(b"p/", b"p0", 10)
    })
    .await;
    // Writers keep going while the watcher catches up.
    let writer = {
        let (log, hub) = (h.log.clone(), h.hub.clone());
        tokio::spawn(async move {
            for i in 50..150 {
                log.put(&hub, format!("p/{i}").as_bytes(), b"v");
                if i % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let created = s.recv().await;
    assert!(created.created);
    assert!(rev(&created) >= 50);
    let evs = s.events(141).await;
    writer.await.expect("writer");
    let revs: Vec<i64> = evs.iter().map(|e| e.1).collect();
    assert_eq!(revs, (10..=150).collect::<Vec<_>>());
    s.silent().await;
}

#[tokio::test]
async fn watch_service_compacted_start_is_created_then_canceled() {
    let h = start_default().await;
    for _ in 0..5 {
        h.log.put(&h.hub, b"k", b"v");
    }
    h.log.compact(4);
    let mut s = h.open().await;
    s.create(create(b"k", b"", 2)).await;
    let r = s.recv().await;
    assert_eq!((r.watch_id, r.created, r.canceled), (0, true, false));
    let r = s.recv().await;
    assert_eq!(
        (r.watch_id, r.created, r.canceled, r.compact_revision),
        (0, false, true, 4)
    );
    assert_eq!(
        rev(&r),
        0,
        "etcd sends the compaction cancel with revision 0"
    );
    // The watcher is gone: later writes produce nothing.
    h.log.put(&h.hub, b"k", b"v");
    s.silent().await;
}

#[tokio::test]
async fn watch_service_progress_request_and_cancel() {
    let h = start_default().await;
    h.log.put(&h.hub, b"a", b"1");
    let mut s = h.open().await;
    s.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let r = s.recv().await;
    assert_eq!((r.watch_id, rev(&r), r.events.len()), (-1, 1, 0));
    s.create(create(b"a", b"", 0)).await;
    assert!(s.recv().await.created);
    h.log.put(&h.hub, b"a", b"2");
    assert_eq!(s.events(1).await[0].1, 2);
    s.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 0,
    }))
    .await;
    let r = s.recv().await;
    assert_eq!((r.watch_id, r.canceled, rev(&r)), (0, true, 2));
    // Unknown id: no reply (etcd ignores it).
    s.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 9,
    }))
    .await;
    h.log.put(&h.hub, b"a", b"3");
    s.silent().await;
    s.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let r = s.recv().await;
    assert_eq!((r.watch_id, rev(&r)), (-1, 3));
}

#[tokio::test]
async fn watch_service_progress_notify_when_idle() {
    let h = start(WatchLimits::default(), Duration::from_millis(100)).await;
    let mut s = h.open().await;
    s.create(WatchCreateRequest {
        progress_notify: true,
        ..create(b"a", b"", 0)
    })
    .await;
    assert!(s.recv().await.created);
    h.log.put(&h.hub, b"other", b"1");
    let r = s.recv().await;
    assert_eq!((r.watch_id, r.events.len(), rev(&r)), (0, 0, 1));
}

#[tokio::test]
async fn watch_service_fragments_a_huge_revision() {
    let h = start_default().await;
    let mut s = h.open().await;
    s.create(WatchCreateRequest {
        fragment: true,
        ..create(b"f/", b"f0", 0)
    })
    .await;
    assert!(s.recv().await.created);
    // 3.2 MiB in one revision: needs three parts of < 1.5 MiB.
    let kvs: Vec<(Vec<u8>, Vec<u8>)> = (0..32)
        .map(|i| (format!("f/{i:02}").into_bytes(), vec![b'x'; 100 * 1024]))
        .collect();
    h.log.put_many(&h.hub, &kvs);
    let mut parts = Vec::new();
    let mut n = 0;
    while n < 32 {
        let r = s.recv().await;
        n += r.events.len();
        assert!(prost::Message::encoded_len(&r) < super::MAX_REQUEST_BYTES);
        parts.push(r.fragment);
    }
    assert!(parts.len() >= 3, "{parts:?}");
    let last = parts.len() - 1;
    assert!(parts[..last].iter().all(|f| *f) && !parts[last]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_service_slow_reader_does_not_block_publish_or_others() {
    let h = start(
        WatchLimits {
            max_pending_bytes: 64 * 1024,
            // Small catch-up batches, so "budget + one batch" is a tight bound below.
            catch_up_max_revisions: 4,
            ..Default::default()
        },
        Duration::from_secs(600),
    )
    .await;
    let mut slow = h.open().await;
    let mut fast = h.open().await;
    slow.create(create(b"k", b"", 0)).await;
    fast.create(create(b"k", b"", 0)).await;
    assert!(slow.recv().await.created);
    assert!(fast.recv().await.created);

    // ~40 MiB of events while `slow` reads nothing: far beyond the socket and h2 windows.
    let value = vec![b'v'; 20 * 1024];
    let mut slowest = Duration::ZERO;
    let mut fast_revs = Vec::new();
    for i in 1..=2000i64 {
        let t = Instant::now();
        h.log.put(&h.hub, b"k", &value);
        slowest = slowest.max(t.elapsed());
        if i % 100 == 0 {
            let got = fast.events(100).await;
            fast_revs.extend(got.into_iter().map(|e| e.1));
        }
    }
    assert!(
        slowest < Duration::from_millis(200),
        "publish waited: {slowest:?}"
    );
    assert_eq!(fast_revs, (1..=2000).collect::<Vec<_>>());
    // The slow stream's queue stayed bounded (the budget plus one catch-up batch of at most
    // four ~20 KiB events, once the socket has taken what it can) instead of 40 MiB.
    let queued = h.hub.queued_bytes();
    assert!(queued < 64 * 1024 + 5 * 21 * 1024, "queued {queued} bytes");
    // Now it reads everything: live, then caught up from the store, no gap, no duplicate.
    let slow_revs: Vec<i64> = slow.events(2000).await.into_iter().map(|e| e.1).collect();
    assert_eq!(slow_revs, (1..=2000).collect::<Vec<_>>());
    slow.silent().await;
}

#[tokio::test]
async fn watch_service_hasleader_streams_end_without_leader() {
    let h = start_default().await;
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert("hasleader", "true".parse().expect("ascii"));
    let mut s = h.open_with(md.clone()).await.expect("open");
    let mut plain = h.open().await;
    s.create(create(b"a", b"", 0)).await;
    plain.create(create(b"a", b"", 0)).await;
    assert!(s.recv().await.created);
    assert!(plain.recv().await.created);
    h.leader.send_replace(false);
    let err = tokio::time::timeout(WAIT, s.rx.message())
        .await
        .expect("in time")
        .expect_err("canceled");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "etcdserver: no leader");
    // A stream that did not ask keeps working.
    h.log.put(&h.hub, b"a", b"1");
    assert_eq!(plain.events(1).await[0].1, 1);
    // Opening one while leaderless fails at once.
    let err = h.open_with(md).await.err().expect("refused");
    assert_eq!(err.message(), "etcdserver: no leader");
}

#[tokio::test]
async fn watch_service_hasleader_streams_outlive_a_short_leader_loss() {
    let log = Arc::new(MemoryLog::default());
    let hub = WatchHub::with_limits(
        log.clone(),
        Duration::from_secs(600),
        WatchLimits::default(),
    );
    let (leader, has_leader) = watch::channel(true);
    let (keep, keep_streams) = watch::channel(true);
    let service = hub
        .service(HeaderSource::new(CLUSTER_ID, MEMBER_ID), has_leader)
        .cancel_streams_with(keep_streams);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WatchServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let client = WatchClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let h = Harness {
        log,
        hub,
        leader,
        client,
    };
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert("hasleader", "true".parse().expect("ascii"));
    let mut s = h.open_with(md.clone()).await.expect("open");
    s.create(create(b"a", b"", 0)).await;
    assert!(s.recv().await.created);
    // Leader unknown: new streams are refused at once, the open one keeps its events.
    h.leader.send_replace(false);
    let err = h.open_with(md.clone()).await.err().expect("refused");
    assert_eq!(err.message(), "etcdserver: no leader");
    h.log.put(&h.hub, b"a", b"1");
    assert_eq!(s.events(1).await[0].1, 1);
    // Still no leader after the grace: the open stream is canceled.
    keep.send_replace(false);
    let err = tokio::time::timeout(WAIT, s.rx.message())
        .await
        .expect("in time")
        .expect_err("canceled");
    assert_eq!(err.message(), "etcdserver: no leader");
}

#[tokio::test]
async fn watch_service_client_gone_cleans_up() {
    let h = start_default().await;
    let s = h.open().await;
    s.create(create(b"a", b"", 0)).await;
    let mut s = s;
    assert!(s.recv().await.created);
    assert_eq!(h.hub.stream_count(), 1);
    drop(s);
    let deadline = Instant::now() + WAIT;
    while h.hub.stream_count() != 0 {
        assert!(Instant::now() < deadline, "stream not cleaned up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Publishing after the client left is harmless.
    h.log.put(&h.hub, b"a", b"1");
}
