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
use kube::ResourceExt;
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
    /// A leaf Secret rewritten with the same certificate and another trust bundle (the first
    /// and last steps of a CA rotation); `since` is recorded on the Secret.
    Trust {
        secret: String,
        pem: LeafPem,
        since: i64,
    },
}

/// Annotation on a leaf Secret: when (unix seconds) its trust bundle last changed.
pub const TRUSTED_SINCE_ANNOTATION: &str = "ferrokv.io/trusted-since";

/// How certificates are renewed: the operator's `--cert-renew-before` and
/// `--cert-rotation-wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Renew a leaf this long before it expires; `None`: at two thirds of its lifetime.
    pub renew_before: Option<Duration>,
    /// How long each step of a CA rotation waits for the changed Secrets to reach every
    /// member's volume (kubelet: its sync period plus its Secret cache, about a minute).
    pub rotation_wait: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            renew_before: None,
            rotation_wait: Duration::from_secs(120),
        }
    }
}

/// The outcome of `resolve`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub state: TlsState,
    /// Certificates to store, in the order they were issued (the CA first).
    pub issued: Vec<Issued>,
    /// Secrets of `issued` that replace a certificate (a renewal, not a first issue).
    pub renewed: Vec<String>,
    /// What this reconcile did for a CA rotation: (step 1..=3, one line per Secret).
    pub rotated: Vec<(u8, String)>,
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

/// Hash of the member certificates, recorded on pods. Nothing restarts a pod on it: members
/// reload renewed certificates from their volumes.
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
    policy: &Policy,
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
    // CA, is then moved to it by the CA rotation below (trust first, then a new leaf).
    let peer_ca = ca_of(names.peer_ca_secret(), &format!("{}-peer", names.cluster))?;

    let all = leaves(names);
    let stored: Vec<Option<Stored>> = all
        .iter()
        .map(|l| secrets.get(&l.secret).and_then(Stored::of))
        .collect();
    let now_s = now.unix_timestamp();
    let rotation_of = |signer: Signer, ca: &CaPem| {
        let group: Vec<&Stored> = all
            .iter()
            .zip(&stored)
            .filter(|(l, _)| l.signer == signer)
            .filter_map(|(_, s)| s.as_ref())
            .collect();
        Rotation::of(&group, ca, now_s, policy.rotation_wait)
    };
    let rotations = [
        (Signer::Cluster, rotation_of(Signer::Cluster, &cluster_ca)),
        (Signer::Peer, rotation_of(Signer::Peer, &peer_ca)),
    ];

    let mut pems = Vec::with_capacity(4);
    let mut renewed = Vec::new();
    let mut rotated = Vec::new();
    let mut renew_at: Option<i64> = None;
    let mut soonest = |at: i64| renew_at = Some(renew_at.map_or(at, |r: i64| r.min(at)));
    for (leaf, stored) in all.into_iter().zip(stored) {
        let ca = match leaf.signer {
            Signer::Cluster => &cluster_ca,
            Signer::Peer => &peer_ca,
        };
        let rotation = rotations
            .iter()
            .find(|(s, _)| *s == leaf.signer)
            .map(|(_, r)| r.clone())
            .unwrap_or_default();
        if let Some(at) = rotation.next_step_at() {
            soonest(at);
        }
        let new_ca = norm(&ca.cert);
        // What a leaf issued now carries as its trust: the signing CA first, then the CAs
        // still in use while a rotation runs.
        let trust = bundle(std::iter::once(new_ca.clone()).chain(rotation.old.iter().cloned()));
        let issue = |issued: &mut Vec<Issued>| -> Result<LeafPem> {
            let mut pem = certs::issue_leaf(
                ca,
                leaf.kind,
                &leaf.common_name,
                &leaf.sans,
                now,
                leaf_lifetime(ec),
            )?;
            pem.ca = trust.clone();
            issued.push(Issued::Leaf {
                secret: leaf.secret.clone(),
                pem: pem.clone(),
            });
            Ok(pem)
        };
        let pem = match stored {
            None => issue(&mut issued)?,
            Some(st) => {
                let signed_by_new = st.bundle.first() == Some(&new_ca);
                let due = certs::renew_at(&st.cert, policy.renew_before).unwrap_or(now_s);
                match rotation.phase {
                    // Step 1: every member must trust the new CA before any presents a
                    // certificate from it, so the bundle changes first and the leaf stays.
                    Phase::Trust if !st.bundle.contains(&new_ca) => {
                        let mut b = st.bundle.clone();
                        b.push(new_ca.clone());
                        let pem = st.with_bundle(bundle(b));
                        rotated.push((
                            1,
                            format!(
                                "{} trusts the new CA besides the old one (CA rotation 1/3)",
                                leaf.secret
                            ),
                        ));
                        issued.push(Issued::Trust {
                            secret: leaf.secret.clone(),
                            pem: pem.clone(),
                            since: now_s,
                        });
                        pem
                    }
                    // Step 2, once the bundles reached every member: leaves from the new CA.
                    Phase::Reissue if !signed_by_new => {
                        rotated.push((
                            2,
                            format!("{} re-issued by the new CA (CA rotation 2/3)", leaf.secret),
                        ));
                        issue(&mut issued)?
                    }
                    // Step 3, once the new leaves reached every member: the old CA goes.
                    Phase::Trim if st.bundle != [new_ca.clone()] => {
                        let pem = st.with_bundle(bundle([new_ca.clone()]));
                        rotated.push((
                            3,
                            format!(
                                "{} no longer trusts the old CA (CA rotation 3/3)",
                                leaf.secret
                            ),
                        ));
                        issued.push(Issued::Trust {
                            secret: leaf.secret.clone(),
                            pem: pem.clone(),
                            since: now_s,
                        });
                        pem
                    }
                    _ if now_s >= due => {
                        renewed.push(leaf.secret.clone());
                        issue(&mut issued)?
                    }
                    _ => st.with_bundle(bundle(st.bundle.clone())),
                }
            }
        };
        if let Ok(due) = certs::renew_at(&pem.cert, policy.renew_before) {
            soonest(due);
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
        rotated,
    })
}

/// A leaf Secret as stored: its certificate and key, the CAs of its `ca.crt` (the signer
/// first) and when its bundle last changed.
struct Stored {
    cert: String,
    key: String,
    bundle: Vec<String>,
    since: i64,
}

impl Stored {
    fn of(s: &Secret) -> Option<Stored> {
        Some(Stored {
            cert: secret_str(s, "tls.crt")?,
            key: secret_str(s, "tls.key")?,
            bundle: pem_certs(&secret_str(s, "ca.crt").unwrap_or_default()),
            since: s
                .annotations()
                .get(TRUSTED_SINCE_ANNOTATION)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        })
    }

    fn with_bundle(&self, ca: String) -> LeafPem {
        LeafPem {
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca,
        }
    }
}

/// Where a CA rotation of one signer stands. A new CA (its Secret deleted, or a cluster from
/// before the peer CA) is rolled out in three steps, each after the previous one reached
/// every member (`rotation_wait`), so that no two members ever fail to trust each other:
/// the bundles trust both CAs, then the leaves come from the new CA, then the old CA leaves
/// the bundles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rotation {
    phase: Phase,
    /// The CAs other than the signer that the leaves' bundles still hold (unexpired).
    old: Vec<String>,
    /// When the step that waits now may go ahead.
    waits_until: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Phase {
    /// No rotation: the bundles hold the signer alone.
    #[default]
    None,
    Trust,
    Reissue,
    Trim,
    /// The last step has not reached every member yet.
    Waiting,
}

impl Rotation {
    fn of(group: &[&Stored], ca: &CaPem, now: i64, wait: Duration) -> Rotation {
        let new_ca = norm(&ca.cert);
        let mut old: Vec<String> = Vec::new();
        for s in group {
            for c in &s.bundle {
                let expired = certs::validity_of(c).map_or(true, |(_, na)| na <= now);
                if *c != new_ca && !expired && !old.contains(c) {
                    old.push(c.clone());
                }
            }
        }
        if old.is_empty() {
            return Rotation::default();
        }
        let wait = i64::try_from(wait.as_secs()).unwrap_or(i64::MAX);
        let (phase, waits_until) = if group.iter().any(|s| !s.bundle.contains(&new_ca)) {
            (Phase::Trust, None)
        } else if group.iter().any(|s| s.bundle.first() != Some(&new_ca)) {
            let ready = group.iter().map(|s| s.since).max().unwrap_or(0) + wait;
            if now >= ready {
                (Phase::Reissue, None)
            } else {
                (Phase::Waiting, Some(ready))
            }
        } else {
            // Every leaf is the new CA's; their issue time (not before, back-dated five
            // minutes) says when they were written.
            let issued = group
                .iter()
                .filter_map(|s| certs::validity_of(&s.cert).ok())
                .map(|(nb, _)| nb + 300)
                .max()
                .unwrap_or(0);
            let ready = issued + wait;
            if now >= ready {
                (Phase::Trim, None)
            } else {
                (Phase::Waiting, Some(ready))
            }
        };
        Rotation {
            phase,
            old,
            waits_until,
        }
    }

    /// When the reconcile should look again for this rotation's next step.
    fn next_step_at(&self) -> Option<i64> {
        self.waits_until
    }
}

/// The certificates of a PEM bundle, each as `-----BEGIN ... END CERTIFICATE-----\n`.
fn pem_certs(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = bundle;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let stop = start + end + END.len();
        out.push(norm(&rest[start..stop]));
        rest = &rest[stop..];
    }
    out
}

/// One certificate's PEM in the form bundles are compared in.
fn norm(pem: &str) -> String {
    format!("{}\n", pem.trim().replace("\r\n", "\n"))
}

fn bundle(certs: impl IntoIterator<Item = String>) -> String {
    certs.into_iter().collect()
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
        let tls = resolve(&ec, &names, &BTreeMap::new(), now, &Policy::default()).expect("tls");
        let issued: Vec<&str> = tls
            .issued
            .iter()
            .map(|i| match i {
                Issued::Ca { secret, .. }
                | Issued::Leaf { secret, .. }
                | Issued::Trust { secret, .. } => secret.as_str(),
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
        let tls = resolve(&ec, &names, &secrets, now, &Policy::default()).expect("tls");
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
    /// a peer CA, which the peer leaf's bundle trusts first (a CA rotation's first step, so
    /// no member is refused by another); the rest is kept.
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
        let tls = resolve(&ec, &names, &secrets, now, &Policy::default()).expect("tls");
        assert_eq!(
            names_of(&tls),
            [("ca", "kv-peer-ca"), ("trust", "kv-peer-tls")]
        );
    }

    /// Stores what `resolve` issued, as `build` and `apply` would.
    fn store(ec: &EtcdCluster, secrets: &mut BTreeMap<String, Secret>, tls: &Tls) {
        for i in &tls.issued {
            let (name, secret) = match i {
                Issued::Ca { secret, pem } => (secret, ca_secret(ec, secret, pem).expect("ca")),
                Issued::Leaf { secret, pem } => (secret, tls_secret(ec, secret, pem).expect("tls")),
                Issued::Trust { secret, pem, since } => {
                    let mut s = tls_secret(ec, secret, pem).expect("tls");
                    s.metadata.annotations = Some(BTreeMap::from([(
                        TRUSTED_SINCE_ANNOTATION.to_string(),
                        since.to_string(),
                    )]));
                    (secret, s)
                }
            };
            secrets.insert(name.clone(), secret);
        }
    }

    fn names_of(tls: &Tls) -> Vec<(&'static str, &str)> {
        tls.issued
            .iter()
            .map(|i| match i {
                Issued::Ca { secret, .. } => ("ca", secret.as_str()),
                Issued::Leaf { secret, .. } => ("leaf", secret.as_str()),
                Issued::Trust { secret, .. } => ("trust", secret.as_str()),
            })
            .collect()
    }

    /// A new cluster CA (its Secret deleted) is rolled out in three steps, each after the
    /// previous one had `rotation_wait` to reach the members: the bundles trust both CAs
    /// (certificates unchanged), then the leaves come from the new CA, then the old CA goes.
    /// The peer CA's leaf is not touched.
    #[test]
    fn a_new_ca_is_trusted_first_then_issues_then_the_old_one_goes() {
        let ec = cluster("kv", 3);
        let names = Names::of(&ec).expect("names");
        let policy = Policy::default();
        let wait = time::Duration::seconds(120);
        let t0 = OffsetDateTime::now_utc();
        let mut secrets = BTreeMap::new();
        let first = resolve(&ec, &names, &secrets, t0, &policy).expect("tls");
        store(&ec, &mut secrets, &first);
        let leaf_of = |secrets: &BTreeMap<String, Secret>, name: &str, key: &str| {
            secret_str(&secrets[name], key).expect("field")
        };
        let old_ca = leaf_of(&secrets, "kv-ca", "ca.crt");
        let old_server = leaf_of(&secrets, "kv-server-tls", "tls.crt");
        let peer = leaf_of(&secrets, "kv-peer-tls", "tls.crt");
        assert!(resolve(&ec, &names, &secrets, t0, &policy)
            .expect("tls")
            .issued
            .is_empty());

        secrets.remove("kv-ca");
        let t1 = t0 + time::Duration::seconds(10);
        let step1 = resolve(&ec, &names, &secrets, t1, &policy).expect("tls");
        assert_eq!(
            names_of(&step1),
            [
                ("ca", "kv-ca"),
                ("trust", "kv-server-tls"),
                ("trust", "kv-operator-client-tls"),
                ("trust", "kv-client-tls")
            ]
        );
        store(&ec, &mut secrets, &step1);
        let new_ca = leaf_of(&secrets, "kv-ca", "ca.crt");
        assert_ne!(new_ca, old_ca);
        let bundle = leaf_of(&secrets, "kv-server-tls", "ca.crt");
        assert_eq!(pem_certs(&bundle), [norm(&old_ca), norm(&new_ca)]);
        assert_eq!(leaf_of(&secrets, "kv-server-tls", "tls.crt"), old_server);
        assert_eq!(step1.rotated.len(), 3);
        // The operator's identity trusts both while the rotation runs.
        let client = step1.state.client.clone().expect("client");
        assert_eq!(pem_certs(&client.ca).len(), 2);

        // Not before the bundles had time to reach the members.
        let early = resolve(&ec, &names, &secrets, t1 + wait / 2, &policy).expect("tls");
        assert!(early.issued.is_empty(), "{:?}", names_of(&early));
        assert_eq!(early.state.renew_at, Some((t1 + wait).unix_timestamp()));

        let t2 = t1 + wait;
        let step2 = resolve(&ec, &names, &secrets, t2, &policy).expect("tls");
        assert_eq!(
            names_of(&step2),
            [
                ("leaf", "kv-server-tls"),
                ("leaf", "kv-operator-client-tls"),
                ("leaf", "kv-client-tls")
            ]
        );
        store(&ec, &mut secrets, &step2);
        let bundle = leaf_of(&secrets, "kv-server-tls", "ca.crt");
        assert_eq!(pem_certs(&bundle), [norm(&new_ca), norm(&old_ca)]);
        assert_ne!(leaf_of(&secrets, "kv-server-tls", "tls.crt"), old_server);
        assert!(resolve(&ec, &names, &secrets, t2 + wait / 2, &policy)
            .expect("tls")
            .issued
            .is_empty());

        let t3 = t2 + wait;
        let step3 = resolve(&ec, &names, &secrets, t3, &policy).expect("tls");
        assert_eq!(
            names_of(&step3),
            [
                ("trust", "kv-server-tls"),
                ("trust", "kv-operator-client-tls"),
                ("trust", "kv-client-tls")
            ]
        );
        store(&ec, &mut secrets, &step3);
        let bundle = leaf_of(&secrets, "kv-server-tls", "ca.crt");
        assert_eq!(pem_certs(&bundle), [norm(&new_ca)]);
        let done = resolve(&ec, &names, &secrets, t3 + wait, &policy).expect("tls");
        assert!(done.issued.is_empty(), "{:?}", names_of(&done));
        assert_eq!(
            leaf_of(&secrets, "kv-peer-tls", "tls.crt"),
            peer,
            "peer leaf kept"
        );
    }
}
