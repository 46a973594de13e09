//! Bootstrap step "who else": on the first boot of a member started with discovery flags,
//! find the members of the new cluster through a discovery service, as etcd 3.6 does, and
//! turn them into the `--initial-cluster` the later steps use.
//!
//! - v3 (`--discovery-endpoints`, `--discovery-token`): an etcd cluster holding
//!   `/_etcd/registry/<token>/_config/size` and one key per member,
//!   `/_etcd/registry/<token>/members/<member id in hex>` = `name=peer-url,...`.
//! - v2 (`--discovery URL`, deprecated in etcd 3.6 but still served): the same registry through
//!   a v2 keys-API style HTTP service: `<url>/_config/size`, `<url>/<member id in hex>`.
//! - DNS SRV (`--discovery-srv DOMAIN`, `--discovery-srv-name`): the initial cluster from
//!   `_etcd-server[-ssl][-NAME]._tcp.DOMAIN` (`super::srv`); no registry, no waiting.
//!
//! Either way the member computes its id from its advertised peer URLs and the discovery
//! token (v3) or URL (v2), exactly as etcd does, so etcd and ferrokv members can share one
//! token; registers; waits until `size` members registered; and takes the first `size`
//! registrations in creation order. A member arriving after `size` others gets etcd's
//! `discovery: cluster is full`. Errors read as etcd's: `failed to join discovery cluster
//! (discovery: size key not found)`.

use std::time::Duration;

use ferrokv_proto::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, watch_client::WatchClient,
    watch_request::RequestUnion, AuthenticateRequest, PutRequest, RangeRequest, WatchCreateRequest,
    WatchRequest,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::apply::membership;
use crate::config::{Config, Discovery, V3Discovery};
use crate::error::{Error, Result};
use crate::ids;

const REGISTRY_PREFIX: &str = "/_etcd/registry";
/// etcd's backoff between retries is 2^n seconds, n capped at this (so at most 256 s).
const MAX_EXPONENTIAL_RETRIES: u32 = 8;

/// etcd's discovery errors, with etcd's texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DiscoveryError {
    InvalidUrl,
    BadSizeKey,
    SizeNotFound,
    FullCluster,
    DuplicateId,
    DuplicateName,
    BadDiscoveryEndpoint,
    /// Anything else, with its own text (a failed dial with authentication, a v2 error body).
    Other(String),
}

impl std::fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            // v3's text; v2 says "discovery: invalid URL".
            DiscoveryError::InvalidUrl => "discovery: invalid peer URL",
            DiscoveryError::BadSizeKey => "discovery: size key is bad",
            DiscoveryError::SizeNotFound => "discovery: size key not found",
            DiscoveryError::FullCluster => "discovery: cluster is full",
            DiscoveryError::DuplicateId => "discovery: found duplicate id",
            DiscoveryError::DuplicateName => "discovery: found duplicate name",
            DiscoveryError::BadDiscoveryEndpoint => "discovery: bad discovery endpoint",
            DiscoveryError::Other(s) => s,
        };
        f.write_str(text)
    }
}

/// Runs discovery when `cfg` asks for it and this is the member's first boot; on success
/// `cfg.initial_cluster` is the discovered cluster and `cfg.initial_cluster_token` the token
/// etcd derives member ids from (the discovery token, or the v2 discovery URL).
pub(super) async fn discover(cfg: &mut Config, has_wal: bool) -> Result<()> {
    let Some(discovery) = cfg.discovery.clone() else {
        return Ok(());
    };
    if has_wal && matches!(discovery, Discovery::Srv { .. }) {
        // etcd skips the SRV lookup for an initialized member without a word (its "discovery
        // token is ignored" warning is for the v2/v3 services only).
        return Ok(());
    }
    if has_wal {
        tracing::warn!(
            wal_dir = %cfg.layout().wal().display(),
            "discovery token is ignored since cluster already initialized; valid logs are found"
        );
        return Ok(());
    }
    if let Discovery::Srv {
        domain,
        service_name,
    } = &discovery
    {
        return discover_srv(cfg, domain, service_name.as_deref()).await;
    }
    let own_urls: Vec<String> = cfg
        .initial_advertise_peer_urls
        .iter()
        .map(membership::url_string)
        .collect();
    // etcd's URLsMap.String() of {name: advertised peer URLs}: sorted `name=url` pairs.
    let mut pairs: Vec<String> = own_urls
        .iter()
        .map(|u| format!("{}={u}", cfg.name))
        .collect();
    pairs.sort();
    let contents = pairs.join(",");
    let (token, result) = match &discovery {
        Discovery::V3(d) => {
            tracing::info!("Bootstrapping cluster using v3 discovery.");
            let id = ids::member_id(&own_urls, &d.token);
            (d.token.clone(), join_v3(d, id, &contents).await)
        }
        Discovery::Srv { .. } => return Ok(()),
        Discovery::V2 { url, proxy } => {
            tracing::warn!("V2 discovery is deprecated!");
            let id = ids::member_id(&own_urls, url);
            (
                url.clone(),
                join_v2(url, proxy.as_deref(), id, &contents).await,
            )
        }
    };
    let cluster = match result {
        Ok(c) => c,
        Err(e) => {
            log_failure(&cfg.name, &discovery, &e);
            return Err(Error::Config(format!(
                "failed to join discovery cluster ({e})"
            )));
        }
    };
    let parsed = parse_cluster(&cluster)
        .map_err(|e| Error::Config(format!("discovered cluster {cluster:?}: {e}")))?;
    let mut seen = std::collections::HashSet::new();
    if parsed
        .iter()
        .flat_map(|(_, u)| u)
        .any(|u| !seen.insert(u.clone()))
    {
        return Err(Error::Config(format!(
            "discovery cluster {cluster} has duplicate url"
        )));
    }
    tracing::info!(cluster = %cluster, "discovery joined cluster successfully");
    cfg.initial_cluster = parsed;
    cfg.initial_cluster_token = token;
    Ok(())
}

/// etcd's `PeerURLsMapAndToken` for `--discovery-srv`: the initial cluster from the SRV
/// records; the cluster token stays `--initial-cluster-token`. Errors are etcd's, wrapped as
/// `embed.StartEtcd` wraps them (`error setting up initial cluster: ...`) and logged under
/// etcdmain's "discovery failed".
async fn discover_srv(cfg: &mut Config, domain: &str, service_name: Option<&str>) -> Result<()> {
    let fail = |e: String| {
        let e = format!("error setting up initial cluster: {e}");
        tracing::error!(error = %e, "discovery failed");
        Err(Error::Config(e))
    };
    let (found, err) = super::srv::dns_cluster_names(
        &cfg.name,
        domain,
        service_name,
        &cfg.initial_advertise_peer_urls,
    )
    .await;
    if let Some(e) = &err {
        tracing::warn!(error = %e, "failed to resolve during SRV discovery");
    }
    if found.is_empty() {
        // Go returns the joined lookup errors; with none (every record skipped without an
        // error) etcd would go on with an empty cluster and fail later, so say what happened.
        return fail(err.unwrap_or_else(|| format!("no SRV records found for {domain}")));
    }
    for node in &found {
        tracing::info!(node = %node, "got bootstrap from DNS for etcd-server");
    }
    let joined = found.join(",");
    let parsed = match parse_cluster(&joined) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    if !parsed.iter().any(|(n, _)| *n == cfg.name) {
        return fail(format!(
            "cannot find local etcd member {:?} in SRV records",
            cfg.name
        ));
    }
    tracing::info!(cluster = %joined, "initial cluster from DNS SRV discovery");
    cfg.initial_cluster = parsed;
    Ok(())
}

/// What etcdmain logs before exiting on a discovery error.
fn log_failure(name: &str, discovery: &Discovery, e: &DiscoveryError) {
    let token = match discovery {
        Discovery::V3(d) => d.token.as_str(),
        Discovery::V2 { url, .. } => url.as_str(),
        Discovery::Srv { domain, .. } => domain.as_str(),
    };
    tracing::error!(error = %e, discovery_token = token, "discovery failed to join cluster");
    match e {
        DiscoveryError::DuplicateId => {
            tracing::warn!(name, discovery_token = token, error = %e, "member has been registered with discovery service");
            tracing::warn!("but could not find valid cluster configuration");
            tracing::warn!("check data dir if previous bootstrap succeeded");
            tracing::warn!("or use a new discovery token if previous bootstrap failed");
        }
        DiscoveryError::DuplicateName => {
            tracing::warn!(discovery_token = token, error = %e, "member with duplicated name has already been registered");
            tracing::warn!("cURL the discovery token URL for details");
            tracing::warn!(
                "do not reuse discovery token; generate a new one to bootstrap a cluster"
            );
        }
        _ => {
            // etcdmain logs the wrapped error here.
            let error = format!("failed to join discovery cluster ({e})");
            tracing::warn!(
                discovery_token = token,
                error,
                "failed to bootstrap; discovery token was already used"
            );
            tracing::warn!(
                "do not reuse discovery token; generate a new one to bootstrap a cluster"
            );
        }
    }
}

/// `n1=http://a:2380,n2=http://b:2380` into (name, URLs) in first-seen order; a name may
/// repeat to carry several URLs (etcd's `types.NewURLsMap`).
fn parse_cluster(s: &str) -> std::result::Result<Vec<(String, Vec<url::Url>)>, String> {
    let mut out: Vec<(String, Vec<url::Url>)> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, u) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not name=url"))?;
        let url = url::Url::parse(u).map_err(|e| format!("{u:?}: {e}"))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!("URL scheme must be http or https: {u}"));
        }
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url),
            None => out.push((name.to_string(), vec![url])),
        }
    }
    Ok(out)
}

/// The registrations seen so far, in creation order (etcd's `clusterInfo`).
#[derive(Default, Debug)]
struct Registry {
    /// (registry key, `name=url,...`, creation revision or index)
    members: Vec<(String, String, i64)>,
}

impl Registry {
    /// etcd's `clusterInfo.add`: keeps the list sorted on creation order; refuses what is
    /// not `name=url`, outside `prefix`, or already known.
    fn add(
        &mut self,
        prefix: &str,
        key: &str,
        value: &str,
        created: i64,
    ) -> std::result::Result<(), &'static str> {
        let (key, value) = (key.trim(), value.trim());
        if !key.starts_with(prefix) {
            return Err("invalid peer registry key");
        }
        if !value.contains('=') {
            return Err("invalid peer info returned from discovery service");
        }
        if self.members.iter().any(|(k, _, _)| k == key) {
            return Err("found duplicate peer from discovery service");
        }
        self.members
            .push((key.to_string(), value.to_string(), created));
        self.members.sort_by_key(|(_, _, c)| *c);
        Ok(())
    }

    fn len(&self) -> usize {
        self.members.len()
    }

    /// etcd's "find self position": the cluster is full for us when `size` members other than
    /// us registered before us (or before we registered at all).
    fn is_full_for(&self, self_key: &str, size: usize) -> bool {
        for (idx, (k, _, _)) in self.members.iter().enumerate() {
            if k == self_key {
                return false;
            }
            if idx + 1 >= size {
                return true;
            }
        }
        false
    }

    /// The first `size` registrations joined with ',' (etcd's `getInitClusterStr`).
    fn initial_cluster(&self, size: usize) -> std::result::Result<String, DiscoveryError> {
        let s = self
            .members
            .iter()
            .take(size)
            .map(|(_, v, _)| v.as_str())
            .collect::<Vec<_>>()
            .join(",");
        parse_cluster(&s).map_err(|_| DiscoveryError::InvalidUrl)?;
        Ok(s)
    }
}

/// Sleeps etcd's backoff for the `retries`-th retry in a row.
async fn backoff(retries: &mut u32, step: &str) {
    *retries += 1;
    let secs = 1u64 << (*retries).min(MAX_EXPONENTIAL_RETRIES);
    tracing::warn!(
        reason = step,
        backoff = format!("{secs}s"),
        "retry connecting to discovery service"
    );
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

// ---------------------------------------------------------------------------------------
// v3

/// The discovery cluster's gRPC client, with the auth token when `--discovery-user` is set.
struct V3Client {
    channel: Channel,
    /// The current auth token; renewed when the discovery cluster says it expired.
    token: parking_lot::Mutex<Option<String>>,
    credentials: Option<AuthenticateRequest>,
    dial_timeout: Duration,
    request_timeout: Duration,
}

impl V3Client {
    async fn connect(d: &V3Discovery) -> std::result::Result<V3Client, DiscoveryError> {
        let tls = v3_tls(d).map_err(DiscoveryError::Other)?;
        let mut endpoints = Vec::new();
        for ep in &d.endpoints {
            let url = if ep.contains("://") {
                ep.clone()
            } else if tls.is_some() {
                format!("https://{ep}")
            } else {
                format!("http://{ep}")
            };
            let mut e = Endpoint::from_shared(url.clone())
                .map_err(|e| DiscoveryError::Other(format!("endpoint {ep:?}: {e}")))?
                .connect_timeout(d.dial_timeout)
                .http2_keep_alive_interval(d.keepalive_time)
                .keep_alive_timeout(d.keepalive_timeout)
                .keep_alive_while_idle(true)
                .tcp_nodelay(true);
            // etcd's client: `http://` is always plain, `https://` always TLS (with the
            // system roots when no TLS flag is given), a bare host:port TLS when configured.
            if url.starts_with("https://") {
                let t = match &tls {
                    Some(t) => t.clone(),
                    None => system_roots()
                        .into_iter()
                        .fold(ClientTlsConfig::new(), |c, pem| {
                            c.ca_certificate(Certificate::from_pem(pem))
                        }),
                };
                e = e
                    .tls_config(t)
                    .map_err(|e| DiscoveryError::Other(format!("endpoint {ep:?}: {e}")))?;
            }
            endpoints.push(e);
        }
        // Lazy, as etcd's client: an unreachable discovery cluster is retried, not fatal.
        let channel = if d.insecure_skip_tls_verify {
            skip_verify::channel(d).map_err(DiscoveryError::Other)?
        } else {
            Channel::balance_list(endpoints.into_iter())
        };
        let client = V3Client {
            channel,
            token: parking_lot::Mutex::new(None),
            credentials: d.user.as_ref().map(|user| AuthenticateRequest {
                name: user.clone(),
                password: d.password.clone().unwrap_or_default(),
            }),
            dial_timeout: d.dial_timeout,
            request_timeout: d.request_timeout,
        };
        // etcd's client authenticates once when it is created, within the dial timeout, and
        // gives up (fatally) if that fails.
        client.authenticate().await?;
        Ok(client)
    }

    async fn authenticate(&self) -> std::result::Result<(), DiscoveryError> {
        let Some(req) = self.credentials.clone() else {
            return Ok(());
        };
        let mut auth = AuthClient::new(self.channel.clone());
        let resp = tokio::time::timeout(self.dial_timeout, auth.authenticate(req))
            .await
            .map_err(|_| DiscoveryError::Other("context deadline exceeded".into()))?
            .map_err(|s| DiscoveryError::Other(s.message().to_string()))?;
        *self.token.lock() = Some(resp.into_inner().token);
        Ok(())
    }

    /// A failed call's text; an expired token is renewed (as etcd's client does) so that
    /// the retry that follows succeeds.
    async fn failed(&self, s: tonic::Status) -> String {
        let msg = s.message().to_string();
        if msg == "etcdserver: invalid auth token" {
            if let Err(e) = self.authenticate().await {
                return format!("{msg}; renewing it: {e}");
            }
        }
        msg
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(t) = self.token.lock().as_ref() {
            if let Ok(v) = t.parse() {
                r.metadata_mut().insert("token", v);
            }
        }
        r
    }

    async fn range(
        &self,
        key: &str,
        prefix: bool,
    ) -> std::result::Result<ferrokv_proto::etcdserverpb::RangeResponse, String> {
        let req = RangeRequest {
            key: key.as_bytes().to_vec(),
            range_end: if prefix {
                prefix_end(key.as_bytes())
            } else {
                Vec::new()
            },
            ..Default::default()
        };
        let mut kv = KvClient::new(self.channel.clone());
        match tokio::time::timeout(self.request_timeout, kv.range(self.request(req))).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(self.failed(s).await),
            Err(_) => Err("context deadline exceeded".into()),
        }
    }

    async fn put(&self, key: &str, value: &str) -> std::result::Result<(), String> {
        let req = PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        };
        let mut kv = KvClient::new(self.channel.clone());
        match tokio::time::timeout(self.request_timeout, kv.put(self.request(req))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(self.failed(s).await),
            Err(_) => Err("context deadline exceeded".into()),
        }
    }
}

/// etcd's client TLS for the discovery cluster (`newTLSConfig`): certificates when given,
/// an empty TLS config when `--discovery-insecure-transport=false`, plain gRPC otherwise.
fn v3_tls(d: &V3Discovery) -> std::result::Result<Option<ClientTlsConfig>, String> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let has_files = d.cert_file.is_some() || d.key_file.is_some() || d.ca_file.is_some();
    if !has_files && d.insecure_transport {
        return Ok(None);
    }
    let mut c = ClientTlsConfig::new();
    match &d.ca_file {
        Some(ca) => c = c.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => {
            for pem in system_roots() {
                c = c.ca_certificate(Certificate::from_pem(pem));
            }
        }
    }
    match (&d.cert_file, &d.key_file) {
        (Some(cert), Some(key)) => c = c.identity(Identity::from_pem(read(cert)?, read(key)?)),
        (None, None) => {}
        _ => return Err("--discovery-cert and --discovery-key must be given together".into()),
    }
    Ok(Some(c))
}

/// `--discovery-insecure-skip-tls-verify`: TLS that accepts any server certificate (etcd:
/// "for testing purposes"), which tonic's TLS settings cannot express, so the connection is
/// made here: each endpoint in turn until one answers, `http://` ones in plain text.
mod skip_verify {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use hyper_util::rt::TokioIo;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use tokio::io::{AsyncRead, AsyncWrite};
    use tokio::net::TcpStream;
    use tonic::transport::{Channel, Endpoint, Uri};

    use crate::config::V3Discovery;

    /// Accepts every certificate, but still checks that the handshake is signed by the key
    /// of the certificate presented (rustls' own signature checks).
    #[derive(Debug)]
    struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

    /// (dial address, TLS or plain) of each endpoint.
    type Targets = Arc<Vec<(String, bool)>>;

    #[derive(Clone)]
    struct Connector {
        targets: Targets,
        tls: tokio_rustls::TlsConnector,
    }

    type BoxIo = TokioIo<Box<dyn Io>>;

    impl tower::Service<Uri> for Connector {
        type Response = BoxIo;
        type Error = std::io::Error;
        type Future = Pin<Box<dyn Future<Output = Result<BoxIo, std::io::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Uri) -> Self::Future {
            let (targets, tls) = (self.targets.clone(), self.tls.clone());
            Box::pin(async move {
                let mut last = std::io::Error::other("no discovery endpoint");
                for (addr, secure) in targets.iter() {
                    let tcp = match TcpStream::connect(addr.as_str()).await {
                        Ok(t) => t,
                        Err(e) => {
                            last = e;
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    if !*secure {
                        return Ok(TokioIo::new(Box::new(tcp) as Box<dyn Io>));
                    }
                    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
                    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                        .map_err(std::io::Error::other)?;
                    match tls.connect(name, tcp).await {
                        Ok(s) => return Ok(TokioIo::new(Box::new(s) as Box<dyn Io>)),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            })
        }
    }

    fn read_pem(p: &std::path::Path) -> Result<Vec<u8>, String> {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    }

    pub(super) fn channel(d: &V3Discovery) -> Result<Channel, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)));
        let mut config = match (&d.cert_file, &d.key_file) {
            (Some(cert), Some(key)) => {
                let certs: Vec<CertificateDer<'static>> =
                    rustls_pemfile::certs(&mut read_pem(cert)?.as_slice())
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("{}: {e}", cert.display()))?;
                let key: PrivateKeyDer<'static> =
                    rustls_pemfile::private_key(&mut read_pem(key)?.as_slice())
                        .map_err(|e| format!("{}: {e}", key.display()))?
                        .ok_or_else(|| format!("{}: no private key", key.display()))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| e.to_string())?
            }
            _ => builder.with_no_client_auth(),
        };
        // gRPC servers (etcd's Go one included) insist on HTTP/2 by ALPN.
        config.alpn_protocols = vec![b"h2".to_vec()];
        let targets: Vec<(String, bool)> = d
            .endpoints
            .iter()
            .map(|ep| match ep.split_once("://") {
                Some(("http", rest)) => (rest.to_string(), false),
                Some((_, rest)) => (rest.to_string(), true),
                None => (ep.clone(), true),
            })
            .collect();
        let connector = Connector {
            targets: Arc::new(targets),
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        };
        // The URI only names the channel: the connector dials the endpoints itself.
        let endpoint = Endpoint::from_static("http://discovery.endpoints")
            .connect_timeout(d.dial_timeout)
            .http2_keep_alive_interval(d.keepalive_time)
            .keep_alive_timeout(d.keepalive_timeout)
            .keep_alive_while_idle(true);
        Ok(endpoint.connect_with_connector_lazy(connector))
    }
}

/// The key after every key with `prefix` (etcd's `clientv3.GetPrefixRangeEnd`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// etcd's `v3discovery.JoinCluster`.
async fn join_v3(
    d: &V3Discovery,
    id: u64,
    contents: &str,
) -> std::result::Result<String, DiscoveryError> {
    let client = V3Client::connect(d).await?;
    let cluster_prefix = format!("{REGISTRY_PREFIX}/{}", d.token);
    let size_key = format!("{cluster_prefix}/_config/size");
    let members_prefix = format!("{cluster_prefix}/members");
    let self_key = format!("{members_prefix}/{id:x}");
    let mut retries = 0u32;

    // Fast path: a full cluster is refused before registering.
    check_v3(&client, &size_key, &members_prefix, &self_key, &mut retries).await?;
    loop {
        match client.put(&self_key, contents).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(member_key = %self_key, error = %e, "failed to register members itself to the discovery service");
                backoff(&mut retries, "register member itself").await;
            }
        }
    }
    retries = 0;
    tracing::info!(member_key = %self_key, member_info = contents, "register member itself successfully");
    let (mut registry, size, rev) =
        check_v3(&client, &size_key, &members_prefix, &self_key, &mut retries).await?;
    if registry.len() < size {
        wait_peers_v3(&client, &members_prefix, &mut registry, size, rev).await;
    }
    registry.initial_cluster(size)
}

/// etcd's `checkCluster`: the size, the registrations and the revision they were read at.
async fn check_v3(
    client: &V3Client,
    size_key: &str,
    members_prefix: &str,
    self_key: &str,
    retries: &mut u32,
) -> std::result::Result<(Registry, usize, i64), DiscoveryError> {
    loop {
        let resp = match client.range(size_key, false).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(cluster_size_key = size_key, error = %e, "failed to get cluster size from discovery service");
                backoff(retries, "cluster status check").await;
                continue;
            }
        };
        let Some(kv) = resp.kvs.first() else {
            return Err(DiscoveryError::SizeNotFound);
        };
        let size = match std::str::from_utf8(&kv.value)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
        {
            Some(n) if n > 0 => n as usize,
            _ => return Err(DiscoveryError::BadSizeKey),
        };
        let resp = match client.range(members_prefix, true).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(members_key_prefix = members_prefix, error = %e, "failed to get cluster members from discovery service");
                backoff(retries, "cluster status check").await;
                continue;
            }
        };
        *retries = 0;
        let mut registry = Registry::default();
        for kv in &resp.kvs {
            let key = String::from_utf8_lossy(&kv.key);
            let value = String::from_utf8_lossy(&kv.value);
            note_peer(
                registry.add(members_prefix, &key, &value, kv.create_revision),
                &key,
                &value,
            );
        }
        let rev = resp.header.map(|h| h.revision).unwrap_or(0);
        if registry.is_full_for(self_key, size) {
            return Err(DiscoveryError::FullCluster);
        }
        return Ok((registry, size, rev));
    }
}

fn note_peer(added: std::result::Result<(), &'static str>, key: &str, value: &str) {
    match added {
        Ok(()) => tracing::info!(
            member_key = key.trim(),
            member_info = value.trim(),
            "found peer from discovery service"
        ),
        Err(why) => tracing::warn!(member_key = key.trim(), member_info = value.trim(), "{why}"),
    }
}

/// etcd's `waitPeers`: watches the members prefix from `rev + 1` until `size` registered.
/// A broken watch is re-opened after the last revision seen, as etcd's client does.
async fn wait_peers_v3(
    client: &V3Client,
    members_prefix: &str,
    registry: &mut Registry,
    size: usize,
    mut rev: i64,
) {
    tracing::info!(
        cluster_size = size,
        found_peers = registry.len(),
        "waiting for peers from discovery service"
    );
    while registry.len() < size {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: members_prefix.as_bytes().to_vec(),
                range_end: prefix_end(members_prefix.as_bytes()),
                start_revision: rev + 1,
                ..Default::default()
            })),
        };
        if tx.send(create).await.is_err() {
            return;
        }
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut watch = WatchClient::new(client.channel.clone());
        let mut events = match watch.watch(client.request(stream)).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                let e = client.failed(e).await;
                tracing::warn!(error = %e, "watching the discovery service; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            match events.message().await {
                Ok(Some(resp)) => {
                    if resp.canceled {
                        tracing::warn!(reason = %resp.cancel_reason, "discovery watch canceled; retrying");
                        break;
                    }
                    for ev in resp.events {
                        let Some(kv) = ev.kv else { continue };
                        rev = rev.max(kv.mod_revision);
                        let key = String::from_utf8_lossy(&kv.key);
                        let value = String::from_utf8_lossy(&kv.value);
                        note_peer(
                            registry.add(members_prefix, &key, &value, kv.create_revision),
                            &key,
                            &value,
                        );
                    }
                    if registry.len() >= size {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e.message(), "discovery watch failed; retrying");
                    break;
                }
            }
        }
        drop(tx);
        if registry.len() < size {
            // The watch broke or was canceled (a compacted start revision, say): catch up
            // with one read of the prefix and watch on from there. Registrations already
            // known are skipped by `add`.
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok(resp) = client.range(members_prefix, true).await {
                for kv in &resp.kvs {
                    let key = String::from_utf8_lossy(&kv.key);
                    let value = String::from_utf8_lossy(&kv.value);
                    if !registry
                        .members
                        .iter()
                        .any(|(k, _, _)| k.as_str() == key.trim())
                    {
                        note_peer(
                            registry.add(members_prefix, &key, &value, kv.create_revision),
                            &key,
                            &value,
                        );
                    }
                }
                rev = resp.header.map(|h| h.revision).unwrap_or(rev);
            }
        }
    }
    tracing::info!(
        cluster_size = size,
        found_peers = registry.len(),
        "found all needed peers from discovery service"
    );
}

// ---------------------------------------------------------------------------------------
// v2

/// A v2 keys-API node as the discovery service returns it.
#[derive(serde::Deserialize, Debug, Default)]
struct V2Node {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, rename = "createdIndex")]
    created_index: u64,
    #[serde(default, rename = "modifiedIndex")]
    modified_index: u64,
    #[serde(default)]
    nodes: Vec<V2Node>,
}

#[derive(serde::Deserialize, Debug)]
struct V2Response {
    node: V2Node,
}

/// A v2 error body: `{"errorCode":100,"message":"Key not found","cause":"/x","index":7}`.
#[derive(serde::Deserialize, Debug)]
struct V2Error {
    #[serde(rename = "errorCode")]
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    cause: String,
    #[serde(default)]
    index: u64,
}

const V2_KEY_NOT_FOUND: i64 = 100;
const V2_NODE_EXIST: i64 = 105;

/// What one v2 request came back with.
enum V2Outcome {
    Ok {
        node: V2Node,
        index: u64,
    },
    /// An error body of the keys API.
    KeysError(V2Error),
    /// Not JSON (not a discovery service).
    InvalidJson,
    /// No answer at all (etcd's `ClusterError`): retried.
    Unreachable(String),
}

struct V2Client {
    /// `scheme://host:port` of the service (the discovery URL without its path).
    base: url::Url,
    /// The discovery URL's path: the registry directory (etcd calls it the cluster token).
    dir: String,
    proxy: Option<url::Url>,
}

impl V2Client {
    fn new(durl: &str, proxy: Option<&str>) -> std::result::Result<V2Client, DiscoveryError> {
        let mut base = url::Url::parse(durl).map_err(|e| DiscoveryError::Other(e.to_string()))?;
        let dir = base.path().trim_end_matches('/').to_string();
        base.set_path("");
        base.set_query(None);
        let proxy = match proxy.filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => {
                // etcd's newProxyFunc: a bare host:port means http://host:port.
                let parsed = url::Url::parse(p)
                    .ok()
                    .filter(|u| u.scheme().starts_with("http") && u.host().is_some());
                match parsed {
                    Some(u) => Some(u),
                    None => Some(url::Url::parse(&format!("http://{p}")).map_err(|e| {
                        DiscoveryError::Other(format!("invalid proxy address {p:?}: {e}"))
                    })?),
                }
            }
        };
        if let Some(p) = &proxy {
            tracing::info!(proxy_url = %p, "running proxy with discovery");
        }
        Ok(V2Client { base, dir, proxy })
    }

    fn key_url(&self, key: &str, query: &[(&str, String)]) -> url::Url {
        let mut u = self.base.clone();
        u.set_path(&format!("{}{key}", self.dir));
        if !query.is_empty() {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            // Go's url.Values.Encode sorts by key.
            let mut sorted = query.to_vec();
            sorted.sort();
            for (k, v) in sorted {
                q.append_pair(k, &v);
            }
            u.set_query(Some(&q.finish()));
        }
        u
    }

    async fn call(&self, method: &str, url: &url::Url, form: Option<String>) -> V2Outcome {
        let resp = match http1::request(method, url, form, self.proxy.as_ref()).await {
            Ok(r) => r,
            Err(e) => return V2Outcome::Unreachable(e),
        };
        if resp.status == 200 || resp.status == 201 {
            match serde_json::from_slice::<V2Response>(&resp.body) {
                Ok(r) => {
                    let index = resp
                        .header("x-etcd-index")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    V2Outcome::Ok {
                        node: r.node,
                        index,
                    }
                }
                Err(_) if resp.body.is_empty() => V2Outcome::Unreachable("empty body".into()),
                Err(_) => V2Outcome::InvalidJson,
            }
        } else {
            match serde_json::from_slice::<V2Error>(&resp.body) {
                Ok(e) => V2Outcome::KeysError(e),
                Err(_) => V2Outcome::InvalidJson,
            }
        }
    }
}

fn v2_error_text(e: &V2Error) -> String {
    // The Go client's `Error.Error()`.
    format!("{}: {} ({}) [{}]", e.code, e.message, e.cause, e.index)
}

fn base_name(key: &str) -> &str {
    key.trim_end_matches('/').rsplit('/').next().unwrap_or(key)
}

/// etcd's `v2discovery.JoinCluster`.
async fn join_v2(
    durl: &str,
    proxy: Option<&str>,
    id: u64,
    contents: &str,
) -> std::result::Result<String, DiscoveryError> {
    let c = V2Client::new(durl, proxy)?;
    let self_name = format!("{id:x}");
    let mut retries = 0u32;
    check_v2(&c, &self_name, &mut retries).await?;

    // createSelf: a create (prevExist=false), then a watch that returns once the service
    // shows the key (it already does, so the wait ends at once).
    let self_url = c.key_url(&format!("/{self_name}"), &[("prevExist", "false".into())]);
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("value", contents)
        .finish();
    let created = match c.call("PUT", &self_url, Some(form)).await {
        V2Outcome::Ok { node, .. } => node.created_index,
        V2Outcome::KeysError(e) if e.code == V2_NODE_EXIST => {
            return Err(DiscoveryError::DuplicateId)
        }
        V2Outcome::KeysError(e) => return Err(DiscoveryError::Other(v2_error_text(&e))),
        V2Outcome::InvalidJson => {
            return Err(DiscoveryError::Other(
                "client: response is invalid json. The endpoint is probably not valid etcd cluster endpoint".into(),
            ))
        }
        V2Outcome::Unreachable(e) => return Err(DiscoveryError::Other(e)),
    };
    let wait_self = c.key_url(
        &format!("/{self_name}"),
        &[
            ("wait", "true".into()),
            ("waitIndex", created.to_string()),
            ("recursive", "false".into()),
        ],
    );
    if let V2Outcome::Unreachable(e) = c.call("GET", &wait_self, None).await {
        return Err(DiscoveryError::Other(e));
    }

    let (mut nodes, size, mut index) = check_v2(&c, &self_name, &mut retries).await?;
    // waitNodes
    nodes.truncate(size);
    for (k, _, _) in &nodes {
        if base_name(k) == self_name {
            tracing::info!(discovery_url = durl, self_ = %self_name, "found self from discovery server");
        } else {
            tracing::info!(
                discovery_url = durl,
                peer = base_name(k),
                "found peer from discovery server"
            );
        }
    }
    while nodes.len() < size {
        tracing::info!(
            discovery_url = durl,
            found_peers = nodes.len(),
            needed_peers = size - nodes.len(),
            "found peers from discovery server; waiting for more"
        );
        let wait = c.key_url(
            "",
            &[
                ("wait", "true".into()),
                ("waitIndex", (index + 1).to_string()),
                ("recursive", "true".into()),
            ],
        );
        match c.call("GET", &wait, None).await {
            V2Outcome::Ok { node, .. } => {
                tracing::info!(
                    discovery_url = durl,
                    peer = base_name(&node.key),
                    "found peer from discovery server"
                );
                index = node.modified_index;
                nodes.push((node.key, node.value, node.created_index as i64));
            }
            V2Outcome::Unreachable(e) if e == "empty body" => continue,
            V2Outcome::Unreachable(e) => {
                tracing::warn!(discovery_url = durl, error = %e, "error while waiting for peers");
                backoff(&mut retries, "waiting for other nodes").await;
                let (n, _, i) = check_v2(&c, &self_name, &mut retries).await?;
                nodes = n;
                nodes.truncate(size);
                index = i;
            }
            V2Outcome::KeysError(e) => return Err(DiscoveryError::Other(v2_error_text(&e))),
            V2Outcome::InvalidJson => return Err(DiscoveryError::BadDiscoveryEndpoint),
        }
    }
    tracing::info!(
        discovery_url = durl,
        found_peers = nodes.len(),
        "found all needed peers from discovery server"
    );
    // nodesToCluster
    let s = nodes
        .iter()
        .map(|(_, v, _)| v.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let parsed =
        parse_cluster(&s).map_err(|_| DiscoveryError::Other("discovery: invalid URL".into()))?;
    if parsed.len() != size {
        return Err(DiscoveryError::DuplicateName);
    }
    Ok(s)
}

/// etcd's v2 `checkCluster`: (registrations sorted by creation, size, X-Etcd-Index).
async fn check_v2(
    c: &V2Client,
    self_name: &str,
    retries: &mut u32,
) -> std::result::Result<(Vec<(String, String, i64)>, usize, u64), DiscoveryError> {
    let get = [
        ("quorum", "false".to_string()),
        ("recursive", "false".into()),
        ("sorted", "false".into()),
    ];
    loop {
        let size_url = c.key_url("/_config/size", &get);
        let size = match c.call("GET", &size_url, None).await {
            V2Outcome::Ok { node, .. } => node.value,
            // etcd 3.6 means to map this to "size key not found", but its check looks for
            // the wrong error type, so the keys API's own text is what it reports.
            V2Outcome::KeysError(e) if e.code == V2_KEY_NOT_FOUND => {
                return Err(DiscoveryError::Other(v2_error_text(&e)))
            }
            V2Outcome::KeysError(e) => return Err(DiscoveryError::Other(v2_error_text(&e))),
            V2Outcome::InvalidJson => return Err(DiscoveryError::BadDiscoveryEndpoint),
            V2Outcome::Unreachable(e) => {
                tracing::warn!(discovery_url = %c.base, path = %size_url.path(), error = %e, "failed to get from discovery server");
                backoff(retries, "cluster status check").await;
                continue;
            }
        };
        let size: usize = size.parse().map_err(|_| DiscoveryError::BadSizeKey)?;
        let dir_url = c.key_url("", &get);
        let (node, index) = match c.call("GET", &dir_url, None).await {
            V2Outcome::Ok { node, index } => (node, index),
            V2Outcome::KeysError(e) => return Err(DiscoveryError::Other(v2_error_text(&e))),
            V2Outcome::InvalidJson => {
                return Err(DiscoveryError::Other(
                    "client: response is invalid json. The endpoint is probably not valid etcd cluster endpoint".into(),
                ))
            }
            V2Outcome::Unreachable(e) => {
                tracing::warn!(discovery_url = %c.base, path = %dir_url.path(), error = %e, "failed to get from discovery server");
                backoff(retries, "cluster status check").await;
                continue;
            }
        };
        let mut nodes: Vec<(String, String, i64)> = node
            .nodes
            .into_iter()
            .filter(|n| base_name(&n.key) != "_config")
            .map(|n| (n.key, n.value, n.created_index as i64))
            .collect();
        nodes.sort_by_key(|(_, _, c)| *c);
        for (i, (k, _, _)) in nodes.iter().enumerate() {
            if base_name(k) == self_name {
                break;
            }
            if i + 1 >= size {
                return Err(DiscoveryError::FullCluster);
            }
        }
        return Ok((nodes, size, index));
    }
}

/// Root certificates for https discovery URLs: `SSL_CERT_FILE`, else the system bundle.
fn system_roots() -> Vec<Vec<u8>> {
    let mut paths: Vec<std::path::PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("SSL_CERT_FILE") {
        paths.push(p.into());
    }
    paths.extend(
        [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/cert.pem",
        ]
        .map(std::path::PathBuf::from),
    );
    paths
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .into_iter()
        .collect()
}

/// Just enough HTTP/1.1 for the v2 discovery protocol: one request per connection
/// (`Connection: close`), an optional HTTP proxy (absolute-form requests for http, CONNECT
/// for https), TLS with the system roots, chunked or length-delimited bodies.
mod http1 {
    use std::sync::Arc;

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub struct Response {
        pub status: u16,
        headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Response {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

    fn host_port(u: &url::Url) -> Result<(String, u16), String> {
        let host = u.host_str().ok_or_else(|| format!("{u}: no host"))?;
        let port = u
            .port_or_known_default()
            .ok_or_else(|| format!("{u}: no port"))?;
        Ok((host.trim_matches(['[', ']']).to_string(), port))
    }

    pub async fn request(
        method: &str,
        url: &url::Url,
        form: Option<String>,
        proxy: Option<&url::Url>,
    ) -> Result<Response, String> {
        let (host, port) = host_port(url)?;
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let https = url.scheme() == "https";
        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        let (dial_host, dial_port) = match proxy {
            Some(p) => host_port(p)?,
            None => (host.clone(), port),
        };
        let tcp = TcpStream::connect((dial_host.as_str(), dial_port))
            .await
            .map_err(|e| format!("dial tcp {dial_host}:{dial_port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut stream: Box<dyn Io> = Box::new(tcp);
        let mut target = path;
        if proxy.is_some() {
            if https {
                let connect =
                    format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
                stream
                    .write_all(connect.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                let head = read_head(&mut stream).await?;
                if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
                    return Err(format!(
                        "proxy refused CONNECT: {}",
                        head.lines().next().unwrap_or_default()
                    ));
                }
            } else {
                target = url.as_str().to_string();
            }
        }
        if https {
            stream = tls(stream, &host).await?;
        }
        let body = form.unwrap_or_default();
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: ferrokv\r\nConnection: close\r\n"
        );
        if method == "PUT" || method == "POST" {
            req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("reading the response of {url}: {e}"))?;
        parse_response(&raw)
    }

    /// Reads up to the blank line ending a response head (a proxy's CONNECT answer).
    async fn read_head(s: &mut Box<dyn Io>) -> Result<String, String> {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut b).await.map_err(|e| e.to_string())?;
            if n == 0 || head.len() > 16 * 1024 {
                return Err("proxy closed the connection".into());
            }
            head.push(b[0]);
        }
        Ok(String::from_utf8_lossy(&head).into_owned())
    }

    async fn tls(stream: Box<dyn Io>, host: &str) -> Result<Box<dyn Io>, String> {
        let mut roots = rustls::RootCertStore::empty();
        for pem in super::system_roots() {
            for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
                let _ = roots.add(cert);
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host}: {e}"))?;
        let s = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|e| format!("tls handshake with {host}: {e}"))?;
        Ok(Box::new(s))
    }

    pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("malformed HTTP response (no end of headers)")?;
        let head = String::from_utf8_lossy(&raw[..split]);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("malformed HTTP status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let rest = &raw[split + 4..];
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        let body = if chunked {
            dechunk(rest)?
        } else {
            rest.to_vec()
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        loop {
            let eol = b
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("truncated chunked body")?;
            let size_text = String::from_utf8_lossy(&b[..eol]);
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            b = &b[eol + 2..];
            if size == 0 {
                return Ok(out);
            }
            if b.len() < size {
                return Err("truncated chunked body".into());
            }
            out.extend_from_slice(&b[..size]);
            b = b.get(size + 2..).unwrap_or_default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_keeps_creation_order_and_refuses_bad_entries() {
        let p = "/_etcd/registry/t/members";
        let mut r = Registry::default();
        r.add(p, "/_etcd/registry/t/members/b", "n2=http://b:2380", 7)
            .unwrap();
        r.add(p, "/_etcd/registry/t/members/a", "n1=http://a:2380", 5)
            .unwrap();
        assert_eq!(
            r.add(p, "/_etcd/registry/t/members/a", "n1=http://a:2380", 5),
            Err("found duplicate peer from discovery service")
        );
        assert_eq!(
            r.add(p, "/_etcd/registry/t/members/c", "garbage", 9),
            Err("invalid peer info returned from discovery service")
        );
        assert_eq!(
            r.add(p, "/other/c", "n=http://c:1", 9),
            Err("invalid peer registry key")
        );
        assert_eq!(
            r.initial_cluster(3).unwrap(),
            "n1=http://a:2380,n2=http://b:2380"
        );
        assert_eq!(r.initial_cluster(1).unwrap(), "n1=http://a:2380");
        // Two others registered and size 2: full for a third, not for either of them.
        assert!(r.is_full_for("/_etcd/registry/t/members/z", 2));
        assert!(!r.is_full_for("/_etcd/registry/t/members/b", 2));
        assert!(!r.is_full_for("/_etcd/registry/t/members/z", 3));
        r.add(p, "/_etcd/registry/t/members/d", "n4=not a url", 10)
            .unwrap();
        assert_eq!(r.initial_cluster(3), Err(DiscoveryError::InvalidUrl));
    }

    #[test]
    fn errors_read_as_etcds() {
        assert_eq!(
            DiscoveryError::SizeNotFound.to_string(),
            "discovery: size key not found"
        );
        assert_eq!(
            DiscoveryError::FullCluster.to_string(),
            "discovery: cluster is full"
        );
        assert_eq!(
            DiscoveryError::BadSizeKey.to_string(),
            "discovery: size key is bad"
        );
    }

    #[test]
    fn prefix_end_is_etcds() {
        assert_eq!(prefix_end(b"/a/b"), b"/a/c".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn http_responses_parse() {
        let r = http1::parse_response(
            b"HTTP/1.1 200 OK\r\nX-Etcd-Index: 12\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-etcd-index"), Some("12"));
        assert_eq!(r.body, b"abcde");
        let r = http1::parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"{}"[..]));
    }

    #[test]
    fn v2_urls_keep_the_discovery_path() {
        let c = V2Client::new("http://127.0.0.1:9/v2/keys/disc/abc", None).unwrap();
        assert_eq!(
            c.key_url(
                "/_config/size",
                &[("sorted", "false".into()), ("quorum", "false".into())]
            )
            .as_str(),
            "http://127.0.0.1:9/v2/keys/disc/abc/_config/size?quorum=false&sorted=false"
        );
        let c = V2Client::new(
            "https://discovery.etcd.io/3e86b59982e49066c5d813af1c2e2579",
            Some("127.0.0.1:3128"),
        )
        .unwrap();
        assert_eq!(
            c.key_url("/1a2b", &[]).as_str(),
            "https://discovery.etcd.io/3e86b59982e49066c5d813af1c2e2579/1a2b"
        );
        assert_eq!(c.proxy.unwrap().as_str(), "http://127.0.0.1:3128/");
    }
}
