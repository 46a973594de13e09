//! The operator on a real control plane: kube-apiserver and kube-controller-manager v1.34 over
//! a ferrokv member, the test node agent running member pods as real `ferrokv` processes, and
//! the operator binary running as its own ServiceAccount with the shipped RBAC.
//!
//! The first tests prove the harness itself (the control plane answers kubectl, the agent runs
//! a pod to Ready, resolves its names, keeps PVC data and finishes graceful deletion); the
//! scenarios then install the operator from `manifests/install.yaml` and drive `EtcdCluster`s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrokv_tests::kube::{ControlPlane, NodeAgent, Testbed};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::Value;

/// [`ferrokv_tests::kube::eventually`], failing the test with its message (and context).
async fn eventually<T, F, Fut>(
    timeout: Duration,
    what: &str,
    check: F,
    context: impl Fn() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    ferrokv_tests::kube::eventually(timeout, what, check, context)
        .await
        .or_panic()
}

/// Harness errors carry multi-line context: fail with their text, not their `Debug`.
trait OrPanic<T> {
    fn or_panic(self) -> T;
}

impl<T> OrPanic<T> for ferrokv_tests::kube::Result<T> {
    fn or_panic(self) -> T {
        self.unwrap_or_else(|e| panic!("{e}"))
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
      env:
        - {name: SOLO_GREETING, value: /etc/solo/greeting}
      volumeMounts:
        - {name: data, mountPath: /var/lib/ferrokv}
        - {name: conf, mountPath: /etc/solo, readOnly: true}
  volumes:
    - name: data
      persistentVolumeClaim: {claimName: solo-0}
    - name: conf
      secret: {secretName: solo-conf}
---
apiVersion: v1
kind: Secret
metadata:
  name: solo-conf
  namespace: default
stringData: {greeting: hello}
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
    // Mount paths in the environment point into the pod's volumes; a Secret volume follows
    // the Secret.
    let pid = agent
        .pod("default", "solo-0")
        .and_then(|p| p.pid)
        .expect("pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let greeting = String::from_utf8_lossy(&environ)
        .split('\0')
        .find_map(|kv| kv.strip_prefix("SOLO_GREETING=").map(str::to_string))
        .expect("SOLO_GREETING in the member's environment");
    assert!(!greeting.starts_with("/etc/solo"), "{greeting}");
    assert_eq!(
        std::fs::read_to_string(&greeting).expect("greeting"),
        "hello"
    );
    kubectl
        .apply("apiVersion: v1\nkind: Secret\nmetadata: {name: solo-conf, namespace: default}\nstringData: {greeting: bye}\n")
        .expect("update secret");
    eventually(
        Duration::from_secs(20),
        "the Secret volume follows the Secret",
        || {
            let greeting = greeting.clone();
            async move { (std::fs::read_to_string(&greeting).ok()? == "bye").then_some(()) }
        },
        || agent.describe(),
    )
    .await;
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

/// `etcdctl member list -w json` through one member pod: (name, is learner) per member.
fn member_list(ip: &str) -> Vec<(String, bool)> {
    let out = ferrokv_tests::etcdctl(
        &format!("http://{ip}:2379"),
        &["member", "list", "-w", "json"],
    );
    let v = out.json();
    let mut members: Vec<(String, bool)> = v["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or_default().to_string(),
                        m["isLearner"] == true,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    members.sort();
    members
}

fn cluster_yaml(ns: &str, name: &str, replicas: u32, tls: &str) -> String {
    format!(
        "apiVersion: ferrokv.io/v1alpha1
kind: EtcdCluster
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  tls: {{mode: {tls}}}
"
    )
}

/// The status, Events and member list of a cluster that just became Available with `n`
/// members named after its pods.
async fn assert_cluster_of(bed: &Testbed, ns: &str, name: &str, n: usize) {
    let pods = bed.member_pods(ns, name).await.or_panic();
    assert_eq!(pods.len(), n, "member pods {pods:?}\n{}", bed.context(ns));
    let want: Vec<(String, bool)> = pods.iter().map(|(p, _)| (p.clone(), false)).collect();
    for (pod, ip) in &pods {
        assert_eq!(
            member_list(ip),
            want,
            "etcdctl member list through {pod}\n{}",
            bed.context(ns)
        );
    }
    // Every member has its own Events: bootstrapped as the seed, or added and promoted.
    let events = bed.events(ns, name).await.or_panic();
    let names = |reason: &str, member: &str| {
        events
            .iter()
            .any(|(r, note)| r == reason && note.split([' ', '(']).any(|w| w == member))
    };
    for (member, _) in &pods {
        let seed = names("MemberBootstrapped", member);
        let added = names("MemberAdded", member) && names("MemberPromoted", member);
        assert!(
            seed || added,
            "no Events of {member} (bootstrapped, or added and promoted): {events:?}"
        );
    }
}

/// Bootstrap of a 1-member and a 3-member cluster without TLS, from the shipped install.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_bootstraps_one_and_three_members_tls_disabled() {
    let bed = Testbed::start().await.or_panic();
    let t = Instant::now();
    bed.cp
        .kubectl()
        .apply(&cluster_yaml("default", "one", 1, "Disabled"))
        .expect("apply one");
    bed.wait_available("default", "one", 1, Duration::from_secs(90))
        .await
        .or_panic();
    assert_cluster_of(&bed, "default", "one", 1).await;
    eprintln!("one member Available after {:?}", t.elapsed());

    let t = Instant::now();
    bed.cp
        .kubectl()
        .apply(&cluster_yaml("default", "three", 3, "Disabled"))
        .expect("apply three");
    bed.wait_available("default", "three", 3, Duration::from_secs(180))
        .await
        .or_panic();
    assert_cluster_of(&bed, "default", "three", 3).await;
    assert_pdb_allows(&bed, "default", "three", 3, 1).await;
    eprintln!("three members Available after {:?}", t.elapsed());
}

/// Names of the members `etcdctl member list` shows, and whether any is a learner.
fn names_in(member_list_json: &str) -> (Vec<String>, bool) {
    let v: Value = serde_json::from_str(member_list_json).expect("member list JSON");
    let ms = v["members"].as_array().cloned().unwrap_or_default();
    let mut names: Vec<String> = ms
        .iter()
        .map(|m| m["name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    (names, ms.iter().any(|m| m["isLearner"] == true))
}

/// A TLS handshake with the member at `ip` on the peer port (2380) as `host`, presenting the
/// certificate of Secret `identity` and trusting the `ca.crt` of Secret `trust`: `Ok` when the
/// handshake completed (whatever the HTTP/2 answer), `Err` with curl's words when it failed.
async fn peer_handshake(
    bed: &Testbed,
    ns: &str,
    identity: &str,
    trust: &str,
    host: &str,
    ip: &str,
) -> Result<String, String> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(bed.client.clone(), ns);
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |secret: &k8s_openapi::api::core::v1::Secret, key: &str, file: &str| {
        let data = secret.data.as_ref().and_then(|d| d.get(key)).expect(key);
        let path = dir.path().join(file);
        std::fs::write(&path, &data.0).expect("write");
        path.display().to_string()
    };
    let id = secrets.get(identity).await.expect("identity Secret");
    let ca = secrets.get(trust).await.expect("trust Secret");
    let (cert, key, cacert) = (
        write(&id, "tls.crt", "tls.crt"),
        write(&id, "tls.key", "tls.key"),
        write(&ca, "ca.crt", "ca.crt"),
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "10", "-o", "/dev/null"])
        .args(["-w", "%{http_code}"])
        .args(["--cert", &cert, "--key", &key, "--cacert", &cacert])
        .arg("--connect-to")
        .arg(format!("{host}:2380:{ip}:2380"))
        .arg(format!("https://{host}:2380/"))
        .output()
        .expect("run curl");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    // Any HTTP/2 answer means the server accepted the certificate; with TLS 1.3 a refused one
    // shows only on the first read (curl: 000 and the server's alert or a reset).
    match code.trim().parse::<u16>() {
        Ok(c) if (100..600).contains(&c) => Ok(format!("HTTP {c} ({}) {stderr}", out.status)),
        Ok(0) => Err(format!("{} {stderr}", out.status)),
        _ => panic!("curl did not run as meant ({}): {stderr}", out.status),
    }
}

/// Bootstrap of 3 members with operator-issued TLS: the members serve clients and peers over
/// mutual TLS with certificates for their DNS names.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_bootstraps_three_members_tls_auto() {
    let bed = Testbed::start().await.or_panic();
    let ns = "default";
    let t = Instant::now();
    bed.cp
        .kubectl()
        .apply(&cluster_yaml(ns, "secure", 3, "Auto"))
        .expect("apply secure");
    bed.wait_available(ns, "secure", 3, Duration::from_secs(180))
        .await
        .or_panic();
    eprintln!("three TLS members Available after {:?}", t.elapsed());
    let pods = bed.member_pods(ns, "secure").await.or_panic();
    let want: Vec<String> = pods.iter().map(|(p, _)| p.clone()).collect();
    for member in &want {
        let out = bed
            .etcdctl_dns(
                ns,
                "secure",
                member,
                true,
                &["member", "list", "-w", "json"],
            )
            .await
            .or_panic();
        assert_eq!(names_in(&out), (want.clone(), false), "through {member}");
    }
    // Without a client certificate the member refuses the client.
    let plain = ferrokv_tests::kube::hosts_command(
        bed.agent.hosts_file(),
        std::path::Path::new("etcdctl"),
        &[
            "--dial-timeout=2s".into(),
            "--command-timeout=3s".into(),
            format!("--endpoints=https://{}.secure-peer.{ns}.svc:2379", want[0]),
            "--insecure-skip-tls-verify".into(),
            "member".into(),
            "list".into(),
        ],
    )
    .env("ETCDCTL_API", "3")
    .output()
    .expect("run etcdctl");
    assert!(
        !plain.status.success(),
        "a client without certificate was served"
    );
    // The peer port trusts only the peer CA: the users' client certificate (cluster CA) is
    // refused in the handshake, the peer certificate is accepted.
    let (member, ip) = &pods[0];
    let host = format!("{member}.secure-peer.{ns}.svc");
    let refused = peer_handshake(&bed, ns, "secure-client-tls", "secure-peer-tls", &host, ip).await;
    let pod_args = pod(&bed, ns, member)
        .await
        .and_then(|p| p.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.args)
        .unwrap_or_default();
    assert!(
        refused.is_err(),
        "a client certificate completed mutual TLS on the peer port: {refused:?}\nargs {pod_args:?}\n{}",
        bed.agent.describe()
    );
    let accepted = peer_handshake(&bed, ns, "secure-peer-tls", "secure-peer-tls", &host, ip).await;
    assert!(
        accepted.is_ok(),
        "the peer certificate was refused on the peer port: {accepted:?}"
    );
    let events = bed.events(ns, "secure").await.or_panic();
    for reason in ["MemberBootstrapped", "MemberAdded", "MemberPromoted"] {
        assert!(
            events.iter().any(|(r, _)| r == reason),
            "no {reason} Event: {events:?}"
        );
    }
}

/// Writes through the member pods' addresses until stopped; returns the acknowledged keys.
fn start_writer(
    client: kube::Client,
    ns: &'static str,
    cluster: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, usize)> {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, ns);
        let mut acked = Vec::new();
        let mut failures = 0;
        let mut etcd: Option<etcd_client::Client> = None;
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            if etcd.is_none() {
                let lp =
                    ListParams::default().labels(&format!("app.kubernetes.io/instance={cluster}"));
                let endpoints: Vec<String> = pods
                    .list(&lp)
                    .await
                    .map(|l| l.items)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter_map(|p| p.status?.pod_ip)
                    .map(|ip| format!("http://{ip}:2379"))
                    .collect();
                let opts = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(5));
                etcd = etcd_client::Client::connect(endpoints, Some(opts))
                    .await
                    .ok();
            }
            let Some(c) = etcd.as_mut() else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let key = format!("/writer/{i:08}");
            match tokio::time::timeout(Duration::from_secs(5), c.put(key.clone(), "v", None)).await
            {
                Ok(Ok(_)) => {
                    acked.push(key);
                    i += 1;
                }
                _ => {
                    // Not acknowledged: the key may or may not exist; a new key is written next.
                    failures += 1;
                    i += 1;
                    etcd = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (acked, failures)
    })
}

/// 3 → 5 → 3 with a client writing throughout: members are added as learners and promoted,
/// removed one at a time, their pods and claims deleted, and no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_scales_three_five_three_under_writes() {
    let bed = Testbed::start().await.or_panic();
    let ns = "default";
    let kubectl = bed.cp.kubectl();
    kubectl
        .apply(&cluster_yaml(ns, "kv", 3, "Disabled"))
        .expect("apply kv");
    bed.wait_available(ns, "kv", 3, Duration::from_secs(180))
        .await
        .or_panic();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(bed.client.clone(), ns, "kv", stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    let t = Instant::now();
    kubectl
        .run(&["scale", "-n", ns, "etcdcluster/kv", "--replicas=5"])
        .expect("scale to 5");
    bed.wait_available(ns, "kv", 5, Duration::from_secs(180))
        .await
        .or_panic();
    eprintln!("3 -> 5 after {:?}", t.elapsed());
    assert_cluster_of(&bed, ns, "kv", 5).await;
    assert_pdb_allows(&bed, ns, "kv", 5, 2).await;

    let t = Instant::now();
    kubectl
        .run(&["scale", "-n", ns, "etcdcluster/kv", "--replicas=3"])
        .expect("scale to 3");
    bed.wait_available(ns, "kv", 3, Duration::from_secs(180))
        .await
        .or_panic();
    // The removed members' pods and claims go too.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(bed.client.clone(), ns);
    eventually(
        Duration::from_secs(60),
        "3 member pods and 3 claims after scaling down",
        || async {
            let pods = bed.member_pods(ns, "kv").await.ok()?;
            let lp = ListParams::default().labels("app.kubernetes.io/instance=kv");
            let n = claims.list(&lp).await.ok()?.items.len();
            (pods.len() == 3 && n == 3).then_some(())
        },
        || bed.context(ns),
    )
    .await;
    eprintln!("5 -> 3 after {:?}", t.elapsed());
    assert_cluster_of(&bed, ns, "kv", 3).await;
    let events = bed.events(ns, "kv").await.or_panic();
    let removed = events.iter().filter(|(r, _)| r == "MemberRemoved").count();
    assert!(removed >= 1, "no MemberRemoved Event: {events:?}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, failures) = writer.await.expect("writer");
    assert!(
        acked.len() > 50,
        "too few writes acknowledged: {} ({failures} failed)",
        acked.len()
    );
    let (_, ip) = bed.member_pods(ns, "kv").await.or_panic().remove(0);
    let out = ferrokv_tests::etcdctl(
        &format!("http://{ip}:2379"),
        &["get", "/writer/", "--prefix", "--keys-only"],
    );
    let present: std::collections::BTreeSet<&str> =
        out.ok().lines().filter(|l| !l.is_empty()).collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|k| !present.contains(k.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    eprintln!(
        "{} writes acknowledged, {failures} not, none lost",
        acked.len()
    );
}

/// Every API call the operator makes, as (API group, resource, verb): the watches of
/// `controller::run`, the reads of `observe`, the server-side applies (a patch that creates
/// the object when it is missing) and deletes of `apply`, the status apply, and the Events of
/// kube-runtime's Recorder.
const OPERATOR_CALLS: &[(&str, &str, &str)] = &[
    ("ferrokv.io", "etcdclusters", "get"),
    ("ferrokv.io", "etcdclusters", "list"),
    ("ferrokv.io", "etcdclusters", "watch"),
    ("ferrokv.io", "etcdclusters/status", "patch"),
    ("ferrokv.io", "etcdbackups", "get"),
    ("ferrokv.io", "etcdbackups", "list"),
    ("ferrokv.io", "etcdbackups", "watch"),
    ("ferrokv.io", "etcdbackups/status", "patch"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "pods", "create"),
    ("", "pods", "patch"),
    ("", "pods", "delete"),
    ("", "persistentvolumeclaims", "list"),
    ("", "persistentvolumeclaims", "watch"),
    ("", "persistentvolumeclaims", "create"),
    ("", "persistentvolumeclaims", "patch"),
    ("", "persistentvolumeclaims", "delete"),
    ("", "services", "list"),
    ("", "services", "watch"),
    ("", "services", "create"),
    ("", "services", "patch"),
    ("", "secrets", "get"),
    ("", "secrets", "list"),
    ("", "secrets", "watch"),
    ("", "secrets", "create"),
    ("", "secrets", "patch"),
    ("policy", "poddisruptionbudgets", "create"),
    ("policy", "poddisruptionbudgets", "patch"),
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
];

/// What the operator must not be able to do (least privilege).
const NOT_GRANTED: &[(&str, &str, &str)] = &[
    ("", "secrets", "delete"),
    ("", "secrets", "update"),
    ("", "nodes", "get"),
    ("rbac.authorization.k8s.io", "clusterroles", "create"),
    ("ferrokv.io", "etcdclusters", "delete"),
    ("ferrokv.io", "etcdbackups", "delete"),
    ("apps", "deployments", "create"),
];

/// Whether the API server's authorizer lets `user` do `verb` on `group/resource` in
/// namespace `ns` (a SubjectAccessReview, what `kubectl auth can-i --as` asks).
async fn allowed(
    client: &kube::Client,
    user: &str,
    ns: &str,
    (group, resource, verb): (&str, &str, &str),
) -> bool {
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (resource, None),
    };
    let review: SubjectAccessReview = serde_json::from_value(serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "resourceAttributes": {
                "namespace": ns, "group": group, "resource": resource,
                "subresource": subresource, "verb": verb,
            },
        },
    }))
    .expect("review");
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let out = api
        .create(&kube::api::PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview");
    out.status.is_some_and(|s| s.allowed)
}

/// The RBAC of `manifests/install.yaml` and of the chart, as the real authorizer applies them
/// to a ServiceAccount bound the way each install binds it: every call the operator makes is
/// allowed in any namespace, and nothing beyond.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shipped_rbac_allows_every_operator_call_and_no_more() {
    let cp = ControlPlane::start().await.expect("control plane");
    let kubectl = cp.kubectl();
    let root = ferrokv_tests::member::workspace_root();
    let install = root.join("manifests/install.yaml").display().to_string();
    kubectl
        .run(&["apply", "-f", &install])
        .expect("apply install.yaml");

    // The chart's ClusterRole without Helm: its rules are plain YAML after the templated
    // metadata; it is bound to a ServiceAccount of its own.
    let chart =
        std::fs::read_to_string(root.join("charts/ferrokv-operator/templates/clusterrole.yaml"))
            .expect("chart ClusterRole");
    let rules = &chart[chart.find("\nrules:").expect("rules in the chart")..];
    let role = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: chart-operator{rules}"
    );
    kubectl.apply(&role).expect("apply the chart's ClusterRole");
    kubectl
        .run(&[
            "create",
            "serviceaccount",
            "chart-operator",
            "-n",
            "ferrokv-system",
        ])
        .expect("chart sa");
    kubectl
        .run(&[
            "create",
            "clusterrolebinding",
            "chart-operator",
            "--clusterrole=chart-operator",
            "--serviceaccount=ferrokv-system:chart-operator",
        ])
        .expect("chart binding");

    let client = cp.client().await.expect("client");
    let mut wrong = Vec::new();
    for sa in ["ferrokv-operator", "chart-operator"] {
        let user = format!("system:serviceaccount:ferrokv-system:{sa}");
        for ns in ["default", "tenant-a"] {
            for call in OPERATOR_CALLS {
                if !allowed(&client, &user, ns, *call).await {
                    wrong.push(format!("{sa} may not {call:?} in {ns}"));
                }
            }
            for call in NOT_GRANTED {
                if allowed(&client, &user, ns, *call).await {
                    wrong.push(format!("{sa} may {call:?} in {ns}, which it does not need"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "RBAC is off:\n{}", wrong.join("\n"));
}

/// An `EtcdCluster` with more spec lines (indented by two spaces, under `spec:`).
fn cluster_yaml_with(ns: &str, name: &str, replicas: u32, tls: &str, extra: &str) -> String {
    format!("{}{extra}", cluster_yaml(ns, name, replicas, tls))
}

/// Member name → member id, from the cluster's status.
fn member_ids(status: &Value) -> std::collections::BTreeMap<String, String> {
    status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_string(),
                m["id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The pod `ns/name` as the API server has it.
async fn pod(bed: &Testbed, ns: &str, name: &str) -> Option<Pod> {
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), ns);
    pods.get_opt(name).await.ok().flatten()
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A member SIGKILLed under the agent is restarted (restartCount 1) on its claim and rejoins
/// with its id; a member pod deleted is re-created by the operator on the same claim, again
/// with the same id: persistent members are never replaced for a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persistent_members_survive_sigkill_and_pod_deletion() {
    let bed = Testbed::start().await.or_panic();
    let ns = "default";
    bed.cp
        .kubectl()
        .apply(&cluster_yaml(ns, "kv", 3, "Disabled"))
        .expect("apply kv");
    let before = member_ids(
        &bed.wait_available(ns, "kv", 3, Duration::from_secs(180))
            .await
            .or_panic(),
    );
    let pods = bed.member_pods(ns, "kv").await.or_panic();
    let (victim, _) = pods[1].clone();

    let t = Instant::now();
    bed.agent.signal(ns, &victim, "KILL").expect("SIGKILL");
    eventually(
        Duration::from_secs(60),
        &format!("{victim} restarted by the agent and Ready"),
        || async {
            let p = pod(&bed, ns, &victim).await?;
            (restarts(&p) >= 1 && is_ready(&p)).then_some(())
        },
        || bed.context(ns),
    )
    .await;
    let after = member_ids(
        &bed.wait_available(ns, "kv", 3, Duration::from_secs(120))
            .await
            .or_panic(),
    );
    assert_eq!(
        before,
        after,
        "a restarted member keeps its id\n{}",
        bed.context(ns)
    );
    eprintln!("SIGKILLed member back after {:?}", t.elapsed());

    let t = Instant::now();
    let old_uid = pod(&bed, ns, &victim).await.and_then(|p| p.metadata.uid);
    let api: Api<Pod> = Api::namespaced(bed.client.clone(), ns);
    api.delete(&victim, &DeleteParams::default())
        .await
        .expect("delete pod");
    eventually(
        Duration::from_secs(120),
        &format!("{victim} re-created by the operator and Ready"),
        || async {
            let p = pod(&bed, ns, &victim).await?;
            (p.metadata.uid != old_uid && is_ready(&p)).then_some(())
        },
        || bed.context(ns),
    )
    .await;
    let after = member_ids(
        &bed.wait_available(ns, "kv", 3, Duration::from_secs(120))
            .await
            .or_panic(),
    );
    assert_eq!(
        before,
        after,
        "a re-created pod on its claim keeps the member id\n{}",
        bed.context(ns)
    );
    assert_cluster_of(&bed, ns, "kv", 3).await;
    eprintln!("deleted member pod back after {:?}", t.elapsed());
}

/// An emptyDir member whose pod is deleted has lost its data: the operator removes it and adds
/// a new member under a new name with a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn emptydir_member_whose_pod_is_deleted_is_replaced() {
    let bed = Testbed::start().await.or_panic();
    let ns = "default";
    bed.cp
        .kubectl()
        .apply(&cluster_yaml_with(
            ns,
            "ed",
            3,
            "Disabled",
            "  storage: {emptyDir: true}\n",
        ))
        .expect("apply ed");
    let before = member_ids(
        &bed.wait_available(ns, "ed", 3, Duration::from_secs(180))
            .await
            .or_panic(),
    );
    let victim = bed.member_pods(ns, "ed").await.or_panic()[1].0.clone();

    let t = Instant::now();
    let api: Api<Pod> = Api::namespaced(bed.client.clone(), ns);
    api.delete(&victim, &DeleteParams::default())
        .await
        .expect("delete pod");
    let after = eventually(
        Duration::from_secs(180),
        &format!("{victim} replaced by a new member"),
        || async {
            let ec = bed.cluster(ns, "ed")?;
            let st = &ec["status"];
            let ids = member_ids(st);
            let healthy = st["members"]
                .as_array()?
                .iter()
                .filter(|m| m["healthy"] == true && m["learner"] != true)
                .count();
            let available = st["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Available" && c["status"] == "True");
            (ids.len() == 3 && healthy == 3 && available && !ids.contains_key(&victim))
                .then_some(ids)
        },
        || bed.context(ns),
    )
    .await;
    let new: Vec<(&String, &String)> = after
        .iter()
        .filter(|(n, _)| !before.contains_key(*n))
        .collect();
    assert_eq!(new.len(), 1, "one new member: {before:?} -> {after:?}");
    assert!(
        !before.values().any(|id| id == new[0].1),
        "the replacement has a new id: {before:?} -> {after:?}"
    );
    assert_cluster_of(&bed, ns, "ed", 3).await;
    let events = bed.events(ns, "ed").await.or_panic();
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "MemberRemoved" && n.contains(&victim)),
        "no MemberRemoved Event for {victim}: {events:?}"
    );
    eprintln!("emptyDir member replaced after {:?}", t.elapsed());
}

/// A member's PVC is deleted while its pod runs: the pvc-protection finalizer holds the claim
/// (Terminating) until the pod is gone. The member has lost its data, so it is removed and
/// replaced by a new member (new name, new id) while a healthy majority stays, and the old
/// claim goes away instead of being deleted over and over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_whose_pvc_is_deleted_is_replaced() {
    let bed = Testbed::start().await.or_panic();
    let ns = "default";
    bed.cp
        .kubectl()
        .apply(&cluster_yaml(ns, "pv", 3, "Disabled"))
        .expect("apply pv");
    let before = member_ids(
        &bed.wait_available(ns, "pv", 3, Duration::from_secs(180))
            .await
            .or_panic(),
    );
    let victim = bed.member_pods(ns, "pv").await.or_panic()[1].0.clone();
    let t = Instant::now();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(bed.client.clone(), ns);
    claims
        .delete(&victim, &DeleteParams::default())
        .await
        .expect("delete claim");
    let lost_quorum = AtomicBool::new(false);
    let after = eventually(
        Duration::from_secs(180),
        &format!("{victim} (PVC deleted) replaced by a new member"),
        || async {
            let ec = bed.cluster(ns, "pv")?;
            let st = &ec["status"];
            let available = st["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Available" && c["status"] == "True");
            if !available {
                lost_quorum.store(true, Ordering::Relaxed);
            }
            let ids = member_ids(st);
            let healthy = st["members"]
                .as_array()?
                .iter()
                .filter(|m| m["healthy"] == true && m["learner"] != true)
                .count();
            (ids.len() == 3 && healthy == 3 && available && !ids.contains_key(&victim))
                .then_some(ids)
        },
        || bed.context(ns),
    )
    .await;
    assert!(
        !lost_quorum.load(Ordering::Relaxed),
        "Available went False during the replacement\n{}",
        bed.context(ns)
    );
    let new: Vec<(&String, &String)> = after
        .iter()
        .filter(|(n, _)| !before.contains_key(*n))
        .collect();
    assert_eq!(new.len(), 1, "one new member: {before:?} -> {after:?}");
    assert!(
        !before.values().any(|id| id == new[0].1),
        "the replacement has a new id: {before:?} -> {after:?}"
    );
    assert_cluster_of(&bed, ns, "pv", 3).await;
    let mut want: Vec<String> = after.keys().cloned().collect();
    want.sort();
    eventually(
        Duration::from_secs(60),
        &format!("claims of exactly {want:?} ({victim}'s released)"),
        || async { (claim_names(&bed, ns, "pv").await == want).then_some(()) },
        || bed.context(ns),
    )
    .await;
    let events = bed.events(ns, "pv").await.or_panic();
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "MemberRemoved" && n.contains(&victim)),
        "no MemberRemoved Event for {victim}: {events:?}"
    );
    eprintln!("member with a deleted PVC replaced after {:?}", t.elapsed());
}

/// Scaling down when the member to remove is the leader: leadership moves away first, then the
/// member is removed; the cluster stays Available at every size.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_down_moves_leadership_off_the_member_it_removes() {
    let bed = Testbed::start().await.or_panic();
    let ns = "default";
    bed.cp
        .kubectl()
        .apply(&cluster_yaml(ns, "ld", 3, "Disabled"))
        .expect("apply ld");
    let status = bed
        .wait_available(ns, "ld", 3, Duration::from_secs(180))
        .await
        .or_panic();
    let pods = bed.member_pods(ns, "ld").await.or_panic();
    // The newest member is the one a scale-down removes: make it the leader, asking the
    // members themselves (the operator's status may lag) and moving leadership until it is.
    let (newest, newest_ip) = pods.last().cloned().expect("pods");
    let target = member_ids(&status).get(&newest).expect("newest id").clone();
    let all: String = pods
        .iter()
        .map(|(_, ip)| format!("http://{ip}:2379"))
        .collect::<Vec<_>>()
        .join(",");
    eventually(
        Duration::from_secs(30),
        &format!("{newest} leader"),
        || async {
            let out = ferrokv_tests::etcdctl(
                &format!("http://{newest_ip}:2379"),
                &["endpoint", "status", "-w", "json"],
            );
            let v: Value = serde_json::from_str(&out.stdout).ok()?;
            let st = &v[0]["Status"];
            if st["leader"].as_u64().is_some() && st["leader"] == st["header"]["member_id"] {
                return Some(());
            }
            // etcdctl sends MoveLeader to whichever of the endpoints leads.
            let _ = ferrokv_tests::etcdctl(&all, &["move-leader", &target]);
            None
        },
        || bed.context(ns),
    )
    .await;

    let t = Instant::now();
    bed.cp
        .kubectl()
        .run(&["scale", "-n", ns, "etcdcluster/ld", "--replicas=1"])
        .expect("scale to 1");
    bed.wait_available(ns, "ld", 1, Duration::from_secs(180))
        .await
        .or_panic();
    eventually(
        Duration::from_secs(60),
        "one member pod left",
        || async { (bed.member_pods(ns, "ld").await.ok()?.len() == 1).then_some(()) },
        || bed.context(ns),
    )
    .await;
    assert_cluster_of(&bed, ns, "ld", 1).await;
    let events = bed.events(ns, "ld").await.or_panic();
    assert!(
        events.iter().any(|(r, _)| r == "LeaderMoved"),
        "no LeaderMoved Event: {events:?}"
    );
    eprintln!(
        "3 -> 1 with the leader removed first after {:?}",
        t.elapsed()
    );
}

/// Invalid specs are refused by the API server, from the CRD's schema, with a message that
/// names the field: replicas outside 1..9 and a storage size that is not a quantity. (A spec
/// stored before the schema said so is reported Degraded by the operator: its unit tests.)
/// An even size is accepted with a warning that is said once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_specs_are_refused_by_the_schema() {
    let bed = Testbed::start().await.or_panic();
    let ns = "default";
    let kubectl = bed.cp.kubectl();
    let with_size = |size: &str| {
        format!(
            "{}  storage: {{size: {size}}}\n",
            cluster_yaml(ns, "bad", 1, "Disabled")
        )
    };
    let cases = [
        (cluster_yaml(ns, "bad", 0, "Disabled"), "spec.replicas"),
        (cluster_yaml(ns, "bad", 12, "Disabled"), "spec.replicas"),
        (with_size("lots"), "spec.storage.size"),
    ];
    for (yaml, field) in &cases {
        let err = match kubectl.apply(yaml) {
            Ok(out) => panic!("the API server stored an invalid spec ({field}): {out}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(field), "refusal does not name {field}: {err}");
        assert!(bed.cluster(ns, "bad").is_none(), "stored: {yaml}");
    }
    kubectl.apply(&with_size("64Mi")).expect("apply fixed");
    bed.wait_available(ns, "bad", 1, Duration::from_secs(90))
        .await
        .or_panic();
    assert_cluster_of(&bed, ns, "bad", 1).await;

    // An even size is accepted with a warning, said once (not on every reconcile).
    kubectl
        .run(&["scale", "-n", ns, "etcdcluster/bad", "--replicas=2"])
        .expect("scale to 2");
    let st = bed
        .wait_available(ns, "bad", 2, Duration::from_secs(120))
        .await
        .or_panic();
    let degraded = st["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Degraded").cloned())
        .expect("Degraded");
    assert_eq!(
        (degraded["status"].as_str(), degraded["reason"].as_str()),
        (Some("False"), Some("SpecWarning")),
        "{degraded}"
    );
    // Several reconciles later (the scale alone took more than two) it was still said once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = std::fs::read_to_string(bed.operator.log_path()).expect("operator log");
    let said = log.matches("spec warning").count();
    assert_eq!(said, 1, "the even-size warning logged {said} times");
    let events = bed.events(ns, "bad").await.or_panic();
    let warnings: Vec<_> = events.iter().filter(|(r, _)| r == "SpecWarning").collect();
    assert_eq!(warnings.len(), 1, "{events:?}");
    assert!(warnings[0].1.contains("even size"), "{warnings:?}");
}

/// The claims of a cluster, by name.
async fn claim_names(bed: &Testbed, ns: &str, cluster: &str) -> Vec<String> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(bed.client.clone(), ns);
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={cluster}"));
    let mut names: Vec<String> = claims
        .list(&lp)
        .await
        .expect("claims")
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    names.sort();
    names
}

/// A namespace enforcing PodSecurity `restricted`, at first with an admission policy that
/// admits no pod (a refusal the operator cannot fix, as RBAC or PodSecurity ones).
/// The seed's claim is written and its pod refused: status says `Degraded=True` with the API
/// server's message, a Warning Event says it, and the retries reuse the seed's name and claim
/// (one claim, not one per retry). Once the policy is gone the cluster bootstraps 3 members,
/// whose pods the `restricted` policy admits, on exactly 3 claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restricted_namespace_bootstraps_and_refusals_are_reported() {
    let bed = Testbed::start().await.or_panic();
    let ns = "locked";
    let kubectl = bed.cp.kubectl();
    kubectl
        .apply(&format!(
            "apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: no-pods}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - {{apiGroups: [\"\"], apiVersions: [v1], operations: [CREATE], resources: [pods]}}
  validations:
    - {{expression: \"false\", message: no pod is admitted here yet}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: no-pods}}
spec:
  policyName: no-pods
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {ns}}}
"
        ))
        .expect("namespace and admission policy");
    // The policy takes effect once the API server has loaded it: probe with a dry run.
    let probe = format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: probe, namespace: {ns}}}
spec:
  securityContext: {{runAsNonRoot: true, runAsUser: 1000, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
    - name: c
      image: x
      securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
"
    );
    let dry_run = || kubectl.run_stdin(&["create", "--dry-run=server", "-f", "-"], Some(&probe));
    eventually(
        Duration::from_secs(30),
        "the admission policy refusing pods",
        || async {
            let refused =
                dry_run().is_err_and(|e| e.to_string().contains("no pod is admitted here yet"));
            refused.then_some(())
        },
        || bed.context(ns),
    )
    .await;
    let t = Instant::now();
    kubectl
        .apply(&cluster_yaml(ns, "kv", 3, "Disabled"))
        .expect("apply kv");
    let message = eventually(
        Duration::from_secs(60),
        "the refused seed pod reported as Degraded=True Refused",
        || async {
            let ec = bed.cluster(ns, "kv")?;
            let c = ec["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Degraded" && c["status"] == "True")?
                .clone();
            (c["reason"] == "Refused")
                .then(|| c["message"].as_str().unwrap_or_default().to_string())
        },
        || bed.context(ns),
    )
    .await;
    assert!(
        message.contains("kv-0") && message.contains("forbidden"),
        "not the API server's refusal: {message}"
    );
    let events = bed.events(ns, "kv").await.or_panic();
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "WriteRefused" && n == &message),
        "no Warning Event with the refusal: {events:?}"
    );
    // Retries (the status write wakes the controller, then a slow retry) leak nothing.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        claim_names(&bed, ns, "kv").await,
        ["kv-0"],
        "claims while the seed's pod is refused\n{}",
        bed.context(ns)
    );
    kubectl
        .run(&["delete", "validatingadmissionpolicybinding", "no-pods"])
        .expect("delete the policy's binding");
    eventually(
        Duration::from_secs(30),
        "a restricted-compliant pod admitted again",
        || async { dry_run().is_ok().then_some(()) },
        || bed.context(ns),
    )
    .await;
    // Any change to the object wakes the controller at once instead of at the slow retry.
    kubectl
        .run(&[
            "annotate",
            "-n",
            ns,
            "etcdcluster/kv",
            "test/policy-removed=1",
        ])
        .expect("annotate");
    bed.wait_available(ns, "kv", 3, Duration::from_secs(180))
        .await
        .or_panic();
    assert_cluster_of(&bed, ns, "kv", 3).await;
    assert_eq!(
        claim_names(&bed, ns, "kv").await,
        ["kv-0", "kv-1", "kv-2"],
        "claims\n{}",
        bed.context(ns)
    );
    let ec = bed.cluster(ns, "kv").expect("cluster");
    let degraded = ec["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Degraded").cloned())
        .expect("Degraded");
    assert_eq!(
        degraded["status"], "False",
        "refusal not cleared: {degraded}"
    );
    let pod = pod(&bed, ns, "kv-0").await.expect("pod kv-0");
    let sc = pod
        .spec
        .and_then(|s| s.security_context)
        .expect("securityContext");
    assert_eq!((sc.run_as_non_root, sc.fs_group), (Some(true), Some(65532)));
    eprintln!(
        "restricted namespace: refused, then 3 members after {:?}",
        t.elapsed()
    );
}

/// The operator SIGKILLed right after each `MemberAdd` (before it could create the new
/// member's pod) still grows the cluster to its size: no stray learner, no leaked claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_killed_after_member_add_converges() {
    let mut bed = Testbed::start().await.or_panic();
    let ns = "default";
    let kubectl = bed.cp.kubectl();
    kubectl
        .apply(&cluster_yaml(ns, "ok", 1, "Disabled"))
        .expect("apply ok");
    bed.wait_available(ns, "ok", 1, Duration::from_secs(90))
        .await
        .or_panic();
    kubectl
        .run(&["scale", "-n", ns, "etcdcluster/ok", "--replicas=3"])
        .expect("scale to 3");
    let t = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut kills = 0;
    let mut seen_adds = 0;
    loop {
        let adds = bed
            .events(ns, "ok")
            .await
            .or_panic()
            .iter()
            .filter(|(r, _)| r == "MemberAdded")
            .count();
        if adds > seen_adds {
            seen_adds = adds;
            bed.operator.restart().await.expect("operator restart");
            kills += 1;
        }
        let done = bed.cluster(ns, "ok").is_some_and(|ec| {
            let st = &ec["status"];
            st["readyMembers"] == 3
                && st["members"]
                    .as_array()
                    .is_some_and(|m| m.len() == 3 && m.iter().all(|m| m["learner"] != true))
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not 3 voters after 180 s\n{}",
            bed.context(ns)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bed.wait_available(ns, "ok", 3, Duration::from_secs(60))
        .await
        .or_panic();
    assert_cluster_of(&bed, ns, "ok", 3).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(bed.client.clone(), ns);
    let lp = ListParams::default().labels("app.kubernetes.io/instance=ok");
    let n = claims.list(&lp).await.expect("claims").items.len();
    assert_eq!(n, 3, "claims leaked\n{}", bed.context(ns));
    assert!(
        kills >= 1,
        "the operator was never killed after a MemberAdd"
    );
    eprintln!("1 -> 3 with {kills} operator kills after {:?}", t.elapsed());
}

/// The PodDisruptionBudget allows as many voluntary disruptions as the cluster can lose and
/// keep quorum, computed by the real disruption controller.
async fn assert_pdb_allows(bed: &Testbed, ns: &str, cluster: &str, members: i32, allowed: i32) {
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(bed.client.clone(), ns);
    eventually(
        Duration::from_secs(60),
        &format!("PDB {cluster} allows {allowed} disruptions of {members}"),
        || async {
            let st = pdbs.get(cluster).await.ok()?.status?;
            (st.disruptions_allowed == allowed && st.current_healthy == members).then_some(())
        },
        || bed.context(ns),
    )
    .await;
}

/// The spec changes in the middle of a scale: 3 → 5 is turned back to 3 as soon as the first
/// new learner is added. The cluster settles at 3 voters with no learner, pod or claim left
/// over from the abandoned growth.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_reversed_midway_settles_at_the_new_size() {
    let bed = Testbed::start().await.or_panic();
    let ns = "default";
    let kubectl = bed.cp.kubectl();
    kubectl
        .apply(&cluster_yaml(ns, "mid", 3, "Disabled"))
        .expect("apply mid");
    bed.wait_available(ns, "mid", 3, Duration::from_secs(180))
        .await
        .or_panic();
    let adds =
        |events: &[(String, String)]| events.iter().filter(|(r, _)| r == "MemberAdded").count();
    let before = adds(&bed.events(ns, "mid").await.or_panic());

    let t = Instant::now();
    kubectl
        .run(&["scale", "-n", ns, "etcdcluster/mid", "--replicas=5"])
        .expect("scale to 5");
    eventually(
        Duration::from_secs(60),
        "the first learner of the growth added",
        || async { (adds(&bed.events(ns, "mid").await.ok()?) > before).then_some(()) },
        || bed.context(ns),
    )
    .await;
    kubectl
        .run(&["scale", "-n", ns, "etcdcluster/mid", "--replicas=3"])
        .expect("scale back to 3");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(bed.client.clone(), ns);
    eventually(
        Duration::from_secs(120),
        "3 voters, 3 pods and 3 claims after the reversal",
        || async {
            let ec = bed.cluster(ns, "mid")?;
            let st = &ec["status"];
            let members = st["members"].as_array()?;
            let voters = members
                .iter()
                .filter(|m| m["learner"] != true && m["healthy"] == true)
                .count();
            let pods = bed.member_pods(ns, "mid").await.ok()?.len();
            let lp = ListParams::default().labels("app.kubernetes.io/instance=mid");
            let n = claims.list(&lp).await.ok()?.items.len();
            (members.len() == 3 && voters == 3 && pods == 3 && n == 3).then_some(())
        },
        || bed.context(ns),
    )
    .await;
    bed.wait_available(ns, "mid", 3, Duration::from_secs(60))
        .await
        .or_panic();
    assert_cluster_of(&bed, ns, "mid", 3).await;
    eprintln!("3 -> 5 reversed to 3 settled after {:?}", t.elapsed());
}

/// A frozen member (SIGSTOP): the status shows it unhealthy while the other two keep the
/// cluster Available; its liveness probe fails, the agent restarts it as kubelet would, and
/// it rejoins under its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frozen_member_is_reported_and_restarted_by_its_liveness_probe() {
    let bed = Testbed::start().await.or_panic();
    let ns = "default";
    bed.cp
        .kubectl()
        .apply(&cluster_yaml(ns, "fz", 3, "Disabled"))
        .expect("apply fz");
    let before = member_ids(
        &bed.wait_available(ns, "fz", 3, Duration::from_secs(180))
            .await
            .or_panic(),
    );
    let pods = bed.member_pods(ns, "fz").await.or_panic();
    // Not the leader: freezing the leader also tests an election, which is not the point here.
    let leader = bed
        .cluster(ns, "fz")
        .and_then(|ec| ec["status"]["leader"].as_str().map(str::to_string))
        .unwrap_or_default();
    let victim = pods
        .iter()
        .map(|(n, _)| n.clone())
        .find(|n| *n != leader)
        .expect("a follower");

    let t = Instant::now();
    bed.agent.signal(ns, &victim, "STOP").expect("SIGSTOP");
    eventually(
        Duration::from_secs(60),
        &format!("{victim} reported unhealthy while the cluster stays Available"),
        || async {
            let ec = bed.cluster(ns, "fz")?;
            let st = &ec["status"];
            let frozen = st["members"]
                .as_array()?
                .iter()
                .any(|m| m["name"] == victim.as_str() && m["healthy"] == false);
            let available = st["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Available" && c["status"] == "True");
            (frozen && available).then_some(())
        },
        || bed.context(ns),
    )
    .await;
    eprintln!("frozen member reported after {:?}", t.elapsed());
    eventually(
        Duration::from_secs(120),
        &format!("{victim} restarted after failing liveness, and Ready"),
        || async {
            let p = pod(&bed, ns, &victim).await?;
            (restarts(&p) >= 1 && is_ready(&p)).then_some(())
        },
        || bed.context(ns),
    )
    .await;
    let after = member_ids(
        &bed.wait_available(ns, "fz", 3, Duration::from_secs(60))
            .await
            .or_panic(),
    );
    assert_eq!(
        before,
        after,
        "the restarted member keeps its id\n{}",
        bed.context(ns)
    );
    eprintln!("frozen member restarted and back after {:?}", t.elapsed());
}

/// A frozen member (SIGSTOP) that no liveness probe restarts (the agent stops probing it) is
/// replaced by a new member within the grace the spec sets (`repair.unhealthyGraceSeconds:
/// 20`), not after the 300 s default; the other two keep the cluster Available throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frozen_member_is_replaced_within_its_configured_grace() {
    const GRACE: u64 = 20;
    let bed = Testbed::start().await.or_panic();
    let ns = "default";
    bed.cp
        .kubectl()
        .apply(&cluster_yaml_with(
            ns,
            "fr",
            3,
            "Disabled",
            &format!("  repair: {{unhealthyGraceSeconds: {GRACE}}}\n"),
        ))
        .expect("apply fr");
    let before = member_ids(
        &bed.wait_available(ns, "fr", 3, Duration::from_secs(180))
            .await
            .or_panic(),
    );
    let leader = bed
        .cluster(ns, "fr")
        .and_then(|ec| ec["status"]["leader"].as_str().map(str::to_string))
        .unwrap_or_default();
    let victim = before
        .keys()
        .find(|n| **n != leader)
        .cloned()
        .expect("a follower");
    bed.agent.disable_liveness(ns, &victim);
    let t = Instant::now();
    bed.agent.signal(ns, &victim, "STOP").expect("SIGSTOP");
    let lost_quorum = AtomicBool::new(false);
    eventually(
        Duration::from_secs(120),
        &format!("{victim} (frozen) removed from the member list"),
        || async {
            let ec = bed.cluster(ns, "fr")?;
            let st = &ec["status"];
            let available = st["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Available" && c["status"] == "True");
            if !available {
                lost_quorum.store(true, Ordering::Relaxed);
            }
            (!member_ids(st).contains_key(&victim)).then_some(())
        },
        || bed.context(ns),
    )
    .await;
    let removed_after = t.elapsed();
    // Not Ready after the readiness probe's 3 failures (15 s), then the grace: never sooner
    // than the grace, and well before the 300 s default.
    assert!(
        removed_after >= Duration::from_secs(GRACE),
        "removed after {removed_after:?}, before its grace of {GRACE} s"
    );
    assert!(
        removed_after <= Duration::from_secs(GRACE + 15 + 45),
        "removed only after {removed_after:?} (grace {GRACE} s)\n{}",
        bed.context(ns)
    );
    let after = member_ids(
        &bed.wait_available(ns, "fr", 3, Duration::from_secs(150))
            .await
            .or_panic(),
    );
    assert!(
        !lost_quorum.load(Ordering::Relaxed),
        "Available went False while one of three was frozen\n{}",
        bed.context(ns)
    );
    let new: Vec<(&String, &String)> = after
        .iter()
        .filter(|(n, _)| !before.contains_key(*n))
        .collect();
    assert_eq!(new.len(), 1, "one new member: {before:?} -> {after:?}");
    assert!(
        !before.values().any(|id| id == new[0].1),
        "the replacement has a new id: {before:?} -> {after:?}"
    );
    assert_cluster_of(&bed, ns, "fr", 3).await;
    let events = bed.events(ns, "fr").await.or_panic();
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "MemberRemoved" && n.contains(&victim)),
        "no MemberRemoved Event for {victim}: {events:?}"
    );
    eprintln!(
        "frozen member removed after {removed_after:?}, replaced after {:?}",
        t.elapsed()
    );
}

/// `helm install` of the shipped chart on a clean API server, as the README says: the release
/// is deployed with the CRD (from the chart's `crds/`), the ServiceAccount, RBAC, Deployment and
/// metrics Service. The chart and `manifests/install.yaml` are alternatives that name their
/// objects alike: after `helm uninstall` (which keeps the CRD, as Helm does for `crds/`) the
/// plain install applies on the same API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helm_install_of_the_chart_on_a_clean_api_server() {
    use ferrokv_tests::kube::helm::helm;
    let cp = ControlPlane::start().await.expect("control plane");
    let kubectl = cp.kubectl();
    let root = ferrokv_tests::member::workspace_root();
    let chart = root.join("charts/ferrokv-operator").display().to_string();
    let t = Instant::now();
    let out = helm(
        &kubectl,
        &[
            "install",
            "ferrokv-operator",
            &chart,
            "-n",
            "ferrokv-system",
            "--create-namespace",
        ],
    )
    .or_panic();
    assert!(out.contains("STATUS: deployed"), "{out}");
    kubectl
        .run(&[
            "wait",
            "--for=condition=Established",
            "crd/etcdclusters.ferrokv.io",
            "--timeout=60s",
        ])
        .expect("CRD established");
    for object in [
        "serviceaccount/ferrokv-operator",
        "deployment/ferrokv-operator",
        "service/ferrokv-operator-metrics",
    ] {
        kubectl
            .run(&["get", "-n", "ferrokv-system", object])
            .unwrap_or_else(|e| panic!("{object} not installed: {e}"));
    }
    for object in [
        "clusterrole/ferrokv-operator",
        "clusterrolebinding/ferrokv-operator",
    ] {
        kubectl
            .run(&["get", object])
            .unwrap_or_else(|e| panic!("{object} not installed: {e}"));
    }
    let list = helm(&kubectl, &["list", "-n", "ferrokv-system"]).or_panic();
    assert!(
        list.lines()
            .any(|l| l.starts_with("ferrokv-operator") && l.contains("deployed")),
        "{list}"
    );
    helm(
        &kubectl,
        &[
            "uninstall",
            "ferrokv-operator",
            "-n",
            "ferrokv-system",
            "--wait",
        ],
    )
    .or_panic();
    kubectl
        .run(&["get", "crd", "etcdclusters.ferrokv.io"])
        .expect("the CRD outlives the release");
    let install = root.join("manifests/install.yaml").display().to_string();
    kubectl
        .run(&["apply", "-f", &install])
        .expect("install.yaml after helm uninstall");
    eprintln!(
        "helm install, uninstall and install.yaml after {:?}",
        t.elapsed()
    );
}

/// The serial of Secret `ns/name`'s `tls.crt`.
async fn secret_serial(bed: &Testbed, ns: &str, name: &str) -> Option<String> {
    let secrets: Api<Secret> = Api::namespaced(bed.client.clone(), ns);
    let s = secrets.get(name).await.ok()?;
    let crt = s.data.as_ref()?.get("tls.crt")?;
    ferrokv_tests::tls::pem_serial(&crt.0).ok()
}

/// `(ca.crt, tls.crt, tls.key)` of Secret `ns/name`.
async fn secret_identity(bed: &Testbed, ns: &str, name: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let secrets: Api<Secret> = Api::namespaced(bed.client.clone(), ns);
    let s = secrets.get(name).await.expect("Secret");
    let data = s.data.unwrap_or_default();
    let field = |k: &str| data.get(k).map(|b| b.0.clone()).expect(k);
    (field("ca.crt"), field("tls.crt"), field("tls.key"))
}

/// The serial a fresh TLS connection to `ip:port` is served, with the identity and trust of
/// Secret `identity` (`None` while it cannot connect).
async fn served(bed: &Testbed, ns: &str, identity: &str, ip: &str, port: u16) -> Option<String> {
    let (ca, cert, key) = secret_identity(bed, ns, identity).await;
    ferrokv_tests::tls::served_serial(
        &format!("{ip}:{port}"),
        "localhost",
        &ca,
        Some((&cert, &key)),
    )
    .await
    .ok()
}

/// Writes over TLS (the users' client certificate) through the member pods until stopped;
/// returns (acknowledged, failed) counts and the longest run of failures.
fn start_tls_writer(
    bed: &Testbed,
    ns: &'static str,
    cluster: &'static str,
    ips: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize, usize)> {
    let client = bed.client.clone();
    tokio::spawn(async move {
        let secrets: Api<Secret> = Api::namespaced(client, ns);
        let (mut acked, mut failed, mut streak, mut worst) = (0usize, 0usize, 0usize, 0usize);
        let mut etcd: Option<etcd_client::Client> = None;
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            if etcd.is_none() {
                // The users' client certificate as it is now (it is renewed too).
                let data = secrets
                    .get(&format!("{cluster}-client-tls"))
                    .await
                    .ok()
                    .and_then(|s| s.data)
                    .unwrap_or_default();
                let get = |k: &str| {
                    data.get(k)
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                        .unwrap_or_default()
                };
                let tls = etcd_client::TlsOptions::new()
                    .domain_name("localhost")
                    .ca_certificate(etcd_client::Certificate::from_pem(get("ca.crt")))
                    .identity(etcd_client::Identity::from_pem(
                        get("tls.crt"),
                        get("tls.key"),
                    ));
                let opts = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(5))
                    .with_tls(tls);
                let endpoints: Vec<String> =
                    ips.iter().map(|ip| format!("https://{ip}:2379")).collect();
                etcd = etcd_client::Client::connect(endpoints, Some(opts))
                    .await
                    .ok();
            }
            let Some(c) = etcd.as_mut() else {
                failed += 1;
                streak += 1;
                worst = worst.max(streak);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let key = format!("/renewal/{i:08}");
            i += 1;
            match tokio::time::timeout(Duration::from_secs(5), c.put(key, "v", None)).await {
                Ok(Ok(_)) => {
                    acked += 1;
                    streak = 0;
                }
                _ => {
                    failed += 1;
                    streak += 1;
                    worst = worst.max(streak);
                    etcd = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (acked, failed, worst)
    })
}

/// Certificate renewal without restarts: 3 emptyDir members with operator-issued TLS and an
/// operator told to renew certificates 20 s after issue (`--cert-renew-before` with a 1-day
/// lifetime). Twice, the Secrets get new serials in place, the members serve them on fresh
/// connections on the client and the peer port, and nothing restarts: the same pods (UIDs),
/// member ids and restart counts, writes over TLS keep succeeding, `etcdctl member list` over
/// TLS works, `CertificatesRenewed` Events say so, and the cluster stays Available. Then both
/// CAs are replaced (their Secrets deleted) and rotated in three steps (`--cert-rotation-wait`
/// 5 s) with the same guarantees.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_are_renewed_without_restarting_members() {
    let bed = Testbed::start_with(&["--cert-renew-before=23h59m40s", "--cert-rotation-wait=5s"])
        .await
        .or_panic();
    let ns = "default";
    let t = Instant::now();
    bed.cp
        .kubectl()
        .apply(&format!(
            "apiVersion: ferrokv.io/v1alpha1
kind: EtcdCluster
metadata: {{name: rn, namespace: {ns}}}
spec:
  replicas: 3
  tls: {{mode: Auto, certificateLifetimeDays: 1}}
  storage: {{emptyDir: true}}
"
        ))
        .expect("apply rn");
    let status = bed
        .wait_available(ns, "rn", 3, Duration::from_secs(180))
        .await
        .or_panic();
    let ids = member_ids(&status);
    let pods = bed.member_pods(ns, "rn").await.or_panic();
    let uids = |ps: Vec<Option<Pod>>| -> Vec<(String, i32)> {
        ps.into_iter()
            .map(|p| {
                let p = p.expect("member pod");
                (p.metadata.uid.clone().unwrap_or_default(), restarts(&p))
            })
            .collect()
    };
    let mut before = Vec::new();
    for (name, _) in &pods {
        before.push(pod(&bed, ns, name).await);
    }
    let before = uids(before);
    eprintln!("renewal cluster Available after {:?}", t.elapsed());
    let stop = Arc::new(AtomicBool::new(false));
    let ips: Vec<String> = pods.iter().map(|(_, ip)| ip.clone()).collect();
    let writer = start_tls_writer(&bed, ns, "rn", ips, stop.clone());

    let t = Instant::now();
    let mut serial = secret_serial(&bed, ns, "rn-server-tls")
        .await
        .expect("serial");
    for round in 1..=2 {
        let old = serial.clone();
        let server = eventually(
            Duration::from_secs(60),
            &format!("renewal {round}: a new serial in rn-server-tls"),
            || async {
                let s = secret_serial(&bed, ns, "rn-server-tls").await?;
                (s != old).then_some(s)
            },
            || bed.context(ns),
        )
        .await;
        // Every member serves the renewed certificates on fresh connections (the Secret
        // reaches the volume, the member reloads it), on the client and on the peer port.
        for (member, ip) in &pods {
            for (port, identity) in [(2379, "rn-client-tls"), (2380, "rn-peer-tls")] {
                eventually(
                    Duration::from_secs(30),
                    &format!("renewal {round}: {member}:{port} serves the renewed certificate"),
                    || async {
                        let want = secret_serial(
                            &bed,
                            ns,
                            if port == 2379 {
                                "rn-server-tls"
                            } else {
                                "rn-peer-tls"
                            },
                        )
                        .await?;
                        let got = served(&bed, ns, identity, ip, port).await?;
                        (got == want).then_some(())
                    },
                    || bed.context(ns),
                )
                .await;
            }
        }
        eprintln!(
            "renewal {round} served by every member after {:?}",
            t.elapsed()
        );
        serial = server;
    }

    // Both CAs replaced (their Secrets deleted): each rotates in three steps (bundles trust
    // both CAs, leaves from the new CA, the old CA dropped) without a member losing contact.
    let secrets: Api<Secret> = Api::namespaced(bed.client.clone(), ns);
    let ca_of = |name: &'static str| {
        let secrets = secrets.clone();
        async move {
            let s = secrets.get(name).await.expect("CA Secret");
            s.data
                .and_then(|d| d.get("ca.crt").cloned())
                .expect("ca.crt")
                .0
        }
    };
    let (old_ca, old_peer_ca) = (ca_of("rn-ca").await, ca_of("rn-peer-ca").await);
    for name in ["rn-ca", "rn-peer-ca"] {
        secrets
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete a CA Secret");
    }
    let t = Instant::now();
    for (ca, leaf, old) in [
        ("rn-ca", "rn-server-tls", &old_ca),
        ("rn-peer-ca", "rn-peer-tls", &old_peer_ca),
    ] {
        eventually(
            Duration::from_secs(90),
            &format!("{leaf} trusts only the new {ca} and is issued by it"),
            || async {
                let new = secrets.get(ca).await.ok()?.data?.get("ca.crt")?.0.clone();
                let (bundle, _, _) = secret_identity(&bed, ns, leaf).await;
                (new != *old && bundle == new).then_some(())
            },
            || bed.context(ns),
        )
        .await;
    }
    eprintln!("CA rotations done after {:?}", t.elapsed());
    for (member, ip) in &pods {
        for (port, identity, leaf) in [
            (2379, "rn-client-tls", "rn-server-tls"),
            (2380, "rn-peer-tls", "rn-peer-tls"),
        ] {
            eventually(
                Duration::from_secs(30),
                &format!("after the CA rotation {member}:{port} serves the new CA's certificate"),
                || async {
                    let want = secret_serial(&bed, ns, leaf).await?;
                    let got = served(&bed, ns, identity, ip, port).await?;
                    (got == want).then_some(())
                },
                || bed.context(ns),
            )
            .await;
        }
    }
    let events = bed.events(ns, "rn").await.or_panic();
    for (reason, step) in [
        ("CATrustExtended", "1/3"),
        ("CertificatesReissued", "2/3"),
        ("OldCARetired", "3/3"),
    ] {
        for leaf in ["rn-server-tls", "rn-peer-tls"] {
            assert!(
                events
                    .iter()
                    .any(|(r, n)| r == reason && n.contains(step) && n.contains(leaf)),
                "no {reason} Event of step {step} for {leaf}: {events:?}"
            );
        }
    }

    // Over TLS with the (renewed) users' certificate, through every member.
    let want: Vec<String> = pods.iter().map(|(p, _)| p.clone()).collect();
    for member in &want {
        let out = bed
            .etcdctl_dns(ns, "rn", member, true, &["member", "list", "-w", "json"])
            .await
            .or_panic();
        assert_eq!(names_in(&out), (want.clone(), false), "through {member}");
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, failed, worst) = writer.await.expect("writer");
    eprintln!(
        "TLS writes during renewals: {acked} acknowledged, {failed} failed, worst run {worst}"
    );
    assert!(acked > 50, "too few writes went through: {acked}");
    // A failed write reconnects with the current certificates; members never go away, so
    // no run of failures is longer than a reconnect or two.
    assert!(
        worst <= 3,
        "writes stopped during a renewal: {worst} failures in a row"
    );

    // Nothing restarted, nothing was replaced.
    let mut after = Vec::new();
    for (name, _) in &pods {
        after.push(pod(&bed, ns, name).await);
    }
    assert_eq!(
        uids(after),
        before,
        "pod UIDs and restart counts\n{}",
        bed.context(ns)
    );
    let status = bed
        .wait_available(ns, "rn", 3, Duration::from_secs(30))
        .await
        .or_panic();
    assert_eq!(member_ids(&status), ids, "member ids");
    let degraded = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Degraded").cloned())
        .expect("Degraded");
    assert_eq!(degraded["status"], "False", "{degraded}");
    let events = bed.events(ns, "rn").await.or_panic();
    let renewals: Vec<&String> = events
        .iter()
        .filter(|(r, _)| r == "CertificatesRenewed")
        .map(|(_, n)| n)
        .collect();
    assert!(
        renewals
            .iter()
            .any(|n| n.contains("rn-server-tls") && n.contains("without a restart")),
        "no CertificatesRenewed Event: {events:?}"
    );
    assert!(
        !events.iter().any(|(r, _)| r == "MemberRemoved"),
        "a member was removed during renewals: {events:?}"
    );
}

/// The operator's ClusterRole (from install.yaml) loses `create` on services: the cluster's
/// first Service apply is refused by the real authorizer, and status says so (`Degraded=True`,
/// reason `Refused`, with the API server's forbidden message) with a `WriteRefused` Warning
/// Event. With the verb back it recovers to Available.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verb_taken_from_the_operator_is_reported_and_recovered_from() {
    let bed = Testbed::start().await.or_panic();
    let ns = "default";
    let kubectl = bed.cp.kubectl();
    let t = Instant::now();
    let role: Value = serde_json::from_str(
        &kubectl
            .run(&["get", "clusterrole", "ferrokv-operator", "-o", "json"])
            .expect("get the ClusterRole"),
    )
    .expect("json");
    let rules = role["rules"].as_array().expect("rules").clone();
    let index = rules
        .iter()
        .position(|r| r["resources"] == serde_json::json!(["services"]))
        .expect("a rule for services");
    let verbs = rules[index]["verbs"].clone();
    let without_create: Vec<Value> = verbs
        .as_array()
        .expect("verbs")
        .iter()
        .filter(|v| *v != "create")
        .cloned()
        .collect();
    let patch = |value: &Value| {
        let p = serde_json::json!([{"op": "replace", "path": format!("/rules/{index}/verbs"), "value": value}]);
        kubectl
            .run(&[
                "patch",
                "clusterrole",
                "ferrokv-operator",
                "--type=json",
                "-p",
                &p.to_string(),
            ])
            .expect("patch the ClusterRole");
    };
    patch(&Value::Array(without_create));
    kubectl
        .apply(&cluster_yaml(ns, "rb", 1, "Disabled"))
        .expect("apply rb");
    let message = eventually(
        Duration::from_secs(60),
        "the refused Service reported as Degraded=True Refused",
        || async {
            let ec = bed.cluster(ns, "rb")?;
            let c = ec["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Degraded" && c["status"] == "True")?
                .clone();
            (c["reason"] == "Refused")
                .then(|| c["message"].as_str().unwrap_or_default().to_string())
        },
        || bed.context(ns),
    )
    .await;
    assert!(
        message.contains("forbidden")
            && message.contains("services")
            && message.contains("system:serviceaccount:ferrokv-system:ferrokv-operator"),
        "not the API server's RBAC refusal: {message}"
    );
    let events = bed.events(ns, "rb").await.or_panic();
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "WriteRefused" && n == &message),
        "no Warning Event with the refusal: {events:?}"
    );
    eprintln!("RBAC refusal reported after {:?}", t.elapsed());

    patch(&verbs);
    // A refusal is retried slowly (60 s); any change to the object wakes the controller.
    kubectl
        .run(&[
            "annotate",
            "-n",
            ns,
            "etcdcluster/rb",
            "test/rbac-restored=1",
        ])
        .expect("annotate");
    let status = bed
        .wait_available(ns, "rb", 1, Duration::from_secs(90))
        .await
        .or_panic();
    let degraded = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Degraded").cloned())
        .expect("Degraded");
    assert_eq!(
        degraded["status"], "False",
        "refusal not cleared: {degraded}"
    );
    assert_cluster_of(&bed, ns, "rb", 1).await;
    eprintln!("RBAC restored: Available after {:?}", t.elapsed());
}

/// `spec.image` naming a plain etcd 3.6.16 image: the node agent runs etcd 3.6 for it, the
/// pods are probed on what etcd serves (`/health`, `/metrics` on 2381) and become Ready, the
/// status follows pod readiness (3 ready), and `etcdctl member list` shows the 3 members.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_etcd_image_members_become_ready() {
    ferrokv_tests::member::etcd36_dir().unwrap_or_else(|e| panic!("etcd 3.6 is needed: {e}"));
    let bed = Testbed::start().await.or_panic();
    let ns = "default";
    let t = Instant::now();
    bed.cp
        .kubectl()
        .apply(&cluster_yaml_with(
            ns,
            "et",
            3,
            "Disabled",
            "  image: quay.io/coreos/etcd:v3.6.16\n",
        ))
        .expect("apply et");
    let status = bed
        .wait_available(ns, "et", 3, Duration::from_secs(180))
        .await
        .or_panic();
    assert_eq!(status["readyMembers"], 3, "{status}");
    assert_cluster_of(&bed, ns, "et", 3).await;
    let pods = bed.member_pods(ns, "et").await.or_panic();
    for (name, ip) in &pods {
        let p = pod(&bed, ns, name).await.expect("member pod");
        assert!(is_ready(&p), "{name} not Ready\n{}", bed.context(ns));
        let c = p
            .spec
            .and_then(|s| s.containers.into_iter().next())
            .expect("container");
        let path = |probe: Option<k8s_openapi::api::core::v1::Probe>| {
            probe.and_then(|p| p.http_get).and_then(|h| h.path)
        };
        assert_eq!(path(c.readiness_probe).as_deref(), Some("/health"));
        assert_eq!(path(c.liveness_probe).as_deref(), Some("/metrics"));
        // What runs is etcd 3.6.16, not ferrokv.
        let v = ferrokv_tests::etcdctl(
            &format!("http://{ip}:2379"),
            &["endpoint", "status", "-w", "json"],
        )
        .json();
        assert_eq!(v[0]["Status"]["version"], "3.6.16", "{name}: {v}");
    }
    assert_pdb_allows(&bed, ns, "et", 3, 1).await;
    eprintln!("etcd 3.6.16 image: 3 members Ready after {:?}", t.elapsed());
}

/// Flips one byte of every copy of `value` in the redb file `db` that is not inside a
/// `history` record (those follow the key's length and the key): the `latest` rows a member
/// serves from, as tests/tests/integrity.rs corrupts a stopped member. Returns how many.
fn flip_served_value(db: &std::path::Path, key: &str, value: &str) -> usize {
    let mut bytes = std::fs::read(db).unwrap_or_else(|e| panic!("reading {}: {e}", db.display()));
    let v = value.as_bytes();
    let mut history_prefix = u32::try_from(key.len())
        .expect("short key")
        .to_le_bytes()
        .to_vec();
    history_prefix.extend_from_slice(key.as_bytes());
    let mut flipped = 0;
    let mut i = 0;
    while i + v.len() <= bytes.len() {
        if &bytes[i..i + v.len()] == v {
            let in_history = i >= history_prefix.len()
                && bytes[i - history_prefix.len()..i] == history_prefix[..];
            if !in_history {
                bytes[i + v.len() - 1] ^= 0x40;
                flipped += 1;
            }
            i += v.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(db, &bytes).unwrap_or_else(|e| panic!("writing {}: {e}", db.display()));
    flipped
}

/// The member's keyspace file (`member/snap/db`) somewhere under a claim's directory.
fn find_db(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(db) = find_db(&p) {
                return Some(db);
            }
        } else if p.ends_with("member/snap/db") {
            return Some(p);
        }
    }
    None
}

/// Every status version of `ns/name` the API server sends a watch, until the task is aborted.
fn record_statuses(
    client: kube::Client,
    ns: &'static str,
    name: &'static str,
) -> (
    Arc<std::sync::Mutex<Vec<Value>>>,
    tokio::task::JoinHandle<()>,
) {
    use futures::StreamExt;
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    use kube::runtime::watcher;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let gvk = GroupVersionKind::gvk("ferrokv.io", "v1alpha1", "EtcdCluster");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "etcdclusters");
        let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &ar);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = watcher(api, cfg).boxed();
        while let Some(ev) = stream.next().await {
            let objs = match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => vec![o],
                _ => continue,
            };
            for o in objs {
                if let Some(st) = o.data.get("status") {
                    out.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(st.clone());
                }
            }
        }
    });
    (seen, task)
}

/// A member whose served value is flipped on disk (stopped cleanly, flipped, restarted with
/// the initial check and the check at open turned off by `spec.options.corruptionCheck`, so it
/// runs on bad data) while a client writes: the leader's periodic check (every 2 s) raises
/// CORRUPT for it and writes are refused with `etcdserver: corrupt cluster`; status shows the
/// member corrupt (its entry, `Degraded=True MemberCorrupt` naming it) with one Warning
/// Event; the operator replaces it (removed, its pod and claim deleted, a new member with a
/// new name, id and claim), disarms its alarm, and writes are accepted again. Every
/// acknowledged write reads back with its value on every member, the new one included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_member_is_replaced_and_writes_resume() {
    const KEY: &str = "/corrupt-test/key";
    const VALUE: &str = "corrupt-test-value-5b1e0c7d9a24f836";
    let bed = Testbed::start().await.or_panic();
    let ns = "default";
    bed.cp
        .kubectl()
        .apply(&cluster_yaml_with(
            ns,
            "cr",
            3,
            "Disabled",
            "  options:\n    corruptionCheck: {initial: false, verifyOnOpen: false, periodicSeconds: 2, compactHash: false}\n",
        ))
        .expect("apply cr");
    let status = bed
        .wait_available(ns, "cr", 3, Duration::from_secs(180))
        .await
        .or_panic();
    let before = member_ids(&status);
    let pods = bed.member_pods(ns, "cr").await.or_panic();
    let urls: Vec<String> = pods
        .iter()
        .map(|(_, ip)| format!("http://{ip}:2379"))
        .collect();
    let mut kv = etcd_client::Client::connect(urls.clone(), None)
        .await
        .expect("client");
    kv.put(KEY, VALUE, None).await.expect("put KEY");
    for url in &urls {
        eventually(
            Duration::from_secs(20),
            &format!("{url} serves {KEY}"),
            || async {
                let out = ferrokv_tests::etcdctl(url, &["get", KEY, "--consistency=s"]);
                out.stdout.contains(VALUE).then_some(())
            },
            || bed.context(ns),
        )
        .await;
    }
    let (statuses, recorder) = record_statuses(bed.client.clone(), ns, "cr");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(bed.client.clone(), ns, "cr", stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A follower is stopped cleanly and its served value flipped before it runs again.
    let leader = status["leader"].as_str().unwrap_or_default().to_string();
    let victim = before
        .keys()
        .find(|n| **n != leader)
        .cloned()
        .expect("a follower");
    let victim_id = u64::from_str_radix(&before[&victim], 16).expect("hex member id");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(bed.client.clone(), ns);
    let claim_uid = claims
        .get(&victim)
        .await
        .expect("victim's claim")
        .metadata
        .uid
        .expect("uid");
    let claim_dir = bed.agent.dir().join("claims").join(&claim_uid);
    let db = find_db(&claim_dir)
        .unwrap_or_else(|| panic!("no member/snap/db under {}", claim_dir.display()));
    let t = Instant::now();
    bed.agent.hold_restarts(ns, &victim, true);
    bed.agent.signal(ns, &victim, "TERM").expect("SIGTERM");
    eventually(
        Duration::from_secs(30),
        &format!("{victim}'s member exited"),
        || async {
            bed.agent
                .pod(ns, &victim)
                .is_some_and(|p| p.pid.is_none())
                .then_some(())
        },
        || bed.context(ns),
    )
    .await;
    let flipped = flip_served_value(&db, KEY, VALUE);
    assert!(flipped >= 1, "{VALUE} not found in {}", db.display());
    eprintln!(
        "{victim}: flipped {flipped} served copies in {}",
        db.display()
    );
    bed.agent.hold_restarts(ns, &victim, false);

    // The alarm, and writes refused under it.
    let healthy_url = pods
        .iter()
        .find(|(n, _)| *n != victim)
        .map(|(_, ip)| format!("http://{ip}:2379"))
        .expect("a healthy member");
    let want_alarm = format!("memberID:{victim_id} alarm:CORRUPT");
    eventually(
        Duration::from_secs(90),
        &format!("the CORRUPT alarm for {victim} ({victim_id:x})"),
        || async {
            let out = ferrokv_tests::etcdctl(&healthy_url, &["alarm", "list"]);
            out.stdout.contains(&want_alarm).then_some(())
        },
        || bed.context(ns),
    )
    .await;
    eprintln!("CORRUPT raised {:?} after the stop", t.elapsed());
    let refused = ferrokv_tests::etcdctl(&healthy_url, &["put", "/corrupt-test/under-alarm", "x"]);
    assert!(
        refused.stderr.contains("etcdserver: corrupt cluster"),
        "a write under CORRUPT: {refused:?}"
    );

    // Replaced: a new member, every member healthy, Available.
    let after = eventually(
        Duration::from_secs(240),
        &format!("{victim} (corrupt) replaced by a new member"),
        || async {
            let ec = bed.cluster(ns, "cr")?;
            let st = &ec["status"];
            let ids = member_ids(st);
            let healthy = st["members"]
                .as_array()?
                .iter()
                .filter(|m| m["healthy"] == true && m["learner"] != true)
                .count();
            let available = st["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Available" && c["status"] == "True");
            (ids.len() == 3 && healthy == 3 && available && !ids.contains_key(&victim))
                .then_some(ids)
        },
        || bed.context(ns),
    )
    .await;
    eprintln!("corrupt member replaced {:?} after the stop", t.elapsed());
    let new: Vec<(&String, &String)> = after
        .iter()
        .filter(|(n, _)| !before.contains_key(*n))
        .collect();
    assert_eq!(new.len(), 1, "one new member: {before:?} -> {after:?}");
    assert!(
        !before.values().any(|id| id == new[0].1),
        "the replacement has a new id: {before:?} -> {after:?}"
    );
    // Its claim is new, the corrupt one gone.
    let mut want_claims: Vec<String> = after.keys().cloned().collect();
    want_claims.sort();
    eventually(
        Duration::from_secs(60),
        &format!("claims of exactly {want_claims:?} ({victim}'s deleted)"),
        || async { (claim_names(&bed, ns, "cr").await == want_claims).then_some(()) },
        || bed.context(ns),
    )
    .await;
    let new_claim = claims.get(new[0].0).await.expect("new claim");
    assert_ne!(new_claim.metadata.uid.as_deref(), Some(claim_uid.as_str()));
    // The alarm is gone and writes are accepted again.
    eventually(
        Duration::from_secs(60),
        "no alarm left and a write accepted",
        || async {
            let alarms = ferrokv_tests::etcdctl(&healthy_url, &["alarm", "list"]);
            let put = ferrokv_tests::etcdctl(&healthy_url, &["put", "/corrupt-test/after", "y"]);
            (alarms.success() && alarms.stdout.trim().is_empty() && put.success()).then_some(())
        },
        || bed.context(ns),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, failures) = writer.await.expect("writer");
    recorder.abort();

    // Status said so while it lasted: the member's entry and Degraded=True MemberCorrupt.
    let seen = statuses.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let marked = seen.iter().any(|st| {
        st["members"].as_array().is_some_and(|ms| {
            ms.iter().any(|m| {
                m["name"] == victim.as_str()
                    && m["corrupt"].as_str().is_some_and(|c| c.contains("CORRUPT"))
                    && m["alarms"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == "CORRUPT"))
            })
        })
    });
    let degraded = seen.iter().any(|st| {
        st["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["type"] == "Degraded"
                    && c["status"] == "True"
                    && c["reason"] == "MemberCorrupt"
                    && c["message"].as_str().is_some_and(|m| m.contains(&victim))
            })
        })
    });
    assert!(
        marked && degraded,
        "status never showed {victim} corrupt (entry: {marked}, Degraded: {degraded}); {} \
         statuses seen\n{}",
        seen.len(),
        bed.context(ns)
    );
    eventually(
        Duration::from_secs(60),
        "Degraded=False once the corrupt member is replaced",
        || async {
            let ec = bed.cluster(ns, "cr")?;
            let conds = ec["status"]["conditions"].as_array()?.clone();
            conds
                .iter()
                .any(|c| c["type"] == "Degraded" && c["status"] == "False")
                .then_some(())
        },
        || bed.context(ns),
    )
    .await;
    let events = bed.events(ns, "cr").await.or_panic();
    let warned: Vec<&(String, String)> = events
        .iter()
        .filter(|(r, _)| r == "MemberCorrupt")
        .collect();
    assert!(
        warned.len() == 1 && warned[0].1.contains(&victim),
        "one MemberCorrupt Event naming {victim}: {events:?}"
    );
    for (reason, words) in [
        ("MemberRemoved", "its data is corrupt"),
        ("AlarmDisarmed", "disarmed the CORRUPT alarm"),
    ] {
        assert!(
            events.iter().any(|(r, n)| r == reason && n.contains(words)),
            "no {reason} Event: {events:?}"
        );
    }

    // Every acknowledged write, and KEY, on every member with its value.
    assert!(
        acked.len() > 50,
        "too few writes acknowledged: {} ({failures} failed)",
        acked.len()
    );
    let pods = bed.member_pods(ns, "cr").await.or_panic();
    assert_eq!(pods.len(), 3, "{pods:?}");
    for (name, ip) in &pods {
        let url = format!("http://{ip}:2379");
        // Serializable reads: each member's own data, which a new member may still be
        // applying for a moment.
        let wrong = eventually(
            Duration::from_secs(30),
            &format!("{name} serves {KEY} and every acknowledged write"),
            || async {
                let mut c = etcd_client::Client::connect([url.clone()], None)
                    .await
                    .ok()?;
                let ser = etcd_client::GetOptions::new().with_serializable();
                let r = c.get(KEY, Some(ser)).await.ok()?;
                let key_ok = r.kvs().first().and_then(|kv| kv.value_str().ok()) == Some(VALUE);
                let all = etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_serializable();
                let r = c.get("/writer/", Some(all)).await.ok()?;
                let present: std::collections::BTreeMap<String, String> = r
                    .kvs()
                    .iter()
                    .map(|kv| {
                        (
                            kv.key_str().unwrap_or_default().to_string(),
                            kv.value_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect();
                let wrong: Vec<String> = acked
                    .iter()
                    .filter(|k| present.get(k.as_str()).map(String::as_str) != Some("v"))
                    .cloned()
                    .collect();
                (key_ok && wrong.is_empty()).then_some(wrong)
            },
            || bed.context(ns),
        )
        .await;
        assert!(wrong.is_empty());
    }
    eprintln!(
        "{} writes acknowledged, {failures} not, all on every member; done after {:?}",
        acked.len(),
        t.elapsed()
    );
}

/// The member pods of `cluster` as (name, uid, image, Ready), by name, leaving out pods being
/// deleted.
async fn member_pod_states(
    bed: &Testbed,
    ns: &str,
    cluster: &str,
) -> Vec<(String, String, String, bool)> {
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), ns);
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={cluster}"));
    let mut out: Vec<(String, String, String, bool)> = pods
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let image = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            let ready = is_ready(&p);
            (
                p.metadata.name.clone().unwrap_or_default(),
                p.metadata.uid.clone().unwrap_or_default(),
                image,
                ready,
            )
        })
        .collect();
    out.sort();
    out
}

/// `spec.version` 0.1.0 → 0.1.1 rolls the three members one at a time on their own data
/// (same names, same member ids, new pods on the new image), followers first and the leader
/// last after leadership moved off it, while recording clients run put / get / CAS / delete
/// through the member pods' addresses (refreshed as pods come back with new ones): at every
/// poll at least 2 of 3 member pods are Ready, status says Available throughout and shows the
/// roll's progress, no client sees more than a brief stretch without answers, and the
/// recorded history (with every key read at the end) passes the linearizability checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn version_change_rolls_members_one_at_a_time_leader_last() {
    use ferrokv_tests::history::{
        client_loop, execute, header_rev, longest_gap, seed_from_env, watch_loop, Endpoints,
        WatchConfig, Workload,
    };
    use ferrokv_tests::linearizability::{
        check_linearizable, check_revisions, History, Linearizability, Op, Outcome, Request,
    };
    use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize};
    const OLD: &str = "ghcr.io/ferrokv/ferrokv:0.1.0";
    const NEW: &str = "ghcr.io/ferrokv/ferrokv:0.1.1";
    const PREFIX: &str = "/upgrade/";
    const OP_TIMEOUT: Duration = Duration::from_secs(2);
    let bed = Testbed::start().await.or_panic();
    let ns = "default";
    let kubectl = bed.cp.kubectl();
    kubectl
        .apply(&cluster_yaml_with(
            ns,
            "up",
            3,
            "Disabled",
            "  version: 0.1.0\n",
        ))
        .expect("apply up");
    let status = bed
        .wait_available(ns, "up", 3, Duration::from_secs(180))
        .await
        .or_panic();
    let ids_before = member_ids(&status);
    let before = member_pod_states(&bed, ns, "up").await;
    assert!(
        before.iter().all(|(_, _, image, _)| image == OLD),
        "{before:?}"
    );
    let leader_before = status["leader"].as_str().expect("leader").to_string();

    // Clients, a watcher (evidence for writes whose answer was lost) and the endpoint refresh.
    let urls = |pods: &[(String, String)]| -> Vec<String> {
        pods.iter()
            .map(|(_, ip)| format!("http://{ip}:2379"))
            .collect()
    };
    let pods = bed.member_pods(ns, "up").await.or_panic();
    let endpoints = Endpoints::new(urls(&pods));
    let initial = {
        let mut c = ferrokv_tests::history::connect(&urls(&pods)[0], OP_TIMEOUT)
            .await
            .expect("connect");
        header_rev(c.get(PREFIX, None).await.expect("get").header())
    };
    let seed = seed_from_env("UPGRADE_SEED");
    eprintln!("UPGRADE_SEED={seed}");
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let watch_stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let watch_last = Arc::new(AtomicI64::new(initial));
    let watcher = tokio::spawn(watch_loop(
        endpoints.clone(),
        WatchConfig {
            prefix: PREFIX.into(),
            op_timeout: OP_TIMEOUT,
            quiet_failover: Some(Duration::from_secs(3)),
            retry_pause: Duration::from_millis(100),
        },
        watch_stop.clone(),
        events.clone(),
        watch_last.clone(),
    ));
    let workload = Workload {
        op_timeout: OP_TIMEOUT,
        retry_pause: Duration::from_millis(100),
        pace: Duration::from_millis(20),
        ..Workload::new(PREFIX, 4)
    };
    let failed_reads = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..3)
        .map(|id| {
            tokio::spawn(client_loop(
                id,
                endpoints.clone(),
                workload.clone(),
                seed,
                t0,
                stop.clone(),
                failed_reads.clone(),
            ))
        })
        .collect();
    // Polls the member pods: the fewest Ready seen, and the endpoints kept current.
    let min_ready = Arc::new(AtomicUsize::new(3));
    let poll = {
        let (client, stop, min_ready, endpoints) = (
            bed.client.clone(),
            stop.clone(),
            min_ready.clone(),
            endpoints.clone(),
        );
        tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(client, "default");
            let lp = ListParams::default().labels("app.kubernetes.io/instance=up");
            while !stop.load(Ordering::Relaxed) {
                if let Ok(l) = pods.list(&lp).await {
                    let live: Vec<&Pod> = l
                        .items
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .collect();
                    let ready = live.iter().filter(|p| is_ready(p)).count();
                    min_ready.fetch_min(ready, Ordering::SeqCst);
                    let ips: Vec<String> = live
                        .iter()
                        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                        .map(|ip| format!("http://{ip}:2379"))
                        .collect();
                    if !ips.is_empty() {
                        endpoints.set(ips);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let (statuses, status_task) = record_statuses(bed.client.clone(), ns, "up");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let t = Instant::now();
    kubectl
        .run(&[
            "patch",
            "-n",
            ns,
            "etcdcluster/up",
            "--type=merge",
            "-p",
            r#"{"spec":{"version":"0.1.1"}}"#,
        ])
        .expect("patch version");
    eventually(
        Duration::from_secs(300),
        "all three member pods Ready on 0.1.1",
        || async {
            let now = member_pod_states(&bed, ns, "up").await;
            (now.len() == 3
                && now
                    .iter()
                    .all(|(_, _, image, ready)| image == NEW && *ready))
            .then_some(())
        },
        || bed.context(ns),
    )
    .await;
    let status = bed
        .wait_available(ns, "up", 3, Duration::from_secs(60))
        .await
        .or_panic();
    eprintln!("0.1.0 -> 0.1.1 rolled in {:?}", t.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    poll.await.expect("poll");
    status_task.abort();

    // The same members on their data, each in a new pod on the new image.
    let after = member_pod_states(&bed, ns, "up").await;
    assert_eq!(
        member_ids(&status),
        ids_before,
        "members replaced, not restarted"
    );
    for ((name, uid, _, _), (name2, uid2, image, _)) in before.iter().zip(&after) {
        assert_eq!(name, name2);
        assert_ne!(uid, uid2, "{name} was not restarted");
        assert_eq!(image, NEW);
    }
    let images: Vec<&str> = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["image"].as_str())
        .collect();
    assert_eq!(images, [NEW; 3], "status.members[].image: {status}");
    let min = min_ready.load(Ordering::SeqCst);
    assert!(min >= 2, "only {min} of 3 member pods Ready at one poll");

    // Followers first, the leader last, after leadership moved off it.
    let evs = bed.events(ns, "up").await.or_panic();
    let restarted: Vec<String> = evs
        .iter()
        .filter(|(r, _)| r == "MemberRestarted")
        .filter_map(|(_, note)| note.split_whitespace().nth(2).map(str::to_string))
        .collect();
    assert_eq!(restarted.len(), 3, "MemberRestarted Events: {evs:?}");
    assert_eq!(
        restarted.last(),
        Some(&leader_before),
        "the leader must go last: {restarted:?}"
    );
    assert!(
        evs.iter().any(|(r, _)| r == "LeaderMoved"),
        "no LeaderMoved Event: {evs:?}"
    );
    // Available all along, and the roll's progress in Progressing.
    let seen = statuses.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let cond = |st: &Value, t: &str| {
        st["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t).cloned())
    };
    for st in &seen {
        let a = cond(st, "Available").expect("Available condition");
        assert_eq!(a["status"], "True", "quorum lost during the roll: {st}");
    }
    assert!(
        seen.iter().any(|st| cond(st, "Progressing")
            .and_then(|c| c["message"]
                .as_str()
                .map(|m| m.contains("members on ghcr.io/ferrokv/ferrokv:0.1.1")))
            .unwrap_or(false)),
        "no progress in Progressing: {seen:?}"
    );

    // The history: every key read at the end, then the checks.
    let mut history = History::new(initial);
    for c in clients {
        history.ops.extend(c.await.expect("client"));
    }
    let gap = longest_gap(&history.ops);
    let (_, ip) = bed.member_pods(ns, "up").await.or_panic().remove(0);
    let mut c = ferrokv_tests::history::connect(&format!("http://{ip}:2379"), OP_TIMEOUT)
        .await
        .expect("connect after the roll");
    for k in 0..4 {
        let req = Request::Get {
            key: format!("{PREFIX}k{k}"),
        };
        let call = t0.elapsed().as_nanos();
        let resp = execute(&mut c, &req, OP_TIMEOUT).await.expect("final read");
        history.ops.push(Op {
            client: 100,
            call,
            ret: t0.elapsed().as_nanos(),
            req,
            outcome: Outcome::Known(resp),
        });
    }
    let final_rev = header_rev(c.get(PREFIX, None).await.expect("final rev").header());
    let caught_up = Instant::now() + Duration::from_secs(10);
    while watch_last.load(Ordering::SeqCst) < final_rev && Instant::now() < caught_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch_stop.store(true, Ordering::Relaxed);
    watcher.await.expect("watcher");
    let events = std::mem::take(&mut *events.lock().unwrap_or_else(|e| e.into_inner()));
    history.ops.sort_by_key(|o| o.call);
    let known = history
        .ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Known(_)))
        .count();
    let unknown = history.ops.len() - known;
    assert!(known > 100, "only {known} requests answered");
    assert!(
        gap < Duration::from_secs(15),
        "the clients went {gap:?} without an answer"
    );
    let state = check_revisions(&history, &events).unwrap_or_else(|v| panic!("check A: {v}"));
    match check_linearizable(&history, Some(&state), Duration::from_secs(20)) {
        Linearizability::Ok { .. } => {}
        Linearizability::Violation(v) => panic!("check B (linearizability): {v}"),
        Linearizability::Unknown { key } => panic!("check B undecided on {key}"),
    }
    eprintln!(
        "roll under load: {known} requests answered, {unknown} writes unknown, {} failed reads, longest gap {gap:?}, {} watch events; restarted {restarted:?}",
        failed_reads.load(Ordering::Relaxed),
        events.len()
    );
}
