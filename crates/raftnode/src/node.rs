//! The raft thread: rebuilds the raft log from the WAL, then runs the Ready loop.
//!
//! One OS thread owns the `RawNode`; everything else talks to it through the command inbox.
//! The loop order follows raft-rs `examples/five_mem_node` and etcd's raft node; each ordering
//! rule is written next to the code that keeps it.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ferrokv_wal::{SnapshotMarker, Wal, WalOptions};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message, Snapshot, SnapshotMetadata,
};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole, Storage};
use tokio::sync::{oneshot, watch};

use crate::convert::{entry_from_wal, entry_to_wal, hard_state_from_wal, hard_state_to_wal};
use crate::force_new;
use crate::handle::{Command, RaftHandle};
use crate::read_index::{ReadAction, ReadBatcher};
use crate::snap_purge::Purger;
use crate::stages;
use crate::store::LogStore;
use crate::{
    logger, snap_dir, snapfile, wal_dir, Committed, Error, NodeConfig, RaftStatus, Result,
    Transport,
};

/// Batches of committed entries the apply loop may lag behind before the raft thread waits.
/// Waiting is the back-pressure: a node that cannot apply should not accept more.
const COMMITTED_QUEUE: usize = 256;
/// The in-memory log is compacted once at least this many entries can go (etcd compacts at
/// every "memory snapshot", taken every 100 applied entries).
const MEMORY_COMPACT_STEP: u64 = 100;
/// Readies handled back to back per loop turn: handling one may make the next one ready (a
/// single-node leader commits as soon as its own append is durable).
const MAX_READY_ROUNDS: usize = 8;

/// The raft log as rebuilt from disk, ready for `RawNode::new`.
struct OpenedLog {
    wal: Wal,
    mem: MemStorage,
    snapshot_index: u64,
    /// Conf-change entries in (snapshot, applied] that must be re-applied to raft's
    /// configuration because the storage did not tell us the configuration at applied.
    conf_replay: Vec<Entry>,
}

/// A WAL opened and replayed ahead of [`start`] (see [`crate::prepare_log`]).
#[derive(Debug)]
pub struct PreparedLog {
    wal: Wal,
    replay: ferrokv_wal::Replay,
}

/// The snap dir brought to etcd's file format, then the WAL opened and replayed; `None` when
/// there is no WAL yet (a first boot creates it in [`start`]).
pub(crate) fn prepare_log(
    member_dir: &Path,
    wal_options: WalOptions,
) -> Result<Option<PreparedLog>> {
    let wal_dir = wal_dir(member_dir);
    if !Wal::exists(&wal_dir) {
        return Ok(None);
    }
    // Files of ferrokv's previous formats become etcd's before anything else reads them.
    snapfile::upgrade_dir(&snap_dir(member_dir))?;
    let (wal, replay) = Wal::open(&wal_dir, wal_options)?;
    if replay.repaired_tail {
        tracing::warn!(dir = %wal_dir.display(), "wal: cut off a torn record at the tail");
    }
    Ok(Some(PreparedLog { wal, replay }))
}

pub(crate) fn start(
    cfg: NodeConfig,
    transport: Arc<dyn Transport>,
    wal_options: WalOptions,
    prepared: Option<PreparedLog>,
) -> Result<crate::StartedNode> {
    let opened = open_log(&cfg, wal_options, prepared)?;

    let raft_cfg = Config {
        id: cfg.id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        // Committed entries after the storage's consistent index come out again: the keyspace
        // is not fsync'd on every apply, the WAL is.
        applied: cfg.applied_index,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        // The loop steps every queued proposal before it builds a Ready; without batching
        // each proposal left as its own MsgAppend to every follower (8 peer messages per put
        // at 64 clients, each encoded, sent, stepped, fsync'd and acked). With it, the
        // entries of one Ready go to a follower in one message, as etcd's raft does when it
        // appends a batch of proposals.
        batch_append: true,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    raft_cfg.validate()?;

    let store = LogStore::new(opened.mem.clone());
    let mut raw = RawNode::new(&raft_cfg, store, &logger::raft_logger())?;

    for e in &opened.conf_replay {
        if let Some(cs) = apply_conf_change_entry(&mut raw, e) {
            opened.mem.wl().set_conf_state(cs);
        }
    }
    let conf = raw.raft.prs().conf().to_conf_state();
    if conf.voters == [cfg.id] && conf.voters_outgoing.is_empty() {
        // A one-voter cluster has nobody to wait for; skipping the election timeout makes a
        // single member usable at once.
        raw.campaign()?;
    }

    let (tx, inbox) = mpsc::channel();
    let (committed_tx, committed_rx) = tokio::sync::mpsc::channel(COMMITTED_QUEUE);
    let (status_tx, status_rx) = watch::channel(RaftStatus::default());

    let tick = cfg.tick_interval.max(Duration::from_millis(1));
    let election = tick.saturating_mul(u32::try_from(cfg.election_ticks).unwrap_or(u32::MAX));
    let heartbeat =
        tick.saturating_mul(u32::try_from(cfg.heartbeat_ticks.max(1)).unwrap_or(u32::MAX));
    let mut node = RaftLoop {
        id: cfg.id,
        raw,
        mem: opened.mem,
        wal: opened.wal,
        snap_dir: snap_dir(&cfg.member_dir),
        transport,
        inbox,
        committed_tx,
        status_tx,
        tick_interval: tick,
        next_tick: Instant::now() + tick,
        // Retry after two heartbeats (a leader that just won needs one round to commit in its
        // term); give up after two election timeouts (by then the leader is gone).
        reads: ReadBatcher::new(cfg.id, heartbeat * 2, election * 2),
        leader_id: 0,
        leader_changes: 0,
        durable_applied: cfg.applied_index,
        last_snapshot_index: opened.snapshot_index,
        snapshot_count: cfg.snapshot_count,
        snapshot_due: std::collections::VecDeque::new(),
        catchup_entries: cfg.snapshot_catchup_entries,
        purger: Purger::new(cfg.max_snapshots, cfg.max_wals),
        conf_history: Vec::new(),
        shutdown: None,
        stop: false,
        last_heard: std::collections::HashMap::new(),
        active_window: election,
        timing: ProposalTiming::default(),
    };
    let base_conf = node.raw.raft.prs().conf().to_conf_state();
    node.conf_history
        .push((cfg.applied_index.max(opened.snapshot_index), base_conf));
    node.publish_status();

    let thread = std::thread::Builder::new()
        .name(format!("raft-{}", cfg.id))
        .spawn(move || node.run())
        .map_err(|e| Error::Io(format!("spawn raft thread: {e}")))?;
    Ok((RaftHandle::new(tx, status_rx), committed_rx, thread))
}

/// Opens the WAL (or bootstraps a new one) and rebuilds the in-memory raft log from it.
fn open_log(
    cfg: &NodeConfig,
    wal_options: WalOptions,
    prepared: Option<PreparedLog>,
) -> Result<OpenedLog> {
    let prepared = match prepared {
        Some(p) => p,
        None => match prepare_log(&cfg.member_dir, wal_options.clone())? {
            Some(p) => p,
            None => return bootstrap(cfg, wal_options),
        },
    };
    let snap_dir = snap_dir(&cfg.member_dir);
    let PreparedLog { wal, replay } = prepared;

    let mem = MemStorage::new();
    let (snap_index, snap_term, snap_conf) = match replay.snapshot {
        Some(marker) => {
            let conf = match snapfile::read(&snap_dir, marker.term, marker.index) {
                Ok(meta) => meta.get_conf_state().clone(),
                // The storage's configuration is newer anyway; the file only matters when the
                // storage has none.
                Err(e) => match &cfg.conf_state {
                    Some(cs) => {
                        tracing::warn!(error = %e, "snap file unreadable, using the storage's conf state");
                        cs.clone()
                    }
                    None => return Err(e),
                },
            };
            (marker.index, marker.term, conf)
        }
        None => (0, 0, ConfState::default()),
    };
    if snap_index > 0 {
        let mut snap = Snapshot::default();
        snap.set_metadata(snapshot_metadata(snap_term, snap_index, snap_conf.clone()));
        mem.wl().apply_snapshot(snap)?;
    }

    let mut entries = Vec::with_capacity(replay.entries.len());
    let mut expected = snap_index + 1;
    for w in replay.entries {
        // MemStorage panics on a gap; the WAL promises none, but a refusal beats a panic.
        if w.index != expected {
            return Err(ferrokv_wal::Error::Gap {
                expected,
                found: w.index,
            }
            .into());
        }
        expected += 1;
        entries.push(entry_from_wal(w)?);
    }
    let last_index = expected - 1;

    let applied = cfg.applied_index;
    if applied > last_index {
        return Err(Error::Io(format!(
            "storage applied index {applied} is ahead of the raft log (last index {last_index}): \
             the WAL lost entries the keyspace already holds, refusing to start"
        )));
    }
    if applied < snap_index {
        return Err(Error::Io(format!(
            "storage applied index {applied} is behind the raft snapshot at {snap_index}: \
             the entries between were released, refusing to start"
        )));
    }
    let mut hs = hard_state_from_wal(&replay.hard_state);
    if hs.commit > last_index {
        return Err(Error::Io(format!(
            "wal hard state commit {} is past the last entry {last_index}",
            hs.commit
        )));
    }
    // The leader learns a new commit index in the light ready, after its fsync, and that index
    // reaches the WAL only with the next append; the storage may have applied up to it. An
    // entry that was applied was committed, so the storage's applied index is a safe floor.
    hs.commit = hs.commit.max(applied).max(snap_index);
    hs.term = hs.term.max(snap_term);
    let mut wal = wal;
    if cfg.force_new_cluster {
        force_new_cluster(cfg, &mut wal, &mut entries, &mut hs, &snap_conf, snap_index)?;
    }
    mem.wl().append(&entries)?;
    mem.wl().set_hardstate(hs);

    let (conf, conf_replay) = match &cfg.conf_state {
        Some(cs) => (cs.clone(), Vec::new()),
        None => {
            let replay: Vec<Entry> = entries
                .iter()
                .filter(|e| e.index <= applied && e.get_entry_type() != EntryType::EntryNormal)
                .cloned()
                .collect();
            (snap_conf, replay)
        }
    };
    mem.wl().set_conf_state(conf);

    Ok(OpenedLog {
        wal,
        mem,
        snapshot_index: snap_index,
        conf_replay,
    })
}

/// `--force-new-cluster` on an existing log (see `force_new.rs`): drops the entries after the
/// commit index and appends, committed, the conf changes that leave this member alone.
fn force_new_cluster(
    cfg: &NodeConfig,
    wal: &mut Wal,
    entries: &mut Vec<Entry>,
    hs: &mut raft::eraftpb::HardState,
    snap_conf: &ConfState,
    snap_index: u64,
) -> Result<()> {
    let dropped = entries.iter().filter(|e| e.index > hs.commit).count();
    entries.retain(|e| e.index <= hs.commit);
    // The keyspace's configuration is the one at its applied index; without one, the
    // snapshot's configuration and every entry after it.
    let ids = match &cfg.conf_state {
        Some(cs) => {
            let after: Vec<Entry> = entries
                .iter()
                .filter(|e| e.index > cfg.applied_index)
                .cloned()
                .collect();
            force_new::effective_ids(cs, &after)?
        }
        None => {
            let after: Vec<Entry> = entries
                .iter()
                .filter(|e| e.index > snap_index)
                .cloned()
                .collect();
            force_new::effective_ids(snap_conf, &after)?
        }
    };
    let old_commit = hs.commit;
    let forced = force_new::conf_change_entries(&ids, cfg.id, hs.term, hs.commit)?;
    if let Some(last) = forced.last() {
        hs.commit = last.index;
        let wal_entries: Vec<ferrokv_wal::Entry> = forced.iter().map(entry_to_wal).collect();
        // Written at commit + 1, these replace the dropped entries in the WAL too.
        wal.append(&wal_entries, Some(&hard_state_to_wal(hs)))?;
    }
    entries.extend(forced);
    tracing::info!(
        id = cfg.id,
        members = ?ids,
        wal_commit_index = old_commit,
        commit_index = hs.commit,
        discarded_uncommitted_entries = dropped,
        "forcing restart member as a new one-member cluster"
    );
    Ok(())
}

/// First start of this member.
///
/// The new WAL starts with a snapshot marker whose `.snap` file carries the initial
/// configuration (so raft can elect before anything is applied), followed, for a new cluster,
/// by one committed conf-change entry per initial member at term 1: every initial member writes
/// the same entries, and a member that joins later rebuilds the configuration from them
/// (raft-rs, unlike etcd, does not put the bootstrap configuration into the log itself).
/// Re-applying them on the initial members is a no-op; the apply loop sees them as ordinary
/// committed conf changes (empty context).
fn bootstrap(cfg: &NodeConfig, wal_options: WalOptions) -> Result<OpenedLog> {
    let conf = if cfg.join_existing {
        ConfState::default()
    } else {
        if cfg.initial_voters.is_empty() {
            return Err(Error::Io(
                "bootstrapping a new cluster needs at least one initial voter".into(),
            ));
        }
        let mut cs = ConfState::default();
        cs.voters = cfg.initial_voters.clone();
        cs.learners = cfg.initial_learners.clone();
        cs
    };
    // A restored keyspace (applied_index > 0) starts the log with a snapshot at that index, so
    // every member restored from the same file has the same log prefix.
    let (term, index) = if cfg.applied_index > 0 {
        (1, cfg.applied_index)
    } else {
        (0, 0)
    };
    let meta = snapshot_metadata(term, index, conf.clone());
    let boot_entries = if cfg.join_existing {
        Vec::new()
    } else {
        bootstrap_entries(index, &conf)?
    };

    // The .snap file is written before the WAL exists: a crash in between leaves no WAL, so
    // the next start bootstraps again, and a WAL marker never points at a missing file.
    snapfile::write(&snap_dir(&cfg.member_dir), &meta)?;
    let wal_dir = wal_dir(&cfg.member_dir);
    let mut wal = Wal::create(&wal_dir, &cfg.wal_metadata, wal_options)?;
    wal.save_snapshot(SnapshotMarker { index, term })?;
    let mut hs = raft::eraftpb::HardState::default();
    hs.term = term;
    hs.commit = index;
    if let Some(last) = boot_entries.last() {
        hs.term = last.term;
        hs.commit = last.index;
        let wal_entries: Vec<ferrokv_wal::Entry> = boot_entries.iter().map(entry_to_wal).collect();
        wal.append(&wal_entries, Some(&hard_state_to_wal(&hs)))?;
    }
    tracing::info!(
        id = cfg.id,
        voters = ?conf.voters,
        learners = ?conf.learners,
        join = cfg.join_existing,
        "created a new raft log"
    );

    let mem = MemStorage::new();
    if index > 0 {
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        mem.wl().apply_snapshot(snap)?;
    } else {
        mem.wl().set_conf_state(conf);
    }
    mem.wl().append(&boot_entries)?;
    mem.wl().set_hardstate(hs);
    Ok(OpenedLog {
        wal,
        mem,
        snapshot_index: index,
        conf_replay: Vec::new(),
    })
}

/// One single-change ConfChangeV2 entry per initial member (voters, then learners), at term 1
/// right after `after`. Single changes keep raft on the simple (non-joint) path.
fn bootstrap_entries(after: u64, conf: &ConfState) -> Result<Vec<Entry>> {
    let members = conf
        .voters
        .iter()
        .map(|&id| (id, ConfChangeType::AddNode))
        .chain(
            conf.learners
                .iter()
                .map(|&id| (id, ConfChangeType::AddLearnerNode)),
        );
    let mut entries = Vec::new();
    for (i, (id, change_type)) in members.enumerate() {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = id;
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChangeV2);
        e.term = 1;
        e.index = after + 1 + i as u64;
        e.data = cc
            .write_to_bytes()
            .map_err(|err| Error::Raft(raft::Error::CodecError(err)))?
            .into();
        entries.push(e);
    }
    Ok(entries)
}

fn snapshot_metadata(term: u64, index: u64, conf: ConfState) -> SnapshotMetadata {
    let mut meta = SnapshotMetadata::default();
    meta.term = term;
    meta.index = index;
    meta.set_conf_state(conf);
    meta
}

/// Applies a committed conf-change entry to raft's configuration. A change raft rejects (or an
/// undecodable one) leaves the configuration as it was; every member sees the same entry and
/// reaches the same verdict, so they stay in agreement.
fn apply_conf_change_entry(raw: &mut RawNode<LogStore>, e: &Entry) -> Option<ConfState> {
    let result = match e.get_entry_type() {
        EntryType::EntryNormal => return None,
        EntryType::EntryConfChange => ConfChange::parse_from_bytes(&e.data)
            .map_err(raft::Error::CodecError)
            .and_then(|cc| raw.apply_conf_change(&cc)),
        EntryType::EntryConfChangeV2 => ConfChangeV2::parse_from_bytes(&e.data)
            .map_err(raft::Error::CodecError)
            .and_then(|cc| raw.apply_conf_change(&cc)),
    };
    match result {
        Ok(cs) => {
            tracing::info!(index = e.index, voters = ?cs.voters, learners = ?cs.learners, "applied conf change");
            Some(cs)
        }
        Err(err) => {
            tracing::error!(index = e.index, error = %err, "conf change not applied, configuration unchanged");
            None
        }
    }
}

struct RaftLoop {
    id: u64,
    raw: RawNode<LogStore>,
    /// The same MemStorage raft reads (shared handle): where persisted entries are appended.
    mem: MemStorage,
    wal: Wal,
    snap_dir: PathBuf,
    transport: Arc<dyn Transport>,
    inbox: mpsc::Receiver<Command>,
    committed_tx: tokio::sync::mpsc::Sender<Committed>,
    status_tx: watch::Sender<RaftStatus>,
    tick_interval: Duration,
    next_tick: Instant,
    reads: ReadBatcher,
    /// The leader seen in the last soft state, to notice leader changes.
    leader_id: u64,
    /// Leaders seen since start (etcd's `etcd_server_leader_changes_seen_total`).
    leader_changes: u64,
    durable_applied: u64,
    last_snapshot_index: u64,
    snapshot_count: u64,
    /// Indexes at which a snapshot is due (etcd's trigger, evaluated at the end of each
    /// committed batch), taken once the keyspace is durable up to them.
    snapshot_due: std::collections::VecDeque<u64>,
    /// `--snapshot-catchup-entries`.
    catchup_entries: u64,
    /// `--max-snapshots` / `--max-wals`.
    purger: Purger,
    /// (index, configuration after that index), so a snapshot at a durable index that lags the
    /// handed-out index records the configuration of its own index.
    conf_history: Vec<(u64, ConfState)>,
    shutdown: Option<oneshot::Sender<()>>,
    stop: bool,
    /// When a message from each peer last arrived; a peer heard from within `active_window`
    /// counts as active for etcd's reconfiguration checks (raft's own `recent_active` is
    /// reset every election timeout, so it reads false for healthy peers part of the time).
    last_heard: std::collections::HashMap<u64, Instant>,
    active_window: Duration,
    timing: ProposalTiming,
}

/// The leader's own proposals on their way through the stages, for the stage histograms
/// (`stages.rs`): when raft accepted each one, then when its WAL append ended.
#[derive(Default)]
struct ProposalTiming {
    /// (log index, accepted at), in index order.
    accepted: std::collections::VecDeque<(u64, Instant)>,
    /// (log index, accepted at, its append ended at), in index order.
    appended: std::collections::VecDeque<(u64, Instant, Instant)>,
}

/// Beyond this many tracked proposals the timing is dropped: it only feeds histograms, and
/// entries a new leader truncated would otherwise never leave the queues.
const TIMING_LIMIT: usize = 100_000;

impl ProposalTiming {
    fn accepted(&mut self, index: u64, at: Instant) {
        if self.accepted.len() >= TIMING_LIMIT {
            self.accepted.clear();
        }
        self.accepted.push_back((index, at));
    }

    /// The WAL append of entries up to `last` started at `start` and ended at `end`.
    fn appended(&mut self, last: u64, start: Instant, end: Instant) {
        if self.appended.len() >= TIMING_LIMIT {
            self.appended.clear();
        }
        while let Some(&(index, at)) = self.accepted.front() {
            if index > last {
                break;
            }
            self.accepted.pop_front();
            stages::PROPOSE_TO_APPEND.observe(start.saturating_duration_since(at));
            self.appended.push_back((index, at, end));
        }
    }

    /// Entries up to `last` are being handed to apply now.
    fn committed(&mut self, last: u64, now: Instant) {
        while let Some(&(index, at, appended)) = self.appended.front() {
            if index > last {
                break;
            }
            self.appended.pop_front();
            stages::APPEND_TO_COMMIT.observe(now.saturating_duration_since(appended));
            stages::PROPOSE_TO_COMMIT.observe(now.saturating_duration_since(at));
        }
    }

    fn clear(&mut self) {
        self.accepted.clear();
        self.appended.clear();
    }
}

impl RaftLoop {
    fn run(mut self) -> Result<()> {
        let result = self.run_loop();
        match &result {
            Ok(()) => tracing::info!(id = self.id, "raft node stopped"),
            Err(e) => tracing::error!(
                id = self.id,
                error = %e,
                "raft node failed, stopping (fail-stop): the member must exit"
            ),
        }
        self.reads.fail_everything(|| Error::Stopped);
        let done = self.shutdown.take();
        // Close the WAL (and every channel) before acknowledging a shutdown, so the caller can
        // reopen the same directory right away.
        drop(self);
        if let Some(done) = done {
            let _ = done.send(());
        }
        result
    }

    fn run_loop(&mut self) -> Result<()> {
        loop {
            let wait = self.next_tick.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(wait) {
                Ok(cmd) => {
                    self.handle(cmd);
                    // Group commit: take everything already queued before building a Ready,
                    // so concurrent proposals share one WAL append and one fsync, and
                    // concurrent reads share one ReadIndex round.
                    while !self.stop {
                        match self.inbox.try_recv() {
                            Ok(cmd) => self.handle(cmd),
                            Err(_) => break,
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Every handle is gone: nobody can use this node any more.
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if self.stop {
                return Ok(());
            }

            let now = Instant::now();
            if now >= self.next_tick {
                self.raw.tick();
                self.next_tick = now + self.tick_interval;
                self.maybe_campaign_alone();
                for ReadAction::Send(ctx) in self.reads.on_tick(now) {
                    self.raw.read_index(ctx);
                }
            }
            let has_leader = self.raw.raft.leader_id != 0;
            if let Some(ReadAction::Send(ctx)) = self.reads.start_round(has_leader, now) {
                self.raw.read_index(ctx);
            }

            for _ in 0..MAX_READY_ROUNDS {
                if self.stop || !self.raw.has_ready() {
                    break;
                }
                self.on_ready()?;
            }
            if self.stop {
                return Ok(());
            }
            self.maybe_snapshot()?;
            self.compact_log()?;
            self.purger
                .tick(now, &self.snap_dir, &mut self.wal, self.last_snapshot_index)?;
            self.publish_status();
        }
    }

    /// The only voter has nobody to wait for: it campaigns as soon as raft lets it (once the
    /// bootstrap configuration is applied) instead of sitting out a randomized election
    /// timeout, as etcd fast-forwards the election ticks of a fresh single member.
    fn maybe_campaign_alone(&mut self) {
        let should = {
            let raft = &self.raw.raft;
            let ids = raft.prs().conf().voters().ids();
            let mut voters = ids.iter();
            let alone = voters.next() == Some(self.id) && voters.next().is_none();
            alone
                && raft.state != StateRole::Leader
                && raft.leader_id == 0
                && !raft.has_pending_conf()
        };
        if !should {
            return;
        }
        if let Err(e) = self.raw.campaign() {
            tracing::debug!(error = %e, "campaign refused");
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Propose { data, reply, at } => {
                stages::PROPOSE_QUEUE.observe(at.elapsed());
                let r = self.raw.propose(Vec::new(), data).map_err(proposal_error);
                if r.is_ok() && self.raw.raft.state == StateRole::Leader {
                    let index = self.raw.raft.raft_log.last_index();
                    self.timing.accepted(index, Instant::now());
                }
                let _ = reply.send(r);
            }
            Command::ProposeConfChange { cc, reply } => {
                let r = self
                    .raw
                    .propose_conf_change(Vec::new(), cc)
                    .map_err(proposal_error);
                let _ = reply.send(r);
            }
            Command::ReadIndex { reply, at } => self.reads.queue(reply, at),
            Command::Step(msg, at) => {
                stages::STEP_QUEUE.observe(at.elapsed());
                let (from, ty) = (msg.from, msg.get_msg_type());
                self.last_heard.insert(from, Instant::now());
                if let Err(e) = self.raw.step(msg) {
                    // Stale or unknown peers are normal during membership changes.
                    tracing::debug!(from, msg_type = ?ty, error = %e, "raft ignored a peer message");
                }
            }
            Command::TransferLeader { to, reply } => {
                let r = if self.raw.raft.state == StateRole::Leader {
                    self.raw.transfer_leader(to);
                    Ok(())
                } else {
                    Err(Error::NotLeader)
                };
                let _ = reply.send(r);
            }
            Command::Progress { reply } => {
                let r = if self.raw.raft.state == StateRole::Leader {
                    let mut matched: Vec<(u64, u64)> = self
                        .raw
                        .raft
                        .prs()
                        .iter()
                        .map(|(id, pr)| (*id, pr.matched))
                        .collect();
                    matched.sort_unstable();
                    let now = Instant::now();
                    let mut active: Vec<u64> = matched
                        .iter()
                        .map(|(id, _)| *id)
                        .filter(|id| {
                            *id == self.id
                                || self
                                    .last_heard
                                    .get(id)
                                    .is_some_and(|t| now.duration_since(*t) <= self.active_window)
                        })
                        .collect();
                    active.sort_unstable();
                    Ok(crate::Progress {
                        last_index: self.raw.raft.raft_log.last_index(),
                        matched,
                        active,
                    })
                } else {
                    Err(Error::NotLeader)
                };
                let _ = reply.send(r);
            }
            Command::DurableApplied(index) => {
                self.durable_applied = self.durable_applied.max(index);
            }
            Command::Unreachable(id) => self.raw.report_unreachable(id),
            Command::ReportSnapshot { to, ok } => {
                let status = if ok {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Command::Shutdown { done } => {
                self.shutdown = Some(done);
                self.stop = true;
            }
        }
    }

    fn on_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let r = self.handle_ready();
        stages::READY.observe(started.elapsed());
        r
    }

    fn handle_ready(&mut self) -> Result<()> {
        let mut rd = self.raw.ready();

        if let Some(ss) = rd.ss() {
            if ss.leader_id != self.leader_id {
                tracing::info!(id = self.id, leader = ss.leader_id, role = ?ss.raft_state, "raft leader changed");
                // A read round sent to the old leader will never be answered.
                self.reads.fail_in_flight();
                // Entries of an old term may be truncated; their timings would never end.
                self.timing.clear();
                self.leader_id = ss.leader_id;
                // etcd counts a change to a known leader, not the loss of one.
                if ss.leader_id != 0 {
                    self.leader_changes += 1;
                }
            }
        }

        // 1. The leader's messages go out before its own append is durable: it may replicate
        //    in parallel with its fsync (raft thesis 10.2.1), since it counts itself only once
        //    the entries are persisted.
        self.send(rd.take_messages());

        // 2. A snapshot from the leader is saved before the entries that follow it, so the log
        //    on disk never holds entries without their base.
        if !rd.snapshot().is_empty() {
            self.persist_snapshot(rd.snapshot().clone())?;
        }

        for rs in rd.take_read_states() {
            self.reads.resolve(&rs.request_ctx, rs.index);
        }

        // 3. Committed entries go to the apply loop (conf changes applied to raft first)
        //    BEFORE this Ready's own append, so applying them overlaps its fsync instead of
        //    waiting for it (etcd's raft loop hands `apply` its committed entries before the
        //    WAL save, too). This is safe, and stricter than etcd: raft-rs hands out only
        //    entries that are both committed by a quorum and already persisted in this
        //    member's own WAL (`RaftLog::next_entries_since` stops at min(committed,
        //    persisted)), which an earlier Ready's fsync made durable. The entries and hard
        //    state being appended below are the new ones; no client hears about them until a
        //    later Ready hands them out after this fsync and the quorum's. Nothing is lost on
        //    a crash that an acknowledged client was told about.
        self.hand_out(rd.take_committed_entries());

        // 4. Entries and hard state in ONE append with ONE fsync: the commit point. Raft may
        //    only see them as stable (MemStorage) once the WAL holds them. A hard state whose
        //    only change is the commit index, with no entries, is written without an fsync
        //    (etcd's `MustSync`): the commit index promises nothing to anyone, a restart
        //    floors it at the keyspace's applied index, and the next append's fsync makes it
        //    durable. Without this rule every put cost two fsyncs on every member: one for its
        //    entry, one for the next Ready's commit index.
        let hs = rd.hs().cloned();
        let commit_only = rd.entries().is_empty()
            && hs.as_ref().is_some_and(|h| {
                let store = self.mem.rl();
                let prev = store.hard_state();
                h.term == prev.term && h.vote == prev.vote
            });
        if commit_only {
            if let Some(hs) = hs {
                self.wal.save_commit(&hard_state_to_wal(&hs))?;
                self.mem.wl().set_hardstate(hs);
            }
        } else if !rd.entries().is_empty() || hs.is_some() {
            let start = Instant::now();
            let entries: Vec<ferrokv_wal::Entry> = rd.entries().iter().map(entry_to_wal).collect();
            let wal_hs = hs.as_ref().map(hard_state_to_wal);
            self.wal.append(&entries, wal_hs.as_ref())?;
            self.mem.wl().append(rd.entries())?;
            if let Some(hs) = hs {
                self.mem.wl().set_hardstate(hs);
            }
            let end = Instant::now();
            if self.raw.raft.state == StateRole::Leader {
                stages::WAL_APPEND_LEADER.observe(end - start);
                if let Some(last) = rd.entries().last() {
                    self.timing.appended(last.index, start, end);
                }
            } else if !rd.entries().is_empty() {
                stages::WAL_APPEND_FOLLOWER.observe(end - start);
            }
        }

        // 5. Votes and append responses promise persisted state: only after the fsync.
        self.send(rd.take_persisted_messages());

        // 6. Advance, then the light ready: its commit index, messages and newly committed
        //    entries (a leader commits here once its own append counted).
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            let hs = {
                let mut store = self.mem.wl();
                store.mut_hard_state().set_commit(commit);
                store.mut_hard_state().clone()
            };
            // Into the WAL too (no fsync, as etcd), so its commitIndex is not one append behind.
            self.wal.save_commit(&hard_state_to_wal(&hs))?;
        }
        self.send(light.take_messages());
        self.hand_out(light.take_committed_entries());
        self.raw.advance_apply();
        Ok(())
    }

    fn send(&self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            self.transport.send(msgs);
        }
    }

    fn hand_out(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() || self.stop {
            return;
        }
        let mut changed = None;
        for e in &entries {
            if let Some(cs) = apply_conf_change_entry(&mut self.raw, e) {
                // MemStorage's conf state is what a snapshot of the log would carry.
                self.mem.wl().set_conf_state(cs.clone());
                self.conf_history.push((e.index, cs.clone()));
                changed = Some(cs);
            }
        }
        // etcd's trigger (`shouldSnapshotToDisk`): after applying a batch, a snapshot when
        // the applied index is more than `snapshot_count` past the last one.
        if let Some(last) = entries.last().map(|e| e.index) {
            let base = self
                .snapshot_due
                .back()
                .copied()
                .unwrap_or(self.last_snapshot_index);
            if self.snapshot_count > 0 && last > base && last - base > self.snapshot_count {
                self.snapshot_due.push_back(last);
            }
        }
        let sending = Instant::now();
        if let Some(last) = entries.last() {
            self.timing.committed(last.index, sending);
        }
        let batch = Committed {
            entries,
            conf_state: changed,
        };
        // Blocking is deliberate back-pressure; this thread is not a tokio worker.
        if self.committed_tx.blocking_send(batch).is_err() {
            tracing::info!(id = self.id, "apply loop is gone, stopping the raft node");
            self.stop = true;
        }
        stages::HAND_OUT.observe(sending.elapsed());
    }

    /// Saves a snapshot received from the leader.
    fn persist_snapshot(&mut self, snap: Snapshot) -> Result<()> {
        let meta = snap.get_metadata().clone();
        // .snap file first, then the WAL marker: a marker must never point at a missing file.
        snapfile::write(&self.snap_dir, &meta)?;
        self.wal.save_snapshot(SnapshotMarker {
            index: meta.index,
            term: meta.term,
        })?;
        self.mem.wl().apply_snapshot(snap)?;
        self.last_snapshot_index = meta.index;
        // etcd counts from an installed snapshot as from its own.
        self.snapshot_due.clear();
        self.conf_history = vec![(meta.index, meta.get_conf_state().clone())];
        // The keyspace it stands for was installed by the server before raft saw the message.
        tracing::info!(
            index = meta.index,
            term = meta.term,
            "installed a raft snapshot from the leader"
        );
        Ok(())
    }

    /// Takes the snapshots that are due (see `hand_out`) once the keyspace is durable up to
    /// their index: on restart the keyspace replays the WAL from its own applied index, so
    /// the entries after it must still be there (etcd commits its backend first for the
    /// same reason).
    fn maybe_snapshot(&mut self) -> Result<()> {
        while let Some(&index) = self.snapshot_due.front() {
            if index > self.durable_applied || index > self.raw.raft.raft_log.applied {
                return Ok(());
            }
            self.snapshot_due.pop_front();
            if index <= self.last_snapshot_index {
                continue;
            }
            self.take_snapshot(index)?;
        }
        Ok(())
    }

    fn take_snapshot(&mut self, index: u64) -> Result<()> {
        let term = self.mem.term(index)?;
        let meta = snapshot_metadata(term, index, self.conf_at(index));

        // Each step keeps every crash point recoverable: (1) the .snap file, so the WAL marker
        // never points at a missing file; (2) the WAL marker, fsync'd; (3) only then purge
        // old files (WAL segments only when wholly before the marker).
        snapfile::write(&self.snap_dir, &meta)?;
        self.wal.save_snapshot(SnapshotMarker { index, term })?;
        self.last_snapshot_index = index;
        self.purger.purge(&self.snap_dir, &mut self.wal, index)?;
        self.compact_log()?;
        let keep_from = self
            .conf_history
            .iter()
            .rposition(|(i, _)| *i <= index)
            .unwrap_or(0);
        self.conf_history.drain(..keep_from);
        tracing::info!(
            id = self.id,
            index,
            term,
            snapshot_count = self.snapshot_count,
            "saved raft snapshot"
        );
        Ok(())
    }

    /// etcd's `compactRaftLog`: the in-memory log keeps `catchup_entries` below the applied
    /// index, and never the entries a due snapshot still needs the term of.
    fn compact_log(&mut self) -> Result<()> {
        let applied = self.durable_applied.min(self.raw.raft.raft_log.applied);
        let mut target = applied.saturating_sub(self.catchup_entries).max(1);
        if let Some(&due) = self.snapshot_due.front() {
            target = target.min(due);
        }
        if target >= self.mem.first_index()? + MEMORY_COMPACT_STEP {
            self.mem.wl().compact(target)?;
        }
        Ok(())
    }

    fn conf_at(&self, index: u64) -> ConfState {
        self.conf_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, cs)| cs.clone())
            .unwrap_or_else(|| self.raw.raft.prs().conf().to_conf_state())
    }

    fn publish_status(&self) {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let mut voters: Vec<u64> = conf
            .voters
            .iter()
            .chain(conf.voters_outgoing.iter())
            .copied()
            .collect();
        voters.sort_unstable();
        voters.dedup();
        let mut learners = conf.learners.clone();
        learners.sort_unstable();
        let status = RaftStatus {
            id: self.id,
            leader_id: self.raw.raft.leader_id,
            term: self.raw.raft.term,
            commit_index: self.raw.raft.raft_log.committed,
            is_learner: learners.contains(&self.id),
            leader_changes: self.leader_changes,
            voters,
            learners,
        };
        self.status_tx.send_if_modified(|cur| {
            if *cur == status {
                false
            } else {
                *cur = status;
                true
            }
        });
    }
}

fn proposal_error(e: raft::Error) -> Error {
    match e {
        raft::Error::ProposalDropped => Error::ProposalDropped,
        other => Error::Raft(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_entries_add_each_member_once_at_term_one() {
        let mut conf = ConfState::default();
        conf.voters = vec![1, 2];
        conf.learners = vec![9];
        // (snapshot index the log starts after, expected first index)
        for (after, first) in [(0u64, 1u64), (41, 42)] {
            let entries = bootstrap_entries(after, &conf).unwrap();
            let got: Vec<(u64, u64, ConfChangeType, u64)> = entries
                .iter()
                .map(|e| {
                    assert_eq!(e.get_entry_type(), EntryType::EntryConfChangeV2);
                    let cc = ConfChangeV2::parse_from_bytes(&e.data).unwrap();
                    assert_eq!(
                        cc.changes.len(),
                        1,
                        "single changes stay off the joint path"
                    );
                    let c = &cc.changes[0];
                    (e.index, e.term, c.get_change_type(), c.node_id)
                })
                .collect();
            assert_eq!(
                got,
                vec![
                    (first, 1, ConfChangeType::AddNode, 1),
                    (first + 1, 1, ConfChangeType::AddNode, 2),
                    (first + 2, 1, ConfChangeType::AddLearnerNode, 9),
                ]
            );
        }
    }

    #[test]
    fn proposal_errors_map_to_node_errors() {
        assert!(matches!(
            proposal_error(raft::Error::ProposalDropped),
            Error::ProposalDropped
        ));
        assert!(matches!(
            proposal_error(raft::Error::StepLocalMsg),
            Error::Raft(raft::Error::StepLocalMsg)
        ));
    }
}
