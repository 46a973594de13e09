//! `etcd-client` and raw tonic clients for a member.

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use ferrokv_proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::{Member, Result, TlsFiles};

fn tls_config(m: &Member) -> Result<Option<ClientTlsConfig>> {
    client_tls(m.opts.tls.as_ref())
}

/// The client side of `tls`: trust its CA, present its client certificate.
fn client_tls(tls: Option<&TlsFiles>) -> Result<Option<ClientTlsConfig>> {
    let Some(t) = tls else {
        return Ok(None);
    };
    let ca = std::fs::read(&t.ca_cert)?;
    let cert = std::fs::read(&t.client_cert)?;
    let key = std::fs::read(&t.client_key)?;
    Ok(Some(
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name("localhost"),
    ))
}

/// An `etcd-client` for `m`. No per-request timeout is set because it would also cut long-lived
/// watch streams; tests bound their waits with `tokio::time::timeout` instead.
pub async fn connect(m: &Member) -> Result<Client> {
    connect_endpoints(std::slice::from_ref(&m.client_url), m.opts.tls.as_ref()).await
}

/// An `etcd-client` balancing over `endpoints` (a cluster's client URLs).
pub async fn connect_endpoints(endpoints: &[String], tls: Option<&TlsFiles>) -> Result<Client> {
    let mut opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
    if let Some(tls) = client_tls(tls)? {
        opts = opts.with_tls(tls);
    }
    Ok(Client::connect(endpoints, Some(opts)).await?)
}

/// A raw generated KV client, for requests `etcd-client` cannot build (invalid enums).
pub async fn raw_kv(m: &Member) -> Result<KvClient<Channel>> {
    let mut ep =
        Endpoint::from_shared(m.client_url.clone())?.connect_timeout(Duration::from_secs(2));
    if let Some(tls) = tls_config(m)? {
        ep = ep.tls_config(tls)?;
    }
    Ok(KvClient::new(ep.connect().await?))
}

/// The gRPC code and message of a failed call (`None` for non-gRPC errors).
pub fn grpc_error(e: &etcd_client::Error) -> Option<(tonic::Code, String)> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some((s.code(), s.message().to_string())),
        _ => None,
    }
}
