//! The bootstrap steps of [`super::Member::start`] that are not about serving: storage, the
//! listeners, raft, the apply loop and the tasks that follow raft, publishing attributes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::net::tls::Acceptor;
use ferrokv_proto::ferrokvpb::{Attributes, ClusterMemberAttrSetRequest};
use ferrokv_raftnode::{Committed, NodeConfig, PreparedLog, RaftHandle};
use ferrokv_storage::Store;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::identity::{encode_wal_metadata, Identity};
use super::seams::ApplyLoopInstaller;
use super::Signals;
use crate::apply::{membership, Applier, DbSize};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::etcdserver::{EtcdServer, ServerParts};
use crate::header::HeaderSource;
use crate::metrics::{Metrics, WalMetrics};
use crate::net::listen::bind;
use crate::peer::{peer_client_tls, PeerTransport, SnapshotSource};
use crate::stop::until_stopped;
use crate::watch::WatchHub;

/// The opened keyspace and, on a restart, the WAL replayed beside its check.
pub(super) struct Storage {
    pub store: Arc<Store>,
    pub log: Option<PreparedLog>,
}

/// Step 1: the data dir (`<data-dir>/member/{wal,snap/db}`), the keyspace in it and its
/// check, and the WAL opened and replayed on another thread meanwhile.
pub(super) fn open_storage(cfg: &Config, metrics: &Arc<Metrics>) -> Result<Storage> {
    let layout = cfg.layout();
    std::fs::create_dir_all(layout.snap())?;
    layout.remove_stale_scratch();
    // The keyspace is opened (and so locked) before the WAL is touched: a second process
    // started on this data dir fails at redb's lock and never reaches the WAL's tail repair.
    let store = Store::open_pages_checked(
        &layout.db(),
        cfg.corrupt.verify_on_open,
        cfg.keyspace_cache_bytes,
    )?;
    // The keyspace check and the WAL replay are a restart's two longest steps (about 1.7 s
    // and 0.7 s with 1M keys), both mostly CPU, and they read different files.
    let member_dir = cfg.member_dir();
    let options = wal_options(cfg, metrics);
    let replay = std::thread::Builder::new()
        .name("ferrokv-wal-open".into())
        .spawn(move || ferrokv_raftnode::prepare_log(&member_dir, options))?;
    let checked = if cfg.corrupt.verify_on_open {
        store.check_keyspace()
    } else {
        Ok(())
    };
    // Joined before either result is looked at, so a failed start leaves no thread that
    // still holds the WAL open.
    let log = replay
        .join()
        .map_err(|_| Error::Fatal("the WAL replay thread panicked".into()))?;
    checked?;
    Ok(Storage {
        store: Arc::new(store),
        log: log?,
    })
}

fn wal_options(cfg: &Config, metrics: &Arc<Metrics>) -> ferrokv_wal::WalOptions {
    ferrokv_wal::WalOptions {
        observer: Arc::new(WalMetrics(metrics.clone())),
        segment_bytes: cfg.wal_segment_bytes,
        ..ferrokv_wal::WalOptions::default()
    }
}

/// Every bound socket, with the TLS config of the https ones.
pub(super) struct Listeners {
    pub peer: Vec<(url::Url, TcpListener)>,
    pub peer_tls: Option<Acceptor>,
    pub client: Vec<(url::Url, TcpListener, Option<Acceptor>)>,
    pub metrics: Vec<(url::Url, TcpListener)>,
}

/// Step 3: binds every listen URL and builds the TLS configs. Everything that can fail on
/// bad flags or a busy port happens here, before raft starts, so a failed start leaves no
/// threads behind and the data dir closed.
pub(super) async fn bind_listeners(cfg: &Config) -> Result<Listeners> {
    let mut peer = Vec::new();
    for u in &cfg.listen_peer_urls {
        peer.push((u.clone(), bind(u).await?));
    }
    let mut client = Vec::new();
    for u in &cfg.listen_client_urls {
        // The rustls config is built now, so bad certificates fail the start-up early.
        let tls = match u.scheme() {
            "https" => Some(crate::net::tls::acceptor(&cfg.client_tls)?),
            "http" => None,
            _ => {
                return Err(Error::Config(format!(
                    "listen URL {u}: scheme must be http or https"
                )))
            }
        };
        client.push((u.clone(), bind(u).await?, tls));
    }
    let mut metrics = Vec::new();
    for u in &cfg.listen_metrics_urls {
        metrics.push((u.clone(), bind(u).await?));
    }
    let peer_tls = cfg
        .listen_peer_urls
        .iter()
        .any(|u| u.scheme() == "https")
        .then(|| crate::net::tls::acceptor(&cfg.peer_tls))
        .transpose()?;
    Ok(Listeners {
        peer,
        peer_tls,
        client,
        metrics,
    })
}

/// A started raft node and what the next steps take from it.
pub(super) struct Raft {
    pub handle: RaftHandle,
    /// Created here because the WAL and the transport report into it from the start.
    pub metrics: Arc<Metrics>,
    pub committed: mpsc::Receiver<Committed>,
    pub transport: Arc<PeerTransport>,
}

/// Step 4: the peer transport (to the replicated member list, or the bootstrap flags) and
/// the raft node on its thread, on the WAL step 1 replayed; the thread's end while we are
/// not stopping is fatal.
pub(super) fn start_raft(
    cfg: &Config,
    store: &Arc<Store>,
    log: Option<PreparedLog>,
    metrics: Arc<Metrics>,
    id: &Identity,
    signals: &Signals,
) -> Result<Raft> {
    let (applied_index, _) = store.applied_index();
    let election_ticks = (cfg.election_timeout.as_millis()
        / cfg.heartbeat_interval.as_millis().max(1))
    .max(2) as usize;
    let node_cfg = NodeConfig {
        id: id.member_id,
        member_dir: cfg.member_dir(),
        initial_voters: if id.bootstrap {
            id.initial.iter().map(|m| m.id).collect()
        } else {
            Vec::new()
        },
        initial_learners: Vec::new(),
        join_existing: id.join_existing,
        wal_metadata: encode_wal_metadata(id.member_id, id.cluster_id),
        applied_index,
        conf_state: membership::load_conf_state(store)?,
        tick_interval: cfg.heartbeat_interval,
        election_ticks,
        heartbeat_ticks: 1,
        snapshot_count: cfg.snapshot_count,
        snapshot_catchup_entries: cfg.snapshot_catchup_entries,
        max_snapshots: cfg.max_snapshots,
        max_wals: cfg.max_wals,
        // etcd: only a member restarting from its WAL; a first boot ignores the flag.
        force_new_cluster: cfg.force_new_cluster && !id.bootstrap && !id.join_existing,
    };
    // Peers: the replicated member list once there is one, else the bootstrap flags.
    let known = membership::load(store)?;
    let known = if known.is_empty() {
        id.initial.clone()
    } else {
        known
    };
    let peers: HashMap<u64, Vec<String>> = known
        .iter()
        .filter(|m| m.id != id.member_id)
        .map(|m| (m.id, m.peer_ur_ls.clone()))
        .collect();
    let transport = Arc::new(PeerTransport::start(
        peers,
        signals.stop_rx.clone(),
        peer_client_tls(&cfg.peer_tls)?,
        metrics.clone(),
    ));
    let (handle, committed, raft_thread) = ferrokv_raftnode::start_prepared(
        node_cfg,
        transport.clone(),
        wal_options(cfg, &metrics),
        log,
    )?;
    transport.set_raft(handle.clone());
    let fatal_tx = signals.fatal_tx.clone();
    std::thread::Builder::new()
        .name("ferrokv-raft-watch".into())
        .spawn(move || {
            let err = match raft_thread.join() {
                Ok(Ok(())) => Error::Raft(ferrokv_raftnode::Error::Stopped),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "raft node failed; stopping the member");
                    Error::Fatal(format!("raft node: {e}"))
                }
                Err(_) => Error::Fatal("raft node thread panicked".into()),
            };
            let _ = fatal_tx.send(err);
        })?;
    Ok(Raft {
        handle,
        metrics,
        committed,
        transport,
    })
}

/// What the serving steps take from the started state machine.
pub(super) struct Started {
    pub core: Arc<EtcdServer>,
    pub hub: Arc<WatchHub>,
    pub header: HeaderSource,
    pub has_leader: watch::Receiver<bool>,
    /// False while open `hasleader=true` streams are to be canceled (no leader for a while).
    pub streams_keep_leader: watch::Receiver<bool>,
    pub raft: RaftHandle,
    /// Keyspace snapshots received by the peer service go to the apply loop through this.
    pub installer: Arc<ApplyLoopInstaller>,
    pub apply_thread: std::thread::JoinHandle<()>,
}

/// Step 5: the server core, the watch hub, the apply loop on its own thread, and the tasks
/// that follow raft (leadership → headers, compactor, lease expiry).
pub(super) fn start_apply(
    cfg: &Config,
    store: Arc<Store>,
    id: &Identity,
    raft: Raft,
    signals: &Signals,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<Started> {
    let (applied_index, _) = store.applied_index();
    let (install_tx, install_rx) = mpsc::channel(4);
    let header = HeaderSource::new(id.cluster_id, id.member_id);
    let (applied_tx, applied_rx) = watch::channel(applied_index);
    let metrics = raft.metrics.clone();
    metrics.set_applied(applied_index);
    let db_size = DbSize::default();
    db_size.measure(&store);
    let core = Arc::new(EtcdServer::new(ServerParts {
        cfg: cfg.clone(),
        store: store.clone(),
        raft: raft.handle.clone(),
        header: header.clone(),
        applied: applied_rx,
        metrics: metrics.clone(),
        db_size: db_size.clone(),
    })?);
    // The leader's transport streams the keyspace copies the server writes.
    let source: Arc<dyn SnapshotSource> = core.clone();
    raft.transport
        .set_snapshot_source(Arc::downgrade(&source), cfg.layout());
    let stop_rx = &signals.stop_rx;
    let has_leader = follow_leadership(&raft.handle, &header, stop_rx, tasks);
    let streams_keep_leader =
        monitor_leader_loss(has_leader.clone(), cfg.election_timeout, stop_rx, tasks);
    // The store is the hub's event source (watch::source implements it for Store).
    let hub = WatchHub::new(store.clone(), cfg.watch_progress_notify_interval);
    let (waiters, lessor, alarms) = core.shared_with_apply();
    let applier = Applier {
        store,
        raft: Arc::new(raft.handle.clone()),
        events: hub.clone(),
        waiters,
        lessor,
        alarms,
        applied_tx,
        metrics,
        db_size,
        stop: stop_rx.clone(),
        peers: raft.transport.clone(),
        member_id: id.member_id,
        request_stop: signals.request_tx.clone(),
        auth: core.auth_store(),
        entry_format: core.entry_format(),
    };
    let apply_fatal = signals.fatal_tx.clone();
    let committed = raft.committed;
    let apply_thread = std::thread::Builder::new()
        .name("ferrokv-apply".into())
        .spawn(move || {
            if let Err(e) = applier.run(committed, install_rx) {
                tracing::error!(error = %e, "apply loop failed; stopping the member");
                let _ = apply_fatal.send(e);
            }
        })?;
    if let Some(mode) = cfg.auto_compaction.clone() {
        tasks.push(tokio::spawn(crate::etcdserver::compactor::run(
            core.clone(),
            mode,
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::etcdserver::lease_expiry::run_expiry(
        core.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::etcdserver::corrupt::run(
        core.clone(),
        stop_rx.clone(),
    )));
    Ok(Started {
        core,
        hub,
        header,
        has_leader,
        streams_keep_leader,
        raft: raft.handle,
        installer: Arc::new(ApplyLoopInstaller(install_tx)),
        apply_thread,
    })
}

/// Leadership → the header's raft term, and "has a leader" for watch streams.
fn follow_leadership(
    raft: &RaftHandle,
    header: &HeaderSource,
    stop: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> watch::Receiver<bool> {
    let (has_leader_tx, has_leader_rx) = watch::channel(false);
    let mut status = raft.status();
    let header = header.clone();
    let mut stop = stop.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            {
                let s = status.borrow_and_update();
                header.set_raft_term(s.term);
                has_leader_tx.send_if_modified(|v| {
                    let now = s.leader_id != 0;
                    std::mem::replace(v, now) != now
                });
            }
            tokio::select! {
                _ = until_stopped(&mut stop) => return,
                r = status.changed() => if r.is_err() { return },
            }
        }
    }));
    has_leader_rx
}

/// Election timeouts without a leader after which open `hasleader=true` streams are canceled
/// (etcd's `maxNoLeaderCnt`).
const MAX_NO_LEADER_CHECKS: u32 = 3;

/// etcd's `monitorLeader`: checks once per election timeout whether the member has a leader
/// and turns the returned flag false after [`MAX_NO_LEADER_CHECKS`] checks in a row without
/// one (so 3–4 election timeouts after the leader was lost), true again with a leader.
fn monitor_leader_loss(
    has_leader: watch::Receiver<bool>,
    election_timeout: std::time::Duration,
    stop: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> watch::Receiver<bool> {
    let (keep_tx, keep_rx) = watch::channel(true);
    let mut stop = stop.clone();
    tasks.push(tokio::spawn(async move {
        let mut missed = 0u32;
        loop {
            tokio::select! {
                _ = until_stopped(&mut stop) => return,
                _ = tokio::time::sleep(election_timeout) => {}
            }
            missed = if *has_leader.borrow() { 0 } else { missed.saturating_add(1) };
            let keep = missed < MAX_NO_LEADER_CHECKS;
            if !keep && missed == MAX_NO_LEADER_CHECKS {
                tracing::warn!(
                    missed,
                    "no leader for {MAX_NO_LEADER_CHECKS} election timeouts; canceling watch streams that require one"
                );
            }
            keep_tx.send_if_modified(|v| std::mem::replace(v, keep) != keep);
        }
    }));
    keep_rx
}

/// Step 7: publishes our name and client URLs through raft, so every member's MemberList
/// has them; retried until it succeeds or the member stops.
pub(super) fn publish_attributes(
    cfg: &Config,
    core: Arc<EtcdServer>,
    client_urls: &[String],
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    // Port 0 in an advertised URL means "what we actually bound" (tests, ephemeral ports).
    let advertised: Vec<String> = if cfg
        .advertise_client_urls
        .iter()
        .any(|u| u.port() == Some(0))
    {
        client_urls.to_vec()
    } else {
        cfg.advertise_client_urls
            .iter()
            .map(membership::url_string)
            .collect()
    };
    let attr = ClusterMemberAttrSetRequest {
        member_id: core.member_id(),
        member_attributes: Some(Attributes {
            name: cfg.name.clone(),
            client_urls: advertised,
        }),
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = until_stopped(&mut stop) => return,
                r = core.publish_attributes(attr.clone()) => match r {
                    Ok(()) => {
                        tracing::info!("published member attributes");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "publishing member attributes; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
            }
        }
        core.drive_entry_format_switch(&mut stop).await;
    })
}
