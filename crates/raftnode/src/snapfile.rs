//! Raft snapshot metadata files: `snap/<term:016x>-<index:016x>.snap`.
//!
//! The file holds a raft `Snapshot` message with only its metadata (index, term, ConfState)
//! encoded with protobuf, preceded by a CRC32 (little endian) of those bytes. The keyspace
//! itself is the storage's `snap/db`; this file is what lets the raft log be rebuilt after the
//! WAL segments before the snapshot were released.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Snapshot, SnapshotMetadata};

use crate::{Error, Result};

const SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".snap.tmp";

pub(crate) fn file_name(term: u64, index: u64) -> String {
    format!("{term:016x}-{index:016x}{SUFFIX}")
}

/// Parses `<term>-<index>.snap`; anything else in the directory (the redb `db` file, temp files)
/// is not ours and yields None.
pub(crate) fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (term, index) = stem.split_once('-')?;
    if term.len() != 16 || index.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(term, 16).ok()?,
        u64::from_str_radix(index, 16).ok()?,
    ))
}

fn io_err(op: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Io(format!("{op} {}: {e}", path.display()))
}

/// Writes the metadata file durably: temp file, fsync, rename, fsync of the directory, so a
/// crash leaves either no file or a complete one.
pub(crate) fn write(dir: &Path, meta: &SnapshotMetadata) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|e| io_err("create dir", dir, e))?;
    let mut snap = Snapshot::default();
    snap.set_metadata(meta.clone());
    let body = snap
        .write_to_bytes()
        .map_err(|e| Error::Raft(raft::Error::CodecError(e)))?;
    let mut content = Vec::with_capacity(body.len() + 4);
    content.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    content.extend_from_slice(&body);

    let name = file_name(meta.term, meta.index);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{}{TMP_SUFFIX}", name.trim_end_matches(SUFFIX)));
    {
        let mut f = fs::File::create(&tmp).map_err(|e| io_err("create", &tmp, e))?;
        f.write_all(&content)
            .map_err(|e| io_err("write", &tmp, e))?;
        f.sync_all().map_err(|e| io_err("fsync", &tmp, e))?;
    }
    fs::rename(&tmp, &path).map_err(|e| io_err("rename", &path, e))?;
    sync_dir(dir)?;
    Ok(path)
}

fn sync_dir(dir: &Path) -> Result<()> {
    let d = fs::File::open(dir).map_err(|e| io_err("open dir", dir, e))?;
    d.sync_all().map_err(|e| io_err("fsync dir", dir, e))
}

/// Reads and verifies the metadata file of the snapshot at (term, index).
pub(crate) fn read(dir: &Path, term: u64, index: u64) -> Result<SnapshotMetadata> {
    let path = dir.join(file_name(term, index));
    let content = fs::read(&path).map_err(|e| io_err("read", &path, e))?;
    if content.len() < 4 {
        return Err(Error::Io(format!(
            "{}: truncated snap file",
            path.display()
        )));
    }
    let (crc, body) = content.split_at(4);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != want {
        return Err(Error::Io(format!(
            "{}: snap file CRC mismatch",
            path.display()
        )));
    }
    let mut snap =
        Snapshot::parse_from_bytes(body).map_err(|e| Error::Raft(raft::Error::CodecError(e)))?;
    let meta = snap.take_metadata();
    if meta.term != term || meta.index != index {
        return Err(Error::Io(format!(
            "{}: holds term {} index {}",
            path.display(),
            meta.term,
            meta.index
        )));
    }
    Ok(meta)
}

/// Deletes all but the newest `keep` snapshot files (and leftover temp files). Only names this
/// module wrote are touched: the storage's `db` lives in the same directory.
pub(crate) fn purge(dir: &Path, keep: usize) -> Result<()> {
    let rd = fs::read_dir(dir).map_err(|e| io_err("list", dir, e))?;
    let mut snaps = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| io_err("list", dir, e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.ends_with(TMP_SUFFIX) {
            let _ = fs::remove_file(ent.path());
        } else if let Some(key) = parse_name(&name) {
            snaps.push((key, ent.path()));
        }
    }
    // Newest = highest index (terms only grow with the index).
    snaps.sort_by_key(|((_, index), _)| *index);
    let excess = snaps.len().saturating_sub(keep);
    for (_, path) in snaps.into_iter().take(excess) {
        fs::remove_file(&path).map_err(|e| io_err("remove", &path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::ConfState;

    fn meta(term: u64, index: u64, voters: Vec<u64>) -> SnapshotMetadata {
        let mut m = SnapshotMetadata::default();
        m.term = term;
        m.index = index;
        let mut cs = ConfState::default();
        cs.voters = voters;
        m.set_conf_state(cs);
        m
    }

    #[test]
    fn names_parse_only_our_files() {
        let cases: &[(&str, Option<(u64, u64)>)] = &[
            ("0000000000000002-000000000000000a.snap", Some((2, 10))),
            ("db", None),
            ("0000000000000002-000000000000000a.snap.tmp", None),
            ("2-10.snap", None),
            ("zzzzzzzzzzzzzzzz-000000000000000a.snap", None),
        ];
        for (name, want) in cases {
            assert_eq!(parse_name(name), *want, "{name}");
        }
        assert_eq!(parse_name(&file_name(0xabc, 0x1234)), Some((0xabc, 0x1234)));
    }

    #[test]
    fn write_read_round_trip_and_crc_check() {
        let dir = tempfile::tempdir().unwrap();
        let m = meta(3, 100, vec![1, 2, 3]);
        let path = write(dir.path(), &m).unwrap();
        assert_eq!(read(dir.path(), 3, 100).unwrap(), m);

        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        assert!(matches!(read(dir.path(), 3, 100), Err(Error::Io(_))));
        assert!(read(dir.path(), 3, 101).is_err());
    }

    #[test]
    fn purge_keeps_newest_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        for (t, i) in [(1, 10), (1, 20), (2, 30), (2, 40)] {
            write(dir.path(), &meta(t, i, vec![1])).unwrap();
        }
        fs::write(dir.path().join("db"), b"keyspace").unwrap();
        purge(dir.path(), 2).unwrap();
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![file_name(2, 30), file_name(2, 40), "db".to_string()]
        );
    }
}
