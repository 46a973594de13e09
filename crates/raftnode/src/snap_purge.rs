//! `--max-snapshots` and `--max-wals`: etcd's periodic purge of old `.snap` files and WAL
//! segments (`EtcdServer.purgeFile`), run on the raft thread, which owns both directories.
//!
//! etcd looks every 30 s; ferrokv also looks right after each snapshot, when old files become
//! purgeable, so the counts go back under the limits without waiting for the next round. A
//! limit of 0 keeps every file, as in etcd. Both purges go by file names only.

use std::path::Path;
use std::time::{Duration, Instant};

use ferrokv_wal::Wal;

use crate::{snapfile, Result};

/// etcd's `purgeFileInterval`.
pub(crate) const PURGE_INTERVAL: Duration = Duration::from_secs(30);

pub(crate) struct Purger {
    max_snapshots: usize,
    max_wals: usize,
    next: Instant,
}

impl Purger {
    pub(crate) fn new(max_snapshots: usize, max_wals: usize) -> Self {
        Purger {
            max_snapshots,
            max_wals,
            // The first round runs at once: a restart with a lower limit purges right away.
            next: Instant::now(),
        }
    }

    /// The periodic round, if it is due.
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        snap_dir: &Path,
        wal: &mut Wal,
        snapshot_index: u64,
    ) -> Result<()> {
        if now < self.next {
            return Ok(());
        }
        self.purge(snap_dir, wal, snapshot_index)
    }

    /// One round: the `.snap` files beyond `max_snapshots`, then the released WAL segments
    /// beyond `max_wals`.
    pub(crate) fn purge(
        &mut self,
        snap_dir: &Path,
        wal: &mut Wal,
        snapshot_index: u64,
    ) -> Result<()> {
        self.next = Instant::now() + PURGE_INTERVAL;
        if self.max_snapshots > 0 && snap_dir.is_dir() {
            if let Err(e) = snapfile::purge(snap_dir, self.max_snapshots) {
                // Old metadata files only cost disk space; not worth stopping the member for.
                tracing::warn!(error = %e, "could not delete old snap files");
            }
        }
        // A failed removal in the WAL directory is the WAL's business: it refuses further
        // writes when the directory may be inconsistent, and the error stops the member.
        let purged = ferrokv_wal::purge_segments(wal, self.max_wals, snapshot_index)?;
        if purged > 0 {
            tracing::info!(purged, max_wals = self.max_wals, "purged old wal segments");
        }
        Ok(())
    }
}
