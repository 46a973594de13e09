//! A value built from files that is rebuilt when the files change: the TLS configurations of
//! the client and peer ports, so a renewed certificate, key or CA bundle takes effect on the
//! next handshake without a restart (etcd reloads its certificates per handshake too; Kubernetes
//! renews a mounted Secret by swapping its files under the running process).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::error::Result;

/// How often the files are looked at: one `stat` per file per second at most, whatever the
/// handshake rate.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What tells a changed file: the kubelet's atomic writer swaps a symlink to a new file (new
/// inode); an editor or `cp` rewrites in place (new mtime or length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    // `metadata` follows symlinks: the stamp is the target's, which is what changes.
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        ino: m.ino(),
        len: m.len(),
        mtime: m.modified().ok(),
    })
}

type Build<T> = Box<dyn Fn() -> Result<T> + Send + Sync>;

struct State<T> {
    value: Arc<T>,
    stamps: Vec<Option<Stamp>>,
    checked: Instant,
}

/// `build()` over `paths`, rebuilt when one of them changes. A rebuild that fails (a file
/// half written, a key that does not match its certificate yet) keeps the previous value and
/// warns; it is retried when a file changes again.
pub struct Reloading<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    build: Build<T>,
    state: Mutex<State<T>>,
}

impl<T> Reloading<T> {
    /// Builds the first value; its error is the caller's (a member does not start with
    /// unreadable certificates).
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T> + Send + Sync + 'static,
    ) -> Result<Reloading<T>> {
        let stamps = paths.iter().map(|p| stamp(p)).collect();
        let value = Arc::new(build()?);
        Ok(Reloading {
            what,
            paths,
            build: Box::new(build),
            state: Mutex::new(State {
                value,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The current value, rebuilt first if a file changed since the last look (at most one
    /// look per second).
    pub fn current(&self) -> Arc<T> {
        let mut s = self.state.lock();
        if s.checked.elapsed() < CHECK_EVERY {
            return s.value.clone();
        }
        s.checked = Instant::now();
        let stamps: Vec<Option<Stamp>> = self.paths.iter().map(|p| stamp(p)).collect();
        if stamps == s.stamps {
            return s.value.clone();
        }
        s.stamps = stamps;
        match (self.build)() {
            Ok(v) => {
                s.value = Arc::new(v);
                tracing::info!(what = self.what, files = ?self.paths, "reloaded TLS files");
            }
            Err(e) => tracing::warn!(
                what = self.what,
                error = %e,
                "changed TLS files do not load; keeping the previous certificate"
            ),
        }
        s.value.clone()
    }
}
