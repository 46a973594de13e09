//! The command line of `ferrokv`, compatible with etcd's so that tools which launch `etcd`
//! (kubeadm manifests, test harnesses, operators) can launch `ferrokv` unchanged.
//!
//! Parsing is pure: [`parse`] takes the arguments and an env lookup and returns a
//! [`Command`], so every rule is unit-tested without touching the process environment.
//! Go's `flag` package conventions are kept: `-name` works like `--name`, `--flag value` and
//! `--flag=value` both work, booleans take `--flag` or `--flag=true|false`, a repeated flag
//! keeps its last value, and each flag may come from `ETCD_<FLAG_NAME>` unless it is given on
//! the command line.
//!
//! Clap only splits the command line here; every value is checked by this module so that an
//! error names the flag and the bad value in one line, like etcd.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use ferrokv_server::config::{
    AuthToken, AutoCompaction, ClusterState, Config, Discovery, JwtOptions, TlsFiles, V3Discovery,
};
use url::Url;

use crate::error::{Error, Result};

/// etcd refuses election timeouts above this (`maxElectionMs`).
const MAX_ELECTION_MS: u64 = 50_000;
/// What etcdctl dials when no `--endpoints` is given.
const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";

/// What the process was asked to do.
#[derive(Debug)]
pub enum Command {
    /// Run a member.
    Serve(Box<Serve>),
    /// `ferrokv version` / `ferrokv --version`.
    Version,
    /// `--help` text (of the command or a subcommand), printed on stdout with exit code 0.
    Help(String),
    /// `ferrokv dump-logs <data-dir>`.
    DumpLogs { data_dir: PathBuf },
    /// `ferrokv check --data-dir <dir>`: verify a stopped member's keyspace offline.
    Check { data_dir: PathBuf },
    /// `ferrokv snapshot status <file>`.
    SnapshotStatus { file: PathBuf },
    /// `ferrokv snapshot save <file> --endpoints ...`.
    SnapshotSave(SnapshotSave),
    /// `ferrokv snapshot restore <file> --name ... --data-dir ...`.
    SnapshotRestore(Box<SnapshotRestore>),
}

/// A restore builds the data dir of one member of a new cluster; `config` carries exactly the
/// identity flags (name, data dir, initial cluster, token, peer URLs), checked like `serve`'s.
#[derive(Debug)]
pub struct SnapshotRestore {
    pub file: PathBuf,
    pub config: Config,
    /// Set when `file` is an object-store URL: the backup to download first.
    pub backup: Option<BackupTarget>,
    /// `--revision`: the newest backup at or below it instead of the latest.
    pub revision: Option<i64>,
    /// `--skip-hash-check`: accept a bbolt database without the SHA-256 trailer.
    pub skip_hash_check: bool,
}

/// `<file>` given as an object-store URL (`s3://`, `gs://`, `az://`, `file://`): where backups
/// go or come from, with credentials from the environment (`ferrokv_backup::StoreConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupTarget {
    pub url: String,
    /// `--cluster`: the cluster label; without it the URL's last segment is the label.
    pub cluster: Option<String>,
    /// `--encryption-key-file`: 32 raw bytes or their base64.
    pub encryption_key_file: Option<PathBuf>,
}

/// Whether a `<file>` argument names an object-store location rather than a local file.
pub fn is_store_url(file: &std::path::Path) -> bool {
    file.to_str().is_some_and(|s| s.contains("://"))
}

#[derive(Debug)]
pub struct Serve {
    pub config: Config,
    pub log: LogSettings,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The `tracing` filter directive for this level.
    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (etcd's default `--log-format=json`).
    Json,
    /// Human-readable lines (`--log-format=console`).
    Console,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogSettings {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Debug, PartialEq, Eq)]
pub struct SnapshotSave {
    pub file: PathBuf,
    /// Tried in order until one answers; `host:port` or a full URL, as etcdctl accepts.
    pub endpoints: Vec<String>,
    pub dial_timeout: Duration,
    pub tls: ClientTls,
    /// Set when `file` is an object-store URL.
    pub backup: Option<BackupTarget>,
    /// `--compression` of an uploaded backup.
    pub compression: ferrokv_backup::Compression,
}

/// etcdctl's `--cacert --cert --key`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

// Flag values are taken as raw strings and checked by this module (not by clap's value
// parsers) so that every error reads the same: flag name, bad value, reason.
#[derive(Parser, Debug)]
#[command(
    name = "ferrokv",
    about = "An etcd-compatible replicated key-value store.",
    long_about = "An etcd-compatible replicated key-value store.\n\n\
        Every member flag may also be set by its environment variable: ETCD_ followed by the \
        flag name in upper case with '-' as '_' (--data-dir -> ETCD_DATA_DIR). A flag on the \
        command line wins over the variable.",
    disable_version_flag = true,
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Print the version and exit.
    #[arg(long = "version", action = clap::ArgAction::SetTrue)]
    version: bool,
    #[command(flatten)]
    member: MemberArgs,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Print the version and exit.
    Version,
    /// Print the raft log (WAL) of a data dir, like etcd-dump-logs.
    DumpLogs {
        /// The member's --data-dir (or a WAL directory).
        data_dir: PathBuf,
    },
    /// Save, inspect or restore keyspace snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotSub),
    /// Verify a stopped member's keyspace (redb page checksums, latest against history, the
    /// lease index); exits non-zero on any problem.
    Check {
        /// The member's --data-dir.
        #[arg(long = "data-dir")]
        data_dir: PathBuf,
    },
}

const STORE_HELP: &str = "Object-store URLs take their credentials from the environment:\n  \
    s3://  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, [AWS_SESSION_TOKEN], [AWS_REGION],\n         \
    [AWS_ENDPOINT_URL] (S3-compatible servers), [AWS_CA_BUNDLE] (PEM file or contents),\n         \
    [AWS_S3_FORCE_PATH_STYLE=true|false] (default: true when AWS_ENDPOINT_URL is set)\n  \
    gs://  GOOGLE_SERVICE_ACCOUNT_JSON (key contents) or GOOGLE_APPLICATION_CREDENTIALS (key file),\n         \
    [GOOGLE_STORAGE_ENDPOINT]\n  \
    az://  AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY, [AZURE_STORAGE_ENDPOINT]\n  \
    file:///dir  none\n\
    A backup is <URL>/<cluster>/<time>-<revision>.snap[.zst][.enc] plus its .manifest.json.";

#[derive(Subcommand, Debug)]
enum SnapshotSub {
    /// Stream a snapshot from a member into <file>.
    #[command(after_help = STORE_HELP)]
    Save {
        /// A file, or an object-store URL (s3://bucket/prefix/cluster, gs://, az://, file://)
        /// to upload a backup with a manifest to.
        file: PathBuf,
        /// Comma-separated member client endpoints, tried in order.
        #[arg(long, default_value = DEFAULT_ENDPOINT)]
        endpoints: String,
        /// Time allowed to connect to one endpoint (Go duration, e.g. "2s").
        #[arg(long = "dial-timeout", default_value = "2s")]
        dial_timeout: String,
        /// CA bundle to verify the member's certificate.
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// Client certificate.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Client key.
        #[arg(long)]
        key: Option<PathBuf>,
        /// With an object-store URL for <file>, the cluster label the backups are filed under
        /// (objects go to <URL>/<cluster>/); without it the URL's last path segment is the label.
        #[arg(long)]
        cluster: Option<String>,
        /// With an object-store URL: a file holding the 32-byte encryption key (raw or base64).
        #[arg(long = "encryption-key-file")]
        encryption_key_file: Option<PathBuf>,
        /// With an object-store URL: none or zstd.
        #[arg(long, default_value = "zstd")]
        compression: String,
    },
    /// Print the size, hash check, revision and key count of a snapshot file.
    Status { file: PathBuf },
    /// Build a new member data dir (new cluster) from a snapshot file.
    #[command(after_help = STORE_HELP)]
    Restore {
        /// A snapshot file, or an object-store URL: a backup's manifest or data object
        /// (.../<name>.manifest.json, .../<name>.snap[.zst][.enc]), or a destination
        /// (s3://bucket/prefix/cluster) whose latest backup is taken.
        file: PathBuf,
        /// Name of the member being restored.
        #[arg(long, default_value = "default")]
        name: String,
        /// Data dir to create (must not exist yet); default "${name}.etcd".
        #[arg(long = "data-dir")]
        data_dir: Option<String>,
        /// The new cluster: name=url,name=url,... (default: name=<initial-advertise-peer-urls>).
        #[arg(long = "initial-cluster")]
        initial_cluster: Option<String>,
        /// Token of the new cluster (member ids derive from it).
        #[arg(long = "initial-cluster-token", default_value = "etcd-cluster")]
        initial_cluster_token: String,
        /// This member's peer URLs.
        #[arg(
            long = "initial-advertise-peer-urls",
            default_value = "http://localhost:2380"
        )]
        initial_advertise_peer_urls: String,
        /// With an object-store URL for <file>, the cluster label the backups are filed under
        /// (objects go to <URL>/<cluster>/); without it the URL's last path segment is the label.
        #[arg(long)]
        cluster: Option<String>,
        /// With an object-store URL: a file holding the 32-byte encryption key (raw or base64).
        #[arg(long = "encryption-key-file")]
        encryption_key_file: Option<PathBuf>,
        /// With a destination URL: the newest backup at or below this revision, not the latest.
        #[arg(long)]
        revision: Option<String>,
        /// Accept a bbolt database without the SHA-256 a snapshot ends with (etcd's
        /// member/snap/db copied from a data dir), as etcdutl's flag of the same name.
        #[arg(long = "skip-hash-check")]
        skip_hash_check: bool,
    },
}

// Boolean flags (`num_args = 0..=1, require_equals`) behave like Go's: `--flag`,
// `--flag=true`, `--flag=false`, and never take the next argument as their value.
#[derive(Args, Debug, Default)]
struct MemberArgs {
    /// Human-readable name for this member.
    #[arg(long)]
    name: Option<String>,
    /// Path to the data directory (default "${name}.etcd").
    #[arg(long = "data-dir")]
    data_dir: Option<String>,
    /// Comma-separated URLs to listen on for client traffic.
    #[arg(long = "listen-client-urls")]
    listen_client_urls: Option<String>,
    /// Comma-separated client URLs to advertise to the rest of the cluster.
    #[arg(long = "advertise-client-urls")]
    advertise_client_urls: Option<String>,
    /// Comma-separated URLs to listen on for peer traffic.
    #[arg(long = "listen-peer-urls")]
    listen_peer_urls: Option<String>,
    /// Comma-separated peer URLs of this member, advertised to the rest of the cluster.
    #[arg(long = "initial-advertise-peer-urls")]
    initial_advertise_peer_urls: Option<String>,
    /// Initial cluster configuration for bootstrapping: name=url,name=url,...
    #[arg(long = "initial-cluster")]
    initial_cluster: Option<String>,
    /// Initial cluster state ("new" or "existing").
    #[arg(long = "initial-cluster-state")]
    initial_cluster_state: Option<String>,
    /// Initial cluster token for the cluster during bootstrap.
    #[arg(long = "initial-cluster-token")]
    initial_cluster_token: Option<String>,
    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long = "snapshot-count")]
    snapshot_count: Option<String>,
    /// Number of entries for a slow follower to catch up after compacting the raft storage
    /// entries.
    #[arg(long = "snapshot-catchup-entries")]
    snapshot_catchup_entries: Option<String>,
    /// Deprecated in etcd 3.6 for --snapshot-catchup-entries.
    #[arg(long = "experimental-snapshot-catchup-entries")]
    experimental_snapshot_catchup_entries: Option<String>,
    /// Maximum number of snapshot files to retain (0 is unlimited).
    #[arg(long = "max-snapshots")]
    max_snapshots: Option<String>,
    /// Maximum number of wal files to retain (0 is unlimited).
    #[arg(long = "max-wals")]
    max_wals: Option<String>,
    /// Force to create a new one member cluster.
    #[arg(long = "force-new-cluster", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    force_new_cluster: Option<String>,
    /// ferrokv test knob: WAL segment size in bytes (default 64 MiB, etcd's fixed size).
    #[arg(long = "experimental-wal-segment-bytes", hide = true)]
    wal_segment_bytes: Option<String>,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long = "heartbeat-interval")]
    heartbeat_interval: Option<String>,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long = "election-timeout")]
    election_timeout: Option<String>,
    /// Raise alarms when backend size exceeds the given quota (0 defaults to low space quota).
    #[arg(long = "quota-backend-bytes")]
    quota_backend_bytes: Option<String>,
    /// ferrokv: bytes of the keyspace file kept in the member's own page cache (default
    /// 67108864); pages beyond it are read from the kernel's page cache.
    #[arg(long = "keyspace-cache-bytes")]
    keyspace_cache_bytes: Option<String>,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long = "max-request-bytes")]
    max_request_bytes: Option<String>,
    /// Interpret --auto-compaction-retention as "periodic" (duration) or "revision" (count).
    #[arg(long = "auto-compaction-mode")]
    auto_compaction_mode: Option<String>,
    /// Auto compaction retention ("1h", "30m", a bare number of hours, or a revision count).
    #[arg(long = "auto-compaction-retention")]
    auto_compaction_retention: Option<String>,
    /// Path to the client server TLS cert file.
    #[arg(long = "cert-file")]
    cert_file: Option<String>,
    /// Path to the client server TLS key file.
    #[arg(long = "key-file")]
    key_file: Option<String>,
    /// Path to the client server TLS trusted CA cert file.
    #[arg(long = "trusted-ca-file")]
    trusted_ca_file: Option<String>,
    /// Enable client cert authentication.
    #[arg(long = "client-cert-auth", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    client_cert_auth: Option<String>,
    /// Path to the peer server TLS cert file.
    #[arg(long = "peer-cert-file")]
    peer_cert_file: Option<String>,
    /// Path to the peer server TLS key file.
    #[arg(long = "peer-key-file")]
    peer_key_file: Option<String>,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long = "peer-trusted-ca-file")]
    peer_trusted_ca_file: Option<String>,
    /// Enable peer client cert authentication.
    #[arg(long = "peer-client-cert-auth", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    peer_client_cert_auth: Option<String>,
    /// Comma-separated URLs for plain /metrics and /health endpoints.
    #[arg(long = "listen-metrics-urls")]
    listen_metrics_urls: Option<String>,
    /// Metrics detail: basic, or extensive (adds the gRPC handling-time histograms).
    #[arg(long)]
    metrics: Option<String>,
    /// Log level: debug, info, warn, error.
    #[arg(long = "log-level")]
    log_level: Option<String>,
    /// Logger; only "zap" (etcd's) is meaningful, accepted for compatibility.
    #[arg(long)]
    logger: Option<String>,
    /// Log format: json (default, as etcd) or console.
    #[arg(long = "log-format")]
    log_format: Option<String>,
    /// Accepted for compatibility; logs always go to stderr.
    #[arg(long = "log-outputs")]
    log_outputs: Option<String>,
    /// Interval of progress notifications to idle watchers (Go duration, e.g. "5s").
    #[arg(long = "experimental-watch-progress-notify-interval")]
    watch_progress_notify_interval: Option<String>,
    /// Compare this member's HashKV with its peers' before serving, on restart (default true
    /// in ferrokv; etcd's default is false). Deprecated in etcd 3.6 for
    /// --feature-gates=InitialCorruptCheck=true.
    #[arg(long = "experimental-initial-corrupt-check", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    initial_corrupt_check: Option<String>,
    /// etcd 3.6 feature gates, e.g. "InitialCorruptCheck=true,CompactHashCheck=false".
    #[arg(long = "feature-gates")]
    feature_gates: Option<String>,
    /// Duration between cluster corruption check passes (0 = off; ferrokv default 5m).
    #[arg(long = "corrupt-check-time")]
    corrupt_check_time: Option<String>,
    /// Deprecated in etcd 3.6 for --corrupt-check-time.
    #[arg(long = "experimental-corrupt-check-time")]
    experimental_corrupt_check_time: Option<String>,
    /// Leader compares followers' compaction hashes (default true in ferrokv). Deprecated in
    /// etcd 3.6 for --feature-gates=CompactHashCheck=true.
    #[arg(long = "experimental-compact-hash-check-enabled", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    compact_hash_check_enabled: Option<String>,
    /// Duration between leader checks of followers' compaction hashes (default 1m).
    #[arg(long = "compact-hash-check-time")]
    compact_hash_check_time: Option<String>,
    /// Deprecated in etcd 3.6 for --compact-hash-check-time.
    #[arg(long = "experimental-compact-hash-check-time")]
    experimental_compact_hash_check_time: Option<String>,
    /// ferrokv: check the keyspace file (redb page checksums, latest against history, lease
    /// index) at start and refuse to start on a failure (default true).
    #[arg(long = "keyspace-verify-on-open", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    keyspace_verify_on_open: Option<String>,
    /// Specify auth token type and options: "simple" (JWT is not supported yet).
    #[arg(long = "auth-token")]
    auth_token: Option<String>,
    /// The lifetime in seconds of a simple auth token after its last use.
    #[arg(long = "auth-token-ttl")]
    auth_token_ttl: Option<String>,
    /// Cost of the bcrypt password hashes (4..=31).
    #[arg(long = "bcrypt-cost")]
    bcrypt_cost: Option<String>,
    /// Discovery URL used to bootstrap the cluster for v2 discovery (deprecated in etcd 3.6).
    #[arg(long)]
    discovery: Option<String>,
    /// HTTP proxy to use for traffic to the v2 discovery service.
    #[arg(long = "discovery-proxy")]
    discovery_proxy: Option<String>,
    /// DNS domain used to bootstrap initial cluster.
    #[arg(long = "discovery-srv")]
    discovery_srv: Option<String>,
    /// Service name to query when using DNS discovery.
    #[arg(long = "discovery-srv-name")]
    discovery_srv_name: Option<String>,
    /// V3 discovery: comma-separated gRPC endpoints of the discovery service.
    #[arg(long = "discovery-endpoints")]
    discovery_endpoints: Option<String>,
    /// V3 discovery: discovery token for the etcd cluster to be bootstrapped.
    #[arg(long = "discovery-token")]
    discovery_token: Option<String>,
    /// V3 discovery: dial timeout for client connections (default 2s).
    #[arg(long = "discovery-dial-timeout")]
    discovery_dial_timeout: Option<String>,
    /// V3 discovery: timeout for discovery requests, excluding the dial (default 5s).
    #[arg(long = "discovery-request-timeout")]
    discovery_request_timeout: Option<String>,
    /// V3 discovery: keepalive time for client connections (default 2s).
    #[arg(long = "discovery-keepalive-time")]
    discovery_keepalive_time: Option<String>,
    /// V3 discovery: keepalive timeout for client connections (default 6s).
    #[arg(long = "discovery-keepalive-timeout")]
    discovery_keepalive_timeout: Option<String>,
    /// V3 discovery: disable transport security for client connections (default true).
    #[arg(long = "discovery-insecure-transport", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    discovery_insecure_transport: Option<String>,
    /// V3 discovery: skip server certificate verification (for testing only).
    #[arg(long = "discovery-insecure-skip-tls-verify", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    discovery_insecure_skip_tls_verify: Option<String>,
    /// V3 discovery: identify secure client using this TLS certificate file.
    #[arg(long = "discovery-cert")]
    discovery_cert: Option<String>,
    /// V3 discovery: identify secure client using this TLS key file.
    #[arg(long = "discovery-key")]
    discovery_key: Option<String>,
    /// V3 discovery: verify certificates of TLS-enabled secure servers using this CA bundle.
    #[arg(long = "discovery-cacert")]
    discovery_cacert: Option<String>,
    /// V3 discovery: user name for authentication.
    #[arg(long = "discovery-user")]
    discovery_user: Option<String>,
    /// V3 discovery: password for authentication.
    #[arg(long = "discovery-password")]
    discovery_password: Option<String>,
    /// Expected behavior when discovery fails: "exit" (etcd 3.6 removed "proxy").
    #[arg(long = "discovery-fallback")]
    discovery_fallback: Option<String>,
}

/// Parses a full command line (`args[0]` is the program name) with `env` as the source of
/// `ETCD_*` variables.
pub fn parse<I, S>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Command>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let spec = Cli::command();
    let args: Vec<String> = args.into_iter().map(Into::into).collect();
    let mut args = normalise_single_dash(&spec, args)?;
    add_env_flags(&spec, &mut args, &env)?;

    let matches = match spec.try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => return help_or_error(e),
    };
    let cli = Cli::from_arg_matches(&matches).map_err(|e| Error::Usage(first_line(&e)))?;
    if cli.version {
        return Ok(Command::Version);
    }
    match cli.command {
        Some(Sub::Version) => Ok(Command::Version),
        Some(Sub::DumpLogs { data_dir }) => Ok(Command::DumpLogs { data_dir }),
        Some(Sub::Check { data_dir }) => Ok(Command::Check { data_dir }),
        Some(Sub::Snapshot(SnapshotSub::Status { file })) => Ok(Command::SnapshotStatus { file }),
        Some(Sub::Snapshot(SnapshotSub::Restore {
            file,
            name,
            data_dir,
            initial_cluster,
            initial_cluster_token,
            initial_advertise_peer_urls,
            cluster,
            encryption_key_file,
            revision,
            skip_hash_check,
        })) => {
            let backup = backup_target(&file, cluster, encryption_key_file)?;
            let revision =
                match revision {
                    None => None,
                    Some(_) if backup.is_none() => {
                        return Err(Error::Conflict(
                            "--revision needs an object-store URL instead of a file".into(),
                        ))
                    }
                    Some(r) => Some(r.parse::<i64>().ok().filter(|r| *r > 0).ok_or_else(|| {
                        Error::invalid("revision", &r, "not a positive revision")
                    })?),
                };
            let mut config = Config::with_defaults(&name);
            if let Some(d) = data_dir {
                if d.is_empty() {
                    return Err(Error::invalid("data-dir", &d, "must not be empty"));
                }
                config.data_dir = PathBuf::from(d);
            }
            config.initial_advertise_peer_urls = parse_urls(
                "initial-advertise-peer-urls",
                &initial_advertise_peer_urls,
                UrlUse::Advertise,
            )?;
            config.initial_cluster = match &initial_cluster {
                Some(v) => parse_initial_cluster(v)?,
                None => vec![(name.clone(), config.initial_advertise_peer_urls.clone())],
            };
            config.initial_cluster_token = initial_cluster_token;
            check_local_member(&config)?;
            Ok(Command::SnapshotRestore(Box::new(SnapshotRestore {
                file,
                config,
                backup,
                revision,
                skip_hash_check,
            })))
        }
        Some(Sub::Snapshot(SnapshotSub::Save {
            file,
            endpoints,
            dial_timeout,
            cacert,
            cert,
            key,
            cluster,
            encryption_key_file,
            compression,
        })) => {
            let backup = backup_target(&file, cluster, encryption_key_file)?;
            let compression = compression
                .parse::<ferrokv_backup::Compression>()
                .map_err(|_| Error::invalid("compression", &compression, "use none or zstd"))?;
            let endpoints: Vec<String> = split_list(&endpoints)
                .into_iter()
                .map(str::to_string)
                .collect();
            if endpoints.is_empty() {
                return Err(Error::invalid("endpoints", "", "no endpoint given"));
            }
            let dial_timeout = parse_go_duration(&dial_timeout)
                .map_err(|r| Error::invalid("dial-timeout", &dial_timeout, r))?;
            Ok(Command::SnapshotSave(SnapshotSave {
                file,
                endpoints,
                dial_timeout,
                tls: ClientTls {
                    ca_file: cacert,
                    cert_file: cert,
                    key_file: key,
                },
                backup,
                compression,
            }))
        }
        None => build_serve(cli.member).map(|s| Command::Serve(Box::new(s))),
    }
}

/// The object-store part of `snapshot save|restore`: present exactly when <file> is a URL.
fn backup_target(
    file: &std::path::Path,
    cluster: Option<String>,
    encryption_key_file: Option<PathBuf>,
) -> Result<Option<BackupTarget>> {
    if !is_store_url(file) {
        if cluster.is_some() || encryption_key_file.is_some() {
            return Err(Error::Conflict(
                "--cluster and --encryption-key-file need an object-store URL instead of a file"
                    .into(),
            ));
        }
        return Ok(None);
    }
    let url = file.to_string_lossy().into_owned();
    ferrokv_backup::Location::parse(&url).map_err(|e| Error::Usage(e.to_string()))?;
    if let Some(c) = &cluster {
        ferrokv_backup::check_cluster_label(c)
            .map_err(|e| Error::invalid("cluster", c, e.to_string()))?;
    }
    Ok(Some(BackupTarget {
        url,
        cluster,
        encryption_key_file,
    }))
}

/// Help is not an error: hand its text back so `main` prints it on stdout and exits 0.
fn help_or_error(e: clap::Error) -> Result<Command> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match e.kind() {
        ErrorKind::DisplayHelp => Ok(Command::Help(e.render().to_string())),
        // `ferrokv snapshot` alone: clap would print the whole help; scripts need one line
        // and a failing exit code.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Err(Error::Usage(
            "a subcommand is required (see --help)".to_string(),
        )),
        ErrorKind::UnknownArgument => {
            let arg = match e.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(s)) => s.clone(),
                _ => return Err(Error::Usage(first_line(&e))),
            };
            // Go's wording, so scripts that grep etcd's message keep working.
            let name = arg.split('=').next().unwrap_or(&arg);
            Err(Error::Usage(format!(
                "flag provided but not defined: {name}"
            )))
        }
        _ => Err(Error::Usage(first_line(&e))),
    }
}

/// The first paragraph of a clap error on one line, without its `error: ` prefix (the rest is
/// usage help that would break the one-line rule).
fn first_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let para: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = para.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}

/// All long flag names of `cmd` and its subcommands, each with whether it takes its value
/// from the next argument (`--name value`).
fn long_flags(cmd: &clap::Command, out: &mut HashMap<String, bool>) {
    for arg in cmd.get_arguments() {
        if let Some(l) = arg.get_long() {
            let separate_value = arg.get_action().takes_values() && !arg.is_require_equals_set();
            out.insert(l.to_string(), separate_value);
        }
    }
    out.insert("help".to_string(), false);
    for sub in cmd.get_subcommands() {
        long_flags(sub, out);
    }
}

/// Go's flag package treats `-name` like `--name`. Rewrite those before clap sees them (clap
/// would read `-name` as the short flags `-n -a -m -e`). Only known flags are rewritten, so a
/// value such as `-1` passes unchanged; an unknown `-word` gets Go's error.
fn normalise_single_dash(spec: &clap::Command, args: Vec<String>) -> Result<Vec<String>> {
    let mut known = HashMap::new();
    long_flags(spec, &mut known);
    let mut out = Vec::with_capacity(args.len());
    let mut rest_is_positional = false;
    let mut next_is_value = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || rest_is_positional || std::mem::take(&mut next_is_value) {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            rest_is_positional = true;
            out.push(arg);
            continue;
        }
        let Some(body) = arg.strip_prefix('-') else {
            out.push(arg);
            continue;
        };
        let body = body.strip_prefix('-').unwrap_or(body);
        let (name, has_value) = match body.split_once('=') {
            Some((n, _)) => (n, true),
            None => (body, false),
        };
        match known.get(name) {
            Some(separate_value) => {
                next_is_value = *separate_value && !has_value;
                out.push(format!("--{body}"));
            }
            None if name.len() > 1 && name.starts_with(|c: char| c.is_ascii_alphabetic()) => {
                return Err(Error::Usage(format!(
                    "flag provided but not defined: {}",
                    arg.split('=').next().unwrap_or(&arg)
                )));
            }
            None => out.push(arg),
        }
    }
    Ok(out)
}

/// `ETCD_DATA_DIR` for `data-dir`: etcd's rule for every flag.
pub fn env_name(flag: &str) -> String {
    format!("ETCD_{}", flag.to_uppercase().replace('-', "_"))
}

/// Appends `--flag=value` for each member flag that is absent from the command line but set
/// in the environment. Subcommands take no env vars (etcd's tools do not either).
fn add_env_flags(
    spec: &clap::Command,
    args: &mut Vec<String>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<()> {
    let is_subcommand = args.get(1).is_some_and(|first| {
        // clap adds the `help` subcommand only when it builds the command.
        first == "help"
            || spec
                .get_subcommands()
                .any(|s| s.get_name() == first || s.get_all_aliases().any(|a| a == first))
    });
    if is_subcommand {
        return Ok(());
    }
    let given: HashSet<&str> = args
        .iter()
        .skip(1)
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .collect();
    let mut extra = Vec::new();
    for arg in spec.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        // ETCD_VERSION is etcd's own image variable in many containers, never a flag.
        if long == "version" || long == "help" {
            continue;
        }
        let name = env_name(long);
        let value = env(&name);
        if given.contains(long) {
            // etcd's rule (fatal there too): a variable the command line overrides is a
            // leftover someone believes is in effect.
            if value.is_some() {
                return Err(Error::Conflict(format!(
                    "conflicting environment variable {name} is shadowed by corresponding command-line flag --{long} (either unset environment variable or disable flag)"
                )));
            }
            continue;
        }
        // etcd uses a variable only when it is non-empty.
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            extra.push(format!("--{long}={value}"));
        }
    }
    args.extend(extra);
    Ok(())
}

/// `ETCD_*` variables in `names` that match no member flag. etcd warns about these (a typo
/// in a manifest would otherwise be silently ignored); `ETCD_VERSION` is left alone because
/// etcd's own images set it.
pub fn unknown_env_vars<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let spec = Cli::command();
    let known: HashSet<String> = spec
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(env_name)
        .collect();
    names
        .into_iter()
        .filter(|n| n.starts_with("ETCD_") && *n != "ETCD_VERSION" && !known.contains(*n))
        .map(str::to_string)
        .collect()
}

/// etcd flags that decide which cluster a member forms and that ferrokv has no flag for
/// (checked against the flag list, so a flag added later stops being refused).
const BOOTSTRAP_ENV_VARS: &[&str] = &["ETCD_CONFIG_FILE", "ETCD_FORCE_NEW_CLUSTER", "ETCD_WAL_DIR"];
/// Prefixes of bootstrap variables: an unknown one here is a typo or an etcd feature ferrokv
/// lacks, and either way the member would silently bootstrap some other cluster.
const BOOTSTRAP_ENV_PREFIXES: &[&str] = &["ETCD_DISCOVERY", "ETCD_INITIAL_"];

/// Unknown `ETCD_*` variables that are about bootstrapping (discovery, the initial cluster,
/// a config file, ...). etcd only warns about unknown variables; for these ferrokv stops
/// instead, because ignoring one changes which cluster the member forms (`ETCD_DISCOVERY_SRV`
/// ignored means a one-member cluster of its own).
pub fn check_bootstrap_env<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let unknown = unknown_env_vars(names);
    let fatal = unknown.iter().find(|n| {
        BOOTSTRAP_ENV_VARS.contains(&n.as_str())
            || BOOTSTRAP_ENV_PREFIXES.iter().any(|p| n.starts_with(p))
    });
    match fatal {
        Some(n) => Err(Error::Conflict(format!(
            "environment variable {n} is about how the cluster bootstraps but matches no flag ferrokv has; refusing to start rather than ignore it"
        ))),
        None => Ok(()),
    }
}

fn build_serve(m: MemberArgs) -> Result<Serve> {
    let name = m.name.clone().unwrap_or_else(|| "default".to_string());
    let mut cfg = Config::with_defaults(&name);
    if let Some(d) = &m.data_dir {
        if d.is_empty() {
            return Err(Error::invalid("data-dir", d, "must not be empty"));
        }
        cfg.data_dir = PathBuf::from(d);
    }

    if let Some(v) = &m.listen_client_urls {
        cfg.listen_client_urls = parse_urls("listen-client-urls", v, UrlUse::Listen)?;
    }
    if let Some(v) = &m.advertise_client_urls {
        cfg.advertise_client_urls = parse_urls("advertise-client-urls", v, UrlUse::Advertise)?;
    }
    if m.listen_client_urls.is_some() && m.advertise_client_urls.is_none() {
        // etcd's rule: the default advertise URL (localhost) would be wrong for any member
        // that listens elsewhere, and clients would silently get an unusable member list.
        return Err(Error::Conflict(
            "--advertise-client-urls is required when --listen-client-urls is set explicitly"
                .to_string(),
        ));
    }
    if let Some(v) = &m.listen_peer_urls {
        cfg.listen_peer_urls = parse_urls("listen-peer-urls", v, UrlUse::Listen)?;
    }
    if let Some(v) = &m.initial_advertise_peer_urls {
        cfg.initial_advertise_peer_urls =
            parse_urls("initial-advertise-peer-urls", v, UrlUse::Advertise)?;
    }
    if let Some(v) = &m.listen_metrics_urls {
        cfg.listen_metrics_urls = parse_urls("listen-metrics-urls", v, UrlUse::Listen)?;
    }
    // etcd takes any value and turns the histograms on only for "extensive".
    cfg.metrics_extensive = m.metrics.as_deref() == Some("extensive");

    cfg.initial_cluster = match &m.initial_cluster {
        Some(v) => parse_initial_cluster(v)?,
        // etcd derives the default from the name and this member's peer URLs, so a lone
        // `--name n1` still bootstraps a one-member cluster.
        None => vec![(name.clone(), cfg.initial_advertise_peer_urls.clone())],
    };
    if let Some(v) = &m.initial_cluster_state {
        cfg.initial_cluster_state = match v.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            _ => {
                return Err(Error::invalid(
                    "initial-cluster-state",
                    v,
                    "valid values are \"new\", \"existing\"",
                ))
            }
        };
    }
    if let Some(v) = &m.initial_cluster_token {
        cfg.initial_cluster_token = v.clone();
    }
    check_local_member(&cfg)?;
    cfg.discovery = parse_discovery(&m, &cfg)?;

    parse_data_flags(&mut cfg, &m)?;
    let heartbeat_ms = match &m.heartbeat_interval {
        Some(v) => parse_u64("heartbeat-interval", v)?,
        None => cfg.heartbeat_interval.as_millis() as u64,
    };
    let election_ms = match &m.election_timeout {
        Some(v) => parse_u64("election-timeout", v)?,
        None => cfg.election_timeout.as_millis() as u64,
    };
    check_timing(heartbeat_ms, election_ms)?;
    cfg.heartbeat_interval = Duration::from_millis(heartbeat_ms);
    cfg.election_timeout = Duration::from_millis(election_ms);

    if let Some(v) = &m.quota_backend_bytes {
        cfg.quota_backend_bytes = parse_u64("quota-backend-bytes", v)?;
    }
    if let Some(v) = &m.keyspace_cache_bytes {
        let n = parse_u64("keyspace-cache-bytes", v)?;
        cfg.keyspace_cache_bytes = usize::try_from(n).map_err(|_| {
            Error::invalid("keyspace-cache-bytes", v, "is too large for this machine")
        })?;
    }
    if let Some(v) = &m.max_request_bytes {
        let n = parse_u64("max-request-bytes", v)?;
        if n == 0 || n > u64::from(u32::MAX) {
            return Err(Error::invalid(
                "max-request-bytes",
                v,
                "must be between 1 and 4294967295",
            ));
        }
        cfg.max_request_bytes = n as usize;
    }
    cfg.auto_compaction = parse_auto_compaction(
        m.auto_compaction_mode.as_deref(),
        m.auto_compaction_retention.as_deref(),
    )?;

    cfg.client_tls = TlsFiles {
        cert_file: path_flag(&m.cert_file),
        key_file: path_flag(&m.key_file),
        trusted_ca_file: path_flag(&m.trusted_ca_file),
        client_cert_auth: parse_bool_flag("client-cert-auth", m.client_cert_auth.as_deref())?,
    };
    cfg.peer_tls = TlsFiles {
        cert_file: path_flag(&m.peer_cert_file),
        key_file: path_flag(&m.peer_key_file),
        trusted_ca_file: path_flag(&m.peer_trusted_ca_file),
        client_cert_auth: parse_bool_flag(
            "peer-client-cert-auth",
            m.peer_client_cert_auth.as_deref(),
        )?,
    };
    check_tls(&cfg)?;
    parse_auth_flags(&mut cfg, &m)?;
    parse_corrupt_flags(&mut cfg, &m)?;

    if let Some(v) = &m.watch_progress_notify_interval {
        let d = parse_go_duration(v)
            .map_err(|r| Error::invalid("experimental-watch-progress-notify-interval", v, r))?;
        if d.is_zero() {
            return Err(Error::invalid(
                "experimental-watch-progress-notify-interval",
                v,
                "must be greater than 0",
            ));
        }
        cfg.watch_progress_notify_interval = d;
    }

    let log = LogSettings {
        level: match m.log_level.as_deref() {
            None | Some("info") => LogLevel::Info,
            Some("debug") => LogLevel::Debug,
            Some("warn") => LogLevel::Warn,
            // zap's panic levels only matter to zap; they all mean "errors only" here.
            Some("error" | "dpanic" | "panic" | "fatal") => LogLevel::Error,
            Some(v) => {
                return Err(Error::invalid(
                    "log-level",
                    v,
                    "valid values are \"debug\", \"info\", \"warn\", \"error\"",
                ))
            }
        },
        format: match m.log_format.as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("console") => LogFormat::Console,
            Some(v) => {
                return Err(Error::invalid(
                    "log-format",
                    v,
                    "valid values are \"json\", \"console\"",
                ))
            }
        },
    };
    if let Some(v) = &m.logger {
        if v != "zap" && v != "capnslog" {
            return Err(Error::invalid("logger", v, "valid values are \"zap\""));
        }
    }
    if let Some(v) = &m.log_outputs {
        for out in split_list(v) {
            if !matches!(out, "default" | "stderr" | "stdout") {
                return Err(Error::invalid(
                    "log-outputs",
                    v,
                    "only \"default\", \"stderr\", \"stdout\" are supported",
                ));
            }
        }
    }
    Ok(Serve { config: cfg, log })
}

/// The flags about the data dir's raft files: snapshots, their purge, the WAL, and
/// `--force-new-cluster`.
fn parse_data_flags(cfg: &mut Config, m: &MemberArgs) -> Result<()> {
    if let Some(v) = &m.snapshot_count {
        cfg.snapshot_count = parse_u64("snapshot-count", v)?;
        if cfg.snapshot_count == 0 {
            // etcd: "updated snapshot count to default" rather than never snapshotting.
            cfg.snapshot_count = Config::with_defaults(&cfg.name).snapshot_count;
        }
    }
    // etcd 3.6 takes the new name over the deprecated one when both are given.
    if let Some(v) = &m.experimental_snapshot_catchup_entries {
        cfg.snapshot_catchup_entries = parse_u64("experimental-snapshot-catchup-entries", v)?;
    }
    if let Some(v) = &m.snapshot_catchup_entries {
        cfg.snapshot_catchup_entries = parse_u64("snapshot-catchup-entries", v)?;
    }
    if let Some(v) = &m.max_snapshots {
        cfg.max_snapshots = usize::try_from(parse_u64("max-snapshots", v)?)
            .map_err(|_| Error::invalid("max-snapshots", v, "value out of range"))?;
    }
    if let Some(v) = &m.max_wals {
        cfg.max_wals = usize::try_from(parse_u64("max-wals", v)?)
            .map_err(|_| Error::invalid("max-wals", v, "value out of range"))?;
    }
    cfg.force_new_cluster = parse_bool_flag("force-new-cluster", m.force_new_cluster.as_deref())?;
    if let Some(v) = &m.wal_segment_bytes {
        let n = parse_u64("experimental-wal-segment-bytes", v)?;
        if n == 0 {
            return Err(Error::invalid(
                "experimental-wal-segment-bytes",
                v,
                "must be greater than 0",
            ));
        }
        cfg.wal_segment_bytes = n;
    }
    Ok(())
}

/// The `--discovery*` flags with etcd 3.6's checks and messages (`embed.Config.Validate`).
fn parse_discovery(m: &MemberArgs, cfg: &Config) -> Result<Option<Discovery>> {
    let non_empty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    if let Some(v) = &m.discovery_fallback {
        match v.as_str() {
            "exit" => {}
            "proxy" => return Err(Error::Conflict(
                "v2 proxy is deprecated, and --discovery-fallback can't be configured as \"proxy\""
                    .into(),
            )),
            _ => {
                return Err(Error::invalid(
                    "discovery-fallback",
                    v,
                    "valid values are \"exit\", \"proxy\"",
                ))
            }
        }
    }
    let duration = |flag: &str, v: &Option<String>, default: Duration| -> Result<Duration> {
        match v {
            None => Ok(default),
            Some(v) => parse_go_duration(v).map_err(|r| Error::invalid(flag, v, r)),
        }
    };
    let durl = non_empty(&m.discovery);
    let srv = non_empty(&m.discovery_srv);
    let srv_name = non_empty(&m.discovery_srv_name);
    // etcd's UniqueStringsValue: split on ',', deduplicated, sorted.
    let mut endpoints: Vec<String> = match &m.discovery_endpoints {
        Some(v) if !v.is_empty() => v.split(',').map(|e| e.trim().to_string()).collect(),
        _ => Vec::new(),
    };
    endpoints.sort();
    endpoints.dedup();
    let mut v3 =
        V3Discovery::with_defaults(endpoints, m.discovery_token.clone().unwrap_or_default());
    v3.dial_timeout = duration(
        "discovery-dial-timeout",
        &m.discovery_dial_timeout,
        v3.dial_timeout,
    )?;
    v3.request_timeout = duration(
        "discovery-request-timeout",
        &m.discovery_request_timeout,
        v3.request_timeout,
    )?;
    v3.keepalive_time = duration(
        "discovery-keepalive-time",
        &m.discovery_keepalive_time,
        v3.keepalive_time,
    )?;
    v3.keepalive_timeout = duration(
        "discovery-keepalive-timeout",
        &m.discovery_keepalive_timeout,
        v3.keepalive_timeout,
    )?;
    if let Some(v) = m.discovery_insecure_transport.as_deref() {
        v3.insecure_transport = parse_bool_flag("discovery-insecure-transport", Some(v))?;
    }
    v3.insecure_skip_tls_verify = parse_bool_flag(
        "discovery-insecure-skip-tls-verify",
        m.discovery_insecure_skip_tls_verify.as_deref(),
    )?;
    v3.cert_file = path_flag(&m.discovery_cert);
    v3.key_file = path_flag(&m.discovery_key);
    v3.ca_file = path_flag(&m.discovery_cacert);
    v3.user = non_empty(&m.discovery_user);
    v3.password = non_empty(&m.discovery_password);

    // etcd clears the default --initial-cluster when discovery is set, so only an explicit
    // one counts against the others.
    let set = [
        durl.is_some(),
        m.initial_cluster.is_some()
            || (durl.is_none() && srv.is_none() && srv_name.is_none() && v3.endpoints.is_empty()),
        srv.is_some(),
        !v3.endpoints.is_empty(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        return Err(Error::Conflict(
            "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\", \"discovery-endpoints\" or \"discovery-srv\"".into(),
        ));
    }
    let v3_flags = !v3.endpoints.is_empty()
        || !v3.token.is_empty()
        || v3.cert_file.is_some()
        || v3.key_file.is_some()
        || v3.ca_file.is_some()
        || v3.user.is_some()
        || v3.password.is_some();
    if non_empty(&m.discovery_proxy).is_some() && v3_flags {
        return Err(Error::Conflict(
            "both v2 discovery settings (discovery, discovery-proxy) and v3 discovery settings (discovery-token, discovery-endpoints, discovery-cert, discovery-key, discovery-cacert, discovery-user, discovery-password) are set".into(),
        ));
    }
    if v3.token.is_empty() != v3.endpoints.is_empty() {
        return Err(Error::Conflict(
            "both --discovery-token and --discovery-endpoints must be set".into(),
        ));
    }
    if v3.endpoints.iter().any(|e| e.is_empty()) {
        return Err(Error::Conflict(
            "--discovery-endpoints must not contain empty endpoints".into(),
        ));
    }
    if srv.is_none() && srv_name.is_some() {
        // etcd ignores a service name without a domain; that would bootstrap a one-member
        // cluster where a multi-member one was meant, so it is refused.
        return Err(Error::Conflict(
            "--discovery-srv-name is set without --discovery-srv".into(),
        ));
    }
    if v3.cert_file.is_some() != v3.key_file.is_some() {
        return Err(Error::Conflict(
            "--discovery-cert and --discovery-key must be given together".into(),
        ));
    }
    if let Some(url) = durl {
        if cfg.initial_cluster_state == ClusterState::Existing {
            return Err(Error::Conflict(
                "discovery URL should not be set when joining existing initial cluster".into(),
            ));
        }
        let ok = Url::parse(&url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if ok.is_none() {
            return Err(Error::invalid(
                "discovery",
                &url,
                "must be an http or https URL",
            ));
        }
        return Ok(Some(Discovery::V2 {
            url,
            proxy: non_empty(&m.discovery_proxy),
        }));
    }
    if let Some(domain) = srv {
        return Ok(Some(Discovery::Srv {
            domain,
            service_name: srv_name,
        }));
    }
    if v3.endpoints.is_empty() {
        return Ok(None);
    }
    Ok(Some(Discovery::V3(v3)))
}

/// Listen URLs are bound, so (as etcd) their host must be an IP address or `localhost`;
/// advertised URLs may name any host.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UrlUse {
    Listen,
    Advertise,
}

/// Splits a comma-separated list, ignoring blanks around items.
fn split_list(v: &str) -> Vec<&str> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_urls(flag: &str, value: &str, usage: UrlUse) -> Result<Vec<Url>> {
    let items = split_list(value);
    if items.is_empty() {
        return Err(Error::invalid(flag, value, "no URL given"));
    }
    items
        .into_iter()
        .map(|item| parse_url(item, usage).map_err(|reason| Error::invalid(flag, value, reason)))
        .collect()
}

/// etcd's `types.NewURLs` rules (scheme, `host:port`, no path), plus `checkBindURLs` for
/// listen URLs.
fn parse_url(s: &str, usage: UrlUse) -> std::result::Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("{s:?} is not a URL ({e})"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("URL scheme must be http or https: {s}"));
    }
    // The url crate forgets an explicit default port (http://h:80), so look at the text.
    let authority = s
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let has_port = match authority.rsplit_once(':') {
        Some((host, port)) => {
            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !host.ends_with(':')
                // `[::1]` alone has colons but no port.
                && (!host.starts_with('[') || host.ends_with(']'))
        }
        None => false,
    };
    if !has_port || url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "URL address does not have the form \"host:port\": {s}"
        ));
    }
    if !(url.path().is_empty() || url.path() == "/") || s.ends_with('/') {
        return Err(format!("URL must not contain a path: {s}"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!("URL must be only scheme://host:port: {s}"));
    }
    if usage == UrlUse::Listen {
        let is_ip = matches!(url.host(), Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)));
        if !is_ip && url.host_str() != Some("localhost") {
            return Err(format!("expected IP in URL for binding ({s})"));
        }
    }
    Ok(url)
}

/// `n1=http://a:2380,n2=http://b:2380,n1=http://c:2380`: a name may repeat to give a member
/// several peer URLs; members keep their first-seen order.
fn parse_initial_cluster(value: &str) -> Result<Vec<(String, Vec<Url>)>> {
    let flag = "initial-cluster";
    let mut out: Vec<(String, Vec<Url>)> = Vec::new();
    let items = split_list(value);
    if items.is_empty() {
        return Err(Error::invalid(flag, value, "no member given"));
    }
    for item in items {
        let Some((name, url)) = item.split_once('=') else {
            return Err(Error::invalid(
                flag,
                value,
                format!("{item:?} is not of the form name=url"),
            ));
        };
        if name.is_empty() {
            return Err(Error::invalid(flag, value, format!("{item:?} has no name")));
        }
        let url = parse_url(url, UrlUse::Advertise).map_err(|r| Error::invalid(flag, value, r))?;
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => {
                if urls.contains(&url) {
                    return Err(Error::invalid(
                        flag,
                        value,
                        format!("duplicate URL {url} for member {name:?}"),
                    ));
                }
                urls.push(url)
            }
            None => out.push((name.to_string(), vec![url])),
        }
    }
    Ok(out)
}

/// The member must appear in `--initial-cluster`, and when bootstrapping a new cluster its
/// entry must list exactly its advertised peer URLs: member ids are derived from those URLs,
/// so a mismatch would give this member a different id than its peers compute for it.
fn check_local_member(cfg: &Config) -> Result<()> {
    let Some((_, urls)) = cfg.initial_cluster.iter().find(|(n, _)| *n == cfg.name) else {
        return Err(Error::Conflict(format!(
            "couldn't find local name {:?} in the initial cluster configuration (--initial-cluster={})",
            cfg.name,
            show_cluster(&cfg.initial_cluster)
        )));
    };
    if cfg.initial_cluster_state == ClusterState::Existing {
        return Ok(());
    }
    let advertised = &cfg.initial_advertise_peer_urls;
    if let Some(u) = urls.iter().find(|u| !advertised.contains(u)) {
        return Err(Error::Conflict(format!(
            "--initial-cluster has {}={} but it is missing from --initial-advertise-peer-urls={}",
            cfg.name,
            show_url(u),
            show_urls(advertised)
        )));
    }
    if let Some(u) = advertised.iter().find(|u| !urls.contains(u)) {
        return Err(Error::Conflict(format!(
            "--initial-advertise-peer-urls has {} but it is missing from --initial-cluster for {:?} ({})",
            show_url(u),
            cfg.name,
            show_cluster(&cfg.initial_cluster)
        )));
    }
    Ok(())
}

/// A URL as the user typed it (the url crate appends a `/`).
fn show_url(u: &Url) -> String {
    u.as_str().trim_end_matches('/').to_string()
}

fn show_urls(urls: &[Url]) -> String {
    urls.iter().map(show_url).collect::<Vec<_>>().join(",")
}

fn show_cluster(c: &[(String, Vec<Url>)]) -> String {
    c.iter()
        .flat_map(|(n, urls)| urls.iter().map(move |u| format!("{n}={}", show_url(u))))
        .collect::<Vec<_>>()
        .join(",")
}

fn check_timing(heartbeat_ms: u64, election_ms: u64) -> Result<()> {
    if heartbeat_ms == 0 {
        return Err(Error::invalid(
            "heartbeat-interval",
            "0",
            "must be greater than 0",
        ));
    }
    if election_ms == 0 {
        return Err(Error::invalid(
            "election-timeout",
            "0",
            "must be greater than 0",
        ));
    }
    if heartbeat_ms >= election_ms {
        return Err(Error::Conflict(format!(
            "--heartbeat-interval[{heartbeat_ms}ms] must be less than --election-timeout[{election_ms}ms]"
        )));
    }
    if election_ms > MAX_ELECTION_MS {
        return Err(Error::Conflict(format!(
            "--election-timeout[{election_ms}ms] is too long, and should be set less than {MAX_ELECTION_MS}ms"
        )));
    }
    Ok(())
}

/// An https listener without a certificate cannot serve anything; fail at start instead of at
/// the first handshake. A cert without its key (or the reverse) is the same mistake.
fn check_tls(cfg: &Config) -> Result<()> {
    let families = [
        (
            "--cert-file",
            "--key-file",
            &cfg.client_tls,
            vec![&cfg.listen_client_urls, &cfg.listen_metrics_urls],
        ),
        (
            "--peer-cert-file",
            "--peer-key-file",
            &cfg.peer_tls,
            vec![&cfg.listen_peer_urls],
        ),
    ];
    for (cert_flag, key_flag, tls, url_lists) in families {
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(Error::Conflict(format!(
                "{cert_flag} and {key_flag} must be given together"
            )));
        }
        let https = url_lists
            .iter()
            .flat_map(|l| l.iter())
            .find(|u| u.scheme() == "https");
        if let Some(u) = https {
            if tls.cert_file.is_none() {
                return Err(Error::Conflict(format!(
                    "TLS key/cert ({cert_flag}, {key_flag}) must be provided for https URL {}",
                    show_url(u)
                )));
            }
        }
    }
    Ok(())
}

/// `--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`, with etcd's bounds. A JWT token
/// provider is refused at start rather than silently replaced by simple tokens.
fn parse_auth_flags(cfg: &mut Config, m: &MemberArgs) -> Result<()> {
    if let Some(v) = &m.auth_token {
        let kind = v.split(',').next().unwrap_or_default();
        cfg.auth_token = match kind {
            "simple" => AuthToken::Simple,
            "jwt" => AuthToken::Jwt(parse_jwt_options(v)?),
            _ => {
                return Err(Error::invalid(
                    "auth-token",
                    v,
                    "must be \"simple\" or \"jwt,...\"",
                ))
            }
        };
    }
    if let Some(v) = &m.auth_token_ttl {
        cfg.auth_token_ttl = Duration::from_secs(parse_u64("auth-token-ttl", v)?);
    }
    if let Some(v) = &m.bcrypt_cost {
        let cost = parse_u64("bcrypt-cost", v)?;
        if !(4..=31).contains(&cost) {
            return Err(Error::invalid("bcrypt-cost", v, "must be between 4 and 31"));
        }
        cfg.bcrypt_cost = cost as u32;
    }
    Ok(())
}

/// `jwt,pub-key=PATH,priv-key=PATH,sign-method=ALG,ttl=DURATION` (etcd's option names).
fn parse_jwt_options(v: &str) -> Result<JwtOptions> {
    let mut o = JwtOptions {
        pub_key: None,
        priv_key: None,
        sign_method: String::new(),
        ttl: Duration::from_secs(300),
    };
    for opt in v.split(',').skip(1) {
        let (k, val) = opt.split_once('=').ok_or_else(|| {
            Error::invalid("auth-token", v, format!("option {opt:?} has no value"))
        })?;
        match k {
            "pub-key" => o.pub_key = Some(val.into()),
            "priv-key" => o.priv_key = Some(val.into()),
            "sign-method" => o.sign_method = val.to_string(),
            "ttl" => {
                o.ttl = parse_go_duration(val).map_err(|r| Error::invalid("auth-token", v, r))?
            }
            _ => {
                return Err(Error::invalid(
                    "auth-token",
                    v,
                    format!("unknown option {k:?}"),
                ))
            }
        }
    }
    if o.sign_method.is_empty() {
        return Err(Error::invalid("auth-token", v, "sign-method is required"));
    }
    if o.pub_key.is_none() && o.priv_key.is_none() {
        return Err(Error::invalid(
            "auth-token",
            v,
            "a pub-key or priv-key is required",
        ));
    }
    Ok(o)
}

fn parse_u64(flag: &str, v: &str) -> Result<u64> {
    v.parse::<u64>()
        .map_err(|_| Error::invalid(flag, v, "must be a non-negative integer"))
}

fn path_flag(v: &Option<String>) -> Option<PathBuf> {
    v.as_deref().filter(|s| !s.is_empty()).map(PathBuf::from)
}

/// etcd 3.6's feature gates.
const FEATURE_GATES: [&str; 7] = [
    "StopGRPCServiceOnDefrag",
    "TxnModeWriteWithSharedBuffer",
    "InitialCorruptCheck",
    "CompactHashCheck",
    "LeaseCheckpoint",
    "LeaseCheckpointPersist",
    "SetMemberLocalAddr",
];

/// The corruption-check flags (etcd's names, both the 3.6 ones and the deprecated
/// `experimental-` ones; ferrokv's defaults turn every check on).
fn parse_corrupt_flags(cfg: &mut Config, m: &MemberArgs) -> Result<()> {
    let c = &mut cfg.corrupt;
    if m.initial_corrupt_check.is_some() {
        c.initial = parse_bool_flag(
            "experimental-initial-corrupt-check",
            m.initial_corrupt_check.as_deref(),
        )?;
    }
    if m.compact_hash_check_enabled.is_some() {
        c.compact_hash = parse_bool_flag(
            "experimental-compact-hash-check-enabled",
            m.compact_hash_check_enabled.as_deref(),
        )?;
    }
    if let Some(v) = &m.feature_gates {
        for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, val) = pair.split_once('=').ok_or_else(|| {
                Error::invalid("feature-gates", v, format!("missing bool value for {pair}"))
            })?;
            let on = parse_bool_flag("feature-gates", Some(val.trim()))?;
            match name.trim() {
                "InitialCorruptCheck" => c.initial = on,
                "CompactHashCheck" => c.compact_hash = on,
                n if FEATURE_GATES.contains(&n) => {}
                n => {
                    return Err(Error::invalid(
                        "feature-gates",
                        v,
                        format!("unrecognized feature gate: {n}"),
                    ))
                }
            }
        }
    }
    let duration =
        |flag: &str, v: &str| parse_go_duration(v).map_err(|r| Error::invalid(flag, v, r));
    // The 3.6 name wins over the deprecated one, as etcd copies the deprecated one only when
    // it alone is set.
    if let Some(v) = &m.experimental_corrupt_check_time {
        c.periodic = duration("experimental-corrupt-check-time", v)?;
    }
    if let Some(v) = &m.corrupt_check_time {
        c.periodic = duration("corrupt-check-time", v)?;
    }
    for (flag, v) in [
        (
            "experimental-compact-hash-check-time",
            &m.experimental_compact_hash_check_time,
        ),
        ("compact-hash-check-time", &m.compact_hash_check_time),
    ] {
        if let Some(v) = v {
            let d = duration(flag, v)?;
            if d.is_zero() {
                return Err(Error::invalid(flag, v, "must be >0"));
            }
            c.compact_hash_time = d;
        }
    }
    if m.keyspace_verify_on_open.is_some() {
        c.verify_on_open = parse_bool_flag(
            "keyspace-verify-on-open",
            m.keyspace_verify_on_open.as_deref(),
        )?;
    }
    Ok(())
}

/// Go's `strconv.ParseBool`, which is what a Go bool flag accepts after `=`.
fn parse_bool_flag(flag: &str, v: Option<&str>) -> Result<bool> {
    match v {
        None => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(Error::invalid(flag, other, "must be true or false")),
    }
}

/// etcd: mode defaults to periodic; a retention of "0" (the default) disables compaction.
fn parse_auto_compaction(
    mode: Option<&str>,
    retention: Option<&str>,
) -> Result<Option<AutoCompaction>> {
    let retention_flag = "auto-compaction-retention";
    let r = retention.unwrap_or("0");
    match mode.unwrap_or("periodic") {
        "periodic" => {
            // etcd reads a bare integer as hours, anything else as a Go duration.
            let d = match r.parse::<u64>() {
                Ok(hours) => Duration::from_secs(hours.saturating_mul(3600)),
                Err(_) => parse_go_duration(r).map_err(|e| Error::invalid(retention_flag, r, e))?,
            };
            Ok((!d.is_zero()).then_some(AutoCompaction::Periodic(d)))
        }
        "revision" => {
            let n = r.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                Error::invalid(
                    retention_flag,
                    r,
                    "revision mode needs a non-negative integer",
                )
            })?;
            Ok((n != 0).then_some(AutoCompaction::Revision(n)))
        }
        other => Err(Error::invalid(
            "auto-compaction-mode",
            other,
            "valid values are \"periodic\", \"revision\"",
        )),
    }
}

/// Go's `time.ParseDuration` for non-negative values: `1h30m`, `1.5s`, `300ms`, `0`.
pub fn parse_go_duration(s: &str) -> std::result::Result<Duration, String> {
    const NS: &[(&str, u128)] = &[
        ("ns", 1),
        ("us", 1_000),
        ("µs", 1_000),
        ("μs", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    let bad = || format!("invalid duration {s:?} (examples: \"300ms\", \"5s\", \"1h30m\")");
    let body = s.strip_prefix('+').unwrap_or(s);
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() || body.starts_with('-') {
        return Err(bad());
    }
    let mut rest = body;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if int.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let per = NS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, n)| *n)
            .ok_or_else(bad)?;
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let mut value = int.checked_mul(per).ok_or_else(bad)?;
        if !frac.is_empty() {
            let digits = frac.len().min(18) as u32;
            let f: u128 = frac[..digits as usize].parse().map_err(|_| bad())?;
            value += f * per / 10u128.pow(digits);
        }
        total = total.checked_add(value).ok_or_else(bad)?;
        rest = tail;
    }
    u64::try_from(total)
        .map(Duration::from_nanos)
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn cmd(args: &[&str]) -> Result<Command> {
        let mut full = vec!["ferrokv"];
        full.extend_from_slice(args);
        parse(full, no_env)
    }

    fn serve_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Serve> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut full = vec!["ferrokv"];
        full.extend_from_slice(args);
        match parse(full, |k| env.get(k).cloned())? {
            Command::Serve(s) => Ok(*s),
            other => panic!("expected serve, got {other:?}"),
        }
    }

    fn serve(args: &[&str]) -> Serve {
        match serve_with_env(args, &[]) {
            Ok(s) => s,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    fn urls(list: &[&str]) -> Vec<Url> {
        list.iter().map(|s| Url::parse(s).unwrap()).collect()
    }

    #[test]
    fn defaults_are_etcds() {
        let s = serve(&[]);
        let c = &s.config;
        let d = Config::with_defaults("default");
        assert_eq!(c.name, "default");
        assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(c.listen_client_urls, d.listen_client_urls);
        assert_eq!(c.advertise_client_urls, d.advertise_client_urls);
        assert_eq!(c.listen_peer_urls, d.listen_peer_urls);
        assert_eq!(c.initial_advertise_peer_urls, d.initial_advertise_peer_urls);
        assert_eq!(c.initial_cluster, d.initial_cluster);
        assert_eq!(c.initial_cluster_state, ClusterState::New);
        assert_eq!(c.initial_cluster_token, "etcd-cluster");
        assert_eq!(c.snapshot_count, 10_000);
        assert_eq!(c.snapshot_catchup_entries, 5000);
        assert_eq!((c.max_snapshots, c.max_wals), (5, 5));
        assert!(!c.force_new_cluster);
        assert_eq!(c.heartbeat_interval, Duration::from_millis(100));
        assert_eq!(c.election_timeout, Duration::from_millis(1000));
        assert_eq!(c.quota_backend_bytes, 0);
        assert_eq!(c.max_request_bytes, 1536 * 1024);
        assert_eq!(c.auto_compaction, None);
        assert_eq!(c.client_tls, TlsFiles::default());
        assert_eq!(c.peer_tls, TlsFiles::default());
        assert!(c.listen_metrics_urls.is_empty());
        assert_eq!(c.watch_progress_notify_interval, Duration::from_secs(600));
        assert_eq!(
            s.log,
            LogSettings {
                level: LogLevel::Info,
                format: LogFormat::Json
            }
        );
    }

    /// One row per flag: the arguments and a check of the field it sets.
    #[test]
    fn each_flag_sets_its_field() {
        type Check = fn(&Serve) -> bool;
        let rows: &[(&[&str], Check)] = &[
            (&["--name=n1"], |s| {
                s.config.name == "n1"
                    && s.config.data_dir == Path::new("n1.etcd")
                    && s.config.initial_cluster
                        == vec![("n1".into(), urls(&["http://localhost:2380"]))]
            }),
            (&["--data-dir", "/var/lib/x"], |s| {
                s.config.data_dir == Path::new("/var/lib/x")
            }),
            (
                &[
                    "--listen-client-urls=http://0.0.0.0:2379,http://127.0.0.1:4001",
                    "--advertise-client-urls=http://10.0.0.1:2379",
                ],
                |s| {
                    s.config.listen_client_urls
                        == urls(&["http://0.0.0.0:2379", "http://127.0.0.1:4001"])
                        && s.config.advertise_client_urls == urls(&["http://10.0.0.1:2379"])
                },
            ),
            (
                &["--advertise-client-urls=http://node-1.example:2379"],
                |s| s.config.advertise_client_urls == urls(&["http://node-1.example:2379"]),
            ),
            (&["--listen-peer-urls=http://[::1]:2380"], |s| {
                s.config.listen_peer_urls == urls(&["http://[::1]:2380"])
            }),
            (
                &[
                    "--initial-advertise-peer-urls=http://a:2380",
                    "--initial-cluster=default=http://a:2380",
                ],
                |s| s.config.initial_advertise_peer_urls == urls(&["http://a:2380"]),
            ),
            (
                &[
                    "--name=n1",
                    "--initial-advertise-peer-urls=http://a:2380,http://c:2380",
                    "--initial-cluster=n1=http://a:2380,n2=http://b:2380,n1=http://c:2380",
                ],
                |s| {
                    s.config.initial_cluster
                        == vec![
                            ("n1".into(), urls(&["http://a:2380", "http://c:2380"])),
                            ("n2".into(), urls(&["http://b:2380"])),
                        ]
                },
            ),
            (&["--initial-cluster-state=existing"], |s| {
                s.config.initial_cluster_state == ClusterState::Existing
            }),
            (&["--initial-cluster-state", "new"], |s| {
                s.config.initial_cluster_state == ClusterState::New
            }),
            (&["--initial-cluster-token=tok-1"], |s| {
                s.config.initial_cluster_token == "tok-1"
            }),
            (&["--snapshot-count=10000"], |s| {
                s.config.snapshot_count == 10_000
            }),
            (&["--snapshot-count=500"], |s| {
                s.config.snapshot_count == 500
            }),
            // etcd replaces 0 with its default instead of never snapshotting.
            (&["--snapshot-count=0"], |s| {
                s.config.snapshot_count == 10_000
            }),
            (&["--snapshot-catchup-entries=7"], |s| {
                s.config.snapshot_catchup_entries == 7
            }),
            (&["--experimental-snapshot-catchup-entries=8"], |s| {
                s.config.snapshot_catchup_entries == 8
            }),
            (
                &[
                    "--snapshot-catchup-entries=7",
                    "--experimental-snapshot-catchup-entries=8",
                ],
                |s| s.config.snapshot_catchup_entries == 7,
            ),
            (&["--max-snapshots=0", "--max-wals=2"], |s| {
                s.config.max_snapshots == 0 && s.config.max_wals == 2
            }),
            (&["--force-new-cluster"], |s| s.config.force_new_cluster),
            (&["--force-new-cluster=false"], |s| {
                !s.config.force_new_cluster
            }),
            (&["--experimental-wal-segment-bytes=65536"], |s| {
                s.config.wal_segment_bytes == 65536
            }),
            (&["--heartbeat-interval=50"], |s| {
                s.config.heartbeat_interval == Duration::from_millis(50)
            }),
            (&["--election-timeout=5000"], |s| {
                s.config.election_timeout == Duration::from_millis(5000)
            }),
            (&["--election-timeout=50000"], |s| {
                s.config.election_timeout == Duration::from_millis(50_000)
            }),
            (&["--keyspace-cache-bytes=1048576"], |s| {
                s.config.keyspace_cache_bytes == 1 << 20
            }),
            (&["--quota-backend-bytes=8589934592"], |s| {
                s.config.quota_backend_bytes == 8 << 30
            }),
            (&["--auth-token=simple"], |s| {
                s.config.auth_token == AuthToken::Simple
            }),
            (&["--auth-token-ttl=2"], |s| {
                s.config.auth_token_ttl == Duration::from_secs(2)
            }),
            (&["--bcrypt-cost=4"], |s| s.config.bcrypt_cost == 4),
            (
                &["--auth-token=jwt,pub-key=/k.pub,sign-method=RS256,ttl=1m"],
                |s| {
                    s.config.auth_token
                        == AuthToken::Jwt(JwtOptions {
                            pub_key: Some("/k.pub".into()),
                            priv_key: None,
                            sign_method: "RS256".into(),
                            ttl: Duration::from_secs(60),
                        })
                },
            ),
            (&[], |s| {
                s.config.auth_token_ttl == Duration::from_secs(300) && s.config.bcrypt_cost == 10
            }),
            (&["--max-request-bytes=10485760"], |s| {
                s.config.max_request_bytes == 10 << 20
            }),
            (&["--auto-compaction-retention=1"], |s| {
                s.config.auto_compaction
                    == Some(AutoCompaction::Periodic(Duration::from_secs(3600)))
            }),
            (&["--auto-compaction-retention=30m"], |s| {
                s.config.auto_compaction
                    == Some(AutoCompaction::Periodic(Duration::from_secs(1800)))
            }),
            (
                &[
                    "--auto-compaction-mode=periodic",
                    "--auto-compaction-retention=1h",
                ],
                |s| {
                    s.config.auto_compaction
                        == Some(AutoCompaction::Periodic(Duration::from_secs(3600)))
                },
            ),
            (
                &[
                    "--auto-compaction-mode=revision",
                    "--auto-compaction-retention=1000",
                ],
                |s| s.config.auto_compaction == Some(AutoCompaction::Revision(1000)),
            ),
            (&["--auto-compaction-mode=revision"], |s| {
                s.config.auto_compaction.is_none()
            }),
            (&["--auto-compaction-retention=0"], |s| {
                s.config.auto_compaction.is_none()
            }),
            (
                &[
                    "--listen-client-urls=https://127.0.0.1:2379",
                    "--advertise-client-urls=https://127.0.0.1:2379",
                    "--cert-file=s.crt",
                    "--key-file=s.key",
                    "--trusted-ca-file=ca.crt",
                    "--client-cert-auth",
                ],
                |s| {
                    s.config.client_tls
                        == TlsFiles {
                            cert_file: Some("s.crt".into()),
                            key_file: Some("s.key".into()),
                            trusted_ca_file: Some("ca.crt".into()),
                            client_cert_auth: true,
                        }
                },
            ),
            (&["--client-cert-auth=true"], |s| {
                s.config.client_tls.client_cert_auth
            }),
            (&["--client-cert-auth=false"], |s| {
                !s.config.client_tls.client_cert_auth
            }),
            (
                &[
                    "--listen-peer-urls=https://127.0.0.1:2380",
                    "--peer-cert-file=p.crt",
                    "--peer-key-file=p.key",
                    "--peer-trusted-ca-file=ca.crt",
                    "--peer-client-cert-auth=true",
                ],
                |s| {
                    s.config.peer_tls
                        == TlsFiles {
                            cert_file: Some("p.crt".into()),
                            key_file: Some("p.key".into()),
                            trusted_ca_file: Some("ca.crt".into()),
                            client_cert_auth: true,
                        }
                },
            ),
            (&["--metrics=extensive"], |s| s.config.metrics_extensive),
            (&["--metrics", "basic"], |s| !s.config.metrics_extensive),
            (&["--listen-metrics-urls=http://127.0.0.1:2381"], |s| {
                s.config.listen_metrics_urls == urls(&["http://127.0.0.1:2381"])
            }),
            (&["--log-level=debug"], |s| s.log.level == LogLevel::Debug),
            (&["--log-level=warn"], |s| s.log.level == LogLevel::Warn),
            (&["--log-level=error"], |s| s.log.level == LogLevel::Error),
            (&["--log-format=console"], |s| {
                s.log.format == LogFormat::Console
            }),
            (&["--logger=zap", "--log-outputs=stderr"], |s| {
                s.log.format == LogFormat::Json
            }),
            (&["--experimental-watch-progress-notify-interval=5s"], |s| {
                s.config.watch_progress_notify_interval == Duration::from_secs(5)
            }),
            (&["--experimental-initial-corrupt-check=true"], |s| {
                s.config.corrupt.initial
            }),
            (&["--experimental-initial-corrupt-check=false"], |s| {
                !s.config.corrupt.initial
            }),
            (
                &["--feature-gates=InitialCorruptCheck=false,CompactHashCheck=false"],
                |s| !s.config.corrupt.initial && !s.config.corrupt.compact_hash,
            ),
            (&["--experimental-corrupt-check-time=3s"], |s| {
                s.config.corrupt.periodic == Duration::from_secs(3)
            }),
            (&["--corrupt-check-time=0s"], |s| {
                s.config.corrupt.periodic.is_zero()
            }),
            (
                &[
                    "--compact-hash-check-time=2s",
                    "--keyspace-verify-on-open=false",
                ],
                |s| {
                    s.config.corrupt.compact_hash_time == Duration::from_secs(2)
                        && !s.config.corrupt.verify_on_open
                },
            ),
            (&[], |s| {
                s.config.corrupt == ferrokv_server::config::CorruptCheck::default()
                    && s.config.corrupt.initial
            }),
            // Go conventions: single dash, space-separated value, last one wins.
            (&["-name", "n2"], |s| s.config.name == "n2"),
            (&["-name=n3", "-data-dir=/d"], |s| {
                s.config.name == "n3" && s.config.data_dir == Path::new("/d")
            }),
            (&["--snapshot-count=1", "--snapshot-count=2"], |s| {
                s.config.snapshot_count == 2
            }),
            (&["-client-cert-auth"], |s| {
                s.config.client_tls.client_cert_auth
            }),
        ];
        for (args, check) in rows {
            let s = serve(args);
            assert!(check(&s), "{args:?} gave {:#?}", s.config);
        }
    }

    /// One row per error: the arguments and a fragment the one-line message must contain.
    #[test]
    fn each_bad_value_is_rejected_with_a_clear_message() {
        let rows: &[(&[&str], &str)] = &[
            (&["--listen-client-urls=foo", "--advertise-client-urls=http://a:1"], "invalid value \"foo\" for flag --listen-client-urls"),
            (&["--listen-client-urls=localhost:2379", "--advertise-client-urls=http://a:1"], "URL scheme must be http or https"),
            (&["--listen-client-urls=http://127.0.0.1:2379/v3", "--advertise-client-urls=http://a:1"], "URL must not contain a path"),
            (&["--listen-client-urls=http://127.0.0.1", "--advertise-client-urls=http://a:1"], "does not have the form \"host:port\""),
            (&["--listen-client-urls=http://example.com:2379", "--advertise-client-urls=http://a:1"], "expected IP in URL for binding"),
            (&["--listen-client-urls=http://127.0.0.1:2379"], "--advertise-client-urls is required when --listen-client-urls is set explicitly"),
            (&["--advertise-client-urls=http://a:2379/x"], "for flag --advertise-client-urls: URL must not contain a path"),
            (&["--advertise-client-urls="], "for flag --advertise-client-urls: no URL given"),
            (&["--listen-peer-urls=ftp://127.0.0.1:2380"], "for flag --listen-peer-urls: URL scheme must be http or https"),
            (&["--listen-metrics-urls=http://host:2381"], "for flag --listen-metrics-urls: expected IP"),
            (&["--initial-advertise-peer-urls=http://localhost:2380,http://b:2380", "--initial-cluster=default=http://localhost:2380"], "--initial-advertise-peer-urls has http://b:2380 but it is missing from --initial-cluster"),
            (&["--initial-cluster=default=http://x:2380"], "--initial-cluster has default=http://x:2380 but it is missing from --initial-advertise-peer-urls=http://localhost:2380"),
            (&["--name=n1", "--initial-cluster=n2=http://localhost:2380"], "couldn't find local name \"n1\" in the initial cluster configuration"),
            (&["--name=n1", "--initial-cluster-state=existing", "--initial-cluster=n2=http://b:2380"], "couldn't find local name \"n1\""),
            (&["--initial-cluster=default"], "\"default\" is not of the form name=url"),
            (&["--max-wals=-1"], "invalid value \"-1\" for flag --max-wals"),
            (&["--max-snapshots=x"], "invalid value \"x\" for flag --max-snapshots"),
            (&["--force-new-cluster=maybe"], "--force-new-cluster"),
            (&["--experimental-wal-segment-bytes=0"], "must be greater than 0"),
            (&["--initial-cluster==http://localhost:2380"], "has no name"),
            (&["--initial-cluster=default=localhost:2380"], "invalid value \"default=localhost:2380\" for flag --initial-cluster"),
            (&["--initial-cluster=default=http://localhost:2380,default=http://localhost:2380"], "duplicate URL"),
            (&["--initial-cluster-state=old"], "invalid value \"old\" for flag --initial-cluster-state"),
            (&["--snapshot-count=many"], "invalid value \"many\" for flag --snapshot-count"),
            (&["--snapshot-count=-1"], "invalid value \"-1\" for flag --snapshot-count"),
            (&["--heartbeat-interval=1000"], "--heartbeat-interval[1000ms] must be less than --election-timeout[1000ms]"),
            (&["--heartbeat-interval=200", "--election-timeout=100"], "must be less than --election-timeout[100ms]"),
            (&["--heartbeat-interval=0"], "invalid value \"0\" for flag --heartbeat-interval"),
            (&["--election-timeout=50001"], "--election-timeout[50001ms] is too long, and should be set less than 50000ms"),
            (&["--election-timeout=1s"], "invalid value \"1s\" for flag --election-timeout"),
            (&["--quota-backend-bytes=2G"], "invalid value \"2G\" for flag --quota-backend-bytes"),
            (&["--auth-token=jwt,pub-key=a"], "invalid value \"jwt,pub-key=a\" for flag --auth-token"),
            (&["--auth-token=oauth"], "invalid value \"oauth\" for flag --auth-token"),
            (&["--auth-token-ttl=5m"], "invalid value \"5m\" for flag --auth-token-ttl"),
            (&["--bcrypt-cost=3"], "invalid value \"3\" for flag --bcrypt-cost"),
            (&["--max-request-bytes=0"], "invalid value \"0\" for flag --max-request-bytes"),
            (&["--auto-compaction-mode=hourly"], "invalid value \"hourly\" for flag --auto-compaction-mode"),
            (&["--auto-compaction-retention=1x"], "invalid value \"1x\" for flag --auto-compaction-retention"),
            (&["--auto-compaction-mode=revision", "--auto-compaction-retention=1h"], "invalid value \"1h\" for flag --auto-compaction-retention"),
            (&["--auto-compaction-mode=revision", "--auto-compaction-retention=-5"], "for flag --auto-compaction-retention"),
            (&["--listen-client-urls=https://127.0.0.1:2379", "--advertise-client-urls=https://a:2379"], "TLS key/cert (--cert-file, --key-file) must be provided for https URL https://127.0.0.1:2379"),
            (&["--listen-peer-urls=https://127.0.0.1:2380"], "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided"),
            (&["--listen-metrics-urls=https://127.0.0.1:2381"], "(--cert-file, --key-file) must be provided"),
            (&["--cert-file=a.crt"], "--cert-file and --key-file must be given together"),
            (&["--peer-key-file=a.key"], "--peer-cert-file and --peer-key-file must be given together"),
            (&["--client-cert-auth=maybe"], "invalid value \"maybe\" for flag --client-cert-auth"),
            (&["--log-level=verbose"], "invalid value \"verbose\" for flag --log-level"),
            (&["--log-format=xml"], "invalid value \"xml\" for flag --log-format"),
            (&["--logger=glog"], "invalid value \"glog\" for flag --logger"),
            (&["--log-outputs=/var/log/x"], "for flag --log-outputs"),
            (&["--experimental-watch-progress-notify-interval=5"], "invalid value \"5\" for flag --experimental-watch-progress-notify-interval"),
            (&["--experimental-watch-progress-notify-interval=0s"], "must be greater than 0"),
            (&["--data-dir="], "invalid value \"\" for flag --data-dir"),
            (&["--no-such-flag=1"], "flag provided but not defined: --no-such-flag"),
            (&["-no-such-flag"], "flag provided but not defined: -no-such-flag"),
            (&["-n"], "flag provided but not defined: -n"),
            (&["--name"], "a value is required for '--name <NAME>'"),
            (&["stray"], "stray"),
        ];
        for (args, want) in rows {
            match cmd(args) {
                Ok(c) => panic!("{args:?} was accepted: {c:?}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(want), "{args:?}: {msg:?} lacks {want:?}");
                    assert!(
                        !msg.contains('\n'),
                        "{args:?}: message is not one line: {msg:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn env_vars_fill_flags_and_a_shadowed_one_is_fatal() {
        // etcd 3.6 stops on a variable its flag overrides ("conflicting environment
        // variable is shadowed by corresponding command-line flag").
        let err = serve_with_env(&["--name=from-flag"], &[("ETCD_NAME", "from-env")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("conflicting environment variable ETCD_NAME is shadowed by corresponding command-line flag --name"),
            "{err}"
        );
        let err = serve_with_env(&["-discovery-token=a"], &[("ETCD_DISCOVERY_TOKEN", "")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ETCD_DISCOVERY_TOKEN is shadowed"), "{err}");
        // An empty variable is not used (etcd's rule).
        let s = serve_with_env(&[], &[("ETCD_NAME", "")]).unwrap();
        assert_eq!(s.config.name, "default");
        let s = serve_with_env(
            &["--name=from-flag"],
            &[
                ("ETCD_DATA_DIR", "/data/env"),
                ("ETCD_INITIAL_CLUSTER", "from-flag=http://localhost:2380"),
                ("ETCD_SNAPSHOT_COUNT", "42"),
                ("ETCD_CLIENT_CERT_AUTH", "true"),
                ("ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", "5s"),
                // Not a flag: container images set it; it must not be read as --version.
                ("ETCD_VERSION", "3.5.0"),
            ],
        )
        .unwrap();
        assert_eq!(s.config.name, "from-flag");
        assert_eq!(s.config.data_dir, PathBuf::from("/data/env"));
        assert_eq!(s.config.snapshot_count, 42);
        assert!(s.config.client_tls.client_cert_auth);
        assert_eq!(
            s.config.watch_progress_notify_interval,
            Duration::from_secs(5)
        );

        let s = serve_with_env(&[], &[("ETCD_NAME", "envname")]).unwrap();
        assert_eq!(s.config.name, "envname");
        assert_eq!(s.config.data_dir, PathBuf::from("envname.etcd"));

        let err = serve_with_env(&[], &[("ETCD_HEARTBEAT_INTERVAL", "abc")]).unwrap_err();
        assert!(
            err.to_string().contains("for flag --heartbeat-interval"),
            "{err}"
        );
    }

    #[test]
    fn unknown_env_vars_are_reported() {
        let names = [
            "ETCD_NAME",
            "ETCD_DATA_DIR",
            "ETCD_VERSION",
            "ETCD_DATADIR",
            "ETCD_LISTEN_CLIENT_URL",
            "PATH",
        ];
        assert_eq!(
            unknown_env_vars(names),
            vec![
                "ETCD_DATADIR".to_string(),
                "ETCD_LISTEN_CLIENT_URL".to_string()
            ]
        );
    }

    #[test]
    fn env_names_follow_etcds_rule() {
        assert_eq!(env_name("data-dir"), "ETCD_DATA_DIR");
        assert_eq!(env_name("initial-cluster"), "ETCD_INITIAL_CLUSTER");
        assert_eq!(
            env_name("experimental-watch-progress-notify-interval"),
            "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL"
        );
    }

    #[test]
    fn subcommands() {
        assert!(matches!(cmd(&["version"]).unwrap(), Command::Version));
        assert!(matches!(cmd(&["--version"]).unwrap(), Command::Version));
        assert!(matches!(cmd(&["-version"]).unwrap(), Command::Version));
        match cmd(&["dump-logs", "/d"]).unwrap() {
            Command::DumpLogs { data_dir } => assert_eq!(data_dir, PathBuf::from("/d")),
            other => panic!("{other:?}"),
        }
        match cmd(&["snapshot", "status", "s.db"]).unwrap() {
            Command::SnapshotStatus { file } => assert_eq!(file, PathBuf::from("s.db")),
            other => panic!("{other:?}"),
        }
        match cmd(&["snapshot", "save", "s.db"]).unwrap() {
            Command::SnapshotSave(s) => {
                assert_eq!(s.endpoints, vec!["127.0.0.1:2379".to_string()]);
                assert_eq!(s.dial_timeout, Duration::from_secs(2));
                assert_eq!(s.tls, ClientTls::default());
            }
            other => panic!("{other:?}"),
        }
        match cmd(&[
            "snapshot",
            "save",
            "s.db",
            "--endpoints",
            "http://a:1,https://b:2",
            "-dial-timeout=500ms",
            "--cacert=ca.pem",
        ])
        .unwrap()
        {
            Command::SnapshotSave(s) => {
                assert_eq!(
                    s.endpoints,
                    vec!["http://a:1".to_string(), "https://b:2".to_string()]
                );
                assert_eq!(s.dial_timeout, Duration::from_millis(500));
                assert_eq!(s.tls.ca_file, Some(PathBuf::from("ca.pem")));
            }
            other => panic!("{other:?}"),
        }
        match cmd(&[
            "snapshot",
            "restore",
            "s.db",
            "--name=n2",
            "--initial-cluster=n1=http://a:2380,n2=http://b:2380",
            "--initial-advertise-peer-urls=http://b:2380",
            "--initial-cluster-token=t2",
        ])
        .unwrap()
        {
            Command::SnapshotRestore(r) => {
                assert_eq!(r.file, PathBuf::from("s.db"));
                assert_eq!(r.config.name, "n2");
                assert_eq!(r.config.data_dir, PathBuf::from("n2.etcd"));
                assert_eq!(r.config.initial_cluster.len(), 2);
                assert_eq!(r.config.initial_cluster_token, "t2");
            }
            other => panic!("{other:?}"),
        }
        match cmd(&["snapshot", "restore", "s.db", "--data-dir=/x"]).unwrap() {
            Command::SnapshotRestore(r) => {
                assert_eq!(r.config.data_dir, PathBuf::from("/x"));
                assert_eq!(
                    r.config.initial_cluster,
                    vec![("default".into(), urls(&["http://localhost:2380"]))]
                );
            }
            other => panic!("{other:?}"),
        }
        let e = cmd(&[
            "snapshot",
            "restore",
            "s.db",
            "--name=n3",
            "--initial-cluster=n1=http://a:2380",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("couldn't find local name \"n3\""), "{e}");
        let e = cmd(&[
            "snapshot",
            "restore",
            "s.db",
            "--initial-advertise-peer-urls=b:2380",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("for flag --initial-advertise-peer-urls"), "{e}");
        assert!(
            matches!(cmd(&["--help"]).unwrap(), Command::Help(h) if h.contains("--initial-cluster"))
        );
        assert!(
            matches!(cmd(&["snapshot", "save", "--help"]).unwrap(), Command::Help(h) if h.contains("--endpoints"))
        );
        // Env vars are for the member only; a subcommand must not trip over them.
        let env = |k: &str| (k == "ETCD_NAME").then(|| "x".to_string());
        assert!(matches!(
            parse(["ferrokv", "version"], env).unwrap(),
            Command::Version
        ));
        let e = cmd(&["snapshot", "save"]).unwrap_err().to_string();
        assert!(e.contains("<FILE>"), "{e}");
        let e = cmd(&["snapshot", "save", "f", "--dial-timeout=soon"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid value \"soon\" for flag --dial-timeout"),
            "{e}"
        );
        assert!(matches!(
            parse(["ferrokv", "help"], env).unwrap(),
            Command::Help(_)
        ));
        let e = cmd(&["snapshot"]).unwrap_err().to_string();
        assert_eq!(e, "a subcommand is required (see --help)");
        let e = cmd(&["--name=x", "version"]).unwrap_err().to_string();
        assert!(!e.is_empty());
    }

    #[test]
    fn discovery_flags() {
        // v3 with etcd's defaults; endpoints deduplicated and sorted like etcd's flag value.
        let s = serve(&[
            "--discovery-endpoints=http://b:2379,a:2379,a:2379",
            "--discovery-token=tok",
        ]);
        match s.config.discovery {
            Some(Discovery::V3(d)) => {
                assert_eq!(
                    d.endpoints,
                    vec!["a:2379".to_string(), "http://b:2379".to_string()]
                );
                assert_eq!(d.token, "tok");
                assert_eq!(d.dial_timeout, Duration::from_secs(2));
                assert_eq!(d.request_timeout, Duration::from_secs(5));
                assert_eq!(d.keepalive_time, Duration::from_secs(2));
                assert_eq!(d.keepalive_timeout, Duration::from_secs(6));
                assert!(d.insecure_transport);
                assert_eq!((d.user, d.password), (None, None));
            }
            other => panic!("{other:?}"),
        }
        let s = serve(&[
            "-discovery-endpoints=a:1",
            "-discovery-token=t",
            "--discovery-dial-timeout=500ms",
            "--discovery-request-timeout=1m",
            "--discovery-keepalive-time=3s",
            "--discovery-keepalive-timeout=9s",
            "--discovery-insecure-transport=false",
            "--discovery-cert=c.pem",
            "--discovery-key=k.pem",
            "--discovery-cacert=ca.pem",
            "--discovery-user=root",
            "--discovery-password=pw",
            "--discovery-fallback=exit",
        ]);
        match s.config.discovery {
            Some(Discovery::V3(d)) => {
                assert_eq!(d.dial_timeout, Duration::from_millis(500));
                assert_eq!(d.request_timeout, Duration::from_secs(60));
                assert_eq!(d.keepalive_time, Duration::from_secs(3));
                assert_eq!(d.keepalive_timeout, Duration::from_secs(9));
                assert!(!d.insecure_transport);
                assert_eq!(d.cert_file, Some(PathBuf::from("c.pem")));
                assert_eq!(d.key_file, Some(PathBuf::from("k.pem")));
                assert_eq!(d.ca_file, Some(PathBuf::from("ca.pem")));
                assert_eq!(d.user.as_deref(), Some("root"));
                assert_eq!(d.password.as_deref(), Some("pw"));
            }
            other => panic!("{other:?}"),
        }
        // v2, from the environment as container images set it.
        let s = serve_with_env(
            &[],
            &[
                ("ETCD_DISCOVERY", "https://discovery.etcd.io/abc"),
                ("ETCD_DISCOVERY_PROXY", "127.0.0.1:3128"),
            ],
        )
        .unwrap();
        assert_eq!(
            s.config.discovery,
            Some(Discovery::V2 {
                url: "https://discovery.etcd.io/abc".into(),
                proxy: Some("127.0.0.1:3128".into())
            })
        );
        let s = serve_with_env(
            &[],
            &[
                ("ETCD_DISCOVERY_ENDPOINTS", "a:1"),
                ("ETCD_DISCOVERY_TOKEN", "t"),
            ],
        )
        .unwrap();
        assert!(matches!(s.config.discovery, Some(Discovery::V3(_))));
        assert_eq!(serve(&[]).config.discovery, None);

        // etcd 3.6's messages, in etcd's order of checks.
        let rows: &[(&[&str], &str)] = &[
            (&["--discovery-token=a"], "both --discovery-token and --discovery-endpoints must be set"),
            (&["--discovery-endpoints=a:1"], "both --discovery-token and --discovery-endpoints must be set"),
            (&["--discovery=http://a:1/x", "--discovery-token=a"], "both --discovery-token and --discovery-endpoints must be set"),
            (&["--discovery-endpoints=a:1,", "--discovery-token=a"], "--discovery-endpoints must not contain empty endpoints"),
            (&["--discovery=http://a:1/x", "--initial-cluster=default=http://localhost:2380"], "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\", \"discovery-endpoints\" or \"discovery-srv\""),
            (&["--discovery-endpoints=a:1", "--discovery-token=t", "--discovery=http://a:1/x"], "multiple discovery or bootstrap flags are set"),
            (&["--discovery-srv=example.com", "--discovery=http://a:1/x"], "multiple discovery or bootstrap flags are set"),
            (&["--discovery-proxy=p:1", "--discovery-endpoints=a:1", "--discovery-token=t"], "both v2 discovery settings (discovery, discovery-proxy) and v3 discovery settings"),
            (&["--discovery-fallback=proxy"], "v2 proxy is deprecated, and --discovery-fallback can't be configured as \"proxy\""),
            (&["--discovery-fallback=x"], "invalid value \"x\" for flag --discovery-fallback"),
            (&["--discovery-dial-timeout=5"], "invalid value \"5\" for flag --discovery-dial-timeout"),
            (&["--discovery-insecure-transport=maybe"], "invalid value \"maybe\" for flag --discovery-insecure-transport"),
            (&["--discovery-srv-name=x"], "--discovery-srv-name is set without --discovery-srv"),
            (&["--discovery-endpoints=a:1", "--discovery-token=t", "--discovery-cert=c"], "--discovery-cert and --discovery-key must be given together"),
            (&["--discovery=http://a:1/x", "--initial-cluster-state=existing"], "discovery URL should not be set when joining existing initial cluster"),
            (&["--discovery=discovery.etcd.io/x"], "invalid value \"discovery.etcd.io/x\" for flag --discovery"),
        ];
        for (args, want) in rows {
            match cmd(args) {
                Ok(c) => panic!("{args:?} was accepted: {c:?}"),
                Err(e) => assert!(
                    e.to_string().contains(want),
                    "{args:?}: {e:?} lacks {want:?}"
                ),
            }
        }
    }

    #[test]
    fn unknown_bootstrap_env_vars_are_fatal_others_only_warned() {
        // Known now: honoured, not refused.
        assert!(check_bootstrap_env([
            "ETCD_DISCOVERY",
            "ETCD_DISCOVERY_TOKEN",
            "ETCD_INITIAL_CLUSTER"
        ])
        .is_ok());
        // Unknown but harmless: etcd warns, so does ferrokv (in main).
        assert!(check_bootstrap_env(["ETCD_FOO", "ETCD_DATADIR", "ETCD_VERSION", "PATH"]).is_ok());
        for bad in [
            "ETCD_DISCOVERY_SRV_NAMEX",
            "ETCD_DISCOVERYURL",
            "ETCD_INITIAL_CLUSTERS",
            "ETCD_FORCE_NEW_CLUSTER",
            "ETCD_CONFIG_FILE",
            "ETCD_WAL_DIR",
        ] {
            if unknown_env_vars([bad]).is_empty() {
                // A flag of that name exists (added by another change): then it is honoured.
                continue;
            }
            let e = check_bootstrap_env(["ETCD_NAME", bad])
                .unwrap_err()
                .to_string();
            assert!(e.contains(bad) && e.contains("refusing to start"), "{e}");
        }
    }

    #[test]
    fn go_durations() {
        let ok: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("5s", Duration::from_secs(5)),
            ("300ms", Duration::from_millis(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5s", Duration::from_millis(1500)),
            (".5m", Duration::from_secs(30)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("+2m", Duration::from_secs(120)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_go_duration(s), Ok(*want), "{s}");
        }
        for bad in [
            "",
            "5",
            "s",
            "-5s",
            "1d",
            "1.s5",
            "5 s",
            ".s",
            "99999999999999999999h",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn single_dash_only_rewrites_known_flags() {
        let spec = Cli::command();
        let norm = |args: &[&str]| {
            normalise_single_dash(&spec, args.iter().map(|s| s.to_string()).collect())
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            norm(&[
                "ferrokv",
                "-name=a",
                "-x",
                "--data-dir",
                "-1",
                "-initial-cluster",
                "v",
                "--",
                "-name"
            ]),
            Ok([
                "ferrokv",
                "--name=a",
                "-x",
                "--data-dir",
                "-1",
                "--initial-cluster",
                "v",
                "--",
                "-name"
            ]
            .map(String::from)
            .to_vec())
        );
        // A value that looks like a flag is still a value (Go's rule for string flags).
        assert_eq!(
            norm(&[
                "ferrokv",
                "--initial-cluster-token",
                "-tok",
                "-client-cert-auth"
            ]),
            Ok([
                "ferrokv",
                "--initial-cluster-token",
                "-tok",
                "--client-cert-auth"
            ]
            .map(String::from)
            .to_vec())
        );
        assert_eq!(
            norm(&["ferrokv", "-nope=1"]),
            Err("flag provided but not defined: -nope".to_string())
        );
    }

    #[test]
    fn snapshot_commands_take_object_store_urls() {
        match cmd(&[
            "snapshot",
            "save",
            "s3://b/p/c",
            "--compression=none",
            "--encryption-key-file=k",
        ])
        .unwrap()
        {
            Command::SnapshotSave(s) => {
                let b = s.backup.unwrap();
                assert_eq!(b.url, "s3://b/p/c");
                assert_eq!(b.cluster, None);
                assert_eq!(b.encryption_key_file, Some(PathBuf::from("k")));
                assert_eq!(s.compression, ferrokv_backup::Compression::None);
            }
            other => panic!("{other:?}"),
        }
        match cmd(&["snapshot", "save", "s.db"]).unwrap() {
            Command::SnapshotSave(s) => {
                assert_eq!(s.backup, None);
                assert_eq!(s.compression, ferrokv_backup::Compression::Zstd);
            }
            other => panic!("{other:?}"),
        }
        match cmd(&[
            "snapshot",
            "restore",
            "gs://b/p",
            "--cluster=ns/x",
            "--revision=7",
        ])
        .unwrap()
        {
            Command::SnapshotRestore(r) => {
                assert_eq!(r.backup.unwrap().cluster.as_deref(), Some("ns/x"));
                assert_eq!(r.revision, Some(7));
            }
            other => panic!("{other:?}"),
        }
        for (args, want) in [
            (
                &["snapshot", "save", "s.db", "--cluster=x"][..],
                "need an object-store URL",
            ),
            (
                &["snapshot", "restore", "s.db", "--revision=3"][..],
                "--revision needs",
            ),
            (&["snapshot", "save", "ftp://b/x"][..], "unknown scheme"),
            (
                &["snapshot", "save", "s3://b/x", "--compression=lz4"][..],
                "--compression",
            ),
            (
                &["snapshot", "restore", "s3://b/x", "--revision=-1"][..],
                "--revision",
            ),
            (
                &["snapshot", "save", "s3://b/x", "--cluster=a//b"][..],
                "--cluster",
            ),
        ] {
            let e = cmd(args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }
}
