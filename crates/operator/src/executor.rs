//! Carrying out the one planned step: `execute` maps a `Step` onto the primitive actions of a
//! `StepExecutor`.
//!
//! Owns the meaning of each step (which member calls and workload changes it is made of, and
//! the `--initial-cluster` a started member gets); the implementations own only the "how": the
//! controller's Kubernetes one (`apply::KubeExecutor`: member API + pods and claims) and the
//! member-management tests' real-process one. It must not decide anything the planner decides
//! and must not touch the network itself: every effect goes through the trait.

use crate::build::{self, MemberStart};
use crate::plan::{Observed, Step};
use crate::Result;
use std::future::Future;
use tracing::{info, instrument};

/// What executing a step did, for its Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// The step changes nothing (`Wait`, `Steady`, `Invalid`).
    Idle,
    /// The step was carried out.
    Applied,
    /// `MemberAdd` succeeded and returned this member id.
    Added { id: u64 },
}

/// The primitive actions a step is made of. Member calls go through the etcd v3 API; the
/// workload calls create or delete whatever runs a member (a pod and its claim in Kubernetes,
/// a process and its data directory in the tests).
///
/// The futures are `Send` so that the controller's reconcile future stays `Send`.
pub trait StepExecutor {
    /// `MemberAdd` as a learner under the peer URL `member` will advertise; returns its id.
    fn add_learner(&mut self, member: &str) -> impl Future<Output = Result<u64>> + Send;
    /// `MemberPromote`.
    fn promote_learner(&mut self, id: u64) -> impl Future<Output = Result<()>> + Send;
    /// `MoveLeader` to `to`.
    fn move_leader(&mut self, to: u64) -> impl Future<Output = Result<()>> + Send;
    /// `MemberRemove`.
    fn remove_member(&mut self, id: u64) -> impl Future<Output = Result<()>> + Send;
    /// `AlarmDisarm` of the CORRUPT alarm raised for member `id`.
    fn disarm_alarm(&mut self, id: u64) -> impl Future<Output = Result<()>> + Send;
    /// Starts a member with its data volume and flags.
    fn start_member(&mut self, start: &MemberStart) -> impl Future<Output = Result<()>> + Send;
    /// Stops what runs member `member`, keeping its data, so that it starts again from the
    /// spec (`CreatePod`); already gone is fine.
    fn restart_member(&mut self, member: &str) -> impl Future<Output = Result<()>> + Send;
    /// Deletes what ran a former member and its data; already gone is fine.
    fn delete_member(&mut self, member: &str) -> impl Future<Output = Result<()>> + Send;
}

/// Carries out `step`, planned from `obs`.
#[instrument(skip_all, fields(step = step.label()))]
pub async fn execute<E: StepExecutor>(
    exec: &mut E,
    step: &Step,
    obs: &Observed,
) -> Result<StepOutcome> {
    let outcome = match step {
        Step::BootstrapSeed { .. } | Step::CreatePod { .. } => {
            match build::member_start(step, obs) {
                Some(start) => exec.start_member(&start).await?,
                None => return Ok(StepOutcome::Idle),
            }
            StepOutcome::Applied
        }
        Step::AddLearner { name } => StepOutcome::Added {
            id: exec.add_learner(name).await?,
        },
        Step::PromoteLearner { id, .. } => {
            exec.promote_learner(*id).await?;
            StepOutcome::Applied
        }
        Step::MoveLeader { to, .. } => {
            exec.move_leader(*to).await?;
            StepOutcome::Applied
        }
        Step::RemoveMember { id, .. } => {
            exec.remove_member(*id).await?;
            StepOutcome::Applied
        }
        Step::RestartMember { name, .. } => {
            exec.restart_member(name).await?;
            StepOutcome::Applied
        }
        Step::DeletePod { name } => {
            exec.delete_member(name).await?;
            StepOutcome::Applied
        }
        Step::DisarmAlarm { id } => {
            exec.disarm_alarm(*id).await?;
            StepOutcome::Applied
        }
        Step::Invalid { .. } | Step::Wait { .. } | Step::Steady => StepOutcome::Idle,
    };
    if outcome != StepOutcome::Idle {
        info!(step = ?step, "step applied");
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ObservedMember, RemoveReason};
    use crate::resources::InitialState;
    use std::collections::BTreeSet;

    /// Records the calls instead of making them.
    #[derive(Default)]
    struct Recorder(Vec<String>);

    impl StepExecutor for Recorder {
        async fn add_learner(&mut self, member: &str) -> Result<u64> {
            self.0.push(format!("add_learner {member}"));
            Ok(0x42)
        }
        async fn promote_learner(&mut self, id: u64) -> Result<()> {
            self.0.push(format!("promote {id}"));
            Ok(())
        }
        async fn move_leader(&mut self, to: u64) -> Result<()> {
            self.0.push(format!("move_leader {to}"));
            Ok(())
        }
        async fn remove_member(&mut self, id: u64) -> Result<()> {
            self.0.push(format!("remove {id}"));
            Ok(())
        }
        async fn disarm_alarm(&mut self, id: u64) -> Result<()> {
            self.0.push(format!("disarm {id}"));
            Ok(())
        }
        async fn start_member(&mut self, start: &MemberStart) -> Result<()> {
            self.0.push(format!(
                "start {} {:?} {:?}",
                start.name, start.initial_members, start.state
            ));
            Ok(())
        }
        async fn restart_member(&mut self, member: &str) -> Result<()> {
            self.0.push(format!("restart {member}"));
            Ok(())
        }
        async fn delete_member(&mut self, member: &str) -> Result<()> {
            self.0.push(format!("delete {member}"));
            Ok(())
        }
    }

    fn observed(members: &[(&str, bool)]) -> Observed {
        Observed {
            replicas: 3,
            members: Some(
                members
                    .iter()
                    .enumerate()
                    .map(|(i, (name, learner))| ObservedMember {
                        id: u64::try_from(i).unwrap_or(0),
                        name: (*name).to_string(),
                        learner: *learner,
                        started: !learner,
                        healthy: !learner,
                        leader: i == 0,
                        raft_index: None,
                        corrupt: None,
                        version: None,
                    })
                    .collect(),
            ),
            pods: vec![],
            claims: BTreeSet::new(),
            empty_dir: false,
            bootstrapped: true,
            next_ordinal: 2,
            corrupt_alarms: vec![],
            image: String::new(),
            expected_version: None,
        }
    }

    #[tokio::test]
    async fn each_step_makes_its_calls() {
        let obs = observed(&[("kv-0", false), ("kv-1", true)]);
        let name = || "kv-1".to_string();
        let cases: Vec<(Step, String, StepOutcome)> = vec![
            (
                Step::BootstrapSeed {
                    name: "kv-0".into(),
                },
                format!("start kv-0 [\"kv-0\"] {:?}", InitialState::New),
                StepOutcome::Applied,
            ),
            (
                Step::CreatePod { name: name() },
                format!(
                    "start kv-1 [\"kv-0\", \"kv-1\"] {:?}",
                    InitialState::Existing
                ),
                StepOutcome::Applied,
            ),
            (
                Step::AddLearner {
                    name: "kv-2".into(),
                },
                "add_learner kv-2".into(),
                StepOutcome::Added { id: 0x42 },
            ),
            (
                Step::PromoteLearner {
                    id: 1,
                    name: name(),
                },
                "promote 1".into(),
                StepOutcome::Applied,
            ),
            (
                Step::MoveLeader { from: 0, to: 1 },
                "move_leader 1".into(),
                StepOutcome::Applied,
            ),
            (
                Step::RemoveMember {
                    id: 1,
                    name: name(),
                    reason: RemoveReason::ScaleDown,
                },
                "remove 1".into(),
                StepOutcome::Applied,
            ),
            (
                Step::RestartMember {
                    id: 1,
                    name: name(),
                    from: "a".into(),
                    to: "b".into(),
                },
                "restart kv-1".into(),
                StepOutcome::Applied,
            ),
            (
                Step::DeletePod { name: name() },
                "delete kv-1".into(),
                StepOutcome::Applied,
            ),
            (
                Step::DisarmAlarm { id: 7 },
                "disarm 7".into(),
                StepOutcome::Applied,
            ),
            (Step::Steady, String::new(), StepOutcome::Idle),
            (
                Step::Wait {
                    reason: "later".into(),
                },
                String::new(),
                StepOutcome::Idle,
            ),
        ];
        for (step, want_call, want_outcome) in cases {
            let mut r = Recorder::default();
            let got = execute(&mut r, &step, &obs).await.expect("execute");
            assert_eq!(got, want_outcome, "{step:?}");
            assert_eq!(r.0.join("; "), want_call, "{step:?}");
        }
    }
}
