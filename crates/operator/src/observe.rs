//! What is there now: the cluster's Secrets, member Pods and claims in Kubernetes, and the
//! member list and each member's status through the etcd v3 API.
//!
//! Owns the reads of a reconcile and the translation of what was read into the planner's
//! `Observed`. It must not write anything, to Kubernetes or to the members: a reconcile that
//! fails here has changed nothing.

use crate::members::{ClientTls, ClusterView, MemberClient, CORRUPT};
use crate::plan::{Observed, ObservedPod};
use crate::resources::{self, Names};
use crate::restore;
use crate::tls::{self, TlsState};
use crate::{Error, Result};
use ferrokv_cluster_api::EtcdCluster;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;

/// The Kubernetes objects of one cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterObjects {
    /// The Secrets `tls::secrets_to_read` names that exist, by name.
    pub secrets: BTreeMap<String, Secret>,
    pub pods: Vec<Pod>,
    /// Names of the member data claims.
    pub claims: BTreeSet<String>,
}

/// Reads the Secrets, member Pods and claims of `ec`.
pub async fn cluster_objects(
    client: &kube::Client,
    ec: &EtcdCluster,
    names: &Names,
) -> Result<ClusterObjects> {
    let secrets = read_secrets(
        &Api::namespaced(client.clone(), &names.namespace),
        ec,
        names,
    )
    .await?;
    let pods = list::<Pod>(client, names, "Pods").await?;
    let claims = live_claims(&list::<PersistentVolumeClaim>(client, names, "PVCs").await?);
    Ok(ClusterObjects {
        secrets,
        pods,
        claims,
    })
}

/// Names of the claims that are not being deleted. A deleted claim a pod still uses stays
/// listed (the pvc-protection finalizer holds it until the pod is gone) but its data goes with
/// it: its member has lost its data and is replaced, and there is nothing left to delete.
pub fn live_claims(claims: &[PersistentVolumeClaim]) -> BTreeSet<String> {
    claims
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .map(|c| c.name_any())
        .collect()
}

/// The objects of `K` carrying the cluster's labels.
async fn list<K>(client: &kube::Client, names: &Names, what: &str) -> Result<Vec<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let lp = ListParams::default().labels(&resources::selector_string(&names.cluster));
    let api: Api<K> = Api::namespaced(client.clone(), &names.namespace);
    match api.list(&lp).await {
        Ok(list) => Ok(list.items),
        Err(source) => Err(Error::Kube {
            op: format!("list {what}"),
            source,
        }),
    }
}

/// The Secrets the TLS mode needs; a missing user Secret is an error, a missing
/// operator-issued one is simply absent (it gets issued).
pub async fn read_secrets(
    api: &Api<Secret>,
    ec: &EtcdCluster,
    names: &Names,
) -> Result<BTreeMap<String, Secret>> {
    let mut found = BTreeMap::new();
    for read in tls::secrets_to_read(ec, names)? {
        let err = |source| Error::Kube {
            op: format!("get Secret {}", read.name),
            source,
        };
        let secret = if read.required {
            Some(api.get(&read.name).await.map_err(err)?)
        } else {
            api.get_opt(&read.name).await.map_err(err)?
        };
        if let Some(s) = secret {
            found.insert(read.name, s);
        }
    }
    Ok(found)
}

/// What the members said, and the planner's input made from it and the cluster objects.
#[derive(Debug, Clone)]
pub struct Observation {
    /// A client for the members behind the pods, for the step to use.
    pub members: MemberClient,
    /// `None` when no member answered (or there is no pod to ask).
    pub view: Option<ClusterView>,
    pub observed: Observed,
}

/// Asks the members behind `objects.pods` for the member list and their status, with the
/// operator's client identity from `tls`.
pub async fn members(
    ec: &EtcdCluster,
    names: &Names,
    objects: &ClusterObjects,
    tls: &TlsState,
    overrides: &BTreeMap<String, String>,
) -> Observation {
    let members = member_client(ec, names, &objects.pods, overrides, tls.client.clone());
    // No pod, nobody to ask: skip the timeouts.
    let view = if members.endpoints().is_empty() {
        None
    } else {
        members.observe().await
    };
    let observed = observed(ec, objects, view.as_ref(), Timestamp::now());
    Observation {
        members,
        view,
        observed,
    }
}

/// A client for the members behind `pods`: their in-cluster DNS names, or the override of a
/// member (an operator outside the cluster network, tests).
fn member_client(
    ec: &EtcdCluster,
    names: &Names,
    pods: &[Pod],
    overrides: &BTreeMap<String, String>,
    tls: Option<ClientTls>,
) -> MemberClient {
    let endpoints = pods
        .iter()
        .map(|p| {
            let name = p.name_any();
            let url = overrides.get(&name).cloned();
            url.unwrap_or_else(|| resources::client_url(ec, names, &name))
        })
        .collect();
    MemberClient::new(endpoints, tls)
}

/// The planner's input from everything observed.
fn observed(
    ec: &EtcdCluster,
    objects: &ClusterObjects,
    view: Option<&ClusterView>,
    now: Timestamp,
) -> Observed {
    let pods: Vec<ObservedPod> = objects.pods.iter().map(|p| observe_pod(p, now)).collect();
    let members = view.map(|v| {
        let corrupt = corrupt_members(v, &pods);
        let mut ms = v.observed();
        for m in &mut ms {
            m.corrupt = corrupt.get(&m.id).cloned();
        }
        ms
    });
    Observed {
        replicas: ec.spec.replicas,
        members,
        pods,
        claims: objects.claims.clone(),
        empty_dir: ec.spec.storage.empty_dir,
        bootstrapped: ec.status.as_ref().is_some_and(|s| s.cluster_id.is_some()),
        next_ordinal: ec.status.as_ref().map_or(0, |s| s.next_ordinal),
        image: resources::image(ec),
        expected_version: resources::expected_version(&resources::image(ec)),
        corrupt_alarms: view.map_or_else(Vec::new, |v| {
            v.alarms
                .iter()
                .filter(|a| a.alarm == CORRUPT)
                .map(|a| a.member_id)
                .collect()
        }),
    }
}

/// What a member says in its log when it refuses to start on its own bad data, whatever its
/// peers hold: ferrokv's checks at open and its local latest/history check.
const LOCAL_CORRUPTION: &[&str] = &[
    "found local data inconsistency",
    "redb integrity check failed",
    "latest value differs from its history record",
];

/// What ferrokv and etcd say when the initial check finds the member's hash differs from
/// a peer's (`checkInitialHashKV failed`).
const PEER_MISMATCH: &str = "found data inconsistency with peers";

/// The members whose data is known to be bad, by id, with why: the CORRUPT alarm names it,
/// or it refuses to start on a corruption check and is the odd one out. A member whose
/// initial check found a mismatch is blamed only when it differs from a majority of the other
/// voters (ferrokv names each differing peer `peer <id> has hash`, etcd logs
/// `"remote-peer-id":"<id>"` on each `found different hash values` line): a good member
/// restarting beside one bad peer refuses to start too, and must not be the one replaced.
pub fn corrupt_members(view: &ClusterView, pods: &[ObservedPod]) -> BTreeMap<u64, String> {
    let voters: Vec<u64> = view
        .members
        .iter()
        .filter(|(m, _)| !m.learner)
        .map(|(m, _)| m.id)
        .collect();
    let mut out = BTreeMap::new();
    for (m, _) in &view.members {
        if view.alarmed(m.id, CORRUPT) {
            out.insert(m.id, "the CORRUPT alarm is raised for it".to_string());
            continue;
        }
        let name = ClusterView::name_of(m);
        let Some(msg) = pods
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.start_refused.as_deref())
        else {
            continue;
        };
        let blamed = if LOCAL_CORRUPTION.iter().any(|l| msg.contains(l)) {
            true
        } else if msg.contains(PEER_MISMATCH) {
            let differing = differing_peers(msg);
            let others: Vec<u64> = voters.iter().copied().filter(|&v| v != m.id).collect();
            let n = others.iter().filter(|o| differing.contains(o)).count();
            !others.is_empty() && n >= crate::plan::quorum(others.len())
        } else {
            false
        };
        if blamed {
            out.insert(
                m.id,
                format!(
                    "it refuses to start on its corruption check: {}",
                    tail(msg, MAX_CORRUPT_MESSAGE)
                ),
            );
        }
    }
    out
}

/// Longest start refusal carried to status and the Event.
const MAX_CORRUPT_MESSAGE: usize = 300;

/// The peer ids a refusal message names as holding another hash.
fn differing_peers(msg: &str) -> BTreeSet<u64> {
    let hex = |s: &str| {
        let id: String = s.chars().take_while(char::is_ascii_hexdigit).collect();
        u64::from_str_radix(&id, 16).ok()
    };
    let mut ids = BTreeSet::new();
    // ferrokv: "..., peer 8e9e05c52164694d has hash 1234, ..."
    for part in msg.split("peer ").skip(1) {
        let id: String = part.chars().take_while(char::is_ascii_hexdigit).collect();
        if part[id.len()..].starts_with(" has hash") {
            ids.extend(hex(&id));
        }
    }
    // etcd: one JSON line per differing peer.
    for line in msg.lines() {
        if !line.contains("found different hash values from remote peer") {
            continue;
        }
        if let Some(rest) = line.split("\"remote-peer-id\":\"").nth(1) {
            ids.extend(hex(rest));
        }
    }
    ids
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
        ready: ready.is_some_and(|c| c.status == "True"),
        terminating: p.metadata.deletion_timestamp.is_some(),
        restore_failed: restore_failure(p),
        start_refused: start_refusal(p),
        image: p
            .spec
            .as_ref()
            .and_then(|s| {
                s.containers
                    .iter()
                    .find(|c| c.name == resources::MEMBER_CONTAINER)
            })
            .and_then(|c| c.image.clone()),
    }
}

/// The member container's termination message when its last run exited non-zero on a
/// corruption check (the pod's `FallbackToLogsOnError` makes it the log tail) and it has not
/// become Ready since: running again (a crash loop) keeps it, Ready ends it.
fn start_refusal(p: &Pod) -> Option<String> {
    let s = p.status.as_ref()?;
    let c = s
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == resources::MEMBER_CONTAINER)?;
    if c.ready {
        return None;
    }
    let current = c.state.as_ref().and_then(|st| st.terminated.as_ref());
    let last = c.last_state.as_ref().and_then(|st| st.terminated.as_ref());
    let t = current.or(last)?;
    let message = t.message.as_deref()?;
    let refused = t.exit_code != 0
        && (message.contains(PEER_MISMATCH)
            || LOCAL_CORRUPTION.iter().any(|l| message.contains(l)));
    refused.then(|| message.to_string())
}

/// Longest restore failure message carried to status and the Event: the end of the log
/// tail, where the error is.
const MAX_FAILURE: usize = 512;

/// The message of the pod's restore init container when its last run failed: terminated
/// with a non-zero exit code, or waiting (back-off) or running again after such a run. A run
/// that succeeded ends it.
fn restore_failure(p: &Pod) -> Option<String> {
    let s = p
        .status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == restore::CONTAINER)?;
    let current = s.state.as_ref().and_then(|st| st.terminated.as_ref());
    let t = match current {
        Some(t) if t.exit_code == 0 => return None,
        Some(t) => t,
        None => s.last_state.as_ref()?.terminated.as_ref()?,
    };
    if t.exit_code == 0 {
        return None;
    }
    let message = t.message.as_deref().unwrap_or_default();
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(if message.is_empty() {
        let reason = t.reason.as_deref().unwrap_or("Error");
        format!("exited with code {} ({reason})", t.exit_code)
    } else {
        tail(&message, MAX_FAILURE)
    })
}

/// The last `max` bytes of `s` (on a character boundary), marked as cut when cut.
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut from = s.len() - max;
    while !s.is_char_boundary(from) {
        from += 1;
    }
    format!("…{}", &s[from..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_claim_held_by_its_finalizer_is_not_live() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
        let claim = |name: &str, deleted: bool| PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                deletion_timestamp: deleted.then(|| Time(k8s_openapi::jiff::Timestamp::now())),
                finalizers: Some(vec!["kubernetes.io/pvc-protection".into()]),
                ..ObjectMeta::default()
            },
            ..PersistentVolumeClaim::default()
        };
        let got = live_claims(&[
            claim("kv-0", false),
            claim("kv-1", true),
            claim("kv-2", false),
        ]);
        assert_eq!(
            got,
            BTreeSet::from(["kv-0".to_string(), "kv-2".to_string()])
        );
    }

    /// A failed restore init container is read as kubelet reports it (terminated, then
    /// waiting in back-off with the failure as last state); a later success ends it.
    #[test]
    fn a_failed_restore_init_container_is_observed() {
        let pod = |init: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "kv-0"},
                "status": {"initContainerStatuses": [init]}}))
            .expect("pod")
        };
        let failed = json!({"terminated": {"exitCode": 1, "reason": "Error",
            "message": "restoring...\nError: wrong key: the backup does not decrypt\n"}});
        let msg = "restoring... Error: wrong key: the backup does not decrypt";
        let now = pod(
            json!({"name": "restore", "image": "i", "imageID": "", "ready": false,
            "restartCount": 0, "state": failed}),
        );
        assert_eq!(restore_failure(&now).as_deref(), Some(msg));
        let backoff = pod(
            json!({"name": "restore", "image": "i", "imageID": "", "ready": false,
            "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": failed}),
        );
        assert_eq!(restore_failure(&backoff).as_deref(), Some(msg));
        let silent = pod(
            json!({"name": "restore", "image": "i", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}),
        );
        assert_eq!(
            restore_failure(&silent).as_deref(),
            Some("exited with code 2 (Error)")
        );
        let fixed = pod(
            json!({"name": "restore", "image": "i", "imageID": "", "ready": true,
            "restartCount": 2, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}},
            "lastState": failed}),
        );
        assert_eq!(restore_failure(&fixed), None);
        let other = pod(
            json!({"name": "other", "image": "i", "imageID": "", "ready": false,
            "restartCount": 0, "state": failed}),
        );
        assert_eq!(restore_failure(&other), None);
        let long = "x".repeat(2000) + " wrong key";
        let cut = tail(&long, MAX_FAILURE);
        assert!(cut.starts_with('…') && cut.ends_with("wrong key"), "{cut}");
        assert!(cut.len() <= MAX_FAILURE + '…'.len_utf8());
    }

    /// The whole pure path of a failed restore: the seed pod as kubelet reports it → the
    /// plan waits for the restore → status says Degraded=True RestoreFailed with the
    /// container's message → one Warning Event, again only when the message changes, and
    /// nothing degraded once a retry succeeded.
    #[test]
    fn a_failed_restore_is_degraded_with_its_message_and_one_event() {
        use crate::plan::{self, Step};
        use crate::status;
        use ferrokv_cluster_api::condition;
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().expect("time");
        let seed = |exit: i32, message: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "kv-0", "creationTimestamp": "2026-01-01T00:00:00Z"},
                "status": {"initContainerStatuses": [{"name": "restore", "image": "i",
                    "imageID": "", "ready": exit == 0, "restartCount": 0,
                    "state": {"terminated": {"exitCode": exit, "message": message}}}]},
            }))
            .expect("pod")
        };
        let mut ec = crate::resources::fixtures::cluster("kv", 3);
        let reconcile = |ec: &EtcdCluster, pod: Pod| {
            let objects = ClusterObjects {
                pods: vec![pod],
                claims: BTreeSet::from(["kv-0".to_string()]),
                ..ClusterObjects::default()
            };
            let obs = observed(ec, &objects, None, now);
            let p = plan::plan("kv", &obs, &plan::PlanConfig::default());
            let s = status::build(ec, None, &obs.pods, &p);
            let event = status::new_restore_failure(ec.status.as_ref(), &s);
            (p, s, event)
        };
        let cond = |s: &ferrokv_cluster_api::EtcdClusterStatus, t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
                .expect("condition")
        };

        let wrong = "Error: wrong key: the backup does not decrypt";
        let (p, s, event) = reconcile(&ec, seed(1, wrong));
        assert_eq!(
            p.step,
            Step::Wait {
                reason: "waiting for the restore of kv-0 to succeed".into()
            }
        );
        let want = format!("the restore of seed kv-0 failed: {wrong}");
        assert_eq!(
            cond(&s, condition::DEGRADED),
            ("True".into(), status::RESTORE_FAILED.into(), want.clone())
        );
        let (st, reason, msg) = cond(&s, condition::PROGRESSING);
        assert_eq!((st.as_str(), reason.as_str()), ("True", "Wait"));
        assert!(msg.contains("restore of kv-0"), "{msg}");
        assert_eq!(event.as_deref(), Some(want.as_str()));

        // The next reconcile sees the same failure in status: no second Event.
        ec.status = Some(s);
        let (_, s, event) = reconcile(&ec, seed(1, wrong));
        assert_eq!(event, None);
        // Another failure (the key fixed, the credentials wrong) is said again.
        ec.status = Some(s);
        let (_, s, event) = reconcile(&ec, seed(1, "Error: access denied"));
        assert!(event.is_some_and(|e| e.contains("access denied")));
        // The retry succeeded: Degraded clears.
        ec.status = Some(s);
        let (_, s, event) = reconcile(&ec, seed(0, ""));
        assert_eq!(event, None);
        assert_eq!(cond(&s, condition::DEGRADED).0, "False");
    }

    /// The CORRUPT alarm names a member; a member refusing to start is blamed when its own
    /// data is bad, or when its initial check differs from a majority of the other voters
    /// (ferrokv's and etcd's words), never when it differs from one bad peer only.
    #[test]
    fn corrupt_members_from_alarms_and_start_refusals() {
        use crate::members::{Alarm, MemberHealth, MemberInfo};
        let info = |id: u64, name: &str| MemberInfo {
            id,
            name: name.into(),
            peer_urls: vec![],
            client_urls: vec![],
            learner: false,
        };
        let health = |id| {
            Some(MemberHealth {
                member_id: id,
                leader: 0xa,
                raft_index: 5,
                version: "3.6.0".into(),
                db_size: 1,
                errors: vec![format!("memberID:{id} alarm:CORRUPT ")],
            })
        };
        let mut view = ClusterView {
            cluster_id: 1,
            members: vec![
                (info(0xa, "kv-0"), health(0xa)),
                (info(0xb, "kv-1"), None),
                (info(0xc, "kv-2"), health(0xc)),
            ],
            alarms: vec![Alarm {
                member_id: 0xc,
                alarm: CORRUPT,
            }],
        };
        let pod = |name: &str, refused: Option<&str>| ObservedPod {
            name: name.into(),
            age: Duration::from_secs(60),
            unready_for: Duration::ZERO,
            ready: refused.is_none(),
            terminating: false,
            restore_failed: None,
            start_refused: refused.map(str::to_string),
            image: None,
        };
        let ferrokv_both = "fatal error: b found data inconsistency with peers: local hash 1 at \
            revision 9 (compact revision -1), peer a has hash 2, peer c has hash 2";
        let ferrokv_one = "fatal error: b found data inconsistency with peers: local hash 1 at \
            revision 9 (compact revision -1), peer c has hash 3";
        let etcd_both = concat!(
            r#"{"level":"warn","msg":"found different hash values from remote peer","remote-peer-id":"a"}"#,
            "\n",
            r#"{"level":"warn","msg":"found different hash values from remote peer","remote-peer-id":"c"}"#,
            "\n",
            r#"{"level":"fatal","msg":"checkInitialHashKV failed","error":"b found data inconsistency with peers"}"#
        );
        let local = "fatal error: storage: redb integrity check failed: page 7";
        let blamed = |view: &ClusterView, msg: Option<&str>| {
            let pods = [pod("kv-0", None), pod("kv-1", msg), pod("kv-2", None)];
            corrupt_members(view, &pods)
        };
        // The alarm alone: kv-2, and the alarm text in Status does not make members unhealthy.
        let got = blamed(&view, None);
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), [0xc]);
        assert!(got[&0xc].contains("CORRUPT alarm"));
        assert!(
            view.observed()[0].healthy,
            "alarms are not a member's own error"
        );
        view.alarms.clear();
        for (msg, want) in [
            (ferrokv_both, true),
            (etcd_both, true),
            (local, true),
            // Differs from one of the two others only: maybe that peer is the bad one.
            (ferrokv_one, false),
            ("fatal error: bind: address in use", false),
        ] {
            let got = blamed(&view, Some(msg));
            assert_eq!(got.contains_key(&0xb), want, "{msg}");
            if want {
                assert!(
                    got[&0xb].starts_with("it refuses to start"),
                    "{:?}",
                    got[&0xb]
                );
            }
        }
    }

    /// The member container's termination message (FallbackToLogsOnError) while it crash
    /// loops; a run that became Ready ends it; other failures are not corruption.
    #[test]
    fn a_start_refusal_is_read_from_the_member_container() {
        let pod = |ready: bool, state: serde_json::Value, last: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "kv-1"},
                "status": {"containerStatuses": [{"name": "member", "image": "i", "imageID": "",
                    "ready": ready, "restartCount": 2, "state": state, "lastState": last}]}}))
            .expect("pod")
        };
        let refused = json!({"terminated": {"exitCode": 1, "reason": "Error",
            "message": "x found data inconsistency with peers: peer a has hash 2"}});
        let backoff = json!({"waiting": {"reason": "CrashLoopBackOff"}});
        let p = pod(false, backoff.clone(), refused.clone());
        assert!(start_refusal(&p).is_some_and(|m| m.contains("peer a has hash 2")));
        let running = json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}});
        assert!(start_refusal(&pod(false, running.clone(), refused.clone())).is_some());
        assert_eq!(start_refusal(&pod(true, running, refused)), None);
        let other = json!({"terminated": {"exitCode": 1, "message": "bind: address in use"}});
        assert_eq!(start_refusal(&pod(false, backoff, other)), None);
    }

    #[test]
    fn pods_are_observed_with_age_readiness_and_deletion() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().expect("time");
        let pod = |extra: serde_json::Value| {
            let mut p = json!({
                "metadata": {"name": "kv-0", "creationTimestamp": "2026-01-01T00:00:00Z"},
            });
            if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
                for (k, v) in e {
                    p.insert(k.clone(), v.clone());
                }
            }
            let p: Pod = serde_json::from_value(p).expect("pod");
            observe_pod(&p, now)
        };
        let ready = pod(json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:01:00Z"}]}}));
        assert_eq!(ready.age, Duration::from_secs(600));
        assert_eq!(ready.unready_for, Duration::ZERO);
        assert!(ready.ready);
        assert!(!ready.terminating);
        let unready = pod(json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:04:00Z"}]}}));
        assert_eq!(unready.unready_for, Duration::from_secs(360));
        assert!(!unready.ready);
        let never = pod(json!({}));
        assert_eq!(never.unready_for, Duration::from_secs(600));
        assert!(!never.ready);
        let mut leaving: Pod = serde_json::from_value(json!({"metadata": {"name": "kv-1",
            "deletionTimestamp": "2026-01-01T00:09:00Z"}}))
        .expect("pod");
        assert!(observe_pod(&leaving, now).terminating);
        leaving.metadata.deletion_timestamp = None;
        assert!(!observe_pod(&leaving, now).terminating);
    }
}
