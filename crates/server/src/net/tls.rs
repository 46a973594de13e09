//! TLS on `https` listen URLs, client and peer, from etcd's TLS flags. ferrokv terminates it
//! itself instead of inside tonic so that, on the client port, the `:authority` repair of
//! [`super::authority`] runs on the decrypted HTTP/2 stream: etcdctl 3.4 sends a URL there over
//! TLS too.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use super::coalesce::Coalesce;
use crate::config::TlsFiles;
use crate::error::{Error, Result};
use crate::reloading::Reloading;

/// A client that opens a connection and never finishes the handshake must not hold a task
/// forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS side of one listener: the rustls server config from one set of etcd's TLS flags,
/// rebuilt when the certificate, key or CA file changes, so a renewed certificate is served
/// from the next handshake on without a restart. Cheap to clone.
#[derive(Clone)]
pub struct Acceptor(Arc<Reloading<TlsAcceptor>>);

impl Acceptor {
    fn current(&self) -> TlsAcceptor {
        TlsAcceptor::clone(&self.0.current())
    }
}

/// The acceptor for one set of etcd's TLS flags (`--cert-file`, ... or `--peer-cert-file`,
/// ...). A file that cannot be read or parsed now is an error; later, a bad new file keeps
/// the certificate in use.
pub fn acceptor(tls: &TlsFiles) -> Result<Acceptor> {
    let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
        return Err(Error::Config(
            "https listen URL needs --cert-file and --key-file".into(),
        ));
    };
    if tls.client_cert_auth && tls.trusted_ca_file.is_none() {
        return Err(Error::Config(
            "--client-cert-auth needs --trusted-ca-file".into(),
        ));
    }
    let mut paths = vec![cert.clone(), key.clone()];
    if tls.client_cert_auth {
        paths.extend(tls.trusted_ca_file.clone());
    }
    let files = tls.clone();
    let r = Reloading::new("server TLS", paths, move || server_config(&files))?;
    Ok(Acceptor(Arc::new(r)))
}

/// The rustls server config: the certificate and key, and with `--client-cert-auth` /
/// `--peer-client-cert-auth` a verifier that requires a certificate signed by the trusted CA
/// (any of them: during a CA rotation the bundle holds the old and the new CA).
fn server_config(tls: &TlsFiles) -> Result<TlsAcceptor> {
    let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
        return Err(Error::Config(
            "https listen URL needs --cert-file and --key-file".into(),
        ));
    };
    let certs = read_certs(cert)?;
    let key = read_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = match (&tls.trusted_ca_file, tls.client_cert_auth) {
        (Some(ca), true) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| Error::Tls(format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Error::Tls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?;
    // h2 for gRPC; http/1.1 for /health, /metrics and /version on the client port.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Tls(format!("cannot read {}: {e}", path.display())))
}

pub(crate) fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?
        .ok_or_else(|| Error::Tls(format!("{}: no PEM private key in it", path.display())))
}

/// Accepted, handshaken connections. Handshakes run concurrently, each in its own
/// task, so one slow client does not hold up the others; a failed handshake (no or a foreign
/// client certificate) only closes that connection. The accept loop ends with `stop`.
pub fn incoming(
    listener: TcpListener,
    acceptor: Acceptor,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<TlsStream<Coalesce<TcpStream>>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.wait_for(|s| *s) => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "set TCP_NODELAY failed");
            }
            // The config as of now: a renewed certificate is served from this handshake on.
            let acceptor = acceptor.current();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(Coalesce::new(tcp)))
                    .await
                {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    // A connection closed before it said anything is a TCP check (the peer
                    // round-trip prober, a load balancer's health check), not a refusal.
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        tracing::debug!(%peer, "connection closed before the TLS handshake")
                    }
                    // etcd warns of every rejected connection ("bad certificate" and the
                    // like): a member or client with the wrong certificate must be visible.
                    Ok(Err(e)) => {
                        tracing::warn!(%peer, error = %e, "rejected connection: TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
