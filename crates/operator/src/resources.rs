//! Builders of the Kubernetes objects of one `EtcdCluster`: Services, member Pods and PVCs,
//! the PodDisruptionBudget and the TLS Secrets. Pure: they take the resource and plain values
//! and return objects ready for server-side apply; no client, no I/O.

use crate::certs::{CaPem, LeafPem};
use crate::plan::quorum;
use crate::{Error, Result};
use ferrokv_cluster_api::{AutoCompactionMode, EtcdCluster, TlsMode};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod,
    PodSecurityContext, PodSpec, Probe, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

pub const CLIENT_PORT: i32 = 2379;
pub const PEER_PORT: i32 = 2380;
pub const METRICS_PORT: i32 = 2381;
pub const DATA_DIR: &str = "/var/lib/ferrokv";
pub const SERVER_TLS_DIR: &str = "/etc/ferrokv/server-tls";
pub const PEER_TLS_DIR: &str = "/etc/ferrokv/peer-tls";
/// Pod annotation with the hash of the certificates the member was started with. A record
/// only: members reload renewed certificates from their Secret volumes, so nothing restarts a
/// pod whose hash is old.
pub const CONFIG_HASH_ANNOTATION: &str = "ferrokv.io/config-hash";
/// Label naming the member a pod or PVC belongs to.
pub const MEMBER_LABEL: &str = "ferrokv.io/member";
pub const DEFAULT_IMAGE_REPO: &str = "ghcr.io/ferrokv/ferrokv";

/// Labels shared by every object of a cluster; also the member pod selector.
pub fn cluster_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "ferrokv".to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            cluster.to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "ferrokv-operator".to_string(),
        ),
    ])
}

/// Label selector string of member pods (for `/scale` and list calls).
pub fn selector_string(cluster: &str) -> String {
    cluster_labels(cluster)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn member_labels(cluster: &str, member: &str) -> BTreeMap<String, String> {
    let mut l = cluster_labels(cluster);
    l.insert("app.kubernetes.io/component".into(), "member".into());
    l.insert(MEMBER_LABEL.into(), member.into());
    l
}

/// Names of the objects of a cluster, in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub cluster: String,
    pub namespace: String,
}

impl Names {
    pub fn of(ec: &EtcdCluster) -> Result<Self> {
        Ok(Self {
            cluster: ec.name_any(),
            namespace: ec
                .namespace()
                .ok_or(Error::MissingField("metadata.namespace"))?,
        })
    }
    pub fn peer_service(&self) -> String {
        format!("{}-peer", self.cluster)
    }
    pub fn client_service(&self) -> String {
        format!("{}-client", self.cluster)
    }
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.cluster)
    }
    /// CA of the peer certificates only (members trust nothing else on the peer port).
    pub fn peer_ca_secret(&self) -> String {
        format!("{}-peer-ca", self.cluster)
    }
    pub fn server_secret(&self) -> String {
        format!("{}-server-tls", self.cluster)
    }
    pub fn peer_secret(&self) -> String {
        format!("{}-peer-tls", self.cluster)
    }
    /// Client certificate the operator uses.
    pub fn operator_client_secret(&self) -> String {
        format!("{}-operator-client-tls", self.cluster)
    }
    /// Client certificate for users and applications.
    pub fn client_secret(&self) -> String {
        format!("{}-client-tls", self.cluster)
    }
    /// Stable DNS name of a member (pod hostname + subdomain of the headless Service).
    pub fn member_host(&self, member: &str) -> String {
        format!("{member}.{}.{}.svc", self.peer_service(), self.namespace)
    }
}

/// `https` when the cluster uses TLS.
pub fn scheme(ec: &EtcdCluster) -> &'static str {
    if ec.spec.tls.mode == TlsMode::Disabled {
        "http"
    } else {
        "https"
    }
}

pub fn peer_url(ec: &EtcdCluster, names: &Names, member: &str) -> String {
    format!("{}://{}:{PEER_PORT}", scheme(ec), names.member_host(member))
}

pub fn client_url(ec: &EtcdCluster, names: &Names, member: &str) -> String {
    format!(
        "{}://{}:{CLIENT_PORT}",
        scheme(ec),
        names.member_host(member)
    )
}

/// The member name encoded in a peer URL (`scheme://<member>.<peer-svc>...:port`).
pub fn member_from_peer_url(url: &str) -> Option<String> {
    let host = url.split("://").nth(1)?.split([':', '/']).next()?;
    let first = host.split('.').next()?;
    (!first.is_empty()).then(|| first.to_string())
}

fn owner(ec: &EtcdCluster) -> Result<OwnerReference> {
    ec.controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))
}

fn meta(
    ec: &EtcdCluster,
    names: &Names,
    name: String,
    labels: BTreeMap<String, String>,
) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels),
        owner_references: Some(vec![owner(ec)?]),
        ..ObjectMeta::default()
    })
}

fn port(name: &str, p: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: p,
        target_port: Some(IntOrString::Int(p)),
        ..ServicePort::default()
    }
}

/// Headless Service giving each member pod a stable DNS name. It publishes not-ready
/// addresses because members must reach each other before any of them is Ready.
pub fn peer_service(ec: &EtcdCluster) -> Result<Service> {
    let names = Names::of(ec)?;
    Ok(Service {
        metadata: meta(
            ec,
            &names,
            names.peer_service(),
            cluster_labels(&names.cluster),
        )?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(cluster_labels(&names.cluster)),
            ports: Some(vec![port("client", CLIENT_PORT), port("peer", PEER_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// ClusterIP Service clients connect to; only Ready members receive traffic.
pub fn client_service(ec: &EtcdCluster) -> Result<Service> {
    let names = Names::of(ec)?;
    Ok(Service {
        metadata: meta(
            ec,
            &names,
            names.client_service(),
            cluster_labels(&names.cluster),
        )?,
        spec: Some(ServiceSpec {
            selector: Some(cluster_labels(&names.cluster)),
            ports: Some(vec![port("client", CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// Allows voluntary disruption of at most as many members as the cluster can lose and keep
/// quorum (0 for one member, 1 for three, 2 for five), as `minAvailable: <quorum>`.
///
/// Not `maxUnavailable`: with it (or a percentage) the disruption controller must resolve the
/// pods' controller through its `/scale` subresource, and on a real kube-controller-manager
/// that fails for an EtcdCluster created within its 30 s discovery refresh of a new CRD; the
/// controller then fails safe to 0 allowed disruptions and does not look again until a pod
/// changes. An integer `minAvailable` is computed from the matching pods alone.
pub fn pod_disruption_budget(ec: &EtcdCluster) -> Result<PodDisruptionBudget> {
    let names = Names::of(ec)?;
    let n = usize::try_from(ec.spec.replicas.max(1)).unwrap_or(1);
    let keep = i32::try_from(quorum(n)).unwrap_or(i32::MAX);
    Ok(PodDisruptionBudget {
        metadata: meta(
            ec,
            &names,
            names.cluster.clone(),
            cluster_labels(&names.cluster),
        )?,
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(keep)),
            selector: Some(LabelSelector {
                match_labels: Some(cluster_labels(&names.cluster)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    })
}

/// The data claim of a member (same name as the member).
pub fn member_pvc(ec: &EtcdCluster, member: &str) -> Result<PersistentVolumeClaim> {
    let names = Names::of(ec)?;
    let size = ec
        .spec
        .storage
        .size
        .clone()
        .unwrap_or_else(|| Quantity("1Gi".into()));
    Ok(PersistentVolumeClaim {
        metadata: meta(
            ec,
            &names,
            member.to_string(),
            member_labels(&names.cluster, member),
        )?,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: ec.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), size)])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    })
}

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialState {
    New,
    Existing,
}

/// Inputs of a member pod besides the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPod<'a> {
    pub member: &'a str,
    /// Names of every member the new one must know, itself included.
    pub initial_members: Vec<String>,
    pub state: InitialState,
    pub config_hash: &'a str,
}

/// Image of the member container.
pub fn image(ec: &EtcdCluster) -> String {
    match (&ec.spec.image, &ec.spec.version) {
        (Some(i), _) => i.clone(),
        (None, Some(v)) => format!("{DEFAULT_IMAGE_REPO}:{v}"),
        (None, None) => format!("{DEFAULT_IMAGE_REPO}:{}", env!("CARGO_PKG_VERSION")),
    }
}

/// The `Status` version a member of `image` reports, when the image's tag says it: an etcd
/// image tagged `v3.6.16` or `3.6.16-0` reports `3.6.16`. ferrokv reports the etcd API version
/// it serves rather than its own release, and an untagged or digest reference says nothing.
pub fn expected_version(image: &str) -> Option<String> {
    if MemberImage::of(image) != MemberImage::Etcd || image.contains('@') {
        return None;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    let tag = last.split_once(':')?.1.trim_start_matches('v');
    let version = tag.split('-').next().unwrap_or(tag);
    let numeric = version.split('.').count() == 3
        && version
            .split('.')
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    numeric.then(|| version.to_string())
}

/// Name of the member pod's container.
pub const MEMBER_CONTAINER: &str = "member";

/// The member's flags; etcd's names, so the same pod works with an etcd image.
pub fn member_args(ec: &EtcdCluster, p: &MemberPod<'_>) -> Result<Vec<String>> {
    let names = Names::of(ec)?;
    let s = scheme(ec);
    let initial = p
        .initial_members
        .iter()
        .map(|m| format!("{m}={}", peer_url(ec, &names, m)))
        .collect::<Vec<_>>()
        .join(",");
    let mut a = vec![
        format!("--name={}", p.member),
        format!("--data-dir={}", crate::restore::data_dir(ec)),
        format!("--listen-client-urls={s}://0.0.0.0:{CLIENT_PORT}"),
        format!(
            "--advertise-client-urls={}",
            client_url(ec, &names, p.member)
        ),
        format!("--listen-peer-urls={s}://0.0.0.0:{PEER_PORT}"),
        format!(
            "--initial-advertise-peer-urls={}",
            peer_url(ec, &names, p.member)
        ),
        format!("--initial-cluster={initial}"),
        format!(
            "--initial-cluster-state={}",
            match p.state {
                InitialState::New => "new",
                InitialState::Existing => "existing",
            }
        ),
        format!(
            "--initial-cluster-token={}-{}",
            names.namespace, names.cluster
        ),
        format!("--listen-metrics-urls=http://0.0.0.0:{METRICS_PORT}"),
    ];
    let o = &ec.spec.options;
    if let Some(v) = o.snapshot_count {
        a.push(format!("--snapshot-count={v}"));
    }
    if let Some(v) = o.heartbeat_interval {
        a.push(format!("--heartbeat-interval={v}"));
    }
    if let Some(v) = o.election_timeout {
        a.push(format!("--election-timeout={v}"));
    }
    if let Some(v) = o.quota_backend_bytes {
        a.push(format!("--quota-backend-bytes={v}"));
    }
    if let Some(c) = &o.auto_compaction {
        let mode = match c.mode {
            AutoCompactionMode::Periodic => "periodic",
            AutoCompactionMode::Revision => "revision",
        };
        a.push(format!("--auto-compaction-mode={mode}"));
        a.push(format!("--auto-compaction-retention={}", c.retention));
    }
    if let Some(c) = &o.corruption_check {
        // The `--experimental-` names: etcd 3.4 to 3.6 and ferrokv all take them.
        if let Some(v) = c.initial {
            a.push(format!("--experimental-initial-corrupt-check={v}"));
        }
        if let Some(v) = c.periodic_seconds {
            a.push(format!("--experimental-corrupt-check-time={v}s"));
        }
        if let Some(v) = c.compact_hash {
            a.push(format!("--experimental-compact-hash-check-enabled={v}"));
        }
        if let Some(v) = c.compact_hash_seconds {
            a.push(format!("--experimental-compact-hash-check-time={v}s"));
        }
        if let Some(v) = c.verify_on_open {
            a.push(format!("--keyspace-verify-on-open={v}"));
        }
    }
    if ec.spec.tls.mode != TlsMode::Disabled {
        a.extend([
            format!("--cert-file={SERVER_TLS_DIR}/tls.crt"),
            format!("--key-file={SERVER_TLS_DIR}/tls.key"),
            format!("--trusted-ca-file={SERVER_TLS_DIR}/ca.crt"),
            "--client-cert-auth".to_string(),
            format!("--peer-cert-file={PEER_TLS_DIR}/tls.crt"),
            format!("--peer-key-file={PEER_TLS_DIR}/tls.key"),
            format!("--peer-trusted-ca-file={PEER_TLS_DIR}/ca.crt"),
            "--peer-client-cert-auth".to_string(),
        ]);
    }
    Ok(a)
}

/// Secret names mounted into members: user Secrets or the operator-issued ones.
pub fn member_tls_secrets(ec: &EtcdCluster, names: &Names) -> Option<(String, String)> {
    match (ec.spec.tls.mode, &ec.spec.tls.secrets) {
        (TlsMode::Disabled, _) => None,
        (TlsMode::Secrets, Some(s)) => Some((s.server.clone(), s.peer.clone())),
        _ => Some((names.server_secret(), names.peer_secret())),
    }
}

/// What the member image serves on its metrics port, which the probes must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberImage {
    /// ferrokv: `/readyz` and `/livez`.
    Ferrokv,
    /// An etcd image: etcd 3.4 serves only `/health` and `/metrics` there (`/readyz` and
    /// `/livez` came with 3.5 and would be 404s), so the pods would never become Ready.
    Etcd,
}

impl MemberImage {
    /// An image whose repository's last path segment is `etcd` (`quay.io/coreos/etcd:v3.4.23`,
    /// `registry.k8s.io/etcd:3.5.9-0`) is etcd; anything else takes ferrokv's probes.
    pub fn of(image: &str) -> Self {
        // Drop a digest and a tag (a colon after the last slash; one before it is a port).
        let repo = image.split('@').next().unwrap_or(image);
        let last = repo.rsplit('/').next().unwrap_or(repo);
        let name = last.split(':').next().unwrap_or(last);
        if name == "etcd" {
            MemberImage::Etcd
        } else {
            MemberImage::Ferrokv
        }
    }

    /// (readiness, liveness) paths on the metrics port. etcd's `/health` fails without a
    /// leader, which is right for readiness but would restart every member of a cluster that
    /// lost quorum, so its liveness asks `/metrics`, which a running process always serves.
    pub fn probe_paths(self) -> (&'static str, &'static str) {
        match self {
            MemberImage::Ferrokv => ("/readyz", "/livez"),
            MemberImage::Etcd => ("/health", "/metrics"),
        }
    }
}

fn probe(path: &str, initial_delay: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(METRICS_PORT),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(5),
        timeout_seconds: Some(3),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// Uid and gid member containers run as: non-root (PodSecurity `restricted` admits only
/// non-root pods) and fixed, so a member restarted on its claim owns the files it wrote.
/// 65532 is the `nonroot` user of distroless images.
pub const MEMBER_UID: i64 = 65532;

/// Pod-level security: non-root, the runtime's default seccomp profile, and `fsGroup` so the
/// kubelet makes the data volume writable for `MEMBER_UID`.
fn member_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(MEMBER_UID),
        run_as_group: Some(MEMBER_UID),
        fs_group: Some(MEMBER_UID),
        // A large claim is not re-chowned on every start, only when its root is not ours.
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// Container-level security of `restricted`: a member needs no capability and no privilege
/// escalation (it binds ports above 1024 and writes only its data directory).
pub(crate) fn member_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

/// One member pod. Its hostname and subdomain give it the stable DNS name the certificates
/// and `--initial-cluster` use.
pub fn member_pod(ec: &EtcdCluster, p: &MemberPod<'_>) -> Result<Pod> {
    let names = Names::of(ec)?;
    let mut metadata = meta(
        ec,
        &names,
        p.member.to_string(),
        member_labels(&names.cluster, p.member),
    )?;
    metadata.annotations = Some(BTreeMap::from([(
        CONFIG_HASH_ANNOTATION.to_string(),
        p.config_hash.to_string(),
    )]));

    let data = if ec.spec.storage.empty_dir {
        Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }
    } else {
        Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: p.member.to_string(),
                read_only: None,
            }),
            ..Volume::default()
        }
    };
    let mut volumes = vec![data];
    let mut mounts = vec![VolumeMount {
        name: "data".into(),
        mount_path: DATA_DIR.into(),
        ..VolumeMount::default()
    }];
    if let Some((server, peer)) = member_tls_secrets(ec, &names) {
        for (vol, secret, dir) in [
            ("server-tls", server, SERVER_TLS_DIR),
            ("peer-tls", peer, PEER_TLS_DIR),
        ] {
            volumes.push(Volume {
                name: vol.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: vol.into(),
                mount_path: dir.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
    }
    let (readiness_path, liveness_path) = MemberImage::of(&image(ec)).probe_paths();
    let container = Container {
        name: MEMBER_CONTAINER.into(),
        image: Some(image(ec)),
        args: Some(member_args(ec, p)?),
        ports: Some(vec![
            ContainerPort {
                name: Some("client".into()),
                container_port: CLIENT_PORT,
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("peer".into()),
                container_port: PEER_PORT,
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("metrics".into()),
                container_port: METRICS_PORT,
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(probe(readiness_path, 5, 3)),
        // Generous: a member replaying a long WAL must not be killed into a restart loop.
        liveness_probe: Some(probe(liveness_path, 15, 8)),
        resources: ec.spec.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(member_container_security()),
        // A member that refuses to start (its corruption check failed) says why in its last
        // log lines; this makes them the container's termination message, where `observe`
        // reads them.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    // A cluster restored from a backup: the seed's first pod restores it first.
    let data_mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == DATA_DIR)
        .cloned();
    let init = data_mount.and_then(|m| crate::restore::init_container(ec, &names, p, m));
    let init_containers = init.map(|(c, extra)| {
        volumes.extend(extra);
        vec![c]
    });
    Ok(Pod {
        metadata,
        spec: Some(PodSpec {
            hostname: Some(p.member.to_string()),
            subdomain: Some(names.peer_service()),
            containers: vec![container],
            init_containers,
            volumes: Some(volumes),
            restart_policy: Some("Always".into()),
            node_selector: ec.spec.node_selector.clone(),
            affinity: ec.spec.affinity.clone(),
            tolerations: ec.spec.tolerations.clone(),
            topology_spread_constraints: ec.spec.topology_spread_constraints.clone(),
            security_context: Some(member_pod_security()),
            ..PodSpec::default()
        }),
        status: None,
    })
}

fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

/// A CA (`ca.crt`, `ca.key`) in Secret `name`: the cluster CA or the peer CA.
pub fn ca_secret(ec: &EtcdCluster, name: &str, ca: &CaPem) -> Result<Secret> {
    let names = Names::of(ec)?;
    Ok(Secret {
        metadata: meta(ec, &names, name.to_string(), cluster_labels(&names.cluster))?,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            ("ca.crt".to_string(), bytes(&ca.cert)),
            ("ca.key".to_string(), bytes(&ca.key)),
        ])),
        ..Secret::default()
    })
}

/// A `kubernetes.io/tls` Secret with the CA alongside.
pub fn tls_secret(ec: &EtcdCluster, name: &str, leaf: &LeafPem) -> Result<Secret> {
    let names = Names::of(ec)?;
    Ok(Secret {
        metadata: meta(ec, &names, name.to_string(), cluster_labels(&names.cluster))?,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_string(), bytes(&leaf.cert)),
            ("tls.key".to_string(), bytes(&leaf.key)),
            ("ca.crt".to_string(), bytes(&leaf.ca)),
        ])),
        ..Secret::default()
    })
}

/// Reads a PEM entry of a Secret.
pub fn secret_str(secret: &Secret, key: &str) -> Option<String> {
    let b = secret.data.as_ref()?.get(key)?;
    String::from_utf8(b.0.clone()).ok()
}

#[cfg(test)]
pub(crate) mod fixtures {
    use ferrokv_cluster_api::{EtcdCluster, EtcdClusterSpec};

    /// An `EtcdCluster` as the API server would return it.
    pub fn cluster(name: &str, replicas: i32) -> EtcdCluster {
        let mut spec: EtcdClusterSpec =
            serde_json::from_value(serde_json::json!({ "replicas": replicas })).expect("spec");
        spec.version = Some("0.1.0".into());
        let mut ec = EtcdCluster::new(name, spec);
        ec.metadata.namespace = Some("prod".into());
        ec.metadata.uid = Some("uid-1".into());
        ec.metadata.generation = Some(1);
        ec
    }

    /// A cluster with `tls.mode: Secrets` naming `my-server`, `my-peer` and `my-client`.
    pub fn user_secrets_cluster(name: &str, replicas: i32) -> EtcdCluster {
        let mut ec = cluster(name, replicas);
        ec.spec.tls.mode = ferrokv_cluster_api::TlsMode::Secrets;
        ec.spec.tls.secrets = Some(ferrokv_cluster_api::TlsSecrets {
            server: "my-server".into(),
            peer: "my-peer".into(),
            client: "my-client".into(),
        });
        ec
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::cluster;
    use super::*;
    use serde_json::json;

    /// `options.corruptionCheck` becomes etcd's `--experimental-` flags (and ferrokv's check
    /// at open); unset fields add nothing.
    #[test]
    fn corruption_check_options_become_flags() {
        let mut ec = fixtures::cluster("kv", 3);
        ec.spec.options.corruption_check = Some(ferrokv_cluster_api::CorruptionCheck {
            initial: Some(false),
            periodic_seconds: Some(2),
            compact_hash: Some(true),
            compact_hash_seconds: None,
            verify_on_open: Some(false),
        });
        let p = MemberPod {
            member: "kv-0",
            initial_members: vec!["kv-0".into()],
            state: InitialState::New,
            config_hash: "",
        };
        let args = member_args(&ec, &p).expect("args");
        let got: Vec<&str> = args
            .iter()
            .map(String::as_str)
            .filter(|a| a.contains("corrupt") || a.contains("hash-check") || a.contains("verify"))
            .collect();
        assert_eq!(
            got,
            [
                "--experimental-initial-corrupt-check=false",
                "--experimental-corrupt-check-time=2s",
                "--experimental-compact-hash-check-enabled=true",
                "--keyspace-verify-on-open=false"
            ]
        );
        ec.spec.options.corruption_check = None;
        let args = member_args(&ec, &p).expect("args");
        assert!(!args.iter().any(|a| a.contains("corrupt")), "{args:?}");
    }

    #[test]
    fn member_pod_is_exact() {
        let mut ec = cluster("kv", 3);
        ec.spec.options.snapshot_count = Some(5000);
        let pod = member_pod(
            &ec,
            &MemberPod {
                member: "kv-3",
                initial_members: vec!["kv-0".into(), "kv-3".into()],
                state: InitialState::Existing,
                config_hash: "abc",
            },
        )
        .expect("pod");
        let got = serde_json::to_value(&pod).expect("json");
        let owner = json!([{"apiVersion": "ferrokv.io/v1alpha1", "kind": "EtcdCluster", "name": "kv", "uid": "uid-1", "controller": true}]);
        let labels = json!({"app.kubernetes.io/name": "ferrokv", "app.kubernetes.io/instance": "kv", "app.kubernetes.io/managed-by": "ferrokv-operator", "app.kubernetes.io/component": "member", "ferrokv.io/member": "kv-3"});
        let probe = |path: &str, delay: i32, fail: i32| json!({"httpGet": {"path": path, "port": 2381, "scheme": "HTTP"}, "initialDelaySeconds": delay, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": fail});
        let want = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "kv-3", "namespace": "prod", "labels": labels, "annotations": {"ferrokv.io/config-hash": "abc"}, "ownerReferences": owner},
            "spec": {
                "hostname": "kv-3",
                "subdomain": "kv-peer",
                "restartPolicy": "Always",
                "securityContext": {
                    "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                    "fsGroup": 65532, "fsGroupChangePolicy": "OnRootMismatch",
                    "seccompProfile": {"type": "RuntimeDefault"}
                },
                "containers": [{
                    "name": "member",
                    "image": "ghcr.io/ferrokv/ferrokv:0.1.0",
                    "args": [
                        "--name=kv-3",
                        "--data-dir=/var/lib/ferrokv",
                        "--listen-client-urls=https://0.0.0.0:2379",
                        "--advertise-client-urls=https://kv-3.kv-peer.prod.svc:2379",
                        "--listen-peer-urls=https://0.0.0.0:2380",
                        "--initial-advertise-peer-urls=https://kv-3.kv-peer.prod.svc:2380",
                        "--initial-cluster=kv-0=https://kv-0.kv-peer.prod.svc:2380,kv-3=https://kv-3.kv-peer.prod.svc:2380",
                        "--initial-cluster-state=existing",
                        "--initial-cluster-token=prod-kv",
                        "--listen-metrics-urls=http://0.0.0.0:2381",
                        "--snapshot-count=5000",
                        "--cert-file=/etc/ferrokv/server-tls/tls.crt",
                        "--key-file=/etc/ferrokv/server-tls/tls.key",
                        "--trusted-ca-file=/etc/ferrokv/server-tls/ca.crt",
                        "--client-cert-auth",
                        "--peer-cert-file=/etc/ferrokv/peer-tls/tls.crt",
                        "--peer-key-file=/etc/ferrokv/peer-tls/tls.key",
                        "--peer-trusted-ca-file=/etc/ferrokv/peer-tls/ca.crt",
                        "--peer-client-cert-auth"
                    ],
                    "ports": [
                        {"name": "client", "containerPort": 2379},
                        {"name": "peer", "containerPort": 2380},
                        {"name": "metrics", "containerPort": 2381}
                    ],
                    "readinessProbe": probe("/readyz", 5, 3),
                    "livenessProbe": probe("/livez", 15, 8),
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]},
                        "runAsNonRoot": true,
                        "seccompProfile": {"type": "RuntimeDefault"}
                    },
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "volumeMounts": [
                        {"name": "data", "mountPath": "/var/lib/ferrokv"},
                        {"name": "server-tls", "mountPath": "/etc/ferrokv/server-tls", "readOnly": true},
                        {"name": "peer-tls", "mountPath": "/etc/ferrokv/peer-tls", "readOnly": true}
                    ]
                }],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "kv-3"}},
                    {"name": "server-tls", "secret": {"secretName": "kv-server-tls"}},
                    {"name": "peer-tls", "secret": {"secretName": "kv-peer-tls"}}
                ]
            }
        });
        assert_eq!(got, want);
    }

    #[test]
    fn expected_versions_come_from_etcd_tags_only() {
        for (image, want) in [
            ("quay.io/coreos/etcd:v3.6.16", Some("3.6.16")),
            ("registry.k8s.io/etcd:3.5.9-0", Some("3.5.9")),
            ("localhost:5000/etcd:v3.4.23", Some("3.4.23")),
            ("quay.io/coreos/etcd:latest", None),
            ("quay.io/coreos/etcd", None),
            ("registry.k8s.io/etcd@sha256:abc", None),
            ("ghcr.io/ferrokv/ferrokv:0.1.1", None),
        ] {
            assert_eq!(expected_version(image).as_deref(), want, "{image}");
        }
    }

    #[test]
    fn probes_match_what_the_image_serves() {
        for (img, want) in [
            ("ghcr.io/ferrokv/ferrokv:0.1.0", MemberImage::Ferrokv),
            ("quay.io/coreos/etcd:v3.4.23", MemberImage::Etcd),
            ("registry.k8s.io/etcd:3.5.9-0", MemberImage::Etcd),
            ("localhost:5000/etcd", MemberImage::Etcd),
            ("gcr.io/etcd-development/etcd@sha256:abc", MemberImage::Etcd),
            ("example.com/etcd-proxy:1", MemberImage::Ferrokv),
            ("localhost:5000/ferrokv:dev", MemberImage::Ferrokv),
        ] {
            assert_eq!(MemberImage::of(img), want, "{img}");
        }
        let mut ec = cluster("kv", 3);
        ec.spec.image = Some("quay.io/coreos/etcd:v3.4.23".into());
        let pod = member_pod(
            &ec,
            &MemberPod {
                member: "kv-0",
                initial_members: vec!["kv-0".into()],
                state: InitialState::New,
                config_hash: "",
            },
        )
        .expect("pod");
        let c = serde_json::to_value(&pod.spec.expect("spec").containers[0]).expect("json");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], 2381);
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/metrics");
    }

    #[test]
    fn plain_text_empty_dir_seed() {
        let mut ec = cluster("kv", 1);
        ec.spec.tls.mode = TlsMode::Disabled;
        ec.spec.storage.empty_dir = true;
        let p = MemberPod {
            member: "kv-0",
            initial_members: vec!["kv-0".into()],
            state: InitialState::New,
            config_hash: "",
        };
        let pod = serde_json::to_value(member_pod(&ec, &p).expect("pod")).expect("json");
        assert_eq!(
            pod["spec"]["volumes"],
            json!([{"name": "data", "emptyDir": {}}])
        );
        let args = member_args(&ec, &p).expect("args");
        assert!(
            args.contains(&"--initial-cluster=kv-0=http://kv-0.kv-peer.prod.svc:2380".to_string())
        );
        assert!(args.contains(&"--initial-cluster-state=new".to_string()));
        assert!(!args.iter().any(|a| a.contains("cert")), "{args:?}");
    }

    #[test]
    fn pdb_keeps_quorum() {
        // (replicas, members that must stay up): a majority.
        for (replicas, keep) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4), (9, 5)] {
            let pdb = pod_disruption_budget(&cluster("kv", replicas)).expect("pdb");
            let spec = pdb.spec.expect("spec");
            assert_eq!(
                spec.min_available,
                Some(IntOrString::Int(keep)),
                "replicas {replicas}"
            );
            assert_eq!(spec.max_unavailable, None, "replicas {replicas}");
        }
    }

    #[test]
    fn services_are_exact() {
        let ec = cluster("kv", 3);
        let peer = serde_json::to_value(peer_service(&ec).expect("svc")).expect("json");
        assert_eq!(peer["metadata"]["name"], "kv-peer");
        assert_eq!(
            peer["spec"],
            json!({"clusterIP": "None", "publishNotReadyAddresses": true,
                   "selector": {"app.kubernetes.io/instance": "kv", "app.kubernetes.io/managed-by": "ferrokv-operator", "app.kubernetes.io/name": "ferrokv"},
                   "ports": [{"name": "client", "port": 2379, "targetPort": 2379}, {"name": "peer", "port": 2380, "targetPort": 2380}]})
        );
        let client = serde_json::to_value(client_service(&ec).expect("svc")).expect("json");
        assert_eq!(client["metadata"]["name"], "kv-client");
        assert_eq!(
            client["spec"]["ports"],
            json!([{"name": "client", "port": 2379, "targetPort": 2379}])
        );
        assert!(client["spec"].get("clusterIP").is_none());
    }

    #[test]
    fn pvc_uses_size_and_class() {
        let mut ec = cluster("kv", 3);
        ec.spec.storage.size = Some(Quantity("8Gi".into()));
        ec.spec.storage.storage_class_name = Some("fast".into());
        let pvc = serde_json::to_value(member_pvc(&ec, "kv-2").expect("pvc")).expect("json");
        assert_eq!(
            pvc["spec"],
            json!({"accessModes": ["ReadWriteOnce"], "storageClassName": "fast", "resources": {"requests": {"storage": "8Gi"}}})
        );
    }

    #[test]
    fn member_names_from_peer_urls() {
        let cases = [
            ("https://kv-3.kv-peer.prod.svc:2380", Some("kv-3")),
            ("http://127.0.0.1:2380", Some("127")),
            ("kv-3", None),
            ("https://", None),
        ];
        for (url, want) in cases {
            assert_eq!(member_from_peer_url(url).as_deref(), want, "{url}");
        }
    }
}
