//! The framing of ferrokv's older snapshot files, still accepted by `snapshot restore` and
//! `snapshot status` (`Maintenance.Snapshot` now streams an etcd backend database and its
//! SHA-256, see `etcdserver/maintenance.rs`), and the stream's hash length.
//!
//! `etcdctl snapshot save` accepts a stream only if its length minus 32 is a multiple of 512
//! and the last 32 bytes are the SHA-256 of everything before them (that is how bbolt files
//! streamed by etcd look). A redb file has any length, so those files had zero padding and a
//! 16-byte trailer — magic `FKVSNAP1` + the original length (8 bytes BE) — ending on a 512
//! boundary, then the hash:
//!
//! ```text
//! [redb bytes (len)] [zeros] [FKVSNAP1][len BE] [sha256 of all before]
//! ```

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"FKVSNAP1";
pub const TRAILER_LEN: u64 = 16;
pub const HASH_LEN: u64 = 32;
const BLOCK: u64 = 512;

/// Zero bytes to put between the data and the trailer.
pub fn padding_len(data_len: u64) -> u64 {
    (BLOCK - (data_len + TRAILER_LEN) % BLOCK) % BLOCK
}

/// Total length of the framed stream, hash included.
pub fn framed_len(data_len: u64) -> u64 {
    data_len + padding_len(data_len) + TRAILER_LEN + HASH_LEN
}

pub fn trailer(data_len: u64) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(MAGIC);
    t[8..].copy_from_slice(&data_len.to_be_bytes());
    t
}

/// Frames a whole snapshot in memory (tests, small stores; the server streams instead).
pub fn wrap(data: &[u8]) -> Vec<u8> {
    let len = data.len() as u64;
    let mut out = Vec::with_capacity(framed_len(len) as usize);
    out.extend_from_slice(data);
    out.resize(out.len() + padding_len(len) as usize, 0);
    out.extend_from_slice(&trailer(len));
    let hash = Sha256::digest(&out);
    out.extend_from_slice(&hash);
    out
}

/// Checks the hash and framing and returns the redb bytes inside.
pub fn unwrap_snapshot(bytes: &[u8]) -> Result<&[u8]> {
    let total = bytes.len() as u64;
    if total < TRAILER_LEN + HASH_LEN || !(total - HASH_LEN).is_multiple_of(BLOCK) {
        return Err(Error::SnapshotFile(
            "length is not a multiple of 512 plus a SHA-256",
        ));
    }
    let body_end = (total - HASH_LEN) as usize;
    let (body, hash) = bytes.split_at(body_end);
    if Sha256::digest(body).as_slice() != hash {
        return Err(Error::SnapshotFile("SHA-256 mismatch"));
    }
    let trailer_at = body_end - TRAILER_LEN as usize;
    if &body[trailer_at..trailer_at + 8] != MAGIC {
        return Err(Error::SnapshotFile(
            "not a ferrokv snapshot (no FKVSNAP1 trailer)",
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&body[trailer_at + 8..trailer_at + 16]);
    let len = u64::from_be_bytes(len);
    if len > trailer_at as u64 || padding_len(len) + len != trailer_at as u64 {
        return Err(Error::SnapshotFile(
            "trailer length does not match the file",
        ));
    }
    let (data, pad) = body[..trailer_at].split_at(len as usize);
    if pad.iter().any(|b| *b != 0) {
        return Err(Error::SnapshotFile("non-zero padding"));
    }
    Ok(data)
}

/// A scratch file that is removed however the code holding it ends (error, client gone).
pub(crate) struct RemoveOnDrop(pub(crate) std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_for_many_lengths() {
        for len in [0usize, 1, 495, 496, 497, 511, 512, 513, 1000, 4096, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
            let framed = wrap(&data);
            assert_eq!(framed.len() as u64, framed_len(len as u64));
            assert_eq!((framed.len() - 32) % 512, 0, "len {len}");
            assert_eq!(
                unwrap_snapshot(&framed).unwrap(),
                data.as_slice(),
                "len {len}"
            );
        }
    }

    #[test]
    fn rejects_damage() {
        let framed = wrap(b"hello redb");
        let mut bad_hash = framed.clone();
        let n = bad_hash.len();
        bad_hash[n - 1] ^= 1;
        let mut bad_body = framed.clone();
        bad_body[0] ^= 1;
        let rows: Vec<(Vec<u8>, &str)> = vec![
            (bad_hash, "SHA-256 mismatch"),
            (bad_body, "SHA-256 mismatch"),
            (framed[..framed.len() - 1].to_vec(), "length"),
            (vec![0u8; 512 + 32], "SHA-256"),
        ];
        for (bytes, want) in rows {
            let err = unwrap_snapshot(&bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }

    #[test]
    fn rejects_bbolt_style_file_without_trailer() {
        let mut body = vec![7u8; 1024];
        let hash = Sha256::digest(&body);
        body.extend_from_slice(&hash);
        let err = unwrap_snapshot(&body).unwrap_err().to_string();
        assert!(err.contains("FKVSNAP1"), "{err}");
    }
}
