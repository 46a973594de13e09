//! What every gRPC service of a member shares: the store, the raft handle, the waiters, and
//! the two request paths every write and linearizable read take (propose-and-wait, read
//! barrier).

use std::sync::Arc;
use std::time::Duration;

use ferrokv_proto::ferrokvpb::{internal_request::Request, InternalRequest};
use ferrokv_raftnode::{RaftHandle, RaftStatus};
use ferrokv_storage::Store;
use prost::Message as _;
use tokio::sync::watch;

use crate::apply::{Alarms, Applied, Lessor, Waiters};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::header::HeaderSource;
use crate::ids::IdGenerator;
use crate::metrics::Metrics;

/// Pause before retrying a proposal or read round that raft dropped.
const RETRY_DELAY: Duration = Duration::from_millis(20);

pub struct Core {
    pub cfg: Config,
    pub store: Arc<Store>,
    pub raft: RaftHandle,
    pub header: HeaderSource,
    pub waiters: Arc<Waiters>,
    pub applied: watch::Receiver<u64>,
    pub ids: IdGenerator,
    pub lessor: Arc<Lessor>,
    pub alarms: Arc<Alarms>,
    pub metrics: Arc<Metrics>,
    /// How long a client request may wait for raft (etcd: 5 s + 2 × election timeout).
    pub request_timeout: Duration,
    /// TLS for member-to-member connections (https peer URLs).
    pub peer_client_tls: Option<tonic::transport::ClientTlsConfig>,
    /// A connection to the leader's peer port, for requests only the leader can answer.
    pub leader_conn: parking_lot::Mutex<Option<(u64, tonic::transport::Channel)>>,
}

impl Core {
    pub fn status(&self) -> RaftStatus {
        self.raft.status().borrow().clone()
    }

    /// A learner serves only serializable reads, Status and MemberList to clients (etcd's
    /// rule); its own proposals (member attributes) are not client requests.
    pub fn reject_learner(&self) -> Result<()> {
        if self.status().is_learner {
            return Err(Error::LearnerRpc);
        }
        Ok(())
    }

    pub fn member_id(&self) -> u64 {
        self.header.member_id()
    }

    /// A header at the store's current revision.
    pub fn header_now(&self) -> ferrokv_proto::etcdserverpb::ResponseHeader {
        self.header.header(self.store.current_revision())
    }

    /// A channel to the current leader's peer port (cached per leader).
    pub async fn leader_channel(&self) -> Result<tonic::transport::Channel> {
        let leader = self.status().leader_id;
        if leader == 0 {
            return Err(Error::NoLeader);
        }
        if let Some((id, ch)) = self.leader_conn.lock().as_ref() {
            if *id == leader {
                return Ok(ch.clone());
            }
        }
        let members = crate::apply::membership::load(&self.store)?;
        let urls = members
            .iter()
            .find(|m| m.id == leader)
            .map(|m| m.peer_ur_ls.clone())
            .unwrap_or_default();
        for url in &urls {
            if let Ok(ch) = crate::peer::connect_peer(url, self.peer_client_tls.as_ref()).await {
                *self.leader_conn.lock() = Some((leader, ch.clone()));
                return Ok(ch);
            }
        }
        Err(Error::LeaderChanged)
    }

    /// Waits (bounded by the request timeout) until some member is leader: right after start,
    /// or during an election, proposals would otherwise be dropped.
    pub async fn wait_leader(&self) -> Result<()> {
        let mut rx = self.raft.status();
        let wait = async { rx.wait_for(|s| s.leader_id != 0).await.map(|_| ()) };
        let outcome = tokio::time::timeout(self.request_timeout, wait).await;
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::NoLeader),
        }
    }

    /// Replicates `request` through raft and waits for its applied result.
    pub async fn propose(&self, request: Request) -> Result<Applied> {
        let id = self.ids.next();
        let data = InternalRequest {
            id,
            request: Some(request),
        }
        .encode_to_vec();
        if data.len() > self.cfg.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        self.wait_leader().await?;
        let rx = self.waiters.register(id);
        // Removes the waiter however this future ends (error, timeout, client gone).
        let _guard = WaiterGuard {
            waiters: &self.waiters,
            id,
        };
        let outcome = tokio::time::timeout(self.request_timeout, async {
            // A dropped proposal was not appended anywhere, so proposing again cannot apply
            // it twice; drops happen around elections and leader transfers.
            loop {
                match self.raft.propose(data.clone()).await {
                    Ok(()) => break,
                    Err(ferrokv_raftnode::Error::ProposalDropped) => {
                        tokio::time::sleep(RETRY_DELAY).await;
                        self.wait_leader().await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            rx.await.map_err(|_| Error::Stopped)
        })
        .await;
        match outcome {
            Ok(Ok(result)) => result.map_err(Error::Storage),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Publishes this member's name and client URLs through raft (into every member list).
    pub async fn publish_attributes(
        &self,
        attr: ferrokv_proto::ferrokvpb::MemberAttributes,
    ) -> Result<()> {
        self.propose(Request::MemberAttributes(attr))
            .await
            .map(|_| ())
    }

    /// The backend quota in bytes (`--quota-backend-bytes`, 0 = etcd's 2 GiB default).
    pub fn quota_bytes(&self) -> u64 {
        match self.cfg.quota_backend_bytes {
            0 => super::DEFAULT_QUOTA_BYTES as u64,
            q => q,
        }
    }

    /// Refuses writes that grow the store once NOSPACE is raised; raises it (through raft, so
    /// every member refuses) when the backend file is over quota.
    pub async fn check_quota(&self) -> Result<()> {
        if self.alarms.no_space() {
            return Err(Error::NoSpace);
        }
        let size = std::fs::metadata(self.cfg.layout().db())
            .map(|m| m.len())
            .unwrap_or(0);
        if size <= self.quota_bytes() {
            return Ok(());
        }
        tracing::warn!(
            size,
            quota = self.quota_bytes(),
            "backend over quota; raising NOSPACE"
        );
        let alarm = ferrokv_proto::etcdserverpb::AlarmRequest {
            action: ferrokv_proto::etcdserverpb::alarm_request::AlarmAction::Activate as i32,
            member_id: self.member_id(),
            alarm: ferrokv_proto::etcdserverpb::AlarmType::Nospace as i32,
        };
        if let Err(e) = self.propose(Request::Alarm(alarm)).await {
            tracing::warn!(error = %e, "raising NOSPACE failed");
        }
        Err(Error::NoSpace)
    }

    /// Linearizable read barrier: after it returns, local reads see every write acknowledged
    /// before the call started.
    pub async fn read_barrier(&self) -> Result<()> {
        self.wait_leader().await?;
        let mut applied = self.applied.clone();
        let outcome = tokio::time::timeout(self.request_timeout, async {
            let index = loop {
                match self.raft.read_index().await {
                    Ok(i) => break i,
                    // No round could complete (election, leader change): a new round is safe.
                    Err(ferrokv_raftnode::Error::ProposalDropped) => {
                        tokio::time::sleep(RETRY_DELAY).await;
                        self.wait_leader().await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            applied
                .wait_for(|a| *a >= index)
                .await
                .map_err(|_| Error::Stopped)?;
            Ok::<(), Error>(())
        })
        .await;
        match outcome {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Runs synchronous storage work off the async workers.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::Fatal(format!("storage task: {e}")))?
    }
}

struct WaiterGuard<'a> {
    waiters: &'a Waiters,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.waiters.cancel(self.id);
    }
}
