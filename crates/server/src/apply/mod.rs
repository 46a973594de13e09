//! The state machine fed by committed raft entries: the [`Applier`] (one storage transaction
//! per committed batch), the waiters it completes, the lessor's deadlines, the replicated
//! member list and the alarms.
//!
//! May depend on `watch` and `peer` (to publish events and follow membership) and the base
//! modules; must not depend on `etcdserver`, `api`, `net` or `node`.

mod alarms;
mod applier;
pub mod lessor;
pub mod membership;
mod waiters;

pub use alarms::Alarms;
pub use applier::Applier;
pub use lessor::Lessor;
pub use waiters::{Applied, ApplyResult, Waiters};
