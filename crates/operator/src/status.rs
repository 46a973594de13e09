//! The `EtcdCluster` status: phase, conditions, members, leader, cluster id and the name
//! counter, from the observation and the plan.
//!
//! Owns what status says and when it is written. `build`, `refused` and `keep_refusal` are
//! pure; `write` hands the result to `apply` and is the only way status is written. Nothing
//! here decides a step.

use crate::apply::Applier;
use crate::members::ClusterView;
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
            v.members
                .iter()
                .map(|(m, h)| MemberStatus {
                    name: ClusterView::name_of(m),
                    id: format!("{:x}", m.id),
                    learner: m.learner,
                    leader: Some(m.id) == leader,
                    healthy: h.as_ref().is_some_and(|h| h.errors.is_empty()),
                    version: h.as_ref().map(|h| h.version.clone()),
                    db_size: h.as_ref().map(|h| h.db_size),
                })
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

/// Reason of `Degraded` when the seed's restore init container failed (`spec.restore`).
pub const RESTORE_FAILED: &str = "RestoreFailed";

/// The `Degraded` message of a failed restore that `status` says and `old` did not: the
/// Warning Event to publish, once per failure message rather than on every reconcile.
pub fn new_restore_failure(
    old: Option<&EtcdClusterStatus>,
    status: &EtcdClusterStatus,
) -> Option<String> {
    let failure = |s: &EtcdClusterStatus| {
        s.conditions
            .iter()
            .find(|c| {
                c.type_ == condition::DEGRADED && c.status == "True" && c.reason == RESTORE_FAILED
            })
            .map(|c| c.message.clone())
    };
    let now = failure(status)?;
    (old.and_then(failure).as_ref() != Some(&now)).then_some(now)
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
        };
        let p = plan::Plan {
            step: Step::Wait {
                reason: "some members are unhealthy".into(),
            },
            warnings: vec![],
            next_ordinal: 3,
        };
        let pod = |name: &str, ready: bool| ObservedPod {
            name: name.into(),
            age: std::time::Duration::from_secs(60),
            unready_for: std::time::Duration::ZERO,
            ready,
            terminating: false,
            restore_failed: None,
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
        };
        let pod = |name: &str, ready: bool| ObservedPod {
            name: name.into(),
            age: std::time::Duration::from_secs(60),
            unready_for: std::time::Duration::ZERO,
            ready,
            terminating: false,
            restore_failed: None,
        };
        let steady = plan::Plan {
            step: Step::Steady,
            warnings: vec![],
            next_ordinal: 2,
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
