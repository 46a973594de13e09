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

use crate::core::Core;
use crate::error::{to_status, Error, Result};
use crate::{ids, membership};

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

/// A membership change, as etcd's strict reconfiguration check sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconfig {
    AddVoter,
    AddLearner,
    Remove(u64),
    Promote(u64),
}

/// etcd allows one learner at a time.
const MAX_LEARNERS: usize = 1;

/// etcd's `--strict-reconfig-check` (on by default), decided on the leader from its view of
/// the members: a change is refused when it would leave the cluster without a working
/// quorum, or when the learner is not ready to vote. "Active" stands in for etcd's "started
/// and connected": the leader heard from the member within the last election timeout.
pub fn check_reconfig(
    change: Reconfig,
    members: &[Member],
    progress: &ferrokv_raftnode::Progress,
) -> Result<()> {
    let voters: Vec<u64> = members
        .iter()
        .filter(|m| !m.is_learner)
        .map(|m| m.id)
        .collect();
    let active = |id: &u64| progress.active.contains(id);
    let quorum = |n: usize| n / 2 + 1;
    match change {
        Reconfig::AddLearner | Reconfig::AddVoter => {
            // A new voter raises the quorum before it has any data, so every current voter
            // must be reachable; etcd asks the same before it adds a learner.
            if !voters.iter().all(active) {
                return Err(Error::Unhealthy);
            }
            if change == Reconfig::AddLearner
                && members.iter().filter(|m| m.is_learner).count() >= MAX_LEARNERS
            {
                return Err(Error::TooManyLearners);
            }
        }
        Reconfig::Remove(id) => {
            if voters.contains(&id) {
                let rest: Vec<u64> = voters.iter().copied().filter(|v| *v != id).collect();
                if rest.iter().filter(|v| active(v)).count() < quorum(rest.len()) {
                    return Err(Error::Unhealthy);
                }
            }
        }
        Reconfig::Promote(id) => {
            if !progress.is_caught_up(id) {
                // A voter that cannot keep up would only weaken the quorum.
                return Err(Error::LearnerNotReady);
            }
            if voters.iter().filter(|v| active(v)).count() + 1 < quorum(voters.len() + 1) {
                return Err(Error::NotEnoughStartedMembers);
            }
        }
    }
    Ok(())
}

/// Peer URLs must be absolute http(s) URLs with a host and port and no path.
pub fn valid_peer_urls(urls: &[String]) -> bool {
    !urls.is_empty()
        && urls.iter().all(|u| match url::Url::parse(u) {
            Ok(p) => {
                matches!(p.scheme(), "http" | "https")
                    && p.host_str().is_some()
                    && p.port().is_some()
                    && (p.path() == "/" || p.path().is_empty())
            }
            Err(_) => false,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, learner: bool) -> Member {
        Member {
            id,
            is_learner: learner,
            ..Default::default()
        }
    }

    #[test]
    fn strict_reconfig_rules() {
        use ferrokv_raftnode::Progress;
        let three = vec![member(1, false), member(2, false), member(3, false)];
        let with_learner = vec![
            member(1, false),
            member(2, false),
            member(3, false),
            member(4, true),
        ];
        let all_up = Progress {
            last_index: 100,
            matched: vec![(1, 100), (2, 100), (3, 100), (4, 95)],
            active: vec![1, 2, 3, 4],
        };
        let three_down = Progress {
            active: vec![1, 2, 4],
            ..all_up.clone()
        };
        let two_down = Progress {
            active: vec![1, 4],
            ..all_up.clone()
        };
        let learner_behind = Progress {
            matched: vec![(1, 100), (2, 100), (3, 100), (4, 10)],
            ..all_up.clone()
        };
        type Row<'a> = (
            &'a str,
            Reconfig,
            &'a Vec<Member>,
            &'a Progress,
            Option<Error>,
        );
        let rows: Vec<Row> = vec![
            ("learner added", Reconfig::AddLearner, &three, &all_up, None),
            (
                "learner added, one voter down",
                Reconfig::AddLearner,
                &three,
                &three_down,
                Some(Error::Unhealthy),
            ),
            (
                "second learner",
                Reconfig::AddLearner,
                &with_learner,
                &all_up,
                Some(Error::TooManyLearners),
            ),
            (
                "voter added, all up",
                Reconfig::AddVoter,
                &three,
                &all_up,
                None,
            ),
            (
                "voter added, one voter down",
                Reconfig::AddVoter,
                &three,
                &three_down,
                Some(Error::Unhealthy),
            ),
            (
                "voter added, two voters down",
                Reconfig::AddVoter,
                &three,
                &two_down,
                Some(Error::Unhealthy),
            ),
            (
                "dead voter removed",
                Reconfig::Remove(3),
                &three,
                &three_down,
                None,
            ),
            (
                "live voter removed while another is down",
                Reconfig::Remove(2),
                &three,
                &three_down,
                Some(Error::Unhealthy),
            ),
            (
                "learner removed even without quorum",
                Reconfig::Remove(4),
                &with_learner,
                &two_down,
                None,
            ),
            (
                "caught-up learner promoted",
                Reconfig::Promote(4),
                &with_learner,
                &all_up,
                None,
            ),
            (
                "lagging learner promoted",
                Reconfig::Promote(4),
                &with_learner,
                &learner_behind,
                Some(Error::LearnerNotReady),
            ),
            (
                "learner promoted without quorum",
                Reconfig::Promote(4),
                &with_learner,
                &two_down,
                Some(Error::NotEnoughStartedMembers),
            ),
        ];
        for (name, change, members, progress, want) in rows {
            let got = check_reconfig(change, members, progress).err();
            assert_eq!(
                got.map(|e| e.to_string()),
                want.map(|e| e.to_string()),
                "{name}"
            );
        }
    }

    #[test]
    fn peer_url_validation() {
        let rows: Vec<(Vec<&str>, bool)> = vec![
            (vec!["http://10.0.0.1:2380"], true),
            (vec!["https://a.b:2380", "http://c:1"], true),
            (vec![], false),
            (vec!["10.0.0.1:2380"], false),
            (vec!["http://10.0.0.1"], false),
            (vec!["http://10.0.0.1:2380/path"], false),
            (vec!["ftp://h:1"], false),
        ];
        for (urls, ok) in rows {
            let urls: Vec<String> = urls.into_iter().map(String::from).collect();
            assert_eq!(valid_peer_urls(&urls), ok, "{urls:?}");
        }
    }
}
