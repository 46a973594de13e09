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
