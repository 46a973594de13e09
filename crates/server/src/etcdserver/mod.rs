//! The server core the gRPC services call: typed propose-and-wait, the linearizable read
//! barrier, the backend quota, the reconfiguration policy, leader forwarding, the compactor,
//! lease expiry and response headers.
//!
//! May depend on `apply`, `watch` and `peer` (and the crate's base modules); must not depend
//! on `api`, `net` or `node`.

pub mod compactor;
pub mod lease_expiry;
pub mod reconfig;
mod server;

pub use server::Core;

/// The version reported by Status and `/version`: kube-apiserver enables watch progress
/// requests only for etcd >= 3.5.13, and ferrokv implements them.
pub const ETCD_VERSION: &str = "3.6.0";
/// etcd's default backend quota (2 GiB).
pub const DEFAULT_QUOTA_BYTES: i64 = 2 * 1024 * 1024 * 1024;
