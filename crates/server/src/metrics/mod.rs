//! Prometheus metrics in the text exposition format, under etcd 3.6's family names, types,
//! HELP texts, labels and histogram buckets, so etcd's Grafana dashboard and the etcd mixin's
//! alerts work unchanged.
//!
//! Counters are atomics bumped where the work happens (the gRPC layer, the apply loop, the
//! WAL through [`ferrokv_wal::WalObserver`], the peer transport); point-in-time values (raft
//! state, db size) are read at scrape time into [`Gauges`]; `process_*` comes from `/proc`;
//! three `go_*` families have honest runtime counterparts (`runtime.rs`).
//! No lock is taken on a request path: the only lock guards the per-peer table, touched when
//! a peer is added and at scrape time.

mod grpc;
mod histogram;
mod mvcc;
mod process;
mod runtime;
pub mod stages;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

pub use grpc::{is_unary, method_index, CODES};
pub use histogram::Histogram;
use histogram::{DISK_BUCKETS, RTT_BUCKETS};
pub use mvcc::MvccOps;

/// etcd warns about (and counts) an apply slower than this (`warnApplyDuration`).
pub const SLOW_APPLY: Duration = Duration::from_millis(100);

/// Everything the member counts. One per member, shared as `Arc<Metrics>`.
pub struct Metrics {
    pub grpc: grpc::GrpcStats,
    applied: AtomicU64,
    proposals_failed: AtomicU64,
    proposals_pending: AtomicI64,
    heartbeat_send_failures: AtomicU64,
    slow_apply: AtomicU64,
    wal_fsync: Histogram,
    wal_write: Histogram,
    wal_write_bytes: AtomicU64,
    health_success: AtomicU64,
    health_failures: AtomicU64,
    read_indexes_failed: AtomicU64,
    leases_granted: AtomicU64,
    leases_revoked: AtomicU64,
    leases_renewed: AtomicU64,
    backend_commit: Histogram,
    puts: AtomicU64,
    deletes: AtomicU64,
    ranges: AtomicU64,
    txns: AtomicU64,
    keys: AtomicI64,
    client_received_bytes: AtomicU64,
    client_sent_bytes: AtomicU64,
    peers: RwLock<BTreeMap<u64, Arc<PeerStats>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(false)
    }
}

/// Point-in-time values the metrics endpoint reads from the member.
#[derive(Debug, Default)]
pub struct Gauges {
    pub member_id: u64,
    pub has_leader: bool,
    pub is_leader: bool,
    pub is_learner: bool,
    pub leader_changes: u64,
    pub term: u64,
    pub commit_index: u64,
    pub quota_backend_bytes: u64,
    pub db_size: i64,
    pub db_size_in_use: i64,
    pub revision: i64,
    pub compact_revision: i64,
    /// The etcd version this member reports (`etcd_server_version`).
    pub version: &'static str,
}

/// What the transport counts for one peer (etcd's `To`/`From`/`Remote` labels).
pub struct PeerStats {
    pub sent_bytes: AtomicU64,
    pub sent_failures: AtomicU64,
    pub received_bytes: AtomicU64,
    pub round_trip: Histogram,
    /// A stream to the peer is open (`etcd_network_active_peers`).
    pub active: AtomicBool,
    /// Inbound streams from the peer that broke (`etcd_network_peer_received_failures_total`).
    pub received_failures: AtomicU64,
}

/// Writes a family's `# HELP` and `# TYPE` lines.
pub(crate) fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, help: &str, kind: &str, v: impl std::fmt::Display) {
    header(out, name, help, kind);
    let _ = writeln!(out, "{name} {v}");
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Metrics {
    /// `extensive`: `--metrics extensive`, which adds the gRPC handling-time histograms.
    pub fn new(extensive: bool) -> Self {
        Metrics {
            grpc: grpc::GrpcStats::new(extensive),
            applied: AtomicU64::new(0),
            proposals_failed: AtomicU64::new(0),
            proposals_pending: AtomicI64::new(0),
            heartbeat_send_failures: AtomicU64::new(0),
            slow_apply: AtomicU64::new(0),
            wal_fsync: Histogram::new(DISK_BUCKETS),
            wal_write: Histogram::new(DISK_BUCKETS),
            wal_write_bytes: AtomicU64::new(0),
            health_success: AtomicU64::new(0),
            health_failures: AtomicU64::new(0),
            read_indexes_failed: AtomicU64::new(0),
            leases_granted: AtomicU64::new(0),
            leases_revoked: AtomicU64::new(0),
            leases_renewed: AtomicU64::new(0),
            backend_commit: Histogram::new(DISK_BUCKETS),
            puts: AtomicU64::new(0),
            deletes: AtomicU64::new(0),
            ranges: AtomicU64::new(0),
            txns: AtomicU64::new(0),
            keys: AtomicI64::new(0),
            client_received_bytes: AtomicU64::new(0),
            client_sent_bytes: AtomicU64::new(0),
            peers: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn set_applied(&self, index: u64) {
        self.applied.store(index, Ordering::Relaxed);
    }

    /// A client proposal entered raft (`etcd_server_proposals_pending` until it ends).
    pub fn proposal_started(&self) {
        self.proposals_pending.fetch_add(1, Ordering::Relaxed);
    }

    /// A client proposal ended; `failed` when it timed out or raft refused it.
    pub fn proposal_ended(&self, failed: bool) {
        self.proposals_pending.fetch_sub(1, Ordering::Relaxed);
        if failed {
            self.proposals_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A `/health` check answered healthy or not.
    pub fn health_checked(&self, healthy: bool) {
        let c = if healthy {
            &self.health_success
        } else {
            &self.health_failures
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A linearizable read could not get a read index (timeout, no leader, stop).
    pub fn read_index_failed(&self) {
        self.read_indexes_failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lease_granted(&self) {
        self.leases_granted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lease_revoked(&self) {
        self.leases_revoked.fetch_add(1, Ordering::Relaxed);
    }

    /// A keep-alive renewed a lease on this member as leader.
    pub fn lease_renewed(&self) {
        self.leases_renewed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn heartbeat_send_failed(&self) {
        self.heartbeat_send_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// One apply-loop batch was committed to the backend after `commit` and took `total`.
    pub fn backend_committed(&self, commit: Duration, total: Duration) {
        self.backend_commit.observe(commit);
        if total > SLOW_APPLY {
            self.slow_apply.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One storage transaction of this member made these calls (see [`MvccOps`]).
    pub fn mvcc(&self, ops: MvccOps) {
        let txns = u64::from(ops.total() > 1);
        for (a, n) in [
            (&self.puts, ops.puts),
            (&self.deletes, ops.deletes),
            (&self.ranges, ops.ranges),
            (&self.txns, txns),
        ] {
            if n > 0 {
                a.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// The number of live keys changed by `delta` (`etcd_debugging_mvcc_keys_total`).
    pub fn keys_changed(&self, delta: i64) {
        if delta != 0 {
            self.keys.fetch_add(delta, Ordering::Relaxed);
        }
    }

    pub fn set_keys(&self, n: i64) {
        self.keys.store(n, Ordering::Relaxed);
    }

    pub fn client_bytes(&self, received: u64, sent: u64) {
        if received > 0 {
            self.client_received_bytes
                .fetch_add(received, Ordering::Relaxed);
        }
        if sent > 0 {
            self.client_sent_bytes.fetch_add(sent, Ordering::Relaxed);
        }
    }

    /// The counters of one peer, created on first use. Callers keep the `Arc` so the hot
    /// path never looks the peer up again.
    pub fn peer(&self, id: u64) -> Arc<PeerStats> {
        if let Some(p) = self.peers.read().get(&id) {
            return p.clone();
        }
        self.peers
            .write()
            .entry(id)
            .or_insert_with(|| {
                Arc::new(PeerStats {
                    sent_bytes: AtomicU64::new(0),
                    sent_failures: AtomicU64::new(0),
                    received_bytes: AtomicU64::new(0),
                    round_trip: Histogram::new(RTT_BUCKETS),
                    active: AtomicBool::new(false),
                    received_failures: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// A member left: its series go, as etcd removes a removed peer's.
    pub fn remove_peer(&self, id: u64) {
        self.peers.write().remove(&id);
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(64 * 1024);
        self.render_server(&mut out, g);
        self.render_disk(&mut out);
        self.render_mvcc(&mut out, g);
        self.render_network(&mut out, g);
        self.grpc.render(&mut out);
        process::render(&mut out);
        runtime::render(&mut out);
        out
    }

    fn render_server(&self, out: &mut String, g: &Gauges) {
        let b = |v: bool| u8::from(v);
        header(
            out,
            "etcd_cluster_version",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
            "gauge",
        );
        let cluster_version = g.version.rsplit_once('.').map_or(g.version, |(mm, _)| mm);
        let _ = writeln!(
            out,
            "etcd_cluster_version{{cluster_version=\"{cluster_version}\"}} 1"
        );
        single(
            out,
            "etcd_debugging_lease_granted_total",
            "The total number of granted leases.",
            "counter",
            load(&self.leases_granted),
        );
        single(
            out,
            "etcd_debugging_lease_renewed_total",
            "The number of renewed leases seen by the leader.",
            "counter",
            load(&self.leases_renewed),
        );
        single(
            out,
            "etcd_debugging_lease_revoked_total",
            "The total number of revoked leases.",
            "counter",
            load(&self.leases_revoked),
        );
        single(
            out,
            "etcd_server_health_failures",
            "The total number of failed health checks",
            "counter",
            load(&self.health_failures),
        );
        single(
            out,
            "etcd_server_health_success",
            "The total number of successful health checks",
            "counter",
            load(&self.health_success),
        );
        single(
            out,
            "etcd_server_read_indexes_failed_total",
            "The total number of failed read indexes seen.",
            "counter",
            load(&self.read_indexes_failed),
        );
        single(
            out,
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            "gauge",
            b(g.has_leader),
        );
        single(out, "etcd_server_heartbeat_send_failures_total", "The total number of leader heartbeat send failures (likely overloaded from slow disk).", "counter", load(&self.heartbeat_send_failures));
        header(
            out,
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            "gauge",
        );
        let _ = writeln!(out, "etcd_server_id{{server_id=\"{:x}\"}} 1", g.member_id);
        single(
            out,
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            "gauge",
            b(g.is_leader),
        );
        single(
            out,
            "etcd_server_is_learner",
            "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            "gauge",
            b(g.is_learner),
        );
        single(
            out,
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            "counter",
            g.leader_changes,
        );
        // etcd reports the raft applied and commit indexes as these two gauges.
        single(
            out,
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            "gauge",
            load(&self.applied),
        );
        single(
            out,
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            "gauge",
            g.commit_index,
        );
        single(
            out,
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            "counter",
            load(&self.proposals_failed),
        );
        single(
            out,
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            "gauge",
            self.proposals_pending.load(Ordering::Relaxed).max(0),
        );
        single(
            out,
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            "gauge",
            g.quota_backend_bytes,
        );
        single(
            out,
            "etcd_server_slow_apply_total",
            "The total number of slow apply requests (likely overloaded from slow disk).",
            "counter",
            load(&self.slow_apply),
        );
        header(
            out,
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "etcd_server_version{{server_version=\"{}\"}} 1",
            g.version
        );
        // ferrokv's own (etcd 3.6 has no such families); kept for existing scrapes.
        single(
            out,
            "etcd_server_term",
            "The current term.",
            "gauge",
            g.term,
        );
        single(
            out,
            "etcd_server_committed_index",
            "The current committed index.",
            "gauge",
            g.commit_index,
        );
        single(
            out,
            "etcd_server_applied_index",
            "The current applied index.",
            "gauge",
            load(&self.applied),
        );
    }

    fn render_disk(&self, out: &mut String) {
        header(
            out,
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            "histogram",
        );
        self.backend_commit
            .render(out, "etcd_disk_backend_commit_duration_seconds", "");
        header(
            out,
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            "histogram",
        );
        self.wal_fsync
            .render(out, "etcd_disk_wal_fsync_duration_seconds", "");
        header(
            out,
            "etcd_disk_wal_write_duration_seconds",
            "The latency distributions of write called by WAL.",
            "histogram",
        );
        self.wal_write
            .render(out, "etcd_disk_wal_write_duration_seconds", "");
        // A gauge in etcd, though it only grows.
        single(
            out,
            "etcd_disk_wal_write_bytes_total",
            "Total number of bytes written in WAL.",
            "gauge",
            load(&self.wal_write_bytes),
        );
    }

    fn render_mvcc(&self, out: &mut String, g: &Gauges) {
        single(
            out,
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            "gauge",
            g.compact_revision,
        );
        single(
            out,
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            "gauge",
            g.revision,
        );
        single(
            out,
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys.",
            "gauge",
            self.keys.load(Ordering::Relaxed).max(0),
        );
        single(
            out,
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            "gauge",
            g.db_size,
        );
        single(
            out,
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            "gauge",
            g.db_size_in_use,
        );
        single(
            out,
            "etcd_mvcc_delete_total",
            "Total number of deletes seen by this member.",
            "counter",
            load(&self.deletes),
        );
        single(
            out,
            "etcd_mvcc_put_total",
            "Total number of puts seen by this member.",
            "counter",
            load(&self.puts),
        );
        single(
            out,
            "etcd_mvcc_range_total",
            "Total number of ranges seen by this member.",
            "counter",
            load(&self.ranges),
        );
        single(
            out,
            "etcd_mvcc_txn_total",
            "Total number of txns seen by this member.",
            "counter",
            load(&self.txns),
        );
    }

    fn render_network(&self, out: &mut String, g: &Gauges) {
        let peers = self.peers.read();
        let local = g.member_id;
        // Like etcd's vectors, the per-peer families appear once there is a peer.
        if !peers.is_empty() {
            header(
                out,
                "etcd_network_active_peers",
                "The current number of active peer connections.",
                "gauge",
            );
            for (id, p) in peers.iter() {
                let v = u8::from(p.active.load(Ordering::Relaxed));
                let _ = writeln!(
                    out,
                    "etcd_network_active_peers{{Local=\"{local:x}\",Remote=\"{id:x}\"}} {v}"
                );
            }
        }
        single(
            out,
            "etcd_network_client_grpc_received_bytes_total",
            "The total number of bytes received from grpc clients.",
            "counter",
            load(&self.client_received_bytes),
        );
        single(
            out,
            "etcd_network_client_grpc_sent_bytes_total",
            "The total number of bytes sent to grpc clients.",
            "counter",
            load(&self.client_sent_bytes),
        );
        if peers.is_empty() {
            return;
        }
        header(
            out,
            "etcd_network_known_peers",
            "The current number of known peers.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "etcd_network_known_peers{{Local=\"{local:x}\",Remote=\"{local:x}\"}} 1"
        );
        for id in peers.keys() {
            let _ = writeln!(
                out,
                "etcd_network_known_peers{{Local=\"{local:x}\",Remote=\"{id:x}\"}} 1"
            );
        }
        header(
            out,
            "etcd_network_peer_received_failures_total",
            "The total number of receive failures from peers.",
            "counter",
        );
        for (id, p) in peers.iter() {
            let _ = writeln!(
                out,
                "etcd_network_peer_received_failures_total{{From=\"{id:x}\"}} {}",
                load(&p.received_failures)
            );
        }
        header(
            out,
            "etcd_network_peer_received_bytes_total",
            "The total number of bytes received from peers.",
            "counter",
        );
        for (id, p) in peers.iter() {
            let _ = writeln!(
                out,
                "etcd_network_peer_received_bytes_total{{From=\"{id:x}\"}} {}",
                load(&p.received_bytes)
            );
        }
        header(
            out,
            "etcd_network_peer_round_trip_time_seconds",
            "Round-Trip-Time histogram between peers",
            "histogram",
        );
        for (id, p) in peers.iter() {
            p.round_trip.render(
                out,
                "etcd_network_peer_round_trip_time_seconds",
                &format!("To=\"{id:x}\""),
            );
        }
        header(
            out,
            "etcd_network_peer_sent_bytes_total",
            "The total number of bytes sent to peers.",
            "counter",
        );
        for (id, p) in peers.iter() {
            let _ = writeln!(
                out,
                "etcd_network_peer_sent_bytes_total{{To=\"{id:x}\"}} {}",
                load(&p.sent_bytes)
            );
        }
        header(
            out,
            "etcd_network_peer_sent_failures_total",
            "The total number of send failures from peers.",
            "counter",
        );
        for (id, p) in peers.iter() {
            let _ = writeln!(
                out,
                "etcd_network_peer_sent_failures_total{{To=\"{id:x}\"}} {}",
                load(&p.sent_failures)
            );
        }
    }
}

/// The WAL reports each synced append here (`etcd_disk_wal_*`).
#[derive(Clone)]
pub struct WalMetrics(pub Arc<Metrics>);

impl std::fmt::Debug for WalMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WalMetrics")
    }
}

impl ferrokv_wal::WalObserver for WalMetrics {
    fn synced(&self, bytes: u64, write: Duration, fsync: Duration) {
        self.0.wal_write_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.0.wal_write.observe(write);
        self.0.wal_fsync.observe(fsync);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrokv_wal::WalObserver as _;

    #[test]
    fn renders_etcds_families() {
        let m = Metrics::new(false);
        let put = method_index("/etcdserverpb.KV/Put").unwrap();
        m.grpc.started(put);
        m.grpc.started(put);
        m.grpc.handled(put, 0, Duration::from_millis(1));
        m.set_applied(42);
        m.mvcc(MvccOps::put(&Default::default()));
        m.mvcc(MvccOps::put(&Default::default()));
        m.keys_changed(2);
        WalMetrics(Arc::new(Metrics::new(false))).synced(
            10,
            Duration::from_micros(5),
            Duration::from_micros(300),
        );
        let text = m.render(&Gauges {
            member_id: 0xabc,
            has_leader: true,
            is_leader: true,
            commit_index: 42,
            quota_backend_bytes: 2 << 30,
            db_size: 4096,
            ..Gauges::default()
        });
        for want in [
            "grpc_server_started_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2\n",
            "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n",
            "grpc_server_started_total{grpc_method=\"Status\",grpc_service=\"etcdserverpb.Maintenance\",grpc_type=\"unary\"} 0\n",
            "etcd_server_proposals_applied_total 42\n",
            "etcd_server_id{server_id=\"abc\"} 1\n",
            "etcd_mvcc_put_total 2\n",
            "etcd_debugging_mvcc_keys_total 2\n",
            "etcd_mvcc_db_total_size_in_bytes 4096\n",
            "etcd_server_has_leader 1\n",
            "# TYPE etcd_disk_wal_fsync_duration_seconds histogram\n",
        ] {
            assert!(text.contains(want), "missing {want}");
        }
        assert!(!text.contains("grpc_server_handling_seconds"));
        assert!(!text.contains("etcd_network_peer_sent_bytes_total"));
        m.peer(7).sent_bytes.fetch_add(5, Ordering::Relaxed);
        let text = m.render(&Gauges::default());
        assert!(text.contains("etcd_network_peer_sent_bytes_total{To=\"7\"} 5\n"));
        assert!(Metrics::new(true)
            .render(&Gauges::default())
            .contains("# TYPE grpc_server_handling_seconds histogram\n"));
    }
}
