//! The `EtcdCluster` custom resource (`ferrokv.io/v1alpha1`).
//!
//! This crate owns only the shape of the API: the spec a user writes and the status the
//! operator reports, with `///` docs that become the schema descriptions of the generated CRD.
//! It must not depend on the operator, on any client code or on the member crates, so that
//! other tools (CLIs, tests, other controllers) can read and write `EtcdCluster` objects
//! without pulling in the controller.

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// API group of every ferrokv resource.
pub const GROUP: &str = "ferrokv.io";
/// Served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Largest cluster the operator manages; beyond this raft write latency grows with no gain in
/// fault tolerance worth having.
pub const MAX_REPLICAS: i32 = 9;

/// Condition types the operator sets on `status.conditions`.
pub mod condition {
    /// Quorum is up and every voter the spec asks for is a healthy member.
    pub const AVAILABLE: &str = "Available";
    /// A membership or rolling change is in flight.
    pub const PROGRESSING: &str = "Progressing";
    /// Some member is unhealthy, or the spec is invalid and cannot be acted on.
    pub const DEGRADED: &str = "Degraded";
    /// The last backup attempt succeeded and no schedule was missed (only with `spec.backup`).
    pub const BACKUP_READY: &str = "BackupReady";
    /// The last restore drill restored the newest backup and it matched what was recorded
    /// when it was taken (only with `spec.backup.verify`).
    pub const BACKUP_VERIFIED: &str = "BackupVerified";
}

/// A replicated ferrokv (or etcd) cluster managed by the ferrokv operator.
///
/// The operator creates one Pod and one PersistentVolumeClaim per member, a headless Service
/// for peer traffic, a client Service, certificates and a PodDisruptionBudget, and changes
/// membership one member at a time through the etcd v3 Cluster API.
// Two printer columns share `type_ = "integer"`, which clippy mistakes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "ferrokv.io",
    version = "v1alpha1",
    kind = "EtcdCluster",
    namespaced,
    status = "EtcdClusterStatus",
    shortname = "etcdc",
    category = "ferrokv",
    derive = "PartialEq",
    doc = "A replicated ferrokv (etcd-compatible) cluster managed by the ferrokv operator.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyMembers",
        description = "members whose pod is Ready"
    ),
    printcolumn(
        name = "Members",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "current members (voters and learners)"
    ),
    printcolumn(
        name = "Leader",
        type_ = "string",
        json_path = ".status.leader",
        description = "name of the raft leader"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = quantity_patterns)]
#[schemars(extend("x-kubernetes-validations" = [{"rule": "has(self.restore) == has(oldSelf.restore)", "message": "spec.restore can only be set when the cluster is created"}]))]
pub struct EtcdClusterSpec {
    /// Number of voting members. 1 to 9; odd sizes are recommended because an even size
    /// tolerates no more failures than the odd size below it. The API server refuses other
    /// sizes; one stored before this rule (or written around it) is reported with a
    /// `Degraded` condition and the operator waits for a spec change.
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,

    /// Member version, used as the image tag when `image` is not set (e.g. `0.1.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,

    /// Full container image of the member (e.g. `ghcr.io/ferrokv/ferrokv:0.1.0`, or an etcd
    /// image: the member flags are etcd's). Overrides `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Where each member keeps its data directory.
    #[serde(default)]
    pub storage: StorageSpec,

    /// Transport security for client and peer traffic.
    #[serde(default)]
    pub tls: TlsSpec,

    /// Tuning flags passed to every member.
    #[serde(default)]
    pub options: MemberOptions,

    /// When the operator gives up on a member and replaces it.
    #[serde(default)]
    pub repair: RepairSpec,

    /// CPU and memory requests/limits of the member container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels a member pod must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Affinity rules of member pods (e.g. anti-affinity across nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Tolerations of member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// Topology spread constraints of member pods (e.g. across zones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,

    /// Scheduled snapshot backups to object storage, taken by the operator from a healthy
    /// member (a follower where there is one), with retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,

    /// Bootstrap this new cluster from a backup (new cluster id, exactly the backup's
    /// data): the seed member's first pod restores it in an init container and the others
    /// join as learners. Only at creation, and immutable after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "spec.restore is immutable"}]))]
    pub restore: Option<RestoreSpec>,
}

/// The grammar of a Kubernetes quantity (`resource.Quantity`), the pattern controller-gen
/// puts on quantity fields. Without it the API server stores `size: lots` and refuses only
/// the claim built from it, with a 500 that looks transient.
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// Adds `QUANTITY_PATTERN` to every quantity in the spec's schema (storage size, resource
/// requests and limits). Quantities are the only int-or-string fields of the spec, and the
/// pattern constrains only their string form.
fn quantity_patterns(schema: &mut schemars::Schema) {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                if map.get("x-kubernetes-int-or-string") == Some(&serde_json::Value::Bool(true)) {
                    map.insert("pattern".into(), QUANTITY_PATTERN.into());
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    if let Some(map) = schema.as_object_mut() {
        map.values_mut().for_each(walk);
    }
}

/// Grace periods of member replacement. A replacement costs a full data copy to the new
/// member, so a member that may come back (a slow restart, a paused VM) is given time first.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepairSpec {
    /// Seconds a voter may be unhealthy (its pod not Ready) before it is removed and replaced
    /// by a new member, when quorum allows (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub unhealthy_grace_seconds: Option<u32>,
    /// Seconds a new learner has to catch up with the leader before it is removed and a fresh
    /// one added (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub catch_up_grace_seconds: Option<u32>,
}

/// Data-directory storage of each member.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each member's PersistentVolumeClaim (default `1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,

    /// StorageClass of the claims; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,

    /// Use an `emptyDir` instead of a claim. Data is lost with the pod, which the operator
    /// treats as a failed member and replaces; for tests only.
    #[serde(default)]
    pub empty_dir: bool,
}

/// How certificates are obtained.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
pub enum TlsMode {
    /// The operator runs a CA per cluster and issues, renews and rolls all certificates.
    #[default]
    Auto,
    /// The user provides the Secrets named in `tls.secrets`.
    Secrets,
    /// Plain-text client and peer traffic (tests and trusted networks only).
    Disabled,
}

/// Transport security of the cluster.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// `Auto` (default), `Secrets` or `Disabled`.
    #[serde(default)]
    pub mode: TlsMode,

    /// With `mode: Secrets`: Secrets holding `tls.crt`, `tls.key` and `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<TlsSecrets>,

    /// With `mode: Auto`: lifetime of leaf certificates in days (default 90). They are
    /// renewed after two thirds of it and members are rolled one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub certificate_lifetime_days: Option<u32>,
}

/// Names of user-provided TLS Secrets (each with `tls.crt`, `tls.key`, `ca.crt`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSecrets {
    /// Server certificate for client traffic; its SANs must cover the member DNS names and
    /// the client Service.
    pub server: String,
    /// Peer certificate (used as both server and client between members).
    pub peer: String,
    /// Client certificate the operator uses to manage members.
    pub client: String,
}

/// Member tuning, passed as etcd-compatible flags.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberOptions {
    /// Applied entries between raft snapshots (`--snapshot-count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<u64>,
    /// Raft heartbeat interval in milliseconds (`--heartbeat-interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<u32>,
    /// Raft election timeout in milliseconds (`--election-timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election_timeout: Option<u32>,
    /// Backend size quota in bytes (`--quota-backend-bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_backend_bytes: Option<i64>,
    /// Automatic compaction of old revisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_compaction: Option<AutoCompaction>,
    /// The members' corruption checks; each unset field keeps the member's own default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corruption_check: Option<CorruptionCheck>,
}

/// The corruption checks of a member (etcd's `--experimental-*corrupt*` flags). A member
/// found corrupt (the CORRUPT alarm names it, or it refuses to start on the initial check) is
/// replaced by the operator when quorum allows.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CorruptionCheck {
    /// A restarting member compares its hash with its peers' before it serves
    /// (`--experimental-initial-corrupt-check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<bool>,
    /// Seconds between the leader's comparisons of every member's hash; 0 turns them off
    /// (`--experimental-corrupt-check-time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic_seconds: Option<u32>,
    /// The comparison of the hashes members take right after a compaction
    /// (`--experimental-compact-hash-check-enabled`; etcd 3.5 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_hash: Option<bool>,
    /// Seconds between the compaction-time comparisons (`--experimental-compact-hash-check-time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact_hash_seconds: Option<u32>,
    /// ferrokv only: verify the keyspace's checksums and latest/history rows when the member
    /// opens it (`--keyspace-verify-on-open`); etcd images refuse this flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_on_open: Option<bool>,
}

/// `--auto-compaction-mode` and `--auto-compaction-retention`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoCompaction {
    /// `periodic` (retention is a duration such as `1h`) or `revision` (retention is a count).
    pub mode: AutoCompactionMode,
    /// Retention, e.g. `1h` or `10000`.
    pub retention: String,
}

/// Compaction mode.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoCompactionMode {
    /// Keep a time window of revisions.
    Periodic,
    /// Keep a number of revisions.
    Revision,
}

/// A key of a Secret in the cluster's namespace.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Compression of backup objects.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupCompression {
    /// Stored as the member sent it.
    None,
    /// zstd (default): snapshots are mostly keys and values, which compress well.
    #[default]
    Zstd,
}

/// Where backups are stored, and how to reach the store. Shared by `spec.backup`,
/// `spec.restore` and `EtcdBackup`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStore {
    /// Store URL: `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` or
    /// `file:///path` (a mounted volume). Backups of a cluster are kept under
    /// `<prefix>/<namespace>/<cluster>/`.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^(s3|gs|az|file)://"))]
    pub destination: String,
    /// Endpoint of an S3-compatible server (MinIO, Ceph), e.g. `https://minio.example:9000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub endpoint: Option<String>,
    /// Path-style S3 addressing (`endpoint/bucket/key`), which most S3-compatible servers need.
    #[serde(default)]
    pub path_style: bool,
    /// S3 region (default `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub region: Option<String>,
    /// CA bundle (PEM) the store's TLS certificate is checked against, for a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
    /// Secret whose keys are the store's credentials, named as the store's environment
    /// variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (S3);
    /// `GOOGLE_SERVICE_ACCOUNT_JSON` (GCS); `AZURE_STORAGE_ACCOUNT_NAME`,
    /// `AZURE_STORAGE_ACCOUNT_KEY` (Azure). None for `file://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub credentials_secret: Option<String>,
    /// Key for client-side authenticated encryption of the backup objects (the Secret value
    /// is the key, as `ferrokv snapshot` takes it). Keep it elsewhere too: a backup cannot be restored without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_secret: Option<SecretKeyRef>,
}

/// How many backups are kept. The newest good backup is never deleted.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Keep at most this many backups of the cluster (the newest ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_last: Option<u32>,
    /// Delete backups older than this (`90m`, `36h`, `7d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(s|m|h|d)$"))]
    pub max_age: Option<String>,
}

/// Restore drills: the newest backup is downloaded, restored into a scratch ferrokv member
/// inside the operator pod, and compared with what was recorded when it was taken.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    /// Cron schedule of the drills (same syntax and time zone as `schedule`).
    #[schemars(length(min = 1, max = 256))]
    pub schedule: String,
}

/// Scheduled backups of the cluster.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Cron schedule: five fields (`0 */6 * * *`), or six with seconds first
    /// (`*/30 * * * * *`). Without it only on-demand `EtcdBackup`s are taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub schedule: Option<String>,
    /// IANA time zone the schedule is read in (default `UTC`), e.g. `Europe/Berlin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,
    /// The store.
    #[serde(flatten)]
    pub store: BackupStore,
    /// Retention of scheduled and on-demand backups.
    #[serde(default)]
    pub retention: RetentionSpec,
    /// `zstd` (default) or `none`.
    #[serde(default)]
    pub compression: BackupCompression,
    /// Restore drills of the newest backup; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
}

/// Which backup a new cluster is restored from.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSource {
    /// URI of one backup object (its `status.lastBackup.uri`). Overrides `revision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub uri: Option<String>,
    /// Cluster (`<namespace>/<name>`) whose backups under `destination` are chosen from; this
    /// cluster's own name when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 317))]
    pub cluster: Option<String>,
    /// The newest backup at or below this revision; the newest backup when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub revision: Option<i64>,
}

/// Bootstrap a new cluster from a backup.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// The store the backup is in.
    #[serde(flatten)]
    pub store: BackupStore,
    /// Which backup (default: the newest of this cluster's name).
    #[serde(default)]
    pub source: RestoreSource,
}

/// One backup, as its manifest describes it.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// When the snapshot was taken (RFC 3339).
    pub time: String,
    /// URI of the backup object.
    pub uri: String,
    /// Revision of the snapshot.
    pub revision: i64,
    /// Raft index of the member that sent it.
    #[serde(default)]
    pub raft_index: u64,
    /// Snapshot size in bytes (before compression and encryption).
    pub size: u64,
    /// Stored object size in bytes.
    #[serde(default)]
    pub stored_size: u64,
    /// sha256 (hex) of the snapshot as the member sent it.
    pub sha256: String,
    /// Cluster id (hex) of the cluster it was taken from.
    #[serde(default)]
    pub cluster_id: String,
    /// Member it was taken from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// Keys at `revision`, counted on that member right after the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<i64>,
    /// HashKV at `revision` on that member right after the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_kv: Option<u32>,
}

/// A backup a restore drill verified.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedBackup {
    /// When the drill ran (RFC 3339).
    pub time: String,
    /// URI of the backup.
    pub uri: String,
    /// Revision the restored member reported.
    pub revision: i64,
    /// Keys in the restored member.
    pub keys: i64,
    /// HashKV of the restored member at `revision`.
    pub hash_kv: u32,
}

/// Lifecycle of an on-demand backup.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum BackupPhase {
    /// Waiting for the cluster (another backup of it is running, or it has no healthy member).
    Pending,
    /// The snapshot is being streamed to the store.
    Running,
    /// The object and its manifest are stored.
    Succeeded,
    /// The attempt failed; `message` says why. Not retried: create a new `EtcdBackup`.
    Failed,
}

/// A backup of an `EtcdCluster` taken now, once.
// Two printer columns share `type_ = "string"`, which clippy mistakes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "ferrokv.io",
    version = "v1alpha1",
    kind = "EtcdBackup",
    namespaced,
    status = "EtcdBackupStatus",
    shortname = "etcdb",
    category = "ferrokv",
    derive = "PartialEq",
    doc = "A one-off backup of an EtcdCluster to object storage, taken by the ferrokv operator.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterName"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Revision",
        type_ = "integer",
        json_path = ".status.backup.revision"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EtcdBackupSpec {
    /// Name of the `EtcdCluster` in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub cluster_name: String,
    /// Store to write to; the cluster's `spec.backup` store when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<BackupStore>,
    /// `zstd` or `none`; the cluster's setting (else `zstd`) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<BackupCompression>,
}

/// Observed state of an `EtcdBackup`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdBackupStatus {
    /// Pending, Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// The backup's manifest, once Succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupRecord>,
    /// Why it is Pending or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Coarse lifecycle phase, for humans; automation should read the conditions.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum ClusterPhase {
    /// No member has answered yet.
    Creating,
    /// Members match the spec and all are healthy.
    Running,
    /// Members are being added or removed.
    Scaling,
    /// A member is unhealthy or being replaced, or the spec is invalid.
    Degraded,
}

/// Observed state of an `EtcdCluster`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdClusterStatus {
    /// Coarse phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClusterPhase>,
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Available`, `Progressing` and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Members as reported by the cluster's member list.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// Cluster id (hex) from the member list header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Name of the current raft leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Members whose pod is Ready (the client Service and the PDB count only those).
    #[serde(default)]
    pub ready_members: i32,
    /// Current number of members (for the `/scale` subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Label selector of member pods (for the `/scale` subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Ordinal the next new member gets. Member names are never reused, so this only grows.
    #[serde(default)]
    pub next_ordinal: u64,
    /// The newest backup the operator took successfully (scheduled or on demand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupRecord>,
    /// When the last scheduled backup attempt ran (successful or not); a schedule time
    /// after it that has passed without an attempt is a missed schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_attempt: Option<String>,
    /// The newest backup a restore drill verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified_backup: Option<VerifiedBackup>,
}

/// One member as seen through the etcd v3 API.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Member name (`<cluster>-<ordinal>`), also its pod name.
    pub name: String,
    /// Raft member id (hex).
    pub id: String,
    /// Non-voting learner that is still catching up.
    #[serde(default)]
    pub learner: bool,
    /// Current raft leader.
    #[serde(default)]
    pub leader: bool,
    /// Answered its status call.
    #[serde(default)]
    pub healthy: bool,
    /// Server version it reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Image its pod runs (an image upgrade rolls the pods one at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Backend size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_size: Option<i64>,
    /// Alarms raised for this member (`AlarmList`): `CORRUPT`, `NOSPACE`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alarms: Vec<String>,
    /// Why its data is known to be bad (the CORRUPT alarm, or its refusal to start on the
    /// corruption check); the operator replaces such a member when quorum allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_has_scale_status_and_columns() {
        let crd = EtcdCluster::crd();
        assert_eq!(crd.spec.group, GROUP);
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, VERSION);
        let sub = v.subresources.as_ref().expect("subresources");
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().expect("scale");
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        let cols: Vec<&str> = v
            .additional_printer_columns
            .as_ref()
            .expect("columns")
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Ready", "Members", "Leader", "Age"]);
    }

    #[test]
    fn minimal_spec_deserializes_with_defaults() {
        let spec: EtcdClusterSpec = serde_json::from_str(r#"{"replicas":3}"#).expect("parse");
        assert_eq!(spec.replicas, 3);
        assert_eq!(spec.tls.mode, TlsMode::Auto);
        assert!(!spec.storage.empty_dir);
        assert!(spec.backup.is_none());
    }

    #[test]
    fn replicas_and_quantities_are_bounded_in_the_schema() {
        let crd = serde_json::to_value(EtcdCluster::crd()).expect("json");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"];
        assert_eq!(spec["replicas"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(spec["replicas"]["maximum"].as_f64(), Some(9.0));
        assert_eq!(
            spec["storage"]["properties"]["size"]["pattern"],
            QUANTITY_PATTERN
        );
        for field in ["limits", "requests"] {
            assert_eq!(
                spec["resources"]["properties"][field]["additionalProperties"]["pattern"],
                QUANTITY_PATTERN,
                "{field}"
            );
        }
    }

    #[test]
    fn field_docs_become_schema_descriptions() {
        let crd = serde_json::to_value(EtcdCluster::crd()).expect("json");
        let replicas = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"]["replicas"];
        let desc = replicas["description"].as_str().unwrap_or_default();
        assert!(desc.contains("Number of voting members"), "{desc}");
    }
}
