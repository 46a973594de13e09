//! The async face of the raft node: every call becomes a command for the raft thread.

use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::{oneshot, watch};

use crate::eraftpb::{ConfChangeV2, Message};
use crate::read_index::ReadReply;
use crate::{Error, Progress, RaftStatus, Result};

pub(crate) enum Command {
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<()>>,
        /// When it was sent, for the stage histograms.
        at: Instant,
    },
    ProposeConfChange {
        cc: ConfChangeV2,
        reply: oneshot::Sender<Result<()>>,
    },
    ReadIndex {
        reply: ReadReply,
        at: Instant,
    },
    Step(Message, Instant),
    TransferLeader {
        to: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    Progress {
        reply: oneshot::Sender<Result<Progress>>,
    },
    DurableApplied(u64),
    Unreachable(u64),
    ReportSnapshot {
        to: u64,
        ok: bool,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// A cheap, cloneable handle on the running raft node.
#[derive(Clone)]
pub struct RaftHandle {
    tx: mpsc::Sender<Command>,
    status: watch::Receiver<RaftStatus>,
}

impl RaftHandle {
    pub(crate) fn new(tx: mpsc::Sender<Command>, status: watch::Receiver<RaftStatus>) -> Self {
        RaftHandle { tx, status }
    }

    /// A closed inbox means the raft thread is gone (shutdown or fail-stop).
    fn send(&self, cmd: Command) -> Result<()> {
        self.tx.send(cmd).map_err(|_| Error::Stopped)
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        // A dropped reply means the thread ended before answering.
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Queue a normal entry; Ok once raft accepted it into the leader's (or forwarded) log.
    /// The server learns the result when the entry comes out of `Committed` (request id inside
    /// `data`).
    pub async fn propose(&self, data: Vec<u8>) -> Result<()> {
        self.call(|reply| Command::Propose {
            data,
            reply,
            at: Instant::now(),
        })
        .await
    }

    /// Queue a configuration change; like `propose`, the outcome is seen in `Committed`.
    pub async fn propose_conf_change(&self, cc: ConfChangeV2) -> Result<()> {
        self.call(|reply| Command::ProposeConfChange { cc, reply })
            .await
    }

    /// Linearizable read barrier: resolves to the commit index the caller must wait to see
    /// applied. Concurrent callers are batched into one raft ReadIndex round.
    pub async fn read_index(&self) -> Result<u64> {
        self.call(|reply| Command::ReadIndex {
            reply,
            at: Instant::now(),
        })
        .await
    }

    /// Hand a message received from a peer to raft. Returns once queued: raft's verdict on a
    /// peer message (stale term, unknown peer) is no business of the transport, and waiting for
    /// it would serialise the transport behind the raft loop.
    pub async fn step(&self, msg: Message) -> Result<()> {
        self.send(Command::Step(msg, Instant::now()))
    }

    /// Starts a leadership transfer to `to`. Needs this node to be the leader (`NotLeader`
    /// otherwise). Ok means raft started the transfer; watch `status()` for the new leader.
    pub async fn transfer_leader(&self, to: u64) -> Result<()> {
        self.call(|reply| Command::TransferLeader { to, reply })
            .await
    }

    /// The leader's view of how far each member's log matches its own (`NotLeader` on a
    /// follower): what decides whether a learner has caught up enough to be promoted.
    pub async fn progress(&self) -> Result<Progress> {
        self.call(|reply| Command::Progress { reply }).await
    }

    /// The apply loop reports the highest index that storage has made DURABLE (fsync'd); only
    /// entries up to it may be compacted out of the WAL (snapshot-count policy).
    pub fn report_durable_applied(&self, index: u64) {
        let _ = self.send(Command::DurableApplied(index));
    }

    /// Tell raft that a peer could not be reached (from the transport), so it stops pipelining
    /// appends to it and probes instead.
    pub fn report_unreachable(&self, id: u64) {
        let _ = self.send(Command::Unreachable(id));
    }

    /// Tell raft how sending a snapshot to `to` ended: on success it waits for the follower's
    /// reply, on failure it probes the follower again (and may send a new snapshot).
    pub fn report_snapshot(&self, to: u64, ok: bool) {
        let _ = self.send(Command::ReportSnapshot { to, ok });
    }

    pub fn status(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    /// Stops the raft thread and waits for it to finish its current Ready.
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.send(Command::Shutdown { done }).is_ok() {
            let _ = rx.await;
        }
    }
}
