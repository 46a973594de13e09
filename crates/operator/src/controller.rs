//! The controller: observe → plan → apply → status, wired into a kube-runtime `Controller`.
//!
//! Only `observe_*`, `apply_step` and `write_status` touch the network; the decision is
//! `plan::plan`. Every reconcile recomputes the next step from scratch, so a crash between any
//! two calls is recovered by the next reconcile.

use crate::certs::{self, CaPem, LeafKind};
use crate::members::{ClientTls, ClusterView, MemberClient};
use crate::metrics::Metrics;
use crate::plan::{self, Observed, ObservedPod, PlanConfig, RemoveReason, Step};
use crate::resources::{self, InitialState, MemberPod, Names, CONFIG_HASH_ANNOTATION};
use crate::{Error, Result};
use ferrokv_cluster_api::{
    condition, ClusterPhase, EtcdCluster, EtcdClusterStatus, MemberStatus, TlsMode,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, instrument, warn};

/// Field manager of every server-side apply.
pub const MANAGER: &str = "ferrokv-operator";

/// Shared state of all reconciles.
pub struct Context {
    pub client: kube::Client,
    pub metrics: Metrics,
    pub plan_config: PlanConfig,
    pub recorder: Recorder,
    /// Member name → client URL to dial instead of its in-cluster DNS name, for an operator
    /// running outside the cluster network (through port-forwards) and for tests.
    pub endpoint_overrides: BTreeMap<String, String>,
}

impl Context {
    pub fn new(client: kube::Client, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            plan_config: PlanConfig::default(),
            endpoint_overrides: BTreeMap::new(),
        }
    }
}

fn kube_err(op: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let op = op.into();
    move |source| Error::Kube { op, source }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    api.patch(&name, &apply_params(), &Patch::Apply(obj))
        .await
        .map_err(kube_err(format!("apply {} {name}", K::kind(&()))))
}

/// Certificates the operator needs: its own client identity and the hash pods roll on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsState {
    pub client: Option<ClientTls>,
    pub config_hash: String,
}

fn hash_of(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn leaf_days(ec: &EtcdCluster) -> Duration {
    let days = ec
        .spec
        .tls
        .certificate_lifetime_days
        .unwrap_or(certs::DEFAULT_LEAF_DAYS);
    Duration::from_secs(u64::from(days) * 86400)
}

/// Makes sure the CA and all leaf Secrets exist and are fresh; issues or renews what is not.
async fn ensure_tls(ec: &EtcdCluster, names: &Names, secrets: &Api<Secret>) -> Result<TlsState> {
    let now = time::OffsetDateTime::now_utc();
    match ec.spec.tls.mode {
        TlsMode::Disabled => return Ok(TlsState::default()),
        TlsMode::Secrets => {
            let user = ec.spec.tls.secrets.as_ref().ok_or_else(|| {
                Error::InvalidSpec("tls.mode is Secrets but tls.secrets is not set".into())
            })?;
            let get = |n: String| async move {
                secrets
                    .get(&n)
                    .await
                    .map_err(kube_err(format!("get Secret {n}")))
            };
            let server = get(user.server.clone()).await?;
            let peer = get(user.peer.clone()).await?;
            let client = get(user.client.clone()).await?;
            let s = |sec: &Secret, k| resources::secret_str(sec, k).unwrap_or_default();
            return Ok(TlsState {
                client: Some(ClientTls {
                    ca: s(&client, "ca.crt"),
                    cert: s(&client, "tls.crt"),
                    key: s(&client, "tls.key"),
                }),
                config_hash: hash_of(&[&s(&server, "tls.crt"), &s(&peer, "tls.crt")]),
            });
        }
        TlsMode::Auto => {}
    }

    let ca_name = names.ca_secret();
    let existing = secrets
        .get_opt(&ca_name)
        .await
        .map_err(kube_err(format!("get Secret {ca_name}")))?;
    let ca = match existing.as_ref().and_then(|s| {
        Some(CaPem {
            cert: resources::secret_str(s, "ca.crt")?,
            key: resources::secret_str(s, "ca.key")?,
        })
    }) {
        Some(ca) => ca,
        None => {
            let ca = certs::generate_ca(&names.cluster, now)?;
            apply(secrets, &resources::ca_secret(ec, &ca)?).await?;
            info!(secret = %ca_name, "issued cluster CA");
            ca
        }
    };

    let sans = certs::member_sans(&names.cluster, &names.namespace);
    let leaves = [
        (
            names.server_secret(),
            LeafKind::Server,
            format!("{}-server", names.cluster),
            sans.clone(),
        ),
        (
            names.peer_secret(),
            LeafKind::Peer,
            format!("{}-peer", names.cluster),
            sans,
        ),
        (
            names.operator_client_secret(),
            LeafKind::Client,
            MANAGER.to_string(),
            Vec::new(),
        ),
        (
            names.client_secret(),
            LeafKind::Client,
            format!("{}-client", names.cluster),
            Vec::new(),
        ),
    ];
    let mut pems = Vec::with_capacity(leaves.len());
    for (name, kind, cn, sans) in leaves {
        let current = secrets
            .get_opt(&name)
            .await
            .map_err(kube_err(format!("get Secret {name}")))?;
        let fresh = current.as_ref().and_then(|s| {
            let cert = resources::secret_str(s, "tls.crt")?;
            let key = resources::secret_str(s, "tls.key")?;
            let same_ca = resources::secret_str(s, "ca.crt").as_deref() == Some(ca.cert.as_str());
            let renew = certs::needs_renewal(&cert, now).unwrap_or(true);
            (same_ca && !renew).then_some(certs::LeafPem {
                cert,
                key,
                ca: ca.cert.clone(),
            })
        });
        let leaf = match fresh {
            Some(l) => l,
            None => {
                let l = certs::issue_leaf(&ca, kind, &cn, &sans, now, leaf_days(ec))?;
                apply(secrets, &resources::tls_secret(ec, &name, &l)?).await?;
                info!(secret = %name, "issued certificate");
                l
            }
        };
        pems.push(leaf);
    }
    let (server, peer, op) = (&pems[0], &pems[1], &pems[2]);
    Ok(TlsState {
        client: Some(ClientTls {
            ca: op.ca.clone(),
            cert: op.cert.clone(),
            key: op.key.clone(),
        }),
        config_hash: hash_of(&[&server.cert, &peer.cert]),
    })
}

fn seconds_since(t: Option<&Time>, now: Timestamp) -> Duration {
    t.map_or(Duration::ZERO, |t| {
        Duration::from_secs(u64::try_from(now.as_second() - t.0.as_second()).unwrap_or(0))
    })
}

fn observe_pod(p: &Pod, now: Timestamp) -> ObservedPod {
    let created = p.metadata.creation_timestamp.as_ref();
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    let unready_for = match ready {
        Some(c) if c.status == "True" => Duration::ZERO,
        Some(c) => seconds_since(c.last_transition_time.as_ref().or(created), now),
        None => seconds_since(created, now),
    };
    ObservedPod {
        name: p.name_any(),
        age: seconds_since(created, now),
        unready_for,
        config_hash: p
            .annotations()
            .get(CONFIG_HASH_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
    }
}

fn step_label(step: &Step) -> &'static str {
    match step {
        Step::Invalid { .. } => "Invalid",
        Step::BootstrapSeed { .. } => "BootstrapSeed",
        Step::AddLearner { .. } => "AddLearner",
        Step::CreatePod { .. } => "CreatePod",
        Step::PromoteLearner { .. } => "PromoteLearner",
        Step::MoveLeader { .. } => "MoveLeader",
        Step::RemoveMember { .. } => "RemoveMember",
        Step::DeletePod { .. } => "DeletePod",
        Step::RollMember { .. } => "RollMember",
        Step::Wait { .. } => "Wait",
        Step::Steady => "Steady",
    }
}

async fn event(ctx: &Context, ec: &EtcdCluster, reason: &str, note: String) {
    let ev = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    // An Event is a courtesy to humans; failing to record one must not fail the reconcile.
    if let Err(e) = ctx.recorder.publish(&ev, &ec.object_ref(&())).await {
        warn!(error = %e, reason, "could not publish event");
    }
}

/// Applies one planned step.
async fn apply_step(
    ctx: &Context,
    ec: &EtcdCluster,
    names: &Names,
    step: &Step,
    view: Option<&ClusterView>,
    members: &MemberClient,
    tls: &TlsState,
) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let (pods_ref, pvcs_ref) = (&pods, &pvcs);
    let start_pod = |member: String, initial: Vec<String>, state: InitialState| async move {
        if !ec.spec.storage.empty_dir {
            apply(pvcs_ref, &resources::member_pvc(ec, &member)?).await?;
        }
        let spec = MemberPod {
            member: &member,
            initial_members: initial,
            state,
            config_hash: &tls.config_hash,
        };
        apply(pods_ref, &resources::member_pod(ec, &spec)?).await?;
        Ok::<_, Error>(())
    };
    match step {
        Step::BootstrapSeed { name } => {
            start_pod(name.clone(), vec![name.clone()], InitialState::New).await?;
            event(
                ctx,
                ec,
                "MemberBootstrapped",
                format!("started seed member {name}"),
            )
            .await;
        }
        Step::AddLearner { name } => {
            let id = members
                .add_learner(&resources::peer_url(ec, names, name))
                .await?;
            event(
                ctx,
                ec,
                "MemberAdded",
                format!("added learner {name} ({id:x})"),
            )
            .await;
        }
        Step::CreatePod { name } => {
            let initial = view
                .map(|v| {
                    v.members
                        .iter()
                        .map(|(m, _)| ClusterView::name_of(m))
                        .collect()
                })
                .unwrap_or_else(|| vec![name.clone()]);
            start_pod(name.clone(), initial, InitialState::Existing).await?;
            event(
                ctx,
                ec,
                "MemberPodCreated",
                format!("created pod of member {name}"),
            )
            .await;
        }
        Step::PromoteLearner { id, name } => {
            members.promote(*id).await?;
            event(
                ctx,
                ec,
                "MemberPromoted",
                format!("promoted learner {name} ({id:x}) to voter"),
            )
            .await;
        }
        Step::MoveLeader { from, to } => {
            members.move_leader(*to).await?;
            event(
                ctx,
                ec,
                "LeaderMoved",
                format!("moved leadership from {from:x} to {to:x}"),
            )
            .await;
        }
        Step::RemoveMember { id, name, reason } => {
            members.remove(*id).await?;
            let why = match reason {
                RemoveReason::ScaleDown => "scale down",
                RemoveReason::Failed => "unhealthy past the grace period",
                RemoveReason::DataLost => "data lost",
                RemoveReason::LearnerStuck => "learner did not catch up",
                RemoveReason::LearnerNotNeeded => "learner no longer needed",
            };
            event(
                ctx,
                ec,
                "MemberRemoved",
                format!("removed member {name} ({id:x}): {why}"),
            )
            .await;
        }
        Step::DeletePod { name } => {
            let dp = DeleteParams::default();
            ignore_not_found(
                pods.delete(name, &dp).await.map(|_| ()),
                format!("delete Pod {name}"),
            )?;
            ignore_not_found(
                pvcs.delete(name, &dp).await.map(|_| ()),
                format!("delete PVC {name}"),
            )?;
            event(
                ctx,
                ec,
                "MemberDeleted",
                format!("deleted pod and data of former member {name}"),
            )
            .await;
        }
        Step::RollMember { name } => {
            ignore_not_found(
                pods.delete(name, &DeleteParams::default())
                    .await
                    .map(|_| ()),
                format!("delete Pod {name}"),
            )?;
            event(
                ctx,
                ec,
                "MemberRolled",
                format!("restarting {name} with renewed certificates"),
            )
            .await;
        }
        Step::Invalid { .. } | Step::Wait { .. } | Step::Steady => {}
    }
    Ok(())
}

fn ignore_not_found(r: std::result::Result<(), kube::Error>, op: String) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube { op, source }),
    }
}

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
pub fn build_status(
    ec: &EtcdCluster,
    view: Option<&ClusterView>,
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
    let ready = i32::try_from(members.iter().filter(|m| m.healthy).count()).unwrap_or(i32::MAX);
    let available = voters > 0 && healthy_voters >= plan::quorum(voters);
    let gen = ec.metadata.generation;
    let mut conds = Vec::new();
    let (progressing, progress_msg) = match &p.step {
        Step::Steady => (false, "members match the spec".to_string()),
        Step::Invalid { .. } => (false, "waiting for a valid spec".to_string()),
        Step::Wait { reason } => (true, reason.clone()),
        other => (true, step_label(other).to_string()),
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
        step_label(&p.step),
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

async fn write_status(ctx: &Context, names: &Names, status: &EtcdClusterStatus) -> Result<()> {
    let api: Api<EtcdCluster> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let patch = serde_json::json!({
        "apiVersion": "ferrokv.io/v1alpha1",
        "kind": "EtcdCluster",
        "status": status,
    });
    api.patch_status(&names.cluster, &apply_params(), &Patch::Apply(&patch))
        .await
        .map_err(kube_err(format!("apply status of {}", names.cluster)))?;
    Ok(())
}

/// One reconcile of one `EtcdCluster`.
#[instrument(skip_all, fields(cluster = %ec.name_any(), namespace = ?ec.namespace()))]
pub async fn reconcile(ec: Arc<EtcdCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start();
    let names = Names::of(&ec)?;
    let ns = names.namespace.as_str();

    if let Err(message) = plan::validate_replicas(ec.spec.replicas) {
        let p = plan::Plan {
            step: Step::Invalid {
                message: message.clone(),
            },
            warnings: Vec::new(),
            next_ordinal: ec.status.as_ref().map_or(0, |s| s.next_ordinal),
        };
        write_status(&ctx, &names, &build_status(&ec, None, &p)).await?;
        return Err(Error::InvalidSpec(message));
    }

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let tls = ensure_tls(&ec, &names, &secrets).await?;

    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    apply(&services, &resources::peer_service(&ec)?).await?;
    apply(&services, &resources::client_service(&ec)?).await?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), ns);
    apply(&pdbs, &resources::pod_disruption_budget(&ec)?).await?;

    let lp = ListParams::default().labels(&resources::selector_string(&names.cluster));
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pod_list = pods.list(&lp).await.map_err(kube_err("list Pods"))?.items;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let claims: BTreeSet<String> = pvcs
        .list(&lp)
        .await
        .map_err(kube_err("list PVCs"))?
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();

    let endpoints = pod_list
        .iter()
        .map(|p| {
            let name = p.name_any();
            let url = ctx.endpoint_overrides.get(&name).cloned();
            url.unwrap_or_else(|| resources::client_url(&ec, &names, &name))
        })
        .collect();
    let members = MemberClient::new(endpoints, tls.client.clone());
    let view = if pod_list.is_empty() {
        None
    } else {
        members.observe().await
    };

    let now = Timestamp::now();
    let observed = Observed {
        replicas: ec.spec.replicas,
        members: view.as_ref().map(ClusterView::observed),
        pods: pod_list.iter().map(|p| observe_pod(p, now)).collect(),
        claims,
        empty_dir: ec.spec.storage.empty_dir,
        bootstrapped: ec.status.as_ref().is_some_and(|s| s.cluster_id.is_some()),
        next_ordinal: ec.status.as_ref().map_or(0, |s| s.next_ordinal),
        desired_config_hash: tls.config_hash.clone(),
    };
    let terminating = pod_list
        .iter()
        .any(|p| p.metadata.deletion_timestamp.is_some());
    let mut p = plan::plan(&names.cluster, &observed, &ctx.plan_config);
    if terminating && !matches!(p.step, Step::Steady) {
        // A pod on its way out would make the next step race with its deletion.
        p.step = Step::Wait {
            reason: "waiting for a terminating pod to go away".into(),
        };
    }
    for w in &p.warnings {
        warn!(warning = %w, "spec warning");
    }
    info!(step = ?p.step, "planned");
    ctx.metrics.step(step_label(&p.step));

    // Status goes first: it records the ordinal above every name seen so far, before this step
    // can make one of them disappear (a removal), so names are never handed out twice.
    let status = build_status(&ec, view.as_ref(), &p);
    // Status writes wake this controller up again; skipping unchanged ones keeps a steady
    // cluster from reconciling in a loop.
    if ec.status.as_ref() != Some(&status) {
        write_status(&ctx, &names, &status).await?;
    }
    apply_step(&ctx, &ec, &names, &p.step, view.as_ref(), &members, &tls).await?;

    Ok(match p.step {
        Step::Steady => Action::requeue(Duration::from_secs(60)),
        Step::Wait { .. } => Action::requeue(Duration::from_secs(10)),
        Step::Invalid { .. } => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(2)),
    })
}

/// Invalid specs wait for a change; everything else is retried with a short back-off.
pub fn error_policy(ec: Arc<EtcdCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(err.metric_label());
    match err {
        Error::InvalidSpec(_) => {
            warn!(cluster = %ec.name_any(), error = %err, "invalid spec, waiting for a change");
            Action::await_change()
        }
        _ => {
            warn!(cluster = %ec.name_any(), error = %err, "reconcile failed, retrying");
            Action::requeue(Duration::from_secs(5))
        }
    }
}

/// Runs the controller until a shutdown signal.
pub async fn run(client: kube::Client, metrics: Metrics) {
    let ctx = Arc::new(Context::new(client.clone(), metrics));
    let clusters: Api<EtcdCluster> = Api::all(client.clone());
    Controller::new(clusters, watcher::Config::default())
        // Coalesces the burst of events one membership step causes (pod, status, claim).
        .with_config(kube::runtime::controller::Config::default().debounce(Duration::from_secs(1)))
        .owns(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .owns(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            watcher::Config::default(),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    //! Reconciles against a mocked API server (`tower_test`, the kube-rs `ApiServerVerifier`
    //! pattern): every request the reconciler makes is checked in order and answered as the
    //! API server would.
    use super::*;
    use crate::resources::fixtures::cluster;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{json, Value};

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn ctx() -> (Arc<Context>, Handle) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        (Arc::new(Context::new(client, Metrics::default())), handle)
    }

    fn respond(status: u16, body: &Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
            .expect("response")
    }

    fn not_found() -> Response<Body> {
        respond(
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        )
    }

    /// Next request: checks method and path, returns the parsed JSON body (Null if none).
    async fn expect(
        handle: &mut Handle,
        method: &str,
        path: &str,
    ) -> (Value, tower_test::mock::SendResponse<Response<Body>>) {
        let (req, send) = handle
            .next_request()
            .await
            .expect("reconciler stopped calling the API");
        let uri = req.uri().to_string();
        assert_eq!(req.method().as_str(), method, "{uri}");
        assert_eq!(req.uri().path(), path, "{uri}");
        if method == "PATCH" {
            assert!(
                uri.contains("fieldManager=ferrokv-operator") && uri.contains("force=true"),
                "not server-side apply: {uri}"
            );
            assert_eq!(
                req.headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap_or("")),
                Some("application/apply-patch+yaml")
            );
        }
        let bytes = req.into_body().collect_bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("json body")
        };
        (body, send)
    }

    /// Expects an apply and echoes the object back.
    async fn expect_apply(handle: &mut Handle, path: &str) -> Value {
        let (body, send) = expect(handle, "PATCH", path).await;
        send.send_response(respond(200, &body));
        body
    }

    /// Expects the status apply and answers with the whole object, as the API server does.
    async fn expect_status(handle: &mut Handle, replicas: i32) -> Value {
        let (body, send) = expect(
            handle,
            "PATCH",
            "/apis/ferrokv.io/v1alpha1/namespaces/prod/etcdclusters/kv/status",
        )
        .await;
        let mut obj = serde_json::to_value(cluster("kv", replicas)).expect("json");
        obj["status"] = body["status"].clone();
        send.send_response(respond(200, &obj));
        body
    }

    fn b64_field(obj: &Value, key: &str) -> String {
        let s: k8s_openapi::ByteString =
            serde_json::from_value(obj["data"][key].clone()).expect("bytes");
        String::from_utf8(s.0).expect("utf8")
    }

    const NS: &str = "/api/v1/namespaces/prod";

    #[tokio::test]
    async fn bootstrap_creates_certs_services_pdb_seed_and_status() {
        let (ctx, mut handle) = ctx();
        let ec = Arc::new(cluster("kv", 3));
        let verifier = tokio::spawn(async move {
            // CA
            let (_, send) = expect(&mut handle, "GET", &format!("{NS}/secrets/kv-ca")).await;
            send.send_response(not_found());
            let ca = expect_apply(&mut handle, &format!("{NS}/secrets/kv-ca")).await;
            let ca_pem = b64_field(&ca, "ca.crt");
            assert!(b64_field(&ca, "ca.key").contains("PRIVATE KEY"));
            assert_eq!(ca["metadata"]["ownerReferences"][0]["kind"], "EtcdCluster");
            // Leaves, in order, with their SANs.
            let member_sans = certs::member_sans("kv", "prod");
            let mut leaf_certs = Vec::new();
            for (name, sans) in [
                ("kv-server-tls", member_sans.clone()),
                ("kv-peer-tls", member_sans.clone()),
                ("kv-operator-client-tls", vec![]),
                ("kv-client-tls", vec![]),
            ] {
                let (_, send) = expect(&mut handle, "GET", &format!("{NS}/secrets/{name}")).await;
                send.send_response(not_found());
                let s = expect_apply(&mut handle, &format!("{NS}/secrets/{name}")).await;
                assert_eq!(s["type"], "kubernetes.io/tls", "{name}");
                assert_eq!(b64_field(&s, "ca.crt"), ca_pem, "{name}");
                let cert = b64_field(&s, "tls.crt");
                assert_eq!(certs::sans_of(&cert).expect("sans"), sans, "{name}");
                leaf_certs.push(cert);
            }
            let svc = expect_apply(&mut handle, &format!("{NS}/services/kv-peer")).await;
            assert_eq!(svc["spec"]["clusterIP"], "None");
            let svc = expect_apply(&mut handle, &format!("{NS}/services/kv-client")).await;
            assert_eq!(svc["spec"]["ports"][0]["port"], 2379);
            let pdb = expect_apply(
                &mut handle,
                "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/kv",
            )
            .await;
            assert_eq!(pdb["spec"]["maxUnavailable"], 1);
            // Nothing exists yet.
            let (_, send) = expect(&mut handle, "GET", &format!("{NS}/pods")).await;
            send.send_response(respond(
                200,
                &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
            ));
            let (_, send) =
                expect(&mut handle, "GET", &format!("{NS}/persistentvolumeclaims")).await;
            send.send_response(respond(200, &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList", "metadata": {}, "items": []})));
            // Status first, then the seed.
            let status = expect_status(&mut handle, 3).await;
            assert_eq!(
                status["status"]["nextOrdinal"], 0,
                "kv-0 is counted once it is seen"
            );
            assert_eq!(status["status"]["phase"], "Creating");
            assert_eq!(status["status"]["selector"], "app.kubernetes.io/instance=kv,app.kubernetes.io/managed-by=ferrokv-operator,app.kubernetes.io/name=ferrokv");
            let pvc = expect_apply(&mut handle, &format!("{NS}/persistentvolumeclaims/kv-0")).await;
            assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "1Gi");
            let pod = expect_apply(&mut handle, &format!("{NS}/pods/kv-0")).await;
            let want_pod = resources::member_pod(
                &cluster("kv", 3),
                &MemberPod {
                    member: "kv-0",
                    initial_members: vec!["kv-0".into()],
                    state: InitialState::New,
                    config_hash: &hash_of(&[&leaf_certs[0], &leaf_certs[1]]),
                },
            )
            .expect("pod");
            assert_eq!(pod, serde_json::to_value(want_pod).expect("json"));
            let args = pod["spec"]["containers"][0]["args"]
                .as_array()
                .expect("args")
                .clone();
            assert!(args.contains(&json!(
                "--initial-cluster=kv-0=https://kv-0.kv-peer.prod.svc:2380"
            )));
            assert!(args.contains(&json!("--initial-cluster-state=new")));
            let (ev, send) = expect(
                &mut handle,
                "POST",
                "/apis/events.k8s.io/v1/namespaces/prod/events",
            )
            .await;
            assert_eq!(ev["reason"], "MemberBootstrapped");
            assert_eq!(ev["note"], "started seed member kv-0");
            send.send_response(respond(201, &ev));
        });
        let action = reconcile(ec, ctx.clone()).await.expect("reconcile");
        assert_eq!(action, Action::requeue(Duration::from_secs(2)));
        tokio::time::timeout(Duration::from_secs(5), verifier)
            .await
            .expect("verifier timed out")
            .expect("verifier");
        assert!(ctx
            .metrics
            .render()
            .contains("ferrokv_operator_steps_total{step=\"BootstrapSeed\"} 1"));
    }

    #[tokio::test]
    async fn invalid_spec_sets_degraded_and_waits_for_change() {
        let (ctx, mut handle) = ctx();
        let ec = Arc::new(cluster("kv", 0));
        let verifier = tokio::spawn(async move {
            let status = expect_status(&mut handle, 0).await;
            let conds = status["status"]["conditions"]
                .as_array()
                .expect("conditions")
                .clone();
            let degraded = conds
                .iter()
                .find(|c| c["type"] == "Degraded")
                .expect("Degraded");
            assert_eq!(degraded["status"], "True");
            assert_eq!(degraded["reason"], "InvalidSpec");
            assert_eq!(
                degraded["message"],
                "spec.replicas must be between 1 and 9, got 0"
            );
            assert_eq!(status["status"]["phase"], "Degraded");
        });
        let err = reconcile(ec.clone(), ctx.clone())
            .await
            .expect_err("invalid");
        assert!(matches!(err, Error::InvalidSpec(_)));
        assert_eq!(error_policy(ec, &err, ctx.clone()), Action::await_change());
        tokio::time::timeout(Duration::from_secs(5), verifier)
            .await
            .expect("verifier timed out")
            .expect("verifier");
        assert!(ctx
            .metrics
            .render()
            .contains("reconcile_errors_total{error=\"invalid_spec\"} 1"));
    }

    #[tokio::test]
    async fn near_expiry_server_certificate_is_renewed_and_others_kept() {
        let (ctx, mut handle) = ctx();
        let ec = cluster("kv", 3);
        let now = time::OffsetDateTime::now_utc();
        let ca = certs::generate_ca("kv", now - time::Duration::days(80)).expect("ca");
        let sans = certs::member_sans("kv", "prod");
        let day = Duration::from_secs(86400);
        let old = certs::issue_leaf(
            &ca,
            LeafKind::Server,
            "kv-server",
            &sans,
            now - time::Duration::days(70),
            90 * day,
        )
        .expect("old");
        let fresh = |kind, cn: &str, s: &[String]| {
            certs::issue_leaf(&ca, kind, cn, s, now, 90 * day).expect("fresh")
        };
        let stored = [
            ("kv-server-tls", old.clone()),
            ("kv-peer-tls", fresh(LeafKind::Peer, "kv-peer", &sans)),
            (
                "kv-operator-client-tls",
                fresh(LeafKind::Client, MANAGER, &[]),
            ),
            ("kv-client-tls", fresh(LeafKind::Client, "kv-client", &[])),
        ];
        let ca_obj =
            serde_json::to_value(resources::ca_secret(&ec, &ca).expect("ca")).expect("json");
        let stored_json: Vec<(String, Value)> = stored
            .iter()
            .map(|(n, l)| {
                (
                    n.to_string(),
                    serde_json::to_value(resources::tls_secret(&ec, n, l).expect("s"))
                        .expect("json"),
                )
            })
            .collect();
        let ctx2 = ctx.clone();
        let verifier = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", &format!("{NS}/secrets/kv-ca")).await;
            send.send_response(respond(200, &ca_obj));
            for (i, (name, obj)) in stored_json.iter().enumerate() {
                let (_, send) = expect(&mut handle, "GET", &format!("{NS}/secrets/{name}")).await;
                send.send_response(respond(200, obj));
                if i == 0 {
                    let renewed = expect_apply(&mut handle, &format!("{NS}/secrets/{name}")).await;
                    let cert = b64_field(&renewed, "tls.crt");
                    assert_ne!(cert, b64_field(obj, "tls.crt"));
                    assert!(
                        !certs::needs_renewal(&cert, time::OffsetDateTime::now_utc())
                            .expect("parse")
                    );
                }
            }
            // Services and PDB follow; stop here by failing them (the test is about certs).
            let (_, send) = expect(&mut handle, "PATCH", &format!("{NS}/services/kv-peer")).await;
            send.send_response(respond(500, &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "message": "boom"})));
        });
        let err = reconcile(Arc::new(ec), ctx2)
            .await
            .expect_err("stopped at services");
        assert!(matches!(err, Error::Kube { .. }), "{err}");
        tokio::time::timeout(Duration::from_secs(5), verifier)
            .await
            .expect("verifier timed out")
            .expect("verifier");
        let _ = ctx;
    }

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
        let s = build_status(&ec, Some(&view), &p);
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

    /// The operator added `kv-1` as a learner and crashed before creating its pod. The next
    /// reconcile (mocked API server, real etcd seed) must create the pod with
    /// `--initial-cluster-state=existing`, and must not add another member.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_after_member_add_creates_the_pod_not_a_second_member() {
        let has_etcd = std::process::Command::new("etcd")
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_etcd {
            eprintln!("skipped: etcd not installed (apt-get install etcd-server)");
            return;
        }
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("port")
        };
        let (cp, pp) = (port(), port());
        let dir = tempfile::tempdir().expect("tempdir");
        let client_url = format!("http://127.0.0.1:{cp}");
        let peer = format!("http://127.0.0.1:{pp}");
        /// Kills the member even when an assertion fails first.
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _etcd = Kill(
            std::process::Command::new("etcd")
                .args([
                    "--name=kv-0".to_string(),
                    format!("--data-dir={}", dir.path().join("kv-0").display()),
                    format!("--listen-client-urls={client_url}"),
                    format!("--advertise-client-urls={client_url}"),
                    format!("--listen-peer-urls={peer}"),
                    format!("--initial-advertise-peer-urls={peer}"),
                    format!("--initial-cluster=kv-0={peer}"),
                    "--initial-cluster-state=new".to_string(),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn etcd"),
        );
        let seed = MemberClient::new(vec![client_url.clone()], None);
        let mut up = false;
        for _ in 0..100 {
            if seed.list().await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(up, "etcd did not start");
        seed.add_learner("http://kv-1.kv-peer.prod.svc:2380")
            .await
            .expect("MemberAdd");
        // ... crash: no pod for kv-1.

        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mut ctx = Context::new(kube::Client::new(svc, "default"), Metrics::default());
        ctx.endpoint_overrides
            .insert("kv-0".into(), client_url.clone());
        let ctx = Arc::new(ctx);
        let mut ec = cluster("kv", 3);
        ec.spec.tls.mode = TlsMode::Disabled;
        ec.status = Some(EtcdClusterStatus {
            cluster_id: Some("1".into()),
            next_ordinal: 1,
            ..Default::default()
        });
        let ec_for_verifier = ec.clone();
        let verifier = tokio::spawn(async move {
            let ec = ec_for_verifier;
            expect_apply(&mut handle, &format!("{NS}/services/kv-peer")).await;
            expect_apply(&mut handle, &format!("{NS}/services/kv-client")).await;
            expect_apply(
                &mut handle,
                "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/kv",
            )
            .await;
            let seed_pod = MemberPod {
                member: "kv-0",
                initial_members: vec!["kv-0".into()],
                state: InitialState::New,
                config_hash: "",
            };
            let mut pod = serde_json::to_value(resources::member_pod(&ec, &seed_pod).expect("pod"))
                .expect("json");
            pod["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            pod["status"] = json!({"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:01:00Z"}]});
            let (_, send) = expect(&mut handle, "GET", &format!("{NS}/pods")).await;
            send.send_response(respond(
                200,
                &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod]}),
            ));
            let pvc = serde_json::to_value(resources::member_pvc(&ec, "kv-0").expect("pvc"))
                .expect("json");
            let (_, send) =
                expect(&mut handle, "GET", &format!("{NS}/persistentvolumeclaims")).await;
            send.send_response(respond(
                200,
                &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaimList", "metadata": {}, "items": [pvc]}),
            ));
            let (status, send) = expect(
                &mut handle,
                "PATCH",
                "/apis/ferrokv.io/v1alpha1/namespaces/prod/etcdclusters/kv/status",
            )
            .await;
            let mut obj = serde_json::to_value(&ec).expect("json");
            obj["status"] = status["status"].clone();
            send.send_response(respond(200, &obj));
            let members = status["status"]["members"]
                .as_array()
                .expect("members")
                .clone();
            let summary: BTreeSet<(String, bool, bool)> = members
                .iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or("").to_string(),
                        m["learner"].as_bool().unwrap_or(false),
                        m["healthy"].as_bool().unwrap_or(false),
                    )
                })
                .collect();
            assert_eq!(
                summary,
                BTreeSet::from([("kv-0".into(), false, true), ("kv-1".into(), true, false)])
            );
            assert_eq!(status["status"]["leader"], "kv-0");
            assert_eq!(status["status"]["nextOrdinal"], 2);
            let progressing = status["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Progressing").cloned())
                .expect("Progressing");
            assert_eq!(
                (
                    progressing["status"].as_str(),
                    progressing["reason"].as_str()
                ),
                (Some("True"), Some("CreatePod"))
            );

            expect_apply(&mut handle, &format!("{NS}/persistentvolumeclaims/kv-1")).await;
            let pod = expect_apply(&mut handle, &format!("{NS}/pods/kv-1")).await;
            let args: Vec<String> =
                serde_json::from_value(pod["spec"]["containers"][0]["args"].clone()).expect("args");
            assert!(
                args.contains(&"--initial-cluster-state=existing".to_string()),
                "{args:?}"
            );
            assert!(args.contains(&"--name=kv-1".to_string()), "{args:?}");
            let initial = args
                .iter()
                .find_map(|a| a.strip_prefix("--initial-cluster="))
                .expect("initial-cluster");
            let initial: BTreeSet<&str> = initial.split(',').collect();
            assert_eq!(
                initial,
                BTreeSet::from([
                    "kv-0=http://kv-0.kv-peer.prod.svc:2380",
                    "kv-1=http://kv-1.kv-peer.prod.svc:2380"
                ])
            );
            let (ev, send) = expect(
                &mut handle,
                "POST",
                "/apis/events.k8s.io/v1/namespaces/prod/events",
            )
            .await;
            assert_eq!(ev["reason"], "MemberPodCreated");
            send.send_response(respond(201, &ev));
        });
        let action = reconcile(Arc::new(ec), ctx).await.expect("reconcile");
        assert_eq!(action, Action::requeue(Duration::from_secs(2)));
        tokio::time::timeout(Duration::from_secs(10), verifier)
            .await
            .expect("verifier timed out")
            .expect("verifier");
        let (_, list) = seed.list().await.expect("list");
        assert_eq!(list.len(), 2, "no second learner may be added");
    }

    #[tokio::test]
    async fn user_secrets_mode_reads_the_named_secrets() {
        let (ctx, mut handle) = ctx();
        let mut ec = cluster("kv", 3);
        ec.spec.tls.mode = TlsMode::Secrets;
        ec.spec.tls.secrets = Some(ferrokv_cluster_api::TlsSecrets {
            server: "my-server".into(),
            peer: "my-peer".into(),
            client: "my-client".into(),
        });
        let now = time::OffsetDateTime::now_utc();
        let ca = certs::generate_ca("kv", now).expect("ca");
        let day = Duration::from_secs(86400);
        let sans = certs::member_sans("kv", "prod");
        let leaves: Vec<(String, certs::LeafPem)> = [
            ("my-server", LeafKind::Server, sans.clone()),
            ("my-peer", LeafKind::Peer, sans),
            ("my-client", LeafKind::Client, vec![]),
        ]
        .into_iter()
        .map(|(n, k, s)| {
            (
                n.to_string(),
                certs::issue_leaf(&ca, k, n, &s, now, 30 * day).expect("leaf"),
            )
        })
        .collect();
        let objs: Vec<Value> = leaves
            .iter()
            .map(|(n, l)| {
                serde_json::to_value(resources::tls_secret(&ec, n, l).expect("secret"))
                    .expect("json")
            })
            .collect();
        let verifier = tokio::spawn(async move {
            for (name, obj) in ["my-server", "my-peer", "my-client"].iter().zip(objs) {
                let (_, send) = expect(&mut handle, "GET", &format!("{NS}/secrets/{name}")).await;
                send.send_response(respond(200, &obj));
            }
        });
        let names = Names::of(&ec).expect("names");
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), "prod");
        let tls = ensure_tls(&ec, &names, &secrets).await.expect("tls");
        verifier.await.expect("verifier");
        let client = tls.client.expect("client identity");
        assert_eq!(client.cert, leaves[2].1.cert);
        assert_eq!(client.ca, ca.cert);
        assert_eq!(
            tls.config_hash,
            hash_of(&[&leaves[0].1.cert, &leaves[1].1.cert])
        );
        // Pods mount the user's Secrets.
        let pod = resources::member_pod(
            &ec,
            &MemberPod {
                member: "kv-0",
                initial_members: vec!["kv-0".into()],
                state: InitialState::New,
                config_hash: "",
            },
        )
        .expect("pod");
        let vols = serde_json::to_value(pod.spec.and_then(|s| s.volumes)).expect("json");
        assert_eq!(vols[1]["secret"]["secretName"], "my-server");
        assert_eq!(vols[2]["secret"]["secretName"], "my-peer");
    }
}
