//! Plain-HTTP endpoints on `--listen-metrics-urls`: `/health`, `/livez`, `/readyz`, `/metrics`.
//! The requests are tiny GETs from probes and scrapers, so a minimal HTTP/1.1 responder (one
//! request per connection) is enough and keeps hyper's server stack out of the member.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
            core.metrics().render(&core.gauges()),
        ),
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

/// The HTTP endpoints on the client port too (etcd serves `/health` and `/metrics` there, and
/// probes commonly use it): a layer in front of the gRPC router that answers these paths and
/// passes everything else through.
#[derive(Clone)]
pub struct ClientPortEndpoints {
    core: Arc<EtcdServer>,
}

impl ClientPortEndpoints {
    pub fn new(core: Arc<EtcdServer>) -> Self {
        ClientPortEndpoints { core }
    }
}

impl<S> tower::Layer<S> for ClientPortEndpoints {
    type Service = WithEndpoints<S>;

    fn layer(&self, inner: S) -> WithEndpoints<S> {
        WithEndpoints {
            inner,
            core: self.core.clone(),
        }
    }
}

#[derive(Clone)]
pub struct WithEndpoints<S> {
    inner: S,
    core: Arc<EtcdServer>,
}

const ENDPOINT_PATHS: [&str; 5] = ["/health", "/livez", "/readyz", "/metrics", "/version"];

type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

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
        let path = req.uri().path();
        if req.method() != ::http::Method::GET || !ENDPOINT_PATHS.contains(&path) {
            return Box::pin(self.inner.call(req));
        }
        let (code, ctype, body) = if path == "/version" {
            let v = ETCD_VERSION;
            (
                200,
                "application/json",
                format!(r#"{{"etcdserver":"{v}","etcdcluster":"{v}"}}"#),
            )
        } else {
            respond(&self.core, path)
        };
        let body = tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        let resp = ::http::Response::builder()
            .status(code)
            .header(::http::header::CONTENT_TYPE, ctype)
            .body(body)
            .unwrap_or_default();
        Box::pin(async move { Ok(resp) })
    }
}
