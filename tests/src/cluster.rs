//! A multi-member cluster of real processes (ferrokv or etcd, same flags) on loopback.
//!
//! Members are named slots (`m1`, `m2`, ...) that keep their ports and data dir across kills
//! and restarts, so a test can SIGKILL the leader, restart it, add a member through
//! `MemberAdd` and start its process with `--initial-cluster-state=existing`, or remove one.
//! Names are never reused, as an operator would never reuse them. The member API calls go
//! through the `etcd-client` crate; everything else is the process and its flags.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use etcd_client::{Client, MemberAddOptions};

use crate::member::{Backend, Member, MemberOpts};
use crate::{Error, Result};

/// How long the harness waits for the cluster to agree on something (a leader, a member).
const SETTLE: Duration = Duration::from_secs(30);

pub struct Cluster {
    pub backend: Backend,
    opts: MemberOpts,
    members: BTreeMap<String, Member>,
    /// Members added as learners and not promoted yet: they refuse writes and most member
    /// calls, so the cluster's own client leaves them out.
    learners: BTreeSet<String>,
    next_ordinal: u64,
}

impl Cluster {
    /// Starts `n` members that bootstrap together and waits until every one sees a leader.
    pub async fn start(backend: Backend, n: usize, opts: MemberOpts) -> Result<Cluster> {
        let mut c = Cluster::empty(backend, opts);
        let names: Vec<String> = (0..n).map(|_| c.reserve()).collect::<Result<_>>()?;
        c.start_members(&names, &names, "new")?;
        c.wait_ready_all().await?;
        Ok(c)
    }

    /// A cluster with no members yet, for tests that drive membership themselves (the
    /// operator's member-management tests reserve, start and remove slots by hand).
    pub fn empty(backend: Backend, opts: MemberOpts) -> Cluster {
        Cluster {
            backend,
            opts,
            members: BTreeMap::new(),
            learners: BTreeSet::new(),
            next_ordinal: 1,
        }
    }

    /// Reserves ports and a data dir for the next member name; no process yet.
    pub fn reserve(&mut self) -> Result<String> {
        let name = format!("m{}", self.next_ordinal);
        self.reserve_named(&name)?;
        self.next_ordinal += 1;
        Ok(name)
    }

    /// Reserves a slot under a name the caller chose (an operator's `<cluster>-<n>`). A name
    /// already reserved keeps its slot.
    pub fn reserve_named(&mut self, name: &str) -> Result<&Member> {
        if !self.members.contains_key(name) {
            let m = Member::reserve(self.backend, self.opts.clone(), name)?;
            self.members.insert(name.to_string(), m);
        }
        self.get(name)
    }

    /// Starts the processes of `names` with `--initial-cluster` made of the slots in
    /// `initial` and the given `--initial-cluster-state`. Does not wait.
    pub fn start_members(
        &mut self,
        names: &[String],
        initial: &[String],
        state: &'static str,
    ) -> Result<()> {
        let initial_cluster = initial
            .iter()
            .map(|n| self.get(n).map(|m| format!("{n}={}", m.peer_url)))
            .collect::<Result<Vec<_>>>()?
            .join(",");
        for n in names {
            let m = self.get_mut(n)?;
            m.initial_cluster = initial_cluster.clone();
            m.initial_state = state;
            m.start_process()?;
        }
        Ok(())
    }

    async fn wait_ready_all(&mut self) -> Result<()> {
        for m in self.members.values_mut().filter(|m| m.pid().is_some()) {
            m.wait_ready().await?;
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<&Member> {
        self.members.get(name).ok_or_else(|| unknown(name))
    }

    pub fn get_mut(&mut self, name: &str) -> Result<&mut Member> {
        self.members.get_mut(name).ok_or_else(|| unknown(name))
    }

    /// Every slot, started or not, by name.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// Names of the members whose process is running.
    pub fn running(&mut self) -> Vec<String> {
        self.members
            .iter_mut()
            .filter_map(|(n, m)| m.is_running().then(|| n.clone()))
            .collect()
    }

    /// Client URLs of the running members.
    pub fn endpoints(&mut self) -> Vec<String> {
        self.members
            .values_mut()
            .filter_map(|m| m.is_running().then(|| m.client_url.clone()))
            .collect()
    }

    /// The slot whose peer URL is `url`.
    pub fn name_by_peer_url(&self, url: &str) -> Option<String> {
        self.members
            .iter()
            .find(|(_, m)| m.peer_url == url)
            .map(|(n, _)| n.clone())
    }

    /// An `etcd-client` over every running member but learners.
    pub async fn client(&mut self) -> Result<Client> {
        let endpoints: Vec<String> = self
            .members
            .iter_mut()
            .filter(|(n, _)| !self.learners.contains(*n))
            .filter_map(|(_, m)| m.is_running().then(|| m.client_url.clone()))
            .collect();
        crate::client::connect_endpoints(&endpoints, self.opts.tls.as_ref()).await
    }

    /// The name of the member the running members agree is leader, waiting for an election
    /// if there is none yet.
    pub async fn leader(&mut self) -> Result<String> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let mut last = String::from("no running member");
            for name in self.running() {
                match self.status_of(&name).await {
                    Ok((id, leader)) if leader != 0 && leader == id => return Ok(name),
                    Ok((_, 0)) => last = format!("{name}: no leader"),
                    Ok((_, leader)) => last = format!("{name}: leader {leader:x} elsewhere"),
                    Err(e) => last = format!("{name}: {e}"),
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Settle(format!("no leader after {SETTLE:?}: {last}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `(member id, leader id)` as member `name` reports them.
    pub async fn status_of(&self, name: &str) -> Result<(u64, u64)> {
        let m = self.get(name)?;
        let probe = async {
            let mut c = m.client().await?;
            let s = c.status().await?;
            let id = s.header().map(|h| h.member_id()).unwrap_or_default();
            Ok::<_, Error>((id, s.leader()))
        };
        tokio::time::timeout(Duration::from_secs(3), probe)
            .await
            .map_err(|_| Error::Settle(format!("{name}: status timed out")))?
    }

    /// The member id of `name`, from the member list.
    pub async fn member_id(&mut self, name: &str) -> Result<u64> {
        let peer = self.get(name)?.peer_url.clone();
        let mut c = self.client().await?;
        let list = c.member_list().await?;
        list.members()
            .iter()
            .find(|m| m.peer_urls().contains(&peer))
            .map(|m| m.id())
            .ok_or_else(|| Error::Settle(format!("{name} ({peer}) is not in the member list")))
    }

    /// etcd's runtime reconfiguration, the way an operator grows a cluster: `MemberAdd` (as a
    /// learner if asked), then the new member's process with `--initial-cluster-state=existing`
    /// and the member list the add returned. Waits until the new member sees the leader.
    pub async fn add_member(&mut self, learner: bool) -> Result<String> {
        let name = self.reserve()?;
        let peer = self.get(&name)?.peer_url.clone();
        let mut c = self.client().await?;
        let deadline = Instant::now() + SETTLE;
        let added = loop {
            let opts = learner.then(|| MemberAddOptions::new().with_is_learner());
            match c.member_add([peer.as_str()], opts).await {
                Ok(added) => break added,
                // Strict reconfiguration: both backends refuse a change until every member
                // has been connected for a while (etcd: 5 s) after a start.
                Err(e) if is_unhealthy(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                Err(e) => return Err(e.into()),
            }
        };
        // The added member has no name yet (it publishes it when it starts): take the slot's.
        let mut initial: Vec<String> = Vec::new();
        for m in added.member_list() {
            let slot = m
                .peer_urls()
                .iter()
                .find_map(|u| self.name_by_peer_url(u))
                .ok_or_else(|| {
                    Error::Settle(format!("member {:x} is no slot of this cluster", m.id()))
                })?;
            initial.push(slot);
        }
        if learner {
            self.learners.insert(name.clone());
        }
        self.start_members(std::slice::from_ref(&name), &initial, "existing")?;
        self.get_mut(&name)?.wait_ready().await?;
        Ok(name)
    }

    /// `MemberPromote` of a learner, retried while it is still catching up (both backends
    /// refuse to promote a learner that is not in sync yet).
    pub async fn promote(&mut self, name: &str) -> Result<()> {
        let id = self.member_id(name).await?;
        let deadline = Instant::now() + SETTLE;
        loop {
            let mut c = self.client().await?;
            match c.member_promote(id).await {
                Ok(_) => {
                    self.learners.remove(name);
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// `MemberRemove` of `name` through the other members, then its process is stopped and its
    /// slot (data dir included) dropped.
    pub async fn remove_member(&mut self, name: &str) -> Result<()> {
        let id = self.member_id(name).await?;
        let others: Vec<String> = self
            .running()
            .into_iter()
            .filter(|n| n != name)
            .map(|n| self.get(&n).map(|m| m.client_url.clone()))
            .collect::<Result<_>>()?;
        let mut c = crate::client::connect_endpoints(&others, self.opts.tls.as_ref()).await?;
        let deadline = Instant::now() + SETTLE;
        loop {
            match c.member_remove(id).await {
                Ok(_) => break,
                Err(e) if is_unhealthy(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.drop_slot(name);
        Ok(())
    }

    /// Kills a member's process and deletes its slot and data, without any member API call
    /// (what deleting a pod and its volume looks like to the cluster).
    pub fn drop_slot(&mut self, name: &str) {
        // Dropping the member kills its process and removes its temp dir.
        self.members.remove(name);
        self.learners.remove(name);
    }

    /// SIGKILL.
    pub fn kill(&mut self, name: &str) -> Result<()> {
        self.get_mut(name)?.kill();
        Ok(())
    }

    /// SIGKILL and restart on the same data dir and ports; waits until it serves again.
    pub async fn restart(&mut self, name: &str) -> Result<()> {
        self.get_mut(name)?.restart().await
    }
}

fn is_unhealthy(e: &etcd_client::Error) -> bool {
    crate::grpc_error(e).is_some_and(|(_, msg)| msg == "etcdserver: unhealthy cluster")
}

fn unknown(name: &str) -> Error {
    Error::Settle(format!("no member named {name} in this cluster"))
}
