//! The watch hub and the etcd `Watch` gRPC service.
//!
//! Owns: every watcher of every Watch stream, their delivery position (`next_rev`), the
//! per-stream queue of responses waiting for the client, the catch-up of watchers that start
//! in the past or fell behind, progress notifications and fragmentation of huge revisions.
//!
//! The apply loop feeds the hub with [`WatchHub::publish`] after each storage commit; the hub
//! never awaits a client there. Past events are read through the narrow [`EventSource`] trait,
//! so this module must not depend on the storage engine's internals (only on the three calls of
//! `ferrokv_storage::Store` named in the trait) nor on raft or the other gRPC services.
//!
//! Delivery model (the same as etcd's synced/unsynced watcher groups): a watcher is *synced*
//! once its `next_rev` is above the last published revision; `publish` hands events only to
//! synced watchers. A watcher that starts in the past, or whose stream's queue is over its byte
//! budget when a publish arrives, is *unsynced*: the stream's own task reads its events from
//! the store in bounded rounds, paced by the client's reading speed, until it is synced again.
//! Every response of a stream goes through one FIFO queue, which is what keeps created replies
//! in request order and ahead of the watch's events.

mod hub;
mod service;
mod source;

#[cfg(test)]
mod memory;
#[cfg(test)]
mod tests;

pub use hub::{WatchHub, WatchLimits, MAX_REQUEST_BYTES};
pub use service::{WatchAuthorizer, WatchCheck, WatchService};
pub use source::{EventSource, WatchSourceError};
