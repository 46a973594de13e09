//! The ferrokv member server, as a stack of layers (one folder each; arrows point down):
//!
//! - `api`: the thin etcd v3 gRPC services;
//! - `etcdserver`: the server core they call (propose-and-wait, read barrier, quota, ...);
//! - `apply`: the state machine fed by committed entries;
//! - `watch`: the watch hub and its Watch service;
//! - `peer`: the raft transport between members;
//! - `net`: listeners, TLS, the `:authority` repair, HTTP endpoints;
//! - `node`: member bootstrap as named steps, and shutdown; wires everything.
//!
//! Base modules every layer may use: `error`, `config`, `ids`, `header`, `metrics`,
//! `snapshot_file`, `stop`. See `docs/architecture.md`.
//!
//! Depends on `ferrokv-proto` (wire types), `ferrokv-storage` (MVCC keyspace),
//! `ferrokv-raftnode` (consensus + WAL). Nothing here is specific to the command line; the
//! `ferrokv` binary builds a config and calls [`Member::start`]. It must not depend on the
//! binary or on anything Kubernetes.

mod api;
pub mod apply;
pub mod config;
pub mod error;
pub mod etcdserver;
pub mod header;
pub mod ids;
pub mod metrics;
pub mod net;
mod node;
pub mod peer;
pub mod reloading;
pub mod snapshot_file;
mod stop;
pub mod watch;

pub use apply::membership;
pub use config::Config;
pub use error::{to_status, Error, Result};
pub use node::{Member, ShutdownHandle};
