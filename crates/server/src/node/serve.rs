//! The serving steps of [`super::Member::start`]: the gRPC routers on the client and peer
//! ports and the HTTP endpoints on the metrics ports, each served until the stop signal.

use std::future::Future;
use std::sync::Arc;

use crate::net::tls::Acceptor;
use ferrokv_proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use ferrokv_proto::ferrokvpb::peer_server::PeerServer;
use futures::future::Either;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;

use super::bootstrap::Started;
use crate::api::{
    AuthService, ClusterService, KvService, LeaseService, MaintenanceService, RpcLayer,
};
use crate::config::Config;
use crate::error::Result;
use crate::etcdserver::{Caller, EtcdServer};
use crate::net::authority::AuthorityFix;
use crate::net::gateway::Gateway;
use crate::net::listen::{client_incoming, nodelay_incoming};
use crate::peer::PeerService;
use crate::stop::until_stopped;

/// gRPC messages may exceed the request limit by this much (etcd: grpcOverheadBytes).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// Raft messages and snapshot chunks between members may be this large.
const PEER_MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Runs one server future on its own task and logs how it failed. Every port of a member is
/// served through here.
fn spawn_serving<F, E>(what: &'static str, url: String, serving: F) -> JoinHandle<()>
where
    F: Future<Output = std::result::Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        if let Err(e) = serving.await {
            tracing::error!(url, error = %e, "{what} server failed");
        }
    })
}

/// Resolves when the member stops: the graceful-shutdown signal of every server.
fn stop_signal(stop: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut stop = stop.clone();
    async move { until_stopped(&mut stop).await }
}

/// Step 6a: the etcd services (and gRPC health, HTTP `/health`, `/metrics`, `/version`, and the
/// JSON gateway) on every client URL. Returns the bound URLs (port 0 resolved).
pub(super) async fn serve_client(
    cfg: &Config,
    listeners: Vec<(url::Url, TcpListener, Option<Acceptor>)>,
    s: &Started,
    stop: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<Vec<String>> {
    let max_msg = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let mut urls = Vec::new();
    for (u, listener, tls) in listeners {
        let addr = listener.local_addr()?;
        urls.push(format!("{}://{}", u.scheme(), addr));
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let core = &s.core;
        // gRPC and the JSON gateway get the same Watch service: leader rule and permissions.
        let watch_service = || {
            s.hub
                .service(s.header.clone(), s.has_leader.clone())
                .cancel_streams_with(s.streams_keep_leader.clone())
                .with_authorizer(watch_authorizer(core.clone()))
        };
        let gateway = Gateway::new(
            KvService::new(core.clone()),
            watch_service(),
            LeaseService::new(core.clone()),
            ClusterService::new(core.clone()),
            MaintenanceService::new(core.clone()),
            AuthService::new(core.clone()),
        );
        // HTTP/1 too, for /health, /metrics, /version and the JSON gateway on the client port.
        let router = Server::builder()
            .accept_http1(true)
            .layer(crate::net::http::ClientPortEndpoints::new(
                core.clone(),
                Some(gateway),
            ))
            .layer(RpcLayer::new(core.metrics()))
            .add_service(health_service)
            .add_service(
                KvServer::new(KvService::new(core.clone())).max_decoding_message_size(max_msg),
            )
            .add_service(WatchServer::new(watch_service()).max_decoding_message_size(max_msg))
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
                AuthServer::new(AuthService::new(core.clone())).max_decoding_message_size(max_msg),
            );
        let signal = stop_signal(stop);
        // TLS is terminated by ferrokv (net::tls), not tonic, so the two kinds of port serve
        // different stream types: one future type for both through `Either`.
        let serving = match tls {
            Some(acceptor) => {
                let incoming = tokio_stream::StreamExt::map(
                    crate::net::tls::incoming(listener, acceptor, stop.clone()),
                    |s| s.map(AuthorityFix::new),
                );
                Either::Left(router.serve_with_incoming_shutdown(incoming, signal))
            }
            None => Either::Right(
                router.serve_with_incoming_shutdown(client_incoming(listener), signal),
            ),
        };
        tasks.push(spawn_serving("gRPC", u.to_string(), serving));
        tracing::info!(url = %u, %addr, "serving client requests");
    }
    Ok(urls)
}

/// Step 6b: the peer service on every peer URL, with the Cluster service (a joining member
/// reads the member list there before it knows any client URL) and the Lease service
/// (followers forward lease renewals and TTL queries to the leader there).
pub(super) fn serve_peer(
    cfg: &Config,
    listeners: Vec<(url::Url, TcpListener)>,
    tls: Option<Acceptor>,
    s: &Started,
    stop: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) {
    for (u, listener) in listeners {
        // HTTP/1 too: etcd members ask `/members/hashkv` over HTTP/1.1.
        let router = Server::builder()
            .accept_http1(true)
            .layer(crate::peer::HashKvEndpoint::new(s.core.clone()))
            .layer(RpcLayer::uncounted(s.core.metrics()))
            .add_service(
                PeerServer::new(PeerService::new(
                    s.raft.clone(),
                    s.installer.clone(),
                    cfg.layout(),
                    s.core.metrics(),
                ))
                .max_decoding_message_size(PEER_MAX_MESSAGE),
            )
            .add_service(ClusterServer::new(ClusterService::new(s.core.clone())))
            .add_service(LeaseServer::new(LeaseService::new(s.core.clone())));
        let signal = stop_signal(stop);
        tracing::info!(url = %u, "serving peers");
        let serving = match (u.scheme() == "https", &tls) {
            (true, Some(acceptor)) => {
                let incoming = crate::net::tls::incoming(listener, acceptor.clone(), stop.clone());
                Either::Left(router.serve_with_incoming_shutdown(incoming, signal))
            }
            _ => Either::Right(
                router.serve_with_incoming_shutdown(nodelay_incoming(listener), signal),
            ),
        };
        tasks.push(spawn_serving("peer", u.to_string(), serving));
    }
}

/// Step 6c: `/metrics` and the health endpoints on every `--listen-metrics-urls` address.
/// Returns the bound addresses (port 0 resolved).
pub(super) fn serve_metrics(
    listeners: Vec<(url::Url, TcpListener)>,
    core: &Arc<EtcdServer>,
    stop: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<Vec<String>> {
    let mut urls = Vec::new();
    for (u, listener) in listeners {
        let addr = listener.local_addr()?;
        urls.push(format!("http://{addr}"));
        tracing::info!(url = %u, %addr, "serving /metrics and /health");
        tasks.push(tokio::spawn(crate::net::http::serve(
            listener,
            core.clone(),
            stop.clone(),
        )));
    }
    Ok(urls)
}

/// etcd's `isWatchPermitted`: the range permission of the stream's caller, checked when each
/// watch is created. Any refusal (no token, bad token, no permission) reads as etcd's
/// "permission denied" status as Go's gRPC prints it (etcd puts `err.Error()` there). The
/// certificate CN is read when the stream opens, and only while auth is enabled.
fn watch_authorizer(core: Arc<EtcdServer>) -> crate::watch::WatchAuthorizer {
    Arc::new(move |md, ext| {
        let md = md.clone();
        let cn = if core.auth_enabled() {
            Caller::new(&md, ext).cert_cn()
        } else {
            None
        };
        let core = core.clone();
        Box::new(move |key: &[u8], end: &[u8]| {
            let caller = Caller::with_cn(&md, cn.as_deref());
            core.authorize(&caller, |v| v.range(key, end))
                .map(|_| ())
                .map_err(|_| {
                    let denied = tonic::Status::from(crate::error::Error::PermissionDenied);
                    format!(
                        "rpc error: code = PermissionDenied desc = {}",
                        denied.message()
                    )
                })
        })
    })
}
