//! The JSON gateway on the client port: etcd's grpc-gateway routes (`/v3/kv/put`,
//! `/v3/watch`, ...), each a POST whose JSON body is the gRPC request in proto3's JSON mapping
//! (proto field names, bytes as base64, 64-bit integers as strings), answered by the same
//! gRPC service a gRPC client reaches, with etcd's HTTP statuses and error bodies.
//!
//! Owns the route table and the JSON ↔ message translation only: every call goes to the
//! service handlers it is given (the `api` and `watch` services, wired by `node`), so auth,
//! validation and errors are exactly the gRPC ones. `/v3beta/...` is served too, as etcd 3.6
//! still does. Must not depend on `api` or `node` (it sees the services only through the
//! generated tonic traits).

mod codec;
mod stream;

use std::future::Future;
use std::sync::Arc;

use ferrokv_proto::etcdserverpb::auth_server::Auth;
use ferrokv_proto::etcdserverpb::cluster_server::Cluster;
use ferrokv_proto::etcdserverpb::kv_server::Kv;
use ferrokv_proto::etcdserverpb::lease_server::Lease;
use ferrokv_proto::etcdserverpb::maintenance_server::Maintenance;
use ferrokv_proto::etcdserverpb::watch_server::Watch;
use ferrokv_proto::etcdserverpb::{LeaseKeepAliveRequest, WatchRequest};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

pub use codec::HttpResponse;
use codec::{decode, encode, error_response, json_response};

/// The largest unary request body read. The services enforce etcd's request limit
/// themselves; this only keeps a client from making the gateway buffer without bound.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Every route etcd 3.6's gateway serves, relative to `/v3/`.
const ROUTES: &[&str] = &[
    "kv/range",
    "kv/put",
    "kv/deleterange",
    "kv/txn",
    "kv/compaction",
    "watch",
    "lease/grant",
    "lease/revoke",
    "kv/lease/revoke",
    "lease/keepalive",
    "lease/timetolive",
    "kv/lease/timetolive",
    "lease/leases",
    "kv/lease/leases",
    "cluster/member/add",
    "cluster/member/remove",
    "cluster/member/update",
    "cluster/member/list",
    "cluster/member/promote",
    "maintenance/alarm",
    "maintenance/status",
    "maintenance/defragment",
    "maintenance/hash",
    "maintenance/hashkv",
    "maintenance/snapshot",
    "maintenance/transfer-leadership",
    "maintenance/downgrade",
    "auth/enable",
    "auth/disable",
    "auth/status",
    "auth/authenticate",
    "auth/user/add",
    "auth/user/get",
    "auth/user/list",
    "auth/user/delete",
    "auth/user/changepw",
    "auth/user/grant",
    "auth/user/revoke",
    "auth/role/add",
    "auth/role/get",
    "auth/role/list",
    "auth/role/delete",
    "auth/role/grant",
    "auth/role/revoke",
];

/// The gateway, cheap to clone; one per client listener.
#[derive(Clone)]
pub struct Gateway {
    routes: Arc<dyn Routes>,
}

/// The path part after the gateway prefix, or `None` for a path outside the gateway.
pub fn gateway_path(path: &str) -> Option<&str> {
    path.strip_prefix("/v3/")
        .or_else(|| path.strip_prefix("/v3beta/"))
}

impl Gateway {
    pub fn new<K, W, L, C, M, A>(kv: K, watch: W, lease: L, cluster: C, maint: M, auth: A) -> Self
    where
        K: Kv,
        W: Watch,
        L: Lease,
        C: Cluster,
        M: Maintenance,
        A: Auth,
    {
        Gateway {
            routes: Arc::new(Services {
                kv: Arc::new(kv),
                watch: Arc::new(watch),
                lease: Arc::new(lease),
                cluster: Arc::new(cluster),
                maint: Arc::new(maint),
                auth: Arc::new(auth),
            }),
        }
    }

    /// Answers a request whose path [`gateway_path`] accepted.
    pub fn handle(
        &self,
        req: ::http::Request<tonic::body::Body>,
    ) -> BoxFuture<'static, HttpResponse> {
        let routes = self.routes.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let Some(route) = gateway_path(&path).filter(|r| ROUTES.contains(r)) else {
                return error_response(&Status::not_found("Not Found"));
            };
            // Every etcd route is a POST; grpc-gateway answers other methods this way.
            if req.method() != ::http::Method::POST {
                return error_response(&Status::unimplemented("Method Not Allowed"));
            }
            let span = tracing::debug_span!("gateway", route);
            tracing::Instrument::instrument(routes.call(route.to_string(), req), span).await
        })
    }
}

trait Routes: Send + Sync + 'static {
    fn call(
        &self,
        route: String,
        req: ::http::Request<tonic::body::Body>,
    ) -> BoxFuture<'static, HttpResponse>;
}

struct Services<K, W, L, C, M, A> {
    kv: Arc<K>,
    watch: Arc<W>,
    lease: Arc<L>,
    cluster: Arc<C>,
    maint: Arc<M>,
    auth: Arc<A>,
}

/// One unary route: `$svc.$method` called with the decoded body.
macro_rules! unary {
    ($req:expr, $svc:expr, $method:ident) => {{
        let svc = $svc.clone();
        Box::pin(unary($req, move |r| async move { svc.$method(r).await }))
    }};
}

impl<K, W, L, C, M, A> Routes for Services<K, W, L, C, M, A>
where
    K: Kv,
    W: Watch,
    L: Lease,
    C: Cluster,
    M: Maintenance,
    A: Auth,
{
    fn call(
        &self,
        route: String,
        req: ::http::Request<tonic::body::Body>,
    ) -> BoxFuture<'static, HttpResponse> {
        match route.as_str() {
            "kv/range" => unary!(req, self.kv, range),
            "kv/put" => unary!(req, self.kv, put),
            "kv/deleterange" => unary!(req, self.kv, delete_range),
            "kv/txn" => unary!(req, self.kv, txn),
            "kv/compaction" => unary!(req, self.kv, compact),
            "watch" => {
                let svc = self.watch.clone();
                Box::pin(async move {
                    let (meta, ext, body) = parts(req);
                    let inbound = stream::request_stream::<WatchRequest>(body);
                    let called = svc.watch(Request::from_parts(meta, ext, inbound)).await;
                    stream::response_stream(called.map(pinned)).await
                })
            }
            "lease/grant" => unary!(req, self.lease, lease_grant),
            "lease/revoke" | "kv/lease/revoke" => unary!(req, self.lease, lease_revoke),
            "lease/keepalive" => {
                let svc = self.lease.clone();
                Box::pin(async move {
                    let (meta, ext, body) = parts(req);
                    let inbound = stream::request_stream::<LeaseKeepAliveRequest>(body);
                    let called = svc
                        .lease_keep_alive(Request::from_parts(meta, ext, inbound))
                        .await;
                    stream::response_stream(called.map(pinned)).await
                })
            }
            "lease/timetolive" | "kv/lease/timetolive" => {
                unary!(req, self.lease, lease_time_to_live)
            }
            "lease/leases" | "kv/lease/leases" => unary!(req, self.lease, lease_leases),
            "cluster/member/add" => unary!(req, self.cluster, member_add),
            "cluster/member/remove" => unary!(req, self.cluster, member_remove),
            "cluster/member/update" => unary!(req, self.cluster, member_update),
            "cluster/member/list" => unary!(req, self.cluster, member_list),
            "cluster/member/promote" => unary!(req, self.cluster, member_promote),
            "maintenance/alarm" => unary!(req, self.maint, alarm),
            "maintenance/status" => unary!(req, self.maint, status),
            "maintenance/defragment" => unary!(req, self.maint, defragment),
            "maintenance/hash" => unary!(req, self.maint, hash),
            "maintenance/hashkv" => unary!(req, self.maint, hash_kv),
            "maintenance/snapshot" => {
                let svc = self.maint.clone();
                Box::pin(async move {
                    let (meta, ext, body) = parts(req);
                    let msg = match read_body(body).await {
                        Ok(msg) => msg,
                        Err(status) => return error_response(&status),
                    };
                    let called = svc.snapshot(Request::from_parts(meta, ext, msg)).await;
                    stream::response_stream(called.map(pinned)).await
                })
            }
            "maintenance/transfer-leadership" => unary!(req, self.maint, move_leader),
            "maintenance/downgrade" => unary!(req, self.maint, downgrade),
            "auth/enable" => unary!(req, self.auth, auth_enable),
            "auth/disable" => unary!(req, self.auth, auth_disable),
            "auth/status" => unary!(req, self.auth, auth_status),
            "auth/authenticate" => unary!(req, self.auth, authenticate),
            "auth/user/add" => unary!(req, self.auth, user_add),
            "auth/user/get" => unary!(req, self.auth, user_get),
            "auth/user/list" => unary!(req, self.auth, user_list),
            "auth/user/delete" => unary!(req, self.auth, user_delete),
            "auth/user/changepw" => unary!(req, self.auth, user_change_password),
            "auth/user/grant" => unary!(req, self.auth, user_grant_role),
            "auth/user/revoke" => unary!(req, self.auth, user_revoke_role),
            "auth/role/add" => unary!(req, self.auth, role_add),
            "auth/role/get" => unary!(req, self.auth, role_get),
            "auth/role/list" => unary!(req, self.auth, role_list),
            "auth/role/delete" => unary!(req, self.auth, role_delete),
            "auth/role/grant" => unary!(req, self.auth, role_grant_permission),
            "auth/role/revoke" => unary!(req, self.auth, role_revoke_permission),
            _ => Box::pin(async { error_response(&Status::not_found("Not Found")) }),
        }
    }
}

/// A handler's response stream boxed, so the streaming responder needs no `Unpin` from the
/// service's associated stream type.
fn pinned<S: futures::Stream + Send + 'static>(
    resp: Response<S>,
) -> Response<std::pin::Pin<Box<S>>> {
    resp.map(Box::pin)
}

/// A unary call: decode the body, call, encode the response or the error.
async fn unary<Req, Resp, F, Fut>(req: ::http::Request<tonic::body::Body>, call: F) -> HttpResponse
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let (meta, ext, body) = parts(req);
    let msg = match read_body(body).await {
        Ok(msg) => msg,
        Err(status) => return error_response(&status),
    };
    match call(Request::from_parts(meta, ext, msg)).await {
        Ok(resp) => match encode(resp.get_ref()) {
            Ok(body) => json_response(200, body, true),
            Err(status) => error_response(&status),
        },
        Err(status) => error_response(&status),
    }
}

async fn read_body<T: DeserializeOwned + Default>(body: tonic::body::Body) -> Result<T, Status> {
    let bytes = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("reading the request body: {e}")))?
        .to_bytes();
    decode(&bytes)
}

/// The gRPC metadata grpc-gateway derives from the HTTP headers — `Authorization` (etcd reads
/// the token from it) and every `Grpc-Metadata-<name>` header as `<name>` — plus the request's
/// extensions (connection facts such as the TLS peer), and the body.
fn parts(
    req: ::http::Request<tonic::body::Body>,
) -> (MetadataMap, ::http::Extensions, tonic::body::Body) {
    let (head, body) = req.into_parts();
    let mut meta = MetadataMap::new();
    for (name, value) in &head.headers {
        let key = if name == ::http::header::AUTHORIZATION {
            "authorization"
        } else if let Some(k) = name.as_str().strip_prefix("grpc-metadata-") {
            k
        } else {
            continue;
        };
        let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_bytes()),
        ) else {
            continue;
        };
        meta.append(key, value);
    }
    (meta, head.extensions, body)
}
