//! Everything a member needs to start, independent of how it was given (flags, env vars,
//! tests). Field names follow etcd's flags so the mapping stays obvious.

use std::path::PathBuf;
use std::time::Duration;

/// TLS material for one listener family (client or peer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    /// Require and verify a client certificate signed by `trusted_ca_file`.
    pub client_cert_auth: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterState {
    #[default]
    New,
    Existing,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep `retention` worth of history (etcd `--auto-compaction-mode=periodic`).
    Periodic(Duration),
    /// Keep the last N revisions (etcd `--auto-compaction-mode=revision`).
    Revision(i64),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    /// `http://host:port` or `https://host:port` URLs to listen on for clients.
    pub listen_client_urls: Vec<url::Url>,
    pub advertise_client_urls: Vec<url::Url>,
    pub listen_peer_urls: Vec<url::Url>,
    pub initial_advertise_peer_urls: Vec<url::Url>,
    /// `name -> peer URLs` of the initial members, in flag order.
    pub initial_cluster: Vec<(String, Vec<url::Url>)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    /// `--snapshot-count` (etcd 3.6's default 10000).
    pub snapshot_count: u64,
    /// `--snapshot-catchup-entries` (`--experimental-snapshot-catchup-entries`, 5000).
    pub snapshot_catchup_entries: u64,
    /// `--max-snapshots`: `.snap` files kept, 0 = unlimited (5).
    pub max_snapshots: usize,
    /// `--max-wals`: WAL segments kept, 0 = unlimited (5).
    pub max_wals: usize,
    /// `--force-new-cluster`: restart an existing member as a one-member cluster.
    pub force_new_cluster: bool,
    /// Hidden `--experimental-wal-segment-bytes` (tests): WAL segment size, 64 MiB as etcd.
    pub wal_segment_bytes: u64,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    /// 0 = the default quota (2 GiB, as etcd).
    pub quota_backend_bytes: u64,
    /// `--keyspace-cache-bytes` (ferrokv's own): redb's page cache of the keyspace file.
    pub keyspace_cache_bytes: usize,
    pub max_request_bytes: usize,
    pub auto_compaction: Option<AutoCompaction>,
    pub client_tls: TlsFiles,
    pub peer_tls: TlsFiles,
    /// Extra plain-HTTP listeners for `/metrics`, `/health`, `/livez`, `/readyz`.
    pub listen_metrics_urls: Vec<url::Url>,
    /// How often idle `progress_notify` watchers get a progress response (etcd: 10 min).
    pub watch_progress_notify_interval: Duration,
    /// `--metrics extensive`: also export `grpc_server_handling_seconds` (etcd's default is
    /// `basic`, without it).
    pub metrics_extensive: bool,
    /// How auth tokens are made (etcd `--auth-token`: `simple` or `jwt,...`).
    pub auth_token: AuthToken,
    /// How long a simple token lives after its last use (etcd `--auth-token-ttl`, 300 s).
    pub auth_token_ttl: Duration,
    /// bcrypt cost of stored password hashes (etcd `--bcrypt-cost`, 10).
    pub bcrypt_cost: u32,
    /// Bootstrap through a discovery service instead of `--initial-cluster` (first boot only).
    pub discovery: Option<Discovery>,
    /// Corruption checks (etcd's are opt-in; ferrokv's are on by default).
    pub corrupt: CorruptCheck,
}

/// How a new member finds the other members of the cluster it bootstraps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// etcd 3.6's v3 discovery (`--discovery-endpoints`, `--discovery-token`, ...): an etcd
    /// cluster holding `/_etcd/registry/<token>/...`.
    V3(V3Discovery),
    /// The v2 protocol (`--discovery URL`): a v2 keys-API style HTTP service, e.g.
    /// `https://discovery.etcd.io/<token>`.
    V2 {
        url: String,
        /// `--discovery-proxy`: an HTTP proxy for the requests to `url`.
        proxy: Option<String>,
    },
    /// DNS SRV records (`--discovery-srv DOMAIN`, `--discovery-srv-name NAME`):
    /// `_etcd-server-ssl[-NAME]._tcp.DOMAIN` and `_etcd-server[-NAME]._tcp.DOMAIN`.
    Srv {
        domain: String,
        service_name: Option<String>,
    },
}

/// etcd's `v3discovery.DiscoveryConfig` (the `--discovery-*` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V3Discovery {
    /// gRPC endpoints of the discovery cluster: `host:port` or `http(s)://host:port`.
    pub endpoints: Vec<String>,
    pub token: String,
    pub dial_timeout: Duration,
    /// Per request, dialing excluded.
    pub request_timeout: Duration,
    pub keepalive_time: Duration,
    pub keepalive_timeout: Duration,
    /// etcd's default `true`: plain gRPC unless certificates are given.
    pub insecure_transport: bool,
    pub insecure_skip_tls_verify: bool,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// `--discovery-user` (etcd passes it unchanged as the user name).
    pub user: Option<String>,
    pub password: Option<String>,
}

impl V3Discovery {
    /// etcd's defaults (`embed.NewConfig`) for `endpoints` and `token`.
    pub fn with_defaults(endpoints: Vec<String>, token: String) -> V3Discovery {
        V3Discovery {
            endpoints,
            token,
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            keepalive_time: Duration::from_secs(2),
            keepalive_timeout: Duration::from_secs(6),
            insecure_transport: true,
            insecure_skip_tls_verify: false,
            cert_file: None,
            key_file: None,
            ca_file: None,
            user: None,
            password: None,
        }
    }
}

/// The corruption checks of `etcdserver/corrupt.rs`, with etcd's flag names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptCheck {
    /// `--experimental-initial-corrupt-check` / `--feature-gates=InitialCorruptCheck=`: a
    /// restarting member compares its HashKV with its peers' before it serves anything.
    pub initial: bool,
    /// `--corrupt-check-time` (`--experimental-corrupt-check-time`): how often the leader
    /// compares every member's HashKV; zero turns the periodic check off.
    pub periodic: Duration,
    /// `--feature-gates=CompactHashCheck=` (`--experimental-compact-hash-check-enabled`).
    pub compact_hash: bool,
    /// `--compact-hash-check-time` (`--experimental-compact-hash-check-time`).
    pub compact_hash_time: Duration,
    /// `--keyspace-verify-on-open` (ferrokv's own): redb's page checksums and the
    /// latest/history cross-check before the keyspace is trusted at start.
    pub verify_on_open: bool,
}

impl Default for CorruptCheck {
    fn default() -> Self {
        CorruptCheck {
            initial: true,
            periodic: Duration::from_secs(300),
            compact_hash: true,
            compact_hash_time: Duration::from_secs(60),
            verify_on_open: true,
        }
    }
}

/// etcd's `--auth-token` kinds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AuthToken {
    /// Random tokens known to every member through raft, expiring after the TTL.
    #[default]
    Simple,
    /// Signed, stateless tokens (`jwt,pub-key=..,priv-key=..,sign-method=..,ttl=..`).
    Jwt(JwtOptions),
}

/// The options of `--auth-token=jwt,...`, as etcd names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtOptions {
    /// Verifies tokens (for HS* the shared secret is `priv_key`).
    pub pub_key: Option<PathBuf>,
    /// Signs tokens; a member without it only verifies.
    pub priv_key: Option<PathBuf>,
    /// RS256/384/512, PS256/384/512, ES256/384, EdDSA, HS256/384/512.
    pub sign_method: String,
    /// Lifetime of a token (etcd: 5 minutes).
    pub ttl: Duration,
}

impl Config {
    /// etcd's defaults for a member called `name`.
    pub fn with_defaults(name: &str) -> Config {
        let url = |s: &str| url::Url::parse(s).ok().into_iter().collect::<Vec<_>>();
        Config {
            name: name.to_string(),
            data_dir: PathBuf::from(format!("{name}.etcd")),
            listen_client_urls: url("http://localhost:2379"),
            advertise_client_urls: url("http://localhost:2379"),
            listen_peer_urls: url("http://localhost:2380"),
            initial_advertise_peer_urls: url("http://localhost:2380"),
            initial_cluster: vec![(name.to_string(), url("http://localhost:2380"))],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".to_string(),
            snapshot_count: 10_000,
            snapshot_catchup_entries: 5000,
            max_snapshots: 5,
            max_wals: 5,
            force_new_cluster: false,
            wal_segment_bytes: 64 * 1024 * 1024,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            quota_backend_bytes: 0,
            keyspace_cache_bytes: ferrokv_storage::DEFAULT_CACHE_BYTES,
            max_request_bytes: 1536 * 1024,
            auto_compaction: None,
            client_tls: TlsFiles::default(),
            peer_tls: TlsFiles::default(),
            listen_metrics_urls: Vec::new(),
            watch_progress_notify_interval: Duration::from_secs(600),
            metrics_extensive: false,
            auth_token: AuthToken::Simple,
            auth_token_ttl: Duration::from_secs(300),
            bcrypt_cost: 10,
            discovery: None,
            corrupt: CorruptCheck::default(),
        }
    }

    pub fn member_dir(&self) -> PathBuf {
        self.layout().member()
    }

    /// The data dir's layout (`member/wal`, `member/snap/db`, ...).
    pub fn layout(&self) -> ferrokv_datadir::DataDir {
        ferrokv_datadir::DataDir::new(&self.data_dir)
    }
}
