//! Reading the WAL back: segment names, record scanning with torn-tail detection, and the
//! replay rules for entries (truncation, snapshot markers, gaps).

use std::path::{Path, PathBuf};

use crate::fs::FileSystem;
use crate::legacy;
use crate::pb::crc32c;
use crate::record::{self, Record};
use crate::{io_err, Entry, Error, HardState, Replay, Result, SnapshotMarker};

pub(crate) const SEGMENT_SUFFIX: &str = ".wal";
/// Segments are written under this suffix and renamed into place once their header is
/// durable, so a crash while rotating never leaves a half-written segment under a real name.
pub(crate) const TMP_SUFFIX: &str = ".wal.tmp";

/// `<seq:016x>-<first_index:016x>.wal`: etcd's naming, so the sequence number and the first
/// entry index a segment may hold can be read off a directory listing.
pub(crate) fn segment_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}{SEGMENT_SUFFIX}")
}

/// Parses a segment file name; None for anything else (other files are not ours).
pub(crate) fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    let (seq, first) = stem.split_once('-')?;
    let hex16 = |s: &str| {
        if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            u64::from_str_radix(s, 16).ok()
        } else {
            None
        }
    };
    Some((hex16(seq)?, hex16(first)?))
}

/// A segment on disk, as the writer tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentInfo {
    pub seq: u64,
    pub first_index: u64,
    pub path: PathBuf,
    /// The highest entry index written into this segment (None: no entries). Used to decide
    /// which whole segments `release_before` may delete.
    pub max_index: Option<u64>,
}

/// Segment files in `dir` sorted by sequence number, plus leftover temporary files.
pub(crate) fn list_segments(
    fs: &dyn FileSystem,
    dir: &Path,
) -> Result<(Vec<SegmentInfo>, Vec<PathBuf>)> {
    let paths = match fs.list_dir(dir) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound(dir.to_path_buf()))
        }
        Err(e) => return Err(io_err("list wal dir", dir)(e)),
    };
    let mut segments = Vec::new();
    let mut tmps = Vec::new();
    for path in paths {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(TMP_SUFFIX) {
            tmps.push(path);
        } else if let Some((seq, first_index)) = parse_segment_name(name) {
            segments.push(SegmentInfo {
                seq,
                first_index,
                path,
                max_index: None,
            });
        }
    }
    segments.sort_by_key(|s| s.seq);
    Ok((segments, tmps))
}

/// Whether the next entry index is accepted, and whether replay keeps it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// At or below the newest snapshot: covered by it, not part of the replayed log.
    Skip,
    /// Part of the log; entries >= its index are replaced by it.
    Keep,
}

/// The index rules shared by replay and by `append` (which checks a batch before writing it,
/// so that it never writes something replay would refuse).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct IndexTracker {
    /// Index of the last entry kept after the snapshot, if any.
    pub last: Option<u64>,
    pub snapshot: Option<SnapshotMarker>,
}

impl IndexTracker {
    pub fn admit(&mut self, index: u64) -> Result<Admit> {
        if let Some(s) = self.snapshot {
            if index <= s.index {
                // Still a rewrite of index: every kept entry (all > s.index >= index) is
                // replaced, so the log restarts right after the snapshot.
                self.last = None;
                return Ok(Admit::Skip);
            }
        }
        // An entry may rewrite any earlier index (raft truncation) but never skip ahead.
        let expected = match (self.last, self.snapshot) {
            (Some(last), _) => Some(last.saturating_add(1)),
            (None, Some(s)) => Some(s.index.saturating_add(1)),
            // The oldest segments may have been released: the first entry can be anything.
            (None, None) => None,
        };
        if let Some(expected) = expected {
            if index > expected {
                return Err(Error::Gap {
                    expected,
                    found: index,
                });
            }
        }
        self.last = Some(index);
        Ok(Admit::Keep)
    }

    /// Snapshots only move forward in raft, so the marker with the highest index is the
    /// newest; an older marker repeated in a segment header must not move it back.
    pub fn on_snapshot(&mut self, m: SnapshotMarker) {
        if self.snapshot.is_some_and(|s| s.index > m.index) {
            return;
        }
        if self.last.is_some_and(|last| last <= m.index) {
            self.last = None;
        }
        self.snapshot = Some(m);
    }

    /// The index the next appended entry is expected to have (used to name new segments).
    pub fn next_index(&self) -> u64 {
        match (self.last, self.snapshot) {
            (Some(last), _) => last.saturating_add(1),
            (None, Some(s)) => s.index.saturating_add(1),
            (None, None) => 0,
        }
    }
}

/// A bad record at the tail of the last segment.
#[derive(Debug)]
pub(crate) struct TornTail {
    pub path: PathBuf,
    pub offset: u64,
    pub reason: String,
}

/// Everything a full replay of the directory found.
pub(crate) struct Loaded {
    pub replay: Replay,
    /// The segments in etcd's format (after an upgrade, the upgraded one and later).
    pub segments: Vec<SegmentInfo>,
    pub tracker: IndexTracker,
    pub stale_tmps: Vec<PathBuf>,
    /// Length of the valid prefix of the last segment.
    pub last_valid_end: u64,
    /// The running CRC after the last valid record (what the next record chains onto).
    pub last_crc: u32,
    pub torn: Option<TornTail>,
    /// Every segment is in ferrokv's previous format: `open()` upgrades the WAL.
    pub legacy: bool,
    /// Old-format segments an upgraded segment replaced (a crash stopped their removal).
    pub superseded: Vec<PathBuf>,
}

/// Returns the offset of a valid record that starts after `bad` in `buf`, if any. A bad
/// record followed by a valid one is not a torn write (a crash only damages the end of
/// the file), so it must be reported as corruption rather than cut off.
fn legacy_record_after(buf: &[u8], bad: usize) -> Option<usize> {
    // Where the bad record claims to end is the likely start of the next record; try it
    // first, then every later offset (the length field itself may be the damaged part).
    let claimed_end = buf
        .get(bad..bad + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .and_then(|len| bad.checked_add(legacy::HEADER_LEN)?.checked_add(len));
    if let Some(end) = claimed_end {
        if end < buf.len() && legacy::read_frame(buf, end).is_ok() {
            return Some(end);
        }
    }
    (bad + 1..buf.len()).find(|&off| legacy::read_frame(buf, off).is_ok())
}

/// etcd's records are 8-aligned, so only aligned offsets can start one.
fn etcd_record_after(buf: &[u8], bad: usize) -> Option<usize> {
    (bad + 8..buf.len())
        .step_by(8)
        .find(|&off| record::plausible_record_at(buf, off))
}

/// Whether a segment is in ferrokv's previous format: it starts with that format's
/// metadata record, CRC and all (etcd's segments start with a length word and a crc record).
fn is_legacy(buf: &[u8]) -> bool {
    matches!(legacy::read_frame(buf, 0), Ok(f) if f.ty == legacy::RecordType::Metadata)
}

/// The metadata of the previous format was `member id ‖ cluster id` big endian; the upgraded
/// WAL carries etcd's `etcdserverpb.Metadata` with the same ids.
fn upgrade_metadata(m: Vec<u8>) -> Vec<u8> {
    match <[u8; 16]>::try_from(m.as_slice()) {
        Ok(b) => {
            let mut id = [0u8; 8];
            let mut cluster = [0u8; 8];
            id.copy_from_slice(&b[..8]);
            cluster.copy_from_slice(&b[8..]);
            crate::pb::encode_metadata(u64::from_be_bytes(id), u64::from_be_bytes(cluster))
        }
        Err(_) => m,
    }
}

fn from_legacy(r: legacy::Record) -> Record {
    match r {
        legacy::Record::Metadata(m) => Record::Metadata(upgrade_metadata(m)),
        legacy::Record::Entry(e) => Record::Entry(e),
        legacy::Record::HardState(h) => Record::HardState(h),
        legacy::Record::Snapshot(s) => Record::Snapshot(s),
    }
}

/// Where an entry's record is. Replay decides which entries it keeps before it decodes any,
/// so the entries a snapshot covers (with the defaults, most of a long log) are checked on the
/// way but never copied into memory.
#[derive(Clone, Copy, Debug)]
struct EntryAt {
    index: u64,
    term: u64,
    /// Position of its segment in [`Loaded::segments`].
    seg: usize,
    off: usize,
    /// The running CRC before the record: lets the second read check the bytes again.
    crc_before: u32,
}

/// A scanned record: entries of etcd-format segments stay where they are until replay keeps
/// them. Pass 1 holds one of these per record of the whole WAL, so the common case (an
/// entry) is kept small and the rare others are boxed.
enum Scan {
    Record(Box<Placed>),
    Entry(EntryAt),
}

/// A record other than an etcd-format entry, and where it was.
struct Placed {
    seg: usize,
    off: u64,
    rec: Record,
}

impl Scan {
    fn record(seg: usize, off: usize, rec: Record) -> Scan {
        Scan::Record(Box::new(Placed {
            seg,
            off: off as u64,
            rec,
        }))
    }

    /// (segment position, offset) of the record.
    fn place(&self) -> (usize, u64) {
        match self {
            Scan::Record(p) => (p.seg, p.off),
            Scan::Entry(a) => (a.seg, a.off as u64),
        }
    }
}

/// An entry replay keeps: decoded already (old-format segments), or still in its segment.
enum Slot {
    Decoded(Entry),
    At(EntryAt),
}

impl Slot {
    fn index(&self) -> u64 {
        match self {
            Slot::Decoded(e) => e.index,
            Slot::At(a) => a.index,
        }
    }
}

/// Replay state machine over the records of all segments, in order.
#[derive(Default)]
struct ReplayState {
    metadata: Option<Vec<u8>>,
    hard_state: HardState,
    tracker: IndexTracker,
    entries: Vec<Slot>,
}

impl ReplayState {
    fn apply(&mut self, rec: Scan, seg: &mut SegmentInfo, offset: u64) -> Result<()> {
        let rec = match rec {
            Scan::Entry(at) => Err(at),
            Scan::Record(p) => Ok(p.rec),
        };
        let (slot, index, term) = match rec {
            Err(at) => (Slot::At(at), at.index, at.term),
            Ok(Record::Entry(e)) => {
                let (index, term) = (e.index, e.term);
                (Slot::Decoded(e), index, term)
            }
            Ok(Record::Crc(_)) => return Ok(()),
            Ok(Record::Metadata(m)) => {
                return match &self.metadata {
                    None => {
                        self.metadata = Some(m);
                        Ok(())
                    }
                    Some(first) if *first == m => Ok(()),
                    Some(_) => Err(Error::Corrupt {
                        path: seg.path.clone(),
                        offset,
                        reason: "metadata differs from the first segment's".into(),
                    }),
                }
            }
            Ok(Record::HardState(hs)) => {
                self.hard_state = hs;
                return Ok(());
            }
            // etcd's empty snapshot record at the start of a new WAL: no snapshot.
            Ok(Record::Snapshot(SnapshotMarker { index: 0, term: 0 })) => return Ok(()),
            Ok(Record::Snapshot(m)) => {
                self.tracker.on_snapshot(m);
                let upto = self.tracker.snapshot.map_or(m.index, |s| s.index);
                let covered = self.entries.partition_point(|e| e.index() <= upto);
                self.entries.drain(..covered);
                return Ok(());
            }
        };
        // Raft entries have a term >= 1. etcd's CRC does not cover the record type, so this
        // also catches a hard state whose type byte flipped to "entry".
        if term == 0 {
            return Err(Error::Corrupt {
                path: seg.path.clone(),
                offset,
                reason: format!("entry {index} has term 0"),
            });
        }
        seg.max_index = Some(seg.max_index.map_or(index, |m| m.max(index)));
        let admit = self.tracker.admit(index)?;
        // Either way the record replaces the entries >= its index.
        let keep = self.entries.partition_point(|x| x.index() < index);
        self.entries.truncate(keep);
        if admit == Admit::Keep {
            self.entries.push(slot);
        }
        Ok(())
    }
}

/// What scanning one segment found.
struct Scanned {
    records: Vec<Scan>,
    torn: Option<TornTail>,
    valid_end: u64,
    crc: u32,
}

fn corrupt(seg: &SegmentInfo, offset: usize, reason: String) -> Error {
    Error::Corrupt {
        path: seg.path.clone(),
        offset: offset as u64,
        reason,
    }
}

/// A record that fails its checks is a torn write only at the very end of the last segment,
/// with nothing valid after it (a crash damages only what was being written); anywhere else
/// it is corruption, reported with where the next valid record starts if one does.
fn torn_or_corrupt(
    seg: &SegmentInfo,
    off: usize,
    reason: String,
    is_last: bool,
    follower: Option<usize>,
) -> Result<TornTail> {
    if is_last && follower.is_none() {
        return Ok(TornTail {
            path: seg.path.clone(),
            offset: off as u64,
            reason,
        });
    }
    let reason = match follower {
        Some(next) => format!("{reason}; a valid record follows at offset {next}"),
        None => format!("{reason}; not at the tail of the last segment"),
    };
    Err(corrupt(seg, off, reason))
}

/// Scans a segment in ferrokv's previous format.
fn scan_legacy(seg: &SegmentInfo, seg_no: usize, buf: &[u8], is_last: bool) -> Result<Scanned> {
    let mut records = Vec::new();
    let mut torn = None;
    let mut off = 0usize;
    while off < buf.len() {
        let frame = match legacy::read_frame(buf, off) {
            Ok(f) => f,
            Err(reason) => {
                let follower = if is_last {
                    legacy_record_after(buf, off)
                } else {
                    None
                };
                torn = Some(torn_or_corrupt(seg, off, reason, is_last, follower)?);
                break;
            }
        };
        let rec = legacy::decode(&frame).map_err(|reason| corrupt(seg, off, reason))?;
        if off == 0 && !matches!(rec, legacy::Record::Metadata(_)) {
            return Err(corrupt(
                seg,
                0,
                "segment does not start with a metadata record".into(),
            ));
        }
        records.push(Scan::record(seg_no, off, from_legacy(rec)));
        off = frame.end;
    }
    let valid_end = torn.as_ref().map_or(buf.len() as u64, |t| t.offset);
    Ok(Scanned {
        records,
        torn,
        valid_end,
        crc: 0,
    })
}

/// Scans a segment in etcd's format. `crc` is the running CRC at the end of the previous
/// segment (None for the first one read: older segments may have been released).
fn scan_etcd(
    seg: &SegmentInfo,
    seg_no: usize,
    buf: &[u8],
    is_last: bool,
    crc: Option<u32>,
) -> Result<Scanned> {
    let mut records = Vec::new();
    let mut torn = None;
    let mut running = crc.unwrap_or(0);
    let mut off = 0usize;
    while off < buf.len() {
        let checked = record::read_frame(buf, off).map_err(|e| e.reason()).and_then(|f| {
            if f.ty == record::CRC {
                // The crc record carries the running value; it must continue the chain
                // (etcd skips the check only where it has no previous value).
                if off != 0 {
                    return Err("crc record in the middle of a segment".to_string());
                }
                if crc.is_some_and(|c| c != f.crc) {
                    return Err(format!(
                        "segment crc record {:08x} does not continue the previous segment's {running:08x}",
                        f.crc
                    ));
                }
                let c = f.crc;
                return Ok((f, c));
            }
            let computed = crc32c::append(running, f.data.unwrap_or(&[]));
            if computed != f.crc {
                return Err(format!(
                    "crc mismatch (stored {:08x}, computed {computed:08x})",
                    f.crc
                ));
            }
            Ok((f, computed))
        });
        let (frame, next_crc) = match checked {
            Ok(x) => x,
            Err(reason) => {
                let rest_zero = buf[off..].iter().all(|&b| b == 0);
                let follower = if rest_zero {
                    None
                } else {
                    etcd_record_after(buf, off)
                };
                torn = Some(torn_or_corrupt(seg, off, reason, is_last, follower)?);
                break;
            }
        };
        let rec = if frame.ty == record::ENTRY {
            let e = record::view_entry(frame.data.unwrap_or(&[]))
                .map_err(|reason| corrupt(seg, off, reason))?;
            Scan::Entry(EntryAt {
                index: e.index,
                term: e.term,
                seg: seg_no,
                off,
                crc_before: running,
            })
        } else {
            let r = record::decode(&frame).map_err(|reason| corrupt(seg, off, reason))?;
            Scan::record(seg_no, off, r)
        };
        if off == 0 && !matches!(&rec, Scan::Record(p) if matches!(p.rec, Record::Crc(_))) {
            return Err(corrupt(
                seg,
                0,
                "segment does not start with a crc record".into(),
            ));
        }
        running = next_crc;
        records.push(rec);
        off = frame.end;
    }
    let valid_end = torn.as_ref().map_or(buf.len() as u64, |t| t.offset);
    Ok(Scanned {
        records,
        torn,
        valid_end,
        crc: running,
    })
}

/// Reads and checks every segment of `dir`. Never writes.
/// The metadata record from the head of the newest segment (every segment repeats it after
/// its crc record), read without replaying the log. None when that segment is in the old
/// format or holds no metadata record; the caller then replays everything.
pub(crate) fn head_metadata(fs: &dyn FileSystem, dir: &Path) -> Result<Option<Vec<u8>>> {
    let (all, _) = list_segments(fs, dir)?;
    let Some(seg) = all.last() else {
        return Err(Error::NotFound(dir.to_path_buf()));
    };
    let buf = fs
        .read_file(&seg.path)
        .map_err(io_err("read segment", &seg.path))?;
    if is_legacy(&buf) {
        return Ok(None);
    }
    let mut running = 0u32;
    let mut off = 0usize;
    // The crc record, then the metadata: two frames, each checked as replay checks them.
    for _ in 0..2 {
        let frame = record::read_frame(&buf, off).map_err(|e| corrupt(seg, off, e.reason()))?;
        if frame.ty == record::CRC {
            running = frame.crc;
        } else {
            let computed = crc32c::append(running, frame.data.unwrap_or(&[]));
            if computed != frame.crc {
                return Err(corrupt(
                    seg,
                    off,
                    format!(
                        "crc mismatch (stored {:08x}, computed {computed:08x})",
                        frame.crc
                    ),
                ));
            }
            running = computed;
        }
        if let Record::Metadata(m) = record::decode(&frame).map_err(|r| corrupt(seg, off, r))? {
            return Ok(Some(m));
        }
        off = frame.end;
    }
    Ok(None)
}

pub(crate) fn load(fs: &dyn FileSystem, dir: &Path) -> Result<Loaded> {
    let (all, stale_tmps) = list_segments(fs, dir)?;
    if all.is_empty() {
        return Err(Error::NotFound(dir.to_path_buf()));
    }
    // A missing segment in the middle means lost records: refuse rather than replay around it.
    for pair in all.windows(2) {
        if pair[1].seq != pair[0].seq.wrapping_add(1) {
            return Err(Error::Corrupt {
                path: pair[1].path.clone(),
                offset: 0,
                reason: format!(
                    "segment sequence jumps from {} to {}: a segment is missing",
                    pair[0].seq, pair[1].seq
                ),
            });
        }
    }
    // A segment's format shows in its first record, so the heads tell which segments to
    // replay before any segment is read whole.
    let mut heads = Vec::with_capacity(all.len());
    for seg in &all {
        let head = fs
            .read_head(&seg.path, FORMAT_HEAD_LEN)
            .map_err(io_err("read segment", &seg.path))?;
        heads.push(is_legacy(&head));
    }
    // An upgrade writes one etcd-format segment after the old ones, then removes them: old
    // segments before the first etcd-format one are superseded, and none may come after it.
    let first_etcd = heads.iter().position(|&l| !l);
    let legacy = first_etcd.is_none();
    let skip = first_etcd.unwrap_or(0);
    let superseded: Vec<PathBuf> = all[..skip].iter().map(|s| s.path.clone()).collect();
    let mut segments: Vec<SegmentInfo> = all[skip..].to_vec();
    if !legacy {
        if let Some(i) = heads[skip..].iter().position(|&l| l) {
            return Err(Error::Corrupt {
                path: segments[i].path.clone(),
                offset: 0,
                reason: "a segment in ferrokv's old format follows one in etcd's format".into(),
            });
        }
    }

    // Pass 1 checks and indexes everything, one segment in memory at a time; pass 2 applies
    // the replay rules. Two passes because the newest snapshot marker can come after entries
    // whose predecessors were in released segments: only with the newest marker known up
    // front can those entries be told apart from a real gap.
    let mut records: Vec<Scan> = Vec::new();
    let mut torn = None;
    let mut last_valid_end = 0u64;
    let mut crc = None;
    let mut last_buf = None;
    let count = segments.len();
    for (i, seg) in segments.iter().enumerate() {
        let is_last = i + 1 == count;
        let buf = fs
            .read_file(&seg.path)
            .map_err(io_err("read segment", &seg.path))?;
        let scanned = if legacy {
            scan_legacy(seg, i, &buf, is_last)?
        } else {
            scan_etcd(seg, i, &buf, is_last, crc)?
        };
        crc = Some(scanned.crc);
        records.extend(scanned.records);
        if is_last {
            torn = scanned.torn;
            last_valid_end = scanned.valid_end;
            if last_valid_end == 0 {
                // Segments are renamed into place only after their header is durable, so an
                // empty last segment is not a crash artefact we can explain: refuse.
                return Err(Error::Corrupt {
                    path: seg.path.clone(),
                    offset: 0,
                    reason: "last segment has no valid record".into(),
                });
            }
            // The kept entries are mostly in the newest segment: keep it for pass 3.
            last_buf = Some((i, buf));
        }
    }

    let mut state = ReplayState::default();
    let newest = records
        .iter()
        .filter_map(|r| match r {
            Scan::Record(p) => match p.rec {
                Record::Snapshot(m) if m.index != 0 || m.term != 0 => Some(m),
                _ => None,
            },
            _ => None,
        })
        .max_by_key(|m| m.index);
    if let Some(m) = newest {
        state.tracker.on_snapshot(m);
    }
    for rec in records {
        let (i, off) = rec.place();
        state.apply(rec, &mut segments[i], off)?;
    }
    let entries = decode_kept(fs, &segments, state.entries, last_buf)?;
    let metadata = state.metadata.unwrap_or_default();
    Ok(Loaded {
        replay: Replay {
            metadata,
            hard_state: state.hard_state,
            snapshot: state.tracker.snapshot,
            entries,
            repaired_tail: torn.is_some(),
        },
        segments,
        tracker: state.tracker,
        stale_tmps,
        last_valid_end,
        last_crc: crc.unwrap_or(0),
        torn,
        legacy,
        superseded,
    })
}

/// How much of a segment's head tells its format (the old format's metadata record is 25
/// bytes).
const FORMAT_HEAD_LEN: usize = 4096;

/// Pass 3 of [`load`]: decodes the entries replay kept, reading each of their segments once
/// more (the newest one is still in memory). Every record is checked against the CRC pass 1
/// verified it with, so a file that changed in between cannot slip in other bytes.
fn decode_kept(
    fs: &dyn FileSystem,
    segments: &[SegmentInfo],
    kept: Vec<Slot>,
    mut cached: Option<(usize, Vec<u8>)>,
) -> Result<Vec<Entry>> {
    let mut out = Vec::with_capacity(kept.len());
    for slot in kept {
        let at = match slot {
            Slot::Decoded(e) => {
                out.push(e);
                continue;
            }
            Slot::At(at) => at,
        };
        let seg = &segments[at.seg];
        if cached.as_ref().map(|c| c.0) != Some(at.seg) {
            let buf = fs
                .read_file(&seg.path)
                .map_err(io_err("read segment", &seg.path))?;
            cached = Some((at.seg, buf));
        }
        let Some((_, buf)) = &cached else {
            continue; // set just above
        };
        let changed = |why: &str| corrupt(seg, at.off, format!("entry {}: {why}", at.index));
        let frame = record::read_frame(buf, at.off).map_err(|e| changed(&e.reason()))?;
        let data = frame.data.unwrap_or(&[]);
        if frame.ty != record::ENTRY || crc32c::append(at.crc_before, data) != frame.crc {
            return Err(changed("the record changed while the wal was replayed"));
        }
        let e = record::decode_entry(data).map_err(|r| changed(&r))?;
        if (e.index, e.term) != (at.index, at.term) {
            return Err(changed("the record changed while the wal was replayed"));
        }
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_reject_others() {
        assert_eq!(
            segment_name(1, 0x2a),
            "0000000000000001-000000000000002a.wal"
        );
        let cases: &[(&str, Option<(u64, u64)>)] = &[
            ("0000000000000001-000000000000002a.wal", Some((1, 42))),
            (
                "ffffffffffffffff-ffffffffffffffff.wal",
                Some((u64::MAX, u64::MAX)),
            ),
            ("0000000000000001-000000000000002a.wal.tmp", None),
            ("1-2a.wal", None),
            ("000000000000000g-000000000000002a.wal", None),
            ("0000000000000001_000000000000002a.wal", None),
            ("0000000000000001-000000000000002a.snap", None),
        ];
        for (name, want) in cases {
            assert_eq!(parse_segment_name(name), *want, "{name}");
        }
    }

    fn snap(index: u64) -> SnapshotMarker {
        SnapshotMarker { index, term: 1 }
    }

    #[test]
    fn index_rules() {
        // (snapshot marker before the entries, entry indices, expected outcome of the last)
        type Case = (Option<u64>, &'static [u64], Result<Admit, (u64, u64)>);
        let cases: &[Case] = &[
            (None, &[5], Ok(Admit::Keep)),
            (None, &[5, 6], Ok(Admit::Keep)),
            (None, &[5, 6, 6], Ok(Admit::Keep)),
            (None, &[5, 6, 7, 3], Ok(Admit::Keep)),
            (None, &[5, 7], Err((6, 7))),
            (Some(10), &[11], Ok(Admit::Keep)),
            (Some(10), &[10], Ok(Admit::Skip)),
            (Some(10), &[3], Ok(Admit::Skip)),
            // A rewrite at or below the snapshot drops the entries kept after it.
            (Some(10), &[11, 12, 13, 9, 12], Err((11, 12))),
            (Some(10), &[11, 12, 13, 9, 11], Ok(Admit::Keep)),
            (Some(10), &[12], Err((11, 12))),
            (Some(10), &[11, 12, 14], Err((13, 14))),
        ];
        for (snapshot, indices, want) in cases {
            let mut t = IndexTracker::default();
            if let Some(s) = snapshot {
                t.on_snapshot(snap(*s));
            }
            let (init, lastix) = indices.split_at(indices.len() - 1);
            for &i in init {
                t.admit(i).unwrap();
            }
            let got = t.admit(lastix[0]).map_err(|e| match e {
                Error::Gap { expected, found } => (expected, found),
                other => panic!("unexpected {other}"),
            });
            assert_eq!(got, *want, "snapshot {snapshot:?} indices {indices:?}");
        }
    }

    #[test]
    fn snapshot_beyond_last_entry_resets_the_expected_index() {
        let mut t = IndexTracker::default();
        t.admit(1).unwrap();
        t.admit(2).unwrap();
        t.on_snapshot(snap(100));
        assert_eq!(t.next_index(), 101);
        assert_eq!(t.admit(101).unwrap(), Admit::Keep);
        // An older marker (e.g. repeated in a segment header) changes nothing.
        t.on_snapshot(snap(50));
        assert_eq!(t.snapshot, Some(snap(100)));
        assert_eq!(t.next_index(), 102);
        // A newer snapshot below the last entry keeps the entries after it.
        t.on_snapshot(snap(101));
        assert_eq!(t.next_index(), 102);
    }
}
