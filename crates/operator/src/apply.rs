//! Writing the desired state: server-side apply of what `build` made, deletes, the status
//! subresource, Events, and the Kubernetes `StepExecutor`.
//!
//! The only module besides `observe` that holds the kube client, and the only one that writes
//! with it. It must not decide anything: what to write comes from `build`, which step to take
//! from `plan`, what a step consists of from `executor`. Every apply is server-side with one
//! field manager and `force`, so the operator owns its fields whatever touched them before.

use crate::build::{Desired, MemberObjects, MemberStart};
use crate::events::StepEvent;
use crate::executor::StepExecutor;
use crate::members::MemberClient;
use crate::recorder::Recorder;
use crate::resources::{self, Names};
use crate::{Error, Result, MANAGER};
use ferrokv_cluster_api::{EtcdCluster, EtcdClusterStatus};
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use tracing::{info, warn};

fn kube_err(op: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { op, source }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// Writes the objects of one cluster, all in its namespace.
pub struct Applier<'a> {
    client: &'a kube::Client,
    recorder: &'a Recorder,
    names: &'a Names,
}

impl<'a> Applier<'a> {
    pub fn new(client: &'a kube::Client, recorder: &'a Recorder, names: &'a Names) -> Self {
        Self {
            client,
            recorder,
            names,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.names.namespace)
    }

    /// Server-side apply of one object.
    pub async fn apply<K>(&self, obj: &K) -> Result<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug,
    {
        let name = obj
            .meta()
            .name
            .clone()
            .ok_or(Error::MissingField("metadata.name"))?;
        self.api::<K>()
            .patch(&name, &apply_params(), &Patch::Apply(obj))
            .await
            .map_err(kube_err(format!("apply {} {name}", K::kind(&()))))
    }

    /// Deletes one object; one that is already gone counts as deleted.
    pub async fn delete<K>(&self, name: &str) -> Result<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        match self.api::<K>().delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(Error::Kube {
                op: format!("delete {} {name}", K::kind(&())),
                source,
            }),
        }
    }

    /// The cluster-wide objects: issued Secrets, then Services, then the PDB. The member
    /// objects are the step's and are written by `KubeExecutor` after the status.
    pub async fn cluster_objects(&self, desired: &Desired) -> Result<()> {
        for secret in &desired.secrets {
            self.apply(secret).await?;
            info!(secret = %secret.name_any(), "stored issued certificate");
        }
        for service in &desired.services {
            self.apply(service).await?;
        }
        self.apply(&desired.pdb).await?;
        Ok(())
    }

    /// Server-side apply of the status subresource.
    pub async fn status(&self, status: &EtcdClusterStatus) -> Result<()> {
        let api: Api<EtcdCluster> = self.api();
        let patch = serde_json::json!({
            "apiVersion": "ferrokv.io/v1alpha1",
            "kind": "EtcdCluster",
            "status": status,
        });
        let cluster = &self.names.cluster;
        api.patch_status(cluster, &apply_params(), &Patch::Apply(&patch))
            .await
            .map_err(kube_err(format!("apply status of {cluster}")))?;
        Ok(())
    }

    /// Publishes a Warning Event on the cluster (a refused write).
    pub async fn warn(&self, ec: &EtcdCluster, reason: &str, note: &str) {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note.into()),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &ec.object_ref(&())).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }

    /// Publishes a step's Event on the cluster.
    pub async fn publish(&self, ec: &EtcdCluster, ev: &StepEvent) {
        let event = Event {
            type_: EventType::Normal,
            reason: ev.reason.into(),
            note: Some(ev.note.clone()),
            action: ev.reason.into(),
            secondary: ev
                .member
                .as_deref()
                .map(|m| member_pod_ref(&self.names.namespace, m)),
        };
        // An Event is a courtesy to humans; failing to record one must not fail the reconcile.
        if let Err(e) = self.recorder.publish(&event, &ec.object_ref(&())).await {
            warn!(error = %e, reason = ev.reason, "could not publish event");
        }
    }
}

/// Steps in Kubernetes: member calls through the etcd API, members run as a Pod and a claim.
pub struct KubeExecutor<'a> {
    applier: &'a Applier<'a>,
    members: &'a MemberClient,
    ec: &'a EtcdCluster,
    /// The member objects `build` made for this step.
    built: Option<&'a MemberObjects>,
}

impl<'a> KubeExecutor<'a> {
    pub fn new(
        applier: &'a Applier<'a>,
        members: &'a MemberClient,
        ec: &'a EtcdCluster,
        desired: &'a Desired,
    ) -> Self {
        Self {
            applier,
            members,
            ec,
            built: desired.member.as_ref(),
        }
    }
}

impl StepExecutor for KubeExecutor<'_> {
    async fn add_learner(&mut self, member: &str) -> Result<u64> {
        let url = resources::peer_url(self.ec, self.applier.names, member);
        self.members.add_learner(&url).await
    }

    async fn promote_learner(&mut self, id: u64) -> Result<()> {
        self.members.promote(id).await
    }

    async fn move_leader(&mut self, to: u64) -> Result<()> {
        self.members.move_leader(to).await
    }

    async fn remove_member(&mut self, id: u64) -> Result<()> {
        self.members.remove(id).await
    }

    async fn disarm_alarm(&mut self, id: u64) -> Result<()> {
        self.members.disarm_corrupt(id).await
    }

    async fn start_member(&mut self, start: &MemberStart) -> Result<()> {
        let objects = self.built.filter(|o| o.name == start.name).ok_or_else(|| {
            Error::MemberNotFound(format!("no objects were built for {}", start.name))
        })?;
        // The claim first: a pod whose claim does not exist yet stays Pending.
        if let Some(claim) = &objects.claim {
            self.applier.apply(claim).await?;
        }
        self.applier.apply(&objects.pod).await?;
        Ok(())
    }

    async fn restart_member(&mut self, member: &str) -> Result<()> {
        // Only the pod: the claim keeps the member's data, which it starts again on.
        self.applier.delete::<Pod>(member).await
    }

    async fn delete_member(&mut self, member: &str) -> Result<()> {
        self.applier.delete::<Pod>(member).await?;
        self.applier.delete::<PersistentVolumeClaim>(member).await
    }
}

/// The member's pod as an Event's related object (the pod may not exist yet or any more; the
/// reference only names it).
pub fn member_pod_ref(namespace: &str, member: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(member.into()),
        namespace: Some(namespace.into()),
        ..ObjectReference::default()
    }
}
