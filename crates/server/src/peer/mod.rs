//! The raft transport between members: outbound per-peer queues and snapshot streaming,
//! the inbound `ferrokvpb.Peer` service, and how to dial a peer.
//!
//! The bottom of the stack: depends only on the crate's base modules, never on the state
//! machine, the server core or the gRPC API.

mod connect;
mod hashkv;
mod service;
mod snapshot;
mod transport;

pub use connect::{connect_peer, peer_client_tls, PeerClientTls};
pub use hashkv::{fetch_hash_kv, HashKvEndpoint, PeerHashError, PeerHashKv, PEER_HASHKV_PATH};
pub use service::PeerService;
pub use snapshot::{SnapshotInstaller, SnapshotSource};
pub use transport::PeerTransport;
