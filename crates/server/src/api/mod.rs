//! The etcd v3 gRPC services (KV, Lease, Cluster, Maintenance, Auth; Watch lives with the
//! watch hub), kept thin: validate the request with etcd's exact errors, call one
//! method of the server core, return its response. Metrics, tracing spans and error logging
//! are done once for every call by [`RpcLayer`].
//!
//! May depend on `etcdserver` (and the crate's base modules). Nothing else in the crate may
//! depend on `api`: the node wires the services into the gRPC routers.

mod auth;
mod cluster;
mod kv;
mod lease;
mod maintenance;
mod rpc;

pub use auth::AuthService;
pub use cluster::ClusterService;
pub use kv::KvService;
pub use lease::LeaseService;
pub use maintenance::MaintenanceService;
pub use rpc::RpcLayer;
