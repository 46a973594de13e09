//! The Kubernetes Event each applied step leaves on its `EtcdCluster`: reason and note.
//!
//! Owns every Event text of the operator, so `kubectl describe` reads the same whatever path
//! applied the step. Pure: it must not publish anything (that is `apply::Applier::publish`)
//! and must not look at anything but the step and what executing it returned.

use crate::executor::StepOutcome;
use crate::plan::{RemoveReason, Step};

/// One Event: `reason` is a CamelCase machine word, `note` the sentence for humans, `member`
/// the member (and pod) the step was about; it becomes the Event's `related` object, so
/// `kubectl get events --field-selector related.name=...` finds a member's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepEvent {
    pub reason: &'static str,
    pub note: String,
    pub member: Option<String>,
}

/// The Event of a step that was applied; `None` for steps that change nothing (and for a step
/// whose execution did nothing).
pub fn for_step(step: &Step, outcome: &StepOutcome) -> Option<StepEvent> {
    if *outcome == StepOutcome::Idle {
        return None;
    }
    let (reason, note) = match step {
        Step::BootstrapSeed { name } => {
            ("MemberBootstrapped", format!("started seed member {name}"))
        }
        Step::AddLearner { name } => {
            let note = match outcome {
                StepOutcome::Added { id } => format!("added learner {name} ({id:x})"),
                _ => format!("added learner {name}"),
            };
            ("MemberAdded", note)
        }
        Step::CreatePod { name } => ("MemberPodCreated", format!("created pod of member {name}")),
        Step::PromoteLearner { id, name } => (
            "MemberPromoted",
            format!("promoted learner {name} ({id:x}) to voter"),
        ),
        Step::MoveLeader { from, to } => (
            "LeaderMoved",
            format!("moved leadership from {from:x} to {to:x}"),
        ),
        Step::RemoveMember { id, name, reason } => (
            "MemberRemoved",
            format!("removed member {name} ({id:x}): {}", why(*reason)),
        ),
        Step::RestartMember { id, name, from, to } => (
            "MemberRestarted",
            format!(
                "restarted member {name} ({id:x}) on its data to upgrade it from {from} to {to}"
            ),
        ),
        Step::DeletePod { name } => (
            "MemberDeleted",
            format!("deleted pod and data of former member {name}"),
        ),
        Step::DisarmAlarm { id } => (
            "AlarmDisarmed",
            format!(
                "disarmed the CORRUPT alarm of removed member {id:x}; writes are accepted again"
            ),
        ),
        Step::Invalid { .. } | Step::Wait { .. } | Step::Steady => return None,
    };
    Some(StepEvent {
        reason,
        note,
        member: member_of(step).map(str::to_string),
    })
}

/// The Event of a certificate renewal: the Secrets rewritten in place. Members reload them
/// from their volumes, so the note says no member restarts.
pub fn for_renewal(renewed: &[String]) -> Option<StepEvent> {
    if renewed.is_empty() {
        return None;
    }
    Some(StepEvent {
        reason: "CertificatesRenewed",
        note: format!(
            "renewed certificates in {}; members reload them without a restart",
            renewed.join(", ")
        ),
        member: None,
    })
}

/// The Events of a CA rotation's steps, one per step taken: which Secrets now trust, are
/// issued by, or trust only the new CA. Each step has its own reason, so a filter on the
/// reason finds one step.
pub fn for_rotation(rotated: &[(u8, String)]) -> Vec<StepEvent> {
    [
        (1, "CATrustExtended"),
        (2, "CertificatesReissued"),
        (3, "OldCARetired"),
    ]
    .into_iter()
    .filter_map(|(step, reason)| {
        let notes: Vec<&str> = rotated
            .iter()
            .filter(|(s, _)| *s == step)
            .map(|(_, n)| n.as_str())
            .collect();
        (!notes.is_empty()).then(|| StepEvent {
            reason,
            note: notes.join("; "),
            member: None,
        })
    })
    .collect()
}

/// The member a step is about; `MoveLeader` is about two members named only by id.
fn member_of(step: &Step) -> Option<&str> {
    match step {
        Step::BootstrapSeed { name }
        | Step::AddLearner { name }
        | Step::CreatePod { name }
        | Step::PromoteLearner { name, .. }
        | Step::RemoveMember { name, .. }
        | Step::RestartMember { name, .. }
        | Step::DeletePod { name } => Some(name),
        Step::MoveLeader { .. }
        | Step::DisarmAlarm { .. }
        | Step::Invalid { .. }
        | Step::Wait { .. }
        | Step::Steady => None,
    }
}

fn why(reason: RemoveReason) -> &'static str {
    match reason {
        RemoveReason::ScaleDown => "scale down",
        RemoveReason::Failed => "unhealthy past the grace period",
        RemoveReason::DataLost => "data lost",
        RemoveReason::LearnerStuck => "learner did not catch up",
        RemoveReason::LearnerNotNeeded => "learner no longer needed",
        RemoveReason::Corrupt => "its data is corrupt",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row per step: what `kubectl describe` shows after it was applied.
    #[test]
    fn every_step_has_its_event() {
        let name = || "kv-1".to_string();
        let removed = |reason| Step::RemoveMember {
            id: 0xab,
            name: name(),
            reason,
        };
        let applied = StepOutcome::Applied;
        // (step, what executing it returned, want: reason and note)
        type Row = (Step, StepOutcome, Option<(&'static str, &'static str)>);
        let mut cases: Vec<Row> = vec![
            (
                Step::BootstrapSeed {
                    name: "kv-0".into(),
                },
                applied,
                Some(("MemberBootstrapped", "started seed member kv-0")),
            ),
            (
                Step::AddLearner { name: name() },
                StepOutcome::Added { id: 0x1f },
                Some(("MemberAdded", "added learner kv-1 (1f)")),
            ),
            (
                Step::CreatePod { name: name() },
                applied,
                Some(("MemberPodCreated", "created pod of member kv-1")),
            ),
            (
                Step::PromoteLearner {
                    id: 0x1f,
                    name: name(),
                },
                applied,
                Some(("MemberPromoted", "promoted learner kv-1 (1f) to voter")),
            ),
            (
                Step::MoveLeader { from: 0xa, to: 0xb },
                applied,
                Some(("LeaderMoved", "moved leadership from a to b")),
            ),
            (
                Step::DeletePod { name: name() },
                applied,
                Some((
                    "MemberDeleted",
                    "deleted pod and data of former member kv-1",
                )),
            ),
            (
                Step::DisarmAlarm { id: 0xab },
                applied,
                Some((
                    "AlarmDisarmed",
                    "disarmed the CORRUPT alarm of removed member ab; writes are accepted again",
                )),
            ),
            (
                Step::Wait {
                    reason: "later".into(),
                },
                StepOutcome::Idle,
                None,
            ),
            (Step::Steady, StepOutcome::Idle, None),
            (
                Step::Invalid {
                    message: "bad".into(),
                },
                StepOutcome::Idle,
                None,
            ),
            // A step that did nothing leaves no Event, whatever it was.
            (Step::CreatePod { name: name() }, StepOutcome::Idle, None),
        ];
        for (reason, note) in [
            (
                RemoveReason::ScaleDown,
                "removed member kv-1 (ab): scale down",
            ),
            (
                RemoveReason::Failed,
                "removed member kv-1 (ab): unhealthy past the grace period",
            ),
            (
                RemoveReason::DataLost,
                "removed member kv-1 (ab): data lost",
            ),
            (
                RemoveReason::LearnerStuck,
                "removed member kv-1 (ab): learner did not catch up",
            ),
            (
                RemoveReason::LearnerNotNeeded,
                "removed member kv-1 (ab): learner no longer needed",
            ),
            (
                RemoveReason::Corrupt,
                "removed member kv-1 (ab): its data is corrupt",
            ),
        ] {
            cases.push((removed(reason), applied, Some(("MemberRemoved", note))));
        }
        for (step, outcome, want) in cases {
            let got = for_step(&step, &outcome);
            let got = got.as_ref().map(|e| (e.reason, e.note.as_str()));
            assert_eq!(got, want, "{step:?}");
        }
    }

    /// Events of one reason about different members must not share a series (a real API
    /// server showed `added learner kv-1 (x6)` after kv-2..kv-6 were added): each names its
    /// member, which the publisher makes the Event's related object.
    #[test]
    fn each_member_step_names_its_member() {
        let added = |n: &str| {
            for_step(
                &Step::AddLearner { name: n.into() },
                &StepOutcome::Added { id: 1 },
            )
            .and_then(|e| e.member)
        };
        assert_eq!(added("kv-1").as_deref(), Some("kv-1"));
        assert_ne!(added("kv-1"), added("kv-2"));
        let moved = for_step(&Step::MoveLeader { from: 1, to: 2 }, &StepOutcome::Applied);
        assert_eq!(moved.and_then(|e| e.member), None);
    }
}
