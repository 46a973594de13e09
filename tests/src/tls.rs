//! Test certificates: a throwaway CA, a server certificate for 127.0.0.1/localhost and a client
//! certificate, all generated with rcgen and written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::Result;

/// PEM files of one test PKI.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate signed by a different CA: must be refused.
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

fn ca(name: &str) -> Result<(CertificateParams, KeyPair, String)> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    Ok((p, key, cert.pem()))
}

fn leaf(
    issuer: &Issuer<'_, &KeyPair>,
    cn: &str,
    sans: Vec<String>,
    usage: Vec<ExtendedKeyUsagePurpose>,
) -> Result<(String, String)> {
    let mut p = CertificateParams::new(sans)?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Go's TLS stack checks extended key usage on both sides.
    p.extended_key_usages = usage;
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl TlsFiles {
    /// Generates the PKI into `dir`.
    pub fn generate(dir: &Path) -> Result<TlsFiles> {
        let (ca_params, ca_key, ca_pem) = ca("ferrokv-test-ca")?;
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let (server_pem, server_key) = leaf(
            &issuer,
            "ferrokv-test-server",
            vec!["localhost".into(), "127.0.0.1".into()],
            // etcd's JSON gateway dials its own gRPC port with the server certificate as its
            // client certificate, so under --client-cert-auth it must allow client auth too
            // (as etcd's docs ask of server certificates).
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        let (client_pem, client_key) = leaf(
            &issuer,
            "root",
            vec![],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )?;
        let (rogue_params, rogue_ca_key, _) = ca("rogue-ca")?;
        let rogue_issuer = Issuer::from_params(&rogue_params, &rogue_ca_key);
        let (rogue_pem, rogue_key) = leaf(
            &rogue_issuer,
            "root",
            vec![],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )?;
        let files = TlsFiles {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
            rogue_cert: dir.join("rogue.pem"),
            rogue_key: dir.join("rogue-key.pem"),
        };
        std::fs::write(&files.ca_cert, ca_pem)?;
        std::fs::write(&files.server_cert, server_pem)?;
        std::fs::write(&files.server_key, server_key)?;
        std::fs::write(&files.client_cert, client_pem)?;
        std::fs::write(&files.client_key, client_key)?;
        std::fs::write(&files.rogue_cert, rogue_pem)?;
        std::fs::write(&files.rogue_key, rogue_key)?;
        Ok(files)
    }
}

/// The serial number (hex) of the certificate a TLS port serves on a fresh connection, verified
/// against `ca_pem` (one or more PEM CA certificates) for `server_name`, presenting `client`
/// (certificate and key PEM) when the port asks for one.
pub async fn served_serial(
    addr: &str,
    server_name: &str,
    ca_pem: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> Result<String> {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_certs(ca_pem)? {
        roots.add(c).map_err(tls_err)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots);
    let cfg = match client {
        Some((cert, key)) => {
            use rustls::pki_types::pem::PemObject;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key).map_err(tls_err)?;
            builder
                .with_client_auth_cert(rustls_certs(cert)?, key)
                .map_err(tls_err)?
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).map_err(tls_err)?;
    let tls = connector.connect(name, tcp).await?;
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| crate::Error::Tls("no server certificate".into()))?;
    let (_, x) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(tls_err)?;
    Ok(x.raw_serial_as_string())
}

/// The serial number (hex, as [`served_serial`] gives it) of the first certificate in `pem`.
pub fn pem_serial(pem: &[u8]) -> Result<String> {
    let der = rustls_certs(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| crate::Error::Tls("no PEM certificate".into()))?;
    let (_, x) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(tls_err)?;
    Ok(x.raw_serial_as_string())
}

fn rustls_certs(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(tls_err)
}

fn tls_err(e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Tls(e.to_string())
}
