//! The one per-RPC layer of every gRPC router: counts the request in the metrics
//! (`grpc_server_started_total`, under etcd's method names), runs the call inside a tracing
//! span named after the method, and logs the gRPC status of a call that failed. Handlers
//! therefore carry no metrics or span code, and return errors with `?` (the status comes
//! from `From<Error> for Status`, the crate's one error table).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tracing::Instrument as _;

use crate::metrics::Metrics;

/// The methods counted in `grpc_server_started_total` (the set etcd dashboards look at and
/// ferrokv has always reported; streams and Auth's unimplemented calls are not counted).
const COUNTED: [&str; 23] = [
    "Range",
    "Put",
    "DeleteRange",
    "Txn",
    "Compact",
    "LeaseGrant",
    "LeaseRevoke",
    "LeaseKeepAlive",
    "LeaseTimeToLive",
    "LeaseLeases",
    "MemberAdd",
    "MemberRemove",
    "MemberUpdate",
    "MemberList",
    "MemberPromote",
    "Alarm",
    "Status",
    "Defragment",
    "Hash",
    "HashKV",
    "Snapshot",
    "MoveLeader",
    "AuthStatus",
];

/// Service and method of a gRPC path such as `/etcdserverpb.KV/Range`.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    (!service.is_empty() && !method.is_empty()).then_some((service, method))
}

/// The metric label for `method`, when it is one of the counted etcd methods of an
/// `etcdserverpb` service.
fn counted(service: &str, method: &str) -> Option<&'static str> {
    if !service.starts_with("etcdserverpb.") {
        return None;
    }
    COUNTED.iter().copied().find(|m| *m == method)
}

#[derive(Clone)]
pub struct RpcLayer {
    metrics: Arc<Metrics>,
}

impl RpcLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        RpcLayer { metrics }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = Rpc<S>;

    fn layer(&self, inner: S) -> Rpc<S> {
        Rpc {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Rpc<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Rpc<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some((service, method)) = split_path(req.uri().path()) else {
            return Box::pin(self.inner.call(req));
        };
        if let Some(m) = counted(service, method) {
            self.metrics.request(m);
        }
        let span = tracing::info_span!("rpc", service, method);
        let call = self.inner.call(req);
        Box::pin(
            async move {
                let resp = call.await?;
                // A failed unary call answers with the status in the response headers
                // (trailers-only); a stream's outcome is in its trailers, not seen here.
                if let Some(code) = resp.headers().get("grpc-status") {
                    if code.as_bytes() != b"0" {
                        let message = resp
                            .headers()
                            .get("grpc-message")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        tracing::debug!(code = ?code, message, "rpc failed");
                    }
                }
                Ok(resp)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_counted_methods() {
        assert_eq!(
            split_path("/etcdserverpb.KV/Range"),
            Some(("etcdserverpb.KV", "Range"))
        );
        assert_eq!(split_path("/health"), None);
        assert_eq!(split_path("/"), None);
        assert_eq!(counted("etcdserverpb.KV", "Put"), Some("Put"));
        assert_eq!(
            counted("etcdserverpb.Cluster", "MemberAdd"),
            Some("MemberAdd")
        );
        assert_eq!(counted("etcdserverpb.Watch", "Watch"), None);
        assert_eq!(counted("etcdserverpb.Auth", "AuthEnable"), None);
        assert_eq!(counted("etcdserverpb.Maintenance", "Downgrade"), None);
        assert_eq!(counted("ferrokvpb.Peer", "Send"), None);
        assert_eq!(counted("grpc.health.v1.Health", "Check"), None);
    }

    #[tokio::test]
    async fn counts_each_call_once() {
        use tower::{Layer as _, Service as _, ServiceExt as _};
        let metrics = Arc::new(Metrics::default());
        let inner = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let mut svc = RpcLayer::new(metrics.clone()).layer(inner);
        for path in [
            "/etcdserverpb.KV/Put",
            "/etcdserverpb.KV/Put",
            "/etcdserverpb.Watch/Watch",
        ] {
            let req = http::Request::builder().uri(path).body(()).unwrap();
            svc.ready().await.unwrap().call(req).await.unwrap();
        }
        let text = metrics.render(&crate::metrics::Gauges {
            has_leader: true,
            is_leader: true,
            term: 1,
            commit_index: 1,
            db_size: 0,
            db_size_in_use: 0,
            revision: 1,
            compact_revision: 0,
        });
        assert!(text.contains(
            "grpc_server_started_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\"} 2"
        ));
        assert!(!text.contains("grpc_method=\"Watch\""));
    }
}
