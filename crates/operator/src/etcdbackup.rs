//! The `EtcdBackup` controller: one backup of a cluster, now, written to the cluster's
//! `spec.backup` store or the resource's own.
//!
//! It shares the cluster controller's [`crate::backup::Backups`], so an on-demand backup and
//! a scheduled one of the same cluster never run at once, and a finished one shows up in the
//! cluster's `status.lastBackup` and `BackupReady` too. A Succeeded or Failed backup is never
//! taken again (create a new resource); a Running one found after an operator restart is.

use crate::backup::{self, Outcome};
use crate::controller::Context;
use crate::resources::Names;
use crate::{observe, tls, Error, Result, MANAGER};
use ferrokv_cluster_api::{BackupPhase, EtcdBackup, EtcdBackupStatus, EtcdCluster};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tracing::{info, warn};

async fn write(api: &Api<EtcdBackup>, b: &EtcdBackup, status: EtcdBackupStatus) -> Result<()> {
    if b.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": "ferrokv.io/v1alpha1",
        "kind": "EtcdBackup",
        "status": status,
    });
    api.patch_status(
        &b.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Kube {
        op: format!("apply EtcdBackup {} status", b.name_any()),
        source,
    })?;
    Ok(())
}

fn status(phase: BackupPhase, message: Option<String>) -> EtcdBackupStatus {
    EtcdBackupStatus {
        phase: Some(phase),
        backup: None,
        message,
    }
}

fn finished(b: &EtcdBackup) -> bool {
    let phase = b.status.as_ref().and_then(|s| s.phase);
    matches!(phase, Some(BackupPhase::Succeeded | BackupPhase::Failed))
}

/// One reconcile of one `EtcdBackup`.
pub async fn reconcile(b: Arc<EtcdBackup>, ctx: Arc<Context>) -> Result<Action> {
    if finished(&b) {
        return Ok(Action::await_change());
    }
    let ns = b.namespace().unwrap_or_default();
    let api: Api<EtcdBackup> = Api::namespaced(ctx.client.clone(), &ns);
    // The watch cache can lag our own status writes: the reconcile queued by the `Running`
    // patch may start after the `Succeeded` patch with the cached object still `Running`, and
    // would take the backup a second time. The API server's copy is what decides.
    let fresh = api
        .get_opt(&b.name_any())
        .await
        .map_err(|source| Error::Kube {
            op: format!("get EtcdBackup {}", b.name_any()),
            source,
        })?;
    let Some(fresh) = fresh else {
        return Ok(Action::await_change());
    };
    if finished(&fresh) {
        return Ok(Action::await_change());
    }
    let b = Arc::new(fresh);
    let clusters: Api<EtcdCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let name = &b.spec.cluster_name;
    let ec = clusters.get_opt(name).await.map_err(|source| Error::Kube {
        op: format!("get EtcdCluster {name}"),
        source,
    })?;
    let Some(ec) = ec else {
        let msg = format!("EtcdCluster {ns}/{name} does not exist (yet)");
        write(&api, &b, status(BackupPhase::Pending, Some(msg))).await?;
        return Ok(Action::requeue(Duration::from_secs(10)));
    };
    let store = b
        .spec
        .store
        .clone()
        .or_else(|| ec.spec.backup.as_ref().map(|s| s.store.clone()));
    let Some(store) = store else {
        let msg = format!("no store: set spec.store, or spec.backup of EtcdCluster {name}");
        write(&api, &b, status(BackupPhase::Failed, Some(msg))).await?;
        return Ok(Action::await_change());
    };
    if let Err(msg) = backup::validate_store(&store, "spec.store") {
        write(&api, &b, status(BackupPhase::Failed, Some(msg))).await?;
        return Ok(Action::await_change());
    }
    if !ctx.backups.try_start(&ec, None, None) {
        let msg = format!("another backup of {name} is running");
        write(&api, &b, status(BackupPhase::Pending, Some(msg))).await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let outcome = take(&ctx, &api, &b, &ec, store).await;
    let (phase, record, message) = match &outcome {
        Ok(Outcome::Succeeded(r)) => (BackupPhase::Succeeded, Some(r.clone()), None),
        Ok(Outcome::Failed { message, .. }) => (BackupPhase::Failed, None, Some(message.clone())),
        Err(e) => (BackupPhase::Failed, None, Some(e.to_string())),
    };
    ctx.backups.finish(
        &ec,
        outcome.unwrap_or_else(|e| Outcome::Failed {
            reason: "BackupFailed",
            message: e.to_string(),
        }),
    );
    info!(backup = %b.name_any(), ?phase, "on-demand backup done");
    let done = EtcdBackupStatus {
        phase: Some(phase),
        backup: record,
        message,
    };
    write(&api, &b, done).await?;
    Ok(Action::await_change())
}

/// Observes the cluster's members the way the cluster reconcile does, then takes the backup.
async fn take(
    ctx: &Context,
    api: &Api<EtcdBackup>,
    b: &EtcdBackup,
    ec: &EtcdCluster,
    store: ferrokv_cluster_api::BackupStore,
) -> Result<Outcome> {
    write(api, b, status(BackupPhase::Running, None)).await?;
    let names = Names::of(ec)?;
    let objects = observe::cluster_objects(&ctx.client, ec, &names).await?;
    let tls = tls::resolve(
        ec,
        &names,
        &objects.secrets,
        OffsetDateTime::now_utc(),
        &ctx.cert_policy,
    )?;
    let seen = observe::members(ec, &names, &objects, &tls.state, &ctx.endpoint_overrides).await;
    let spec = ec.spec.backup.as_ref();
    let job = backup::Job {
        client: ctx.client.clone(),
        recorder: ctx.recorder.clone(),
        metrics: ctx.metrics.clone(),
        ec: ec.clone(),
        members: seen.members,
        view: seen.view,
        store,
        compression: b
            .spec
            .compression
            .or(spec.map(|s| s.compression))
            .unwrap_or_default(),
        endpoint_overrides: ctx.endpoint_overrides.clone(),
        related: Some(b.object_ref(&())),
    };
    Ok(job.run(spec.map(|s| &s.retention)).await)
}

fn error_policy(b: Arc<EtcdBackup>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(backup = %b.name_any(), error = %err, "EtcdBackup reconcile failed, retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the `EtcdBackup` controller until a shutdown signal. Without the CRD installed its
/// watch fails and is retried with back-off; the cluster controller is unaffected.
pub async fn run(client: kube::Client, ctx: Arc<Context>) {
    let api: Api<EtcdBackup> = Api::all(client);
    Controller::new(api, watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "EtcdBackup controller event");
            }
        })
        .await;
}
