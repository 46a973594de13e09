//! Client connections to peers: the peer TLS settings and one way to dial a peer URL, used by
//! the transport, by leader forwarding and by a joining member.

use std::time::Duration;

use tonic::transport::{Certificate, Identity};

use crate::config::TlsFiles;
use crate::error::{Error, Result};

/// Client-side TLS for connections to peers (https peer URLs), from the peer TLS flags.
pub fn peer_client_tls(tls: &TlsFiles) -> Result<Option<tonic::transport::ClientTlsConfig>> {
    if tls.cert_file.is_none() && tls.trusted_ca_file.is_none() {
        return Ok(None);
    }
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| Error::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let mut c = tonic::transport::ClientTlsConfig::new();
    if let Some(ca) = &tls.trusted_ca_file {
        c = c.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        c = c.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(c))
}

/// Connects to a peer URL (with the peer TLS settings for https).
pub async fn connect_peer(
    url: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> std::result::Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut ep = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        if let Some(t) = tls {
            ep = ep.tls_config(t.clone())?;
        }
    }
    ep.connect().await
}
