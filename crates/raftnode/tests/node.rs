//! End-to-end tests of the raft node: real WAL on a temp dir, real raft, an in-memory network.
#![allow(clippy::field_reassign_with_default)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrokv_raftnode::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message,
};
use ferrokv_raftnode::{
    prepare_log, read_wal_metadata, start, start_prepared, start_with_wal_options, Committed,
    Error, NodeConfig, RaftHandle, RaftStatus, Transport,
};
use ferrokv_wal::{FaultFs, WalOptions};
use tokio::sync::mpsc;

const TICK: Duration = Duration::from_millis(10);
const WAIT: Duration = Duration::from_secs(5);

fn config(id: u64, member_dir: &Path, voters: &[u64]) -> NodeConfig {
    NodeConfig {
        id,
        member_dir: member_dir.to_path_buf(),
        initial_voters: voters.to_vec(),
        initial_learners: Vec::new(),
        join_existing: false,
        wal_metadata: format!("member-{id}").into_bytes(),
        applied_index: 0,
        conf_state: None,
        tick_interval: TICK,
        election_ticks: 10,
        heartbeat_ticks: 1,
        snapshot_count: 0,
        snapshot_catchup_entries: 5000,
        max_snapshots: 5,
        max_wals: 5,
        force_new_cluster: false,
    }
}

/// A single node talks to nobody.
struct NoPeers;
impl Transport for NoPeers {
    fn send(&self, msgs: Vec<Message>) {
        assert!(msgs.is_empty() || msgs.iter().all(|m| m.to != 0));
    }
}

async fn wait_status(
    handle: &RaftHandle,
    what: &str,
    ok: impl Fn(&RaftStatus) -> bool,
) -> RaftStatus {
    let mut rx = handle.status();
    let res = tokio::time::timeout(WAIT, async {
        loop {
            {
                let st = rx.borrow_and_update();
                if ok(&st) {
                    return st.clone();
                }
            }
            if rx.changed().await.is_err() {
                panic!("status channel closed while waiting for {what}");
            }
        }
    })
    .await;
    res.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Receives committed batches until `done` says so; returns all entries in order.
async fn collect_until(
    rx: &mut mpsc::Receiver<Committed>,
    done: impl Fn(&[Entry]) -> bool,
) -> Vec<Entry> {
    collect_batches_until(rx, done).await.0
}

/// Like `collect_until`, also counting the batches.
async fn collect_batches_until(
    rx: &mut mpsc::Receiver<Committed>,
    done: impl Fn(&[Entry]) -> bool,
) -> (Vec<Entry>, usize) {
    let mut all = Vec::new();
    let mut batches = 0;
    tokio::time::timeout(WAIT, async {
        while !done(&all) {
            let batch = rx.recv().await.expect("committed channel closed");
            all.extend(batch.entries);
            batches += 1;
        }
    })
    .await
    .expect("timed out waiting for committed entries");
    (all, batches)
}

fn normal_data(entries: &[Entry]) -> Vec<Vec<u8>> {
    entries
        .iter()
        .filter(|e| e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty())
        .map(|e| e.data.to_vec())
        .collect()
}

fn assert_contiguous(entries: &[Entry]) {
    for w in entries.windows(2) {
        assert_eq!(
            w[1].index,
            w[0].index + 1,
            "committed entries must be in log order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_commits_concurrent_proposals_in_order_and_replays_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let member = ferrokv_datadir::DataDir::new(dir.path()).member();
    assert_eq!(read_wal_metadata(&member).unwrap(), None);
    // No WAL yet: nothing to replay ahead, and the first start creates it.
    assert!(prepare_log(&member, WalOptions::default())
        .unwrap()
        .is_none());

    let (handle, mut committed, thread) =
        start(config(1, &member, &[1]), Arc::new(NoPeers)).unwrap();
    wait_status(&handle, "self-election", |s| s.leader_id == 1).await;

    const TASKS: usize = 40;
    const PER_TASK: usize = 5;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let h = handle.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                h.propose(format!("t{t:02}-{i}").into_bytes())
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (entries, batches) =
        collect_batches_until(&mut committed, |e| normal_data(e).len() == TASKS * PER_TASK).await;
    // Group commit: one Ready (one fsync, at most two batches) covers many queued proposals.
    assert!(
        batches <= TASKS * PER_TASK / 4,
        "{batches} batches for {} proposals",
        TASKS * PER_TASK
    );
    assert_contiguous(&entries);
    let data = normal_data(&entries);
    let unique: HashSet<_> = data.iter().collect();
    assert_eq!(
        unique.len(),
        TASKS * PER_TASK,
        "every proposal exactly once"
    );
    for t in 0..TASKS {
        // Each task proposed in sequence, so its entries must commit in that sequence.
        let mine: Vec<_> = data
            .iter()
            .filter(|d| d.starts_with(format!("t{t:02}-").as_bytes()))
            .cloned()
            .collect();
        let want: Vec<_> = (0..PER_TASK)
            .map(|i| format!("t{t:02}-{i}").into_bytes())
            .collect();
        assert_eq!(mine, want, "task {t}");
    }
    let last = entries.last().unwrap().index;
    let status = wait_status(&handle, "commit index", |s| s.commit_index >= last).await;
    assert_eq!(status.voters, vec![1]);

    handle.shutdown().await;
    thread.join().unwrap().unwrap();
    assert!(matches!(
        handle.propose(b"late".to_vec()).await,
        Err(Error::Stopped)
    ));
    assert_eq!(
        read_wal_metadata(&member).unwrap(),
        Some(b"member-1".to_vec())
    );

    // Restart as if storage had applied (durably) up to k: exactly the entries after k come out
    // again, in order, with the same contents. The WAL is replayed ahead, on another thread,
    // as a member does while it checks its keyspace.
    let k = entries[entries.len() / 2].index;
    let mut cfg = config(1, &member, &[1]);
    cfg.applied_index = k;
    let dir_for_replay = member.clone();
    let prepared =
        std::thread::spawn(move || prepare_log(&dir_for_replay, WalOptions::default()).unwrap())
            .join()
            .unwrap();
    assert!(prepared.is_some());
    let (handle, mut committed, thread) =
        start_prepared(cfg, Arc::new(NoPeers), WalOptions::default(), prepared).unwrap();
    let replayed = collect_until(&mut committed, |e| {
        e.last().is_some_and(|l| l.index >= last)
    })
    .await;
    assert_eq!(replayed.first().unwrap().index, k + 1);
    assert_contiguous(&replayed);
    let before: Vec<_> = entries.iter().filter(|e| e.index > k).cloned().collect();
    assert_eq!(&replayed[..before.len()], &before[..]);

    // And the restarted node keeps working.
    wait_status(&handle, "re-election", |s| s.leader_id == 1).await;
    handle.propose(b"after-restart".to_vec()).await.unwrap();
    let more = collect_until(&mut committed, |e| {
        normal_data(e).contains(&b"after-restart".to_vec())
    })
    .await;
    assert!(more.last().unwrap().index > last);
    handle.shutdown().await;
    thread.join().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_refuses_storage_ahead_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let member = ferrokv_datadir::DataDir::new(dir.path()).member();
    let (handle, mut committed, thread) =
        start(config(1, &member, &[1]), Arc::new(NoPeers)).unwrap();
    wait_status(&handle, "self-election", |s| s.leader_id == 1).await;
    handle.propose(b"x".to_vec()).await.unwrap();
    let entries = collect_until(&mut committed, |e| !normal_data(e).is_empty()).await;
    let last = entries.last().unwrap().index;
    handle.shutdown().await;
    thread.join().unwrap().unwrap();

    // (applied index, start allowed)
    for (applied, ok) in [
        (last + 1, false),
        (last + 100, false),
        (last, true),
        (0, true),
    ] {
        let mut cfg = config(1, &member, &[1]);
        cfg.applied_index = applied;
        match start(cfg, Arc::new(NoPeers)) {
            Ok((h, _rx, t)) => {
                assert!(ok, "applied {applied} must be refused");
                h.shutdown().await;
                t.join().unwrap().unwrap();
            }
            Err(e) => {
                assert!(!ok, "applied {applied} refused: {e}");
                assert!(matches!(e, Error::Io(_)), "{e:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_index_is_at_least_the_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, mut committed, thread) =
        start(config(1, dir.path(), &[1]), Arc::new(NoPeers)).unwrap();
    wait_status(&handle, "self-election", |s| s.leader_id == 1).await;
    for i in 0..10 {
        handle.propose(vec![i + 1]).await.unwrap();
    }
    let entries = collect_until(&mut committed, |e| normal_data(e).len() == 10).await;
    let last = entries.last().unwrap().index;

    let mut reads = Vec::new();
    for _ in 0..20 {
        let h = handle.clone();
        reads.push(tokio::spawn(async move { h.read_index().await }));
    }
    for r in reads {
        let index = r.await.unwrap().unwrap();
        assert!(index >= last, "read index {index} < last commit {last}");
    }
    handle.shutdown().await;
    thread.join().unwrap().unwrap();
    assert!(matches!(handle.read_index().await, Err(Error::Stopped)));
}

fn wal_segments(member: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(ferrokv_datadir::wal_in(member))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    names.sort();
    names
}

fn snap_files(member: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(ferrokv_datadir::snap_in(member))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".snap"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_count_releases_wal_segments_and_restart_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let member = ferrokv_datadir::DataDir::new(dir.path()).member();
    let small_segments = || WalOptions {
        segment_bytes: 4096,
        ..WalOptions::default()
    };
    let mut cfg = config(1, &member, &[1]);
    cfg.snapshot_count = 50;
    let (handle, mut committed, thread) =
        start_with_wal_options(cfg.clone(), Arc::new(NoPeers), small_segments()).unwrap();
    wait_status(&handle, "self-election", |s| s.leader_id == 1).await;

    // The "apply loop": everything it receives is immediately durable.
    let h = handle.clone();
    let (applied_tx, mut applied_rx) = mpsc::unbounded_channel::<Entry>();
    let apply = tokio::spawn(async move {
        while let Some(batch) = committed.recv().await {
            if let Some(last) = batch.entries.last() {
                h.report_durable_applied(last.index);
            }
            for e in batch.entries {
                let _ = applied_tx.send(e);
            }
        }
    });

    // One proposal at a time, each applied before the next: every append is then a single
    // entry, so the 4 KiB segments fill and rotate (about a dozen of them, more than
    // `max_wals`). Proposed all at once, a loaded machine batches them into a few large
    // appends, a segment rotates only between appends, and fewer than `max_wals` segments
    // leave nothing to release.
    const N: usize = 400;
    let mut last = 0;
    for i in 0..N {
        handle.propose(vec![b'v'; 100 + i % 7]).await.unwrap();
        loop {
            let e = tokio::time::timeout(WAIT, applied_rx.recv())
                .await
                .unwrap()
                .unwrap();
            last = e.index;
            if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                break;
            }
        }
    }
    // Let the node see the last durable report and snapshot.
    tokio::time::sleep(TICK * 5).await;
    handle.shutdown().await;
    thread.join().unwrap().unwrap();
    apply.await.unwrap();

    let segments = wal_segments(&member);
    assert!(
        !segments.iter().any(|s| s.starts_with("0000000000000000-")),
        "the first segment must have been released: {segments:?}"
    );
    let snaps = snap_files(&member);
    assert!(!snaps.is_empty() && snaps.len() <= 5, "{snaps:?}");

    // The newest snapshot index: restarting below it must be refused (those entries are gone).
    let newest = snaps.last().unwrap();
    let snap_index = u64::from_str_radix(&newest[17..33], 16).unwrap();
    assert!(
        snap_index > 0 && snap_index <= last,
        "{snaps:?} last {last}"
    );
    let mut behind = cfg.clone();
    behind.applied_index = snap_index - 1;
    let refused = start_with_wal_options(behind, Arc::new(NoPeers), small_segments());
    assert!(matches!(refused, Err(Error::Io(_))), "{:?}", refused.err());

    let mut again = cfg.clone();
    again.applied_index = last;
    let (handle, mut committed, thread) =
        start_with_wal_options(again, Arc::new(NoPeers), small_segments()).unwrap();
    wait_status(&handle, "re-election", |s| s.leader_id == 1).await;
    handle.propose(b"after".to_vec()).await.unwrap();
    let entries = collect_until(&mut committed, |e| {
        normal_data(e).contains(&b"after".to_vec())
    })
    .await;
    assert!(
        entries.first().unwrap().index > last,
        "nothing at or below the applied index again"
    );
    assert_contiguous(&entries);
    handle.shutdown().await;
    thread.join().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_sync_failure_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let opts = WalOptions {
        fs: Arc::new(fs.clone()),
        ..WalOptions::default()
    };
    let (handle, _committed, thread) =
        start_with_wal_options(config(1, dir.path(), &[1]), Arc::new(NoPeers), opts).unwrap();
    wait_status(&handle, "self-election", |s| s.leader_id == 1).await;
    handle.propose(b"ok".to_vec()).await.unwrap();

    fs.fail_next_sync();
    // The proposal itself may be accepted before the fsync fails; afterwards nothing works.
    let _ = handle.propose(b"doomed".to_vec()).await;
    let result = tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
    assert!(matches!(result, Err(Error::Wal(_))), "{result:?}");
    assert!(matches!(
        handle.propose(b"x".to_vec()).await,
        Err(Error::Stopped)
    ));
    assert!(matches!(handle.read_index().await, Err(Error::Stopped)));
}

/// An in-memory network: each node's outbound messages go to a router task that steps them
/// into the destination, unless either end is cut off.
#[derive(Clone, Default)]
struct Network {
    handles: Arc<Mutex<HashMap<u64, RaftHandle>>>,
    cut: Arc<Mutex<HashSet<u64>>>,
}

struct ChannelTransport(mpsc::UnboundedSender<Message>);
impl Transport for ChannelTransport {
    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            let _ = self.0.send(m);
        }
    }
}

impl Network {
    fn transport(&self) -> Arc<dyn Transport> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let net = self.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let target = {
                    let cut = net.cut.lock().unwrap();
                    if cut.contains(&m.from) || cut.contains(&m.to) {
                        continue;
                    }
                    net.handles.lock().unwrap().get(&m.to).cloned()
                };
                if let Some(h) = target {
                    let _ = h.step(m).await;
                }
            }
        });
        Arc::new(ChannelTransport(tx))
    }

    fn add(&self, id: u64, h: RaftHandle) {
        self.handles.lock().unwrap().insert(id, h);
    }
}

/// Collects the data of every normal entry a node applies.
fn applier(mut rx: mpsc::Receiver<Committed>) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            sink.lock().unwrap().extend(normal_data(&batch.entries));
        }
    });
    out
}

async fn wait_applied(log: &Arc<Mutex<Vec<Vec<u8>>>>, data: &[u8]) {
    tokio::time::timeout(WAIT, async {
        while !log.lock().unwrap().iter().any(|d| d == data) {
            tokio::time::sleep(TICK).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{:?} never applied", String::from_utf8_lossy(data)));
}

struct Cluster {
    net: Network,
    handles: HashMap<u64, RaftHandle>,
    logs: HashMap<u64, Arc<Mutex<Vec<Vec<u8>>>>>,
    threads: Vec<std::thread::JoinHandle<ferrokv_raftnode::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn member_dir(&self, id: u64) -> PathBuf {
        self._dir.path().join(format!("m{id}"))
    }

    async fn start(ids: &[u64]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let net = Network::default();
        let mut c = Cluster {
            net: net.clone(),
            handles: HashMap::new(),
            logs: HashMap::new(),
            threads: Vec::new(),
            _dir: dir,
        };
        for &id in ids {
            let cfg = config(id, &c.member_dir(id), ids);
            c.launch(cfg);
        }
        c
    }

    fn launch(&mut self, cfg: NodeConfig) {
        let id = cfg.id;
        let (h, rx, t) = start(cfg, self.net.transport()).unwrap();
        self.net.add(id, h.clone());
        self.handles.insert(id, h);
        self.logs.insert(id, applier(rx));
        self.threads.push(t);
    }

    /// Waits until every node in `among` agrees on one leader (also in `among`).
    async fn leader(&self, among: &[u64], min_term: u64) -> (u64, u64) {
        tokio::time::timeout(WAIT, async {
            loop {
                let st: Vec<RaftStatus> = among
                    .iter()
                    .map(|id| self.handles[id].status().borrow().clone())
                    .collect();
                let l = st[0].leader_id;
                if l != 0
                    && among.contains(&l)
                    && st[0].term >= min_term
                    && st.iter().all(|s| s.leader_id == l && s.term == st[0].term)
                {
                    return (l, st[0].term);
                }
                tokio::time::sleep(TICK).await;
            }
        })
        .await
        .expect("no agreed leader")
    }

    async fn stop(self) {
        for h in self.handles.values() {
            h.shutdown().await;
        }
        for t in self.threads {
            t.join().unwrap().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_forward_and_survive_a_leader_partition() {
    let c = Cluster::start(&[1, 2, 3]).await;
    let (leader, term) = c.leader(&[1, 2, 3], 1).await;
    for i in 0..10 {
        c.handles[&leader]
            .propose(format!("a{i}").into_bytes())
            .await
            .unwrap();
    }
    for id in [1, 2, 3] {
        wait_applied(&c.logs[&id], b"a9").await;
        let log = c.logs[&id].lock().unwrap().clone();
        let want: Vec<_> = (0..10).map(|i| format!("a{i}").into_bytes()).collect();
        assert_eq!(log, want, "node {id} applied in the same order");
    }

    // A proposal on a follower is forwarded to the leader and committed everywhere.
    let follower = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    c.handles[&follower]
        .propose(b"via-follower".to_vec())
        .await
        .unwrap();
    for id in [1, 2, 3] {
        wait_applied(&c.logs[&id], b"via-follower").await;
    }
    // A read on a follower goes through the leader.
    let ri = c.handles[&follower].read_index().await.unwrap();
    assert!(ri >= c.handles[&leader].status().borrow().commit_index - 1);
    // Leadership transfer needs the leader.
    assert!(matches!(
        c.handles[&follower].transfer_leader(leader).await,
        Err(Error::NotLeader)
    ));

    // The leader hands leadership over on request.
    c.handles[&leader].transfer_leader(follower).await.unwrap();
    let (leader, term) = c.leader(&[1, 2, 3], term + 1).await;
    assert_eq!(leader, follower, "leadership moved to the requested member");

    // Cut the leader off: the other two elect a new leader in a later term and keep going.
    c.net.cut.lock().unwrap().insert(leader);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let (new_leader, new_term) = c.leader(&rest, term + 1).await;
    assert_ne!(new_leader, leader);
    assert!(new_term > term);
    c.handles[&new_leader]
        .propose(b"after-partition".to_vec())
        .await
        .unwrap();
    for id in &rest {
        wait_applied(&c.logs[id], b"after-partition").await;
    }
    // The old leader (check_quorum) steps down on its own side of the partition.
    wait_status(&c.handles[&leader], "old leader stepping down", |s| {
        s.leader_id != leader
    })
    .await;

    // Heal: the old leader catches up as a follower.
    c.net.cut.lock().unwrap().clear();
    wait_applied(&c.logs[&leader], b"after-partition").await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_member_learns_the_config_and_catches_up() {
    let mut c = Cluster::start(&[1, 2, 3]).await;
    let (leader, _) = c.leader(&[1, 2, 3], 1).await;
    c.handles[&leader]
        .propose(b"before-join".to_vec())
        .await
        .unwrap();
    wait_applied(&c.logs[&leader], b"before-join").await;

    let mut cfg = config(4, &c.member_dir(4), &[]);
    cfg.join_existing = true;
    c.launch(cfg);

    let mut cc = ConfChangeV2::default();
    let mut single = ConfChangeSingle::default();
    single.set_change_type(ConfChangeType::AddLearnerNode);
    single.node_id = 4;
    cc.mut_changes().push(single);
    c.handles[&leader].propose_conf_change(cc).await.unwrap();

    wait_applied(&c.logs[&4], b"before-join").await;
    let st = wait_status(&c.handles[&4], "learner status", |s| s.is_learner).await;
    assert_eq!(st.voters, vec![1, 2, 3]);
    assert_eq!(st.learners, vec![4]);
    c.handles[&leader]
        .propose(b"after-join".to_vec())
        .await
        .unwrap();
    wait_applied(&c.logs[&4], b"after-join").await;
    c.stop().await;
}
