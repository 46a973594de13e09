//! The desired state of one reconcile: every Kubernetes object the operator writes, built from
//! the spec, the TLS material and the plan.
//!
//! Owns which objects a reconcile writes (the Secrets of newly issued certificates, both
//! Services, the PodDisruptionBudget, and the Pod and claim of a member the step starts) and
//! the `--initial-cluster` a started member gets. Pure: no client, no I/O, no clock; the
//! object templates themselves are in `resources`. Writing is `apply`'s job.

use crate::plan::{Observed, Step};
use crate::resources::{self, InitialState, MemberPod};
use crate::tls::{Issued, Tls};
use crate::Result;
use ferrokv_cluster_api::EtcdCluster;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

/// How a member is started: its name, every member it must know (itself included) and
/// whether it bootstraps a new cluster or joins an existing one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStart {
    pub name: String,
    pub initial_members: Vec<String>,
    pub state: InitialState,
}

/// The member a step starts, if it starts one. A joining member must list every current
/// member in `--initial-cluster` (names as the planner saw them), or it refuses to start.
pub fn member_start(step: &Step, obs: &Observed) -> Option<MemberStart> {
    match step {
        Step::BootstrapSeed { name } => Some(MemberStart {
            name: name.clone(),
            initial_members: vec![name.clone()],
            state: InitialState::New,
        }),
        Step::CreatePod { name } => {
            let mut initial: Vec<String> = obs
                .members
                .iter()
                .flatten()
                .map(|m| m.name.clone())
                .collect();
            // The planner only creates pods of listed members; without a member list the new
            // member still has to name itself.
            if !initial.contains(name) {
                initial.push(name.clone());
            }
            Some(MemberStart {
                name: name.clone(),
                initial_members: initial,
                state: InitialState::Existing,
            })
        }
        _ => None,
    }
}

/// The objects that run one member.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberObjects {
    pub name: String,
    /// `None` with `storage.emptyDir`: the data lives and dies with the pod.
    pub claim: Option<PersistentVolumeClaim>,
    pub pod: Pod,
}

/// Pod and claim of `start`, with the hash of the certificates it starts with (a record only).
pub fn member_objects(
    ec: &EtcdCluster,
    start: &MemberStart,
    config_hash: &str,
) -> Result<MemberObjects> {
    let claim = if ec.spec.storage.empty_dir {
        None
    } else {
        Some(resources::member_pvc(ec, &start.name)?)
    };
    let pod = resources::member_pod(
        ec,
        &MemberPod {
            member: &start.name,
            initial_members: start.initial_members.clone(),
            state: start.state,
            config_hash,
        },
    )?;
    Ok(MemberObjects {
        name: start.name.clone(),
        claim,
        pod,
    })
}

/// Everything one reconcile writes, in the order it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Only certificates issued by this reconcile: unchanged Secrets are not rewritten, so a
    /// steady cluster makes no writes.
    pub secrets: Vec<Secret>,
    /// The headless peer Service, then the client Service.
    pub services: Vec<Service>,
    pub pdb: PodDisruptionBudget,
    /// The member the planned step starts.
    pub member: Option<MemberObjects>,
}

/// The desired state for `step`, planned from `obs`.
pub fn desired(ec: &EtcdCluster, tls: &Tls, step: &Step, obs: &Observed) -> Result<Desired> {
    let secrets = tls
        .issued
        .iter()
        .map(|i| match i {
            Issued::Ca { secret, pem } => resources::ca_secret(ec, secret, pem),
            Issued::Leaf { secret, pem } => resources::tls_secret(ec, secret, pem),
            Issued::Trust { secret, pem, since } => {
                let mut s = resources::tls_secret(ec, secret, pem)?;
                s.metadata.annotations = Some(std::collections::BTreeMap::from([(
                    crate::tls::TRUSTED_SINCE_ANNOTATION.to_string(),
                    since.to_string(),
                )]));
                Ok(s)
            }
        })
        .collect::<Result<_>>()?;
    let member = member_start(step, obs)
        .map(|start| member_objects(ec, &start, &tls.state.config_hash))
        .transpose()?;
    Ok(Desired {
        secrets,
        services: vec![resources::peer_service(ec)?, resources::client_service(ec)?],
        pdb: resources::pod_disruption_budget(ec)?,
        member,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ObservedMember;
    use crate::resources::fixtures::cluster;
    use crate::tls::TlsState;
    use kube::ResourceExt;

    fn observed(members: Option<&[&str]>) -> Observed {
        Observed {
            replicas: 3,
            members: members.map(|ms| {
                ms.iter()
                    .map(|n| ObservedMember {
                        id: 1,
                        name: (*n).to_string(),
                        learner: false,
                        started: true,
                        healthy: true,
                        leader: false,
                        raft_index: None,
                        corrupt: None,
                        version: None,
                    })
                    .collect()
            }),
            pods: vec![],
            claims: Default::default(),
            empty_dir: false,
            bootstrapped: members.is_some(),
            next_ordinal: 0,
            corrupt_alarms: vec![],
            image: String::new(),
            expected_version: None,
        }
    }

    #[test]
    fn started_members_know_every_member() {
        let create = Step::CreatePod {
            name: "kv-1".into(),
        };
        // (case, step, observation, want: initial members and state)
        type Row = (
            &'static str,
            Step,
            Observed,
            Option<(Vec<&'static str>, InitialState)>,
        );
        let cases: Vec<Row> = vec![
            (
                "seed bootstraps alone",
                Step::BootstrapSeed {
                    name: "kv-0".into(),
                },
                observed(None),
                Some((vec!["kv-0"], InitialState::New)),
            ),
            (
                "joining member lists the others and itself",
                create.clone(),
                observed(Some(&["kv-0", "kv-1"])),
                Some((vec!["kv-0", "kv-1"], InitialState::Existing)),
            ),
            (
                "no member list: itself",
                create,
                observed(None),
                Some((vec!["kv-1"], InitialState::Existing)),
            ),
            (
                "other steps start nothing",
                Step::DeletePod {
                    name: "kv-1".into(),
                },
                observed(Some(&["kv-0"])),
                None,
            ),
        ];
        for (name, step, obs, want) in cases {
            let got = member_start(&step, &obs);
            let got = got.as_ref().map(|s| {
                (
                    s.initial_members.iter().map(String::as_str).collect(),
                    s.state,
                )
            });
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn desired_state_of_a_bootstrap() {
        let ec = cluster("kv", 3);
        let tls = Tls {
            state: TlsState {
                client: None,
                config_hash: "h".into(),
                renew_at: None,
            },
            ..Tls::default()
        };
        let step = Step::BootstrapSeed {
            name: "kv-0".into(),
        };
        let d = desired(&ec, &tls, &step, &observed(None)).expect("desired");
        assert!(d.secrets.is_empty(), "nothing issued, nothing rewritten");
        let services: Vec<String> = d.services.iter().map(|s| s.name_any()).collect();
        assert_eq!(services, ["kv-peer", "kv-client"]);
        assert_eq!(d.pdb.name_any(), "kv");
        let m = d.member.expect("seed objects");
        assert_eq!(m.claim.map(|c| c.name_any()).as_deref(), Some("kv-0"));
        assert_eq!(
            m.pod.annotations().get(resources::CONFIG_HASH_ANNOTATION),
            Some(&"h".to_string())
        );

        let mut ec = ec;
        ec.spec.storage.empty_dir = true;
        let d = desired(&ec, &tls, &step, &observed(None)).expect("desired");
        assert!(d.member.expect("seed").claim.is_none());
        let d = desired(&ec, &tls, &Step::Steady, &observed(Some(&["kv-0"]))).expect("d");
        assert!(d.member.is_none());
    }
}
