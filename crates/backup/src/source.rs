//! A snapshot straight from a member's `Maintenance.Snapshot`, as a byte stream plus what the
//! member said about it: what both the CLI and the operator upload.

use std::time::Duration;

use bytes::Bytes;
use ferrokv_proto::etcdserverpb::{
    maintenance_client::MaintenanceClient, SnapshotRequest, StatusRequest,
};
use futures::stream::BoxStream;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{Error, Result};
use crate::SnapshotMeta;

const HASH_LEN: usize = 32;
const BLOCK: u64 = 512;

/// TLS for the client connection to a member: PEM contents, not paths, since the operator
/// holds them in memory from Secrets.
#[derive(Clone, Default)]
pub struct MemberTls {
    /// The CA that signed the member's serving certificate; the system roots without one.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and key, both or neither.
    pub cert_pem: Option<Vec<u8>>,
    pub key_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for MemberTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberTls")
            .field("ca", &self.ca_pem.is_some())
            .field("cert", &self.cert_pem.is_some())
            .finish()
    }
}

/// A snapshot being streamed from a member.
pub struct SnapshotSource {
    /// The endpoint that answered.
    pub endpoint: String,
    pub meta: SnapshotMeta,
    /// The snapshot file's bytes (etcd's framing and SHA-256 trailer included). The framing is
    /// checked as it passes: the stream ends in an error instead of its last chunk when the
    /// trailer does not match, so an upload of a damaged stream is aborted.
    pub stream: BoxStream<'static, Result<Bytes>>,
}

impl std::fmt::Debug for SnapshotSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSource")
            .field("endpoint", &self.endpoint)
            .field("meta", &self.meta)
            .finish()
    }
}

/// `host:port` gets `http://`, or `https://` when TLS is configured; a URL is kept.
fn endpoint_url(endpoint: &str, tls: Option<&MemberTls>) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else if tls.is_some() {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

async fn connect(endpoint: &str, tls: Option<&MemberTls>, timeout: Duration) -> Result<Channel> {
    let url = endpoint_url(endpoint, tls);
    let mut ep = Endpoint::from_shared(url.clone())
        .map_err(|e| Error::Source(format!("bad endpoint {url}: {e}")))?
        .connect_timeout(timeout);
    if url.starts_with("https://") {
        let mut cfg = ClientTlsConfig::new();
        let tls = tls.cloned().unwrap_or_default();
        cfg = match &tls.ca_pem {
            Some(ca) => cfg.ca_certificate(Certificate::from_pem(ca)),
            None => cfg.with_enabled_roots(),
        };
        match (&tls.cert_pem, &tls.key_pem) {
            (Some(c), Some(k)) => cfg = cfg.identity(Identity::from_pem(c, k)),
            (None, None) => {}
            _ => {
                return Err(Error::Source(
                    "a client certificate needs its key, and a key its certificate".into(),
                ))
            }
        }
        ep = ep
            .tls_config(cfg)
            .map_err(|e| Error::Source(format!("TLS setup for {url}: {e}")))?;
    }
    ep.connect()
        .await
        .map_err(|e| Error::Source(format!("connecting to {url}: {e}")))
}

/// Starts `Maintenance.Snapshot` on the first of `endpoints` that answers and returns the
/// stream with the snapshot's cluster id, member id and revision (from the first response's
/// header) and raft index (the member's applied index from `Status` just before the snapshot
/// was taken: the snapshot holds at least that index).
pub async fn snapshot_from_member(
    endpoints: &[String],
    tls: Option<&MemberTls>,
    dial_timeout: Duration,
) -> Result<SnapshotSource> {
    let mut failures = Vec::new();
    for endpoint in endpoints {
        match start(endpoint, tls, dial_timeout).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                tracing::warn!(endpoint, error = %e, "snapshot source failed");
                failures.push(format!("{endpoint}: {e}"));
            }
        }
    }
    if failures.is_empty() {
        return Err(Error::Source("no endpoint given".into()));
    }
    Err(Error::Source(format!(
        "no endpoint could stream a snapshot: {}",
        failures.join("; ")
    )))
}

async fn start(
    endpoint: &str,
    tls: Option<&MemberTls>,
    dial_timeout: Duration,
) -> Result<SnapshotSource> {
    let channel = connect(endpoint, tls, dial_timeout).await?;
    let mut client = MaintenanceClient::new(channel);
    let rpc = |what: &str, e: tonic::Status| Error::Source(format!("{what}: {}", status_text(&e)));
    let status = client
        .status(StatusRequest {})
        .await
        .map_err(|e| rpc("Maintenance.Status", e))?
        .into_inner();
    let mut stream = client
        .snapshot(SnapshotRequest {})
        .await
        .map_err(|e| rpc("Maintenance.Snapshot", e))?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(|e| rpc("Maintenance.Snapshot", e))?
        .ok_or_else(|| Error::Source("Maintenance.Snapshot ended before any data".into()))?;
    let header = first.header.unwrap_or_default();
    let meta = SnapshotMeta {
        cluster_id: header.cluster_id,
        member_id: header.member_id,
        revision: header.revision,
        raft_index: status.raft_applied_index,
    };
    let state = Framing {
        check: HashCheck::default(),
        first: Some(first.blob),
        rest: Some(stream),
        done: false,
    };
    let bytes = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let next = match st.first.take() {
            Some(b) => Ok(Some(b)),
            None => match st.rest.as_mut() {
                Some(s) => s.message().await.map(|m| m.map(|m| m.blob)).map_err(|e| {
                    Error::Source(format!("Maintenance.Snapshot: {}", status_text(&e)))
                }),
                None => Ok(None),
            },
        };
        match next {
            Ok(Some(blob)) => {
                st.check.push(&blob);
                Some((Ok(Bytes::from(blob)), st))
            }
            Ok(None) => {
                st.done = true;
                match std::mem::take(&mut st.check).finish() {
                    Ok(()) => None,
                    Err(reason) => Some((
                        Err(Error::Source(format!(
                            "the snapshot stream is damaged: {reason}"
                        ))),
                        st,
                    )),
                }
            }
            Err(e) => {
                st.done = true;
                Some((Err(e), st))
            }
        }
    });
    Ok(SnapshotSource {
        endpoint: endpoint.to_string(),
        meta,
        stream: bytes.boxed(),
    })
}

struct Framing {
    check: HashCheck,
    first: Option<Vec<u8>>,
    rest: Option<tonic::Streaming<ferrokv_proto::etcdserverpb::SnapshotResponse>>,
    done: bool,
}

/// etcd's snapshot framing: every byte but the last 32 is hashed, the last 32 are that hash,
/// and the body is a multiple of 512 bytes. Only the last 32 bytes seen are kept.
#[derive(Default)]
pub struct HashCheck {
    hasher: Sha256,
    tail: Vec<u8>,
    body_len: u64,
}

impl HashCheck {
    pub fn push(&mut self, chunk: &[u8]) {
        self.tail.extend_from_slice(chunk);
        let ready = self.tail.len().saturating_sub(HASH_LEN);
        self.hasher.update(&self.tail[..ready]);
        self.body_len += ready as u64;
        self.tail.drain(..ready);
    }

    pub fn finish(self) -> std::result::Result<(), String> {
        if self.tail.len() != HASH_LEN {
            return Err(format!(
                "it ended after {} bytes, too short for a SHA-256 trailer",
                self.body_len + self.tail.len() as u64
            ));
        }
        if !self.body_len.is_multiple_of(BLOCK) {
            return Err(format!(
                "body of {} bytes is not a multiple of 512",
                self.body_len
            ));
        }
        if self.hasher.finalize().as_slice() != self.tail.as_slice() {
            return Err("SHA-256 trailer mismatch".to_string());
        }
        Ok(())
    }
}
