//! Where the hub reads past events from: the MVCC store, behind a trait so the hub can be
//! tested with a small in-memory event log.

use ferrokv_proto::mvccpb::Event;

/// Why reading past events failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchSourceError {
    /// The requested start revision was removed by a compaction; the watcher is canceled with
    /// the store's compacted revision.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// Any other storage failure (I/O, corruption); the watcher is canceled with this reason.
    #[error("reading watch events failed: {0}")]
    Storage(String),
}

/// The read side of the MVCC store that watchers need.
pub trait EventSource: Send + Sync + 'static {
    /// The store's revision (the last committed one).
    fn current_revision(&self) -> i64;
    /// The revision of the last compaction (0 if never compacted).
    fn compacted_revision(&self) -> i64;
    /// Events with revision >= `start_rev` for keys in the etcd range (`key`, `range_end`), in
    /// revision order, `prev_kv` filled if asked; `Err(Compacted)` if `start_rev` was
    /// compacted away; stops after `max_revisions` whole revisions.
    fn events_since(
        &self,
        start_rev: i64,
        key: &[u8],
        range_end: &[u8],
        prev_kv: bool,
        max_revisions: usize,
    ) -> Result<Vec<Event>, WatchSourceError>;
}

/// The real store: the hub reads past events straight from the MVCC keyspace.
impl EventSource for ferrokv_storage::Store {
    fn current_revision(&self) -> i64 {
        ferrokv_storage::Store::current_revision(self)
    }

    fn compacted_revision(&self) -> i64 {
        ferrokv_storage::Store::compacted_revision(self)
    }

    fn events_since(
        &self,
        start_rev: i64,
        key: &[u8],
        range_end: &[u8],
        prev_kv: bool,
        max_revisions: usize,
    ) -> Result<Vec<Event>, WatchSourceError> {
        ferrokv_storage::Store::events_since(
            self,
            start_rev,
            key,
            range_end,
            prev_kv,
            max_revisions,
        )
        .map_err(|err| match err {
            ferrokv_storage::Error::Compacted => WatchSourceError::Compacted,
            other => WatchSourceError::Storage(other.to_string()),
        })
    }
}
