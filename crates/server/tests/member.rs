//! A real single member on 127.0.0.1:0 in a temp dir, driven with the generated tonic clients:
//! every request goes through raft, the WAL and the store exactly as in production.

use std::time::Duration;

use ferrokv_proto::etcdserverpb::{
    cluster_client::ClusterClient, compare, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, request_op, watch_client::WatchClient, watch_request,
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, MemberListRequest, PutRequest,
    RangeRequest, RequestOp, SnapshotRequest, StatusRequest, TxnRequest, WatchCreateRequest,
    WatchRequest,
};
use ferrokv_server::{Config, Member};
use ferrokv_tests::member::free_port;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

fn config(dir: &std::path::Path, name: &str) -> Config {
    let mut c = Config::with_defaults(name);
    let client = url::Url::parse("http://127.0.0.1:0").unwrap();
    let peer = url::Url::parse(&format!("http://127.0.0.1:{}", free_port())).unwrap();
    c.data_dir = dir.to_path_buf();
    c.listen_client_urls = vec![client.clone()];
    c.advertise_client_urls = vec![client];
    c.listen_peer_urls = vec![peer.clone()];
    c.initial_advertise_peer_urls = vec![peer.clone()];
    c.initial_cluster = vec![(name.to_string(), vec![peer])];
    c.initial_cluster_token = "test-token".into();
    c.heartbeat_interval = Duration::from_millis(20);
    c.election_timeout = Duration::from_millis(200);
    c
}

async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn start(cfg: Config) -> (Member, Channel) {
    let m = Member::start(cfg).await.expect("member starts");
    let ch = channel(&m.client_urls()[0]).await;
    (m, ch)
}

async fn stop(m: Member) {
    m.shutdown_handle().shutdown();
    tokio::time::timeout(Duration::from_secs(20), m.wait())
        .await
        .expect("stops in time")
        .expect("clean stop");
}

fn put(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

fn get(k: &str) -> RangeRequest {
    RangeRequest {
        key: k.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_put_get_delete_txn_compact() {
    let dir = tempfile::tempdir().unwrap();
    let (m, ch) = start(config(dir.path(), "m1")).await;
    let mut kv = KvClient::new(ch);

    let r = kv.put(put("a", "1")).await.unwrap().into_inner();
    let h = r.header.unwrap();
    assert_eq!(h.revision, 2);
    assert_eq!(h.member_id, m.member_id());
    assert_ne!(h.cluster_id, 0);
    assert!(h.raft_term >= 1);

    let r = kv
        .put(PutRequest {
            prev_kv: true,
            ..put("a", "2")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.prev_kv.unwrap().value, b"1");
    kv.put(put("ab", "3")).await.unwrap();
    kv.put(put("b", "4")).await.unwrap();

    let r = kv.range(get("a")).await.unwrap().into_inner();
    assert_eq!(r.kvs.len(), 1);
    assert_eq!(r.kvs[0].value, b"2");
    assert_eq!(r.kvs[0].version, 2);
    assert_eq!(r.header.unwrap().revision, 5);

    // Prefix, serializable.
    let r = kv
        .range(RangeRequest {
            key: "a".into(),
            range_end: "b".into(),
            serializable: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.count, 2);

    // Old revision read.
    let r = kv
        .range(RangeRequest {
            revision: 2,
            ..get("a")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.kvs[0].value, b"1");

    // Txn: create-if-absent fails for an existing key and runs the failure branch.
    let txn = |key: &str, modrev: i64| TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: key.into(),
            target_union: Some(compare::TargetUnion::ModRevision(modrev)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put(key, "new"))),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(get(key))),
        }],
    };
    let r = kv.txn(txn("a", 0)).await.unwrap().into_inner();
    assert!(!r.succeeded);
    assert_eq!(
        r.header.unwrap().revision,
        5,
        "a read-only outcome does not bump the revision"
    );
    let r = kv.txn(txn("c", 0)).await.unwrap().into_inner();
    assert!(r.succeeded);
    assert_eq!(r.header.unwrap().revision, 6);

    // Read-only txn (no raft entry) sees the latest state.
    let ro = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(get("c"))),
        }],
        ..Default::default()
    };
    let r = kv.txn(ro).await.unwrap().into_inner();
    assert!(r.succeeded);
    match &r.responses[0].response {
        Some(ferrokv_proto::etcdserverpb::response_op::Response::ResponseRange(rr)) => {
            assert_eq!(rr.kvs[0].value, b"new")
        }
        other => panic!("unexpected {other:?}"),
    }

    // Delete with prev_kv.
    let r = kv
        .delete_range(DeleteRangeRequest {
            key: "a".into(),
            range_end: "b".into(),
            prev_kv: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted, 2);
    assert_eq!(r.prev_kvs.len(), 2);
    assert_eq!(r.header.unwrap().revision, 7);
    let r = kv
        .delete_range(DeleteRangeRequest {
            key: "zzz".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted, 0);
    assert_eq!(
        r.header.unwrap().revision,
        7,
        "deleting nothing does not bump the revision"
    );

    // Compact, then old revisions are gone.
    kv.compact(CompactionRequest {
        revision: 5,
        physical: true,
    })
    .await
    .unwrap();
    let e = kv
        .range(RangeRequest {
            revision: 3,
            ..get("a")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert_eq!(
        e.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let e = kv
        .compact(CompactionRequest {
            revision: 4,
            physical: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let e = kv
        .range(RangeRequest {
            revision: 100,
            ..get("a")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    assert_eq!(
        e.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );

    stop(m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_etcd_codes_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (m, ch) = start(config(dir.path(), "m1")).await;
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch);
    kv.put(put("exists", "v")).await.unwrap();

    let ops = |n: usize| -> Vec<RequestOp> {
        (0..n)
            .map(|i| RequestOp {
                request: Some(request_op::Request::RequestPut(put(&format!("k{i}"), "v"))),
            })
            .collect()
    };
    let dup = vec![
        RequestOp {
            request: Some(request_op::Request::RequestPut(put("d", "1"))),
        },
        RequestOp {
            request: Some(request_op::Request::RequestPut(put("d", "2"))),
        },
    ];
    let big = "x".repeat(1536 * 1024 + 10);

    let mut rows: Vec<(Result<(), tonic::Status>, Code, &str)> = Vec::new();
    rows.push((
        kv.put(put("", "v")).await.map(drop),
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    ));
    rows.push((
        kv.put(PutRequest {
            ignore_value: true,
            ..put("exists", "v")
        })
        .await
        .map(drop),
        Code::InvalidArgument,
        "etcdserver: value is provided",
    ));
    rows.push((
        kv.put(PutRequest {
            ignore_lease: true,
            lease: 5,
            ..put("exists", "")
        })
        .await
        .map(drop),
        Code::InvalidArgument,
        "etcdserver: lease is provided",
    ));
    rows.push((
        kv.put(PutRequest {
            ignore_value: true,
            ..put("missing", "")
        })
        .await
        .map(drop),
        Code::InvalidArgument,
        "etcdserver: key not found",
    ));
    rows.push((
        kv.put(PutRequest {
            lease: 12345,
            ..put("k", "v")
        })
        .await
        .map(drop),
        Code::NotFound,
        "etcdserver: requested lease not found",
    ));
    rows.push((
        kv.range(get("")).await.map(drop),
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    ));
    rows.push((
        kv.range(RangeRequest {
            sort_order: 9,
            ..get("a")
        })
        .await
        .map(drop),
        Code::InvalidArgument,
        "etcdserver: invalid sort option",
    ));
    rows.push((
        kv.txn(TxnRequest {
            success: ops(129),
            ..Default::default()
        })
        .await
        .map(drop),
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    ));
    rows.push((
        kv.txn(TxnRequest {
            success: dup,
            ..Default::default()
        })
        .await
        .map(drop),
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    ));
    rows.push((
        kv.put(put("big", &big)).await.map(drop),
        Code::InvalidArgument,
        "etcdserver: request is too large",
    ));
    rows.push((
        lease
            .lease_grant(LeaseGrantRequest {
                ttl: 9_000_000_001,
                id: 0,
            })
            .await
            .map(drop),
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    ));
    lease
        .lease_grant(LeaseGrantRequest { ttl: 10, id: 77 })
        .await
        .unwrap();
    rows.push((
        lease
            .lease_grant(LeaseGrantRequest { ttl: 10, id: 77 })
            .await
            .map(drop),
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    ));
    rows.push((
        lease
            .lease_revoke(LeaseRevokeRequest { id: 999 })
            .await
            .map(drop),
        Code::NotFound,
        "etcdserver: requested lease not found",
    ));
    for (i, (res, code, msg)) in rows.into_iter().enumerate() {
        let e = res.expect_err(&format!("row {i} ({msg}) must fail"));
        assert_eq!((e.code(), e.message()), (code, msg), "row {i}");
    }
    // A missing key is not an error.
    assert!(kv
        .range(get("nope"))
        .await
        .unwrap()
        .into_inner()
        .kvs
        .is_empty());
    stop(m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_grant_keepalive_ttl_revoke_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let (m, ch) = start(config(dir.path(), "m1")).await;
    let mut kv = KvClient::new(ch.clone());
    let mut lease = LeaseClient::new(ch);

    // TTL below the minimum (ceil(1.5 × 200 ms) = 1 s) is raised; ID 0 gets a fresh positive id.
    let g = lease
        .lease_grant(LeaseGrantRequest { ttl: 0, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(g.id > 0);
    assert_eq!(g.ttl, 1);

    let g = lease
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap()
        .into_inner();
    let id = g.id;
    kv.put(PutRequest {
        lease: id,
        ..put("leased", "v")
    })
    .await
    .unwrap();
    kv.put(PutRequest {
        lease: id,
        ..put("leased2", "v")
    })
    .await
    .unwrap();

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(LeaseKeepAliveRequest { id }).await.unwrap();
    tx.send(LeaseKeepAliveRequest { id: 4242 }).await.unwrap();
    let mut stream = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let a = stream.message().await.unwrap().unwrap();
    assert_eq!((a.id, a.ttl), (id, 30));
    let b = stream.message().await.unwrap().unwrap();
    assert_eq!((b.id, b.ttl), (4242, 0), "unknown lease answers TTL 0");
    drop(tx);

    let t = lease
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.granted_ttl, 30);
    assert!(t.ttl > 25 && t.ttl <= 30, "ttl {}", t.ttl);
    let mut keys = t.keys.clone();
    keys.sort();
    assert_eq!(keys, vec![b"leased".to_vec(), b"leased2".to_vec()]);
    let t = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: 31337,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.ttl, -1);

    let l = lease
        .lease_leases(LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(l.leases.iter().any(|s| s.id == id));

    // Revoke deletes both keys in ONE revision.
    let before = kv
        .range(get("leased"))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let r = lease
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.header.unwrap().revision, before + 1);
    assert!(kv
        .range(get("leased"))
        .await
        .unwrap()
        .into_inner()
        .kvs
        .is_empty());
    assert!(kv
        .range(get("leased2"))
        .await
        .unwrap()
        .into_inner()
        .kvs
        .is_empty());

    // Expiry: a 1 s lease without keepalive disappears with its key.
    let g = lease
        .lease_grant(LeaseGrantRequest { ttl: 1, id: 0 })
        .await
        .unwrap()
        .into_inner();
    kv.put(PutRequest {
        lease: g.id,
        ..put("ephemeral", "v")
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = kv.range(get("ephemeral")).await.unwrap().into_inner();
        if r.kvs.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "lease did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: g.id,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.ttl, -1);
    stop(m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_member_list_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "solo");
    cfg.listen_metrics_urls = vec![url::Url::parse("http://127.0.0.1:0").unwrap()];
    let peer_url = ferrokv_server::membership::url_string(&cfg.initial_advertise_peer_urls[0]);
    let (m, ch) = start(cfg).await;
    let mut kv = KvClient::new(ch.clone());
    kv.put(put("x", "y")).await.unwrap();

    let s = MaintenanceClient::new(ch.clone())
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.version, "3.6.0");
    assert_eq!(s.leader, m.member_id());
    assert!(s.raft_index >= 2);
    assert!(s.raft_applied_index >= 2);
    assert!(s.raft_term >= 1);
    assert!(s.db_size > 0);
    assert!(!s.is_learner);
    assert_eq!(s.db_size_quota, 2 * 1024 * 1024 * 1024);

    // The member id is etcd's for these flags.
    assert_eq!(
        m.member_id(),
        ferrokv_server::ids::member_id(std::slice::from_ref(&peer_url), "test-token")
    );
    // Member attributes are published through raft shortly after start.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let list = loop {
        let l = ClusterClient::new(ch.clone())
            .member_list(MemberListRequest { linearizable: true })
            .await
            .unwrap()
            .into_inner();
        if l.members
            .first()
            .is_some_and(|x| x.client_ur_ls == m.client_urls())
            || std::time::Instant::now() > deadline
        {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(list.members.len(), 1);
    let me = &list.members[0];
    assert_eq!(me.id, m.member_id());
    assert_eq!(me.name, "solo");
    assert_eq!(me.peer_ur_ls, vec![peer_url]);
    assert_eq!(me.client_ur_ls, m.client_urls());

    // HTTP endpoints.
    let base = m.metrics_urls()[0]
        .trim_start_matches("http://")
        .to_string();
    let health = http_get(&base, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health.ends_with(r#"{"health":"true","reason":""}"#),
        "{health}"
    );
    let metrics = http_get(&base, "/metrics").await;
    assert!(
        metrics.contains(
            "grpc_server_started_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("etcd_server_has_leader 1"));
    assert!(http_get(&base, "/livez").await.starts_with("HTTP/1.1 200"));
    assert!(http_get(&base, "/readyz").await.starts_with("HTTP/1.1 200"));
    // The same endpoints answer HTTP/1 on the client port, next to gRPC.
    let client = m.client_urls()[0].trim_start_matches("http://").to_string();
    let health = http_get(&client, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health.ends_with(r#"{"health":"true","reason":""}"#),
        "{health}"
    );
    assert!(http_get(&client, "/version")
        .await
        .contains(r#""etcdserver":"3.6.0""#));
    assert!(http_get(&client, "/metrics")
        .await
        .contains("etcd_server_is_leader 1"));
    stop(m).await;
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data_revision_and_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (m, ch) = start(config(dir.path(), "m1")).await;
    let id = m.member_id();
    let mut kv = KvClient::new(ch);
    for i in 0..20 {
        kv.put(put(&format!("k{i}"), &format!("v{i}")))
            .await
            .unwrap();
    }
    kv.delete_range(DeleteRangeRequest {
        key: "k0".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let rev = kv
        .range(get("k1"))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    assert_eq!(rev, 22);
    drop(kv);
    stop(m).await;

    let (m, ch) = start(config(dir.path(), "m1")).await;
    assert_eq!(m.member_id(), id);
    let mut kv = KvClient::new(ch);
    let r = kv
        .range(RangeRequest {
            key: "k".into(),
            range_end: "l".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.header.unwrap().revision, rev);
    assert_eq!(r.count, 19);
    let r = kv.put(put("after", "restart")).await.unwrap().into_inner();
    assert_eq!(r.header.unwrap().revision, rev + 1);
    stop(m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_stream_is_etcdctl_compatible() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let (m, ch) = start(config(dir.path(), "m1")).await;
    let mut kv = KvClient::new(ch.clone());
    for i in 0..50 {
        kv.put(put(&format!("s{i}"), &"v".repeat(1000)))
            .await
            .unwrap();
    }
    let mut stream = MaintenanceClient::new(ch)
        .snapshot(SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    let mut last_remaining = u64::MAX;
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(chunk.remaining_bytes < last_remaining);
        last_remaining = chunk.remaining_bytes;
        bytes.extend_from_slice(&chunk.blob);
    }
    assert_eq!(last_remaining, 0);
    // What etcdctl checks: (len - 32) % 512 == 0 and the trailing SHA-256.
    assert_eq!((bytes.len() - 32) % 512, 0);
    let (body, hash) = bytes.split_at(bytes.len() - 32);
    assert_eq!(Sha256::digest(body).as_slice(), hash);
    // The body is an etcd backend database (bbolt) holding the keyspace.
    let snap_dir = tempfile::tempdir().unwrap();
    let path = snap_dir.path().join("db");
    std::fs::write(&path, body).unwrap();
    let reader = ferrokv_storage::bbolt::Reader::open(&path).unwrap();
    let imported = ferrokv_storage::import_etcd(&reader, &snap_dir.path().join("redb")).unwrap();
    assert_eq!(imported.revision, 51);
    stop(m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_applied_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (m, ch) = start(config(dir.path(), "m1")).await;
    let mut kv = KvClient::new(ch.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: "w".into(),
                range_end: "x".into(),
                prev_kv: true,
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let mut stream = WatchClient::new(ch)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created);
    kv.put(put("w1", "a")).await.unwrap();
    kv.put(put("w1", "b")).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let r = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.extend(r.events);
    }
    assert_eq!(got[0].kv.as_ref().unwrap().value, b"a");
    assert_eq!(got[1].prev_kv.as_ref().unwrap().value, b"a");
    drop(tx);
    stop(m).await;
}

mod tls {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};

    struct Pki {
        ca: String,
        server: (String, String),
        client: (String, String),
    }

    fn pki() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        Pki {
            server: leaf(vec!["localhost".into(), "127.0.0.1".into()]),
            client: leaf(vec!["client".into()]),
            ca: ca.pem(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_certificate_required() {
        let dir = tempfile::tempdir().unwrap();
        let p = pki();
        let w = |name: &str, s: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, s).unwrap();
            path
        };
        let mut cfg = config(&dir.path().join("data"), "m1");
        let u = url::Url::parse("https://127.0.0.1:0").unwrap();
        cfg.listen_client_urls = vec![u.clone()];
        cfg.advertise_client_urls = vec![u];
        cfg.client_tls.cert_file = Some(w("server.pem", &p.server.0));
        cfg.client_tls.key_file = Some(w("server-key.pem", &p.server.1));
        cfg.client_tls.trusted_ca_file = Some(w("ca.pem", &p.ca));
        cfg.client_tls.client_cert_auth = true;
        let m = Member::start(cfg).await.unwrap();
        let url = m.client_urls()[0].clone();
        assert!(url.starts_with("https://"));

        let with_cert = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&p.ca))
            .identity(Identity::from_pem(&p.client.0, &p.client.1))
            .domain_name("localhost");
        let ch = Endpoint::from_shared(url.clone())
            .unwrap()
            .tls_config(with_cert)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut kv = KvClient::new(ch);
        kv.put(put("secure", "yes")).await.unwrap();
        assert_eq!(
            kv.range(get("secure")).await.unwrap().into_inner().kvs[0].value,
            b"yes"
        );

        let without = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&p.ca))
            .domain_name("localhost");
        let refused = async {
            let ch = Endpoint::from_shared(url.clone())
                .unwrap()
                .tls_config(without)
                .unwrap()
                .connect()
                .await?;
            KvClient::new(ch)
                .range(get("secure"))
                .await
                .map_err(|e| -> Box<dyn std::error::Error> { Box::new(e) })?;
            Ok::<(), Box<dyn std::error::Error>>(())
        };
        assert!(
            refused.await.is_err(),
            "a client without a certificate must be refused"
        );
        stop(m).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_raises_nospace_and_refuses_writes() {
    use ferrokv_proto::etcdserverpb::{AlarmRequest, AlarmType};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "m1");
    cfg.quota_backend_bytes = 1;
    let (m, ch) = start(cfg).await;
    let mut kv = KvClient::new(ch.clone());
    let e = kv.put(put("a", "b")).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded"
        )
    );
    let alarms = MaintenanceClient::new(ch.clone())
        .alarm(AlarmRequest::default())
        .await
        .unwrap()
        .into_inner()
        .alarms;
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].alarm, AlarmType::Nospace as i32);
    assert_eq!(alarms[0].member_id, m.member_id());
    let s = MaintenanceClient::new(ch.clone())
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.errors.len(), 1);
    // Reads and deletes still work.
    kv.range(get("a")).await.unwrap();
    kv.delete_range(DeleteRangeRequest {
        key: "a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    stop(m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "m1");
    cfg.auto_compaction = Some(ferrokv_server::config::AutoCompaction::Periodic(
        Duration::from_secs(1),
    ));
    let (m, ch) = start(cfg).await;
    let mut kv = KvClient::new(ch);
    for i in 0..5 {
        kv.put(put("c", &i.to_string())).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        kv.put(put("tick", "x")).await.unwrap();
        match kv
            .range(RangeRequest {
                revision: 2,
                ..get("c")
            })
            .await
        {
            Err(e) if e.message() == "etcdserver: mvcc: required revision has been compacted" => {
                break
            }
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no auto compaction happened"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_over_the_peer_transport() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let peers: Vec<url::Url> = (0..3)
        .map(|_| url::Url::parse(&format!("http://127.0.0.1:{}", free_port())).unwrap())
        .collect();
    let cluster: Vec<(String, Vec<url::Url>)> = (0..3)
        .map(|i| (format!("m{i}"), vec![peers[i].clone()]))
        .collect();
    let mut members = Vec::new();
    for i in 0..3 {
        let mut cfg = config(dirs[i].path(), &format!("m{i}"));
        cfg.listen_peer_urls = vec![peers[i].clone()];
        cfg.initial_advertise_peer_urls = vec![peers[i].clone()];
        cfg.initial_cluster = cluster.clone();
        members.push(Member::start(cfg).await.expect("member starts"));
    }
    let ids: Vec<u64> = members.iter().map(|m| m.member_id()).collect();
    assert_eq!(members[0].cluster_id(), members[2].cluster_id());
    let mut clients = Vec::new();
    for m in &members {
        clients.push(KvClient::new(channel(&m.client_urls()[0]).await));
    }
    // A write on any member (followers forward to the leader) is visible on every member.
    let r = clients[1]
        .put(put("replicated", "yes"))
        .await
        .unwrap()
        .into_inner();
    let rev = r.header.unwrap().revision;
    for c in clients.iter_mut() {
        let r = c.range(get("replicated")).await.unwrap().into_inner();
        assert_eq!(r.kvs[0].value, b"yes");
        assert_eq!(r.header.unwrap().revision, rev);
    }
    clients[2].put(put("second", "x")).await.unwrap();
    // Every member agrees on the leader and lists all three members.
    let mut leaders = Vec::new();
    for m in &members {
        let ch = channel(&m.client_urls()[0]).await;
        let s = MaintenanceClient::new(ch.clone())
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        leaders.push(s.leader);
        let l = ClusterClient::new(ch)
            .member_list(MemberListRequest { linearizable: true })
            .await
            .unwrap()
            .into_inner();
        let mut got: Vec<u64> = l.members.iter().map(|m| m.id).collect();
        got.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(got, want);
    }
    assert!(
        leaders.iter().all(|l| *l == leaders[0] && *l != 0),
        "{leaders:?}"
    );

    // Leases through a follower: grant is replicated, keepalive and TTL are the leader's.
    let follower = members
        .iter()
        .position(|m| m.member_id() != leaders[0])
        .unwrap();
    let mut lease = LeaseClient::new(channel(&members[follower].client_urls()[0]).await);
    let g = lease
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap()
        .into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(LeaseKeepAliveRequest { id: g.id }).await.unwrap();
    let mut ka = lease
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = ka.message().await.unwrap().unwrap();
    assert_eq!((r.id, r.ttl), (g.id, 30));
    drop(tx);
    let t = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: g.id,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.granted_ttl, 30);
    assert!(t.ttl > 25, "{}", t.ttl);
    drop(lease);
    drop(clients);
    // A leader stopping gracefully hands leadership over: the others have a leader at once.
    let leader_idx = members
        .iter()
        .position(|m| m.member_id() == leaders[0])
        .unwrap();
    let leader = members.remove(leader_idx);
    let stopped_at = std::time::Instant::now();
    stop(leader).await;
    let mut st = MaintenanceClient::new(channel(&members[0].client_urls()[0]).await);
    let s = st.status(StatusRequest {}).await.unwrap().into_inner();
    assert!(
        s.leader != 0 && s.leader != leaders[0],
        "new leader {} (old {})",
        s.leader,
        leaders[0]
    );
    assert!(stopped_at.elapsed() < Duration::from_secs(5));
    drop(st);
    for m in members {
        stop(m).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_add_join_promote_remove() {
    use ferrokv_proto::etcdserverpb::{
        MemberAddRequest, MemberPromoteRequest, MemberRemoveRequest,
    };
    let d0 = tempfile::tempdir().unwrap();
    let d1 = tempfile::tempdir().unwrap();
    let cfg0 = config(d0.path(), "seed");
    let p0 = cfg0.initial_advertise_peer_urls[0].clone();
    let (m0, ch0) = start(cfg0).await;
    let mut kv0 = KvClient::new(ch0.clone());
    kv0.put(put("before", "join")).await.unwrap();
    let mut cl = ClusterClient::new(ch0.clone());

    let bad = cl
        .member_add(MemberAddRequest {
            peer_ur_ls: vec!["nonsense".into()],
            is_learner: true,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (bad.code(), bad.message()),
        (
            Code::InvalidArgument,
            "etcdserver: given member URLs are invalid"
        )
    );
    let dup = cl
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![ferrokv_server::membership::url_string(&p0)],
            is_learner: true,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (dup.code(), dup.message()),
        (
            Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists"
        )
    );

    let p1 = url::Url::parse(&format!("http://127.0.0.1:{}", free_port())).unwrap();
    let added = cl
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![ferrokv_server::membership::url_string(&p1)],
            is_learner: true,
        })
        .await
        .unwrap()
        .into_inner();
    let new_id = added.member.unwrap().id;
    assert_eq!(added.members.len(), 2);
    assert!(added.members.iter().any(|m| m.id == new_id && m.is_learner));
    // Not started yet, so its log matches none of the leader's: etcd's in-sync rule refuses.
    let early = cl
        .member_promote(MemberPromoteRequest { id: new_id })
        .await
        .unwrap_err();
    assert_eq!(
        (early.code(), early.message()),
        (
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader"
        )
    );
    // One learner at a time, as in etcd.
    let p2 = format!("http://127.0.0.1:{}", free_port());
    let second = cl
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![p2],
            is_learner: true,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (second.code(), second.message()),
        (
            Code::FailedPrecondition,
            "etcdserver: too many learner members in cluster"
        )
    );

    let mut cfg1 = config(d1.path(), "joiner");
    cfg1.listen_peer_urls = vec![p1.clone()];
    cfg1.initial_advertise_peer_urls = vec![p1.clone()];
    cfg1.initial_cluster = vec![
        ("seed".into(), vec![p0.clone()]),
        ("joiner".into(), vec![p1.clone()]),
    ];
    cfg1.initial_cluster_state = ferrokv_server::config::ClusterState::Existing;
    let (m1, ch1) = start(cfg1).await;
    assert_eq!(m1.member_id(), new_id);
    assert_eq!(m1.cluster_id(), m0.cluster_id());

    // The learner catches up on the log (serializable reads are local).
    let mut kv1 = KvClient::new(ch1.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = kv1
            .range(RangeRequest {
                serializable: true,
                ..get("before")
            })
            .await
            .unwrap()
            .into_inner();
        if !r.kvs.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "learner did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A learner refuses linearizable client requests but serves serializable reads.
    let e = kv1.range(get("before")).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::FailedPrecondition,
            "etcdserver: rpc not supported for learner"
        )
    );
    let e = kv1.put(put("x", "y")).await.unwrap_err();
    assert_eq!(e.message(), "etcdserver: rpc not supported for learner");
    let not_learner = cl
        .member_promote(MemberPromoteRequest { id: m0.member_id() })
        .await
        .unwrap_err();
    assert_eq!(
        not_learner.message(),
        "etcdserver: can only promote a learner member"
    );
    let promoted = cl
        .member_promote(MemberPromoteRequest { id: new_id })
        .await
        .unwrap()
        .into_inner();
    assert!(promoted.members.iter().all(|m| !m.is_learner));

    // Now a voter: writes through it replicate, linearizable reads work on both. The
    // promotion is answered once the leader applied it; the joiner applies it a moment later
    // and refuses writes as a learner until then (etcd has the same window).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match kv1.put(put("after", "promote")).await {
            Ok(_) => break,
            Err(e) if e.message() == "etcdserver: rpc not supported for learner" => {
                assert!(std::time::Instant::now() < deadline, "still a learner: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("put through the promoted member: {e}"),
        }
    }
    assert_eq!(
        kv0.range(get("after")).await.unwrap().into_inner().kvs[0].value,
        b"promote"
    );
    assert_eq!(
        kv1.range(get("before")).await.unwrap().into_inner().kvs[0].value,
        b"join"
    );

    // The joiner published its name and client URL through raft.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let l = cl
            .member_list(MemberListRequest { linearizable: true })
            .await
            .unwrap()
            .into_inner();
        if l.members
            .iter()
            .any(|m| m.id == new_id && m.name == "joiner" && m.client_ur_ls == m1.client_urls())
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "joiner attributes missing: {:?}",
            l.members
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let updated = cl
        .member_update(ferrokv_proto::etcdserverpb::MemberUpdateRequest {
            id: new_id,
            peer_ur_ls: vec![
                ferrokv_server::membership::url_string(&p1),
                "http://127.0.0.1:1".into(),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let me = updated.members.iter().find(|m| m.id == new_id).unwrap();
    assert_eq!(me.peer_ur_ls.len(), 2);
    assert!(!me.is_learner);

    let gone = cl
        .member_remove(MemberRemoveRequest { id: 12345 })
        .await
        .unwrap_err();
    assert_eq!(
        (gone.code(), gone.message()),
        (Code::NotFound, "etcdserver: member not found")
    );
    let removed = cl
        .member_remove(MemberRemoveRequest { id: new_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.members.len(), 1);
    kv0.put(put("after", "remove")).await.unwrap();
    drop((kv0, kv1, cl));
    stop(m1).await;
    stop(m0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_start_leaves_the_data_dir_usable() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(dir.path(), "m1");
    let u = url::Url::parse(&format!("http://{}", busy.local_addr().unwrap())).unwrap();
    cfg.listen_client_urls = vec![u];
    let err = Member::start(cfg)
        .await
        .err()
        .expect("busy port fails the start");
    assert!(err.to_string().contains("listen on"), "{err}");
    let mut https_without_cert = config(dir.path(), "m1");
    https_without_cert.listen_client_urls = vec![url::Url::parse("https://127.0.0.1:0").unwrap()];
    let err = Member::start(https_without_cert)
        .await
        .err()
        .expect("https needs a cert");
    assert!(err.to_string().contains("--cert-file"), "{err}");
    // Nothing was left running or open: the same dir starts fine.
    let (m, ch) = start(config(dir.path(), "m1")).await;
    KvClient::new(ch).put(put("k", "v")).await.unwrap();
    stop(m).await;
}

/// A member that joins after the leader compacted its raft log gets the keyspace as a raft
/// snapshot (`SendSnapshot`), installs it, then follows the log: same data, same revision,
/// same HashKV as the leader, a watch on it sees later writes, and it keeps all of it across
/// a restart.
/// The raft indexes of the `<term>-<index>.snap` files in a member's snap directory.
fn snap_indexes(dir: &std::path::Path) -> Vec<u64> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let stem = name.strip_suffix(".snap")?.to_string();
                    u64::from_str_radix(stem.rsplit('-').next()?, 16).ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiner_behind_a_compacted_log_catches_up_by_snapshot() {
    use ferrokv_proto::etcdserverpb::{HashKvRequest, MemberAddRequest, MemberPromoteRequest};
    let d0 = tempfile::tempdir().unwrap();
    let d1 = tempfile::tempdir().unwrap();
    let mut cfg0 = config(d0.path(), "seed");
    // The leader keeps 5000 entries below each raft snapshot; write past that.
    cfg0.snapshot_count = 100;
    let p0 = cfg0.initial_advertise_peer_urls[0].clone();
    let leader_snaps = cfg0.layout().snap();
    let (m0, ch0) = start(cfg0).await;
    let mut kv0 = KvClient::new(ch0.clone());
    let lease = LeaseClient::new(ch0.clone())
        .lease_grant(LeaseGrantRequest { ttl: 300, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    kv0.put(PutRequest {
        lease,
        ..put("leased", "x")
    })
    .await
    .unwrap();
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let mut kv = kv0.clone();
            tokio::spawn(async move {
                for i in 0..170 {
                    kv.put(put(&format!("k/{w:02}/{i:03}"), "v")).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    kv0.compact(CompactionRequest {
        revision: 100,
        physical: true,
    })
    .await
    .unwrap();
    // The leader compacts its raft log only at a raft snapshot of durably applied entries,
    // i.e. after the apply loop's next periodic sync; the joiner must not start before the
    // log starts past its first entry, or plain entries would catch it up.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !snap_indexes(&leader_snaps).iter().any(|i| *i > 5100) {
        assert!(
            std::time::Instant::now() < deadline,
            "the leader took no raft snapshot past 5100: {:?}",
            snap_indexes(&leader_snaps)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let p1 = url::Url::parse(&format!("http://127.0.0.1:{}", free_port())).unwrap();
    let mut cl = ClusterClient::new(ch0.clone());
    let new_id = cl
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![ferrokv_server::membership::url_string(&p1)],
            is_learner: true,
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap()
        .id;
    let mut cfg1 = config(d1.path(), "joiner");
    cfg1.listen_peer_urls = vec![p1.clone()];
    cfg1.initial_advertise_peer_urls = vec![p1.clone()];
    cfg1.initial_cluster = vec![
        ("seed".into(), vec![p0.clone()]),
        ("joiner".into(), vec![p1.clone()]),
    ];
    cfg1.initial_cluster_state = ferrokv_server::config::ClusterState::Existing;
    let (m1, ch1) = start(cfg1.clone()).await;
    let mut kv1 = KvClient::new(ch1.clone());
    let count = |kv: &mut KvClient<Channel>| {
        let mut kv = kv.clone();
        async move {
            kv.range(RangeRequest {
                key: b"k/".to_vec(),
                range_end: b"k0".to_vec(),
                count_only: true,
                serializable: true,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().count)
            .unwrap_or(-1)
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count(&mut kv1).await != 32 * 170 {
        assert!(
            std::time::Instant::now() < deadline,
            "joiner did not catch up (has {} keys)",
            count(&mut kv1).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It got there through a raft snapshot: the leader's log no longer starts at 1, and the
    // joiner (snapshot-count 100000) records the leader's snapshot, not one of its own.
    let snaps = snap_indexes(&cfg1.layout().snap());
    assert!(
        snaps.iter().any(|i| *i > 1000),
        "no raft snapshot from the leader on the joiner: {snaps:?}"
    );
    // Promote (retrying while the leader still counts it as behind), then write through the
    // cluster: entries after the snapshot apply once, on top of it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Err(e) = cl.member_promote(MemberPromoteRequest { id: new_id }).await {
        assert!(std::time::Instant::now() < deadline, "promote: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut watch = WatchClient::new(ch1.clone());
    let (wtx, wrx) = tokio::sync::mpsc::channel(4);
    wtx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"after".to_vec(),
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let mut events = watch
        .watch(tokio_stream::wrappers::ReceiverStream::new(wrx))
        .await
        .unwrap()
        .into_inner();
    assert!(events.message().await.unwrap().unwrap().created);
    let rev = kv0
        .put(put("after", "snapshot"))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("watch event on the joiner")
        .unwrap()
        .unwrap();
    assert_eq!(ev.events[0].kv.as_ref().unwrap().mod_revision, rev);

    let hash = |ch: Channel| async move {
        MaintenanceClient::new(ch)
            .hash_kv(HashKvRequest { revision: rev })
            .await
            .unwrap()
            .into_inner()
    };
    let (h0, h1) = (hash(ch0.clone()).await, hash(ch1.clone()).await);
    assert_eq!(
        (h1.hash, h1.compact_revision),
        (h0.hash, h0.compact_revision)
    );
    assert_eq!(h0.compact_revision, 100);
    let leased = kv1
        .range(RangeRequest {
            serializable: true,
            ..get("leased")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        leased.kvs[0].lease, lease,
        "lease attachment came with the keyspace"
    );

    // The joiner keeps what it installed across a restart. (Open connections, the seed's
    // raft stream included, hold a member's services and so its keyspace until they close;
    // in one process the seed must go first for the joiner's file to be free again.)
    drop((events, watch, wtx, kv1, ch1, kv0, cl, ch0));
    stop(m0).await;
    stop(m1).await;
    let (m1, ch1) = start(cfg1).await;
    let mut kv1 = KvClient::new(ch1.clone());
    assert_eq!(count(&mut kv1).await, 32 * 170);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let h1 = MaintenanceClient::new(ch1.clone())
            .hash_kv(HashKvRequest { revision: rev })
            .await;
        if let Ok(h1) = h1 {
            assert_eq!(h1.into_inner().hash, h0.hash);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hash_kv after restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((kv1, ch1));
    stop(m1).await;
}
