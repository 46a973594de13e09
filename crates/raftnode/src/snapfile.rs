//! Raft snapshot metadata files: `snap/<term:016x>-<index:016x>.snap`, in etcd's format.
//!
//! The file is etcd's `snappb.Snapshot {crc = 1, data = 2}`: `data` is a marshalled
//! `raftpb.Snapshot` (raft-rs's `eraftpb.Snapshot` has the same field numbers) holding the
//! metadata (index, term, ConfState) and no data, `crc` its CRC-32C, so etcd's tools
//! (`etcd-dump-logs`, `etcdctl backup`) load these files instead of renaming them to
//! `.snap.broken`. (etcd 3.6 puts its v2 membership store in `data`; ferrokv keeps the
//! membership in the keyspace and leaves it empty: etcd's readers do not need it.) Files of
//! ferrokv's previous format (CRC32 little endian, then the protobuf) are still read, and
//! rewritten in etcd's format by [`upgrade_dir`]. The keyspace itself is the storage's
//! `snap/db`; this file is what lets the raft log be rebuilt after the WAL segments before
//! the snapshot were released.

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
    let content = encode_etcd(&body);
    let name = file_name(meta.term, meta.index);
    write_file(dir, &name, &content)
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn take_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// `snappb.Snapshot {crc = 1 (varint), data = 2 (bytes)}`, both always written as etcd does.
fn encode_etcd(body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(body.len() + 16);
    content.push(0x08);
    put_varint(&mut content, u64::from(ferrokv_wal::crc32c::checksum(body)));
    content.push(0x12);
    put_varint(&mut content, body.len() as u64);
    content.extend_from_slice(body);
    content
}

/// The `data` of an etcd-format file, None if it is not one (or its CRC does not match).
fn decode_etcd(content: &[u8]) -> Option<&[u8]> {
    let mut b = content;
    let (mut crc, mut data) = (None, None);
    while !b.is_empty() {
        let key = take_varint(&mut b)?;
        match (key >> 3, key & 7) {
            (1, 0) => crc = Some(take_varint(&mut b)?),
            (2, 2) => {
                let len = usize::try_from(take_varint(&mut b)?).ok()?;
                if b.len() < len {
                    return None;
                }
                let (d, rest) = b.split_at(len);
                data = Some(d);
                b = rest;
            }
            _ => return None,
        }
    }
    let data = data?;
    (crc? == u64::from(ferrokv_wal::crc32c::checksum(data))).then_some(data)
}

/// The previous format: CRC32 (IEEE, little endian) of the protobuf, then the protobuf.
fn decode_legacy(content: &[u8]) -> Option<&[u8]> {
    if content.len() < 4 {
        return None;
    }
    let (crc, body) = content.split_at(4);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    (crc32fast::hash(body) == want).then_some(body)
}

fn write_file(dir: &Path, name: &str, content: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{}{TMP_SUFFIX}", name.trim_end_matches(SUFFIX)));
    {
        let mut f = fs::File::create(&tmp).map_err(|e| io_err("create", &tmp, e))?;
        f.write_all(content).map_err(|e| io_err("write", &tmp, e))?;
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
    let Some(body) = decode_etcd(&content).or_else(|| decode_legacy(&content)) else {
        return Err(Error::Io(format!(
            "{}: snap file CRC mismatch or not a snap file",
            path.display()
        )));
    };
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

/// The metadata of the newest `.snap` file that reads back (etcd's `Snapshotter.Load`
/// order: names sorted, newest first), for tools. Never renames or changes a file.
pub(crate) fn newest(dir: &Path) -> Result<Option<SnapshotMetadata>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("list", dir, e)),
    };
    let mut names = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| io_err("list", dir, e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if let Some(key) = parse_name(&name) {
            names.push((name, key));
        }
    }
    names.sort();
    for (name, (term, index)) in names.into_iter().rev() {
        match read(dir, term, index) {
            Ok(meta) => return Ok(Some(meta)),
            Err(e) => tracing::warn!(file = %name, error = %e, "skipping an unreadable snap file"),
        }
    }
    Ok(None)
}

/// Rewrites every `.snap` file of ferrokv's previous format in etcd's format (same name, same
/// metadata), so etcd's tools never meet one: etcd renames a `.snap` it cannot load to
/// `.snap.broken`. A file that is neither format is left alone (reading it fails later).
pub(crate) fn upgrade_dir(dir: &Path) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", dir, e)),
    };
    for ent in rd {
        let ent = ent.map_err(|e| io_err("list", dir, e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if parse_name(&name).is_none() {
            continue;
        }
        let content = fs::read(ent.path()).map_err(|e| io_err("read", &ent.path(), e))?;
        if decode_etcd(&content).is_some() {
            continue;
        }
        if let Some(body) = decode_legacy(&content) {
            write_file(dir, &name, &encode_etcd(body))?;
            tracing::info!(file = %ent.path().display(), "rewrote a snap file of ferrokv's previous format in etcd's format");
        }
    }
    Ok(())
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
