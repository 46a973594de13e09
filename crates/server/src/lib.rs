//! The ferrokv member server: the etcd v3 gRPC services, the apply loop that executes
//! committed raft entries against the MVCC store, the watch hub, the lessor, the peer
//! transport and the HTTP health/metrics endpoints.
//!
//! Depends on `ferrokv-proto` (wire types), `ferrokv-storage` (MVCC keyspace),
//! `ferrokv-raftnode` (consensus + WAL). Nothing here is specific to the command line; the
//! `ferrokv` binary builds a config and calls [`Member::start`]. It must not depend on the
//! binary or on anything Kubernetes.

pub mod apply;
pub mod auth;
pub mod authority;
pub mod cluster;
pub mod compactor;
pub mod config;
mod core;
pub mod error;
pub mod header;
pub mod http;
pub mod ids;
pub mod kv;
pub mod lease;
pub mod listen_tls;
pub mod maintenance;
pub mod membership;
pub mod metrics;
mod serve;
pub mod snapshot_file;
pub mod transport;
pub mod watch;

pub use config::Config;
pub use error::{to_status, Error, Result};
pub use serve::{Member, ShutdownHandle};
