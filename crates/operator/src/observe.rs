//! What is there now: the cluster's Secrets, member Pods and claims in Kubernetes, and the
//! member list and each member's status through the etcd v3 API.
//!
//! Owns the reads of a reconcile and the translation of what was read into the planner's
//! `Observed`. It must not write anything, to Kubernetes or to the members: a reconcile that
//! fails here has changed nothing.

use crate::members::{ClientTls, ClusterView, MemberClient};
use crate::plan::{Observed, ObservedPod};
use crate::resources::{self, Names};
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
    Observed {
        replicas: ec.spec.replicas,
        members: view.map(ClusterView::observed),
        pods: objects.pods.iter().map(|p| observe_pod(p, now)).collect(),
        claims: objects.claims.clone(),
        empty_dir: ec.spec.storage.empty_dir,
        bootstrapped: ec.status.as_ref().is_some_and(|s| s.cluster_id.is_some()),
        next_ordinal: ec.status.as_ref().map_or(0, |s| s.next_ordinal),
    }
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
    }
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
