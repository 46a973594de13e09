//! The operator on a real control plane: kube-apiserver and kube-controller-manager v1.34 over
//! a ferrokv member, the test node agent running member pods as real `ferrokv` processes, and
//! the operator binary running as its own ServiceAccount with the shipped RBAC.
//!
//! The first tests prove the harness itself (the control plane answers kubectl, the agent runs
//! a pod to Ready, resolves its names, keeps PVC data and finishes graceful deletion); the
//! scenarios then install the operator from `manifests/install.yaml` and drive `EtcdCluster`s.

use std::time::{Duration, Instant};

use ferrokv_tests::kube::{ControlPlane, NodeAgent};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams};

/// Polls `check` until it returns `Some`, failing with `what` and `context()` after `timeout`.
async fn eventually<T, F, Fut>(
    timeout: Duration,
    what: &str,
    mut check: F,
    context: impl Fn() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("{what}: not within {timeout:?}\n{}", context());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const MEMBER_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: solo-0
  namespace: default
  labels: {app: solo}
spec:
  hostname: solo-0
  subdomain: solo-peer
  terminationGracePeriodSeconds: 20
  containers:
    - name: member
      image: ghcr.io/ferrokv/ferrokv:0.1.0
      args:
        - --name=solo-0
        - --data-dir=/var/lib/ferrokv
        - --listen-client-urls=http://0.0.0.0:2379
        - --advertise-client-urls=http://solo-0.solo-peer.default.svc:2379
        - --listen-peer-urls=http://0.0.0.0:2380
        - --initial-advertise-peer-urls=http://solo-0.solo-peer.default.svc:2380
        - --initial-cluster=solo-0=http://solo-0.solo-peer.default.svc:2380
        - --listen-metrics-urls=http://0.0.0.0:2381
      readinessProbe:
        httpGet: {path: /readyz, port: 2381}
        periodSeconds: 1
      volumeMounts:
        - {name: data, mountPath: /var/lib/ferrokv}
  volumes:
    - name: data
      persistentVolumeClaim: {claimName: solo-0}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: solo-0
  namespace: default
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"#;

/// The control plane serves kubectl as the admin; a ServiceAccount token works and RBAC
/// applies to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_plane_serves_kubectl_and_service_account_tokens() {
    let cp = ControlPlane::start().await.expect("control plane");
    let kubectl = cp.kubectl();
    let ns = kubectl.run(&["get", "ns", "-o", "name"]).expect("get ns");
    for want in ["namespace/default", "namespace/kube-system"] {
        assert!(ns.contains(want), "{want} missing from:\n{ns}");
    }
    let version = kubectl.run(&["version", "-o", "json"]).expect("version");
    assert!(version.contains("v1.34.10"), "{version}");

    kubectl
        .run(&["create", "serviceaccount", "probe", "-n", "default"])
        .expect("create sa");
    let sa = cp
        .service_account_kubeconfig("default", "probe", Duration::from_secs(600))
        .expect("sa kubeconfig");
    let as_sa = ferrokv_tests::kube::Kubectl {
        bin: cp.bins.kubectl.clone(),
        kubeconfig: sa,
    };
    let who = as_sa
        .run(&[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ])
        .expect("whoami");
    assert_eq!(who, "system:serviceaccount:default:probe");
    // No role grants it anything: RBAC is really on.
    let err = as_sa
        .run(&["get", "secrets", "-n", "default"])
        .expect_err("an unprivileged ServiceAccount must not list secrets");
    assert!(err.to_string().contains("forbidden"), "{err}");
}

/// The agent binds a pod, resolves its DNS name, runs its member to Ready, keeps the PVC data
/// across pod deletion, finishes graceful deletion, and pvc-protection lets the claim go.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_agent_runs_a_member_pod_to_ready() {
    let cp = ControlPlane::start().await.expect("control plane");
    let agent = NodeAgent::start(&cp).await.expect("node agent");
    let kubectl = cp.kubectl();
    kubectl.apply(MEMBER_POD).expect("apply pod");
    let client = cp.client().await.expect("client");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    let ready = |pods: Api<Pod>| async move {
        let p = pods.get_opt("solo-0").await.ok().flatten()?;
        let st = p.status.clone()?;
        let ready = st
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(p)
    };
    let pod = eventually(
        Duration::from_secs(60),
        "pod solo-0 Ready",
        || ready(pods.clone()),
        || agent.describe(),
    )
    .await;
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("podIP");
    assert!(ip.starts_with("127.0.0."), "{ip}");
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(agent.node.as_str())
    );

    // The member serves on its pod address and knows itself by its DNS name.
    let endpoint = format!("http://{ip}:2379");
    let put = ferrokv_tests::etcdctl(&endpoint, &["put", "k", "kept"]);
    put.ok();
    let list = ferrokv_tests::etcdctl(&endpoint, &["member", "list"]);
    assert!(
        list.ok()
            .contains("http://solo-0.solo-peer.default.svc:2380"),
        "{}",
        list.stdout
    );
    let hosts = std::fs::read_to_string(agent.hosts_file()).expect("hosts");
    assert!(
        hosts.contains(&format!("{ip} solo-0.solo-peer.default.svc.cluster.local")),
        "{hosts}"
    );

    // Graceful deletion: the API server waits for the agent, which SIGTERMs the member and
    // finishes with a grace-0 delete.
    let t = Instant::now();
    pods.delete("solo-0", &DeleteParams::default())
        .await
        .expect("delete pod");
    eventually(
        Duration::from_secs(30),
        "pod solo-0 gone",
        || {
            let pods = pods.clone();
            async move { pods.get_opt("solo-0").await.ok()?.is_none().then_some(()) }
        },
        || agent.describe(),
    )
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "a member exits on SIGTERM well within its grace period ({:?})",
        t.elapsed()
    );

    // A new pod on the same claim finds the data the first one wrote.
    kubectl.apply(MEMBER_POD).expect("apply pod again");
    let pod = eventually(
        Duration::from_secs(60),
        "pod solo-0 Ready again",
        || ready(pods.clone()),
        || agent.describe(),
    )
    .await;
    let ip = pod.status.and_then(|s| s.pod_ip).expect("podIP");
    let endpoint = format!("http://{ip}:2379");
    let get = ferrokv_tests::etcdctl(&endpoint, &["get", "k", "--print-value-only"]);
    assert_eq!(get.ok().trim(), "kept");

    // pvc-protection holds the claim while the pod uses it, and lets it go after.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    claims
        .delete("solo-0", &DeleteParams::default())
        .await
        .expect("delete claim");
    let claim = claims.get("solo-0").await.expect("claim still there");
    assert!(
        claim
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "kubernetes.io/pvc-protection"),
        "{:?}",
        claim.metadata
    );
    pods.delete("solo-0", &DeleteParams::default())
        .await
        .expect("delete pod");
    eventually(
        Duration::from_secs(60),
        "claim solo-0 released by pvc-protection",
        || {
            let claims = claims.clone();
            async move { claims.get_opt("solo-0").await.ok()?.is_none().then_some(()) }
        },
        || agent.describe(),
    )
    .await;
}
