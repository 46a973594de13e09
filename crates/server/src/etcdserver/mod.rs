//! The server core the gRPC services call ([`EtcdServer`]): typed propose-and-wait, the
//! linearizable read barrier, the backend quota, the reconfiguration policy, leader
//! forwarding, the compactor, lease expiry and response headers. One file per request family
//! (kv, lease, cluster, maintenance, auth), all methods of the one server type.
//!
//! May depend on `apply`, `watch` and `peer` (and the crate's base modules); must not depend
//! on `api`, `net` or `node`.

mod auth;
mod cluster;
pub mod compactor;
pub mod corrupt;
mod headers;
mod jwt;
mod kv;
mod lease;
pub mod lease_expiry;
mod maintenance;
mod quota;
mod raft_snapshot;
pub mod reconfig;
mod server;

pub use auth::Caller;
pub use kv::txn_is_read_only;
pub use lease::{min_ttl, MAX_LEASE_TTL};
pub use maintenance::SnapshotChunks;
pub use server::{EtcdServer, ServerParts};

/// The version reported by Status and `/version`: kube-apiserver enables watch progress
/// requests only for etcd >= 3.5.13, and ferrokv implements them.
pub const ETCD_VERSION: &str = "3.6.0";
/// etcd's default backend quota (2 GiB).
pub const DEFAULT_QUOTA_BYTES: i64 = 2 * 1024 * 1024 * 1024;
