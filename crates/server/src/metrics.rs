//! Prometheus metrics in the text exposition format, with etcd's metric names where one
//! exists so dashboards built for etcd keep working.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<&'static str, u64>>,
    applied: AtomicU64,
}

/// Point-in-time values the metrics endpoint reads from the member.
pub struct Gauges {
    pub has_leader: bool,
    pub is_leader: bool,
    pub term: u64,
    pub commit_index: u64,
    pub db_size: i64,
    pub db_size_in_use: i64,
    pub revision: i64,
    pub compact_revision: i64,
}

impl Metrics {
    pub fn request(&self, method: &'static str) {
        *self.requests.lock().entry(method).or_insert(0) += 1;
    }

    pub fn set_applied(&self, index: u64) {
        self.applied.store(index, Ordering::Relaxed);
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP grpc_server_started_total Total number of RPCs started on the server."
        );
        let _ = writeln!(out, "# TYPE grpc_server_started_total counter");
        for (method, n) in self.requests.lock().iter() {
            let service = service_of(method);
            let _ = writeln!(
                out,
                "grpc_server_started_total{{grpc_method=\"{method}\",grpc_service=\"etcdserverpb.{service}\"}} {n}"
            );
        }
        let gauge = |out: &mut String, name: &str, help: &str, v: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {v}");
        };
        gauge(
            &mut out,
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            (g.has_leader as u8).to_string(),
        );
        gauge(
            &mut out,
            "etcd_server_is_leader",
            "Whether or not this member is a leader.",
            (g.is_leader as u8).to_string(),
        );
        gauge(
            &mut out,
            "etcd_server_term",
            "The current term.",
            g.term.to_string(),
        );
        gauge(
            &mut out,
            "etcd_server_committed_index",
            "The current committed index.",
            g.commit_index.to_string(),
        );
        gauge(
            &mut out,
            "etcd_server_applied_index",
            "The current applied index.",
            self.applied.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database in bytes.",
            g.db_size.to_string(),
        );
        gauge(
            &mut out,
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Size of the database in use in bytes.",
            g.db_size_in_use.to_string(),
        );
        gauge(
            &mut out,
            "etcd_debugging_mvcc_current_revision",
            "The current revision of the store.",
            g.revision.to_string(),
        );
        gauge(
            &mut out,
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction.",
            g.compact_revision.to_string(),
        );
        out
    }
}

fn service_of(method: &str) -> &'static str {
    match method {
        "Range" | "Put" | "DeleteRange" | "Txn" | "Compact" => "KV",
        "LeaseGrant" | "LeaseRevoke" | "LeaseKeepAlive" | "LeaseTimeToLive" | "LeaseLeases" => {
            "Lease"
        }
        "MemberList" => "Cluster",
        "AuthStatus" => "Auth",
        _ => "Maintenance",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.request("Put");
        m.request("Put");
        m.request("Status");
        m.set_applied(42);
        let text = m.render(&Gauges {
            has_leader: true,
            is_leader: true,
            term: 3,
            commit_index: 42,
            db_size: 4096,
            db_size_in_use: 1024,
            revision: 7,
            compact_revision: 0,
        });
        assert!(
            text.contains(
                "grpc_server_started_total{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("grpc_method=\"Status\",grpc_service=\"etcdserverpb.Maintenance\"} 1")
        );
        assert!(text.contains("etcd_server_applied_index 42"));
        assert!(text.contains("etcd_mvcc_db_total_size_in_bytes 4096"));
        assert!(text.contains("etcd_server_has_leader 1"));
    }
}
