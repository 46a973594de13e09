//! Member start-up, serving and shutdown: opens the data dir, starts raft and the apply loop,
//! serves gRPC on every client URL and HTTP on every metrics URL, and stops them in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferrokv_proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use ferrokv_proto::ferrokvpb::{internal_request::Request as Internal, MemberAttributes};
use ferrokv_raftnode::NodeConfig;
use ferrokv_storage::Store;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Identity, Server};

use crate::apply::{Alarms, Applier, Waiters};
use crate::auth::AuthService;
use crate::cluster::ClusterService;
use crate::config::{ClusterState, Config, TlsFiles};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::header::HeaderSource;
use crate::ids::{self, IdGenerator};
use crate::kv::KvService;
use crate::lease::{LeaseService, Lessor};
use crate::maintenance::MaintenanceService;
use crate::membership;
use crate::metrics::Metrics;
use crate::transport::PeerTransport;
use crate::watch::WatchHub;

/// gRPC messages may exceed the request limit by this much (etcd: grpcOverheadBytes).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// How long graceful shutdown waits for open client connections before closing them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Stops a running member gracefully (what SIGTERM does).
#[derive(Clone)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<bool>>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.tx.send_replace(true);
    }
}

/// A running member.
pub struct Member {
    core: Arc<Core>,
    client_urls: Vec<String>,
    metrics_urls: Vec<String>,
    /// Set by `ShutdownHandle::shutdown` (or by our own removal from the cluster).
    request_tx: Arc<watch::Sender<bool>>,
    /// Set by `wait` once it decided to stop: every task and listener ends on it.
    stop_tx: Arc<watch::Sender<bool>>,
    fatal_rx: mpsc::UnboundedReceiver<Error>,
    tasks: Vec<JoinHandle<()>>,
    apply_thread: Option<std::thread::JoinHandle<()>>,
}

/// WAL metadata: who this member is, so a restart needs no flags to find out.
fn encode_wal_metadata(member_id: u64, cluster_id: u64) -> Vec<u8> {
    let mut v = member_id.to_be_bytes().to_vec();
    v.extend_from_slice(&cluster_id.to_be_bytes());
    v
}

fn decode_wal_metadata(b: &[u8]) -> Result<(u64, u64)> {
    if b.len() != 16 {
        return Err(Error::Config(format!(
            "WAL metadata has {} bytes, want 16",
            b.len()
        )));
    }
    let mut m = [0u8; 8];
    let mut c = [0u8; 8];
    m.copy_from_slice(&b[..8]);
    c.copy_from_slice(&b[8..]);
    Ok((u64::from_be_bytes(m), u64::from_be_bytes(c)))
}

/// Client-side TLS for connections to peers (https peer URLs), from the peer TLS flags.
fn peer_client_tls(tls: &TlsFiles) -> Result<Option<tonic::transport::ClientTlsConfig>> {
    if tls.cert_file.is_none() && tls.trusted_ca_file.is_none() {
        return Ok(None);
    }
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| Error::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let mut c = tonic::transport::ClientTlsConfig::new();
    if let Some(ca) = &tls.trusted_ca_file {
        c = c.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        c = c.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(c))
}

/// Connects to a peer URL (with the peer TLS settings for https).
pub(crate) async fn connect_peer(
    url: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> std::result::Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut ep = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        if let Some(t) = tls {
            ep = ep.tls_config(t.clone())?;
        }
    }
    ep.connect().await
}

/// For a joining member: (own id, cluster id, member list) from the first peer that answers.
async fn fetch_membership(
    cfg: &Config,
    own_peer_urls: &[String],
) -> Result<(u64, u64, Vec<ferrokv_proto::etcdserverpb::Member>)> {
    let tls = peer_client_tls(&cfg.peer_tls)?;
    let mut own: Vec<String> = own_peer_urls.to_vec();
    own.sort();
    let targets: Vec<String> = cfg
        .initial_cluster
        .iter()
        .flat_map(|(_, urls)| urls.iter().map(membership::url_string))
        .filter(|u| !own.contains(u))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        for url in &targets {
            let Ok(ch) = connect_peer(url, tls.as_ref()).await else {
                continue;
            };
            let req = ferrokv_proto::etcdserverpb::MemberListRequest {
                linearizable: false,
            };
            let Ok(resp) = ferrokv_proto::etcdserverpb::cluster_client::ClusterClient::new(ch)
                .member_list(req)
                .await
            else {
                continue;
            };
            let resp = resp.into_inner();
            let cluster_id = resp.header.map(|h| h.cluster_id).unwrap_or(0);
            let me = resp.members.iter().find(|m| {
                let mut urls = m.peer_ur_ls.clone();
                urls.sort();
                urls == own
            });
            return match me {
                Some(m) => Ok((m.id, cluster_id, resp.members.clone())),
                None => Err(Error::Config(format!(
                    "this member (peer URLs {own:?}) has not been added to the cluster (etcdctl member add)"
                ))),
            };
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::Config(format!(
                "cannot fetch the member list from any peer of {targets:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Accepted connections with Nagle's algorithm off. `serve_with_incoming` does not apply the
/// builder's `tcp_nodelay`, and small gRPC replies held back by Nagle add tens of ms to every
/// request that follows a write on the same connection.
fn nodelay_incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// Client connections: Nagle off, and the `:authority` repair of [`crate::authority`] so
/// that Go clients which put a URL there are served as etcd serves them.
fn client_incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<
    Item = std::io::Result<crate::authority::AuthorityFix<tokio::net::TcpStream>>,
> {
    use tokio_stream::StreamExt;
    nodelay_incoming(listener).map(|s| s.map(crate::authority::AuthorityFix::new))
}

async fn bind(u: &url::Url) -> Result<TcpListener> {
    let host = u
        .host_str()
        .ok_or_else(|| Error::Config(format!("listen URL {u} has no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = u
        .port_or_known_default()
        .ok_or_else(|| Error::Config(format!("listen URL {u} has no port")))?;
    TcpListener::bind((host, port))
        .await
        .map_err(|e| Error::Io(format!("listen on {u}: {e}")))
}

impl Member {
    /// Opens/creates the data dir (`<data-dir>/member/{wal,snap/db}`), starts raft, the apply
    /// loop, the gRPC servers on every listen URL and the HTTP endpoints.
    pub async fn start(cfg: Config) -> Result<Member> {
        let member_dir = cfg.member_dir();
        let layout = cfg.layout();
        std::fs::create_dir_all(layout.snap())?;
        layout.remove_stale_scratch();
        let store = Arc::new(Store::open(&layout.db())?);

        // Identity: from the WAL on restart, from the flags on first boot.
        let initial = membership::initial_members(&cfg);
        let existing_wal = ferrokv_raftnode::read_wal_metadata(&member_dir)?;
        let own_peer_urls: Vec<String> = cfg
            .initial_advertise_peer_urls
            .iter()
            .map(membership::url_string)
            .collect();
        let (member_id, cluster_id) = match &existing_wal {
            Some(meta) => decode_wal_metadata(meta)?,
            None if cfg.initial_cluster_state == ClusterState::Existing => {
                // Joining: the cluster already added us (MemberAdd); learn our id, the cluster
                // id and the member list from a peer, as etcd does.
                let (id, cid, members) = fetch_membership(&cfg, &own_peer_urls).await?;
                if store.meta(membership::MEMBERS_KEY)?.is_none() {
                    let mut batch = store.write_batch()?;
                    batch.set_meta(
                        membership::MEMBERS_KEY,
                        &membership::encode_members(&members),
                    )?;
                    batch.commit(true)?;
                }
                (id, cid)
            }
            None => {
                let id = ids::member_id(&own_peer_urls, &cfg.initial_cluster_token);
                if !initial.iter().any(|m| m.id == id) {
                    return Err(Error::Config(format!(
                        "--initial-cluster has no member with this member's peer URLs {own_peer_urls:?}"
                    )));
                }
                (
                    id,
                    ids::cluster_id(&initial.iter().map(|m| m.id).collect::<Vec<_>>()),
                )
            }
        };
        let bootstrap = existing_wal.is_none() && cfg.initial_cluster_state == ClusterState::New;
        if bootstrap && store.meta(membership::MEMBERS_KEY)?.is_none() {
            let mut batch = store.write_batch()?;
            batch.set_meta(
                membership::MEMBERS_KEY,
                &membership::encode_members(&initial),
            )?;
            batch.commit(true)?;
        }
        tracing::info!(
            member_id = format!("{member_id:x}"),
            cluster_id = format!("{cluster_id:x}"),
            bootstrap,
            "starting member"
        );

        let (applied_index, _) = store.applied_index();
        let conf_state = membership::load_conf_state(&store)?;
        let election_ticks = (cfg.election_timeout.as_millis()
            / cfg.heartbeat_interval.as_millis().max(1))
        .max(2) as usize;
        let node_cfg = NodeConfig {
            id: member_id,
            member_dir: member_dir.clone(),
            initial_voters: if bootstrap {
                initial.iter().map(|m| m.id).collect()
            } else {
                Vec::new()
            },
            initial_learners: Vec::new(),
            join_existing: existing_wal.is_none()
                && cfg.initial_cluster_state == ClusterState::Existing,
            wal_metadata: encode_wal_metadata(member_id, cluster_id),
            applied_index,
            conf_state,
            tick_interval: cfg.heartbeat_interval,
            election_ticks,
            heartbeat_ticks: 1,
            snapshot_count: cfg.snapshot_count,
        };
        // Peers: the replicated member list once there is one, else the bootstrap flags.
        let known = membership::load(&store)?;
        let known = if known.is_empty() {
            initial.clone()
        } else {
            known
        };
        let peers: HashMap<u64, Vec<String>> = known
            .iter()
            .filter(|m| m.id != member_id)
            .map(|m| (m.id, m.peer_ur_ls.clone()))
            .collect();
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop_tx = Arc::new(stop_tx);
        let request_tx = Arc::new(watch::channel(false).0);
        // Peer listeners are bound before raft starts so that a bind error fails start-up
        // cleanly; they serve once raft exists.
        let mut peer_listeners = Vec::new();
        for u in &cfg.listen_peer_urls {
            peer_listeners.push((u.clone(), bind(u).await?));
        }
        // Everything that can fail on bad flags or a busy port happens before raft starts,
        // so a failed start leaves no threads behind and the data dir closed.
        let mut client_listeners = Vec::new();
        for u in &cfg.listen_client_urls {
            // The rustls config is built now, so bad certificates fail the start-up early.
            let tls = match u.scheme() {
                "https" => Some(crate::listen_tls::acceptor(&cfg.client_tls)?),
                "http" => None,
                _ => {
                    return Err(Error::Config(format!(
                        "listen URL {u}: scheme must be http or https"
                    )))
                }
            };
            client_listeners.push((u.clone(), bind(u).await?, tls));
        }
        let mut metrics_listeners = Vec::new();
        for u in &cfg.listen_metrics_urls {
            metrics_listeners.push((u.clone(), bind(u).await?));
        }
        let peer_tls_server = cfg
            .listen_peer_urls
            .iter()
            .any(|u| u.scheme() == "https")
            .then(|| crate::listen_tls::acceptor(&cfg.peer_tls))
            .transpose()?;
        let transport = Arc::new(PeerTransport::start(
            peers,
            stop_rx.clone(),
            peer_client_tls(&cfg.peer_tls)?,
        ));
        let (raft, committed_rx, raft_thread) =
            ferrokv_raftnode::start(node_cfg, transport.clone())?;
        transport.set_raft(raft.clone());
        transport.set_snapshot_source(store.clone(), cfg.layout());
        let (install_tx, install_rx) = mpsc::channel(4);

        let (fatal_tx, fatal_rx) = mpsc::unbounded_channel::<Error>();
        let header = HeaderSource::new(cluster_id, member_id);
        let (applied_tx, applied_rx) = watch::channel(applied_index);
        let metrics = Arc::new(Metrics::default());
        metrics.set_applied(applied_index);
        let core = Arc::new(Core {
            request_timeout: Duration::from_secs(5) + 2 * cfg.election_timeout,
            peer_client_tls: peer_client_tls(&cfg.peer_tls)?,
            leader_conn: parking_lot::Mutex::new(None),
            cfg: cfg.clone(),
            store: store.clone(),
            raft: raft.clone(),
            header: header.clone(),
            waiters: Arc::new(Waiters::default()),
            applied: applied_rx,
            ids: IdGenerator::new(member_id),
            lessor: Arc::new(Lessor::default()),
            alarms: Arc::new(Alarms::default()),
            metrics: metrics.clone(),
        });
        let mut tasks = Vec::new();

        // Raft thread: its end while we are not stopping is fatal (fail-stop).
        {
            let fatal_tx = fatal_tx.clone();
            std::thread::Builder::new()
                .name("ferrokv-raft-watch".into())
                .spawn(move || {
                    let err = match raft_thread.join() {
                        Ok(Ok(())) => Error::Raft(ferrokv_raftnode::Error::Stopped),
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "raft node failed; stopping the member");
                            Error::Fatal(format!("raft node: {e}"))
                        }
                        Err(_) => Error::Fatal("raft node thread panicked".into()),
                    };
                    let _ = fatal_tx.send(err);
                })?;
        }

        // Leadership → header term, has_leader for watch streams.
        let (has_leader_tx, has_leader_rx) = watch::channel(false);
        {
            let mut status = raft.status();
            let header = header.clone();
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    {
                        let s = status.borrow_and_update();
                        header.set_raft_term(s.term);
                        has_leader_tx.send_if_modified(|v| {
                            let now = s.leader_id != 0;
                            std::mem::replace(v, now) != now
                        });
                    }
                    tokio::select! {
                        _ = crate::core::until_stopped(&mut stop) => return,
                        r = status.changed() => if r.is_err() { return },
                    }
                }
            }));
        }

        let hub = WatchHub::new(
            // The store is the hub's event source (watch::source implements it for Store).
            store.clone(),
            cfg.watch_progress_notify_interval,
        );

        // Apply loop on its own thread.
        let applier = Applier {
            store: store.clone(),
            raft: raft.clone(),
            hub: hub.clone(),
            waiters: core.waiters.clone(),
            lessor: core.lessor.clone(),
            alarms: core.alarms.clone(),
            applied_tx,
            metrics,
            stop: stop_rx.clone(),
            transport: transport.clone(),
            member_id,
            request_stop: request_tx.clone(),
        };
        let apply_fatal = fatal_tx.clone();
        let apply_thread = std::thread::Builder::new()
            .name("ferrokv-apply".into())
            .spawn(move || {
                if let Err(e) = applier.run(committed_rx, install_rx) {
                    tracing::error!(error = %e, "apply loop failed; stopping the member");
                    let _ = apply_fatal.send(e);
                }
            })?;

        if let Some(mode) = cfg.auto_compaction.clone() {
            tasks.push(tokio::spawn(crate::compactor::run(
                core.clone(),
                mode,
                stop_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(crate::lease::run_expiry(
            core.clone(),
            stop_rx.clone(),
        )));

        // gRPC on every client URL.
        let max_msg = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let mut client_urls = Vec::new();
        for (u, listener, tls) in client_listeners {
            let u = &u;
            let addr = listener.local_addr()?;
            client_urls.push(format!("{}://{}", u.scheme(), addr));
            // HTTP/1 too, for /health, /metrics and /version on the client port.
            let mut builder = Server::builder()
                .accept_http1(true)
                .layer(crate::http::ClientPortEndpoints::new(core.clone()));
            let (health_reporter, health_service) = tonic_health::server::health_reporter();
            health_reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            let router = builder
                .add_service(health_service)
                .add_service(
                    KvServer::new(KvService::new(core.clone())).max_decoding_message_size(max_msg),
                )
                .add_service(
                    WatchServer::new(hub.service(header.clone(), has_leader_rx.clone()))
                        .max_decoding_message_size(max_msg),
                )
                .add_service(
                    LeaseServer::new(LeaseService::new(core.clone()))
                        .max_decoding_message_size(max_msg),
                )
                .add_service(
                    ClusterServer::new(ClusterService::new(core.clone()))
                        .max_decoding_message_size(max_msg),
                )
                .add_service(
                    MaintenanceServer::new(MaintenanceService::new(core.clone()))
                        .max_decoding_message_size(max_msg),
                )
                .add_service(
                    AuthServer::new(AuthService::new(core.clone()))
                        .max_decoding_message_size(max_msg),
                );
            let mut stop = stop_rx.clone();
            let url = u.to_string();
            let signal = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            // TLS is terminated by ferrokv (listen_tls), not tonic, so the two arms serve
            // different stream types.
            tasks.push(match tls {
                Some(acceptor) => {
                    let incoming = tokio_stream::StreamExt::map(
                        crate::listen_tls::incoming(listener, acceptor, stop_rx.clone()),
                        |s| s.map(crate::authority::AuthorityFix::new),
                    );
                    tokio::spawn(async move {
                        if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await
                        {
                            tracing::error!(url, error = %e, "gRPC server failed");
                        }
                    })
                }
                None => {
                    let incoming = client_incoming(listener);
                    tokio::spawn(async move {
                        if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await
                        {
                            tracing::error!(url, error = %e, "gRPC server failed");
                        }
                    })
                }
            });
            tracing::info!(url = %u, %addr, "serving client requests");
        }

        for (u, listener) in peer_listeners {
            // The Cluster service is on the peer port too: a joining member reads the member
            // list from there before it knows any client URL.
            let router = Server::builder()
                .add_service(
                    ferrokv_proto::ferrokvpb::peer_server::PeerServer::new(
                        crate::transport::PeerService::new(
                            raft.clone(),
                            install_tx.clone(),
                            cfg.layout(),
                        ),
                    )
                    .max_decoding_message_size(64 * 1024 * 1024),
                )
                .add_service(ClusterServer::new(ClusterService::new(core.clone())))
                // Followers forward lease renewals and TTL queries to the leader here.
                .add_service(LeaseServer::new(LeaseService::new(core.clone())));
            let mut stop = stop_rx.clone();
            let signal = async move { crate::core::until_stopped(&mut stop).await };
            tracing::info!(url = %u, "serving peers");
            tasks.push(match (u.scheme() == "https", &peer_tls_server) {
                (true, Some(acceptor)) => {
                    let incoming =
                        crate::listen_tls::incoming(listener, acceptor.clone(), stop_rx.clone());
                    tokio::spawn(async move {
                        if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await
                        {
                            tracing::error!(error = %e, "peer server failed");
                        }
                    })
                }
                _ => {
                    let incoming = nodelay_incoming(listener);
                    tokio::spawn(async move {
                        if let Err(e) = router.serve_with_incoming_shutdown(incoming, signal).await
                        {
                            tracing::error!(error = %e, "peer server failed");
                        }
                    })
                }
            });
        }

        let mut metrics_urls = Vec::new();
        for (u, listener) in metrics_listeners {
            metrics_urls.push(format!("http://{}", listener.local_addr()?));
            tracing::info!(url = %u, addr = %listener.local_addr()?, "serving /metrics and /health");
            tasks.push(tokio::spawn(crate::http::serve(
                listener,
                core.clone(),
                stop_rx.clone(),
            )));
        }

        // Publish our name and client URLs through raft, so every member's MemberList has them.
        {
            let core = core.clone();
            let advertised: Vec<String> = if cfg
                .advertise_client_urls
                .iter()
                .any(|u| u.port() == Some(0))
            {
                client_urls.clone()
            } else {
                cfg.advertise_client_urls
                    .iter()
                    .map(membership::url_string)
                    .collect()
            };
            let attr = MemberAttributes {
                member_id,
                name: cfg.name.clone(),
                client_urls: advertised,
            };
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = crate::core::until_stopped(&mut stop) => return,
                        r = core.propose(Internal::MemberAttributes(attr.clone())) => match r {
                            Ok(_) => {
                                tracing::info!("published member attributes");
                                return;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "publishing member attributes; retrying");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        },
                    }
                }
            }));
        }

        Ok(Member {
            core,
            client_urls,
            metrics_urls,
            request_tx,
            stop_tx,
            fatal_rx,
            tasks,
            apply_thread: Some(apply_thread),
        })
    }

    /// The bound client URLs (port 0 resolved), e.g. `http://127.0.0.1:40123`.
    pub fn client_urls(&self) -> Vec<String> {
        self.client_urls.clone()
    }

    /// The bound `--listen-metrics-urls` addresses (port 0 resolved).
    pub fn metrics_urls(&self) -> Vec<String> {
        self.metrics_urls.clone()
    }

    pub fn member_id(&self) -> u64 {
        self.core.member_id()
    }

    pub fn cluster_id(&self) -> u64 {
        self.core.header.cluster_id()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            tx: self.request_tx.clone(),
        }
    }

    /// A leader that stops gracefully hands leadership to another voter first, so the
    /// cluster does not wait an election timeout (what etcd does on SIGTERM).
    async fn transfer_leadership_away(&self) {
        let st = self.core.status();
        if st.leader_id != st.id {
            return;
        }
        let Some(&to) = st.voters.iter().find(|v| **v != st.id) else {
            return;
        };
        tracing::info!(
            to = format!("{to:x}"),
            "transferring leadership before stopping"
        );
        if let Err(e) = self.core.raft.transfer_leader(to).await {
            tracing::warn!(error = %e, "leadership transfer failed");
            return;
        }
        let mut rx = self.core.raft.status();
        let moved = async {
            rx.wait_for(|s| s.leader_id != 0 && s.leader_id != st.id)
                .await
                .map(|_| ())
        };
        if tokio::time::timeout(self.core.cfg.election_timeout * 2, moved)
            .await
            .is_err()
        {
            tracing::warn!("leadership did not move before stopping");
        }
    }

    /// Resolves when the member must exit: Ok after `shutdown()`, Err on a fatal error. Either
    /// way everything is stopped and the data dir is closed when it returns.
    pub async fn wait(mut self) -> Result<()> {
        let mut requested = self.request_tx.subscribe();
        let outcome = tokio::select! {
            _ = crate::core::until_stopped(&mut requested) => Ok(()),
            e = self.fatal_rx.recv() => Err(e.unwrap_or(Error::Stopped)),
        };
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "member stopping after a fatal error");
        } else {
            tracing::info!("member shutting down");
            self.transfer_leadership_away().await;
        }
        self.stop_tx.send_replace(true);
        for mut t in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout(DRAIN_TIMEOUT, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
        self.core.raft.shutdown().await;
        if let Some(th) = self.apply_thread.take() {
            let _ = tokio::task::spawn_blocking(move || th.join()).await;
        }
        if let Err(e) = self.core.store.sync() {
            tracing::error!(error = %e, "final storage sync failed");
            return Err(Error::Fatal(format!("final storage sync: {e}")));
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_metadata_round_trip() {
        let b = encode_wal_metadata(0xdead_beef, 42);
        assert_eq!(decode_wal_metadata(&b).unwrap(), (0xdead_beef, 42));
        assert!(decode_wal_metadata(&b[..15]).is_err());
    }
}
