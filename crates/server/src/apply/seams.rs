//! The small interfaces the apply loop needs from the layers around it. The node plugs in
//! the raft handle, the peer transport and the watch hub; unit tests plug in recorders, so
//! the state machine is tested without raft, network or watchers.

use ferrokv_proto::mvccpb::Event;

/// Raft, as the apply loop sees it: told how far the keyspace is durable, so it may drop WAL
/// entries up to there.
pub trait DurableIndexSink: Send + Sync {
    fn report_durable_applied(&self, index: u64);
}

/// The members this member sends raft messages to, following applied conf changes.
pub trait PeerDirectory: Send + Sync {
    /// A member joined or changed its peer URLs.
    fn add_peer(&self, id: u64, urls: Vec<String>);
    /// A member left.
    fn remove_peer(&self, id: u64);
}

/// Where the events of each committed batch go (the watch hub).
pub trait EventSink: Send + Sync {
    /// The events of one committed batch, and the store's revision after it.
    fn publish(&self, events: Vec<Event>, revision: i64);
    /// The keyspace was replaced: every watcher must catch up from storage.
    fn resync_all(&self, revision: i64);
}
