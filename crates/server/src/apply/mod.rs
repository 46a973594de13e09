//! The state machine fed by committed raft entries: the [`Applier`] (one storage transaction
//! per committed batch), the typed waiters it completes, the lessor's deadlines, the
//! replicated member list, the alarms, the auth store and the measured keyspace size.
//!
//! Depends only on the crate's base modules: the raft handle, the peer transport and the watch
//! hub reach it through the small traits of [`seams`] (which the node implements), so it is
//! unit-tested without them. Must not depend on `etcdserver`, `api`, `net`, `node`, `peer`
//! or `watch`.

mod alarms;
mod applier;
pub mod auth;
mod db_size;
pub mod entry_gate;
pub mod lessor;
pub mod membership;
mod proposal;
mod seams;
#[cfg(test)]
mod tests;

pub use alarms::Alarms;
pub use applier::{Applier, InstallRequest};
pub use auth::{AuthData, AuthInfo, AuthStore, AuthView};
pub use db_size::DbSize;
pub use entry_gate::{EntryFormat, GateState};
pub use lessor::Lessor;
pub use proposal::{ApplyResult, AuthResult, Proposal, Waiters};
pub use seams::{DurableIndexSink, EventSink, PeerDirectory};
