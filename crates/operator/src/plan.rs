//! Membership planning: desired spec + what was observed → the one next step.
//!
//! This is a pure function so that every rule (quorum safety, one change at a time, never
//! reusing names, surviving an operator crash between any two steps) is tested without a
//! cluster. It keeps no memory between reconciles: everything it needs is re-derived from the
//! member list, the pods and the status, which is what makes a crash at any point harmless.

use std::collections::BTreeSet;
use std::time::Duration;

/// Raft entries a learner may trail the leader by and still be promoted. etcd itself refuses a
/// promotion of a learner that is not "in sync"; staying well inside that avoids a failed call.
pub const CATCH_UP_LAG: u64 = 100;

/// Timing rules of the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanConfig {
    /// A voter unhealthy for longer than this is replaced (if quorum allows).
    pub unhealthy_grace: Duration,
    /// A learner that has not caught up after this long is removed and a fresh one added.
    pub catch_up_grace: Duration,
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            unhealthy_grace: Duration::from_secs(300),
            catch_up_grace: Duration::from_secs(600),
        }
    }
}

impl PlanConfig {
    /// These defaults with the grace periods `spec.repair` sets.
    pub fn with_repair(self, repair: &ferrokv_cluster_api::RepairSpec) -> Self {
        let secs = |v: Option<u32>, default: Duration| {
            v.map_or(default, |s| Duration::from_secs(u64::from(s)))
        };
        Self {
            unhealthy_grace: secs(repair.unhealthy_grace_seconds, self.unhealthy_grace),
            catch_up_grace: secs(repair.catch_up_grace_seconds, self.catch_up_grace),
        }
    }
}

/// One raft member as seen through `MemberList` and its own `Status` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedMember {
    pub id: u64,
    /// Member name derived from its peer URL host (a learner that never started has no name in
    /// etcd's member list, but its peer URL names its pod).
    pub name: String,
    pub learner: bool,
    /// Has run at least once (etcd reports a name only after the member started).
    pub started: bool,
    /// Its `Status` call answered.
    pub healthy: bool,
    pub leader: bool,
    /// Raft index from `Status`, to judge whether a learner has caught up.
    pub raft_index: Option<u64>,
    /// Why its data is known to be bad: the CORRUPT alarm names it, or it refuses to start
    /// on the corruption check and is the odd one out (`observe::corrupt_members`).
    pub corrupt: Option<String>,
    /// Server version from its `Status` (`None` when it did not answer).
    pub version: Option<String>,
}

/// One member pod (and its claim) as seen in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPod {
    pub name: String,
    /// How long the pod has existed.
    pub age: Duration,
    /// How long the pod has been not Ready (zero when Ready).
    pub unready_for: Duration,
    /// Its `Ready` condition is True (what the client Service and the PDB go by).
    pub ready: bool,
    /// Has a deletion timestamp: on its way out, but still listed.
    pub terminating: bool,
    /// The message of its restore init container's last run, when that failed and no run
    /// has succeeded since (a seed restoring from `spec.restore`).
    pub restore_failed: Option<String>,
    /// The termination message of its member container's last run, when that exited
    /// refusing to start on a corruption check and the container is not Ready since.
    pub start_refused: Option<String>,
    /// The image its member container runs; `None` when unknown, which counts as the desired
    /// one (nothing to roll).
    pub image: Option<String>,
}

/// Everything the planner looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Desired voters from the spec.
    pub replicas: i32,
    /// `None` when no member answered the member list call.
    pub members: Option<Vec<ObservedMember>>,
    pub pods: Vec<ObservedPod>,
    /// Names of the member data claims that exist.
    pub claims: BTreeSet<String>,
    /// Members keep data in an `emptyDir`, which dies with the pod.
    pub empty_dir: bool,
    /// A cluster id was ever recorded in status (so "no answer" is an outage, not a bootstrap).
    pub bootstrapped: bool,
    /// `status.nextOrdinal`.
    pub next_ordinal: u64,
    /// Member ids the raised CORRUPT alarms name (0: the whole cluster, no member known).
    pub corrupt_alarms: Vec<u64>,
    /// The member image the spec asks for (`resources::image`): pods on another one are rolled.
    pub image: String,
    /// The `Status` version a member on `image` must report, when the image says it (an etcd
    /// image's tag); ferrokv reports the etcd API version it serves, not its release, so
    /// `None` there.
    pub expected_version: Option<String>,
}

/// The one next action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The spec cannot be acted on; wait for a change.
    Invalid { message: String },
    /// Create the single seed member pod with `--initial-cluster-state=new`.
    BootstrapSeed { name: String },
    /// `MemberAdd` as learner; its pod is created by the next reconcile.
    AddLearner { name: String },
    /// Create the pod of a member that is in the member list (`--initial-cluster-state=existing`).
    CreatePod { name: String },
    /// `MemberPromote` a learner that caught up.
    PromoteLearner { id: u64, name: String },
    /// `MoveLeader` to `to` before `from` is removed.
    MoveLeader { from: u64, to: u64 },
    /// Stop member `name` for an image upgrade, keeping its data: its pod is deleted (the claim
    /// stays) and the next reconcile's `CreatePod` starts it again on `to`.
    RestartMember {
        id: u64,
        name: String,
        from: String,
        to: String,
    },
    /// `MemberRemove`; its pod and claim are deleted by the next reconcile.
    RemoveMember {
        id: u64,
        name: String,
        reason: RemoveReason,
    },
    /// Delete the pod and claim of a name that is no longer a member.
    DeletePod { name: String },
    /// `AlarmDisarm` of the CORRUPT alarm of a member that is no longer in the cluster (it was
    /// replaced), so that writes are accepted again.
    DisarmAlarm { id: u64 },
    /// Nothing safe to do now; look again later.
    Wait { reason: String },
    /// Members match the spec.
    Steady,
}

impl Step {
    /// The variant's name: metric label, `Progressing` reason and span field.
    pub fn label(&self) -> &'static str {
        match self {
            Step::Invalid { .. } => "Invalid",
            Step::BootstrapSeed { .. } => "BootstrapSeed",
            Step::AddLearner { .. } => "AddLearner",
            Step::CreatePod { .. } => "CreatePod",
            Step::PromoteLearner { .. } => "PromoteLearner",
            Step::MoveLeader { .. } => "MoveLeader",
            Step::RestartMember { .. } => "RestartMember",
            Step::RemoveMember { .. } => "RemoveMember",
            Step::DeletePod { .. } => "DeletePod",
            Step::DisarmAlarm { .. } => "DisarmAlarm",
            Step::Wait { .. } => "Wait",
            Step::Steady => "Steady",
        }
    }
}

/// Why a member is removed (goes into the Event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveReason {
    ScaleDown,
    Failed,
    DataLost,
    LearnerStuck,
    LearnerNotNeeded,
    /// Its data is corrupt: replaced at once (no grace), never on its old data.
    Corrupt,
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub step: Step,
    /// Problems worth a condition message that do not block (e.g. even sizes).
    pub warnings: Vec<String>,
    /// Value for `status.nextOrdinal`: above every name seen so far. A name handed out by this
    /// step is not counted until it is seen (as a member, pod or claim), so a failed `MemberAdd`
    /// does not burn a name, while a successful one can never be handed out again.
    pub next_ordinal: u64,
    /// The image roll under way, when some member runs another image than the spec's.
    pub upgrade: Option<Upgrade>,
}

/// Progress of a roll of the members onto a new image, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The image the members are rolled onto.
    pub image: String,
    /// Members that run it and are healthy, caught up and on its version.
    pub done: usize,
    pub total: usize,
    /// Why the roll stopped: a restarted member did not come back healthy on the new image
    /// (or reports another version). No other member is taken down until that changes.
    pub failed: Option<String>,
}

impl Plan {
    /// The answer to a spec that cannot be acted on, decided before anything is observed.
    pub fn invalid(message: String, next_ordinal: u64) -> Self {
        Plan {
            step: Step::Invalid { message },
            warnings: Vec::new(),
            next_ordinal,
            upgrade: None,
        }
    }
}

/// `<cluster>-<ordinal>`: member, pod and PVC name.
pub fn member_name(cluster: &str, ordinal: u64) -> String {
    format!("{cluster}-{ordinal}")
}

/// The ordinal of a member name of this cluster, if it is one.
pub fn ordinal_of(cluster: &str, name: &str) -> Option<u64> {
    name.strip_prefix(cluster)?.strip_prefix('-')?.parse().ok()
}

/// Majority of `n` voters.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// Checks the spec; `Err` is the condition message.
pub fn validate_replicas(replicas: i32) -> Result<Vec<String>, String> {
    let max = ferrokv_cluster_api::MAX_REPLICAS;
    if replicas < 1 {
        return Err(format!(
            "spec.replicas must be between 1 and {max}, got {replicas}"
        ));
    }
    if replicas > max {
        return Err(format!(
            "spec.replicas must be between 1 and {max}, got {replicas}: larger clusters slow every write without adding useful fault tolerance"
        ));
    }
    if replicas % 2 == 0 {
        return Ok(vec![format!(
            "spec.replicas is {replicas}: an even size tolerates no more failures than {}",
            replicas - 1
        )]);
    }
    Ok(Vec::new())
}

/// Checks the whole spec before anything is read or written; `Err` is the condition message.
/// The schema already refuses what this refuses; this catches objects stored before the
/// schema said so (or written with validation off), which would otherwise fail only when the
/// API server refuses a claim or pod built from them.
pub fn validate_spec(spec: &ferrokv_cluster_api::EtcdClusterSpec) -> Result<Vec<String>, String> {
    let warnings = validate_replicas(spec.replicas)?;
    let mut quantities: Vec<(String, &str)> = Vec::new();
    if let Some(size) = &spec.storage.size {
        quantities.push(("spec.storage.size".into(), size.0.as_str()));
    }
    if let Some(r) = &spec.resources {
        for (field, map) in [("limits", &r.limits), ("requests", &r.requests)] {
            for (name, q) in map.iter().flatten() {
                quantities.push((format!("spec.resources.{field}.{name}"), q.0.as_str()));
            }
        }
    }
    for (field, q) in quantities {
        if !is_quantity(q) {
            return Err(format!(
                "{field} must be a quantity such as 1Gi, 500m or 2, got {q:?}"
            ));
        }
    }
    if let Some(b) = &spec.backup {
        crate::backup::validate(b)?;
    }
    if let Some(r) = &spec.restore {
        crate::backup::validate_store(&r.store, "spec.restore")?;
    }
    Ok(warnings)
}

/// Whether `s` is a Kubernetes quantity: `ferrokv_cluster_api::QUANTITY_PATTERN`, by hand
/// (sign, decimal number, then a binary suffix, a decimal suffix or an exponent).
pub fn is_quantity(s: &str) -> bool {
    /// Length of the decimal number at the start of `s` (`12`, `1.5`, `1.`, `.5`), 0 if none.
    fn number(s: &[u8]) -> usize {
        let digits = |from: usize| s[from..].iter().take_while(|b| b.is_ascii_digit()).count();
        let int = digits(0);
        if s.get(int) != Some(&b'.') {
            return int;
        }
        let frac = digits(int + 1);
        if int == 0 && frac == 0 {
            0
        } else {
            int + 1 + frac
        }
    }
    let b = s.as_bytes();
    let b = match b.first() {
        Some(b'+' | b'-') => &b[1..],
        _ => b,
    };
    let n = number(b);
    if n == 0 {
        return false;
    }
    match &b[n..] {
        [] => true,
        [b'K' | b'M' | b'G' | b'T' | b'P' | b'E', b'i'] => true,
        [b'n' | b'u' | b'm' | b'k' | b'M' | b'G' | b'T' | b'P' | b'E'] => true,
        [b'e' | b'E', rest @ ..] => {
            let rest = match rest.first() {
                Some(b'+' | b'-') => &rest[1..],
                _ => rest,
            };
            let n = number(rest);
            n > 0 && n == rest.len()
        }
        _ => false,
    }
}

/// Decides the next step.
pub fn plan(cluster: &str, obs: &Observed, cfg: &PlanConfig) -> Plan {
    let mut p = next_step(cluster, obs, cfg);
    // Disarming an alarm touches no pod, so it does not race with one going away.
    let acts = !matches!(
        p.step,
        Step::Steady | Step::Invalid { .. } | Step::DisarmAlarm { .. }
    );
    if acts && obs.pods.iter().any(|p| p.terminating) {
        // A pod on its way out would make the next step race with its deletion.
        p.step = Step::Wait {
            reason: "waiting for a terminating pod to go away".into(),
        };
    }
    p
}

/// The step the rules pick, before the terminating-pod rule of `plan`.
fn next_step(cluster: &str, obs: &Observed, cfg: &PlanConfig) -> Plan {
    let max_seen = obs
        .pods
        .iter()
        .map(|p| p.name.as_str())
        .chain(obs.members.iter().flatten().map(|m| m.name.as_str()))
        .chain(obs.claims.iter().map(String::as_str))
        .filter_map(|n| ordinal_of(cluster, n))
        .max();
    // Never reuse a name: the counter in status and every name still visible both bound it.
    let next_ordinal = obs.next_ordinal.max(max_seen.map_or(0, |m| m + 1));
    let out = |step: Step, warnings: Vec<String>, next: u64| Plan {
        step,
        warnings,
        next_ordinal: next,
        upgrade: None,
    };

    let warnings = match validate_replicas(obs.replicas) {
        Ok(w) => w,
        Err(message) => return Plan::invalid(message, next_ordinal),
    };
    let desired = usize::try_from(obs.replicas).unwrap_or(0);

    let Some(members) = obs.members.as_ref() else {
        if obs.pods.is_empty() && !obs.bootstrapped {
            // A claim left by a seed whose pod was never created (its apply failed after the
            // claim's) is that seed's: reuse name and claim, so retries burn no names and leak
            // no claims. No pod ever ran a member on it, so no member id carries that name.
            let name = obs
                .claims
                .iter()
                .filter(|c| ordinal_of(cluster, c).is_some())
                .min_by_key(|c| ordinal_of(cluster, c))
                .cloned()
                .unwrap_or_else(|| member_name(cluster, next_ordinal));
            return out(Step::BootstrapSeed { name }, warnings, next_ordinal);
        }
        let failed_restore = obs.pods.iter().find(|p| p.restore_failed.is_some());
        let reason = if obs.bootstrapped && obs.pods.is_empty() {
            "all members are gone; the cluster needs a restore".to_string()
        } else if let Some(p) = failed_restore {
            format!("waiting for the restore of {} to succeed", p.name)
        } else {
            "waiting for a member to answer".to_string()
        };
        return out(Step::Wait { reason }, warnings, next_ordinal);
    };

    let pod = |name: &str| obs.pods.iter().find(|p| p.name == name);
    let voters: Vec<&ObservedMember> = members.iter().filter(|m| !m.learner).collect();
    let learners: Vec<&ObservedMember> = members.iter().filter(|m| m.learner).collect();
    let healthy_voters = voters.iter().filter(|m| m.healthy).count();
    let has_quorum = healthy_voters >= quorum(voters.len());
    let can_remove = |m: &ObservedMember| keeps_quorum(&voters, m, Leave::Removed, |v| v.healthy);
    // A broken member is replaced only when removing it is safe; otherwise everything waits.
    let remove_or_wait = |m: &ObservedMember, reason, problem: &str| {
        if can_remove(m) {
            Step::RemoveMember {
                id: m.id,
                name: m.name.clone(),
                reason,
            }
        } else {
            Step::Wait {
                reason: format!(
                    "member {} {problem} but removing it would lose quorum",
                    m.name
                ),
            }
        }
    };

    // 0. The CORRUPT alarm of a member that was removed (replaced) is disarmed, so writes are
    //    accepted again. etcd keeps an alarm after its member is removed and disarms by
    //    (member, type) whatever the member list says; only alarms of former members are
    //    disarmed here: one of a current member stays until that member is replaced.
    if let Some(&id) = obs
        .corrupt_alarms
        .iter()
        .find(|&&id| id != 0 && !members.iter().any(|m| m.id == id))
    {
        return out(Step::DisarmAlarm { id }, warnings, next_ordinal);
    }

    // 1. Pods whose member is gone (removed, or a seed/learner that never joined): clean up.
    let member_names: BTreeSet<&str> = members.iter().map(|m| m.name.as_str()).collect();
    let orphan = obs
        .pods
        .iter()
        .map(|p| p.name.as_str())
        .chain(obs.claims.iter().map(String::as_str));
    if let Some(name) = orphan.filter(|n| !member_names.contains(n)).min() {
        return out(
            Step::DeletePod {
                name: name.to_string(),
            },
            warnings,
            next_ordinal,
        );
    }

    // 2. A learner the spec no longer needs (spec shrank during a scale-up) goes first, before
    //    it is started or promoted.
    if let Some(l) = learners.first() {
        if voters.len() >= desired {
            let step = Step::RemoveMember {
                id: l.id,
                name: l.name.clone(),
                reason: RemoveReason::LearnerNotNeeded,
            };
            return out(step, warnings, next_ordinal);
        }
    }

    // 3. Members that lost their data: a started member without its volume would rejoin empty.
    for m in members.iter().filter(|m| m.started) {
        let lost = if obs.empty_dir {
            pod(&m.name).is_none()
        } else {
            !obs.claims.contains(&m.name)
        };
        if lost {
            let step = remove_or_wait(m, RemoveReason::DataLost, "lost its data");
            return out(step, warnings, next_ordinal);
        }
    }

    // 3b. A corrupt member is replaced at once, when that is safe.
    if let Some(m) = members.iter().find(|m| m.corrupt.is_some()) {
        if let Some(step) = replace_corrupt(cluster, m, &voters, &learners, desired) {
            return out(step, warnings, next_ordinal);
        }
    }

    // 4. Members in the list without a pod (crash after MemberAdd, or a deleted pod): start them.
    if let Some(m) = members.iter().find(|m| pod(&m.name).is_none()) {
        return out(
            Step::CreatePod {
                name: m.name.clone(),
            },
            warnings,
            next_ordinal,
        );
    }

    // 5. Voters unhealthy past the grace period are replaced, never at the cost of quorum.
    //    Not while an image roll is under way (rule 9): a member down on the old image is
    //    restarted onto the new one first, which costs no data; one that fails on the new
    //    image would be replaced by another on the same image, so the roll stops there
    //    instead until the spec changes (setting the image back restarts it on that one).
    let rolling = members.iter().any(|m| !on_image(obs, &m.name));
    for m in voters.iter().filter(|m| !m.healthy && !rolling) {
        let unready = pod(&m.name).map_or(Duration::MAX, |p| p.unready_for);
        if unready >= cfg.unhealthy_grace {
            let step = remove_or_wait(m, RemoveReason::Failed, "is unhealthy");
            return out(step, warnings, next_ordinal);
        }
    }

    // 6. At most one learner at a time: promote it once caught up, replace it if stuck.
    if let Some(l) = learners.first() {
        let leader_index = members.iter().find(|m| m.leader).and_then(|m| m.raft_index);
        let caught_up = match (l.healthy, l.raft_index, leader_index) {
            (true, Some(li), Some(ld)) => li + CATCH_UP_LAG >= ld,
            _ => false,
        };
        if caught_up && has_quorum {
            return out(
                Step::PromoteLearner {
                    id: l.id,
                    name: l.name.clone(),
                },
                warnings,
                next_ordinal,
            );
        }
        let age = pod(&l.name).map_or(Duration::ZERO, |p| p.age);
        if age >= cfg.catch_up_grace {
            let step = Step::RemoveMember {
                id: l.id,
                name: l.name.clone(),
                reason: RemoveReason::LearnerStuck,
            };
            return out(step, warnings, next_ordinal);
        }
        let reason = format!("waiting for learner {} to catch up", l.name);
        return out(Step::Wait { reason }, warnings, next_ordinal);
    }

    if !has_quorum {
        let reason = format!(
            "only {healthy_voters} of {} voters are healthy",
            voters.len()
        );
        return out(Step::Wait { reason }, warnings, next_ordinal);
    }

    // 7. Grow by one learner.
    if voters.len() < desired {
        let name = member_name(cluster, next_ordinal);
        return out(Step::AddLearner { name }, warnings, next_ordinal);
    }

    // 8. Shrink by one voter: unhealthy first, else the newest; leadership moves away first.
    if voters.len() > desired {
        let victim = voters
            .iter()
            .filter(|m| !m.healthy)
            .max_by_key(|m| ordinal_of(cluster, &m.name))
            .or_else(|| voters.iter().max_by_key(|m| ordinal_of(cluster, &m.name)));
        if let Some(v) = victim {
            if !can_remove(v) {
                let reason = format!("removing {} now would lose quorum", v.name);
                return out(Step::Wait { reason }, warnings, next_ordinal);
            }
            if v.leader {
                let target = voters
                    .iter()
                    .filter(|m| m.id != v.id && m.healthy)
                    .min_by_key(|m| ordinal_of(cluster, &m.name));
                if let Some(t) = target {
                    return out(
                        Step::MoveLeader {
                            from: v.id,
                            to: t.id,
                        },
                        warnings,
                        next_ordinal,
                    );
                }
            }
            let step = Step::RemoveMember {
                id: v.id,
                name: v.name.clone(),
                reason: RemoveReason::ScaleDown,
            };
            return out(step, warnings, next_ordinal);
        }
    }

    // 9. Roll the members onto the spec's image, one at a time.
    if rolling {
        let leader_index = members.iter().find(|m| m.leader).and_then(|m| m.raft_index);
        let (step, upgrade) = roll(cluster, obs, cfg, &voters, leader_index);
        return Plan {
            step,
            warnings,
            next_ordinal,
            upgrade: Some(upgrade),
        };
    }

    // Renewed certificates need no step: members reload them from their Secret volumes at
    // the next handshake (ferrokv and etcd alike), so no pod is restarted for a renewal.
    if members.iter().any(|m| !m.healthy) {
        let reason = "some members are unhealthy".to_string();
        return out(Step::Wait { reason }, warnings, next_ordinal);
    }
    out(Step::Steady, warnings, next_ordinal)
}

/// The step for corrupt member `m`: its removal (leadership moved off it first), or a wait
/// that says why not; `None` while a replacement or scale-up is in flight, which goes on first
/// (its learner is added, started and promoted under the alarm: membership changes are not
/// refused).
fn replace_corrupt(
    cluster: &str,
    m: &ObservedMember,
    voters: &[&ObservedMember],
    learners: &[&ObservedMember],
    desired: usize,
) -> Option<Step> {
    let remove = Step::RemoveMember {
        id: m.id,
        name: m.name.clone(),
        reason: RemoveReason::Corrupt,
    };
    if m.learner {
        return Some(remove);
    }
    let wait = |why: String| {
        Some(Step::Wait {
            reason: format!("member {} is corrupt; {why}", m.name),
        })
    };
    if !learners.is_empty() || voters.len() < desired {
        // A replacement (or a scale-up) is under way: it finishes first, one change at a time.
        return None;
    }
    // The members that stay must keep a quorum of their own: healthy and not corrupt, since a
    // new member catches up from the leader's snapshot, which must be good data.
    let good = |v: &ObservedMember| v.healthy && v.corrupt.is_none();
    if !keeps_quorum(voters, m, Leave::Removed, good) {
        let remaining = voters.len().saturating_sub(1);
        let good_after = voters.iter().filter(|v| v.id != m.id && good(v)).count();
        return wait(format!(
            "removing it would leave {good_after} healthy member(s) of {remaining}, short of a \
             quorum of {}: it is kept until more members are healthy",
            quorum(remaining.max(1))
        ));
    }
    if m.leader {
        let target = voters
            .iter()
            .filter(|v| v.id != m.id && v.healthy && v.corrupt.is_none())
            .min_by_key(|v| ordinal_of(cluster, &v.name));
        return target.map(|t| Step::MoveLeader {
            from: m.id,
            to: t.id,
        });
    }
    Some(remove)
}

/// How a member leaves the running voters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// `MemberRemove`: the voters that count afterwards are the others.
    Removed,
    /// Stopped for a restart: it keeps its vote, so the quorum stays one of all the voters.
    Restarted,
}

/// Whether taking voter `victim` out (`leave`) keeps the cluster writable: a healthy majority
/// now (a removal is itself a raft proposal; a restart must not start from a cluster already
/// at its limit), and a majority of the voters that count afterwards among the others for
/// which `good` holds. A learner holds no vote, so it can always go. The one rule behind the
/// replacement of failed, lost and corrupt members and the image roll.
fn keeps_quorum(
    voters: &[&ObservedMember],
    victim: &ObservedMember,
    leave: Leave,
    good: impl Fn(&ObservedMember) -> bool,
) -> bool {
    if victim.learner {
        return true;
    }
    let healthy_now = voters.iter().filter(|v| v.healthy).count();
    let counted_after = match leave {
        Leave::Removed => voters.len().saturating_sub(1),
        Leave::Restarted => voters.len(),
    };
    let good_after = voters
        .iter()
        .filter(|v| v.id != victim.id && good(v))
        .count();
    counted_after >= 1 && healthy_now >= quorum(voters.len()) && good_after >= quorum(counted_after)
}

/// Whether member `name`'s pod runs the spec's image (an unknown image counts as it; a
/// missing pod too: `CreatePod` starts it on the spec's image).
fn on_image(obs: &Observed, name: &str) -> bool {
    obs.pods
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| p.image.as_deref())
        .is_none_or(|i| i == obs.image)
}

/// Rule 9, the image roll, once membership matches the spec (no learner, no scale, every
/// member has a pod): a member restarted on the new image must be healthy, Ready, caught up
/// and on the image's version before the next goes; the next is an unhealthy member still on
/// the old image (stopping it costs nothing), else a follower, the leader last (leadership
/// moved off it first); one only while the others keep a quorum. A restarted member that does
/// not come back healthy within `unhealthy_grace` (or crashes on start) stops the roll.
fn roll(
    cluster: &str,
    obs: &Observed,
    cfg: &PlanConfig,
    voters: &[&ObservedMember],
    leader_index: Option<u64>,
) -> (Step, Upgrade) {
    let image = obs.image.clone();
    let pod = |name: &str| obs.pods.iter().find(|p| p.name == name);
    let ready = |m: &ObservedMember| pod(&m.name).is_some_and(|p| p.ready);
    let caught_up = |m: &ObservedMember| match (m.raft_index, leader_index) {
        (Some(i), Some(l)) => i + CATCH_UP_LAG >= l,
        _ => false,
    };
    let version_ok = |m: &ObservedMember| match &obs.expected_version {
        Some(want) => m.version.as_deref() == Some(want.as_str()),
        None => m.version.is_some(),
    };
    let current = |m: &ObservedMember| {
        on_image(obs, &m.name) && m.healthy && ready(m) && caught_up(m) && version_ok(m)
    };
    let mut upgrade = Upgrade {
        image: image.clone(),
        done: voters.iter().filter(|m| current(m)).count(),
        total: voters.len(),
        failed: None,
    };
    let by_ordinal = |m: &&&ObservedMember| ordinal_of(cluster, &m.name);
    let wait = |reason: String| Step::Wait { reason };

    // A member already restarted onto the image must have come back first.
    let mut pending: Vec<&&ObservedMember> = voters
        .iter()
        .filter(|m| on_image(obs, &m.name) && !current(m))
        .collect();
    pending.sort_by_key(by_ordinal);
    if let Some(m) = pending.first() {
        let p = pod(&m.name);
        let unready = p.map_or(Duration::ZERO, |p| p.unready_for);
        let refused = p.and_then(|p| p.start_refused.as_deref());
        let step = if !m.healthy || !ready(m) {
            if unready >= cfg.unhealthy_grace || refused.is_some() {
                let why = match refused {
                    Some(msg) => format!("its member container exited: {msg}"),
                    None => format!("its pod has not been Ready for {}s", unready.as_secs()),
                };
                let failed = format!(
                    "upgrade to {image} stopped: member {} did not come back healthy on it \
                     ({why}); no other member is restarted until it does or the spec's \
                     image changes",
                    m.name
                );
                upgrade.failed = Some(failed.clone());
                wait(failed)
            } else {
                wait(format!(
                    "upgrade to {image}: waiting for {} to become healthy on it",
                    m.name
                ))
            }
        } else if !version_ok(m) {
            let failed = format!(
                "upgrade to {image} stopped: member {} reports version {} on it, expected {}",
                m.name,
                m.version.as_deref().unwrap_or("none"),
                obs.expected_version.as_deref().unwrap_or("any")
            );
            upgrade.failed = Some(failed.clone());
            wait(failed)
        } else {
            wait(format!(
                "upgrade to {image}: waiting for {} to catch up with the leader (index {} of {})",
                m.name,
                m.raft_index.unwrap_or(0),
                leader_index.unwrap_or(0)
            ))
        };
        return (step, upgrade);
    }

    let mut outdated: Vec<&&ObservedMember> =
        voters.iter().filter(|m| !on_image(obs, &m.name)).collect();
    outdated.sort_by_key(by_ordinal);
    let victim = outdated
        .iter()
        .find(|m| !m.healthy || !ready(m))
        .or_else(|| outdated.iter().find(|m| !m.leader))
        .or_else(|| outdated.first());
    let Some(victim) = victim else {
        return (
            wait(format!("upgrade to {image}: nothing to roll")),
            upgrade,
        );
    };
    let restart = || Step::RestartMember {
        id: victim.id,
        name: victim.name.clone(),
        from: pod(&victim.name)
            .and_then(|p| p.image.clone())
            .unwrap_or_default(),
        to: image.clone(),
    };
    let victim_up = victim.healthy && ready(victim);
    if victim_up {
        // Taking a working member down needs every other one working.
        if let Some(m) = voters
            .iter()
            .find(|m| m.id != victim.id && (!m.healthy || !ready(m)))
        {
            let reason = format!(
                "upgrade to {image}: waiting for {} to be healthy and Ready before restarting {}",
                m.name, victim.name
            );
            return (wait(reason), upgrade);
        }
    }
    // A one-member cluster has no quorum to keep: it is unavailable while it restarts.
    let alone = voters.len() == 1;
    let good = |v: &ObservedMember| v.healthy && ready(v);
    if !alone && !keeps_quorum(voters, victim, Leave::Restarted, good) {
        let reason = format!(
            "upgrade to {image}: restarting {} now would lose quorum",
            victim.name
        );
        return (wait(reason), upgrade);
    }
    if victim.leader && !alone {
        // The leader goes last, and not as leader: an election after it stops would leave
        // the cluster without one for an election timeout.
        let target = voters
            .iter()
            .filter(|m| m.id != victim.id && m.healthy && caught_up(m))
            .min_by_key(|m| (!on_image(obs, &m.name), ordinal_of(cluster, &m.name)));
        return match target {
            Some(t) => (
                Step::MoveLeader {
                    from: victim.id,
                    to: t.id,
                },
                upgrade,
            ),
            None => (
                wait(format!(
                    "upgrade to {image}: no caught-up member to take leadership from {}",
                    victim.name
                )),
                upgrade,
            ),
        };
    }
    (restart(), upgrade)
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "kv";

    fn voter(ord: u64, leader: bool) -> ObservedMember {
        ObservedMember {
            id: 100 + ord,
            name: member_name(C, ord),
            learner: false,
            started: true,
            healthy: true,
            leader,
            raft_index: Some(1000),
            corrupt: None,
            version: None,
        }
    }
    fn learner(ord: u64, started: bool, index: Option<u64>) -> ObservedMember {
        ObservedMember {
            id: 100 + ord,
            name: member_name(C, ord),
            learner: true,
            started,
            healthy: started,
            leader: false,
            raft_index: index,
            corrupt: None,
            version: None,
        }
    }
    fn down(mut m: ObservedMember) -> ObservedMember {
        m.healthy = false;
        m.raft_index = None;
        m
    }
    fn pod(ord: u64) -> ObservedPod {
        ObservedPod {
            name: member_name(C, ord),
            age: Duration::from_secs(60),
            unready_for: Duration::ZERO,
            ready: true,
            terminating: false,
            restore_failed: None,
            start_refused: None,
            image: None,
        }
    }
    fn pods(ords: &[u64]) -> Vec<ObservedPod> {
        ords.iter().map(|&o| pod(o)).collect()
    }
    fn obs(
        replicas: i32,
        members: Option<Vec<ObservedMember>>,
        pods: Vec<ObservedPod>,
        next: u64,
    ) -> Observed {
        Observed {
            replicas,
            bootstrapped: members.is_some(),
            members,
            claims: pods.iter().map(|p| p.name.clone()).collect(),
            pods,
            empty_dir: false,
            next_ordinal: next,
            corrupt_alarms: vec![],
            image: String::new(),
            expected_version: None,
        }
    }
    fn unready(mut p: ObservedPod, secs: u64) -> ObservedPod {
        p.unready_for = Duration::from_secs(secs);
        p.ready = false;
        p
    }
    fn remove(ord: u64, reason: RemoveReason) -> Step {
        Step::RemoveMember {
            id: 100 + ord,
            name: member_name(C, ord),
            reason,
        }
    }
    fn wait() -> Step {
        Step::Wait {
            reason: String::new(),
        }
    }

    /// Wait reasons are prose; rows compare only the variant for them.
    fn same(a: &Step, b: &Step) -> bool {
        match (a, b) {
            (Step::Wait { .. }, Step::Wait { .. }) => true,
            (Step::Invalid { .. }, Step::Invalid { .. }) => true,
            _ => a == b,
        }
    }

    #[test]
    fn table() {
        use RemoveReason::*;
        let n = |o: u64| member_name(C, o);
        let mut stuck_pod = pod(3);
        stuck_pod.age = Duration::from_secs(3600);
        let mut lost = obs(
            3,
            Some(vec![voter(0, true), voter(1, false), voter(2, false)]),
            pods(&[0, 1, 2]),
            3,
        );
        lost.claims.remove(&n(1));
        let mut kept = obs(
            3,
            Some(vec![voter(0, true), voter(1, false), voter(2, false)]),
            pods(&[0, 1]),
            3,
        );
        kept.claims.insert(n(2));
        let mut empty_dir_lost = kept.clone();
        empty_dir_lost.empty_dir = true;
        let mut orphan_claim = obs(
            3,
            Some(vec![voter(0, true), voter(1, false), voter(2, false)]),
            pods(&[0, 1, 2]),
            4,
        );
        orphan_claim.claims.insert(n(3));
        // Three voters and a learner that is far behind.
        let three_and_a_learner = || {
            Some(vec![
                voter(0, true),
                voter(1, false),
                voter(2, false),
                learner(3, true, Some(5)),
            ])
        };
        let cases: Vec<(&str, Observed, Step)> = vec![
            // bootstrap
            (
                "fresh cluster bootstraps a seed",
                obs(3, None, vec![], 0),
                Step::BootstrapSeed { name: n(0) },
            ),
            (
                "seed pod created, not answering yet",
                obs(3, None, pods(&[0]), 1),
                wait(),
            ),
            (
                "seed up, grow with a learner",
                obs(3, Some(vec![voter(0, true)]), pods(&[0]), 1),
                Step::AddLearner { name: n(1) },
            ),
            // scale 1 -> 3
            (
                "crash after MemberAdd: start the learner, don't add again",
                obs(
                    3,
                    Some(vec![voter(0, true), learner(1, false, None)]),
                    pods(&[0]),
                    1,
                ),
                Step::CreatePod { name: n(1) },
            ),
            (
                "learner started, behind",
                obs(
                    3,
                    Some(vec![voter(0, true), learner(1, true, Some(10))]),
                    pods(&[0, 1]),
                    2,
                ),
                wait(),
            ),
            (
                "learner caught up: promote",
                obs(
                    3,
                    Some(vec![voter(0, true), learner(1, true, Some(995))]),
                    pods(&[0, 1]),
                    2,
                ),
                Step::PromoteLearner {
                    id: 101,
                    name: n(1),
                },
            ),
            (
                "two voters of three: add third",
                obs(
                    3,
                    Some(vec![voter(0, true), voter(1, false)]),
                    pods(&[0, 1]),
                    2,
                ),
                Step::AddLearner { name: n(2) },
            ),
            (
                "three of three: steady",
                obs(
                    3,
                    Some(vec![voter(0, true), voter(1, false), voter(2, false)]),
                    pods(&[0, 1, 2]),
                    3,
                ),
                Step::Steady,
            ),
            // 3 -> 5
            (
                "3 -> 5 adds one learner",
                obs(
                    5,
                    Some(vec![voter(0, true), voter(1, false), voter(2, false)]),
                    pods(&[0, 1, 2]),
                    3,
                ),
                Step::AddLearner { name: n(3) },
            ),
            (
                "3 -> 5 one learner at a time",
                obs(5, three_and_a_learner(), pods(&[0, 1, 2, 3]), 4),
                wait(),
            ),
            (
                "4 -> 5",
                obs(
                    5,
                    Some(vec![
                        voter(0, true),
                        voter(1, false),
                        voter(2, false),
                        voter(3, false),
                    ]),
                    pods(&[0, 1, 2, 3]),
                    4,
                ),
                Step::AddLearner { name: n(4) },
            ),
            // 5 -> 3 -> 1
            (
                "5 -> 3 removes the newest",
                obs(
                    3,
                    Some((0..5).map(|o| voter(o, o == 0)).collect()),
                    pods(&[0, 1, 2, 3, 4]),
                    5,
                ),
                remove(4, ScaleDown),
            ),
            (
                "removed member's pod is deleted",
                obs(
                    3,
                    Some((0..4).map(|o| voter(o, o == 0)).collect()),
                    pods(&[0, 1, 2, 3, 4]),
                    5,
                ),
                Step::DeletePod { name: n(4) },
            ),
            (
                "3 -> 1",
                obs(
                    1,
                    Some(vec![voter(0, true), voter(1, false), voter(2, false)]),
                    pods(&[0, 1, 2]),
                    5,
                ),
                remove(2, ScaleDown),
            ),
            (
                "2 -> 1",
                obs(
                    1,
                    Some(vec![voter(0, true), voter(1, false)]),
                    pods(&[0, 1]),
                    5,
                ),
                remove(1, ScaleDown),
            ),
            (
                "leader is the member to remove: move leadership first",
                obs(
                    1,
                    Some(vec![voter(0, false), voter(1, true)]),
                    pods(&[0, 1]),
                    5,
                ),
                Step::MoveLeader { from: 101, to: 100 },
            ),
            (
                "names are never reused after a shrink",
                obs(2, Some(vec![voter(0, true)]), pods(&[0]), 5),
                Step::AddLearner { name: n(5) },
            ),
            // member down
            (
                "member down within grace: wait",
                obs(
                    3,
                    Some(vec![voter(0, true), down(voter(1, false)), voter(2, false)]),
                    vec![pod(0), unready(pod(1), 10), pod(2)],
                    3,
                ),
                wait(),
            ),
            (
                "member down past grace: replace",
                obs(
                    3,
                    Some(vec![voter(0, true), down(voter(1, false)), voter(2, false)]),
                    vec![pod(0), unready(pod(1), 900), pod(2)],
                    3,
                ),
                remove(1, Failed),
            ),
            (
                "two of three down: never remove (quorum at risk)",
                obs(
                    3,
                    Some(vec![
                        voter(0, true),
                        down(voter(1, false)),
                        down(voter(2, false)),
                    ]),
                    vec![pod(0), unready(pod(1), 900), unready(pod(2), 900)],
                    3,
                ),
                wait(),
            ),
            (
                "one of two down: no removal, no growth",
                obs(
                    3,
                    Some(vec![voter(0, true), down(voter(1, false))]),
                    vec![pod(0), unready(pod(1), 900)],
                    2,
                ),
                wait(),
            ),
            (
                "scale down prefers the unhealthy member",
                obs(
                    3,
                    Some(vec![
                        voter(0, true),
                        down(voter(1, false)),
                        voter(2, false),
                        voter(3, false),
                    ]),
                    vec![pod(0), unready(pod(1), 5), pod(2), pod(3)],
                    4,
                ),
                remove(1, ScaleDown),
            ),
            ("claim lost: replace", lost, remove(1, DataLost)),
            (
                "started member's pod deleted, claim kept: recreate",
                kept,
                Step::CreatePod { name: n(2) },
            ),
            (
                "emptyDir member's pod deleted: data gone, replace",
                empty_dir_lost,
                remove(2, DataLost),
            ),
            (
                "claim left behind by a removed member is deleted",
                orphan_claim,
                Step::DeletePod { name: n(3) },
            ),
            // learner problems
            (
                "learner never catches up: removed",
                obs(
                    5,
                    Some(vec![
                        voter(0, true),
                        voter(1, false),
                        voter(2, false),
                        learner(3, true, Some(1)),
                    ]),
                    vec![pod(0), pod(1), pod(2), stuck_pod],
                    4,
                ),
                remove(3, LearnerStuck),
            ),
            // spec changes mid-operation
            (
                "spec shrinks while a learner waits for its pod",
                obs(
                    1,
                    Some(vec![voter(0, true), learner(1, false, None)]),
                    pods(&[0]),
                    2,
                ),
                remove(1, LearnerNotNeeded),
            ),
            (
                "spec shrinks while learner catching up",
                obs(3, three_and_a_learner(), pods(&[0, 1, 2, 3]), 4),
                remove(3, LearnerNotNeeded),
            ),
            (
                "spec grows mid scale-down: stop removing",
                obs(
                    5,
                    Some((0..4).map(|o| voter(o, o == 0)).collect()),
                    pods(&[0, 1, 2, 3]),
                    5,
                ),
                Step::AddLearner { name: n(5) },
            ),
            // invalid specs
            (
                "zero replicas refused",
                obs(0, Some(vec![voter(0, true)]), pods(&[0]), 1),
                Step::Invalid {
                    message: String::new(),
                },
            ),
            (
                "ten replicas refused",
                obs(10, Some(vec![voter(0, true)]), pods(&[0]), 1),
                Step::Invalid {
                    message: String::new(),
                },
            ),
            (
                "even size allowed",
                obs(2, Some(vec![voter(0, true)]), pods(&[0]), 1),
                Step::AddLearner { name: n(1) },
            ),
        ];
        let cfg = PlanConfig::default();
        for (name, o, want) in cases {
            let got = plan(C, &o, &cfg);
            assert!(
                same(&got.step, &want),
                "{name}: got {:?}, want {:?}",
                got.step,
                want
            );
        }
    }

    #[test]
    fn a_terminating_pod_holds_every_step_but_steady_and_invalid() {
        let cfg = PlanConfig::default();
        let three = || Some(vec![voter(0, true), voter(1, false), voter(2, false)]);
        let terminating = |ords: &[u64], gone: u64| {
            let mut p = pods(ords);
            for p in p.iter_mut().filter(|p| p.name == member_name(C, gone)) {
                p.terminating = true;
            }
            p
        };
        let cases: Vec<(&str, Observed, &str)> = vec![
            (
                "growth waits",
                obs(5, three(), terminating(&[0, 1, 2], 2), 3),
                "Wait",
            ),
            (
                "deleting the terminating orphan waits too",
                obs(
                    3,
                    Some(vec![voter(0, true), voter(1, false), voter(2, false)]),
                    terminating(&[0, 1, 2, 3], 3),
                    4,
                ),
                "Wait",
            ),
            (
                "nothing to do stays steady",
                obs(3, three(), terminating(&[0, 1, 2], 1), 3),
                "Steady",
            ),
            (
                "an invalid spec is still reported",
                obs(0, three(), terminating(&[0, 1, 2], 1), 3),
                "Invalid",
            ),
            (
                "without a terminating pod the same cluster grows",
                obs(5, three(), pods(&[0, 1, 2]), 3),
                "AddLearner",
            ),
        ];
        for (name, o, want) in cases {
            let got = plan(C, &o, &cfg).step;
            assert_eq!(got.label(), want, "{name}: {got:?}");
        }
        let p = plan(C, &obs(5, three(), terminating(&[0, 1, 2], 0), 3), &cfg);
        assert_eq!(
            p.step,
            Step::Wait {
                reason: "waiting for a terminating pod to go away".into()
            }
        );
    }

    #[test]
    fn warnings_and_messages() {
        let cases: Vec<(i32, Result<usize, &str>)> = vec![
            (1, Ok(0)),
            (2, Ok(1)),
            (3, Ok(0)),
            (9, Ok(0)),
            (0, Err("spec.replicas must be between 1 and 9, got 0")),
            (-1, Err("spec.replicas must be between 1 and 9, got -1")),
            (10, Err("spec.replicas must be between 1 and 9, got 10")),
        ];
        for (r, want) in cases {
            match (validate_replicas(r), want) {
                (Ok(w), Ok(n)) => assert_eq!(w.len(), n, "replicas {r}"),
                (Err(m), Err(prefix)) => assert!(m.starts_with(prefix), "replicas {r}: {m}"),
                (got, want) => panic!("replicas {r}: got {got:?}, want {want:?}"),
            }
        }
    }

    fn corrupt(mut m: ObservedMember) -> ObservedMember {
        m.corrupt = Some("the CORRUPT alarm is raised for it".into());
        m
    }

    /// A corrupt member is replaced at once when the others keep a quorum, and only then;
    /// the alarm of a removed member is disarmed; a scale or replacement in flight goes first.
    #[test]
    fn corrupt_members_are_replaced_only_when_quorum_allows() {
        use RemoveReason::*;
        let cfg = PlanConfig::default();
        let n = |o: u64| member_name(C, o);
        let with_alarms = |mut o: Observed, ids: &[u64]| {
            o.corrupt_alarms = ids.to_vec();
            o
        };
        let three = |m1: ObservedMember| Some(vec![voter(0, true), m1, voter(2, false)]);
        let mut crash_looping = down(corrupt(voter(1, false)));
        crash_looping.corrupt = Some("it refuses to start on its corruption check".into());
        let cases: Vec<(&str, Observed, Step)> = vec![
            (
                "corrupt follower, the other two healthy: removed at once",
                with_alarms(
                    obs(3, three(corrupt(voter(1, false))), pods(&[0, 1, 2]), 3),
                    &[101],
                ),
                remove(1, Corrupt),
            ),
            (
                "corrupt member refusing to start (unhealthy, no grace waited): removed",
                obs(
                    3,
                    three(crash_looping.clone()),
                    vec![pod(0), unready(pod(1), 5), pod(2)],
                    3,
                ),
                remove(1, Corrupt),
            ),
            (
                "corrupt leader: leadership moves to a good member first",
                with_alarms(
                    obs(
                        3,
                        Some(vec![
                            voter(0, false),
                            corrupt(voter(1, true)),
                            voter(2, false),
                        ]),
                        pods(&[0, 1, 2]),
                        3,
                    ),
                    &[101],
                ),
                Step::MoveLeader { from: 101, to: 100 },
            ),
            (
                "two of three unhealthy (one corrupt, one down): not removed",
                with_alarms(
                    obs(
                        3,
                        Some(vec![
                            voter(0, true),
                            corrupt(voter(1, false)),
                            down(voter(2, false)),
                        ]),
                        vec![pod(0), pod(1), unready(pod(2), 900)],
                        3,
                    ),
                    &[101],
                ),
                wait(),
            ),
            (
                "two of three corrupt: neither removed",
                with_alarms(
                    obs(
                        3,
                        Some(vec![
                            voter(0, true),
                            corrupt(voter(1, false)),
                            corrupt(voter(2, false)),
                        ]),
                        pods(&[0, 1, 2]),
                        3,
                    ),
                    &[101, 102],
                ),
                wait(),
            ),
            (
                "removed: its alarm is disarmed first",
                with_alarms(
                    obs(
                        3,
                        Some(vec![voter(0, true), voter(2, false)]),
                        pods(&[0, 1, 2]),
                        3,
                    ),
                    &[101],
                ),
                Step::DisarmAlarm { id: 101 },
            ),
            (
                "alarm disarmed: the pod and claim of the removed member go",
                obs(
                    3,
                    Some(vec![voter(0, true), voter(2, false)]),
                    pods(&[0, 1, 2]),
                    3,
                ),
                Step::DeletePod { name: n(1) },
            ),
            (
                "an alarm for the whole cluster (member 0) names nobody: nothing is disarmed",
                with_alarms(obs(3, three(voter(1, false)), pods(&[0, 1, 2]), 3), &[0]),
                Step::Steady,
            ),
            (
                "a learner in flight goes first: it is promoted, the corrupt member waits",
                with_alarms(
                    obs(
                        3,
                        Some(vec![
                            voter(0, true),
                            corrupt(voter(1, false)),
                            voter(2, false),
                            learner(3, true, Some(1000)),
                        ]),
                        pods(&[0, 1, 2, 3]),
                        4,
                    ),
                    &[101],
                ),
                Step::RemoveMember {
                    id: 103,
                    name: n(3),
                    reason: LearnerNotNeeded,
                },
            ),
            (
                "growing 3 -> 5: the learner is promoted before the corrupt member goes",
                with_alarms(
                    obs(
                        5,
                        Some(vec![
                            voter(0, true),
                            corrupt(voter(1, false)),
                            voter(2, false),
                            learner(3, true, Some(1000)),
                        ]),
                        pods(&[0, 1, 2, 3]),
                        4,
                    ),
                    &[101],
                ),
                Step::PromoteLearner {
                    id: 103,
                    name: n(3),
                },
            ),
            (
                "a corrupt learner is removed",
                obs(
                    3,
                    Some(vec![
                        voter(0, true),
                        voter(1, false),
                        corrupt(learner(2, true, Some(1000))),
                    ]),
                    pods(&[0, 1, 2]),
                    3,
                ),
                remove(2, Corrupt),
            ),
        ];
        for (name, o, want) in cases {
            let got = plan(C, &o, &cfg);
            assert!(
                same(&got.step, &want),
                "{name}: got {:?}, want {:?}",
                got.step,
                want
            );
        }
        // The wait says why.
        let o = with_alarms(
            obs(
                3,
                Some(vec![
                    voter(0, true),
                    corrupt(voter(1, false)),
                    down(voter(2, false)),
                ]),
                vec![pod(0), pod(1), unready(pod(2), 900)],
                3,
            ),
            &[101],
        );
        let Step::Wait { reason } = plan(C, &o, &cfg).step else {
            panic!("not a wait");
        };
        assert!(
            reason.contains("member kv-1 is corrupt")
                && reason.contains("1 healthy member(s) of 2")
                && reason.contains("quorum of 2"),
            "{reason}"
        );
        // A terminating pod holds every membership step, but not the disarm.
        let mut o = with_alarms(
            obs(
                3,
                Some(vec![voter(0, true), voter(2, false)]),
                pods(&[0, 1, 2]),
                3,
            ),
            &[101],
        );
        o.pods[1].terminating = true;
        assert_eq!(plan(C, &o, &cfg).step, Step::DisarmAlarm { id: 101 });
    }

    /// The whole replacement of a corrupt member against a simulated cluster: removed,
    /// alarm disarmed, pod and claim deleted, a new member under a new name added, started,
    /// promoted; quorum kept throughout and the corrupt member's name never comes back.
    #[test]
    fn a_corrupt_member_is_replaced_end_to_end() {
        let cfg = PlanConfig::default();
        let mut members = vec![voter(0, true), corrupt(voter(1, false)), voter(2, false)];
        let mut pods_ = pods(&[0, 1, 2]);
        let mut claims: BTreeSet<String> = pods_.iter().map(|p| p.name.clone()).collect();
        let mut alarms = vec![101];
        let mut next = 3;
        let mut steps = Vec::new();
        for _ in 0..20 {
            let o = Observed {
                replicas: 3,
                members: Some(members.clone()),
                pods: pods_.clone(),
                claims: claims.clone(),
                empty_dir: false,
                bootstrapped: true,
                next_ordinal: next,
                corrupt_alarms: alarms.clone(),
                image: String::new(),
                expected_version: None,
            };
            let p = plan(C, &o, &cfg);
            next = p.next_ordinal;
            steps.push(p.step.label());
            match p.step {
                Step::RemoveMember { id, .. } => {
                    members.retain(|m| m.id != id);
                    let healthy = members.iter().filter(|m| m.healthy).count();
                    assert!(healthy >= quorum(members.len()), "quorum lost");
                }
                Step::DisarmAlarm { id } => alarms.retain(|a| *a != id),
                Step::DeletePod { name } => {
                    pods_.retain(|p| p.name != name);
                    claims.remove(&name);
                }
                Step::AddLearner { name } => {
                    assert_ne!(name, member_name(C, 1), "a corrupt member's name came back");
                    let ord = ordinal_of(C, &name).unwrap_or(0);
                    members.push(learner(ord, false, None));
                }
                Step::CreatePod { name } => {
                    claims.insert(name.clone());
                    pods_.push(pod(ordinal_of(C, &name).unwrap_or(0)));
                    for m in members.iter_mut().filter(|m| m.name == name) {
                        m.started = true;
                        m.healthy = true;
                        m.raft_index = Some(1000);
                    }
                }
                Step::PromoteLearner { id, .. } => {
                    for m in members.iter_mut().filter(|m| m.id == id) {
                        m.learner = false;
                    }
                }
                Step::Steady => break,
                other => panic!("unexpected {other:?} after {steps:?}"),
            }
        }
        assert_eq!(
            steps,
            [
                "RemoveMember",
                "DisarmAlarm",
                "DeletePod",
                "AddLearner",
                "CreatePod",
                "PromoteLearner",
                "Steady"
            ]
        );
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["kv-0", "kv-2", "kv-3"]);
        assert!(alarms.is_empty());
    }

    #[test]
    fn grace_periods_come_from_the_spec_with_documented_defaults() {
        let d = PlanConfig::default();
        assert_eq!(
            (d.unhealthy_grace, d.catch_up_grace),
            (Duration::from_secs(300), Duration::from_secs(600))
        );
        assert_eq!(d.with_repair(&Default::default()), d);
        let c = d.with_repair(&ferrokv_cluster_api::RepairSpec {
            unhealthy_grace_seconds: Some(20),
            catch_up_grace_seconds: None,
        });
        assert_eq!(
            (c.unhealthy_grace, c.catch_up_grace),
            (Duration::from_secs(20), Duration::from_secs(600))
        );
    }

    #[test]
    fn quantities_follow_the_kubernetes_grammar() {
        for ok in [
            "1Gi", "500m", "2", "1.5", ".5", "1.", "+3", "1e3", "1E-2", "8E", "100k",
        ] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in [
            "", "lots", "1GB", "Gi", ".", "1e", "1.2.3", "1 Gi", "1Ki2", "e3", "1mi",
        ] {
            assert!(!is_quantity(bad), "{bad}");
        }
        let mut spec: ferrokv_cluster_api::EtcdClusterSpec =
            serde_json::from_str(r#"{"replicas":3,"storage":{"size":"lots"}}"#).expect("spec");
        assert_eq!(
            validate_spec(&spec),
            Err(
                r#"spec.storage.size must be a quantity such as 1Gi, 500m or 2, got "lots""#.into()
            )
        );
        spec.storage.size = None;
        spec.resources =
            serde_json::from_str(r#"{"limits":{"memory":"1Gi","cpu":"two"}}"#).expect("resources");
        let err = validate_spec(&spec).expect_err("cpu");
        assert!(err.starts_with("spec.resources.limits.cpu"), "{err}");
    }

    /// The seed's pod apply keeps failing after its claim was applied (a namespace that
    /// refuses the pod): every retry plans the same seed on the same claim, never a new name.
    #[test]
    fn seed_whose_pod_was_refused_reuses_its_claim_and_name() {
        let mut o = obs(3, None, vec![], 0);
        let first = plan(C, &o, &PlanConfig::default());
        assert_eq!(
            first.step,
            Step::BootstrapSeed {
                name: member_name(C, 0)
            }
        );
        for retry in 0..5 {
            // The claim exists, the pod does not; status recorded the ordinal above the claim.
            o.claims = BTreeSet::from([member_name(C, 0)]);
            let p = plan(C, &o, &PlanConfig::default());
            assert_eq!(
                p.step,
                Step::BootstrapSeed {
                    name: member_name(C, 0)
                },
                "retry {retry}"
            );
            o.next_ordinal = p.next_ordinal;
            assert_eq!(o.next_ordinal, 1, "retry {retry}");
        }
        // Claims of other clusters with a common prefix are not taken.
        let mut other = obs(3, None, vec![], 0);
        other.claims = BTreeSet::from(["kv-extra".to_string(), "kvx-0".to_string()]);
        assert_eq!(
            plan(C, &other, &PlanConfig::default()).step,
            Step::BootstrapSeed {
                name: member_name(C, 0)
            }
        );
    }

    #[test]
    fn next_ordinal_advances_on_add_and_never_goes_back() {
        let o = obs(
            3,
            Some(vec![voter(0, true), voter(7, false)]),
            pods(&[0, 7]),
            2,
        );
        let p = plan(C, &o, &PlanConfig::default());
        assert_eq!(
            p.step,
            Step::AddLearner {
                name: member_name(C, 8)
            }
        );
        assert_eq!(p.next_ordinal, 8, "counted once kv-8 is seen");
        let o = obs(1, Some(vec![voter(0, true)]), pods(&[0]), 12);
        assert_eq!(plan(C, &o, &PlanConfig::default()).next_ordinal, 12);
    }

    /// Drives the planner against a simulated cluster from nothing to 1, 3, 5, 3, 1 and checks
    /// quorum is never lost and names are never reused.
    #[test]
    fn simulated_scale_sequence_keeps_quorum() {
        let cfg = PlanConfig::default();
        let mut members: Vec<ObservedMember> = Vec::new();
        let mut pods_: Vec<ObservedPod> = Vec::new();
        let mut next = 0u64;
        let mut used = BTreeSet::new();
        let mut claims: BTreeSet<String> = BTreeSet::new();
        for target in [1, 3, 5, 3, 1] {
            for _ in 0..100 {
                let o = Observed {
                    replicas: target,
                    bootstrapped: !members.is_empty(),
                    members: if members.is_empty() {
                        None
                    } else {
                        Some(members.clone())
                    },
                    pods: pods_.clone(),
                    claims: claims.clone(),
                    empty_dir: false,
                    next_ordinal: next,
                    corrupt_alarms: vec![],
                    image: String::new(),
                    expected_version: None,
                };
                let p = plan(C, &o, &cfg);
                next = p.next_ordinal;
                match p.step {
                    Step::BootstrapSeed { name } | Step::AddLearner { name } => {
                        assert!(used.insert(name.clone()), "name reused: {name}");
                        let ord = ordinal_of(C, &name).unwrap_or(0);
                        let mut m = if members.is_empty() {
                            voter(ord, true)
                        } else {
                            learner(ord, false, None)
                        };
                        m.started = false;
                        members.push(m);
                        if members.len() == 1 {
                            pods_.push(pod(ord));
                            claims.insert(name.clone());
                            members[0].started = true;
                        }
                    }
                    Step::CreatePod { name } => {
                        claims.insert(name.clone());
                        pods_.push(pod(ordinal_of(C, &name).unwrap_or(0)));
                        for m in members.iter_mut().filter(|m| m.name == name) {
                            m.started = true;
                            m.healthy = true;
                            m.raft_index = Some(1000);
                        }
                    }
                    Step::PromoteLearner { id, .. } => {
                        for m in members.iter_mut().filter(|m| m.id == id) {
                            m.learner = false;
                        }
                    }
                    Step::MoveLeader { from, to } => {
                        for m in members.iter_mut() {
                            m.leader = m.id == to;
                        }
                        assert_ne!(from, to);
                    }
                    Step::RemoveMember { id, .. } => {
                        let m = members.iter().find(|m| m.id == id).cloned();
                        assert!(!m.is_some_and(|m| m.leader), "removed the leader");
                        members.retain(|m| m.id != id);
                        let voters = members.iter().filter(|m| !m.learner).count();
                        let healthy = members.iter().filter(|m| !m.learner && m.healthy).count();
                        assert!(healthy >= quorum(voters), "quorum lost");
                    }
                    Step::DeletePod { name } => {
                        pods_.retain(|p| p.name != name);
                        claims.remove(&name);
                    }
                    Step::Steady => break,
                    other => panic!("unexpected step {other:?} at target {target}"),
                }
            }
            let voters = members.iter().filter(|m| !m.learner).count();
            assert_eq!(
                voters,
                usize::try_from(target).unwrap_or(0),
                "target {target}"
            );
            assert_eq!(pods_.len(), voters);
        }
    }

    const OLD: &str = "ghcr.io/ferrokv/ferrokv:0.1.0";
    const NEW: &str = "ghcr.io/ferrokv/ferrokv:0.1.1";

    fn versioned(mut m: ObservedMember) -> ObservedMember {
        m.version = Some("3.6.0".into());
        m
    }
    /// Three voters (kv-0 leads) whose pods run `images[i]`, the spec asking for NEW.
    fn rolling(members: Vec<ObservedMember>, images: [&str; 3]) -> Observed {
        let members: Vec<ObservedMember> = members.into_iter().map(versioned).collect();
        let mut o = obs(3, Some(members), pods(&[0, 1, 2]), 3);
        for (p, img) in o.pods.iter_mut().zip(images) {
            p.image = Some(img.to_string());
        }
        o.image = NEW.into();
        o
    }
    fn three() -> Vec<ObservedMember> {
        vec![voter(0, true), voter(1, false), voter(2, false)]
    }
    fn restart(ord: u64) -> Step {
        Step::RestartMember {
            id: 100 + ord,
            name: member_name(C, ord),
            from: OLD.into(),
            to: NEW.into(),
        }
    }

    /// Each rule of the image roll: followers first, one at a time, only with everyone else
    /// healthy and a quorum left; the restarted member must be back, caught up and on the
    /// version before the next; leadership moves off the leader, which goes last.
    #[test]
    fn image_roll_rules() {
        let cfg = PlanConfig::default();
        let mut not_ready_new = rolling(three(), [OLD, NEW, OLD]);
        not_ready_new.pods[1] = unready(not_ready_new.pods[1].clone(), 10);
        let mut behind = rolling(three(), [OLD, NEW, OLD]);
        if let Some(ms) = behind.members.as_mut() {
            ms[1].raft_index = Some(10);
        }
        let mut pod_unready_old = rolling(three(), [OLD, OLD, OLD]);
        pod_unready_old.pods[2] = unready(pod_unready_old.pods[2].clone(), 10);
        let mut one = obs(1, Some(vec![versioned(voter(0, true))]), pods(&[0]), 1);
        one.pods[0].image = Some(OLD.into());
        one.image = NEW.into();
        let mut etcd_wrong = rolling(three(), [OLD, NEW, OLD]);
        etcd_wrong.expected_version = Some("3.6.16".into());
        let mut etcd_right = etcd_wrong.clone();
        if let Some(ms) = etcd_right.members.as_mut() {
            ms[1].version = Some("3.6.16".into());
        }
        let mut learner_in_flight = rolling(three(), [OLD, OLD, OLD]);
        learner_in_flight.replicas = 5;
        let mut restarted_gone = rolling(three(), [OLD, OLD, OLD]);
        restarted_gone.pods.remove(1);
        let cases: Vec<(&str, Observed, Step)> = vec![
            (
                "all on the spec's image: steady",
                rolling(three(), [NEW, NEW, NEW]),
                Step::Steady,
            ),
            (
                "image changed: the first follower restarts, not the leader",
                rolling(three(), [OLD, OLD, OLD]),
                restart(1),
            ),
            (
                "its pod gone: started again (on the new image, keeping its claim)",
                restarted_gone,
                Step::CreatePod {
                    name: member_name(C, 1),
                },
            ),
            (
                "restarted pod not Ready yet: the next waits",
                not_ready_new,
                wait(),
            ),
            (
                "restarted member far behind the leader: the next waits",
                behind,
                wait(),
            ),
            (
                "restarted member back and caught up: the next follower",
                rolling(three(), [OLD, NEW, OLD]),
                restart(2),
            ),
            (
                "only the leader left: leadership moves to an upgraded member",
                rolling(three(), [OLD, NEW, NEW]),
                Step::MoveLeader { from: 100, to: 101 },
            ),
            (
                "the old leader, a follower now, restarts last",
                rolling(
                    vec![voter(0, false), voter(1, true), voter(2, false)],
                    [OLD, NEW, NEW],
                ),
                restart(0),
            ),
            (
                "another member's pod not Ready: no healthy member is taken down",
                pod_unready_old,
                // kv-2 is down already: restarting it costs nothing and is what comes first.
                restart(2),
            ),
            (
                "a member down, another not Ready: quorum would be lost, wait",
                {
                    let mut o = rolling(
                        vec![voter(0, true), down(voter(1, false)), voter(2, false)],
                        [OLD, OLD, OLD],
                    );
                    o.pods[2] = unready(o.pods[2].clone(), 10);
                    o
                },
                wait(),
            ),
            (
                "a down member on the old image is restarted first",
                rolling(
                    vec![voter(0, true), voter(1, false), down(voter(2, false))],
                    [OLD, OLD, OLD],
                ),
                restart(2),
            ),
            (
                "two of three down: nothing",
                rolling(
                    vec![voter(0, true), down(voter(1, false)), down(voter(2, false))],
                    [OLD, OLD, OLD],
                ),
                wait(),
            ),
            (
                "a one-member cluster restarts its member (it has no quorum to keep)",
                one,
                Step::RestartMember {
                    id: 100,
                    name: member_name(C, 0),
                    from: OLD.into(),
                    to: NEW.into(),
                },
            ),
            (
                "an etcd image: the restarted member must report the tag's version",
                etcd_wrong,
                wait(),
            ),
            (
                "an etcd image on its version: go on",
                etcd_right,
                restart(2),
            ),
            (
                "a scale-up goes first, its learner on the new image",
                learner_in_flight,
                Step::AddLearner {
                    name: member_name(C, 3),
                },
            ),
        ];
        for (name, o, want) in cases {
            let got = plan(C, &o, &cfg);
            assert!(
                same(&got.step, &want),
                "{name}: got {:?}, want {:?}",
                got.step,
                want
            );
            match got.step {
                Step::RestartMember { .. } | Step::MoveLeader { .. } => {
                    assert!(got.upgrade.is_some(), "{name}: progress for status")
                }
                Step::Steady => assert_eq!(got.upgrade, None, "{name}"),
                _ => {}
            }
        }
    }

    /// A restarted member that never becomes healthy on the new image stops the roll with the
    /// reason in the plan: no second member goes down, and the failed one is not replaced by
    /// another on the same image. Setting the image back restarts it first.
    #[test]
    fn a_failed_upgrade_stops_the_roll() {
        let cfg = PlanConfig::default();
        let failing = |secs: u64| {
            let mut o = rolling(
                vec![voter(0, true), down(voter(1, false)), voter(2, false)],
                [OLD, NEW, OLD],
            );
            o.pods[1] = unready(o.pods[1].clone(), secs);
            o
        };
        let early = plan(C, &failing(30), &cfg);
        assert_eq!(early.step.label(), "Wait", "{:?}", early.step);
        assert_eq!(early.upgrade.as_ref().and_then(|u| u.failed.clone()), None);

        let late = plan(C, &failing(3600), &cfg);
        assert_eq!(late.step.label(), "Wait", "not replaced: {:?}", late.step);
        let failed = late.upgrade.as_ref().and_then(|u| u.failed.clone());
        let failed = failed.expect("the roll is reported stopped");
        assert!(failed.contains("kv-1") && failed.contains(NEW), "{failed}");
        assert!(failed.contains("not been Ready for 3600s"), "{failed}");

        let mut crashed = failing(20);
        crashed.pods[1].start_refused = Some("panicked at startup".into());
        let p = plan(C, &crashed, &cfg);
        let failed = p
            .upgrade
            .and_then(|u| u.failed)
            .expect("a crash stops it at once");
        assert!(failed.contains("panicked at startup"), "{failed}");

        // The spec back on the old image: the failed member is the one restarted.
        let mut back = failing(3600);
        back.image = OLD.into();
        let p = plan(C, &back, &cfg);
        assert_eq!(
            p.step,
            Step::RestartMember {
                id: 101,
                name: member_name(C, 1),
                from: NEW.into(),
                to: OLD.into(),
            }
        );
        // Without a roll, the same unhealthy member is replaced after the grace, as before.
        let mut plain = failing(3600);
        plain.pods[1].image = Some(NEW.into());
        plain.pods[0].image = Some(NEW.into());
        plain.pods[2].image = Some(NEW.into());
        assert_eq!(plan(C, &plain, &cfg).step, remove(1, RemoveReason::Failed));
    }

    /// Drives the roll against a simulated cluster: every member ends on the new image, the
    /// leader is restarted last and never while leading, and at every step at most one member
    /// is down while the other two are up.
    #[test]
    fn simulated_roll_keeps_quorum_and_restarts_the_leader_last() {
        let cfg = PlanConfig::default();
        let mut o = rolling(three(), [OLD, OLD, OLD]);
        let mut restarted = Vec::new();
        for _ in 0..50 {
            let p = plan(C, &o, &cfg);
            let members = o.members.as_mut().expect("members");
            match p.step {
                Step::RestartMember { id, name, .. } => {
                    let m = members.iter().find(|m| m.id == id).expect("member");
                    assert!(!m.leader, "restarted the leader {name}");
                    let down = members.iter().filter(|m| !m.healthy).count();
                    assert_eq!(down, 0, "restarting {name} with a member already down");
                    for m in members.iter_mut().filter(|m| m.id == id) {
                        m.healthy = false;
                        m.raft_index = None;
                        m.version = None;
                    }
                    o.pods.retain(|p| p.name != name);
                    restarted.push(name);
                }
                Step::CreatePod { name } => {
                    let ord = ordinal_of(C, &name).expect("ordinal");
                    let mut p = unready(pod(ord), 0);
                    p.image = Some(NEW.into());
                    o.pods.push(p);
                    o.pods.sort_by(|a, b| a.name.cmp(&b.name));
                }
                Step::MoveLeader { from, to } => {
                    assert_ne!(from, to);
                    for m in members.iter_mut() {
                        m.leader = m.id == to;
                    }
                }
                Step::Wait { .. } => {
                    // The restarted member comes back: Ready, caught up, answering.
                    for p in o.pods.iter_mut().filter(|p| !p.ready) {
                        p.ready = true;
                        p.unready_for = Duration::ZERO;
                        for m in members.iter_mut().filter(|m| m.name == p.name) {
                            m.healthy = true;
                            m.raft_index = Some(1000);
                            m.version = Some("3.6.0".into());
                        }
                    }
                }
                Step::Steady => break,
                other => panic!("unexpected step {other:?}"),
            }
        }
        assert_eq!(
            restarted,
            [member_name(C, 1), member_name(C, 2), member_name(C, 0)],
            "followers first, the first leader last"
        );
        assert!(o.pods.iter().all(|p| p.image.as_deref() == Some(NEW)));
    }

    #[test]
    fn removal_and_restart_share_one_quorum_rule() {
        let three: Vec<ObservedMember> = three();
        let refs: Vec<&ObservedMember> = three.iter().collect();
        let healthy = |v: &ObservedMember| v.healthy;
        assert!(keeps_quorum(&refs, &three[1], Leave::Removed, healthy));
        assert!(keeps_quorum(&refs, &three[1], Leave::Restarted, healthy));
        let one_down = [voter(0, true), down(voter(1, false)), voter(2, false)];
        let refs: Vec<&ObservedMember> = one_down.iter().collect();
        // Removing the down one leaves 2 of 2; restarting a healthy one leaves 1 of 3.
        assert!(keeps_quorum(&refs, &one_down[1], Leave::Removed, healthy));
        assert!(keeps_quorum(&refs, &one_down[1], Leave::Restarted, healthy));
        assert!(!keeps_quorum(
            &refs,
            &one_down[2],
            Leave::Restarted,
            healthy
        ));
        assert!(!keeps_quorum(&refs, &one_down[2], Leave::Removed, healthy));
        let alone = [voter(0, true)];
        let refs: Vec<&ObservedMember> = alone.iter().collect();
        assert!(!keeps_quorum(&refs, &alone[0], Leave::Removed, healthy));
        let l = learner(3, true, None);
        assert!(keeps_quorum(&refs, &l, Leave::Removed, healthy));
    }
}
