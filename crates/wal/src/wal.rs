//! The writer: create/open, append (the raft commit point), snapshot markers, segment
//! rotation and release.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, error, info, warn};

use crate::fs::{FileSystem, SegmentFile, StdFs};
use crate::record;
use crate::replay::{self, IndexTracker, SegmentInfo, TMP_SUFFIX};
use crate::{io_err, Entry, Error, HardState, Replay, Result, SnapshotMarker};

/// Options for [`Wal::create`] and [`Wal::open`].
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// A segment is closed and a new one started once it reaches this size (default 64 MiB).
    pub segment_bytes: u64,
    pub fs: Arc<dyn FileSystem>,
    /// Told the size and fsync time of every synced append (the member's metrics).
    pub observer: Arc<dyn WalObserver>,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 * 1024 * 1024,
            fs: Arc::new(StdFs),
            observer: Arc::new(NoObserver),
        }
    }
}

/// What the WAL reports about its appends, so a member can export etcd's
/// `etcd_disk_wal_fsync_duration_seconds` and `etcd_disk_wal_write_bytes_total` without this
/// crate knowing about metrics. Called on the raft node's thread: keep it cheap.
pub trait WalObserver: Send + Sync + std::fmt::Debug {
    /// `bytes` were written (taking `write`) and fdatasync'd (taking `fsync`).
    fn synced(&self, bytes: u64, write: std::time::Duration, fsync: std::time::Duration);
}

/// The observer of a WAL nobody watches.
#[derive(Debug)]
pub struct NoObserver;

impl WalObserver for NoObserver {
    fn synced(&self, _bytes: u64, _write: std::time::Duration, _fsync: std::time::Duration) {}
}

/// An open write-ahead log. Single writer: the raft node owns it.
pub struct Wal {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    observer: Arc<dyn WalObserver>,
    segment_bytes: u64,
    metadata: Vec<u8>,
    /// The last hard state written; repeated at the head of every new segment.
    hard_state: HardState,
    /// The running CRC-32C of the log: every record chains onto it (etcd's format).
    crc: u32,
    tracker: IndexTracker,
    /// Oldest first; the last one is the active segment.
    segments: Vec<SegmentInfo>,
    active: Box<dyn SegmentFile>,
    active_len: u64,
    /// Set on the first failed write/sync/rotation; every later call fails with it (fail-stop).
    failed: Option<String>,
    /// Reused encoding buffer so that steady-state appends do not allocate.
    buf: Vec<u8>,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("active_len", &self.active_len)
            .field("last_index", &self.tracker.last)
            .field("snapshot", &self.tracker.snapshot)
            .field("failed", &self.failed)
            .finish()
    }
}

/// Encodes the records every new segment starts with, as etcd's `cut` writes them: the
/// running crc, the metadata and the current hard state.
fn segment_header(buf: &mut Vec<u8>, metadata: &[u8], hs: &HardState, crc: &mut u32) {
    record::put_crc(buf, crc);
    record::put_metadata(buf, metadata, crc);
    record::put_hard_state(buf, hs, crc);
}

/// Writes a new segment under a temporary name, makes it durable, renames it into place and
/// fsyncs the directory. Returns the open file positioned after the header.
fn create_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    seq: u64,
    first_index: u64,
    header: &[u8],
) -> Result<(SegmentInfo, Box<dyn SegmentFile>)> {
    let name = replay::segment_name(seq, first_index);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{}{TMP_SUFFIX}", name.trim_end_matches(".wal")));
    let mut file = fs
        .create_file(&tmp)
        .map_err(io_err("create segment", &tmp))?;
    file.write_all(header)
        .map_err(io_err("write segment header", &tmp))?;
    file.sync_data()
        .map_err(io_err("fdatasync segment header", &tmp))?;
    fs.rename(&tmp, &path)
        .map_err(io_err("rename segment into place", &path))?;
    fs.sync_dir(dir).map_err(io_err("fsync wal dir", dir))?;
    let info = SegmentInfo {
        seq,
        first_index,
        path,
        max_index: None,
    };
    Ok((info, file))
}

impl Wal {
    /// Whether `dir` holds at least one WAL segment.
    pub fn exists(dir: &Path) -> bool {
        replay::list_segments(&StdFs, dir).is_ok_and(|(segments, _)| !segments.is_empty())
    }

    /// Creates a new WAL in `dir` (created if missing) whose segments all carry `metadata`.
    pub fn create(dir: &Path, metadata: &[u8], opts: WalOptions) -> Result<Wal> {
        let fs = opts.fs;
        match replay::list_segments(fs.as_ref(), dir) {
            Ok((segments, _)) if !segments.is_empty() => {
                return Err(Error::AlreadyExists(dir.to_path_buf()))
            }
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        fs.create_dir_all(dir)
            .map_err(io_err("create wal dir", dir))?;
        // The directory entry of a freshly created wal dir must survive a crash too.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(parent)
                .map_err(io_err("fsync parent of wal dir", parent))?;
        }
        let hard_state = HardState::default();
        let mut buf = Vec::new();
        // etcd's first segment: crc 0, the metadata, an empty snapshot record (etcd's tools
        // open a WAL at a snapshot and want its record; index 0 stands for "none").
        let mut crc = 0;
        record::put_crc(&mut buf, &mut crc);
        record::put_metadata(&mut buf, metadata, &mut crc);
        record::put_snapshot(&mut buf, &SnapshotMarker::default(), &mut crc);
        // First segment is 0-0 as in etcd: no entry index is known yet.
        let (info, active) = create_segment(fs.as_ref(), dir, 0, 0, &buf)?;
        info!(dir = %dir.display(), segment = %info.path.display(), "created wal");
        Ok(Wal {
            dir: dir.to_path_buf(),
            fs,
            observer: opts.observer.clone(),
            segment_bytes: opts.segment_bytes,
            metadata: metadata.to_vec(),
            hard_state,
            crc,
            tracker: IndexTracker::default(),
            segments: vec![info],
            active,
            active_len: buf.len() as u64,
            failed: None,
            buf: Vec::new(),
        })
    }

    /// Replays every segment; repairs (truncates) a torn tail of the LAST segment; any other
    /// bad record -> [`Error::Corrupt`] (refuse to start, never drop data silently).
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Replay)> {
        let fs = opts.fs;
        let mut loaded = replay::load(fs.as_ref(), dir)?;
        if loaded.legacy {
            upgrade(fs.as_ref(), dir, &mut loaded)?;
        }
        if !loaded.superseded.is_empty() {
            // Old-format segments an upgrade already replaced; oldest first, so what is on
            // disk stays a contiguous run of segments at every point.
            for path in &loaded.superseded {
                fs.remove_file(path)
                    .map_err(io_err("remove upgraded old-format segment", path))?;
                fs.sync_dir(dir).map_err(io_err("fsync wal dir", dir))?;
            }
            info!(dir = %dir.display(), segments = loaded.superseded.len(), "wal: removed old-format segments after the upgrade");
        }
        let Some(last) = loaded.segments.last() else {
            return Err(Error::NotFound(dir.to_path_buf()));
        };
        let mut active = fs
            .open_append(&last.path)
            .map_err(io_err("open segment", &last.path))?;
        if let Some(torn) = &loaded.torn {
            // The record at the tail was never fully written, so its append never returned
            // Ok and nobody was told it was persisted: cutting it off loses nothing.
            warn!(
                segment = %torn.path.display(),
                offset = torn.offset,
                reason = %torn.reason,
                "wal: repairing torn tail"
            );
            active
                .set_len(loaded.last_valid_end)
                .map_err(io_err("truncate torn tail", &torn.path))?;
            active
                .sync_data()
                .map_err(io_err("fdatasync after repair", &torn.path))?;
        }
        if !loaded.stale_tmps.is_empty() {
            // Leftovers of a rotation that crashed before its rename; never part of the log.
            for tmp in &loaded.stale_tmps {
                fs.remove_file(tmp)
                    .map_err(io_err("remove stale temporary segment", tmp))?;
            }
            fs.sync_dir(dir).map_err(io_err("fsync wal dir", dir))?;
        }
        info!(
            dir = %dir.display(),
            segments = loaded.segments.len(),
            entries = loaded.replay.entries.len(),
            repaired_tail = loaded.replay.repaired_tail,
            "opened wal"
        );
        let wal = Wal {
            dir: dir.to_path_buf(),
            fs,
            observer: opts.observer.clone(),
            segment_bytes: opts.segment_bytes,
            metadata: loaded.replay.metadata.clone(),
            hard_state: loaded.replay.hard_state.clone(),
            crc: loaded.last_crc,
            tracker: loaded.tracker,
            segments: loaded.segments,
            active,
            active_len: loaded.last_valid_end,
            failed: None,
            buf: Vec::new(),
        };
        Ok((wal, loaded.replay))
    }

    /// The WAL's metadata (etcd's member and cluster ids) without replaying the log: a
    /// restart needs the ids before raft opens the WAL, and replaying every segment twice
    /// cost about a second and a second copy of the log in memory with 1M entries.
    pub fn read_metadata(dir: &Path) -> Result<Vec<u8>> {
        match replay::head_metadata(&StdFs, dir)? {
            Some(m) => Ok(m),
            None => Ok(Wal::read(dir)?.metadata),
        }
    }

    /// Read-only replay for tools (`ferrokv dump-logs`): no repair, no writes. A torn tail is
    /// ignored and reported through `repaired_tail`.
    pub fn read(dir: &Path) -> Result<Replay> {
        Ok(replay::load(&StdFs, dir)?.replay)
    }

    /// Appends the entries then the hard state (if any) and fdatasyncs ONCE. This is the raft
    /// commit point: only after Ok may those entries be acknowledged/sent as persisted.
    ///
    /// An entry may rewrite an earlier index (raft truncation: entries >= it are replaced) but
    /// must not skip ahead: that returns [`Error::Gap`] before anything is written.
    pub fn append(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<()> {
        self.check_usable()?;
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        // Check the batch against the replay rules first, so a bad batch is refused without
        // leaving a record on disk that would make the next open fail.
        let mut tracker = self.tracker.clone();
        for e in entries {
            tracker.admit(e.index)?;
        }
        let first_index = entries
            .first()
            .map_or_else(|| self.tracker.next_index(), |e| e.index);
        self.rotate_if_full(first_index)?;

        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut crc = self.crc;
        let mut scratch = Vec::new();
        for e in entries {
            record::put_entry(&mut buf, e, &mut crc, &mut scratch);
        }
        if let Some(hs) = hard_state {
            record::put_hard_state(&mut buf, hs, &mut crc);
        }
        let result = self.write_and_sync(&buf);
        let written = buf.len() as u64;
        self.keep_buffer(buf);
        result?;
        self.crc = crc;

        self.tracker = tracker;
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        if let (Some(max), Some(active)) = (
            entries.iter().map(|e| e.index).max(),
            self.segments.last_mut(),
        ) {
            active.max_index = Some(active.max_index.map_or(max, |m| m.max(max)));
        }
        debug!(
            entries = entries.len(),
            bytes = written,
            "wal: appended and synced"
        );
        Ok(())
    }

    /// Writes a hard state whose only change is the commit index, WITHOUT an fsync (etcd's
    /// `MustSync` rule: a commit index is not a promise to anyone, and the next append's
    /// fsync makes it durable). This keeps the WAL's commitIndex current, as etcd's is, where
    /// it would otherwise lag one append behind.
    pub fn save_commit(&mut self, hs: &HardState) -> Result<()> {
        self.check_usable()?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut crc = self.crc;
        record::put_hard_state(&mut buf, hs, &mut crc);
        let result = match self.active.write_all(&buf) {
            Ok(()) => {
                self.active_len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let err = io_err("write segment", self.active_path())(e);
                Err(self.fail(err))
            }
        };
        self.keep_buffer(buf);
        result?;
        self.crc = crc;
        self.hard_state = hs.clone();
        Ok(())
    }

    /// Records a snapshot marker (fsync'd). Entries up to `marker.index` are no longer
    /// replayed; the next entry index may be at most `max(last kept entry, marker.index) + 1`.
    /// A marker older than the newest one is written but changes nothing (raft snapshots
    /// only move forward).
    pub fn save_snapshot(&mut self, marker: SnapshotMarker) -> Result<()> {
        self.check_usable()?;
        let mut next = self.tracker.clone();
        next.on_snapshot(marker);
        // No rotation here (as in etcd): the marker goes into the segment holding the entries
        // it covers, whose name (first index <= marker index) is how etcd's reader finds it.
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut crc = self.crc;
        record::put_snapshot(&mut buf, &marker, &mut crc);
        let result = self.write_and_sync(&buf);
        self.keep_buffer(buf);
        result?;
        self.crc = crc;
        self.tracker = next;
        info!(
            index = marker.index,
            term = marker.term,
            "wal: saved snapshot marker"
        );
        Ok(())
    }

    /// Deletes whole segments whose entries are all < `index` (never the active segment).
    ///
    /// Only entries covered by the newest saved snapshot marker are ever released: `index` is
    /// capped at `snapshot.index + 1`, and without a marker nothing is deleted, because
    /// replay could not restore the released entries from anywhere else.
    pub fn release_before(&mut self, index: u64) -> Result<()> {
        self.check_usable()?;
        let Some(snapshot) = self.tracker.snapshot else {
            debug!(index, "wal: no snapshot marker yet, nothing released");
            return Ok(());
        };
        let limit = index.min(snapshot.index);
        // etcd's rule (`ReleaseLockTo`): keep the newest segment named with a first index
        // below the snapshot's, since etcd's reader starts there to find the snapshot record;
        // everything before it goes. Only a prefix may go: a hole in the sequence would make
        // open() refuse the WAL.
        let keep_from = self
            .segments
            .iter()
            .rposition(|s| s.first_index < limit)
            .unwrap_or(0);
        let deletable = keep_from.min(self.segments.len().saturating_sub(1));
        for _ in 0..deletable {
            let seg = &self.segments[0];
            self.fs
                .remove_file(&seg.path)
                .map_err(io_err("remove released segment", &seg.path))?;
            // One directory fsync per removal keeps what is on disk a contiguous run of
            // segments at every point, even if the removals reach the disk out of order.
            if let Err(e) = self.fs.sync_dir(&self.dir) {
                return Err(self.fail(io_err("fsync wal dir", &self.dir)(e)));
            }
            let seg = self.segments.remove(0);
            info!(segment = %seg.path.display(), "wal: released segment");
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn active_path(&self) -> &Path {
        self.segments
            .last()
            .map_or(self.dir.as_path(), |s| s.path.as_path())
    }

    /// Keeps the encoding buffer for the next call unless one unusually large batch grew it:
    /// that memory would otherwise stay pinned for the life of the member.
    fn keep_buffer(&mut self, buf: Vec<u8>) {
        const KEEP_BYTES: usize = 4 * 1024 * 1024;
        if buf.capacity() <= KEEP_BYTES {
            self.buf = buf;
        }
    }

    fn check_usable(&self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(reason) => Err(Error::Io {
                op: "use wal after an earlier write/fsync failure (fail-stop)",
                path: self.dir.clone(),
                source: std::io::Error::other(reason.clone()),
            }),
        }
    }

    /// Marks the WAL unusable and returns the error. After a failed write or fsync what is in
    /// the page cache and on disk is unknown, so the only safe move is to stop writing.
    fn fail(&mut self, err: Error) -> Error {
        error!(error = %err, dir = %self.dir.display(), "wal: durable write failed, refusing further writes");
        self.failed = Some(err.to_string());
        err
    }

    fn write_and_sync(&mut self, buf: &[u8]) -> Result<()> {
        let writing = std::time::Instant::now();
        if let Err(e) = self.active.write_all(buf) {
            let err = io_err("write segment", self.active_path())(e);
            return Err(self.fail(err));
        }
        // Counted before the sync: the bytes are in the file whether or not the sync works.
        self.active_len += buf.len() as u64;
        let syncing = std::time::Instant::now();
        let write = syncing - writing;
        if let Err(e) = self.active.sync_data() {
            let err = io_err("fdatasync segment", self.active_path())(e);
            return Err(self.fail(err));
        }
        self.observer
            .synced(buf.len() as u64, write, syncing.elapsed());
        Ok(())
    }

    fn rotate_if_full(&mut self, first_index: u64) -> Result<()> {
        if self.active_len < self.segment_bytes {
            return Ok(());
        }
        let seq = self.segments.last().map_or(0, |s| s.seq.wrapping_add(1));
        let mut header = Vec::new();
        let mut crc = self.crc;
        segment_header(&mut header, &self.metadata, &self.hard_state, &mut crc);
        match create_segment(self.fs.as_ref(), &self.dir, seq, first_index, &header) {
            Ok((info, file)) => {
                self.crc = crc;
                info!(segment = %info.path.display(), previous_bytes = self.active_len, "wal: rotated segment");
                self.segments.push(info);
                self.active = file;
                self.active_len = header.len() as u64;
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }
}

/// Rewrites a WAL of ferrokv's previous format in etcd's: one new segment (the next sequence
/// number, named with the snapshot index so etcd's reader selects it) holding the metadata,
/// the snapshot marker, the hard state and every replayed entry, made durable and renamed into
/// place before the old segments are removed. A crash at any point leaves either the old WAL
/// alone (the new segment was never renamed into place) or the new segment with old ones
/// before it, which `load` reports as superseded and `open` removes.
fn upgrade(fs: &dyn FileSystem, dir: &Path, loaded: &mut replay::Loaded) -> Result<()> {
    let r = &loaded.replay;
    let marker = r.snapshot.unwrap_or_default();
    let mut buf = Vec::new();
    let mut crc = 0;
    record::put_crc(&mut buf, &mut crc);
    record::put_metadata(&mut buf, &r.metadata, &mut crc);
    record::put_snapshot(&mut buf, &marker, &mut crc);
    record::put_hard_state(&mut buf, &r.hard_state, &mut crc);
    let mut scratch = Vec::new();
    for e in &r.entries {
        record::put_entry(&mut buf, e, &mut crc, &mut scratch);
    }
    let seq = loaded.segments.last().map_or(0, |s| s.seq.wrapping_add(1));
    let (mut info, file) = create_segment(fs, dir, seq, marker.index, &buf)?;
    drop(file);
    info.max_index = r.entries.last().map(|e| e.index);
    info!(dir = %dir.display(), segment = %info.path.display(), entries = r.entries.len(), "wal: upgraded a wal of ferrokv's previous format to etcd's format");
    loaded.superseded = loaded.segments.iter().map(|s| s.path.clone()).collect();
    loaded.segments = vec![info];
    loaded.last_valid_end = buf.len() as u64;
    loaded.last_crc = crc;
    // The old segments' torn tail (if any) is not in the new segment; nothing to cut.
    loaded.torn = None;
    loaded.legacy = false;
    Ok(())
}

#[cfg(test)]
#[path = "wal_tests.rs"]
mod tests;
