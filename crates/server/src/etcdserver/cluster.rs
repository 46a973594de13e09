//! Membership requests of the server core. The member list comes from storage meta
//! (replicated state); changes are raft conf changes carrying the member in their context, so
//! every member updates its list in the same apply step that changes raft's configuration.
//! Only the leader knows which members are connected and caught up, so a follower hands
//! add/remove/promote to the leader's peer port (which serves the Cluster service too).

use ferrokv_proto::etcdserverpb::{
    cluster_client::ClusterClient, Member, MemberAddRequest, MemberAddResponse, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use ferrokv_raftnode::eraftpb::ConfChangeType;

use super::reconfig::{check_reconfig, valid_peer_urls, Reconfig};
use super::EtcdServer;
use crate::apply::membership;
use crate::error::{Error, Result};
use crate::ids;

impl EtcdServer {
    pub(super) async fn members(&self) -> Result<Vec<Member>> {
        self.blocking(|s| membership::load(s).map_err(Error::from))
            .await
    }

    /// On a follower: a client for the leader's peer port. None on the leader.
    async fn leader_client(&self) -> Result<Option<ClusterClient<tonic::transport::Channel>>> {
        let status = self.raft_status();
        if status.leader_id == status.id {
            return Ok(None);
        }
        Ok(Some(ClusterClient::new(self.leader_channel().await?)))
    }

    /// On the leader: etcd's strict reconfiguration check for `change`.
    async fn check_reconfig(&self, change: Reconfig, members: &[Member]) -> Result<()> {
        let progress = self.raft.progress().await?;
        check_reconfig(change, members, &progress)
    }

    /// Proposes one conf change and waits until the member list shows its effect. The list
    /// changes in an apply batch, and every batch publishes the applied index afterwards, so
    /// the wait wakes on that notification.
    async fn change(
        &self,
        kind: ConfChangeType,
        member: Member,
        applied: impl Fn(&[Member]) -> bool,
    ) -> Result<Vec<Member>> {
        self.wait_leader().await?;
        let cc = membership::conf_change(kind, member);
        let mut batches = self.applied.clone();
        batches.borrow_and_update();
        self.raft.propose_conf_change(cc).await?;
        let wait = async {
            loop {
                let list = self.members().await?;
                if applied(&list) {
                    return Ok(list);
                }
                batches.changed().await.map_err(|_| Error::Stopped)?;
            }
        };
        tokio::time::timeout(self.request_timeout, wait)
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// The member list as of now, for the checks of a membership change: a change acknowledged
    /// to a client (an add answered by another member) may be committed but not yet applied
    /// here, and a check against a stale list would refuse what etcd, checking in log order,
    /// accepts ("member not found" for a member just added).
    async fn current_members(&self) -> Result<Vec<Member>> {
        self.read_barrier().await?;
        self.members().await
    }

    pub async fn member_add(&self, req: MemberAddRequest) -> Result<MemberAddResponse> {
        let urls = normalized(&req.peer_ur_ls)?;
        if let Some(mut leader) = self.leader_client().await? {
            return self.forwarded_cluster(leader.member_add(req)).await;
        }
        let existing = self.current_members().await?;
        if existing
            .iter()
            .any(|m| m.peer_ur_ls.iter().any(|u| urls.contains(u)))
        {
            return Err(Error::PeerUrlsExist);
        }
        let (change, kind) = if req.is_learner {
            (Reconfig::AddLearner, ConfChangeType::AddLearnerNode)
        } else {
            (Reconfig::AddVoter, ConfChangeType::AddNode)
        };
        self.check_reconfig(change, &existing).await?;
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
        let members = self
            .change(kind, member.clone(), |l| l.iter().any(|m| m.id == id))
            .await?;
        tracing::info!(
            member = format!("{id:x}"),
            learner = req.is_learner,
            "member added"
        );
        Ok(MemberAddResponse {
            header: Some(self.cluster_header()),
            member: Some(member),
            members,
        })
    }

    pub async fn member_remove(&self, id: u64) -> Result<MemberRemoveResponse> {
        if let Some(mut leader) = self.leader_client().await? {
            return self
                .forwarded_cluster(leader.member_remove(MemberRemoveRequest { id }))
                .await;
        }
        let existing = self.current_members().await?;
        self.check_reconfig(Reconfig::Remove(id), &existing).await?;
        let Some(member) = existing.into_iter().find(|m| m.id == id) else {
            return Err(Error::MemberNotFound);
        };
        let members = self
            .change(ConfChangeType::RemoveNode, member, |l| {
                !l.iter().any(|m| m.id == id)
            })
            .await?;
        tracing::info!(member = format!("{id:x}"), "member removed");
        Ok(MemberRemoveResponse {
            header: Some(self.cluster_header()),
            members,
        })
    }

    pub async fn member_update(&self, req: MemberUpdateRequest) -> Result<MemberUpdateResponse> {
        // etcd 3.6's order (`ValidateConfigurationChange` for ConfChangeUpdateNode): an
        // unknown id first, then URLs another member has. etcd does not check the URLs
        // themselves at all: a malformed one is committed and every other member panics in
        // `rafthttp.Transport.UpdatePeer` ("failed NewURLs"); ferrokv refuses it instead, with
        // MemberAdd's error, after the id check so an unknown id reads as on etcd.
        let existing = self.current_members().await?;
        if !existing.iter().any(|m| m.id == req.id) {
            return Err(Error::MemberNotFound);
        }
        let mut urls = normalized(&req.peer_ur_ls)?;
        urls.sort();
        if existing
            .iter()
            .any(|m| m.id != req.id && m.peer_ur_ls.iter().any(|u| urls.contains(u)))
        {
            return Err(Error::PeerUrlsExist);
        }
        let Some(mut member) = existing.into_iter().find(|m| m.id == req.id) else {
            return Err(Error::MemberNotFound);
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
            .await?;
        Ok(MemberUpdateResponse {
            header: Some(self.cluster_header()),
            members,
        })
    }

    pub async fn member_list(&self, linearizable: bool) -> Result<MemberListResponse> {
        if linearizable {
            self.read_barrier().await?;
        }
        let members = self.members().await?;
        Ok(MemberListResponse {
            header: Some(self.cluster_header()),
            members,
        })
    }

    pub async fn member_promote(&self, id: u64) -> Result<MemberPromoteResponse> {
        // Only the leader knows how far the learner's log is, so it decides.
        if let Some(mut leader) = self.leader_client().await? {
            return self
                .forwarded_cluster(leader.member_promote(MemberPromoteRequest { id }))
                .await;
        }
        let existing = self.current_members().await?;
        let Some(member) = existing.iter().find(|m| m.id == id).cloned() else {
            return Err(Error::MemberNotFound);
        };
        if !member.is_learner {
            return Err(Error::NotLearner);
        }
        self.check_reconfig(Reconfig::Promote(id), &existing)
            .await?;
        let members = self
            .change(ConfChangeType::AddNode, member, |l| {
                l.iter().any(|m| m.id == id && !m.is_learner)
            })
            .await?;
        tracing::info!(member = format!("{id:x}"), "learner promoted");
        Ok(MemberPromoteResponse {
            header: Some(self.cluster_header()),
            members,
        })
    }
}

/// Validated peer URLs in the member list's spelling.
fn normalized(peer_urls: &[String]) -> Result<Vec<String>> {
    if !valid_peer_urls(peer_urls) {
        return Err(Error::InvalidPeerUrls);
    }
    Ok(peer_urls
        .iter()
        .filter_map(|u| url::Url::parse(u).ok())
        .map(|u| membership::url_string(&u))
        .collect())
}
