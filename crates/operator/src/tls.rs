//! The TLS material of a cluster: which Secrets to read, which certificates are still good,
//! which must be issued or renewed, the operator's own client identity, the hash recorded on
//! member pods and when the next renewal is due. A renewal only rewrites Secrets: members
//! reload renewed certificates from their Secret volumes, so no pod restarts for it.
//!
//! Owns the rules of `spec.tls.mode` (`Disabled`, user `Secrets`, operator-issued `Auto`).
//! Pure: it works on Secrets that `observe` read and returns certificates for `build` to put
//! into Secrets; it must not read or write anything itself. It runs before `plan`, because the
//! plan compares each pod's configuration hash with the one derived here.

use crate::certs::{self, CaPem, LeafKind, LeafPem};
use crate::members::ClientTls;
use crate::resources::{secret_str, Names};
use crate::{Error, Result, MANAGER};
use ferrokv_cluster_api::{EtcdCluster, TlsMode};
use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;

/// What the rest of the reconcile needs: the operator's client identity, the hash recorded
/// on pods and the next renewal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsState {
    pub client: Option<ClientTls>,
    pub config_hash: String,
    /// When (unix seconds) the first operator-issued leaf is due for renewal: the reconcile
    /// is scheduled for then instead of waiting for the periodic re-check.
    pub renew_at: Option<i64>,
}

/// A certificate issued by this reconcile, to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issued {
    /// A new CA, stored in the named Secret (`<cluster>-ca` or `<cluster>-peer-ca`).
    Ca { secret: String, pem: CaPem },
    /// A new or renewed leaf, stored in the named Secret.
    Leaf { secret: String, pem: LeafPem },
}

/// The outcome of `resolve`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub state: TlsState,
    /// Certificates to store, in the order they were issued (the CA first).
    pub issued: Vec<Issued>,
    /// Secrets of `issued` that replace a certificate (a renewal, not a first issue).
    pub renewed: Vec<String>,
}

/// A Secret `resolve` looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRead {
    pub name: String,
    /// A user's Secret must exist; an operator-issued one is issued when it is missing.
    pub required: bool,
}

/// The Secrets `resolve` needs to see, in the order to read them.
pub fn secrets_to_read(ec: &EtcdCluster, names: &Names) -> Result<Vec<SecretRead>> {
    let read = |required| move |name: String| SecretRead { name, required };
    Ok(match ec.spec.tls.mode {
        TlsMode::Disabled => Vec::new(),
        TlsMode::Secrets => {
            let user = user_secrets(ec)?;
            [&user.server, &user.peer, &user.client]
                .into_iter()
                .cloned()
                .map(read(true))
                .collect()
        }
        TlsMode::Auto => [names.ca_secret(), names.peer_ca_secret()]
            .into_iter()
            .chain(leaves(names).into_iter().map(|l| l.secret))
            .map(read(false))
            .collect(),
    })
}

fn user_secrets(ec: &EtcdCluster) -> Result<&ferrokv_cluster_api::TlsSecrets> {
    ec.spec
        .tls
        .secrets
        .as_ref()
        .ok_or_else(|| Error::InvalidSpec("tls.mode is Secrets but tls.secrets is not set".into()))
}

/// Which CA signs a leaf. Peers have their own, and members trust only it on the peer port,
/// so a client certificate (signed by the cluster CA) cannot complete mutual TLS there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signer {
    Cluster,
    Peer,
}

/// One operator-issued leaf certificate.
struct Leaf {
    secret: String,
    signer: Signer,
    kind: LeafKind,
    common_name: String,
    sans: Vec<String>,
}

/// The leaves of `Auto` mode, in the order they are checked and issued: server, peer, the
/// operator's client, the users' client.
fn leaves(names: &Names) -> [Leaf; 4] {
    let sans = certs::member_sans(&names.cluster, &names.namespace);
    let leaf = |secret, signer, kind, common_name, sans| Leaf {
        secret,
        signer,
        kind,
        common_name,
        sans,
    };
    [
        leaf(
            names.server_secret(),
            Signer::Cluster,
            LeafKind::Server,
            format!("{}-server", names.cluster),
            sans.clone(),
        ),
        leaf(
            names.peer_secret(),
            Signer::Peer,
            LeafKind::Peer,
            format!("{}-peer", names.cluster),
            sans,
        ),
        leaf(
            names.operator_client_secret(),
            Signer::Cluster,
            LeafKind::Client,
            MANAGER.to_string(),
            Vec::new(),
        ),
        leaf(
            names.client_secret(),
            Signer::Cluster,
            LeafKind::Client,
            format!("{}-client", names.cluster),
            Vec::new(),
        ),
    ]
}

/// Hash of the member certificates: a pod started with other certificates is rolled.
pub fn config_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn leaf_lifetime(ec: &EtcdCluster) -> Duration {
    let days = ec
        .spec
        .tls
        .certificate_lifetime_days
        .unwrap_or(certs::DEFAULT_LEAF_DAYS);
    Duration::from_secs(u64::from(days) * 86400)
}

fn client_identity(leaf: &LeafPem) -> ClientTls {
    ClientTls {
        ca: leaf.ca.clone(),
        cert: leaf.cert.clone(),
        key: leaf.key.clone(),
    }
}

/// Decides the TLS material from the Secrets read (`secrets`, by name; missing ones absent):
/// keeps what is present and fresh, issues what is missing, renews what is near expiry or
/// signed by another CA.
pub fn resolve(
    ec: &EtcdCluster,
    names: &Names,
    secrets: &BTreeMap<String, Secret>,
    now: OffsetDateTime,
    renew_before: Option<Duration>,
) -> Result<Tls> {
    let field = |secret: &str, key| {
        secrets
            .get(secret)
            .and_then(|s| secret_str(s, key))
            .unwrap_or_default()
    };
    match ec.spec.tls.mode {
        TlsMode::Disabled => return Ok(Tls::default()),
        TlsMode::Secrets => {
            let user = user_secrets(ec)?;
            let state = TlsState {
                client: Some(ClientTls {
                    ca: field(&user.client, "ca.crt"),
                    cert: field(&user.client, "tls.crt"),
                    key: field(&user.client, "tls.key"),
                }),
                config_hash: config_hash(&[
                    &field(&user.server, "tls.crt"),
                    &field(&user.peer, "tls.crt"),
                ]),
                renew_at: None,
            };
            return Ok(Tls {
                state,
                ..Tls::default()
            });
        }
        TlsMode::Auto => {}
    }

    let mut issued = Vec::new();
    let mut ca_of = |secret: String, subject: &str| -> Result<CaPem> {
        let stored = secrets.get(&secret).and_then(|s| {
            Some(CaPem {
                cert: secret_str(s, "ca.crt")?,
                key: secret_str(s, "ca.key")?,
            })
        });
        match stored {
            Some(ca) => Ok(ca),
            None => {
                let pem = certs::generate_ca(subject, now)?;
                issued.push(Issued::Ca {
                    secret,
                    pem: pem.clone(),
                });
                Ok(pem)
            }
        }
    };
    let cluster_ca = ca_of(names.ca_secret(), &names.cluster)?;
    // A cluster from before the peer CA gets one here; its peer leaf, signed by the cluster
    // CA, is then renewed below and the members roll onto it.
    let peer_ca = ca_of(names.peer_ca_secret(), &format!("{}-peer", names.cluster))?;

    let mut pems = Vec::with_capacity(4);
    let mut renewed = Vec::new();
    let mut renew_at: Option<i64> = None;
    for leaf in leaves(names) {
        let ca = match leaf.signer {
            Signer::Cluster => &cluster_ca,
            Signer::Peer => &peer_ca,
        };
        let fresh = secrets.get(&leaf.secret).and_then(|s| {
            let cert = secret_str(s, "tls.crt")?;
            let key = secret_str(s, "tls.key")?;
            let same_ca = secret_str(s, "ca.crt").as_deref() == Some(ca.cert.as_str());
            let due = certs::renew_at(&cert, renew_before).ok()?;
            let renew = now.unix_timestamp() >= due;
            (same_ca && !renew).then(|| LeafPem {
                cert,
                key,
                ca: ca.cert.clone(),
            })
        });
        let pem = match fresh {
            Some(pem) => pem,
            None => {
                if secrets.contains_key(&leaf.secret) {
                    renewed.push(leaf.secret.clone());
                }
                let pem = certs::issue_leaf(
                    ca,
                    leaf.kind,
                    &leaf.common_name,
                    &leaf.sans,
                    now,
                    leaf_lifetime(ec),
                )?;
                issued.push(Issued::Leaf {
                    secret: leaf.secret,
                    pem: pem.clone(),
                });
                pem
            }
        };
        if let Ok(due) = certs::renew_at(&pem.cert, renew_before) {
            renew_at = Some(renew_at.map_or(due, |r| r.min(due)));
        }
        pems.push(pem);
    }
    let [server, peer, operator, _users] = pems.as_slice() else {
        return Err(Error::Certificate("expected four leaf certificates".into()));
    };
    Ok(Tls {
        state: TlsState {
            client: Some(client_identity(operator)),
            config_hash: config_hash(&[&server.cert, &peer.cert]),
            renew_at,
        },
        issued,
        renewed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::cluster;
    use crate::resources::{ca_secret, tls_secret};

    fn stored(ec: &EtcdCluster, secrets: &[(&str, &LeafPem)]) -> BTreeMap<String, Secret> {
        secrets
            .iter()
            .map(|(n, l)| (n.to_string(), tls_secret(ec, n, l).expect("secret")))
            .collect()
    }

    #[test]
    fn auto_mode_issues_everything_for_a_new_cluster() {
        let ec = cluster("kv", 3);
        let names = Names::of(&ec).expect("names");
        let now = OffsetDateTime::now_utc();
        let tls = resolve(&ec, &names, &BTreeMap::new(), now, None).expect("tls");
        let issued: Vec<&str> = tls
            .issued
            .iter()
            .map(|i| match i {
                Issued::Ca { secret, .. } => secret.as_str(),
                Issued::Leaf { secret, .. } => secret.as_str(),
            })
            .collect();
        assert_eq!(
            issued,
            [
                "kv-ca",
                "kv-peer-ca",
                "kv-server-tls",
                "kv-peer-tls",
                "kv-operator-client-tls",
                "kv-client-tls"
            ]
        );
        // The peer leaf is signed by the peer CA alone, every other leaf by the cluster CA.
        let ca_of = |name: &str| {
            tls.issued.iter().find_map(|i| match i {
                Issued::Ca { secret, pem } if secret == name => Some(pem.cert.clone()),
                _ => None,
            })
        };
        let (cluster_ca, peer_ca) = (ca_of("kv-ca"), ca_of("kv-peer-ca"));
        assert_ne!(cluster_ca, peer_ca);
        for i in &tls.issued {
            if let Issued::Leaf { secret, pem } = i {
                let want = if secret == "kv-peer-tls" {
                    &peer_ca
                } else {
                    &cluster_ca
                };
                assert_eq!(Some(&pem.ca), want.as_ref(), "{secret}");
            }
        }
        let want: Vec<String> = secrets_to_read(&ec, &names)
            .expect("reads")
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(want, issued, "reads what it would issue");
    }

    #[test]
    fn user_secrets_are_read_not_issued() {
        let mut ec = crate::resources::fixtures::user_secrets_cluster("kv", 3);
        let names = Names::of(&ec).expect("names");
        let reads = secrets_to_read(&ec, &names).expect("reads");
        assert!(reads.iter().all(|r| r.required));
        let now = OffsetDateTime::now_utc();
        let ca = certs::generate_ca("kv", now).expect("ca");
        let day = Duration::from_secs(86400);
        let leaf = |kind, cn| certs::issue_leaf(&ca, kind, cn, &[], now, day).expect("leaf");
        let (server, peer, client) = (
            leaf(LeafKind::Server, "s"),
            leaf(LeafKind::Peer, "p"),
            leaf(LeafKind::Client, "c"),
        );
        let secrets = stored(
            &ec,
            &[
                ("my-server", &server),
                ("my-peer", &peer),
                ("my-client", &client),
            ],
        );
        let tls = resolve(&ec, &names, &secrets, now, None).expect("tls");
        assert!(tls.issued.is_empty());
        assert_eq!(tls.state.client, Some(client_identity(&client)));
        assert_eq!(
            tls.state.config_hash,
            config_hash(&[&server.cert, &peer.cert])
        );

        ec.spec.tls.secrets = None;
        assert!(matches!(
            secrets_to_read(&ec, &names),
            Err(Error::InvalidSpec(_))
        ));
    }

    /// A cluster from before the peer CA: its peer leaf was signed by the cluster CA. It gets
    /// a peer CA and a peer leaf from it (so members roll onto it); the rest is kept.
    #[test]
    fn a_cluster_without_a_peer_ca_gets_one_and_a_new_peer_leaf() {
        let ec = cluster("kv", 3);
        let names = Names::of(&ec).expect("names");
        let now = OffsetDateTime::now_utc();
        let ca = certs::generate_ca("kv", now).expect("ca");
        let day = Duration::from_secs(86400);
        let leaf = |kind, cn| certs::issue_leaf(&ca, kind, cn, &[], now, 90 * day).expect("leaf");
        let mut secrets = stored(
            &ec,
            &[
                ("kv-server-tls", &leaf(LeafKind::Server, "kv-server")),
                ("kv-peer-tls", &leaf(LeafKind::Peer, "kv-peer")),
                ("kv-operator-client-tls", &leaf(LeafKind::Client, MANAGER)),
                ("kv-client-tls", &leaf(LeafKind::Client, "kv-client")),
            ],
        );
        secrets.insert("kv-ca".into(), ca_secret(&ec, "kv-ca", &ca).expect("ca"));
        let tls = resolve(&ec, &names, &secrets, now, None).expect("tls");
        let issued: Vec<&str> = tls
            .issued
            .iter()
            .map(|i| match i {
                Issued::Ca { secret, .. } | Issued::Leaf { secret, .. } => secret.as_str(),
            })
            .collect();
        assert_eq!(issued, ["kv-peer-ca", "kv-peer-tls"]);
    }

    #[test]
    fn leaves_of_another_ca_are_reissued_and_the_stored_ca_is_kept() {
        let ec = cluster("kv", 3);
        let names = Names::of(&ec).expect("names");
        let now = OffsetDateTime::now_utc();
        let ca = certs::generate_ca("kv", now).expect("ca");
        let other = certs::generate_ca("other", now).expect("ca");
        let day = Duration::from_secs(86400);
        let peer_ca = certs::generate_ca("kv-peer", now).expect("peer ca");
        let good = certs::issue_leaf(&peer_ca, LeafKind::Peer, "kv-peer", &[], now, 90 * day)
            .expect("leaf");
        let foreign = certs::issue_leaf(&other, LeafKind::Server, "kv-server", &[], now, 90 * day)
            .expect("leaf");
        let mut secrets = stored(&ec, &[("kv-server-tls", &foreign), ("kv-peer-tls", &good)]);
        secrets.insert("kv-ca".into(), ca_secret(&ec, "kv-ca", &ca).expect("ca"));
        secrets.insert(
            "kv-peer-ca".into(),
            ca_secret(&ec, "kv-peer-ca", &peer_ca).expect("peer ca"),
        );
        let tls = resolve(&ec, &names, &secrets, now, None).expect("tls");
        let issued: Vec<&str> = tls
            .issued
            .iter()
            .filter_map(|i| match i {
                Issued::Ca { .. } => None,
                Issued::Leaf { secret, pem } => {
                    assert_eq!(pem.ca, ca.cert);
                    Some(secret.as_str())
                }
            })
            .collect();
        assert_eq!(issued.len(), tls.issued.len(), "both CAs are kept");
        // Only the server leaf was there before: the other two are first issues.
        assert_eq!(tls.renewed, ["kv-server-tls"]);
        assert_eq!(
            issued,
            ["kv-server-tls", "kv-operator-client-tls", "kv-client-tls"]
        );
    }
}
