//! etcd's peer HashKV exchange: `GET /members/hashkv` on the peer port, a JSON
//! `HashKVRequest` in the body and a JSON `HashKVResponse` back (Go `encoding/json` of the
//! etcd types: snake_case names, zero fields left out), with etcd's status codes and error
//! texts, so the corruption checks of etcd and ferrokv members read each other's answers.
//! The serving side is a tower layer in front of the peer port's gRPC router; the asking side
//! sends the request over the same connection type the raft transport uses.

use std::sync::Arc;
use std::time::Duration;

use ferrokv_proto::etcdserverpb::{HashKvResponse, ResponseHeader};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// etcd's `PeerHashKVPath`.
pub const PEER_HASHKV_PATH: &str = "/members/hashkv";
/// etcd's `rafthttp.ErrClusterIDMismatch` text.
const CLUSTER_ID_MISMATCH: &str = "cluster ID mismatch";
const COMPACTED: &str = "mvcc: required revision has been compacted";
const FUTURE_REV: &str = "mvcc: required revision is a future revision";

/// What answers HashKV for peers (the server core). Called on a blocking thread.
pub trait PeerHashKv: Send + Sync + 'static {
    fn cluster_id(&self) -> u64;
    /// etcd's `HashByRev`: Err carries the storage error text.
    fn peer_hash_kv(&self, revision: i64) -> std::result::Result<HashKvResponse, String>;
}

/// Why a peer gave no hash (etcd's `rpctypes` errors the corruption checker tells apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerHashError {
    Compacted,
    FutureRev,
    ClusterIdMismatch,
    Other(String),
}

impl std::fmt::Display for PeerHashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerHashError::Compacted => {
                f.write_str("etcdserver: mvcc: required revision has been compacted")
            }
            PeerHashError::FutureRev => {
                f.write_str("etcdserver: mvcc: required revision is a future revision")
            }
            PeerHashError::ClusterIdMismatch => f.write_str("etcdserver: cluster ID mismatch"),
            PeerHashError::Other(m) => f.write_str(m),
        }
    }
}

/// The JSON body etcd's `json.Marshal(&pb.HashKVResponse{...})` writes.
pub fn response_json(r: &HashKvResponse) -> String {
    // Written by hand: Go keeps the struct's field order, which a JSON map would not.
    fn field(out: &mut Vec<String>, name: &str, v: impl std::fmt::Display, zero: bool) {
        if !zero {
            out.push(format!("\"{name}\":{v}"));
        }
    }
    let mut top = Vec::new();
    if let Some(h) = &r.header {
        let mut hf = Vec::new();
        field(&mut hf, "cluster_id", h.cluster_id, h.cluster_id == 0);
        field(&mut hf, "member_id", h.member_id, h.member_id == 0);
        field(&mut hf, "revision", h.revision, h.revision == 0);
        field(&mut hf, "raft_term", h.raft_term, h.raft_term == 0);
        top.push(format!("\"header\":{{{}}}", hf.join(",")));
    }
    field(&mut top, "hash", r.hash, r.hash == 0);
    field(
        &mut top,
        "compact_revision",
        r.compact_revision,
        r.compact_revision == 0,
    );
    field(
        &mut top,
        "hash_revision",
        r.hash_revision,
        r.hash_revision == 0,
    );
    format!("{{{}}}", top.join(","))
}

/// Reads etcd's JSON `HashKVResponse`.
pub fn parse_response(b: &[u8]) -> std::result::Result<HashKvResponse, String> {
    let v: serde_json::Value = serde_json::from_slice(b).map_err(|e| e.to_string())?;
    let i = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_i64()).unwrap_or(0);
    let u = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    Ok(HashKvResponse {
        header: v.get("header").map(|h| ResponseHeader {
            cluster_id: u(h, "cluster_id"),
            member_id: u(h, "member_id"),
            revision: i(h, "revision"),
            raft_term: u(h, "raft_term"),
        }),
        hash: u32::try_from(u(&v, "hash")).map_err(|e| e.to_string())?,
        compact_revision: i(&v, "compact_revision"),
        hash_revision: i(&v, "hash_revision"),
    })
}

type Resp = http::Response<tonic::body::Body>;

fn text(code: u16, msg: &str) -> Resp {
    // Go's http.Error: text/plain, nosniff, the message and a newline.
    http::Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header("x-content-type-options", "nosniff")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(format!("{msg}\n")),
        )))
        .unwrap_or_default()
}

/// etcd's `hashKVHandler.ServeHTTP`.
async fn serve(source: Arc<dyn PeerHashKv>, req: http::Request<tonic::body::Body>) -> Resp {
    if req.method() != http::Method::GET {
        let mut r = text(405, "Method Not Allowed");
        r.headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
        return r;
    }
    let cid = format!("{:x}", source.cluster_id());
    if let Some(g) = req.headers().get("x-etcd-cluster-id") {
        if !g.is_empty() && g.as_bytes() != cid.as_bytes() {
            return text(412, CLUSTER_ID_MISMATCH);
        }
    }
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return text(400, "error reading body");
    };
    let revision = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) if v.is_object() => match v.get("revision") {
            None | Some(serde_json::Value::Null) => 0,
            Some(r) => match r.as_i64() {
                Some(r) => r,
                None => return text(400, "error unmarshalling request"),
            },
        },
        _ => return text(400, "error unmarshalling request"),
    };
    let answer = tokio::task::spawn_blocking(move || source.peer_hash_kv(revision)).await;
    let resp = match answer {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(requested_revision = revision, error = %e, "failed to get hashKV");
            return text(400, &e);
        }
        Err(e) => return text(500, &e.to_string()),
    };
    http::Response::builder()
        .status(200)
        .header("x-etcd-cluster-id", cid)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(response_json(&resp)),
        )))
        .unwrap_or_default()
}

/// The layer serving [`PEER_HASHKV_PATH`] in front of the peer port's gRPC services.
#[derive(Clone)]
pub struct HashKvEndpoint {
    source: Arc<dyn PeerHashKv>,
}

impl HashKvEndpoint {
    pub fn new(source: Arc<dyn PeerHashKv>) -> Self {
        HashKvEndpoint { source }
    }
}

impl<S> tower::Layer<S> for HashKvEndpoint {
    type Service = WithHashKv<S>;
    fn layer(&self, inner: S) -> WithHashKv<S> {
        WithHashKv {
            inner,
            source: self.source.clone(),
        }
    }
}

#[derive(Clone)]
pub struct WithHashKv<S> {
    inner: S,
    source: Arc<dyn PeerHashKv>,
}

type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for WithHashKv<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = Resp> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Resp;
    type Error = S::Error;
    type Future = BoxFuture<Resp, S::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != PEER_HASHKV_PATH {
            return Box::pin(self.inner.call(req));
        }
        let source = self.source.clone();
        Box::pin(async move { Ok(serve(source, req).await) })
    }
}

/// etcd's `HashByRev` client: asks the member at peer URL `url` for its HashKV at `revision`.
pub async fn fetch_hash_kv(
    url: &str,
    tls: Option<&super::PeerClientTls>,
    cluster_id: u64,
    revision: i64,
    timeout: Duration,
) -> std::result::Result<HashKvResponse, PeerHashError> {
    let ask = async {
        let channel = super::connect_peer(url, tls)
            .await
            .map_err(|e| PeerHashError::Other(format!("cannot connect to {url}: {e}")))?;
        let body = serde_json::json!({ "revision": revision }).to_string();
        let uri = format!("{}{PEER_HASHKV_PATH}", url.trim_end_matches('/'));
        let req = http::Request::builder()
            .method(http::Method::GET)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-etcd-cluster-id", format!("{cluster_id:x}"))
            .body(tonic::body::Body::new(http_body_util::Full::new(
                bytes::Bytes::from(body),
            )))
            .map_err(|e| PeerHashError::Other(e.to_string()))?;
        let resp = channel
            .oneshot(req)
            .await
            .map_err(|e| PeerHashError::Other(format!("hashkv request to {url}: {e}")))?;
        let status = resp.status().as_u16();
        let b = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| PeerHashError::Other(e.to_string()))?
            .to_bytes();
        let text = String::from_utf8_lossy(&b);
        match status {
            200 => parse_response(&b).map_err(PeerHashError::Other),
            400 if text.contains(COMPACTED) => Err(PeerHashError::Compacted),
            400 if text.contains(FUTURE_REV) => Err(PeerHashError::FutureRev),
            412 if text.contains(CLUSTER_ID_MISMATCH) => Err(PeerHashError::ClusterIdMismatch),
            _ => Err(PeerHashError::Other(format!(
                "unknown error: {}",
                text.trim_end()
            ))),
        }
    };
    tokio::time::timeout(timeout, ask)
        .await
        .unwrap_or_else(|_| {
            Err(PeerHashError::Other(format!(
                "hashkv request to {url} timed out"
            )))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_what_go_writes() {
        let r = HashKvResponse {
            header: Some(ResponseHeader {
                revision: 7,
                ..Default::default()
            }),
            hash: 3_000_000_000,
            compact_revision: -1,
            hash_revision: 7,
        };
        let j = response_json(&r);
        assert_eq!(
            j,
            r#"{"header":{"revision":7},"hash":3000000000,"compact_revision":-1,"hash_revision":7}"#
        );
        assert_eq!(parse_response(j.as_bytes()).unwrap(), r);
    }
}
