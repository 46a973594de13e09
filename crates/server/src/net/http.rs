//! Plain-HTTP endpoints on `--listen-metrics-urls`: `/health`, `/livez`, `/readyz`, `/metrics`;
//! and the non-gRPC side of the client port (the endpoints, `/version`, the JSON gateway).
//! The requests are tiny GETs from probes and scrapers, so a minimal HTTP/1.1 responder (one
//! request per connection) is enough and keeps hyper's server stack out of the member.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::gateway::{gateway_path, Gateway};
use crate::etcdserver::{EtcdServer, ETCD_VERSION};

/// (status code, content type, body) for a request path.
pub fn respond(core: &EtcdServer, path: &str) -> (u16, &'static str, String) {
    let st = core.raft_status();
    let has_leader = st.leader_id != 0;
    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/health" => {
            let alarms = core.alarm_list();
            core.metrics()
                .health_checked(has_leader && alarms.is_empty());
            if !has_leader {
                (
                    503,
                    "application/json",
                    r#"{"health":"false","reason":"RAFT NO LEADER"}"#.into(),
                )
            } else if !alarms.is_empty() {
                (
                    503,
                    "application/json",
                    r#"{"health":"false","reason":"ALARM ACTIVATED"}"#.into(),
                )
            } else {
                (
                    200,
                    "application/json",
                    r#"{"health":"true","reason":""}"#.into(),
                )
            }
        }
        "/livez" => (200, "text/plain", "ok\n".into()),
        "/readyz" => {
            if has_leader {
                (200, "text/plain", "ok\n".into())
            } else {
                (
                    503,
                    "text/plain",
                    "[-]raft leader: no leader\nreadyz check failed\n".into(),
                )
            }
        }
        "/metrics" => (200, "text/plain; version=0.0.4", {
            let mut body = core.metrics().render(&core.gauges());
            crate::metrics::stages::render(&mut body);
            body
        }),
        _ => (404, "text/plain", "404 page not found\n".into()),
    }
}

pub async fn serve(listener: TcpListener, core: Arc<EtcdServer>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = crate::stop::until_stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    let core = core.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(conn, &core).await {
                            tracing::debug!(error = %e, "http request failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn handle(mut conn: TcpStream, core: &EtcdServer) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Read the request head only (GETs carry no body); bounded in size and time.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    if read.is_err() {
        return Ok(());
    }
    read.unwrap_or(Ok(()))?;
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/");
    let (code, ctype, body) = if method == "GET" || method == "HEAD" {
        respond(core, path)
    } else {
        (405, "text/plain", "method not allowed\n".to_string())
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        resp.push_str(&body);
    }
    conn.write_all(resp.as_bytes()).await?;
    conn.shutdown().await
}

/// Everything on the client port that is not gRPC, routed as etcd's HTTP mux routes it: the
/// endpoints (`/health`, `/metrics`, `/version`, ...), the JSON gateway under `/v3/`, and
/// "404 page not found" for anything else (so `/v2/keys/...` gets a plain 404, as on
/// etcd 3.6, rather than an HTTP 200 carrying a gRPC error). A layer in front of the gRPC
/// router.
#[derive(Clone)]
pub struct ClientPortEndpoints {
    core: Arc<EtcdServer>,
    gateway: Option<Gateway>,
}

impl ClientPortEndpoints {
    pub fn new(core: Arc<EtcdServer>, gateway: Option<Gateway>) -> Self {
        ClientPortEndpoints { core, gateway }
    }
}

impl<S> tower::Layer<S> for ClientPortEndpoints {
    type Service = WithEndpoints<S>;

    fn layer(&self, inner: S) -> WithEndpoints<S> {
        WithEndpoints {
            inner,
            core: self.core.clone(),
            gateway: self.gateway.clone(),
        }
    }
}

#[derive(Clone)]
pub struct WithEndpoints<S> {
    inner: S,
    core: Arc<EtcdServer>,
    gateway: Option<Gateway>,
}

const ENDPOINT_PATHS: [&str; 5] = ["/health", "/livez", "/readyz", "/metrics", "/version"];

type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

/// The request goes to the gRPC server. etcd splits its client port the same way
/// (`grpcHandlerFunc`): HTTP/2 with a gRPC content type; HTTP/1 never is.
fn is_grpc<B>(req: &::http::Request<B>) -> bool {
    req.version() == ::http::Version::HTTP_2
        && req
            .headers()
            .get(::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.contains("application/grpc"))
}

/// The `/version` body: etcd 3.6 reports the server, cluster and storage versions.
pub fn version_json() -> String {
    let v = ETCD_VERSION;
    format!(r#"{{"etcdserver":"{v}","etcdcluster":"{v}","storage":"{v}"}}"#)
}

fn text(code: u16, ctype: &str, body: String) -> ::http::Response<tonic::body::Body> {
    ::http::Response::builder()
        .status(code)
        .header(::http::header::CONTENT_TYPE, ctype)
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(body),
        )))
        .unwrap_or_default()
}

/// A plain-text error as Go's `http.Error` writes it.
fn go_error(code: u16, msg: &str) -> ::http::Response<tonic::body::Body> {
    let mut resp = text(code, "text/plain; charset=utf-8", format!("{msg}\n"));
    resp.headers_mut().insert(
        "x-content-type-options",
        ::http::HeaderValue::from_static("nosniff"),
    );
    resp
}

/// etcd wraps its whole client-port HTTP mux in a permissive CORS handler; clients and
/// browsers see these headers on every non-gRPC answer.
fn with_cors(mut resp: ::http::Response<tonic::body::Body>) -> ::http::Response<tonic::body::Body> {
    let h = resp.headers_mut();
    h.insert(
        "access-control-allow-headers",
        ::http::HeaderValue::from_static("accept, content-type, authorization"),
    );
    h.insert(
        "access-control-allow-methods",
        ::http::HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert(
        "access-control-allow-origin",
        ::http::HeaderValue::from_static("*"),
    );
    resp
}

impl<S> WithEndpoints<S> {
    fn http(
        &self,
        req: ::http::Request<tonic::body::Body>,
    ) -> futures::future::BoxFuture<'static, ::http::Response<tonic::body::Body>> {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        // CORS preflight: etcd answers every OPTIONS with an empty 200.
        if method == ::http::Method::OPTIONS {
            let mut resp = text(200, "", String::new());
            resp.headers_mut().remove(::http::header::CONTENT_TYPE);
            return Box::pin(async { resp });
        }
        if let (Some(gw), Some(_)) = (&self.gateway, gateway_path(&path)) {
            return gw.handle(req);
        }
        let resp = if path == "/v3" || path == "/v3beta" {
            // Go's ServeMux redirects a subtree root without its slash.
            let mut resp = text(
                307,
                "text/html; charset=utf-8",
                format!("<a href=\"{path}/\">Temporary Redirect</a>.\n\n"),
            );
            if let Ok(loc) = ::http::HeaderValue::from_str(&format!("{path}/")) {
                resp.headers_mut().insert(::http::header::LOCATION, loc);
            }
            resp
        } else if !ENDPOINT_PATHS.contains(&path.as_str()) {
            go_error(404, "404 page not found")
        } else if path == "/metrics" {
            // Prometheus' handler takes any method.
            let (code, ctype, body) = respond(&self.core, &path);
            text(code, ctype, body)
        } else if method != ::http::Method::GET {
            let mut resp = go_error(405, "Method Not Allowed");
            resp.headers_mut().insert(
                ::http::header::ALLOW,
                ::http::HeaderValue::from_static("GET"),
            );
            resp
        } else if path == "/version" {
            text(200, "application/json", version_json())
        } else {
            let (code, ctype, body) = respond(&self.core, &path);
            text(code, ctype, body)
        };
        Box::pin(async move { resp })
    }
}

impl<S> tower::Service<::http::Request<tonic::body::Body>> for WithEndpoints<S>
where
    S: tower::Service<
            ::http::Request<tonic::body::Body>,
            Response = ::http::Response<tonic::body::Body>,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = ::http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ::http::Request<tonic::body::Body>) -> Self::Future {
        if is_grpc(&req) {
            return Box::pin(self.inner.call(req));
        }
        let answer = self.http(req);
        Box::pin(async move { Ok(with_cors(answer.await)) })
    }
}
