//! The controller: one reconcile runs the pipeline observe → plan → build → apply → status,
//! wired into a kube-runtime `Controller`.
//!
//! Owns the order of the pipeline, the requeue times and the error policy; it must not do any
//! step's work itself. Reads are `observe`, the TLS material `tls`, the decision `plan::plan`,
//! the objects `build`, the writes `apply` (the step through `executor` with
//! `apply::KubeExecutor`), the status `status` and the Event texts `events`. Every reconcile
//! recomputes the next step from scratch, so a crash between any two calls is recovered by the
//! next reconcile.

use crate::apply::{Applier, KubeExecutor};
use crate::metrics::Metrics;
use crate::plan::{self, PlanConfig, Step};
use crate::recorder::Recorder;
use crate::resources::Names;
use crate::{
    backup, build, etcdbackup, events, executor, observe, status, tls, Error, Result, MANAGER,
};
use ferrokv_cluster_api::EtcdCluster;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::watcher;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tracing::{info, instrument, warn};

/// Shared state of all reconciles.
pub struct Context {
    pub client: kube::Client,
    pub metrics: Metrics,
    pub plan_config: PlanConfig,
    pub recorder: Recorder,
    /// Member name → client URL to dial instead of its in-cluster DNS name, for an operator
    /// running outside the cluster network (through port-forwards) and for tests.
    pub endpoint_overrides: BTreeMap<String, String>,
    /// `--cert-renew-before` and `--cert-rotation-wait`.
    pub cert_policy: tls::Policy,
    /// Scheduled and on-demand backups in flight, and how the last ones ended.
    pub backups: backup::Backups,
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
            cert_policy: tls::Policy::default(),
            backups: backup::Backups::default(),
        }
    }
}

/// One reconcile of one `EtcdCluster`.
#[instrument(skip_all, fields(cluster = %ec.name_any(), namespace = ?ec.namespace()))]
pub async fn reconcile(ec: Arc<EtcdCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start();
    let names = Names::of(&ec)?;
    let applier = Applier::new(&ctx.client, &ctx.recorder, &names);

    // An invalid spec is refused before anything is read or written.
    if let Err(message) = plan::validate_spec(&ec.spec) {
        let next_ordinal = ec.status.as_ref().map_or(0, |s| s.next_ordinal);
        let p = plan::Plan::invalid(message.clone(), next_ordinal);
        let mut invalid = status::build(&ec, None, &[], &p);
        ctx.backups.decorate(&ec, &mut invalid);
        status::write(&applier, &ec, &invalid).await?;
        return Err(Error::InvalidSpec(message));
    }

    // The TLS material is settled between the two reads: the members are asked with the
    // operator's current client identity, and the plan compares pods with its hash.
    let objects = observe::cluster_objects(&ctx.client, &ec, &names).await?;
    let now = OffsetDateTime::now_utc();
    let tls = tls::resolve(&ec, &names, &objects.secrets, now, &ctx.cert_policy)?;
    let seen = observe::members(&ec, &names, &objects, &tls.state, &ctx.endpoint_overrides).await;

    let plan_config = ctx.plan_config.with_repair(&ec.spec.repair);
    let p = plan::plan(&names.cluster, &seen.observed, &plan_config);
    // Said once, when it appears or changes (status keeps it in the Degraded message after).
    let new_warnings = status::warnings_are_new(&ec, &p.warnings);
    if new_warnings {
        for w in &p.warnings {
            warn!(warning = %w, "spec warning");
        }
    }
    info!(step = ?p.step, "planned");
    ctx.metrics.step(p.step.label());

    let desired = build::desired(&ec, &tls, &p.step, &seen.observed)?;

    // A due scheduled backup starts in its own task; its outcome lands in a later status.
    let backup_wait = backup::on_reconcile(
        &ctx.backups,
        &ctx.metrics,
        || Some(backup_job(&ctx, &ec, &seen, ec.spec.backup.as_ref()?)),
        &ec,
    );
    let mut plain = status::build(&ec, seen.view.as_ref(), &seen.observed.pods, &p);
    ctx.backups.decorate(&ec, &mut plain);
    let before_step = status::keep_refusal(&ec, &plain);
    let written = async {
        applier.cluster_objects(&desired).await?;
        // Status goes before the step: it records the ordinal above every name seen so far,
        // before this step can make one of them disappear (a removal), so names are never
        // handed out twice.
        status::write(&applier, &ec, &before_step).await?;
        let mut exec = KubeExecutor::new(&applier, &seen.members, &ec, &desired);
        executor::execute(&mut exec, &p.step, &seen.observed).await
    }
    .await;
    let outcome = match written {
        Ok(outcome) => outcome,
        Err(err) => {
            // A refused write is reported where users look (status and a Warning Event);
            // `error_policy` then retries it slowly instead of as a transient failure.
            if let Some(message) = err.refusal() {
                warn!(%message, "the API server refused a write");
                status::write(&applier, &ec, &status::refused(&ec, plain, &message)).await?;
                applier.warn(&ec, "WriteRefused", &message).await;
            }
            return Err(err);
        }
    };
    if before_step != plain {
        // The refused write went through this time: the refusal is over.
        let mut ec = (*ec).clone();
        ec.status = Some(before_step);
        status::write(&applier, &ec, &plain).await?;
    }
    if new_warnings {
        applier
            .warn(&ec, "SpecWarning", &p.warnings.join("; "))
            .await;
    }
    // Said when it appears or its message changes; the Degraded condition keeps it in view.
    if let Some(message) = status::new_restore_failure(ec.status.as_ref(), &plain) {
        warn!(%message, "restore failed");
        applier.warn(&ec, status::RESTORE_FAILED, &message).await;
    }
    if let Some(message) = status::new_upgrade_failure(ec.status.as_ref(), &plain) {
        warn!(%message, "image upgrade stopped");
        applier.warn(&ec, status::UPGRADE_FAILED, &message).await;
    }
    // Once per member, when it is first seen corrupt; Degraded keeps it in view.
    for (member, message) in status::new_corruptions(ec.status.as_ref(), &plain) {
        warn!(%member, %message, "member is corrupt");
        applier.warn(&ec, status::MEMBER_CORRUPT, &message).await;
    }
    for ev in events::for_renewal(&tls.renewed)
        .into_iter()
        .chain(events::for_rotation(&tls.rotated))
    {
        applier.publish(&ec, &ev).await;
    }
    if let Some(ev) = events::for_step(&p.step, &outcome) {
        applier.publish(&ec, &ev).await;
    }
    let renewal = tls
        .state
        .renew_at
        .map(|at| Duration::from_secs(u64::try_from(at - now.unix_timestamp()).unwrap_or(0)));
    Ok(requeue_after(&p.step, renewal, backup_wait))
}

/// The scheduled backup job of this reconcile, from its observation.
fn backup_job(
    ctx: &Context,
    ec: &EtcdCluster,
    seen: &observe::Observation,
    spec: &ferrokv_cluster_api::BackupSpec,
) -> backup::Job {
    backup::Job {
        client: ctx.client.clone(),
        recorder: ctx.recorder.clone(),
        metrics: ctx.metrics.clone(),
        ec: ec.clone(),
        members: seen.members.clone(),
        view: seen.view.clone(),
        store: spec.store.clone(),
        compression: spec.compression,
        endpoint_overrides: ctx.endpoint_overrides.clone(),
        related: None,
    }
}

/// A step in flight is looked at again soon; a waiting one a little later; a steady cluster
/// once a minute, as a safety net behind the watches. A certificate renewal or a scheduled
/// backup due sooner brings the reconcile forward (no watch fires when a certificate merely
/// ages or a fire time passes).
fn requeue_after(
    step: &Step,
    renewal: Option<Duration>,
    backup_due_in: Option<Duration>,
) -> Action {
    let regular = match step {
        Step::Steady => Duration::from_secs(60),
        Step::Wait { .. } => Duration::from_secs(10),
        Step::Invalid { .. } => return Action::await_change(),
        _ => Duration::from_secs(2),
    };
    // A second past a renewal's due time, a little past a backup's fire time, so the
    // reconcile finds them due.
    let renewal = renewal.map(|d| d + Duration::from_secs(1));
    let backup = backup_due_in.map(|d| d + Duration::from_millis(200));
    let after = [renewal, backup]
        .into_iter()
        .flatten()
        .fold(regular, |a, b| a.min(b));
    Action::requeue(after)
}

/// Invalid specs wait for a change; refused writes are retried slowly; everything else is
/// retried with a short back-off.
pub fn error_policy(ec: Arc<EtcdCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(err.metric_label());
    match err {
        Error::InvalidSpec(_) => {
            warn!(cluster = %ec.name_any(), error = %err, "invalid spec, waiting for a change");
            Action::await_change()
        }
        // Refused for good until a human changes RBAC, the namespace or the spec (a spec
        // change wakes the controller at once); a slow retry notices the other fixes.
        _ if err.refusal().is_some() => {
            warn!(cluster = %ec.name_any(), error = %err, "write refused, retrying in 60 s");
            Action::requeue(Duration::from_secs(60))
        }
        _ => {
            warn!(cluster = %ec.name_any(), error = %err, "reconcile failed, retrying");
            Action::requeue(Duration::from_secs(5))
        }
    }
}

/// Runs the controller until a shutdown signal.
pub async fn run(client: kube::Client, metrics: Metrics, cert_policy: tls::Policy) {
    let mut ctx = Context::new(client.clone(), metrics);
    ctx.cert_policy = cert_policy;
    let (wake, woken) = tokio::sync::mpsc::unbounded_channel();
    ctx.backups = backup::Backups::with_wake(wake);
    let ctx = Arc::new(ctx);
    // On-demand backups run beside the cluster controller, sharing its backup state.
    let on_demand = tokio::spawn(etcdbackup::run(client.clone(), ctx.clone()));
    let woken =
        futures::stream::unfold(
            woken,
            |mut rx| async move { rx.recv().await.map(|_| ((), rx)) },
        );
    let clusters: Api<EtcdCluster> = Api::all(client.clone());
    Controller::new(clusters, watcher::Config::default())
        // A finished backup wakes the clusters so status reports it at once (kube-runtime's
        // per-object trigger is behind an unstable feature; backups are rare).
        .reconcile_all_on(woken)
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
        // A certificate Secret renewed or deleted by hand is acted on at once, not at the next
        // periodic re-check. Only the operator's own Secrets (their controller owner is the
        // cluster) map to a reconcile; a user's Secrets in `tls.mode: Secrets` reach members
        // through the volume without the operator.
        .owns(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default().labels("app.kubernetes.io/managed-by=ferrokv-operator"),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "controller event");
            }
        })
        .await;
    on_demand.abort();
}

#[cfg(test)]
mod tests {
    //! Reconciles against a mocked API server (`tower_test`, the kube-rs `ApiServerVerifier`
    //! pattern): every request the reconciler makes is checked in order and answered as the
    //! API server would.
    use super::*;
    use crate::certs::{self, LeafKind};
    use crate::members::MemberClient;
    use crate::resources::fixtures::cluster;
    use crate::resources::{self, InitialState, MemberPod};
    use ferrokv_cluster_api::{EtcdClusterStatus, TlsMode};
    use http::{Request, Response};
    use k8s_openapi::api::core::v1::Secret;
    use kube::client::Body;
    use serde_json::{json, Value};
    use std::collections::BTreeSet;

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

    /// Expects a list of `resource` (`pods`, `persistentvolumeclaims`) and answers `items`.
    async fn expect_list(handle: &mut Handle, resource: &str, kind: &str, items: Vec<Value>) {
        let (_, send) = expect(handle, "GET", &format!("{NS}/{resource}")).await;
        send.send_response(respond(
            200,
            &json!({"apiVersion": "v1", "kind": kind, "metadata": {}, "items": items}),
        ));
    }

    /// Expects the member pods and claims to be listed and answers with these.
    async fn expect_members_listed(handle: &mut Handle, pods: Vec<Value>, claims: Vec<Value>) {
        expect_list(handle, "pods", "PodList", pods).await;
        expect_list(
            handle,
            "persistentvolumeclaims",
            "PersistentVolumeClaimList",
            claims,
        )
        .await;
    }

    /// Expects both Services and the PDB to be applied; returns them.
    async fn expect_services_and_pdb(handle: &mut Handle) -> [Value; 3] {
        [
            expect_apply(handle, &format!("{NS}/services/kv-peer")).await,
            expect_apply(handle, &format!("{NS}/services/kv-client")).await,
            expect_apply(
                handle,
                "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/kv",
            )
            .await,
        ]
    }

    /// Expects the Event of a step and returns it.
    async fn expect_event(handle: &mut Handle) -> Value {
        let (ev, send) = expect(
            handle,
            "POST",
            "/apis/events.k8s.io/v1/namespaces/prod/events",
        )
        .await;
        send.send_response(respond(201, &ev));
        ev
    }

    /// Waits for the verifier to have seen (and checked) every request it expects.
    async fn finish(verifier: tokio::task::JoinHandle<()>, secs: u64) {
        tokio::time::timeout(Duration::from_secs(secs), verifier)
            .await
            .expect("verifier timed out")
            .expect("verifier");
    }

    fn assert_metric(ctx: &Context, line: &str) {
        let text = ctx.metrics.render();
        assert!(text.contains(line), "{line} not in {text}");
    }

    /// The reference etcd, which the real-member tests run; missing is a broken set-up.
    fn require_etcd() {
        let ok = std::process::Command::new("etcd")
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "etcd is not installed: run `make deps` (installs Debian's etcd-server and etcd-client)"
        );
    }

    #[tokio::test]
    async fn bootstrap_creates_certs_services_pdb_seed_and_status() {
        let (ctx, mut handle) = ctx();
        let ec = Arc::new(cluster("kv", 3));
        let verifier = tokio::spawn(async move {
            // Observe: the CA and the leaves, in order, then pods and claims; nothing exists.
            let secrets = [
                "kv-ca",
                "kv-peer-ca",
                "kv-server-tls",
                "kv-peer-tls",
                "kv-operator-client-tls",
                "kv-client-tls",
            ];
            for name in secrets {
                let (_, send) = expect(&mut handle, "GET", &format!("{NS}/secrets/{name}")).await;
                send.send_response(not_found());
            }
            expect_members_listed(&mut handle, vec![], vec![]).await;
            // Apply: the two CAs, then the leaves with their SANs.
            let ca = expect_apply(&mut handle, &format!("{NS}/secrets/kv-ca")).await;
            let ca_pem = b64_field(&ca, "ca.crt");
            assert!(b64_field(&ca, "ca.key").contains("PRIVATE KEY"));
            assert_eq!(ca["metadata"]["ownerReferences"][0]["kind"], "EtcdCluster");
            let peer_ca = expect_apply(&mut handle, &format!("{NS}/secrets/kv-peer-ca")).await;
            let peer_ca_pem = b64_field(&peer_ca, "ca.crt");
            assert_ne!(peer_ca_pem, ca_pem, "peers have their own CA");
            let member_sans = certs::member_sans("kv", "prod");
            assert!(member_sans.contains(&"kv-peer.prod.svc".to_string()));
            let mut leaf_certs = Vec::new();
            for (name, sans, signer) in [
                ("kv-server-tls", member_sans.clone(), &ca_pem),
                ("kv-peer-tls", member_sans.clone(), &peer_ca_pem),
                ("kv-operator-client-tls", vec![], &ca_pem),
                ("kv-client-tls", vec![], &ca_pem),
            ] {
                let s = expect_apply(&mut handle, &format!("{NS}/secrets/{name}")).await;
                assert_eq!(s["type"], "kubernetes.io/tls", "{name}");
                assert_eq!(&b64_field(&s, "ca.crt"), signer, "{name}");
                let cert = b64_field(&s, "tls.crt");
                assert_eq!(certs::sans_of(&cert).expect("sans"), sans, "{name}");
                leaf_certs.push(cert);
            }
            let [peer, client, pdb] = expect_services_and_pdb(&mut handle).await;
            assert_eq!(peer["spec"]["clusterIP"], "None");
            assert_eq!(client["spec"]["ports"][0]["port"], 2379);
            assert_eq!(pdb["spec"]["minAvailable"], 2);
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
                    config_hash: &tls::config_hash(&[&leaf_certs[0], &leaf_certs[1]]),
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
            let ev = expect_event(&mut handle).await;
            assert_eq!(ev["reason"], "MemberBootstrapped");
            assert_eq!(ev["note"], "started seed member kv-0");
        });
        let action = reconcile(ec, ctx.clone()).await.expect("reconcile");
        assert_eq!(action, Action::requeue(Duration::from_secs(2)));
        finish(verifier, 5).await;
        assert_metric(
            &ctx,
            "ferrokv_operator_steps_total{step=\"BootstrapSeed\"} 1",
        );
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
        finish(verifier, 5).await;
        assert_metric(&ctx, "reconcile_errors_total{error=\"invalid_spec\"} 1");
    }

    /// The seed's pod is refused (PodSecurity): status says Degraded with the API server's
    /// message, a Warning Event says it too, and the retry is slow, not transient.
    #[tokio::test]
    async fn refused_pod_is_degraded_with_the_message_and_retried_slowly() {
        let (ctx, mut handle) = ctx();
        let mut ec = cluster("kv", 3);
        ec.spec.tls.mode = TlsMode::Disabled;
        let ec = Arc::new(ec);
        let message = "pods \"kv-0\" is forbidden: violates PodSecurity \"restricted:latest\"";
        let verifier = tokio::spawn(async move {
            expect_members_listed(&mut handle, vec![], vec![]).await;
            expect_services_and_pdb(&mut handle).await;
            let before = expect_status(&mut handle, 3).await;
            assert_eq!(before["status"]["conditions"][2]["status"], "False");
            expect_apply(&mut handle, &format!("{NS}/persistentvolumeclaims/kv-0")).await;
            let (_, send) = expect(&mut handle, "PATCH", &format!("{NS}/pods/kv-0")).await;
            send.send_response(respond(
                403,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": message}),
            ));
            let after = expect_status(&mut handle, 3).await;
            let degraded = after["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Degraded").cloned())
                .expect("Degraded");
            assert_eq!(degraded["status"], "True");
            assert_eq!(degraded["reason"], "Refused");
            assert_eq!(degraded["message"], format!("apply Pod kv-0: {message}"));
            let ev = expect_event(&mut handle).await;
            assert_eq!(ev["type"], "Warning");
            assert_eq!(ev["reason"], "WriteRefused");
            assert_eq!(ev["note"], format!("apply Pod kv-0: {message}"));
        });
        let err = reconcile(ec.clone(), ctx.clone())
            .await
            .expect_err("refused");
        assert!(err.refusal().is_some(), "{err}");
        assert_eq!(
            error_policy(ec, &err, ctx.clone()),
            Action::requeue(Duration::from_secs(60))
        );
        finish(verifier, 5).await;
        assert_metric(&ctx, "reconcile_errors_total{error=\"refused\"} 1");
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
        let peer_ca = certs::generate_ca("kv-peer", now - time::Duration::days(80)).expect("ca");
        let fresh = |kind, cn: &str, s: &[String]| {
            certs::issue_leaf(&ca, kind, cn, s, now, 90 * day).expect("fresh")
        };
        let peer_leaf =
            certs::issue_leaf(&peer_ca, LeafKind::Peer, "kv-peer", &sans, now, 90 * day)
                .expect("peer");
        let stored = [
            ("kv-server-tls", old.clone()),
            ("kv-peer-tls", peer_leaf),
            (
                "kv-operator-client-tls",
                fresh(LeafKind::Client, MANAGER, &[]),
            ),
            ("kv-client-tls", fresh(LeafKind::Client, "kv-client", &[])),
        ];
        let ca_obj = serde_json::to_value(resources::ca_secret(&ec, "kv-ca", &ca).expect("ca"))
            .expect("json");
        let peer_ca_obj =
            serde_json::to_value(resources::ca_secret(&ec, "kv-peer-ca", &peer_ca).expect("ca"))
                .expect("json");
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
            let (_, send) = expect(&mut handle, "GET", &format!("{NS}/secrets/kv-peer-ca")).await;
            send.send_response(respond(200, &peer_ca_obj));
            for (name, obj) in &stored_json {
                let (_, send) = expect(&mut handle, "GET", &format!("{NS}/secrets/{name}")).await;
                send.send_response(respond(200, obj));
            }
            expect_members_listed(&mut handle, vec![], vec![]).await;
            // Only the renewed server certificate is written; the CA and the others are kept.
            let (name, obj) = &stored_json[0];
            let renewed = expect_apply(&mut handle, &format!("{NS}/secrets/{name}")).await;
            let cert = b64_field(&renewed, "tls.crt");
            assert_ne!(cert, b64_field(obj, "tls.crt"));
            assert!(!certs::needs_renewal(&cert, time::OffsetDateTime::now_utc()).expect("parse"));
            // Services and PDB follow; stop here by failing them (the test is about certs).
            let (_, send) = expect(&mut handle, "PATCH", &format!("{NS}/services/kv-peer")).await;
            send.send_response(respond(500, &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "message": "boom"})));
        });
        let err = reconcile(Arc::new(ec), ctx2)
            .await
            .expect_err("stopped at services");
        assert!(matches!(err, Error::Kube { .. }), "{err}");
        finish(verifier, 5).await;
        let _ = ctx;
    }

    /// The operator added `kv-1` as a learner and crashed before creating its pod. The next
    /// reconcile (mocked API server, real etcd seed) must create the pod with
    /// `--initial-cluster-state=existing`, and must not add another member.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_after_member_add_creates_the_pod_not_a_second_member() {
        require_etcd();
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
            let pvc = serde_json::to_value(resources::member_pvc(&ec, "kv-0").expect("pvc"))
                .expect("json");
            expect_members_listed(&mut handle, vec![pod], vec![pvc]).await;
            expect_services_and_pdb(&mut handle).await;
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
            let ev = expect_event(&mut handle).await;
            assert_eq!(ev["reason"], "MemberPodCreated");
        });
        let action = reconcile(Arc::new(ec), ctx).await.expect("reconcile");
        assert_eq!(action, Action::requeue(Duration::from_secs(2)));
        finish(verifier, 10).await;
        let (_, list) = seed.list().await.expect("list");
        assert_eq!(list.len(), 2, "no second learner may be added");
    }

    #[tokio::test]
    async fn user_secrets_mode_reads_the_named_secrets() {
        let (ctx, mut handle) = ctx();
        let ec = crate::resources::fixtures::user_secrets_cluster("kv", 3);
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
        let read = observe::read_secrets(&secrets, &ec, &names)
            .await
            .expect("read");
        verifier.await.expect("verifier");
        let tls = tls::resolve(&ec, &names, &read, now, &tls::Policy::default())
            .expect("tls")
            .state;
        let client = tls.client.expect("client identity");
        assert_eq!(client.cert, leaves[2].1.cert);
        assert_eq!(client.ca, ca.cert);
        assert_eq!(
            tls.config_hash,
            tls::config_hash(&[&leaves[0].1.cert, &leaves[1].1.cert])
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
