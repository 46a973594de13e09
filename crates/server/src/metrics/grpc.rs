//! go-grpc-prometheus' server metrics as etcd exports them: every method of every service
//! etcd registers, pre-initialised at zero (so dashboards and `rate()` see a series before the
//! first call), with `grpc_type`/`grpc_service`/`grpc_method` (and `grpc_code`) labels.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::histogram::{Histogram, GRPC_BUCKETS};

/// (service, method, grpc_type) of every RPC etcd 3.6 serves on the client port.
pub const METHODS: [(&str, &str, &str); 44] = [
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Auth", "AuthDisable", "unary"),
    ("etcdserverpb.Auth", "AuthEnable", "unary"),
    ("etcdserverpb.Auth", "AuthStatus", "unary"),
    ("etcdserverpb.Auth", "Authenticate", "unary"),
    ("grpc.health.v1.Health", "Check", "unary"),
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.Maintenance", "Downgrade", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("grpc.health.v1.Health", "List", "unary"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.Auth", "RoleAdd", "unary"),
    ("etcdserverpb.Auth", "RoleDelete", "unary"),
    ("etcdserverpb.Auth", "RoleGet", "unary"),
    ("etcdserverpb.Auth", "RoleGrantPermission", "unary"),
    ("etcdserverpb.Auth", "RoleList", "unary"),
    ("etcdserverpb.Auth", "RoleRevokePermission", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.Auth", "UserAdd", "unary"),
    ("etcdserverpb.Auth", "UserChangePassword", "unary"),
    ("etcdserverpb.Auth", "UserDelete", "unary"),
    ("etcdserverpb.Auth", "UserGet", "unary"),
    ("etcdserverpb.Auth", "UserGrantRole", "unary"),
    ("etcdserverpb.Auth", "UserList", "unary"),
    ("etcdserverpb.Auth", "UserRevokeRole", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("grpc.health.v1.Health", "Watch", "server_stream"),
];

/// gRPC status names by code number (0 = OK .. 16 = Unauthenticated).
pub const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The code numbers in the order of their names, as Prometheus' Go client sorts label values.
const CODES_BY_NAME: [usize; 17] = [10, 6, 1, 15, 4, 9, 13, 3, 5, 0, 11, 7, 8, 16, 14, 12, 2];

/// Index into [`METHODS`] of a gRPC path such as `/etcdserverpb.KV/Range`.
pub fn method_index(path: &str) -> Option<usize> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    METHODS
        .iter()
        .position(|(s, m, _)| *m == method && *s == service)
}

/// Whether the method at `index` is unary (one request and one response message).
pub fn is_unary(index: usize) -> bool {
    METHODS.get(index).is_some_and(|(_, _, t)| *t == "unary")
}

struct MethodStats {
    started: AtomicU64,
    handled: [AtomicU64; 17],
    received: AtomicU64,
    sent: AtomicU64,
    handling: Histogram,
}

pub struct GrpcStats {
    methods: Vec<MethodStats>,
    /// `--metrics extensive`: also the handling-time histograms, as etcd does.
    extensive: bool,
}

impl GrpcStats {
    pub fn new(extensive: bool) -> Self {
        GrpcStats {
            methods: METHODS
                .iter()
                .map(|_| MethodStats {
                    started: AtomicU64::new(0),
                    handled: std::array::from_fn(|_| AtomicU64::new(0)),
                    received: AtomicU64::new(0),
                    sent: AtomicU64::new(0),
                    handling: Histogram::new(GRPC_BUCKETS),
                })
                .collect(),
            extensive,
        }
    }

    pub fn started(&self, method: usize) {
        if let Some(m) = self.methods.get(method) {
            m.started.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn received(&self, method: usize, messages: u64) {
        if let Some(m) = self.methods.get(method) {
            m.received.fetch_add(messages, Ordering::Relaxed);
        }
    }

    pub fn sent(&self, method: usize, messages: u64) {
        if let Some(m) = self.methods.get(method) {
            m.sent.fetch_add(messages, Ordering::Relaxed);
        }
    }

    /// The call ended with gRPC status `code` after `took`.
    pub fn handled(&self, method: usize, code: usize, took: Duration) {
        let Some(m) = self.methods.get(method) else {
            return;
        };
        if let Some(c) = m.handled.get(code.min(CODES.len() - 1)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if self.extensive {
            m.handling.observe(took);
        }
    }

    #[cfg(test)]
    pub fn handled_count(&self, method: usize, code: usize) -> u64 {
        self.methods[method].handled[code].load(Ordering::Relaxed)
    }

    pub fn render(&self, out: &mut String) {
        let per_method = |out: &mut String,
                          name: &str,
                          help: &str,
                          get: &dyn Fn(&MethodStats) -> u64| {
            super::header(out, name, help, "counter");
            for (i, (service, method, kind)) in METHODS.iter().enumerate() {
                let v = self.methods.get(i).map_or(0, get);
                let _ = writeln!(
                    out,
                    "{name}{{grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{kind}\"}} {v}"
                );
            }
        };
        super::header(
            out,
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            "counter",
        );
        for code in CODES_BY_NAME {
            for (i, (service, method, kind)) in METHODS.iter().enumerate() {
                let v = self
                    .methods
                    .get(i)
                    .and_then(|m| m.handled.get(code))
                    .map_or(0, |c| c.load(Ordering::Relaxed));
                let _ = writeln!(
                    out,
                    "grpc_server_handled_total{{grpc_code=\"{}\",grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{kind}\"}} {v}",
                    CODES[code]
                );
            }
        }
        if self.extensive {
            super::header(
                out,
                "grpc_server_handling_seconds",
                "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                "histogram",
            );
            for (i, (service, method, kind)) in METHODS.iter().enumerate() {
                if let Some(m) = self.methods.get(i) {
                    let labels = format!(
                        "grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{kind}\""
                    );
                    m.handling
                        .render(out, "grpc_server_handling_seconds", &labels);
                }
            }
        }
        per_method(
            out,
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            &|m| m.received.load(Ordering::Relaxed),
        );
        per_method(
            out,
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            &|m| m.sent.load(Ordering::Relaxed),
        );
        per_method(
            out,
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            &|m| m.started.load(Ordering::Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_etcds_methods() {
        let put = method_index("/etcdserverpb.KV/Put").unwrap();
        assert_eq!(METHODS[put], ("etcdserverpb.KV", "Put", "unary"));
        let w = method_index("/etcdserverpb.Watch/Watch").unwrap();
        assert_eq!(METHODS[w].2, "bidi_stream");
        assert!(!is_unary(w) && is_unary(put));
        let hw = method_index("/grpc.health.v1.Health/Watch").unwrap();
        assert_ne!(w, hw);
        assert_eq!(method_index("/ferrokvpb.Peer/Send"), None);
        assert_eq!(method_index("/health"), None);
    }

    #[test]
    fn codes_by_name_is_a_sorted_permutation() {
        let names: Vec<&str> = CODES_BY_NAME.iter().map(|&c| CODES[c]).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        let mut all = CODES_BY_NAME.to_vec();
        all.sort_unstable();
        assert_eq!(all, (0..17).collect::<Vec<_>>());
    }
}
