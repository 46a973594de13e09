//! Per-cluster certificate authority and leaf certificates (rcgen).
//!
//! Pure functions over PEM strings: the controller stores the results in Secrets. Leaf SANs use
//! a wildcard over the headless peer Service, which covers every member's stable DNS name,
//! present and future, so that scaling never forces a re-issue.

use crate::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::time::Duration;
use time::OffsetDateTime;

/// The CA lives ten years; it is never replaced automatically, because every member and
/// client trusts it (a CA Secret deleted by hand is rotated in steps, see `tls`).
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Default leaf lifetime when `spec.tls.certificateLifetimeDays` is unset.
pub const DEFAULT_LEAF_DAYS: u32 = 90;

/// A CA certificate and its private key, PEM encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPem {
    pub cert: String,
    pub key: String,
}

/// A leaf certificate, its key and the CA that signed it, PEM encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafPem {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

/// What a leaf certificate is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    /// Serves clients on the client port.
    Server,
    /// Both ends of member-to-member traffic.
    Peer,
    /// A client (the operator or a user).
    Client,
}

/// SANs of server and peer certificates: every member's stable DNS name (via a wildcard over
/// the headless Service), the client Service names, and loopback for probes and local tools.
pub fn member_sans(cluster: &str, namespace: &str) -> Vec<String> {
    let peer = format!("{cluster}-peer");
    let client = format!("{cluster}-client");
    vec![
        format!("*.{peer}.{namespace}.svc"),
        format!("*.{peer}.{namespace}.svc.cluster.local"),
        // The headless Service itself, which a wildcard does not cover.
        format!("{peer}.{namespace}.svc"),
        client.clone(),
        format!("{client}.{namespace}"),
        format!("{client}.{namespace}.svc"),
        format!("{client}.{namespace}.svc.cluster.local"),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ]
}

fn validity(params: &mut CertificateParams, now: OffsetDateTime, lifetime: Duration) -> Result<()> {
    // Back-date a little so a member whose clock is slightly behind accepts a fresh cert.
    params.not_before = now - time::Duration::minutes(5);
    let life = time::Duration::try_from(lifetime)
        .map_err(|e| Error::Certificate(format!("lifetime: {e}")))?;
    params.not_after = now + life;
    Ok(())
}

fn cert_err(e: rcgen::Error) -> Error {
    Error::Certificate(e.to_string())
}

/// Generates a new CA for `cluster`.
pub fn generate_ca(cluster: &str, now: OffsetDateTime) -> Result<CaPem> {
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{cluster} ferrokv CA"));
    dn.push(DnType::OrganizationName, "ferrokv");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, now, CA_LIFETIME)?;
    let cert = params.self_signed(&key).map_err(cert_err)?;
    Ok(CaPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Issues a leaf certificate signed by `ca`.
pub fn issue_leaf(
    ca: &CaPem,
    kind: LeafKind,
    common_name: &str,
    sans: &[String],
    now: OffsetDateTime,
    lifetime: Duration,
) -> Result<LeafPem> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(cert_err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, &ca_key).map_err(cert_err)?;
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(sans.to_vec()).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "ferrokv");
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match kind {
        // etcd dials other members with the server certificate too (grpc-gateway, proxies), so
        // it carries client auth as well, as etcd's own docs recommend.
        LeafKind::Server | LeafKind::Peer => {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        }
        LeafKind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now, lifetime)?;
    let cert = params.signed_by(&key, &issuer).map_err(cert_err)?;
    Ok(LeafPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
        ca: ca.cert.clone(),
    })
}

/// Validity window of a PEM certificate as unix seconds `(not_before, not_after)`.
pub fn validity_of(cert_pem: &str) -> Result<(i64, i64)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| Error::Certificate(format!("parse PEM: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| Error::Certificate(format!("parse certificate: {e}")))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// SAN DNS names and IPs of a PEM certificate (for tests and for detecting SAN drift).
pub fn sans_of(cert_pem: &str) -> Result<Vec<String>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| Error::Certificate(format!("parse PEM: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| Error::Certificate(format!("parse certificate: {e}")))?;
    let mut out = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => out.push((*d).to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => out.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(ip);
                        out.push(std::net::Ipv6Addr::from(b).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(out)
}

/// A leaf is renewed once two thirds of its lifetime have passed, leaving a third for the
/// Secret volumes to reach every member (kubelet syncs them within a minute or two) long
/// before expiry.
pub fn needs_renewal(cert_pem: &str, now: OffsetDateTime) -> Result<bool> {
    Ok(now.unix_timestamp() >= renew_at(cert_pem, None)?)
}

/// A leaf issued less than this long ago is never renewed, whatever `renew_before` says, so
/// a setting longer than the lifetime cannot make every reconcile issue a new certificate.
const MIN_AGE_SECS: i64 = 5;

/// When (unix seconds) a leaf is due for renewal: `renew_before` ahead of its expiry (the
/// operator's `--cert-renew-before`), else at two thirds of its lifetime.
pub fn renew_at(cert_pem: &str, renew_before: Option<Duration>) -> Result<i64> {
    let (nb, na) = validity_of(cert_pem)?;
    Ok(match renew_before {
        None => nb + (na - nb) * 2 / 3,
        Some(before) => {
            let before = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            // `not_before` is back-dated by five minutes (see `validity`).
            let issued = nb + 300;
            na.saturating_sub(before).max(issued + MIN_AGE_SECS)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
    const DAY: Duration = Duration::from_secs(86400);

    /// A 90-day server or peer leaf of cluster `kv` in `namespace`.
    fn member_leaf(
        ca: &CaPem,
        kind: LeafKind,
        cn: &str,
        namespace: &str,
        at: OffsetDateTime,
    ) -> LeafPem {
        issue_leaf(ca, kind, cn, &member_sans("kv", namespace), at, 90 * DAY).expect("leaf")
    }

    #[test]
    fn server_sans_cover_members_services_and_loopback() {
        let ca = generate_ca("kv", now()).expect("ca");
        let leaf = member_leaf(&ca, LeafKind::Server, "kv-server", "prod", now());
        let sans = sans_of(&leaf.cert).expect("sans");
        assert_eq!(
            sans,
            vec![
                "*.kv-peer.prod.svc",
                "*.kv-peer.prod.svc.cluster.local",
                "kv-peer.prod.svc",
                "kv-client",
                "kv-client.prod",
                "kv-client.prod.svc",
                "kv-client.prod.svc.cluster.local",
                "localhost",
                "127.0.0.1",
                "::1",
            ]
        );
    }

    #[test]
    fn renewal_at_two_thirds_of_lifetime() {
        let t0 = now();
        let ca = generate_ca("kv", t0).expect("ca");
        let leaf = member_leaf(&ca, LeafKind::Peer, "kv-peer", "ns", t0);
        let cases = [
            (0i64, false),
            (30, false),
            (59, false),
            (61, true),
            (89, true),
            (120, true),
        ];
        for (days, want) in cases {
            let at = t0 + time::Duration::days(days);
            assert_eq!(
                needs_renewal(&leaf.cert, at).expect("parse"),
                want,
                "day {days}"
            );
        }
        // With a renew-before setting: that long before expiry, but never right after issue.
        let expiry = t0 + time::Duration::days(90);
        let week = Some(7 * DAY);
        let at = renew_at(&leaf.cert, week).expect("parse");
        assert_eq!(at, (expiry - time::Duration::days(7)).unix_timestamp());
        let at = renew_at(&leaf.cert, Some(365 * DAY)).expect("parse");
        assert_eq!(at, t0.unix_timestamp() + MIN_AGE_SECS);
        // The CA itself is far from renewal when its leaves are renewed.
        assert!(!needs_renewal(&ca.cert, t0 + time::Duration::days(365)).expect("parse"));
    }

    fn certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        rustls_pemfile::certs(&mut pem.as_bytes())
            .collect::<std::result::Result<_, _>>()
            .expect("certs")
    }
    fn key(pem: &str) -> rustls::pki_types::PrivateKeyDer<'static> {
        rustls_pemfile::private_key(&mut pem.as_bytes())
            .expect("key")
            .expect("some key")
    }

    /// Runs a mutual-TLS handshake and one echo over it; `Err` carries the failure text.
    async fn handshake(
        server: &LeafPem,
        client: &LeafPem,
        server_name: &str,
    ) -> std::result::Result<(), String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&server.ca) {
            roots.add(c).map_err(|e| e.to_string())?;
        }
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| e.to_string())?;
        let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&server.cert), key(&server.key))
            .map_err(|e| e.to_string())?;
        let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs(&client.cert), key(&client.key))
            .map_err(|e| e.to_string())?;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let srv = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            tls.write_all(&buf).await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let client_res = async {
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            if &buf != b"ping" {
                return Err("echo mismatch".to_string());
            }
            Ok(())
        }
        .await;
        let srv_res = srv.await.map_err(|e| e.to_string())?;
        client_res?;
        srv_res
    }

    #[tokio::test]
    async fn mutual_tls_handshake_with_generated_chain() {
        let t = now();
        let ca = generate_ca("kv", t).expect("ca");
        let server = member_leaf(&ca, LeafKind::Server, "kv-server", "ns", t);
        let client = issue_leaf(&ca, LeafKind::Client, "ferrokv-operator", &[], t, 90 * DAY)
            .expect("client");
        for name in [
            "kv-3.kv-peer.ns.svc",
            "kv-client.ns.svc",
            "localhost",
            "127.0.0.1",
        ] {
            handshake(&server, &client, name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // Wrong names are refused: proves the SAN check is real.
        let err = handshake(&server, &client, "kv-0.other-peer.ns.svc")
            .await
            .expect_err("wrong name");
        assert!(
            err.contains("NotValidForName") || err.contains("not valid"),
            "{err}"
        );
        // A client certificate from another cluster's CA is refused by the server.
        let other_ca = generate_ca("other", t).expect("ca");
        let stranger =
            issue_leaf(&other_ca, LeafKind::Client, "x", &[], t, 90 * DAY).expect("client");
        assert!(handshake(&server, &stranger, "localhost").await.is_err());
    }

    #[tokio::test]
    async fn expired_leaf_is_refused_and_detected() {
        let t = now() - time::Duration::days(100);
        let ca = generate_ca("kv", t).expect("ca");
        let server = member_leaf(&ca, LeafKind::Server, "kv", "ns", t);
        let client = issue_leaf(&ca, LeafKind::Client, "op", &[], now(), 90 * DAY).expect("client");
        assert!(needs_renewal(&server.cert, now()).expect("parse"));
        let err = handshake(&server, &client, "localhost")
            .await
            .expect_err("expired");
        assert!(err.to_lowercase().contains("expired"), "{err}");
        let renewed = member_leaf(&ca, LeafKind::Server, "kv", "ns", now());
        assert!(!needs_renewal(&renewed.cert, now()).expect("parse"));
        handshake(&renewed, &client, "localhost")
            .await
            .expect("renewed handshake");
    }
}
