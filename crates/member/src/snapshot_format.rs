//! Which kind of snapshot file `snapshot status|restore` was given, and how to get a redb
//! keyspace out of it. Three kinds are accepted:
//!
//! - etcd's: a bbolt database with etcd's buckets, then the SHA-256 of it (what
//!   `etcdctl snapshot save` writes, from etcd or from ferrokv, whose `Maintenance.Snapshot`
//!   streams the same format);
//! - a bare bbolt database (etcd's `member/snap/db`), only with `--skip-hash-check`, as
//!   etcdutl;
//! - ferrokv's older files: redb bytes, zero padding, the `FKVSNAP1` trailer, the SHA-256
//!   (`ferrokv_server::snapshot_file`), so existing backups still restore.
//!
//! Every check (hash, pages, entries) runs before the caller's data dir is renamed into
//! place, so a bad file only ever gives an error.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use ferrokv_storage::bbolt::{self, Reader};
use ferrokv_storage::Store;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::snapshot::SnapshotStatus;

const HASH_LEN: u64 = 32;

/// A bbolt snapshot file, opened and hash-checked.
struct Bbolt {
    reader: Reader,
    /// Length of the file, hash included.
    file_len: u64,
    /// Whether a SHA-256 trailer was there and matched.
    hashed: bool,
}

fn bad(file: &Path, reason: impl Into<String>) -> Error {
    Error::BadSnapshot {
        path: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// Opens `file` as a bbolt snapshot if it starts like one; `Ok(None)` for any other file.
fn open_bbolt(file: &Path, require_hash: bool) -> Result<Option<Bbolt>> {
    let mut f = File::open(file).map_err(|e| Error::io("opening", file, e))?;
    let file_len = f
        .metadata()
        .map_err(|e| Error::io("reading the size of", file, e))?
        .len();
    let mut head = [0u8; 64];
    let n = read_up_to(&mut f, &mut head).map_err(|e| Error::io("reading", file, e))?;
    if !bbolt::looks_like_bbolt(&head[..n]) {
        return Ok(None);
    }
    // etcd's own test: a snapshot with a hash is whole 512-byte blocks plus 32 bytes.
    let hashed = file_len % 512 == HASH_LEN;
    let db_len = if hashed {
        file_len - HASH_LEN
    } else if file_len % 512 == 0 {
        if require_hash {
            return Err(bad(
                file,
                "a bbolt database without the SHA-256 that snapshot files end with (copied \
                 from a data dir?); pass --skip-hash-check to restore it anyway",
            ));
        }
        file_len
    } else {
        return Err(bad(
            file,
            format!(
                "{file_len} bytes is neither whole pages nor whole pages plus a SHA-256: the \
                 file is truncated or damaged"
            ),
        ));
    };
    if hashed {
        let mut f = File::open(file).map_err(|e| Error::io("opening", file, e))?;
        let mut hasher = Sha256::new();
        let mut left = db_len;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            f.read_exact(&mut buf[..want])
                .map_err(|e| Error::io("reading", file, e))?;
            hasher.update(&buf[..want]);
            left -= want as u64;
        }
        let mut want = [0u8; HASH_LEN as usize];
        f.read_exact(&mut want)
            .map_err(|e| Error::io("reading", file, e))?;
        if hasher.finalize().as_slice() != want {
            return Err(bad(file, "SHA-256 mismatch: the file is damaged"));
        }
    }
    let f = File::open(file).map_err(|e| Error::io("opening", file, e))?;
    let reader = Reader::new(f, db_len).map_err(|e| bad(file, e.to_string()))?;
    Ok(Some(Bbolt {
        reader,
        file_len,
        hashed,
    }))
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn import_bbolt(file: &Path, b: &Bbolt, db_path: &Path) -> Result<ferrokv_storage::Imported> {
    ferrokv_storage::import_etcd(&b.reader, db_path).map_err(|e| match e {
        ferrokv_storage::Error::BadSnapshot(reason) => bad(file, reason),
        source => Error::Storage {
            path: file.to_path_buf(),
            source,
        },
    })
}

/// Checks the snapshot `file` and writes its keyspace as a new redb file at `db_path`.
pub fn import(file: &Path, db_path: &Path, skip_hash_check: bool) -> Result<()> {
    if let Some(b) = open_bbolt(file, !skip_hash_check)? {
        let imported = import_bbolt(file, &b, db_path)?;
        tracing::info!(
            file = %file.display(),
            revision = imported.revision,
            key_revisions = imported.key_revisions,
            leases = imported.leases,
            sha256_checked = b.hashed,
            "imported an etcd snapshot"
        );
        return Ok(());
    }
    let bytes = std::fs::read(file).map_err(|e| Error::io("reading", file, e))?;
    let data = ferrokv_server::snapshot_file::unwrap_snapshot(&bytes)
        .map_err(|e| bad(file, e.to_string()))?;
    crate::snapshot::write_synced(db_path, data)
}

/// `snapshot status` of a bbolt snapshot file; `Ok(None)` when `file` is not one. The
/// hash is etcdutl's (CRC-32C of every bucket name, key and value), the revision and the
/// key count (live keys) are the keyspace's, as `etcdutl snapshot status` prints them.
pub fn status(file: &Path) -> Result<Option<SnapshotStatus>> {
    let Some(b) = open_bbolt(file, false)? else {
        return Ok(None);
    };
    let st = ferrokv_storage::etcd_db_status(&b.reader).map_err(|e| bad(file, e.to_string()))?;
    let tmp = tempfile::tempdir().map_err(|e| Error::io("creating a temp dir for", file, e))?;
    let db_path: PathBuf = tmp.path().join("db");
    let imported = import_bbolt(file, &b, &db_path)?;
    let storage = |source| Error::Storage {
        path: file.to_path_buf(),
        source,
    };
    let store = Store::open(&db_path).map_err(storage)?;
    let all = ferrokv_proto::etcdserverpb::RangeRequest {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..Default::default()
    };
    Ok(Some(SnapshotStatus {
        total_size: b.file_len,
        db_size: st.total_size,
        revision: imported.revision,
        total_keys: store.range(&all).map_err(storage)?.count,
        hash: st.hash,
        sha256_checked: b.hashed,
    }))
}
