//! The state machine fed by committed raft entries: the [`Applier`] (one storage transaction
//! per committed batch), the typed waiters it completes, the lessor's deadlines, the
//! replicated member list, the alarms and the measured keyspace size.
//!
//! May depend on `watch` and `peer` (to publish events and follow membership) and the base
//! modules; must not depend on `etcdserver`, `api`, `net` or `node`.

mod alarms;
mod applier;
mod db_size;
pub mod lessor;
pub mod membership;
mod proposal;

pub use alarms::Alarms;
pub use applier::Applier;
pub use db_size::DbSize;
pub use lessor::Lessor;
pub use proposal::{ApplyResult, Proposal, Waiters};
