//! Tests of the writer and of replay against real files in a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::fs::FaultFs;
use crate::record;
use crate::replay::parse_segment_name;

const META: &[u8] = b"member=1 cluster=7";

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        entry_type: 0,
        data: format!("data-{index}-{term}").into_bytes(),
        context: vec![],
    }
}

fn big_entry(index: u64) -> Entry {
    Entry {
        data: vec![index as u8; 100],
        ..entry(index, 1)
    }
}

fn hs(term: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote: 1,
        commit,
    }
}

fn opts() -> WalOptions {
    WalOptions::default()
}

fn small_segments(bytes: u64) -> WalOptions {
    WalOptions {
        segment_bytes: bytes,
        ..WalOptions::default()
    }
}

fn fault_opts(fs: &FaultFs) -> WalOptions {
    WalOptions {
        fs: Arc::new(fs.clone()),
        ..WalOptions::default()
    }
}

fn wal_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("member").join("wal");
    (tmp, dir)
}

/// Segment files in the dir, sorted by name (= by seq).
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

fn indices_terms(entries: &[Entry]) -> Vec<(u64, u64)> {
    entries.iter().map(|e| (e.index, e.term)).collect()
}

/// Byte ranges `(start, end)` of the records in a segment file, without their padding: etcd's
/// format leaves the padding zeros unchecked (they carry nothing, so a flip there loses
/// nothing and is not reported).
fn record_spans(path: &Path) -> Vec<(usize, usize)> {
    let buf = std::fs::read(path).unwrap();
    let mut spans = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let f = record::read_frame(&buf, off).unwrap();
        let word = u64::from_le_bytes(buf[off..off + 8].try_into().unwrap());
        let len = (word & 0x00ff_ffff_ffff_ffff) as usize;
        spans.push((off, off + 8 + len, f.end));
        off = f.end;
    }
    spans.into_iter().map(|(s, e, _)| (s, e)).collect()
}

/// Byte ranges `(start, end)` of the records in a segment file, padding included.
fn padded_spans(path: &Path) -> Vec<(usize, usize)> {
    let buf = std::fs::read(path).unwrap();
    let mut spans = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let f = record::read_frame(&buf, off).unwrap();
        spans.push((off, f.end));
        off = f.end;
    }
    spans
}

#[test]
fn round_trip() {
    let (_tmp, dir) = wal_dir();
    assert!(!Wal::exists(&dir));
    let mut wal = Wal::create(&dir, META, opts()).unwrap();
    assert!(Wal::exists(&dir));
    assert_eq!(wal.dir(), dir.as_path());
    let entries: Vec<Entry> = (1..=3).map(|i| entry(i, 1)).collect();
    wal.append(&entries, Some(&hs(1, 2))).unwrap();
    drop(wal);

    let (_wal, replay) = Wal::open(&dir, opts()).unwrap();
    assert_eq!(
        replay,
        Replay {
            metadata: META.to_vec(),
            hard_state: hs(1, 2),
            snapshot: None,
            entries,
            repaired_tail: false,
        }
    );
    assert_eq!(Wal::read(&dir).unwrap(), replay);
}

#[test]
fn fresh_wal_replays_empty_and_first_segment_is_zero_zero() {
    let (_tmp, dir) = wal_dir();
    drop(Wal::create(&dir, META, opts()).unwrap());
    let files = segment_files(&dir);
    assert_eq!(files.len(), 1);
    assert_eq!(
        files[0].file_name().unwrap(),
        "0000000000000000-0000000000000000.wal"
    );
    let (_wal, replay) = Wal::open(&dir, opts()).unwrap();
    assert_eq!(replay.metadata, META);
    assert_eq!(replay.hard_state, HardState::default());
    assert!(replay.entries.is_empty() && replay.snapshot.is_none() && !replay.repaired_tail);
}

#[test]
fn many_appends_then_reopen_and_continue() {
    let (_tmp, dir) = wal_dir();
    let mut wal = Wal::create(&dir, META, opts()).unwrap();
    for i in 1..=500 {
        wal.append(&[entry(i, 1 + i / 100)], Some(&hs(1 + i / 100, i - 1)))
            .unwrap();
    }
    drop(wal);
    let (mut wal, replay) = Wal::open(&dir, opts()).unwrap();
    assert_eq!(replay.entries.len(), 500);
    assert_eq!(replay.entries[499], entry(500, 6));
    assert_eq!(replay.hard_state, hs(6, 499));
    for i in 501..=600 {
        wal.append(&[entry(i, 6)], None).unwrap();
    }
    // A hard-state-only append (e.g. a vote) is persisted too.
    wal.append(&[], Some(&hs(7, 600))).unwrap();
    drop(wal);
    let (_wal, replay) = Wal::open(&dir, opts()).unwrap();
    let want: Vec<Entry> = (1..=600).map(|i| entry(i, (1 + i / 100).min(6))).collect();
    assert_eq!(replay.entries, want);
    assert_eq!(replay.hard_state, hs(7, 600));
}

#[test]
fn append_is_one_write_and_one_fdatasync() {
    let (_tmp, dir) = wal_dir();
    let fs = FaultFs::new();
    let mut wal = Wal::create(&dir, META, fault_opts(&fs)).unwrap();
    let (w0, s0) = (fs.writes(), fs.data_syncs());
    let batch: Vec<Entry> = (1..=100).map(|i| entry(i, 1)).collect();
    wal.append(&batch, Some(&hs(1, 50))).unwrap();
    assert_eq!((fs.writes() - w0, fs.data_syncs() - s0), (1, 1));
    // Nothing to persist: no I/O at all.
    wal.append(&[], None).unwrap();
    assert_eq!((fs.writes() - w0, fs.data_syncs() - s0), (1, 1));
}

#[test]
fn later_records_truncate_the_log() {
    // (append calls as (first index, count, term), expected (index, term) after replay)
    type Case = (&'static [(u64, u64, u64)], &'static [(u64, u64)]);
    let cases: &[Case] = &[
        (&[(1, 3, 1)], &[(1, 1), (2, 1), (3, 1)]),
        // Overwrite the tail with a new term.
        (&[(1, 5, 1), (3, 2, 2)], &[(1, 1), (2, 1), (3, 2), (4, 2)]),
        // Overwrite the very first entry: everything is replaced.
        (&[(1, 3, 1), (1, 1, 2)], &[(1, 2)]),
        // Rewrite the last index only.
        (&[(1, 3, 1), (3, 1, 2)], &[(1, 1), (2, 1), (3, 2)]),
        // Truncate, then keep appending past the old end.
        (
            &[(1, 4, 1), (2, 1, 2), (3, 3, 3)],
            &[(1, 1), (2, 2), (3, 3), (4, 3), (5, 3)],
        ),
        // A log that starts later than 1 (older segments released).
        (&[(10, 2, 4)], &[(10, 4), (11, 4)]),
        // Rewrite below the first retained entry.
        (&[(10, 2, 4), (8, 1, 5)], &[(8, 5)]),
    ];
    for (calls, want) in cases {
        let (_tmp, dir) = wal_dir();
        let mut wal = Wal::create(&dir, META, opts()).unwrap();
        for &(first, count, term) in *calls {
            let batch: Vec<Entry> = (first..first + count).map(|i| entry(i, term)).collect();
            wal.append(&batch, None).unwrap();
        }
        drop(wal);
        let (_wal, replay) = Wal::open(&dir, opts()).unwrap();
        assert_eq!(indices_terms(&replay.entries), *want, "calls {calls:?}");
    }
}

#[test]
fn gap_is_refused_before_writing_and_wal_stays_usable() {
    let (_tmp, dir) = wal_dir();
    let mut wal = Wal::create(&dir, META, opts()).unwrap();
    wal.append(&[entry(1, 1), entry(2, 1)], None).unwrap();
    let err = wal.append(&[entry(4, 1)], None).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Gap {
                expected: 3,
                found: 4
            }
        ),
        "{err:?}"
    );
    // A gap inside one batch is refused as a whole.
    let err = wal
        .append(&[entry(3, 1), entry(5, 1)], Some(&hs(1, 1)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Gap {
                expected: 4,
                found: 5
            }
        ),
        "{err:?}"
    );
    wal.append(&[entry(3, 1)], None).unwrap();
    drop(wal);
    let (_wal, replay) = Wal::open(&dir, opts()).unwrap();
    assert_eq!(indices_terms(&replay.entries), [(1, 1), (2, 1), (3, 1)]);
    assert_eq!(replay.hard_state, HardState::default());
}

#[test]
fn snapshot_marker_drops_covered_entries() {
    let (_tmp, dir) = wal_dir();
    let mut wal = Wal::create(&dir, META, opts()).unwrap();
    let batch: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
    wal.append(&batch, Some(&hs(1, 10))).unwrap();
    wal.save_snapshot(SnapshotMarker { index: 5, term: 1 })
        .unwrap();
    drop(wal);
    let (mut wal, replay) = Wal::open(&dir, opts()).unwrap();
    assert_eq!(replay.snapshot, Some(SnapshotMarker { index: 5, term: 1 }));
    assert_eq!(replay.entries, batch[5..].to_vec());

    // A follower that receives a snapshot past its log continues right after it.
    wal.save_snapshot(SnapshotMarker {
        index: 100,
        term: 3,
    })
    .unwrap();
    assert!(matches!(
        wal.append(&[entry(102, 3)], None),
        Err(Error::Gap {
            expected: 101,
            found: 102
        })
    ));
    wal.append(&[entry(101, 3), entry(102, 3)], None).unwrap();
    drop(wal);
    let (_wal, replay) = Wal::open(&dir, opts()).unwrap();
    assert_eq!(
        replay.snapshot,
        Some(SnapshotMarker {
            index: 100,
            term: 3
        })
    );
    assert_eq!(indices_terms(&replay.entries), [(101, 3), (102, 3)]);
}

#[test]
fn rotation_names_segments_by_seq_and_first_index() {
    let (_tmp, dir) = wal_dir();
    let mut wal = Wal::create(&dir, META, small_segments(1024)).unwrap();
    for i in 1..=100 {
        wal.append(&[big_entry(i)], Some(&hs(1, i))).unwrap();
    }
    drop(wal);
    let files = segment_files(&dir);
    assert!(files.len() > 5, "only {} segments", files.len());
    for (n, path) in files.iter().enumerate() {
        let name = path.file_name().unwrap().to_str().unwrap();
        let (seq, first_index) = parse_segment_name(name).unwrap();
        assert_eq!(seq, n as u64, "{name}");
        // The first entry record in each rotated segment has the index in its name.
        let buf = std::fs::read(path).unwrap();
        let first_entry =
            record_spans(path).into_iter().find_map(|(start, _)| {
                match record::decode(&record::read_frame(&buf, start).unwrap()).unwrap() {
                    record::Record::Entry(e) => Some(e.index),
                    _ => None,
                }
            });
        if n > 0 {
            assert_eq!(first_entry, Some(first_index), "{name}");
        }
        // Rotation happens once a segment is full, not much later.
        if n + 1 < files.len() {
            let len = std::fs::metadata(path).unwrap().len();
            assert!((1024..1024 + 300).contains(&len), "{name}: {len} bytes");
        }
    }
    let (_wal, replay) = Wal::open(&dir, small_segments(1024)).unwrap();
    assert_eq!(replay.entries, (1..=100).map(big_entry).collect::<Vec<_>>());
    assert_eq!(replay.hard_state, hs(1, 100));
}

#[test]
fn release_before_deletes_old_segments_and_replay_stays_right() {
    let (_tmp, dir) = wal_dir();
    let mut wal = Wal::create(&dir, META, small_segments(1024)).unwrap();
    for i in 1..=100 {
        wal.append(&[big_entry(i)], Some(&hs(2, i))).unwrap();
    }
    let before = segment_files(&dir);

    // Without a snapshot marker nothing may go: those entries exist nowhere else.
    wal.release_before(90).unwrap();
    assert_eq!(segment_files(&dir), before);

    wal.save_snapshot(SnapshotMarker { index: 60, term: 2 })
        .unwrap();
    // Asking for more than the snapshot covers releases only up to the snapshot.
    wal.release_before(95).unwrap();
    let after = segment_files(&dir);
    assert!(after.len() < before.len(), "nothing released");
    assert_eq!(after, before[before.len() - after.len()..].to_vec());
    // Every deleted segment held only entries <= 60, the oldest kept one reaches past 60.
    let (_, first_kept) =
        parse_segment_name(after[0].file_name().unwrap().to_str().unwrap()).unwrap();
    let (_, next_first) =
        parse_segment_name(after[1].file_name().unwrap().to_str().unwrap()).unwrap();
    assert!(
        first_kept <= 61 && next_first > 61,
        "{first_kept} {next_first}"
    );

    for i in 101..=110 {
        wal.append(&[big_entry(i)], Some(&hs(2, i))).unwrap();
    }
    drop(wal);
    let (mut wal, replay) = Wal::open(&dir, small_segments(1024)).unwrap();
    assert_eq!(replay.metadata, META);
    assert_eq!(replay.snapshot, Some(SnapshotMarker { index: 60, term: 2 }));
    assert_eq!(replay.hard_state, hs(2, 110));
    assert_eq!(
        replay.entries,
        (61..=110).map(big_entry).collect::<Vec<_>>()
    );

    // Release everything a newer snapshot covers: only the active segment may remain.
    wal.save_snapshot(SnapshotMarker {
        index: 110,
        term: 2,
    })
    .unwrap();
    wal.release_before(u64::MAX).unwrap();
    assert_eq!(segment_files(&dir).len(), 1);
    drop(wal);
    let (_wal, replay) = Wal::open(&dir, small_segments(1024)).unwrap();
    assert_eq!(
        replay.snapshot,
        Some(SnapshotMarker {
            index: 110,
            term: 2
        })
    );
    assert_eq!(replay.hard_state, hs(2, 110));
    assert_eq!(replay.metadata, META);
    assert!(replay.entries.is_empty());
}

/// Writes entries 1..=4 (one append each), then entry 5 with a hard state as the last append.
/// Returns (segment path, file bytes, offset where the last append starts, where entry 5 ends).
fn wal_with_last_append(dir: &Path) -> (PathBuf, Vec<u8>, usize, usize) {
    let mut wal = Wal::create(dir, META, opts()).unwrap();
    for i in 1..=4 {
        wal.append(&[entry(i, 1)], Some(&hs(1, i - 1))).unwrap();
    }
    let path = segment_files(dir).pop().unwrap();
    let last_start = std::fs::metadata(&path).unwrap().len() as usize;
    wal.append(&[entry(5, 1)], Some(&hs(1, 4))).unwrap();
    drop(wal);
    let bytes = std::fs::read(&path).unwrap();
    let spans = padded_spans(&path);
    let entry_end = spans
        .iter()
        .find(|(s, _)| *s == last_start)
        .map(|&(_, e)| e)
        .unwrap();
    (path, bytes, last_start, entry_end)
}

#[test]
fn torn_tail_at_every_byte_is_repaired() {
    let (_tmp, dir) = wal_dir();
    let (path, bytes, last_start, entry_end) = wal_with_last_append(&dir);
    for cut in last_start..bytes.len() {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let (mut wal, replay) = Wal::open(&dir, opts()).unwrap();
        let clean = cut == last_start || cut == entry_end;
        assert_eq!(replay.repaired_tail, !clean, "cut at {cut}");
        let survivors = if cut >= entry_end { 5 } else { 4 };
        assert_eq!(
            replay.entries,
            (1..=survivors).map(|i| entry(i, 1)).collect::<Vec<_>>(),
            "cut at {cut}"
        );
        assert_eq!(replay.hard_state, hs(1, 3), "cut at {cut}");
        // The torn bytes are gone from disk, and the log continues cleanly after them.
        let valid_end = if cut >= entry_end {
            entry_end
        } else {
            last_start
        };
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, valid_end);
        wal.append(&[entry(5, 2)], Some(&hs(2, 4))).unwrap();
        drop(wal);
        let (_wal, replay) = Wal::open(&dir, opts()).unwrap();
        assert!(!replay.repaired_tail, "cut at {cut}");
        assert_eq!(replay.entries.last(), Some(&entry(5, 2)), "cut at {cut}");
        assert_eq!(replay.entries.len(), 5, "cut at {cut}");
    }
}

#[test]
fn zero_filled_tail_is_repaired() {
    let (_tmp, dir) = wal_dir();
    let (path, bytes, _, _) = wal_with_last_append(&dir);
    for zeros in [1usize, 8, 9, 100, 4096] {
        let mut padded = bytes.clone();
        padded.resize(bytes.len() + zeros, 0);
        std::fs::write(&path, &padded).unwrap();
        let (_wal, replay) = Wal::open(&dir, opts()).unwrap();
        assert!(replay.repaired_tail, "{zeros} zeros");
        assert_eq!(replay.entries.len(), 5, "{zeros} zeros");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            bytes.len()
        );
    }
}

#[test]
fn flipped_byte_in_last_record_is_repaired() {
    let (_tmp, dir) = wal_dir();
    let (path, bytes, _, _) = wal_with_last_append(&dir);
    let spans = record_spans(&path);
    let (start, end) = *spans.last().unwrap(); // the hard state of the last append
    for i in start..end {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        if i == start + 9 {
            // The record type (state -> entry): etcd's CRC does not cover it, the payload
            // is intact, so this is no torn write: refused, never cut off.
            assert!(
                matches!(Wal::open(&dir, opts()), Err(Error::Corrupt { .. })),
                "flip at {i}"
            );
            continue;
        }
        let (_wal, replay) = Wal::open(&dir, opts()).unwrap();
        assert!(replay.repaired_tail, "flip at {i}");
        assert_eq!(replay.entries.len(), 5, "flip at {i}");
        assert_eq!(replay.hard_state, hs(1, 3), "flip at {i}");
    }
}

#[test]
fn flipped_byte_in_a_middle_record_is_corrupt() {
    let (_tmp, dir) = wal_dir();
    let (path, bytes, _, _) = wal_with_last_append(&dir);
    let spans = record_spans(&path);
    let (start, end) = spans[spans.len() / 2];
    for i in start..end {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        let err = Wal::open(&dir, opts()).unwrap_err();
        match &err {
            Error::Corrupt {
                path: p, offset, ..
            } => {
                assert_eq!(p, &path, "flip at {i}");
                assert_eq!(*offset as usize, start, "flip at {i}");
            }
            other => panic!("flip at {i}: {other:?}"),
        }
        let shown = err.to_string();
        assert!(
            shown.contains(&path.display().to_string())
                && shown.contains(&format!("offset {start}")),
            "{shown}"
        );
        // The read-only path refuses the same way and never modifies the file.
        assert!(matches!(Wal::read(&dir), Err(Error::Corrupt { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), bad);
    }
}

#[test]
fn bad_record_in_an_earlier_segment_is_corrupt_even_at_its_end() {
    let (_tmp, dir) = wal_dir();
    let mut wal = Wal::create(&dir, META, small_segments(512)).unwrap();
    for i in 1..=30 {
        wal.append(&[big_entry(i)], None).unwrap();
    }
    drop(wal);
    let files = segment_files(&dir);
    assert!(files.len() >= 3);
    let victim = &files[1];
    let good = std::fs::read(victim).unwrap();
    // Cut the last record of the earlier segment short: a torn write there is not a tail.
    std::fs::write(victim, &good[..good.len() - 3]).unwrap();
    match Wal::open(&dir, small_segments(512)).unwrap_err() {
        Error::Corrupt { path, .. } => assert_eq!(&path, victim),
        other => panic!("{other:?}"),
    }
    // A missing segment in the middle is refused as well.
    std::fs::write(victim, &good).unwrap();
    std::fs::remove_file(victim).unwrap();
    match Wal::open(&dir, small_segments(512)).unwrap_err() {
        Error::Corrupt { path, reason, .. } => {
            assert_eq!(path, files[2]);
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn read_does_not_repair() {
    let (_tmp, dir) = wal_dir();
    let (path, bytes, last_start, _) = wal_with_last_append(&dir);
    let cut = last_start + 5;
    std::fs::write(&path, &bytes[..cut]).unwrap();
    let replay = Wal::read(&dir).unwrap();
    assert!(replay.repaired_tail);
    assert_eq!(replay.entries.len(), 4);
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, cut);
}

fn assert_fail_stopped(wal: &mut Wal) {
    for result in [
        wal.append(&[], Some(&hs(9, 9))),
        wal.save_snapshot(SnapshotMarker { index: 1, term: 1 }),
        wal.release_before(1),
    ] {
        let err = result.unwrap_err();
        assert!(err.to_string().contains("fail-stop"), "{err}");
    }
}

#[test]
fn injected_faults_fail_stop_the_wal() {
    // (name, inject the fault, entries that must survive a reopen, tail repaired)
    type Inject = fn(&FaultFs);
    let cases: &[(&str, Inject, usize, bool)] = &[
        ("fdatasync", |fs| fs.fail_next_sync(), 3, false),
        ("write", |fs| fs.fail_next_write(), 2, false),
        ("short write", |fs| fs.short_next_write(7), 2, true),
    ];
    for &(name, inject, survivors, repaired) in cases {
        let (_tmp, dir) = wal_dir();
        let fs = FaultFs::new();
        let mut wal = Wal::create(&dir, META, fault_opts(&fs)).unwrap();
        wal.append(&[entry(1, 1), entry(2, 1)], Some(&hs(1, 1)))
            .unwrap();
        inject(&fs);
        let err = wal.append(&[entry(3, 1)], Some(&hs(1, 2))).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{name}: {err:?}");
        // The next call would succeed at the file-system level; the WAL must still refuse.
        let err = wal.append(&[entry(3, 1)], None).unwrap_err();
        assert!(err.to_string().contains("fail-stop"), "{name}: {err}");
        assert_fail_stopped(&mut wal);
        drop(wal);
        // A restarted member sees the acknowledged entries, never a half record.
        let (_wal, replay) = Wal::open(&dir, opts()).unwrap();
        assert_eq!(replay.entries.len(), survivors, "{name}");
        assert_eq!(replay.repaired_tail, repaired, "{name}");
        assert_eq!(replay.entries[..2], [entry(1, 1), entry(2, 1)], "{name}");
    }
}

#[test]
fn failed_rotation_fail_stops_and_leaves_a_replayable_wal() {
    type Inject = fn(&FaultFs);
    let cases: &[(&str, Inject)] = &[
        ("create", |fs| fs.fail_next_create()),
        ("header fdatasync", |fs| fs.fail_next_sync()),
        ("dir fsync", |fs| fs.fail_next_dir_sync()),
    ];
    for &(name, inject) in cases {
        let (_tmp, dir) = wal_dir();
        let fs = FaultFs::new();
        let mut wal = Wal::create(
            &dir,
            META,
            WalOptions {
                segment_bytes: 256,
                ..fault_opts(&fs)
            },
        )
        .unwrap();
        let mut next = 1;
        // Fill the first segment; the append after that has to rotate first.
        while std::fs::metadata(&segment_files(&dir)[0]).unwrap().len() < 256 {
            wal.append(&[big_entry(next)], None).unwrap();
            next += 1;
        }
        inject(&fs);
        assert!(
            wal.append(&[big_entry(next)], None).is_err(),
            "{name}: rotation fault not reported"
        );
        assert_fail_stopped(&mut wal);
        drop(wal);
        let (_wal, replay) = Wal::open(&dir, small_segments(256)).unwrap();
        assert!(replay.entries.len() as u64 >= next - 1, "{name}");
        assert_eq!(
            replay.entries[..(next - 1) as usize],
            (1..next).map(big_entry).collect::<Vec<_>>()
        );
        // No temporary file is left behind after open.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")),
            "{name}: {names:?}"
        );
    }
}

#[test]
fn create_and_open_report_missing_or_existing_wal() {
    let (tmp, dir) = wal_dir();
    assert!(matches!(Wal::open(&dir, opts()), Err(Error::NotFound(p)) if p == dir));
    assert!(matches!(Wal::read(&dir), Err(Error::NotFound(_))));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("unrelated.txt"), b"x").unwrap();
    assert!(!Wal::exists(&dir));
    assert!(matches!(Wal::open(&dir, opts()), Err(Error::NotFound(_))));
    drop(Wal::create(&dir, META, opts()).unwrap());
    assert!(matches!(
        Wal::create(&dir, META, opts()),
        Err(Error::AlreadyExists(p)) if p == dir
    ));
    assert!(Wal::exists(&dir));
    drop(tmp);
}

#[test]
fn older_snapshot_marker_does_not_move_the_snapshot_back() {
    let (_tmp, dir) = wal_dir();
    let mut wal = Wal::create(&dir, META, opts()).unwrap();
    let batch: Vec<Entry> = (1..=20).map(|i| entry(i, 1)).collect();
    wal.append(&batch, None).unwrap();
    wal.save_snapshot(SnapshotMarker { index: 15, term: 1 })
        .unwrap();
    wal.save_snapshot(SnapshotMarker { index: 10, term: 1 })
        .unwrap();
    drop(wal);
    let replay = Wal::read(&dir).unwrap();
    assert_eq!(replay.snapshot, Some(SnapshotMarker { index: 15, term: 1 }));
    assert_eq!(replay.entries, batch[15..].to_vec());
}

#[test]
fn wal_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Wal>();
    assert_send::<Error>();
}

/// Deterministic xorshift, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The replay rules written the simple way, to check the WAL against.
#[derive(Default)]
struct Model {
    entries: Vec<Entry>,
    snapshot: Option<SnapshotMarker>,
    hard_state: HardState,
}

impl Model {
    fn append(&mut self, batch: &[Entry]) {
        for e in batch {
            if self.snapshot.is_some_and(|s| e.index <= s.index) {
                continue;
            }
            self.entries.retain(|x| x.index < e.index);
            self.entries.push(e.clone());
        }
    }
    fn snapshot(&mut self, m: SnapshotMarker) {
        self.snapshot = Some(m);
        self.entries.retain(|x| x.index > m.index);
    }
    fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map(|e| e.index)
            .or(self.snapshot.map(|s| s.index))
            .unwrap_or(0)
    }
    fn check(&self, replay: &Replay, seed: u64, step: usize) {
        assert_eq!(
            (
                replay.snapshot,
                replay.entries.first().map(|e| e.index),
                replay.entries.last().map(|e| e.index)
            ),
            (
                self.snapshot,
                self.entries.first().map(|e| e.index),
                self.entries.last().map(|e| e.index)
            ),
            "seed {seed} step {step}"
        );
        assert_eq!(replay.entries, self.entries, "seed {seed} step {step}");
        assert_eq!(replay.snapshot, self.snapshot, "seed {seed} step {step}");
        assert_eq!(
            replay.hard_state, self.hard_state,
            "seed {seed} step {step}"
        );
        assert_eq!(replay.metadata, META, "seed {seed} step {step}");
        assert!(!replay.repaired_tail, "seed {seed} step {step}");
    }
}

#[test]
fn random_operations_match_the_model_across_rotation_release_and_reopen() {
    let segment = || small_segments(400);
    for seed in 1..=25u64 {
        let (_tmp, dir) = wal_dir();
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut wal = Wal::create(&dir, META, segment()).unwrap();
        let mut model = Model::default();
        let mut term = 1;
        for step in 0..300 {
            match rng.below(10) {
                0..=5 => {
                    let last = model.last_index();
                    let floor = model.snapshot.map_or(1, |s| s.index + 1);
                    // Mostly append at the end, sometimes rewrite the last few entries.
                    let start = if rng.below(4) == 0 {
                        term += 1;
                        last.saturating_sub(rng.below(4)).max(floor)
                    } else {
                        last + 1
                    };
                    let batch: Vec<Entry> = (start..start + 1 + rng.below(5))
                        .map(|i| Entry {
                            data: vec![i as u8; rng.below(120) as usize],
                            ..entry(i, term)
                        })
                        .collect();
                    let hs = (rng.below(2) == 0).then(|| hs(term, start));
                    wal.append(&batch, hs.as_ref()).unwrap();
                    model.append(&batch);
                    if let Some(hs) = hs {
                        model.hard_state = hs;
                    }
                }
                6 => {
                    let hs = hs(term, rng.below(1000));
                    wal.append(&[], Some(&hs)).unwrap();
                    model.hard_state = hs;
                }
                7 => {
                    let base = model.snapshot.map_or(0, |s| s.index);
                    let last = model.last_index();
                    if last > base {
                        let m = SnapshotMarker {
                            index: base + 1 + rng.below(last - base),
                            term,
                        };
                        wal.save_snapshot(m).unwrap();
                        model.snapshot(m);
                    }
                }
                8 => {
                    let upto = model.snapshot.map_or(0, |s| s.index) + rng.below(3);
                    wal.release_before(upto).unwrap();
                }
                _ => {
                    drop(wal);
                    let (reopened, replay) = Wal::open(&dir, segment()).unwrap();
                    model.check(&replay, seed, step);
                    wal = reopened;
                }
            }
        }
        drop(wal);
        model.check(&Wal::read(&dir).unwrap(), seed, 300);
        let (_wal, replay) = Wal::open(&dir, segment()).unwrap();
        model.check(&replay, seed, 300);
    }
}

#[test]
fn metadata_is_read_from_the_newest_segments_head_and_checked() {
    let (_tmp, dir) = wal_dir();
    let mut wal = Wal::create(&dir, META, small_segments(1024)).unwrap();
    for i in 1..=40 {
        wal.append(&[big_entry(i)], Some(&hs(1, i))).unwrap();
    }
    drop(wal);
    let files = segment_files(&dir);
    assert!(files.len() > 2, "only {} segments", files.len());
    assert_eq!(Wal::read_metadata(&dir).unwrap(), META);
    assert_eq!(
        Wal::read_metadata(&dir).unwrap(),
        Wal::read(&dir).unwrap().metadata
    );
    // A flipped byte in the newest segment's metadata is refused, not returned.
    let newest = files.last().unwrap();
    let (start, end) = record_spans(newest)[1];
    let mut buf = std::fs::read(newest).unwrap();
    buf[end - 1] ^= 0x20;
    std::fs::write(newest, &buf).unwrap();
    let err = Wal::read_metadata(&dir).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { offset, .. } if offset == start as u64),
        "{err:?}"
    );
}
