//! `--max-wals`: etcd's purge of old WAL segments, decided from the segment file names alone.
//!
//! etcd keeps up to `--max-wals` segment files (0 = all of them) and deletes the oldest ones
//! beyond that, but only segments it no longer holds a lock on: after a snapshot at index `s`
//! the WAL unlocks segment `i` once the next segment starts below `s` (`ReleaseLockTo`), so a
//! purged segment never holds an entry the snapshot does not cover, and the active segment is
//! never one of them. The same rule here works from `<seq>-<first_index>.wal` names, so it
//! does not depend on what the records inside look like.

use std::path::Path;

use crate::replay::parse_segment_name;
use crate::{io_err, Result, Wal};

/// How many of the oldest segments may go, given the segments' first indexes in sequence
/// order, the limit (0 = unlimited) and the newest snapshot index.
fn purgeable(firsts: &[u64], max_wals: usize, snapshot_index: u64) -> usize {
    if max_wals == 0 || firsts.len() <= max_wals {
        return 0;
    }
    let excess = firsts.len() - max_wals;
    // Segment i is unlocked when segment i + 1 starts below the snapshot index (etcd's
    // ReleaseLockTo); only a prefix may go, a hole would make the WAL unreadable.
    let released = firsts
        .windows(2)
        .take_while(|w| w[1] < snapshot_index)
        .count();
    excess.min(released)
}

/// The first index of each segment in `dir`, in sequence order.
fn segment_firsts(dir: &Path) -> Result<Vec<u64>> {
    let mut segs: Vec<(u64, u64)> = Vec::new();
    for ent in std::fs::read_dir(dir).map_err(io_err("list wal dir", dir))? {
        let ent = ent.map_err(io_err("list wal dir", dir))?;
        if let Some(seg) = ent.file_name().to_str().and_then(parse_segment_name) {
            segs.push(seg);
        }
    }
    segs.sort_unstable();
    Ok(segs.into_iter().map(|(_, first)| first).collect())
}

/// Deletes the oldest segments of `wal` beyond `max_wals` (0 = keep all) that lie wholly
/// before the snapshot at `snapshot_index`. Returns how many segments went.
pub fn purge_segments(wal: &mut Wal, max_wals: usize, snapshot_index: u64) -> Result<usize> {
    let firsts = segment_firsts(wal.dir())?;
    let n = purgeable(&firsts, max_wals, snapshot_index);
    if n == 0 {
        return Ok(0);
    }
    // `release_before(i)` keeps the newest segment that starts below `i` (etcd's reader
    // starts there to find the snapshot record), so asking for one past the first kept
    // segment's first index deletes exactly the `n` oldest segments. `firsts[n]` is below the
    // snapshot index (`purgeable`), so the writer's own snapshot bound does not cut it shorter.
    wal.release_before(firsts[n] + 1)?;
    let after = segment_firsts(wal.dir())?.len();
    Ok(firsts.len().saturating_sub(after))
}

#[cfg(test)]
mod tests {
    use super::purgeable;

    #[test]
    fn only_unlocked_segments_beyond_the_limit_go() {
        // (segment first indexes, max, snapshot index, purgeable)
        let rows: &[(&[u64], usize, u64, usize)] = &[
            (&[0, 100, 200, 300, 400, 500, 600], 5, 1000, 2),
            // 0 = unlimited.
            (&[0, 100, 200, 300, 400, 500, 600], 0, 1000, 0),
            (&[0, 100, 200], 5, 1000, 0),
            // Snapshot at 150: segment 0 is released (segment 1 starts at 100 < 150), segment
            // 1 (which holds 150) is not.
            (&[0, 100, 200, 300], 1, 150, 1),
            // The snapshot at exactly the next segment's first index keeps it locked.
            (&[0, 100, 200, 300], 1, 100, 0),
            // Never the active (last) segment.
            (&[0, 100, 200], 1, u64::MAX, 2),
        ];
        for (firsts, max, snap, want) in rows {
            assert_eq!(
                purgeable(firsts, *max, *snap),
                *want,
                "{firsts:?} max {max} snap {snap}"
            );
        }
    }
}
