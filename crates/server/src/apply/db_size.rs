//! The keyspace file's size as the apply loop last measured it, shared with the quota check
//! so that writes read it from memory instead of `stat`ing the file each time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ferrokv_storage::Store;

/// Bytes of the keyspace file; measured at start, at each periodic sync of the apply loop (at
/// most every 100 ms while writes arrive) and after a snapshot install. A quota check can
/// therefore lag the file by one sync interval, which etcd's own check (against the last
/// committed backend size) also does.
#[derive(Clone, Debug, Default)]
pub struct DbSize(Arc<AtomicU64>);

impl DbSize {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Measures the store's file now.
    pub fn measure(&self, store: &Store) {
        match store.file_size() {
            Ok(n) => self.0.store(n, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "cannot measure the keyspace file"),
        }
    }
}
