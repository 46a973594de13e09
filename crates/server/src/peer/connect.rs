//! Client connections to peers: the peer TLS settings and one way to dial a peer URL, used by
//! the transport, by leader forwarding and by a joining member.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::TlsFiles;
use crate::error::{Error, Result};
use crate::reloading::Reloading;

/// Client-side TLS for connections to peers (https peer URLs), from the peer TLS flags: the
/// files are read again when they change, so each new connection presents the member's current
/// certificate and trusts its current CA bundle (a renewal needs no restart). Cheap to clone.
#[derive(Clone)]
pub struct PeerClientTls(Arc<Reloading<ClientTlsConfig>>);

/// The peer client TLS, or `None` without peer TLS flags.
pub fn peer_client_tls(tls: &TlsFiles) -> Result<Option<PeerClientTls>> {
    if tls.cert_file.is_none() && tls.trusted_ca_file.is_none() {
        return Ok(None);
    }
    let mut paths: Vec<PathBuf> = tls.trusted_ca_file.iter().cloned().collect();
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        paths.extend([cert.clone(), key.clone()]);
    }
    let files = tls.clone();
    let r = Reloading::new("peer client TLS", paths, move || client_config(&files))?;
    Ok(Some(PeerClientTls(Arc::new(r))))
}

fn client_config(tls: &TlsFiles) -> Result<ClientTlsConfig> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| Error::Tls(format!("cannot read {}: {e}", p.display())))
    };
    // tonic parses the PEM only when it dials; check it here so that a half-written file is
    // refused by the reload (which keeps the previous config) instead of failing every dial.
    let certs = |p: &Path, pem: &[u8]| {
        let n = rustls_pemfile::certs(&mut &pem[..])
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(format!("{}: {e}", p.display())))?
            .len();
        if n == 0 {
            return Err(Error::Tls(format!(
                "{}: no PEM certificate in it",
                p.display()
            )));
        }
        Ok(())
    };
    let mut c = ClientTlsConfig::new();
    if let Some(ca) = &tls.trusted_ca_file {
        let pem = read(ca)?;
        certs(ca, &pem)?;
        c = c.ca_certificate(Certificate::from_pem(pem));
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        certs(cert, &cert_pem)?;
        rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?
            .ok_or_else(|| Error::Tls(format!("{}: no PEM private key in it", key.display())))?;
        c = c.identity(Identity::from_pem(cert_pem, key_pem));
    }
    Ok(c)
}

/// Connects to a peer URL (with the peer TLS settings for https).
pub async fn connect_peer(
    url: &str,
    tls: Option<&PeerClientTls>,
) -> std::result::Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut ep = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        if let Some(t) = tls {
            ep = ep.tls_config(ClientTlsConfig::clone(&t.0.current()))?;
        }
    }
    ep.connect().await
}
