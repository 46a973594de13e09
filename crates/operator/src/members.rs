//! Member management through the etcd v3 Cluster and Maintenance APIs (`etcd-client`).
//!
//! The controller and the member-management tests use exactly this code, against ferrokv or
//! the reference etcd. It never talks to Kubernetes. Each call picks the first endpoint that
//! answers, because after a removal or a crash some endpoints are expected to be dead.

use crate::plan::ObservedMember;
use crate::resources::member_from_peer_url;
use crate::{Error, Result};
use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Certificate, Client, ConnectOptions, Identity,
    MemberAddOptions, TlsOptions,
};
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::{debug, info};

/// How long a member has to answer `Status` during an observation. A healthy member
/// answers in milliseconds; this leaves room for a TLS handshake on a loaded node.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// The operator's client identity and the CA it trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// One entry of the member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    /// Empty until the member has started once.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub learner: bool,
}

/// A member's own view from `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHealth {
    pub member_id: u64,
    pub leader: u64,
    pub raft_index: u64,
    pub version: String,
    pub db_size: i64,
    pub errors: Vec<String>,
}

impl MemberHealth {
    /// Answered and reports no error of its own. `Status` lists every raised alarm among its
    /// errors (`memberID:N alarm:CORRUPT `, on every member alike, as etcd does); those are
    /// read from `AlarmList` instead, so an alarm does not make every member look down.
    pub fn ok(&self) -> bool {
        self.errors.iter().all(|e| is_alarm_error(e))
    }
}

/// Whether a `Status` error is one of the raised alarms (etcd's `AlarmMember` text).
pub fn is_alarm_error(e: &str) -> bool {
    e.starts_with("memberID:") && e.contains(" alarm:")
}

/// etcd's name of an alarm type, as `etcdctl alarm list` prints it.
pub fn alarm_name(a: AlarmType) -> &'static str {
    match a {
        AlarmType::None => "NONE",
        AlarmType::Nospace => "NOSPACE",
        AlarmType::Corrupt => "CORRUPT",
    }
}

/// One raised alarm: the member it names (0 = the whole cluster) and its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    pub member_id: u64,
    pub alarm: &'static str,
}

pub const CORRUPT: &str = "CORRUPT";

/// The whole cluster as seen in one observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub cluster_id: u64,
    pub members: Vec<(MemberInfo, Option<MemberHealth>)>,
    /// `AlarmList` from a member that answered (empty when none answered it).
    pub alarms: Vec<Alarm>,
}

impl ClusterView {
    pub fn leader(&self) -> Option<&MemberInfo> {
        let leader = self
            .members
            .iter()
            .filter_map(|(_, h)| h.as_ref())
            .map(|h| h.leader)
            .find(|&l| l != 0)?;
        self.members.iter().map(|(m, _)| m).find(|m| m.id == leader)
    }

    /// Name used by the planner: the started name, else the host of the peer URL (a learner
    /// that never started has no name yet).
    pub fn name_of(m: &MemberInfo) -> String {
        if !m.name.is_empty() {
            return m.name.clone();
        }
        m.peer_urls
            .first()
            .and_then(|u| member_from_peer_url(u))
            .unwrap_or_default()
    }

    /// Whether alarm `alarm` is raised for member `id`.
    pub fn alarmed(&self, id: u64, alarm: &str) -> bool {
        self.alarms
            .iter()
            .any(|a| a.member_id == id && a.alarm == alarm)
    }

    /// The planner's input.
    pub fn observed(&self) -> Vec<ObservedMember> {
        let leader = self.leader().map(|l| l.id);
        self.members
            .iter()
            .map(|(m, h)| ObservedMember {
                id: m.id,
                name: Self::name_of(m),
                learner: m.learner,
                started: !m.name.is_empty(),
                healthy: h.as_ref().is_some_and(MemberHealth::ok),
                leader: Some(m.id) == leader,
                raft_index: h.as_ref().map(|h| h.raft_index),
                corrupt: self
                    .alarmed(m.id, CORRUPT)
                    .then(|| "the CORRUPT alarm is raised for it".to_string()),
                version: h.as_ref().map(|h| h.version.clone()),
            })
            .collect()
    }
}

/// Talks to the members of one cluster.
#[derive(Debug, Clone)]
pub struct MemberClient {
    endpoints: Vec<String>,
    tls: Option<ClientTls>,
    timeout: Duration,
}

impl MemberClient {
    pub fn new(endpoints: Vec<String>, tls: Option<ClientTls>) -> Self {
        Self {
            endpoints,
            tls,
            timeout: Duration::from_secs(5),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn options(&self) -> ConnectOptions {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout);
        if let Some(t) = &self.tls {
            o = o.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(&t.ca))
                    .identity(Identity::from_pem(&t.cert, &t.key)),
            );
        }
        o
    }

    /// A client of the member at `endpoint` without the per-call timeout, for a stream that
    /// lasts as long as the data takes (a snapshot).
    pub async fn streaming_client(&self, endpoint: &str) -> Result<Client> {
        let mut o = ConnectOptions::new().with_connect_timeout(self.timeout);
        if let Some(t) = &self.tls {
            o = o.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(&t.ca))
                    .identity(Identity::from_pem(&t.cert, &t.key)),
            );
        }
        Client::connect([endpoint], Some(o))
            .await
            .map_err(|source| Error::Member {
                op: format!("connect {endpoint}"),
                source,
            })
    }

    async fn connect_one(&self, endpoint: &str) -> Result<Client> {
        Client::connect([endpoint], Some(self.options()))
            .await
            .map_err(|source| Error::Member {
                op: format!("connect {endpoint}"),
                source,
            })
    }

    /// Runs `f` against the first endpoint where it succeeds; the last error otherwise.
    async fn first_ok<T, F, Fut>(&self, op: &str, endpoints: &[String], f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut last = Error::MemberNotFound(format!("no endpoint answered {op}"));
        for ep in endpoints {
            match self.connect_one(ep).await {
                Ok(c) => match tokio::time::timeout(self.timeout, f(c)).await {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(source)) => {
                        debug!(endpoint = %ep, op, error = %source, "member call failed, trying next endpoint");
                        // A learner refuses most calls; another endpoint will take it, so keep
                        // the more telling error from a voter if there is one.
                        let learner = source.to_string().contains("not supported for learner");
                        if !learner || matches!(last, Error::MemberNotFound(_)) {
                            last = Error::Member {
                                op: format!("{op} via {ep}"),
                                source,
                            };
                        }
                    }
                    Err(_) => {
                        debug!(endpoint = %ep, op, "member call timed out, trying next endpoint");
                        last = Error::MemberNotFound(format!("{op} via {ep} timed out"));
                    }
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The member list and cluster id.
    pub async fn list(&self) -> Result<(u64, Vec<MemberInfo>)> {
        self.list_via(&self.endpoints).await
    }

    /// The member list from the first of `endpoints` that answers.
    async fn list_via(&self, endpoints: &[String]) -> Result<(u64, Vec<MemberInfo>)> {
        self.first_ok("MemberList", endpoints, |mut c| async move {
            let r = c.member_list().await?;
            let cluster_id = r.header().map_or(0, |h| h.cluster_id());
            let members = r
                .members()
                .iter()
                .map(|m| MemberInfo {
                    id: m.id(),
                    name: m.name().to_string(),
                    peer_urls: m.peer_urls().to_vec(),
                    client_urls: m.client_urls().to_vec(),
                    learner: m.is_learner(),
                })
                .collect();
            Ok((cluster_id, members))
        })
        .await
    }

    /// `Status` of the member behind `endpoint`.
    pub async fn health(&self, endpoint: &str) -> Result<MemberHealth> {
        self.first_ok("Status", &[endpoint.to_string()], |mut c| async move {
            let s = c.status().await?;
            Ok(MemberHealth {
                member_id: s.header().map_or(0, |h| h.member_id()),
                leader: s.leader(),
                raft_index: s.raft_index(),
                version: s.version().to_string(),
                db_size: s.db_size(),
                errors: s.errors().to_vec(),
            })
        })
        .await
    }

    /// `Status` of the member behind `endpoint`, connection included, within `limit`: a
    /// frozen member accepts the TCP connection and then never answers.
    async fn health_within(&self, endpoint: &str, limit: Duration) -> Result<MemberHealth> {
        match tokio::time::timeout(limit, self.health(endpoint)).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::MemberNotFound(format!(
                "Status via {endpoint} timed out after {limit:?}"
            ))),
        }
    }

    /// Member list plus each member's own status; `None` when no member answers.
    ///
    /// Every endpoint is asked for its `Status` at once, each within `STATUS_TIMEOUT`, so a
    /// frozen member costs one short timeout per observation, not one per call; the member
    /// list is then asked of the members that just answered, the silent ones last.
    pub async fn observe(&self) -> Option<ClusterView> {
        let answers = futures::future::join_all(
            self.endpoints
                .iter()
                .map(|ep| self.health_within(ep, STATUS_TIMEOUT)),
        )
        .await;
        let mut health_by_id = BTreeMap::new();
        let (mut answered, mut silent) = (Vec::new(), Vec::new());
        for (ep, answer) in self.endpoints.iter().zip(answers) {
            match answer {
                Ok(h) => {
                    answered.push(ep.clone());
                    health_by_id.insert(h.member_id, h);
                }
                Err(e) => {
                    debug!(endpoint = %ep, error = %e, "member did not answer Status");
                    silent.push(ep.clone());
                }
            }
        }
        answered.extend(silent);
        let (cluster_id, list) = match self.list_via(&answered).await {
            Ok(v) => v,
            Err(e) => {
                debug!(error = %e, "no member answered the member list");
                return None;
            }
        };
        let alarms = match self.alarms_via(&answered).await {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "no member answered the alarm list");
                Vec::new()
            }
        };
        // A member's answer is matched by the id it reports, so it counts whichever of its
        // URLs (DNS name, override) it was reached by.
        let members = list
            .into_iter()
            .map(|m| {
                let h = health_by_id.remove(&m.id);
                (m, h)
            })
            .collect();
        Some(ClusterView {
            cluster_id,
            members,
            alarms,
        })
    }

    /// `AlarmList` from the first of `endpoints` that answers.
    async fn alarms_via(&self, endpoints: &[String]) -> Result<Vec<Alarm>> {
        self.first_ok("AlarmList", endpoints, |mut c| async move {
            let r = c.alarm(AlarmAction::Get, AlarmType::None, None).await?;
            Ok(r.alarms()
                .iter()
                .map(|a| Alarm {
                    member_id: a.member_id(),
                    alarm: alarm_name(a.alarm()),
                })
                .collect())
        })
        .await
    }

    /// Disarms the CORRUPT alarm raised for member `id`.
    pub async fn disarm_corrupt(&self, id: u64) -> Result<()> {
        self.first_ok("AlarmDisarm", &self.endpoints, |mut c| async move {
            let mut o = AlarmOptions::new();
            o.with_member(id);
            c.alarm(AlarmAction::Deactivate, AlarmType::Corrupt, Some(o))
                .await?;
            Ok(())
        })
        .await?;
        info!(id = format_args!("{id:x}"), "disarmed the CORRUPT alarm");
        Ok(())
    }

    /// `MemberAdd` as a learner; returns its id.
    pub async fn add_learner(&self, peer_url: &str) -> Result<u64> {
        let id = self
            .first_ok("MemberAdd", &self.endpoints, |mut c| async move {
                let r = c
                    .member_add([peer_url], Some(MemberAddOptions::new().with_is_learner()))
                    .await?;
                Ok(r.member().map(|m| m.id()))
            })
            .await?
            .ok_or_else(|| {
                Error::MemberNotFound(format!("MemberAdd of {peer_url} returned no member"))
            })?;
        info!(peer_url, id = format_args!("{id:x}"), "added learner");
        Ok(id)
    }

    /// `MemberPromote`.
    pub async fn promote(&self, id: u64) -> Result<()> {
        self.first_ok("MemberPromote", &self.endpoints, |mut c| async move {
            c.member_promote(id).await?;
            Ok(())
        })
        .await?;
        info!(id = format_args!("{id:x}"), "promoted learner");
        Ok(())
    }

    /// `MemberRemove`.
    pub async fn remove(&self, id: u64) -> Result<()> {
        self.first_ok("MemberRemove", &self.endpoints, |mut c| async move {
            c.member_remove(id).await?;
            Ok(())
        })
        .await?;
        info!(id = format_args!("{id:x}"), "removed member");
        Ok(())
    }

    /// `MoveLeader` to `to`. Only the leader accepts it, so it is sent to the leader's own
    /// client URLs as found by a fresh observation.
    pub async fn move_leader(&self, to: u64) -> Result<()> {
        let view = self
            .observe()
            .await
            .ok_or_else(|| Error::MemberNotFound("no member answered".into()))?;
        let leader = view
            .leader()
            .ok_or_else(|| Error::MemberNotFound("cluster has no leader".into()))?;
        if leader.id == to {
            return Ok(());
        }
        let urls = leader.client_urls.clone();
        self.first_ok("MoveLeader", &urls, |mut c| async move {
            c.move_leader(to).await?;
            Ok(())
        })
        .await?;
        info!(
            from = format_args!("{:x}", leader.id),
            to = format_args!("{to:x}"),
            "moved leadership"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u64, name: &str, url: &str, learner: bool) -> MemberInfo {
        MemberInfo {
            id,
            name: name.into(),
            peer_urls: vec![url.into()],
            client_urls: vec![],
            learner,
        }
    }
    fn health(id: u64, leader: u64, index: u64) -> Option<MemberHealth> {
        Some(MemberHealth {
            member_id: id,
            leader,
            raft_index: index,
            version: "3.4".into(),
            db_size: 1,
            errors: vec![],
        })
    }

    #[test]
    fn view_maps_to_planner_input() {
        let view = ClusterView {
            cluster_id: 9,
            members: vec![
                (
                    info(1, "kv-0", "https://kv-0.kv-peer.ns.svc:2380", false),
                    health(1, 1, 50),
                ),
                (info(2, "", "https://kv-1.kv-peer.ns.svc:2380", true), None),
                (
                    info(3, "kv-2", "https://kv-2.kv-peer.ns.svc:2380", false),
                    health(3, 1, 49),
                ),
            ],
            alarms: vec![],
        };
        let got = view.observed();
        let rows: Vec<(&str, bool, bool, bool, bool)> = got
            .iter()
            .map(|m| (m.name.as_str(), m.learner, m.started, m.healthy, m.leader))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("kv-0", false, true, true, true),
                ("kv-1", true, false, false, false),
                ("kv-2", false, true, true, false)
            ]
        );
        assert_eq!(view.leader().map(|l| l.id), Some(1));
    }
}
