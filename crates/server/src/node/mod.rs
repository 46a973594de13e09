//! Member start-up, serving and shutdown. [`Member::start`] runs the bootstrap steps in
//! order, each a function of its own module:
//!
//! 1. [`bootstrap::open_storage`]: the data dir, the keyspace and its check, with the WAL
//!    replayed on another thread meanwhile;
//! 2. [`discovery::discover`] (first boot with discovery flags only): the initial cluster
//!    from a v3 or v2 discovery service; then [`identity::recover_identity`]: member id,
//!    cluster id, first member list;
//! 3. [`bootstrap::bind_listeners`]: every socket and TLS config, before raft starts, so a
//!    bad flag or a busy port fails start-up with no thread left behind;
//! 4. [`bootstrap::start_raft`]: the peer transport and the raft node;
//! 5. [`bootstrap::start_apply`]: the watch hub, the server core and the apply thread;
//! 6. [`serve::serve_client`], [`serve::serve_peer`], [`serve::serve_metrics`];
//! 7. [`bootstrap::publish_attributes`]: our name and client URLs through raft.
//!
//! The node wires every layer together; nothing in the crate depends on it.

mod bootstrap;
mod discovery;
mod identity;
mod seams;
mod serve;
mod srv;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::etcdserver::EtcdServer;

/// How long graceful shutdown waits for open client connections before closing them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Stops a running member gracefully (what SIGTERM does).
#[derive(Clone)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<bool>>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.tx.send_replace(true);
    }
}

/// A running member.
pub struct Member {
    core: Arc<EtcdServer>,
    client_urls: Vec<String>,
    metrics_urls: Vec<String>,
    /// Set by `ShutdownHandle::shutdown` (or by our own removal from the cluster).
    request_tx: Arc<watch::Sender<bool>>,
    /// Set by `wait` once it decided to stop: every task and listener ends on it.
    stop_tx: Arc<watch::Sender<bool>>,
    fatal_rx: mpsc::UnboundedReceiver<Error>,
    tasks: Vec<JoinHandle<()>>,
    apply_thread: Option<std::thread::JoinHandle<()>>,
}

/// The member's stop signals, created first because every step hands them on.
pub(super) struct Signals {
    /// Set by `Member::wait` when the member stops: every task and listener ends on it.
    pub stop_tx: Arc<watch::Sender<bool>>,
    pub stop_rx: watch::Receiver<bool>,
    /// Asks the member to stop (shutdown handle, or our own removal from the cluster).
    pub request_tx: Arc<watch::Sender<bool>>,
    /// A failed raft node or apply loop reports here (fail-stop).
    pub fatal_tx: mpsc::UnboundedSender<Error>,
}

impl Member {
    /// Opens/creates the data dir, starts raft, the apply loop, the gRPC servers on every
    /// listen URL and the HTTP endpoints.
    pub async fn start(mut cfg: Config) -> Result<Member> {
        // Created first: the WAL reports into it from its open in step 1.
        let metrics = Arc::new(crate::metrics::Metrics::new(cfg.metrics_extensive));
        let bootstrap::Storage { store, log } = bootstrap::open_storage(&cfg, &metrics)?;
        // etcd's "have WAL": only a first boot runs discovery. Step 1 replayed a WAL exactly
        // when there was one.
        let has_wal = log.is_some();
        discovery::discover(&mut cfg, has_wal).await?;
        let id = identity::recover_identity(&cfg, &store).await?;
        // etcd checks only a member that already has data (`memberInitialized`).
        let restarting = !id.bootstrap && !id.join_existing && store.applied_index().0 > 0;
        // A forced new cluster drops the other members: their hashes say nothing about it,
        // and waiting for them (they are usually gone) would only delay the start.
        if cfg.corrupt.initial && restarting && !cfg.force_new_cluster {
            let checked = crate::etcdserver::corrupt::initial_check(
                &cfg,
                &store,
                id.member_id,
                id.cluster_id,
            )
            .await;
            if let Err(e) = checked {
                tracing::error!(error = %e, "checkInitialHashKV failed");
                return Err(e);
            }
        }
        let listeners = bootstrap::bind_listeners(&cfg).await?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let (fatal_tx, fatal_rx) = mpsc::unbounded_channel::<Error>();
        let signals = Signals {
            stop_tx: Arc::new(stop_tx),
            stop_rx,
            request_tx: Arc::new(watch::channel(false).0),
            fatal_tx,
        };
        let raft = bootstrap::start_raft(&cfg, &store, log, metrics, &id, &signals)?;
        let mut tasks = Vec::new();
        let applied = bootstrap::start_apply(&cfg, store, &id, raft, &signals, &mut tasks)?;
        let core = applied.core.clone();

        let client_urls = serve::serve_client(
            &cfg,
            listeners.client,
            &applied,
            &signals.stop_rx,
            &mut tasks,
        )
        .await?;
        serve::serve_peer(
            &cfg,
            listeners.peer,
            listeners.peer_tls,
            &applied,
            &signals.stop_rx,
            &mut tasks,
        );
        let metrics_urls =
            serve::serve_metrics(listeners.metrics, &core, &signals.stop_rx, &mut tasks)?;
        tasks.push(bootstrap::publish_attributes(
            &cfg,
            core.clone(),
            &client_urls,
            signals.stop_rx.clone(),
        ));

        Ok(Member {
            core,
            client_urls,
            metrics_urls,
            request_tx: signals.request_tx,
            stop_tx: signals.stop_tx,
            fatal_rx,
            tasks,
            apply_thread: Some(applied.apply_thread),
        })
    }

    /// The bound client URLs (port 0 resolved), e.g. `http://127.0.0.1:40123`.
    pub fn client_urls(&self) -> Vec<String> {
        self.client_urls.clone()
    }

    /// The bound `--listen-metrics-urls` addresses (port 0 resolved).
    pub fn metrics_urls(&self) -> Vec<String> {
        self.metrics_urls.clone()
    }

    pub fn member_id(&self) -> u64 {
        self.core.member_id()
    }

    pub fn cluster_id(&self) -> u64 {
        self.core.cluster_id()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            tx: self.request_tx.clone(),
        }
    }

    /// Resolves when the member must exit: Ok after `shutdown()`, Err on a fatal error. Either
    /// way everything is stopped and the data dir is closed when it returns.
    pub async fn wait(mut self) -> Result<()> {
        let mut requested = self.request_tx.subscribe();
        let outcome = tokio::select! {
            _ = crate::stop::until_stopped(&mut requested) => Ok(()),
            e = self.fatal_rx.recv() => Err(e.unwrap_or(Error::Stopped)),
        };
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "member stopping after a fatal error");
        } else {
            tracing::info!("member shutting down");
            self.core.transfer_leadership_away().await;
        }
        self.stop_tx.send_replace(true);
        for mut t in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout(DRAIN_TIMEOUT, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
        self.core.stop_raft().await;
        if let Some(th) = self.apply_thread.take() {
            let _ = tokio::task::spawn_blocking(move || th.join()).await;
        }
        if let Err(e) = self.core.sync_storage() {
            tracing::error!(error = %e, "final storage sync failed");
            return Err(Error::Fatal(format!("final storage sync: {e}")));
        }
        outcome
    }
}
