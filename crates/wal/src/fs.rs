//! The I/O seam. The WAL only touches the disk through [`FileSystem`] and [`SegmentFile`],
//! so tests can make a write fail, a write stop short, or an fsync fail, and then check that
//! the WAL fail-stops. [`StdFs`] is the real thing; [`FaultFs`] wraps it with injected faults.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// File-system operations the WAL needs.
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Full paths of the entries of `dir` (any order).
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// The whole content of a file.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// At most the first `len` bytes of a file (replay tells a segment's format by its head).
    fn read_head(&self, path: &Path, len: usize) -> io::Result<Vec<u8>> {
        let mut b = self.read_file(path)?;
        b.truncate(len);
        Ok(b)
    }
    /// Creates (or truncates) a file for writing from offset 0.
    fn create_file(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// Opens an existing file; writes go to its end.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// fsyncs a directory so that creations, renames and removals in it are durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open segment file.
pub trait SegmentFile: Send + fmt::Debug {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// `fdatasync`: the data (and the size needed to read it back) is durable on Ok.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Truncates (or extends) the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// The real file system (std::fs).
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

#[derive(Debug)]
struct StdFile(File);

impl SegmentFile for StdFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl FileSystem for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect()
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn read_head(&self, path: &Path, len: usize) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut b = Vec::with_capacity(len);
        std::fs::File::open(path)?
            .take(len as u64)
            .read_to_end(&mut b)?;
        Ok(b)
    }
    fn create_file(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(StdFile(file)))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Box::new(StdFile(file)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // On Unix a directory opened read-only can be fsynced; that makes the entry changes
        // in it durable. Other platforms do not support this and do not need it the same way.
        #[cfg(unix)]
        {
            File::open(dir)?.sync_all()
        }
        #[cfg(not(unix))]
        {
            let _ = dir;
            Ok(())
        }
    }
}

/// Faults to inject into the next matching operation; each fires once.
#[derive(Debug, Default)]
struct FaultPlan {
    fail_next_write: bool,
    short_next_write: Option<usize>,
    fail_next_sync: bool,
    fail_next_dir_sync: bool,
    fail_next_create: bool,
    /// Counters of segment writes and file syncs that reached the file system.
    writes: u64,
    data_syncs: u64,
}

/// The real file system with injectable one-shot faults, for tests of fail-stop behaviour
/// (here and in crates that use the WAL). Clones share the same fault plan.
#[derive(Clone, Debug, Default)]
pub struct FaultFs {
    inner: StdFs,
    plan: Arc<Mutex<FaultPlan>>,
}

fn lock(plan: &Mutex<FaultPlan>) -> MutexGuard<'_, FaultPlan> {
    // A test that panicked while holding the lock must not hide the plan from others.
    plan.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected fault: {what}"))
}

impl FaultFs {
    pub fn new() -> Self {
        Self::default()
    }
    /// The next segment write fails without writing anything.
    pub fn fail_next_write(&self) {
        lock(&self.plan).fail_next_write = true;
    }
    /// The next segment write writes only `bytes` bytes, then fails.
    pub fn short_next_write(&self, bytes: usize) {
        lock(&self.plan).short_next_write = Some(bytes);
    }
    /// The next file `sync_data` fails (after the data may or may not have reached the disk).
    pub fn fail_next_sync(&self) {
        lock(&self.plan).fail_next_sync = true;
    }
    /// The next directory fsync fails.
    pub fn fail_next_dir_sync(&self) {
        lock(&self.plan).fail_next_dir_sync = true;
    }
    /// The next file creation fails.
    pub fn fail_next_create(&self) {
        lock(&self.plan).fail_next_create = true;
    }
    /// Segment `write_all` calls so far (including failed ones).
    pub fn writes(&self) -> u64 {
        lock(&self.plan).writes
    }
    /// File `sync_data` calls so far (including failed ones).
    pub fn data_syncs(&self) -> u64 {
        lock(&self.plan).data_syncs
    }
}

#[derive(Debug)]
struct FaultFile {
    inner: Box<dyn SegmentFile>,
    plan: Arc<Mutex<FaultPlan>>,
}

impl SegmentFile for FaultFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let (fail, short) = {
            let mut plan = lock(&self.plan);
            plan.writes += 1;
            (
                std::mem::take(&mut plan.fail_next_write),
                plan.short_next_write.take(),
            )
        };
        if fail {
            return Err(injected("write"));
        }
        if let Some(n) = short {
            self.inner.write_all(&buf[..n.min(buf.len())])?;
            return Err(injected("short write"));
        }
        self.inner.write_all(buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        let fail = {
            let mut plan = lock(&self.plan);
            plan.data_syncs += 1;
            std::mem::take(&mut plan.fail_next_sync)
        };
        if fail {
            return Err(injected("fdatasync"));
        }
        self.inner.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

impl FileSystem for FaultFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.list_dir(dir)
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read_file(path)
    }
    fn create_file(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        if std::mem::take(&mut lock(&self.plan).fail_next_create) {
            return Err(injected("create"));
        }
        Ok(Box::new(FaultFile {
            inner: self.inner.create_file(path)?,
            plan: Arc::clone(&self.plan),
        }))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        Ok(Box::new(FaultFile {
            inner: self.inner.open_append(path)?,
            plan: Arc::clone(&self.plan),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if std::mem::take(&mut lock(&self.plan).fail_next_dir_sync) {
            return Err(injected("directory fsync"));
        }
        self.inner.sync_dir(dir)
    }
}
