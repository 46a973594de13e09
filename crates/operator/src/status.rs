//! The `EtcdCluster` status: phase, conditions, members, leader, cluster id and the name
//! counter, from the observation and the plan.
//!
//! Owns what status says and when it is written. `build`, `refused` and `keep_refusal` are
//! pure; `write` hands the result to `apply` and is the only way status is written. Nothing
//! here decides a step.

use crate::apply::Applier;
use crate::members::{ClusterView, MemberHealth, CORRUPT};
use crate::plan::{self, ObservedPod, Step};
use crate::resources;
use crate::Result;
use ferrokv_cluster_api::{condition, ClusterPhase, EtcdCluster, EtcdClusterStatus, MemberStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

fn set_condition(
    conds: &mut Vec<Condition>,
    old: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) {
    let status = if ok { "True" } else { "False" }.to_string();
    // Keep the transition time while the status is unchanged, as Kubernetes conventions ask.
    let last = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(
            || Time(Timestamp::now()),
            |c| c.last_transition_time.clone(),
        );
    conds.push(Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        last_transition_time: last,
        observed_generation: generation,
    });
}

/// Status from the plan and the observation (the member view and the member pods).
pub fn build(
    ec: &EtcdCluster,
    view: Option<&ClusterView>,
    pods: &[ObservedPod],
    p: &plan::Plan,
) -> EtcdClusterStatus {
    let old = ec.status.clone().unwrap_or_default();
    let members: Vec<MemberStatus> = view
        .map(|v| {
            let leader = v.leader().map(|l| l.id);
            let corrupt = crate::observe::corrupt_members(v, pods);
            v.members
                .iter()
                .map(|(m, h)| MemberStatus {
                    name: ClusterView::name_of(m),
                    id: format!("{:x}", m.id),
                    learner: m.learner,
                    leader: Some(m.id) == leader,
                    healthy: h.as_ref().is_some_and(MemberHealth::ok),
                    version: h.as_ref().map(|h| h.version.clone()),
                    image: pods
                        .iter()
                        .find(|p| p.name == ClusterView::name_of(m))
                        .and_then(|p| p.image.clone()),
                    db_size: h.as_ref().map(|h| h.db_size),
                    alarms: v
                        .alarms
                        .iter()
                        .filter(|a| a.member_id == m.id)
                        .map(|a| a.alarm.to_string())
                        .collect(),
                    corrupt: corrupt.get(&m.id).cloned(),
                })
                .collect()
        })
        .unwrap_or_default();
    // CORRUPT alarms no current member carries: a replaced member's (disarmed next), or one
    // for the whole cluster (member 0) that names no member to replace.
    let stray_corrupt: Vec<u64> = view
        .map(|v| {
            v.alarms
                .iter()
                .filter(|a| {
                    a.alarm == CORRUPT && !v.members.iter().any(|(m, _)| m.id == a.member_id)
                })
                .map(|a| a.member_id)
                .collect()
        })
        .unwrap_or_default();
    let voters = members.iter().filter(|m| !m.learner).count();
    let healthy_voters = members.iter().filter(|m| !m.learner && m.healthy).count();
    // Ready is what Kubernetes routes and budgets by: the member pods whose Ready condition is
    // True (the client Service's endpoints, the PDB), not the members that answer the
    // operator. An image whose probes fail (a wrong probe path) shows up here.
    let member_pod_ready = |name: &str| {
        pods.iter()
            .any(|p| p.name == name && p.ready && !p.terminating)
    };
    let not_ready: Vec<&str> = members
        .iter()
        .filter(|m| !member_pod_ready(&m.name))
        .map(|m| m.name.as_str())
        .collect();
    let ready = i32::try_from(members.len() - not_ready.len()).unwrap_or(i32::MAX);
    let available = voters > 0 && healthy_voters >= plan::quorum(voters);
    let gen = ec.metadata.generation;
    // The backup conditions are `backup`'s; kept as they are, after the three of this module.
    let backup_conds: Vec<Condition> = old
        .conditions
        .iter()
        .filter(|c| {
            [condition::BACKUP_READY, condition::BACKUP_VERIFIED].contains(&c.type_.as_str())
        })
        .cloned()
        .collect();
    let mut conds = Vec::new();
    let (progressing, progress_msg) = match &p.step {
        Step::Steady => (false, "members match the spec".to_string()),
        Step::Invalid { .. } => (false, "waiting for a valid spec".to_string()),
        Step::Wait { reason } => (true, reason.clone()),
        other => (true, other.label().to_string()),
    };
    // An image roll says how far it is, whatever its step.
    let progress_msg = match (&p.upgrade, &p.step) {
        (Some(u), Step::Wait { reason }) => {
            format!("{} of {} members on {}; {reason}", u.done, u.total, u.image)
        }
        (Some(u), Step::RestartMember { name, .. }) => format!(
            "{} of {} members on {}; restarting {name} on it",
            u.done, u.total, u.image
        ),
        (Some(u), Step::MoveLeader { .. }) => format!(
            "{} of {} members on {}; moving leadership off the leader before it restarts",
            u.done, u.total, u.image
        ),
        _ => progress_msg,
    };
    let upgrade_failed = p.upgrade.as_ref().and_then(|u| u.failed.clone());
    let restore_failure = pods
        .iter()
        .find_map(|p| Some((p.name.as_str(), p.restore_failed.as_deref()?)));
    let (degraded, degraded_reason, degraded_msg) = match (&p.step, restore_failure) {
        (Step::Invalid { message }, _) => (true, "InvalidSpec", message.clone()),
        // Only the seed restores; until its restore succeeds there is no member to look at.
        (_, Some((name, message))) => (
            true,
            RESTORE_FAILED,
            format!("the restore of seed {name} failed: {message}"),
        ),
        _ if members.iter().any(|m| m.corrupt.is_some()) => {
            let what: Vec<String> = members
                .iter()
                .filter_map(|m| {
                    Some(format!(
                        "member {} ({}) is corrupt: {}",
                        m.name,
                        m.id,
                        m.corrupt.as_ref()?
                    ))
                })
                .collect();
            let next = match &p.step {
                Step::Wait { reason } => reason.clone(),
                Step::RemoveMember { .. } | Step::MoveLeader { .. } => "replacing it".to_string(),
                other => format!("replacing it after {}", other.label()),
            };
            (true, MEMBER_CORRUPT, format!("{}; {next}", what.join("; ")))
        }
        _ if !stray_corrupt.is_empty() => {
            let ids: Vec<String> = stray_corrupt.iter().map(|id| format!("{id:x}")).collect();
            let msg = if stray_corrupt.contains(&0) {
                "the CORRUPT alarm is raised for the whole cluster (member 0): no member is known \
                 to be corrupt, writes are refused until a human disarms it"
                    .to_string()
            } else {
                format!(
                    "the CORRUPT alarm of removed member(s) {} is still raised; disarming it",
                    ids.join(", ")
                )
            };
            (true, MEMBER_CORRUPT, msg)
        }
        _ if upgrade_failed.is_some() => (
            true,
            UPGRADE_FAILED,
            upgrade_failed.clone().unwrap_or_default(),
        ),
        _ if members.iter().any(|m| !m.healthy && !m.learner) => {
            let down: Vec<&str> = members
                .iter()
                .filter(|m| !m.healthy && !m.learner)
                .map(|m| m.name.as_str())
                .collect();
            (
                true,
                "MembersUnhealthy",
                format!("unhealthy: {}", down.join(", ")),
            )
        }
        // Nothing is in flight, every member answers, yet Kubernetes does not count them.
        (Step::Steady, _) if !not_ready.is_empty() => (
            true,
            "PodsNotReady",
            format!("member pods not Ready: {}", not_ready.join(", ")),
        ),
        _ if !p.warnings.is_empty() => (false, SPEC_WARNING, p.warnings.join("; ")),
        _ => (false, "AsExpected", String::new()),
    };
    let avail_msg = format!("{healthy_voters} of {voters} voters healthy");
    set_condition(
        &mut conds,
        &old.conditions,
        condition::AVAILABLE,
        available,
        if available {
            "QuorumHealthy"
        } else {
            "NoQuorum"
        },
        avail_msg,
        gen,
    );
    set_condition(
        &mut conds,
        &old.conditions,
        condition::PROGRESSING,
        progressing,
        p.step.label(),
        progress_msg,
        gen,
    );
    set_condition(
        &mut conds,
        &old.conditions,
        condition::DEGRADED,
        degraded,
        degraded_reason,
        degraded_msg,
        gen,
    );
    conds.extend(backup_conds);
    let phase = if degraded {
        ClusterPhase::Degraded
    } else if members.is_empty() {
        ClusterPhase::Creating
    } else if progressing {
        ClusterPhase::Scaling
    } else {
        ClusterPhase::Running
    };
    let name = ec.name_any();
    EtcdClusterStatus {
        phase: Some(phase),
        observed_generation: gen,
        conditions: conds,
        leader: members.iter().find(|m| m.leader).map(|m| m.name.clone()),
        cluster_id: view
            .map(|v| format!("{:x}", v.cluster_id))
            .or(old.cluster_id),
        ready_members: ready,
        replicas: i32::try_from(members.len()).unwrap_or(i32::MAX),
        selector: Some(resources::selector_string(&name)),
        next_ordinal: p.next_ordinal,
        members,
        // Backups are reported by `backup` (`backup::decorate`); carried here unchanged.
        last_backup: old.last_backup,
        last_backup_attempt: old.last_backup_attempt,
        last_verified_backup: old.last_verified_backup,
    }
}

/// Reason of `Degraded` while a member is corrupt (or its CORRUPT alarm is still raised).
pub const MEMBER_CORRUPT: &str = "MemberCorrupt";

/// The members `status` reports corrupt that `old` did not, as (member, Warning Event note):
/// each is said once, when it is first seen corrupt.
pub fn new_corruptions(
    old: Option<&EtcdClusterStatus>,
    status: &EtcdClusterStatus,
) -> Vec<(String, String)> {
    let was =
        |id: &str| old.is_some_and(|o| o.members.iter().any(|m| m.id == id && m.corrupt.is_some()));
    status
        .members
        .iter()
        .filter(|m| !was(&m.id))
        .filter_map(|m| {
            let why = m.corrupt.as_ref()?;
            Some((
                m.name.clone(),
                format!(
                    "member {} ({}) is corrupt: {why}; it is replaced when quorum allows",
                    m.name, m.id
                ),
            ))
        })
        .collect()
}

/// Reason of `Degraded` when a member restarted on the new image did not come back healthy:
/// the roll stops there.
pub const UPGRADE_FAILED: &str = "UpgradeFailed";

/// The `Degraded` message of a stopped image roll that `status` says and `old` did not: the
/// Warning Event to publish, once per message.
pub fn new_upgrade_failure(
    old: Option<&EtcdClusterStatus>,
    status: &EtcdClusterStatus,
) -> Option<String> {
    new_degraded(old, status, UPGRADE_FAILED)
}

/// The message of a `Degraded=True` condition with `reason` that `status` says and `old` did
/// not, so a Warning Event goes out once per message rather than on every reconcile.
fn new_degraded(
    old: Option<&EtcdClusterStatus>,
    status: &EtcdClusterStatus,
    reason: &str,
) -> Option<String> {
    let failure = |s: &EtcdClusterStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == condition::DEGRADED && c.status == "True" && c.reason == reason)
            .map(|c| c.message.clone())
    };
    let now = failure(status)?;
    (old.and_then(failure).as_ref() != Some(&now)).then_some(now)
}

/// Reason of `Degraded` when the seed's restore init container failed (`spec.restore`).
pub const RESTORE_FAILED: &str = "RestoreFailed";

/// The `Degraded` message of a failed restore that `status` says and `old` did not: the
/// Warning Event to publish, once per failure message rather than on every reconcile.
pub fn new_restore_failure(
    old: Option<&EtcdClusterStatus>,
    status: &EtcdClusterStatus,
) -> Option<String> {
    new_degraded(old, status, RESTORE_FAILED)
}

/// Reason of `Degraded` when the API server refused one of the operator's writes.
pub const REFUSED: &str = "Refused";

/// `status` with `Degraded=True` for a write the API server refused (RBAC, PodSecurity
/// admission, an invalid object), with its message: the refusal needs a human, and a
/// `Progressing` condition alone would hide it.
pub fn refused(
    ec: &EtcdCluster,
    mut status: EtcdClusterStatus,
    message: &str,
) -> EtcdClusterStatus {
    let old = ec
        .status
        .as_ref()
        .map_or(&[][..], |s| s.conditions.as_slice());
    status.conditions.retain(|c| c.type_ != condition::DEGRADED);
    set_condition(
        &mut status.conditions,
        old,
        condition::DEGRADED,
        true,
        REFUSED,
        message.to_string(),
        ec.metadata.generation,
    );
    status.phase = Some(ClusterPhase::Degraded);
    status
}

/// The status to write before a step: a refusal already reported stays reported while
/// nothing else is degraded, so a retry of the refused write does not flap `Degraded` to
/// False and back. The controller clears it once the step goes through.
pub fn keep_refusal(ec: &EtcdCluster, status: &EtcdClusterStatus) -> EtcdClusterStatus {
    let reported = ec.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == condition::DEGRADED && c.status == "True" && c.reason == REFUSED)
    });
    let degraded_now = status
        .conditions
        .iter()
        .any(|c| c.type_ == condition::DEGRADED && c.status == "True");
    match reported {
        Some(c) if !degraded_now => refused(ec, status.clone(), &c.message),
        _ => status.clone(),
    }
}

/// Reason of `Degraded=False` when the spec is valid but worth a warning (an even size).
pub const SPEC_WARNING: &str = "SpecWarning";

/// Whether `warnings` are said by this reconcile: once per spec change (the first reconcile
/// of a generation, which status has not yet recorded as observed), not on every reconcile.
/// The Degraded message keeps them in view after that.
pub fn warnings_are_new(ec: &EtcdCluster, warnings: &[String]) -> bool {
    let observed = ec.status.as_ref().and_then(|s| s.observed_generation);
    !warnings.is_empty() && observed != ec.metadata.generation
}

/// Writes `status` unless the object already has it: status writes wake this controller up
/// again, so skipping unchanged ones keeps a steady cluster from reconciling in a loop.
pub async fn write(
    applier: &Applier<'_>,
    ec: &EtcdCluster,
    status: &EtcdClusterStatus,
) -> Result<()> {
    if ec.status.as_ref() == Some(status) {
        return Ok(());
    }
    applier.status(status).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::cluster;

    #[test]
    fn status_reports_members_leader_and_conditions() {
        use crate::members::{MemberHealth, MemberInfo};
        let ec = cluster("kv", 3);
        let info = |id, name: &str| MemberInfo {
            id,
            name: name.into(),
            peer_urls: vec![format!("https://{name}.kv-peer.prod.svc:2380")],
            client_urls: vec![],
            learner: false,
        };
        let h = |id| {
            Some(MemberHealth {
                member_id: id,
                leader: 1,
                raft_index: 10,
                version: "3.4.23".into(),
                db_size: 20480,
                errors: vec![],
            })
        };
        let view = ClusterView {
            cluster_id: 0xabc,
            members: vec![
                (info(1, "kv-0"), h(1)),
                (info(2, "kv-1"), h(2)),
                (info(3, "kv-2"), None),
            ],
            alarms: vec![],
        };
        let p = plan::Plan {
            step: Step::Wait {
                reason: "some members are unhealthy".into(),
            },
            warnings: vec![],
            next_ordinal: 3,
            upgrade: None,
        };
        let pod = |name: &str, ready: bool| ObservedPod {
            name: name.into(),
            age: std::time::Duration::from_secs(60),
            unready_for: std::time::Duration::ZERO,
            ready,
            terminating: false,
            restore_failed: None,
            start_refused: None,
            image: None,
        };
        let pods = [pod("kv-0", true), pod("kv-1", true), pod("kv-2", false)];
        let s = build(&ec, Some(&view), &pods, &p);
        assert_eq!(s.leader.as_deref(), Some("kv-0"));
        assert_eq!(s.cluster_id.as_deref(), Some("abc"));
        assert_eq!((s.ready_members, s.replicas), (2, 3));
        assert_eq!(s.phase, Some(ClusterPhase::Degraded));
        let c = |t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| (c.status.clone(), c.message.clone()))
        };
        assert_eq!(
            c("Available"),
            Some(("True".into(), "2 of 3 voters healthy".into()))
        );
        assert_eq!(
            c("Degraded"),
            Some(("True".into(), "unhealthy: kv-2".into()))
        );
        assert_eq!(s.members[0].db_size, Some(20480));
        assert!(s.members[0].leader && !s.members[2].healthy);
    }

    /// An image roll: Progressing says how far it is, members[].image what each pod runs; a
    /// stopped roll is Degraded with its reason, said once as an Event.
    #[test]
    fn an_image_roll_shows_progress_and_a_failure() {
        use crate::members::{MemberHealth, MemberInfo};
        let ec = cluster("kv", 3);
        let info = |id, name: &str| MemberInfo {
            id,
            name: name.into(),
            peer_urls: vec![format!("https://{name}.kv-peer.prod.svc:2380")],
            client_urls: vec![],
            learner: false,
        };
        let h = |id| {
            Some(MemberHealth {
                member_id: id,
                leader: 1,
                raft_index: 10,
                version: "3.6.0".into(),
                db_size: 20480,
                errors: vec![],
            })
        };
        let view = ClusterView {
            cluster_id: 0xabc,
            members: vec![
                (info(1, "kv-0"), h(1)),
                (info(2, "kv-1"), h(2)),
                (info(3, "kv-2"), h(3)),
            ],
            alarms: vec![],
        };
        let pod = |name: &str, image: &str| ObservedPod {
            name: name.into(),
            age: std::time::Duration::from_secs(60),
            unready_for: std::time::Duration::ZERO,
            ready: true,
            terminating: false,
            restore_failed: None,
            start_refused: None,
            image: Some(image.into()),
        };
        let pods = [pod("kv-0", "a:1"), pod("kv-1", "a:2"), pod("kv-2", "a:1")];
        let upgrade = |failed: Option<&str>| plan::Upgrade {
            image: "a:2".into(),
            done: 1,
            total: 3,
            failed: failed.map(str::to_string),
        };
        let p = plan::Plan {
            step: Step::RestartMember {
                id: 3,
                name: "kv-2".into(),
                from: "a:1".into(),
                to: "a:2".into(),
            },
            warnings: vec![],
            next_ordinal: 3,
            upgrade: Some(upgrade(None)),
        };
        let s = build(&ec, Some(&view), &pods, &p);
        let cond = |s: &EtcdClusterStatus, t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        };
        assert_eq!(
            cond(&s, "Progressing"),
            Some((
                "True".into(),
                "RestartMember".into(),
                "1 of 3 members on a:2; restarting kv-2 on it".into()
            ))
        );
        assert_eq!(cond(&s, "Degraded").map(|c| c.0), Some("False".into()));
        let images: Vec<Option<&str>> = s.members.iter().map(|m| m.image.as_deref()).collect();
        assert_eq!(images, [Some("a:1"), Some("a:2"), Some("a:1")]);
        assert_eq!(new_upgrade_failure(None, &s), None);

        let why = "upgrade to a:2 stopped: member kv-1 did not come back healthy on it";
        let stopped = plan::Plan {
            step: Step::Wait { reason: why.into() },
            upgrade: Some(upgrade(Some(why))),
            ..p
        };
        let s2 = build(&ec, Some(&view), &pods, &stopped);
        assert_eq!(
            cond(&s2, "Degraded"),
            Some(("True".into(), UPGRADE_FAILED.into(), why.into()))
        );
        assert_eq!(new_upgrade_failure(Some(&s), &s2).as_deref(), Some(why));
        assert_eq!(new_upgrade_failure(Some(&s2), &s2), None, "said once");
    }

    /// Members that answer but whose pods are not Ready (an etcd 3.4 image probed on a path
    /// it does not serve): Ready counts the pods, and a steady cluster says Degraded.
    #[test]
    fn ready_follows_pod_readiness_not_member_answers() {
        use crate::members::{MemberHealth, MemberInfo};
        let ec = cluster("kv", 2);
        let member = |id, name: &str| {
            (
                MemberInfo {
                    id,
                    name: name.into(),
                    peer_urls: vec![],
                    client_urls: vec![],
                    learner: false,
                },
                Some(MemberHealth {
                    member_id: id,
                    leader: 1,
                    raft_index: 10,
                    version: "3.4.23".into(),
                    db_size: 1,
                    errors: vec![],
                }),
            )
        };
        let view = ClusterView {
            cluster_id: 1,
            members: vec![member(1, "kv-0"), member(2, "kv-1")],
            alarms: vec![],
        };
        let pod = |name: &str, ready: bool| ObservedPod {
            name: name.into(),
            age: std::time::Duration::from_secs(60),
            unready_for: std::time::Duration::ZERO,
            ready,
            terminating: false,
            restore_failed: None,
            start_refused: None,
            image: None,
        };
        let steady = plan::Plan {
            step: Step::Steady,
            warnings: vec![],
            next_ordinal: 2,
            upgrade: None,
        };
        let s = build(
            &ec,
            Some(&view),
            &[pod("kv-0", false), pod("kv-1", false)],
            &steady,
        );
        assert_eq!((s.ready_members, s.replicas), (0, 2));
        assert_eq!(s.phase, Some(ClusterPhase::Degraded));
        let d = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .expect("Degraded");
        assert_eq!(
            (d.status.as_str(), d.reason.as_str(), d.message.as_str()),
            ("True", "PodsNotReady", "member pods not Ready: kv-0, kv-1")
        );
        let s = build(
            &ec,
            Some(&view),
            &[pod("kv-0", true), pod("kv-1", true)],
            &steady,
        );
        assert_eq!((s.ready_members, s.phase), (2, Some(ClusterPhase::Running)));
    }

    /// A member the CORRUPT alarm names: its entry says so, Degraded=True MemberCorrupt names
    /// it with what the plan does about it, the Warning is new once; after its removal the
    /// alarm still raised is said until disarmed, then Degraded clears.
    #[test]
    fn a_corrupt_member_is_reported_once_and_cleared() {
        use crate::members::{Alarm, MemberHealth, MemberInfo};
        let mut ec = cluster("kv", 3);
        let member = |id: u64, name: &str| {
            (
                MemberInfo {
                    id,
                    name: name.into(),
                    peer_urls: vec![],
                    client_urls: vec![],
                    learner: false,
                },
                Some(MemberHealth {
                    member_id: id,
                    leader: 1,
                    raft_index: 10,
                    version: "3.6.0".into(),
                    db_size: 1,
                    // Status lists every raised alarm on every member.
                    errors: vec!["memberID:2 alarm:CORRUPT ".into()],
                }),
            )
        };
        let alarm = vec![Alarm {
            member_id: 2,
            alarm: CORRUPT,
        }];
        let mut view = ClusterView {
            cluster_id: 1,
            members: vec![member(1, "kv-0"), member(2, "kv-1"), member(3, "kv-2")],
            alarms: alarm,
        };
        let pod = |name: &str| ObservedPod {
            name: name.into(),
            age: std::time::Duration::from_secs(60),
            unready_for: std::time::Duration::ZERO,
            ready: true,
            terminating: false,
            restore_failed: None,
            start_refused: None,
            image: None,
        };
        let pods = [pod("kv-0"), pod("kv-1"), pod("kv-2")];
        let step = |step| plan::Plan {
            step,
            warnings: vec![],
            next_ordinal: 3,
            upgrade: None,
        };
        let degraded = |s: &EtcdClusterStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Degraded")
                .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
                .expect("Degraded")
        };
        let removing = step(Step::RemoveMember {
            id: 2,
            name: "kv-1".into(),
            reason: plan::RemoveReason::Corrupt,
        });
        let s = build(&ec, Some(&view), &pods, &removing);
        assert!(
            s.members.iter().all(|m| m.healthy),
            "alarms are not member errors"
        );
        assert_eq!(s.members[1].alarms, ["CORRUPT"]);
        assert_eq!(
            s.members[1].corrupt.as_deref(),
            Some("the CORRUPT alarm is raised for it")
        );
        let (st, reason, msg) = degraded(&s);
        assert_eq!((st.as_str(), reason.as_str()), ("True", MEMBER_CORRUPT));
        assert_eq!(
            msg,
            "member kv-1 (2) is corrupt: the CORRUPT alarm is raised for it; replacing it"
        );
        let events = new_corruptions(ec.status.as_ref(), &s);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, "kv-1");
        assert!(
            events[0].1.contains("member kv-1 (2) is corrupt"),
            "{:?}",
            events
        );
        // Seen before: no second Event, and a wait says why.
        ec.status = Some(s);
        let waiting = step(Step::Wait {
            reason: "member kv-1 is corrupt; removing it would lose quorum".into(),
        });
        let s = build(&ec, Some(&view), &pods, &waiting);
        assert!(new_corruptions(ec.status.as_ref(), &s).is_empty());
        assert!(degraded(&s).2.ends_with("removing it would lose quorum"));
        // Removed, the alarm not yet disarmed.
        view.members.remove(1);
        let s = build(
            &ec,
            Some(&view),
            &pods[..],
            &step(Step::DisarmAlarm { id: 2 }),
        );
        let (st, reason, msg) = degraded(&s);
        assert_eq!((st.as_str(), reason.as_str()), ("True", MEMBER_CORRUPT));
        assert!(msg.contains("removed member(s) 2 is still raised"), "{msg}");
        // Disarmed: nothing degraded.
        view.alarms.clear();
        let s = build(
            &ec,
            Some(&view),
            &[pod("kv-0"), pod("kv-2")],
            &step(Step::Steady),
        );
        assert_eq!(degraded(&s).0, "False");
        // An alarm for member 0 names nobody and stays Degraded.
        view.alarms = vec![Alarm {
            member_id: 0,
            alarm: CORRUPT,
        }];
        let s = build(
            &ec,
            Some(&view),
            &[pod("kv-0"), pod("kv-2")],
            &step(Step::Steady),
        );
        assert!(degraded(&s).2.contains("whole cluster"));
    }

    #[test]
    fn an_even_size_warning_is_new_once_per_spec_change() {
        let mut ec = cluster("kv", 4);
        ec.metadata.generation = Some(2);
        let warnings = crate::plan::validate_replicas(4).expect("valid");
        assert!(warnings_are_new(&ec, &warnings), "first time");
        let p = plan::Plan {
            // Whatever the step and the Degraded reason of later reconciles.
            step: Step::AddLearner {
                name: "kv-3".into(),
            },
            warnings: warnings.clone(),
            next_ordinal: 4,
            upgrade: None,
        };
        ec.status = Some(build(&ec, None, &[], &p));
        assert!(!warnings_are_new(&ec, &warnings), "this spec was seen");
        ec.metadata.generation = Some(3);
        let six = crate::plan::validate_replicas(6).expect("valid");
        assert!(warnings_are_new(&ec, &six), "a changed spec");
        assert!(!warnings_are_new(&ec, &[]), "no warning");
    }

    #[test]
    fn a_refusal_is_degraded_with_the_message_and_kept_until_cleared() {
        let mut ec = cluster("kv", 3);
        let p = plan::Plan {
            step: Step::BootstrapSeed {
                name: "kv-0".into(),
            },
            warnings: vec![],
            next_ordinal: 1,
            upgrade: None,
        };
        let plain = build(&ec, None, &[], &p);
        assert_eq!(keep_refusal(&ec, &plain), plain, "nothing reported yet");
        let msg = "apply Pod kv-0: pods \"kv-0\" is forbidden: violates PodSecurity";
        let r = refused(&ec, plain.clone(), msg);
        let degraded = r
            .conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .expect("Degraded");
        assert_eq!(
            (
                degraded.status.as_str(),
                degraded.reason.as_str(),
                degraded.message.as_str()
            ),
            ("True", REFUSED, msg)
        );
        assert_eq!(r.phase, Some(ClusterPhase::Degraded));
        assert_eq!(r.conditions.len(), 3);
        ec.status = Some(r.clone());
        assert_eq!(keep_refusal(&ec, &plain), r, "the retry keeps it");
    }
}
