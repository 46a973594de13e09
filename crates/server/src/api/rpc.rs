//! The one per-RPC layer of every gRPC router: go-grpc-prometheus' server metrics under
//! etcd's labels (`grpc_server_started_total`, `_handled_total` with the status code,
//! `_msg_received_total`, `_msg_sent_total`, `_handling_seconds` with `--metrics extensive`)
//! and the client byte counters, a tracing span named after the method, and a log line for
//! a call that failed. Handlers therefore carry no metrics or span code, and return errors
//! with `?` (the status comes from `From<Error> for Status`, the crate's one error table).
//!
//! Messages and bytes are counted from the gRPC framing of the request and response bodies
//! (5-byte prefix + message), so streams count every message; a stream's status is read from
//! its trailers, and a body dropped before them (the client went away) counts as `Canceled`,
//! as grpc-go reports it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tonic::body::Body;
use tracing::Instrument as _;

use crate::metrics::{method_index, Metrics};

/// `grpc-status` of `Canceled` and `Unknown`.
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;

#[derive(Clone)]
pub struct RpcLayer {
    metrics: Arc<Metrics>,
    counted: bool,
}

impl RpcLayer {
    /// The client port's layer: counts every call in the metrics.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        RpcLayer {
            metrics,
            counted: true,
        }
    }

    /// The peer port's layer: spans only. etcd's gRPC metrics describe client traffic, and
    /// the calls followers forward here were already counted where the client made them.
    pub fn uncounted(metrics: Arc<Metrics>) -> Self {
        RpcLayer {
            metrics,
            counted: false,
        }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = Rpc<S>;

    fn layer(&self, inner: S) -> Rpc<S> {
        Rpc {
            inner,
            metrics: self.metrics.clone(),
            counted: self.counted,
        }
    }
}

#[derive(Clone)]
pub struct Rpc<S> {
    inner: S,
    metrics: Arc<Metrics>,
    counted: bool,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// Service and method of a gRPC path such as `/etcdserverpb.KV/Range`.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    (!service.is_empty() && !method.is_empty()).then_some((service, method))
}

impl<S> tower::Service<http::Request<Body>> for Rpc<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some((service, method)) = split_path(req.uri().path()) else {
            return Box::pin(self.inner.call(req));
        };
        let span = tracing::info_span!("rpc", service, method);
        let index = if self.counted {
            method_index(req.uri().path())
        } else {
            None
        };
        let Some(index) = index else {
            let call = self.inner.call(req);
            return Box::pin(async move { log_failure(call.await?) }.instrument(span));
        };
        let metrics = self.metrics.clone();
        metrics.grpc.started(index);
        let started = Instant::now();
        let req = req.map(|b| {
            Body::new(Counted {
                inner: b,
                frames: Framing::default(),
                metrics: metrics.clone(),
                method: index,
                outcome: None,
            })
        });
        let call = self.inner.call(req);
        Box::pin(
            async move {
                let resp = log_failure(call.await?)?;
                // A failed call answers trailers-only: the status is in the headers and the
                // body is empty.
                if let Some(code) = resp.headers().get("grpc-status") {
                    metrics
                        .grpc
                        .handled(index, parse_code(code.as_bytes()), started.elapsed());
                    return Ok(resp);
                }
                Ok(resp.map(|b| {
                    Body::new(Counted {
                        inner: b,
                        frames: Framing::default(),
                        metrics,
                        method: index,
                        outcome: Some(Outcome {
                            started,
                            done: false,
                        }),
                    })
                }))
            }
            .instrument(span),
        )
    }
}

/// tonic's refusal of a request above the size limit, as grpc-go words it (etcd's clients
/// and tests match `ResourceExhausted grpc: received message larger than max (X vs. Y)`);
/// tonic says `OutOfRange Error, decoded message length too large: found X bytes, the limit
/// is: Y bytes`.
fn as_grpc_go_size_error(resp: &mut http::Response<Body>) {
    let h = resp.headers();
    if h.get("grpc-status").map(|c| c.as_bytes()) != Some(b"11") {
        return;
    }
    let Some(msg) = h.get("grpc-message").and_then(|v| v.to_str().ok()) else {
        return;
    };
    let msg = msg.replace("%20", " ").replace("%3A", ":");
    let Some(rest) = msg.strip_prefix("Error, decoded message length too large: found ") else {
        return;
    };
    let Some((found, limit)) = rest
        .strip_suffix(" bytes")
        .and_then(|r| r.split_once(" bytes, the limit is: "))
    else {
        return;
    };
    let go = format!("grpc: received message larger than max ({found} vs. {limit})");
    if let Ok(v) = http::HeaderValue::from_str(&go) {
        let h = resp.headers_mut();
        h.insert("grpc-status", http::HeaderValue::from_static("8"));
        h.insert("grpc-message", v);
    }
}

fn log_failure<E>(mut resp: http::Response<Body>) -> Result<http::Response<Body>, E> {
    as_grpc_go_size_error(&mut resp);
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

fn parse_code(v: &[u8]) -> usize {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|c| *c < crate::metrics::CODES.len())
        .unwrap_or(UNKNOWN)
}

/// Splits a body's bytes into gRPC messages: a 1-byte flag and a 4-byte big-endian length
/// before each message, chunks cut anywhere.
#[derive(Default)]
struct Framing {
    prefix: [u8; 5],
    prefix_len: usize,
    remaining: u64,
}

impl Framing {
    /// Feeds one chunk; returns (messages begun, message bytes).
    fn feed(&mut self, mut buf: &[u8]) -> (u64, u64) {
        let (mut messages, mut payload) = (0, 0);
        while !buf.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(buf.len() as u64);
                self.remaining -= take;
                payload += take;
                buf = &buf[take as usize..];
                continue;
            }
            if let Some(slot) = self.prefix.get_mut(self.prefix_len) {
                *slot = buf[0];
            }
            self.prefix_len += 1;
            buf = &buf[1..];
            if self.prefix_len == 5 {
                messages += 1;
                self.prefix_len = 0;
                let [_, a, b, c, d] = self.prefix;
                self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
            }
        }
        (messages, payload)
    }
}

/// Set on response bodies: the call is handled when the trailers (or the end) come by.
struct Outcome {
    started: Instant,
    done: bool,
}

/// A request or response body that counts the messages and bytes passing through.
struct Counted<B> {
    inner: B,
    frames: Framing,
    metrics: Arc<Metrics>,
    method: usize,
    /// None on the request side.
    outcome: Option<Outcome>,
}

impl<B> Counted<B> {
    fn finish(&mut self, code: usize) {
        if let Some(o) = self.outcome.as_mut() {
            if !o.done {
                o.done = true;
                self.metrics
                    .grpc
                    .handled(self.method, code, o.started.elapsed());
            }
        }
    }
}

impl<B> http_body::Body for Counted<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let (messages, bytes) = this.frames.feed(data);
                    let grpc = &this.metrics.grpc;
                    if this.outcome.is_some() {
                        grpc.sent(this.method, messages);
                        this.metrics.client_bytes(0, bytes);
                    } else {
                        grpc.received(this.method, messages);
                        this.metrics.client_bytes(bytes, 0);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .map_or(UNKNOWN, |v| parse_code(v.as_bytes()));
                    this.finish(code);
                }
            }
            Poll::Ready(None) => this.finish(UNKNOWN),
            Poll::Ready(Some(Err(_))) => this.finish(UNKNOWN),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        // Dropped before its trailers: the client reset the stream.
        self.finish(CANCELED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            split_path("/etcdserverpb.KV/Range"),
            Some(("etcdserverpb.KV", "Range"))
        );
        assert_eq!(split_path("/health"), None);
        assert_eq!(split_path("/"), None);
    }

    #[test]
    fn framing_counts_messages_cut_anywhere() {
        let mut wire = Vec::new();
        for len in [3u32, 0, 10] {
            wire.push(0);
            wire.extend_from_slice(&len.to_be_bytes());
            wire.extend(std::iter::repeat_n(7u8, len as usize));
        }
        for cut in 0..wire.len() {
            let mut f = Framing::default();
            let (m1, b1) = f.feed(&wire[..cut]);
            let (m2, b2) = f.feed(&wire[cut..]);
            assert_eq!((m1 + m2, b1 + b2), (3, 13), "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn counts_started_handled_and_messages() {
        use tower::{Layer as _, Service as _, ServiceExt as _};
        let metrics = Arc::new(Metrics::default());
        let inner = tower::service_fn(|req: http::Request<Body>| async move {
            // Drain the request as tonic would, then answer like a unary handler or a
            // trailers-only error.
            let fail = req.uri().path().ends_with("Range");
            let _ = http_body_util::BodyExt::collect(req.into_body()).await;
            let resp = if fail {
                http::Response::builder()
                    .header("grpc-status", "5")
                    .body(Body::empty())
            } else {
                let msg = vec![0u8, 0, 0, 0, 2, 1, 2];
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let frames = futures::stream::iter(vec![
                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(msg))),
                    Ok(Frame::trailers(trailers)),
                ]);
                http::Response::builder().body(Body::new(http_body_util::StreamBody::new(frames)))
            };
            Ok::<_, std::convert::Infallible>(resp.unwrap())
        });
        let mut svc = RpcLayer::new(metrics.clone()).layer(inner);
        for path in [
            "/etcdserverpb.KV/Put",
            "/etcdserverpb.KV/Put",
            "/etcdserverpb.KV/Range",
            "/ferrokvpb.Peer/Send",
        ] {
            let body = Body::new(http_body_util::Full::new(Bytes::from_static(&[
                0, 0, 0, 0, 1, 9,
            ])));
            let req = http::Request::builder().uri(path).body(body).unwrap();
            let resp = svc.ready().await.unwrap().call(req).await.unwrap();
            let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        }
        let put = method_index("/etcdserverpb.KV/Put").unwrap();
        let range = method_index("/etcdserverpb.KV/Range").unwrap();
        assert_eq!(metrics.grpc.handled_count(put, 0), 2);
        assert_eq!(metrics.grpc.handled_count(range, 5), 1);
        let text = metrics.render(&crate::metrics::Gauges::default());
        for want in [
            "grpc_server_started_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2\n",
            "grpc_server_msg_received_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2\n",
            "grpc_server_msg_sent_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2\n",
            "grpc_server_handled_total{grpc_code=\"NotFound\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n",
            "etcd_network_client_grpc_received_bytes_total 3\n",
            "etcd_network_client_grpc_sent_bytes_total 4\n",
        ] {
            assert!(text.contains(want), "missing {want}");
        }
        assert!(!text.contains("ferrokvpb"));
    }
}
