//! The Cluster service. The member list comes from storage meta (replicated state); changes
//! are raft conf changes carrying the member in their context, so every member updates its
//! list in the same apply step that changes raft's configuration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrokv_proto::etcdserverpb::{
    cluster_client::ClusterClient, cluster_server::Cluster, Member, MemberAddRequest,
    MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest,
    MemberUpdateResponse,
};
use ferrokv_proto::ferrokvpb::ConfChangeContext;
use ferrokv_raftnode::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::apply::membership;
use crate::error::{to_status, Error, Result};
use crate::etcdserver::reconfig::{check_reconfig, valid_peer_urls, Reconfig};
use crate::etcdserver::Core;
use crate::ids;

#[derive(Clone)]
pub struct ClusterService {
    core: Arc<Core>,
}

impl ClusterService {
    pub fn new(core: Arc<Core>) -> Self {
        ClusterService { core }
    }

    async fn members(&self) -> Result<Vec<Member>> {
        self.core
            .blocking(|s| membership::load(s).map_err(Error::from))
            .await
    }

    /// On a follower: a client for the leader's peer port (which serves this service too),
    /// because only the leader knows which members are connected and caught up. None on the
    /// leader.
    async fn leader_client(&self) -> Result<Option<ClusterClient<tonic::transport::Channel>>> {
        let status = self.core.status();
        if status.leader_id == status.id {
            return Ok(None);
        }
        Ok(Some(ClusterClient::new(self.core.leader_channel().await?)))
    }

    /// On the leader: etcd's strict reconfiguration check for `change`.
    async fn check_reconfig(&self, change: Reconfig, members: &[Member]) -> Result<()> {
        let progress = self.core.raft.progress().await?;
        check_reconfig(change, members, &progress)
    }

    /// Proposes one conf change and waits until the member list shows its effect.
    async fn change(
        &self,
        kind: ConfChangeType,
        member: Member,
        applied: impl Fn(&[Member]) -> bool,
    ) -> Result<Vec<Member>> {
        self.core.wait_leader().await?;
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = member.id;
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        cc.context = ConfChangeContext {
            member: Some(member),
        }
        .encode_to_vec()
        .into();
        self.core.raft.propose_conf_change(cc).await?;
        let deadline = Instant::now() + self.core.request_timeout;
        loop {
            let list = self.members().await?;
            if applied(&list) {
                return Ok(list);
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.core.metrics.request("MemberAdd");
        let req = req.into_inner();
        if !valid_peer_urls(&req.peer_ur_ls) {
            return Err(to_status(&Error::InvalidPeerUrls));
        }
        let urls: Vec<String> = req
            .peer_ur_ls
            .iter()
            .filter_map(|u| url::Url::parse(u).ok())
            .map(|u| membership::url_string(&u))
            .collect();
        let existing = self.members().await.map_err(|e| to_status(&e))?;
        if existing
            .iter()
            .any(|m| m.peer_ur_ls.iter().any(|u| urls.contains(u)))
        {
            return Err(to_status(&Error::PeerUrlsExist));
        }
        if let Some(mut leader) = self.leader_client().await.map_err(|e| to_status(&e))? {
            let mut resp = leader.member_add(req).await?.into_inner();
            resp.header = Some(self.core.header_now());
            return Ok(Response::new(resp));
        }
        let change = if req.is_learner {
            Reconfig::AddLearner
        } else {
            Reconfig::AddVoter
        };
        self.check_reconfig(change, &existing)
            .await
            .map_err(|e| to_status(&e))?;
        // etcd derives an added member's id from its URLs and the time of the request.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let id = ids::member_id(&urls, &now.to_string());
        let member = Member {
            id,
            name: String::new(),
            peer_ur_ls: urls,
            client_ur_ls: Vec::new(),
            is_learner: req.is_learner,
        };
        let kind = if req.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let members = self
            .change(kind, member.clone(), |l| l.iter().any(|m| m.id == id))
            .await
            .map_err(|e| to_status(&e))?;
        tracing::info!(
            member = format!("{id:x}"),
            learner = req.is_learner,
            "member added"
        );
        Ok(Response::new(MemberAddResponse {
            header: Some(self.core.header_now()),
            member: Some(member),
            members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.core.metrics.request("MemberRemove");
        let id = req.into_inner().id;
        let existing = self.members().await.map_err(|e| to_status(&e))?;
        if !existing.iter().any(|m| m.id == id) {
            return Err(to_status(&Error::MemberNotFound));
        }
        if let Some(mut leader) = self.leader_client().await.map_err(|e| to_status(&e))? {
            let mut resp = leader
                .member_remove(MemberRemoveRequest { id })
                .await?
                .into_inner();
            resp.header = Some(self.core.header_now());
            return Ok(Response::new(resp));
        }
        self.check_reconfig(Reconfig::Remove(id), &existing)
            .await
            .map_err(|e| to_status(&e))?;
        let Some(member) = existing.into_iter().find(|m| m.id == id) else {
            return Err(to_status(&Error::MemberNotFound));
        };
        let members = self
            .change(ConfChangeType::RemoveNode, member, |l| {
                !l.iter().any(|m| m.id == id)
            })
            .await
            .map_err(|e| to_status(&e))?;
        tracing::info!(member = format!("{id:x}"), "member removed");
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.core.header_now()),
            members,
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.core.metrics.request("MemberUpdate");
        let req = req.into_inner();
        if !valid_peer_urls(&req.peer_ur_ls) {
            return Err(to_status(&Error::InvalidPeerUrls));
        }
        let mut urls: Vec<String> = req
            .peer_ur_ls
            .iter()
            .filter_map(|u| url::Url::parse(u).ok())
            .map(|u| membership::url_string(&u))
            .collect();
        urls.sort();
        let existing = self.members().await.map_err(|e| to_status(&e))?;
        if existing
            .iter()
            .any(|m| m.id != req.id && m.peer_ur_ls.iter().any(|u| urls.contains(u)))
        {
            return Err(to_status(&Error::PeerUrlsExist));
        }
        let Some(mut member) = existing.into_iter().find(|m| m.id == req.id) else {
            return Err(to_status(&Error::MemberNotFound));
        };
        member.peer_ur_ls = urls.clone();
        // Re-adding a member with its current role changes nothing in raft; the context
        // carries the new URLs to every member's list and transport.
        let kind = if member.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        let id = req.id;
        let members = self
            .change(kind, member, |l| {
                l.iter().any(|m| {
                    m.id == id && {
                        let mut u = m.peer_ur_ls.clone();
                        u.sort();
                        u == urls
                    }
                })
            })
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.core.header_now()),
            members,
        }))
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.core.metrics.request("MemberList");
        if req.into_inner().linearizable {
            self.core.read_barrier().await.map_err(|e| to_status(&e))?;
        }
        let members = self.members().await.map_err(|e| to_status(&e))?;
        Ok(Response::new(MemberListResponse {
            header: Some(self.core.header_now()),
            members,
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.core.metrics.request("MemberPromote");
        let id = req.into_inner().id;
        let existing = self.members().await.map_err(|e| to_status(&e))?;
        let Some(member) = existing.iter().find(|m| m.id == id).cloned() else {
            return Err(to_status(&Error::MemberNotFound));
        };
        if !member.is_learner {
            return Err(to_status(&Error::NotLearner));
        }
        // Only the leader knows how far the learner's log is, so it decides: a follower
        // hands the request to the leader's peer port, which serves this service too.
        if let Some(mut leader) = self.leader_client().await.map_err(|e| to_status(&e))? {
            let mut resp = leader
                .member_promote(MemberPromoteRequest { id })
                .await?
                .into_inner();
            resp.header = Some(self.core.header_now());
            return Ok(Response::new(resp));
        }
        self.check_reconfig(Reconfig::Promote(id), &existing)
            .await
            .map_err(|e| to_status(&e))?;
        let members = self
            .change(ConfChangeType::AddNode, member, |l| {
                l.iter().any(|m| m.id == id && !m.is_learner)
            })
            .await
            .map_err(|e| to_status(&e))?;
        tracing::info!(member = format!("{id:x}"), "learner promoted");
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.core.header_now()),
            members,
        }))
    }
}
