//! The `EtcdCluster` status: phase, conditions, members, leader, cluster id and the name
//! counter, from the observation and the plan.
//!
//! Owns what status says and when it is written. `build` is pure; `write` hands the result to
//! `apply` and must stay the only status write of a reconcile. Nothing here decides a step.

use crate::apply::Applier;
use crate::members::ClusterView;
use crate::plan::{self, Step};
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

/// Status from the plan and the observation.
pub fn build(ec: &EtcdCluster, view: Option<&ClusterView>, p: &plan::Plan) -> EtcdClusterStatus {
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
    let ready = i32::try_from(members.iter().filter(|m| m.healthy).count()).unwrap_or(i32::MAX);
    let available = voters > 0 && healthy_voters >= plan::quorum(voters);
    let gen = ec.metadata.generation;
    let mut conds = Vec::new();
    let (progressing, progress_msg) = match &p.step {
        Step::Steady => (false, "members match the spec".to_string()),
        Step::Invalid { .. } => (false, "waiting for a valid spec".to_string()),
        Step::Wait { reason } => (true, reason.clone()),
        other => (true, other.label().to_string()),
    };
    let (degraded, degraded_reason, degraded_msg) = match &p.step {
        Step::Invalid { message } => (true, "InvalidSpec", message.clone()),
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
        _ if !p.warnings.is_empty() => (false, "SpecWarning", p.warnings.join("; ")),
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
    }
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
        let s = build(&ec, Some(&view), &p);
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
}
