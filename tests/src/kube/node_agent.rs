//! A test node agent: plays kubelet for the pods bound to its Node the way kwok plays nodes,
//! except that each pod's container really runs, as a `ferrokv` (or `etcd`) process.
//!
//! What it does, and why each part is there:
//! - registers a Ready Node and binds every unscheduled pod to it (no scheduler runs); a bound
//!   pod is deleted gracefully by the API server, so the agent sees `deletionTimestamp`,
//!   sends SIGTERM, waits up to the grace period, SIGKILLs, and finishes with a grace-0
//!   delete, after which the pvc-protection finalizer and the garbage collector proceed;
//! - gives each pod its own loopback address 127.0.0.N (the member ports 2379/2380/2381 are
//!   fixed, so pods cannot share one) and rewrites listen addresses like `0.0.0.0` to it;
//! - keeps a hosts file with every pod's DNS names (`<host>.<subdomain>.<ns>.svc[.cluster.local]`)
//!   and every Service's name (resolving to the pods behind it) written before the pod's
//!   process starts; processes run with it over `/etc/hosts` ([`super::hosts_command`]);
//! - makes volumes directories: an emptyDir per pod, a directory per PVC (by uid, so it
//!   outlives the pod and a re-created claim starts empty; claims nobody binds are marked
//!   Bound through the status subresource), Secret and ConfigMap volumes as files swapped
//!   atomically (kubelet's `..data` symlink) when the object changes; the container's mount paths in args and env are rewritten to
//!   those directories;
//! - runs readiness and liveness probes (httpGet, tcpSocket) and writes pod status (phase,
//!   conditions, container statuses with restart counts) through the status subresource;
//!   restarts exited containers with a back-off.
//!
//! Nothing else of Kubernetes is replaced: the API server, controller-manager, RBAC and the
//! operator are the real programs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use ::kube::runtime::reflector::{self, Store};
use ::kube::runtime::{watcher, WatchStreamExt};
use ::kube::{Client, ResourceExt};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Node, PersistentVolumeClaim, Pod, Probe, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::task::JoinHandle;

use super::{hosts_command, log_tail, ControlPlane, Error, Result};
use crate::member::Backend;

/// How often the agent compares what runs with what the API server asks for. The stores are
/// fed by watches, so a tick reads memory only; the writes happen when something changed.
const TICK: Duration = Duration::from_millis(200);

/// Restart back-off: kubelet's doubling, scaled down (kubelet starts at 10 s and caps at 5 min)
/// so a test sees a crash loop within seconds. Reset after a container ran this long.
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(16);
const BACKOFF_RESET: Duration = Duration::from_secs(60);

/// Addresses handed out to pods by any agent of this process.
static POD_IPS: Mutex<BTreeSet<u8>> = Mutex::new(BTreeSet::new());

/// The ports a member binds on its pod address; an address is only handed out when all are
/// free on it (another test on this machine may still hold one).
const POD_PORTS: [u16; 3] = [2379, 2380, 2381];

/// A port on the pod address the agent itself holds while the pod exists: another test
/// process probing the same address finds it taken, so two agents on one machine never hand
/// out the same address (the member ports alone are free until the member binds them).
const LEASE_PORT: u16 = 2378;

/// A pod address and the listener that reserves it; dropping it releases the address.
struct IpLease {
    ip: Ipv4Addr,
    _hold: std::net::TcpListener,
}

impl Drop for IpLease {
    fn drop(&mut self) {
        let mut used = POD_IPS.lock().unwrap_or_else(|e| e.into_inner());
        used.remove(&self.ip.octets()[3]);
    }
}

fn allocate_ip() -> Option<IpLease> {
    let mut used = POD_IPS.lock().unwrap_or_else(|e| e.into_inner());
    for n in 2..=254u8 {
        if used.contains(&n) {
            continue;
        }
        let ip = Ipv4Addr::new(127, 0, 0, n);
        let Ok(hold) = std::net::TcpListener::bind((ip, LEASE_PORT)) else {
            continue;
        };
        let free = POD_PORTS
            .iter()
            .all(|p| std::net::TcpListener::bind((ip, *p)).is_ok());
        if free {
            used.insert(n);
            return Some(IpLease { ip, _hold: hold });
        }
    }
    None
}

/// One pod as the agent sees it, for failure messages.
#[derive(Debug, Clone)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: Ipv4Addr,
    pub state: String,
    pub ready: bool,
    pub restarts: i32,
    pub pid: Option<u32>,
    pub log: PathBuf,
}

/// Shared between the agent task and its handle: what to kill on drop, what to show.
#[derive(Default)]
struct Shared {
    pids: BTreeMap<String, u32>,
    views: Vec<PodView>,
    /// The agent's own notes (failed API calls, probe failures, restarts), newest last.
    journal: Vec<String>,
    /// Pods (`namespace/name`) whose liveness probe the agent no longer runs.
    liveness_off: BTreeSet<String>,
    /// Pods (`namespace/name`) whose exited container the agent does not start again yet.
    held: BTreeSet<String>,
}

impl Shared {
    fn note(&mut self, line: String) {
        if self.journal.len() > 400 {
            self.journal.drain(..100);
        }
        self.journal.push(format!("{} {line}", Timestamp::now()));
    }
}

type SharedRef = Arc<Mutex<Shared>>;

fn lock(s: &SharedRef) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// The node agent. Dropping it stops the agent and SIGKILLs every process it started.
pub struct NodeAgent {
    pub node: String,
    hosts: PathBuf,
    dir: TempDir,
    shared: SharedRef,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeAgent {
    /// Registers the Node, starts the watches and the agent loop.
    pub async fn start(cp: &ControlPlane) -> Result<NodeAgent> {
        let client = cp.client().await?;
        let dir = tempfile::Builder::new().prefix("kube-node-").tempdir()?;
        let node = "ferrokv-test-node".to_string();
        register_node(&client, &node).await?;

        let hosts = dir.path().join("hosts");
        let hosts_base = std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| {
            "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n".into()
        });
        std::fs::write(&hosts, &hosts_base)?;

        let mut tasks = Vec::new();
        let pods = store::<Pod>(&client, &mut tasks);
        let services = store::<Service>(&client, &mut tasks);
        let secrets = store::<Secret>(&client, &mut tasks);
        let config_maps = store::<ConfigMap>(&client, &mut tasks);
        let claims = store::<PersistentVolumeClaim>(&client, &mut tasks);
        for ready in [
            pods.wait_until_ready().await.is_ok(),
            services.wait_until_ready().await.is_ok(),
            secrets.wait_until_ready().await.is_ok(),
            config_maps.wait_until_ready().await.is_ok(),
            claims.wait_until_ready().await.is_ok(),
        ] {
            if !ready {
                return Err(Error::Agent("a watch of the node agent ended".into()));
            }
        }

        let shared = SharedRef::default();
        let mut agent = Agent {
            client,
            node: node.clone(),
            root: dir.path().to_path_buf(),
            hosts: hosts.clone(),
            hosts_base,
            hosts_written: String::new(),
            pods,
            services,
            secrets,
            config_maps,
            claims,
            runs: BTreeMap::new(),
            finished: BTreeSet::new(),
            bound_claims: BTreeSet::new(),
            ferrokv: Backend::Ferrokv.binary()?,
            etcd: Backend::Etcd.binary().ok(),
            shared: shared.clone(),
        };
        tasks.push(tokio::spawn(async move {
            loop {
                agent.tick().await;
                tokio::time::sleep(TICK).await;
            }
        }));
        Ok(NodeAgent {
            node,
            hosts,
            dir,
            shared,
            tasks,
        })
    }

    /// The generated hosts file; run other processes of the test (the operator) over it.
    pub fn hosts_file(&self) -> &Path {
        &self.hosts
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pods the agent runs, as it sees them.
    pub fn pods(&self) -> Vec<PodView> {
        lock(&self.shared).views.clone()
    }

    /// The pod `namespace/name` as the agent sees it.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodView> {
        self.pods()
            .into_iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`, ...) to the process of pod `namespace/name`:
    /// a member crashing or freezing under the agent, which then reacts as kubelet would.
    pub fn signal(&self, namespace: &str, name: &str, signal: &str) -> Result<()> {
        let pid = self
            .pod(namespace, name)
            .and_then(|p| p.pid)
            .ok_or_else(|| Error::Agent(format!("no process runs for pod {namespace}/{name}")))?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Agent(format!("kill -{signal} {pid}: {status}")))
        }
    }

    /// Stops running the liveness probe of pod `namespace/name`, as if it had none: a frozen
    /// member then stays frozen (kubelet would restart it), which is what the operator's own
    /// replacement of an unhealthy member needs to be seen.
    pub fn disable_liveness(&self, namespace: &str, name: &str) {
        let mut shared = lock(&self.shared);
        shared.liveness_off.insert(format!("{namespace}/{name}"));
        shared.note(format!(
            "{namespace}/{name}: liveness probe disabled by the test"
        ));
    }

    /// While `hold` is true, the container of pod `namespace/name` is not started again once it
    /// exits (a test changes its data directory in between); `false` lets it restart.
    pub fn hold_restarts(&self, namespace: &str, name: &str, hold: bool) {
        let mut shared = lock(&self.shared);
        let key = format!("{namespace}/{name}");
        if hold {
            shared.held.insert(key);
        } else {
            shared.held.remove(&key);
        }
        shared.note(format!(
            "{namespace}/{name}: restarts {} by the test",
            if hold { "held" } else { "released" }
        ));
    }

    /// Everything the agent knows, with each pod's log tail, for failure messages.
    pub fn describe(&self) -> String {
        let s = lock(&self.shared);
        let mut out = String::from("node agent pods:\n");
        for p in &s.views {
            out.push_str(&format!(
                "  {}/{} uid={} ip={} state={} ready={} restarts={} pid={:?}\n",
                p.namespace, p.name, p.uid, p.ip, p.state, p.ready, p.restarts, p.pid
            ));
        }
        for p in &s.views {
            out.push_str(&format!(
                "----- {}/{} log ({}) -----\n{}\n",
                p.namespace,
                p.name,
                p.log.display(),
                log_tail(&p.log, 15)
            ));
        }
        let journal = &s.journal[s.journal.len().saturating_sub(40)..];
        out.push_str("----- agent journal -----\n");
        out.push_str(&journal.join("\n"));
        out.push_str(&format!(
            "\n----- hosts file -----\n{}",
            std::fs::read_to_string(&self.hosts).unwrap_or_default()
        ));
        out
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let s = lock(&self.shared);
        for pid in s.pids.values() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        drop(s);
        if std::thread::panicking() {
            eprintln!("{}", self.describe());
        }
    }
}

/// A reflector store of every `K` in the cluster, fed by a watch task pushed onto `tasks`.
fn store<K>(client: &Client, tasks: &mut Vec<JoinHandle<()>>) -> Store<K>
where
    K: ::kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + for<'de> k8s_openapi::serde::Deserialize<'de>
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let api: Api<K> = Api::all(client.clone());
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    tasks.push(tokio::spawn(async move {
        stream.for_each(|_| async {}).await;
    }));
    reader
}

async fn register_node(client: &Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }},
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(::kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let now = now();
    let capacity =
        json!({"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let status = json!({"status": {
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": name},
        ],
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "ferrokv test node agent is running",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
            "osImage": "ferrokv test node agent", "containerRuntimeVersion": "ferrokv-agent://0",
            "kubeletVersion": "v1.34.10", "kubeProxyVersion": "", "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

fn now() -> Value {
    serde_json::to_value(Time(Timestamp::now())).unwrap_or(Value::Null)
}

/// A probe in flight or its schedule.
#[derive(Default)]
struct ProbeState {
    next: Option<Instant>,
    running: Option<JoinHandle<bool>>,
    successes: i32,
    failures: i32,
}

struct Terminated {
    exit_code: i32,
    started: Value,
    finished: Value,
    /// kubelet's `FallbackToLogsOnError`: the log tail of a failed run, when the container
    /// asks for it (the agent writes no termination message file).
    message: Option<String>,
}

/// The agent's record of one pod it runs.
struct PodRun {
    namespace: String,
    name: String,
    uid: String,
    ip: Ipv4Addr,
    /// Holds `ip` for this pod until the record is dropped.
    _lease: IpLease,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    started_at: Option<(Instant, Value)>,
    restarts: i32,
    backoff: Duration,
    backoff_until: Option<Instant>,
    last_terminated: Option<Terminated>,
    /// The container ran to completion under a restart policy that does not restart it.
    completed: Option<i32>,
    /// Why the container does not run yet (volumes, unsupported image, a failed init container).
    waiting: Option<(String, String)>,
    /// Every init container ran to completion (once per pod, as kubelet runs them).
    init_done: bool,
    /// `initContainerStatuses`: each init container's last run, terminated with its exit code
    /// and, as kubelet's `FallbackToLogsOnError` gives, the log tail of a failure as message.
    init_statuses: Vec<Value>,
    ready: bool,
    readiness: ProbeState,
    liveness: ProbeState,
    /// Volume name → host directory.
    volumes: BTreeMap<String, PathBuf>,
    /// Secret/ConfigMap volume name → resourceVersion written.
    volume_versions: BTreeMap<String, String>,
    terminating: Option<Instant>,
    start_time: Value,
    transitions: BTreeMap<&'static str, (bool, Value)>,
    last_status: Option<Value>,
}

impl PodRun {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill(&mut self, shared: &SharedRef) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        lock(shared).pids.remove(&self.uid);
    }

    fn transition(&mut self, kind: &'static str, status: bool) -> Value {
        let entry = self.transitions.entry(kind).or_insert((status, now()));
        if entry.0 != status {
            *entry = (status, now());
        }
        entry.1.clone()
    }
}

struct Agent {
    client: Client,
    node: String,
    root: PathBuf,
    hosts: PathBuf,
    hosts_base: String,
    hosts_written: String,
    pods: Store<Pod>,
    services: Store<Service>,
    secrets: Store<Secret>,
    config_maps: Store<ConfigMap>,
    claims: Store<PersistentVolumeClaim>,
    runs: BTreeMap<String, PodRun>,
    /// Pods the agent finished (deleted with grace 0); the store may show them a while longer.
    finished: BTreeSet<String>,
    /// Claims the agent marked Bound.
    bound_claims: BTreeSet<String>,
    ferrokv: PathBuf,
    etcd: Option<PathBuf>,
    shared: SharedRef,
}

impl Drop for Agent {
    fn drop(&mut self) {
        for run in self.runs.values_mut() {
            run.kill(&self.shared);
        }
    }
}

impl Agent {
    fn note(&self, line: String) {
        lock(&self.shared).note(line);
    }

    async fn tick(&mut self) {
        let pods = self.pods.state();
        for pod in &pods {
            let unscheduled = pod.spec.as_ref().is_none_or(|s| s.node_name.is_none());
            if unscheduled && pod.metadata.deletion_timestamp.is_none() {
                self.bind(pod).await;
            }
        }
        let ours: Vec<Arc<Pod>> = pods
            .into_iter()
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(self.node.as_str())
            })
            .filter(|p| !self.finished.contains(&uid(&p.metadata)))
            .collect();
        for pod in &ours {
            if !self.runs.contains_key(&uid(&pod.metadata))
                && pod.metadata.deletion_timestamp.is_none()
            {
                self.admit(pod);
            }
        }
        // A pod deleted without grace (or whose node changed) is gone: so is its process.
        let live: BTreeSet<String> = ours.iter().map(|p| uid(&p.metadata)).collect();
        let gone: Vec<String> = self
            .runs
            .keys()
            .filter(|u| !live.contains(*u))
            .cloned()
            .collect();
        for u in gone {
            if let Some(run) = self.runs.remove(&u) {
                self.note(format!(
                    "{}/{} is gone from the API",
                    run.namespace, run.name
                ));
                self.cleanup(run);
            }
        }
        // Names first: a member resolves its peers as it starts.
        self.write_hosts();
        for pod in &ours {
            if let Err(e) = self.sync(pod).await {
                self.note(format!(
                    "{}/{}: {e}",
                    pod.namespace().unwrap_or_default(),
                    pod.name_any()
                ));
            }
        }
        self.collect_claim_dirs();
        self.publish_views();
    }

    async fn bind(&self, pod: &Pod) {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "uid": uid(&pod.metadata)},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        });
        match api
            .create_subresource::<_, Value>("binding", &name, &PostParams::default(), &binding)
            .await
        {
            Ok(_) => self.note(format!("bound {ns}/{name}")),
            // Already bound (the store lags behind the binding): nothing to do.
            Err(::kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => self.note(format!("binding {ns}/{name}: {e}")),
        }
    }

    fn admit(&mut self, pod: &Pod) {
        let Some(lease) = allocate_ip() else {
            self.note(format!("no free loopback address for {}", pod.name_any()));
            return;
        };
        let u = uid(&pod.metadata);
        let dir = self.root.join("pods").join(&u);
        if let Err(e) = std::fs::create_dir_all(dir.join("root")) {
            self.note(format!("{}: {e}", dir.display()));
            return;
        }
        let run = PodRun {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: u.clone(),
            ip: lease.ip,
            _lease: lease,
            log: dir.join("container.log"),
            dir,
            child: None,
            started_at: None,
            restarts: 0,
            backoff: BACKOFF_START,
            backoff_until: None,
            last_terminated: None,
            completed: None,
            waiting: Some(("ContainerCreating".into(), String::new())),
            init_done: false,
            init_statuses: Vec::new(),
            ready: false,
            readiness: ProbeState::default(),
            liveness: ProbeState::default(),
            volumes: BTreeMap::new(),
            volume_versions: BTreeMap::new(),
            terminating: None,
            start_time: now(),
            transitions: BTreeMap::new(),
            last_status: None,
        };
        self.note(format!(
            "admitted {}/{} at {}",
            run.namespace, run.name, run.ip
        ));
        self.runs.insert(u, run);
    }

    fn cleanup(&mut self, mut run: PodRun) {
        // The address is released when `run` (its lease) is dropped, after the process died.
        run.kill(&self.shared);
        // The pod's own directory holds its emptyDirs and Secret files; claims live elsewhere.
        let _ = std::fs::remove_dir_all(&run.dir);
    }

    /// One pod: termination, volumes, the container process, probes, status.
    async fn sync(&mut self, pod: &Pod) -> Result<()> {
        let u = uid(&pod.metadata);
        if pod.metadata.deletion_timestamp.is_some() {
            return self.terminate(pod).await;
        }
        let Some(mut run) = self.runs.remove(&u) else {
            return Ok(());
        };
        let result = self.sync_run(pod, &mut run).await;
        self.runs.insert(u, run);
        result
    }

    async fn sync_run(&mut self, pod: &Pod, run: &mut PodRun) -> Result<()> {
        let spec = pod.spec.clone().unwrap_or_default();
        let Some(container) = spec.containers.first().cloned() else {
            return Ok(());
        };
        match self.prepare_volumes(pod, run).await {
            Ok(None) => {
                if run
                    .waiting
                    .as_ref()
                    .is_some_and(|w| w.0 == "ContainerCreating")
                {
                    run.waiting = None;
                }
            }
            Ok(Some(why)) => run.waiting = Some(("ContainerCreating".into(), why)),
            Err(e) => run.waiting = Some(("ContainerCreating".into(), e.to_string())),
        }

        // The process ended: record it and schedule a restart as the policy says.
        if let Some(child) = run.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let code = exit_code(&status);
                let (ran, started) = run
                    .started_at
                    .take()
                    .map(|(i, v)| (i.elapsed(), v))
                    .unwrap_or((Duration::ZERO, Value::Null));
                run.child = None;
                lock(&self.shared).pids.remove(&run.uid);
                let fallback = container.termination_message_policy.as_deref()
                    == Some("FallbackToLogsOnError");
                run.last_terminated = Some(Terminated {
                    exit_code: code,
                    started,
                    finished: now(),
                    message: (fallback && code != 0).then(|| termination_log(&run.log)),
                });
                run.ready = false;
                run.readiness = ProbeState::default();
                run.liveness = ProbeState::default();
                let policy = spec.restart_policy.as_deref().unwrap_or("Always");
                let restart = policy == "Always" || (policy == "OnFailure" && code != 0);
                if restart {
                    if ran >= BACKOFF_RESET {
                        run.backoff = BACKOFF_START;
                    }
                    run.backoff_until = Some(Instant::now() + run.backoff);
                    self.note(format!(
                        "{}/{} exited ({code}) after {ran:?}; restart in {:?}",
                        run.namespace, run.name, run.backoff
                    ));
                    run.backoff = (run.backoff * 2).min(BACKOFF_MAX);
                } else {
                    run.completed = Some(code);
                }
            }
        }

        let may_start = run.child.is_none()
            && run.completed.is_none()
            && run
                .waiting
                .as_ref()
                .is_none_or(|w| w.0 != "ContainerCreating")
            && run.backoff_until.is_none_or(|t| Instant::now() >= t)
            && !lock(&self.shared)
                .held
                .contains(&format!("{}/{}", run.namespace, run.name));
        if may_start && !run.init_done {
            match self.run_init_containers(pod, run) {
                Ok(()) => run.init_done = true,
                Err(e) => {
                    self.note(format!("{}/{}: init: {e}", run.namespace, run.name));
                    run.waiting = Some(("Init:Error".into(), e.to_string()));
                    run.backoff_until = Some(Instant::now() + run.backoff);
                    run.backoff = (run.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        if may_start && run.init_done {
            match self.start_container(pod, &container, run) {
                Ok(()) => {
                    if run.last_terminated.is_some() {
                        run.restarts += 1;
                    }
                    run.backoff_until = None;
                    run.waiting = None;
                }
                Err(e) => {
                    self.note(format!("{}/{}: start: {e}", run.namespace, run.name));
                    run.waiting = Some(("RunContainerError".into(), e.to_string()));
                    run.backoff_until = Some(Instant::now() + run.backoff);
                    run.backoff = (run.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }

        self.probe(run, &container);
        let status = self.status(run, &container);
        if run.last_status.as_ref() != Some(&status) {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &run.namespace);
            api.patch_status(
                &run.name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await?;
            run.last_status = Some(status);
        }
        Ok(())
    }

    /// Graceful deletion: SIGTERM, up to the grace period, SIGKILL, then the grace-0 delete
    /// that removes the object (the API server waits for it because the pod is bound).
    async fn terminate(&mut self, pod: &Pod) -> Result<()> {
        let u = uid(&pod.metadata);
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                pod.spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        if let Some(run) = self.runs.get_mut(&u) {
            if run.terminating.is_none() {
                let secs = u64::try_from(grace).unwrap_or(0);
                run.terminating = Some(Instant::now() + Duration::from_secs(secs));
                if let Some(pid) = run.pid() {
                    let _ = std::process::Command::new("kill")
                        .args(["-TERM", &pid.to_string()])
                        .status();
                }
                let line = format!("{}/{}: SIGTERM, grace {grace} s", run.namespace, run.name);
                lock(&self.shared).note(line);
            }
            let exited = match run.child.as_mut() {
                Some(c) => matches!(c.try_wait(), Ok(Some(_))),
                None => true,
            };
            let overdue = run.terminating.is_some_and(|t| Instant::now() >= t);
            if !exited && !overdue {
                return Ok(());
            }
        }
        if let Some(mut run) = self.runs.remove(&u) {
            run.kill(&self.shared);
            self.cleanup(run);
        }
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(u.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&pod.name_any(), &dp).await {
            Ok(_) => {}
            Err(::kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        self.note(format!("{ns}/{} deleted", pod.name_any()));
        self.finished.insert(u);
        Ok(())
    }

    /// Makes every volume a directory. `Ok(Some(why))` while something it needs is missing.
    async fn prepare_volumes(&mut self, pod: &Pod, run: &mut PodRun) -> Result<Option<String>> {
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        for v in volumes {
            let own = run.dir.join("volumes").join(&v.name);
            if v.empty_dir.is_some() {
                std::fs::create_dir_all(&own)?;
                run.volumes.insert(v.name.clone(), own);
            } else if let Some(pvc) = &v.persistent_volume_claim {
                let Some(claim) = self.claims.state().into_iter().find(|c| {
                    c.name_any() == pvc.claim_name
                        && c.namespace().as_deref() == Some(run.namespace.as_str())
                }) else {
                    return Ok(Some(format!(
                        "persistentvolumeclaim \"{}\" not found",
                        pvc.claim_name
                    )));
                };
                if claim.metadata.deletion_timestamp.is_some() && !run.volumes.contains_key(&v.name)
                {
                    return Ok(Some(format!(
                        "persistentvolumeclaim \"{}\" is being deleted",
                        pvc.claim_name
                    )));
                }
                self.bind_claim(&claim).await?;
                let dir = self.root.join("claims").join(uid(&claim.metadata));
                std::fs::create_dir_all(&dir)?;
                run.volumes.insert(v.name.clone(), dir);
            } else if let Some(src) = &v.secret {
                let name = src.secret_name.clone().unwrap_or_default();
                let found = self.secrets.state().into_iter().find(|s| {
                    s.name_any() == name && s.namespace().as_deref() == Some(run.namespace.as_str())
                });
                let optional = src.optional.unwrap_or(false);
                let files: Option<(String, BTreeMap<String, Vec<u8>>)> = found.map(|s| {
                    let data = s
                        .data
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, b)| (k, b.0))
                        .collect();
                    (s.resource_version().unwrap_or_default(), data)
                });
                let items = src.items.clone().unwrap_or_default();
                let items: Vec<(String, String)> =
                    items.into_iter().map(|i| (i.key, i.path)).collect();
                match files {
                    Some((version, data)) => {
                        write_files(run, &v.name, &own, &version, &data, &items)?
                    }
                    None if optional => std::fs::create_dir_all(&own)?,
                    None => return Ok(Some(format!("secret \"{name}\" not found"))),
                }
                run.volumes.insert(v.name.clone(), own);
            } else if let Some(src) = &v.config_map {
                let name = src.name.clone();
                let found = self.config_maps.state().into_iter().find(|c| {
                    c.name_any() == name && c.namespace().as_deref() == Some(run.namespace.as_str())
                });
                let optional = src.optional.unwrap_or(false);
                let files: Option<(String, BTreeMap<String, Vec<u8>>)> = found.map(|c| {
                    let mut data: BTreeMap<String, Vec<u8>> = c
                        .data
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, s)| (k, s.into_bytes()))
                        .collect();
                    for (k, b) in c.binary_data.clone().unwrap_or_default() {
                        data.insert(k, b.0);
                    }
                    (c.resource_version().unwrap_or_default(), data)
                });
                let items = src.items.clone().unwrap_or_default();
                let items: Vec<(String, String)> =
                    items.into_iter().map(|i| (i.key, i.path)).collect();
                match files {
                    Some((version, data)) => {
                        write_files(run, &v.name, &own, &version, &data, &items)?
                    }
                    None if optional => std::fs::create_dir_all(&own)?,
                    None => return Ok(Some(format!("configmap \"{name}\" not found"))),
                }
                run.volumes.insert(v.name.clone(), own);
            } else {
                return Ok(Some(format!(
                    "volume {} is of a type the node agent does not provide",
                    v.name
                )));
            }
        }
        Ok(None)
    }

    /// No provisioner runs: a claim a pod uses is marked Bound, as a provisioner would.
    async fn bind_claim(&mut self, claim: &PersistentVolumeClaim) -> Result<()> {
        let u = uid(&claim.metadata);
        let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase == Some("Bound") || self.bound_claims.contains(&u) {
            return Ok(());
        }
        let ns = claim.namespace().unwrap_or_default();
        let spec = claim.spec.clone().unwrap_or_default();
        let capacity = spec.resources.and_then(|r| r.requests).unwrap_or_default();
        let status = json!({"status": {
            "phase": "Bound",
            "accessModes": spec.access_modes.unwrap_or_default(),
            "capacity": capacity,
        }});
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
        api.patch_status(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await?;
        self.note(format!("claim {ns}/{} marked Bound", claim.name_any()));
        self.bound_claims.insert(u);
        Ok(())
    }

    /// Removes the directories of claims that no longer exist.
    fn collect_claim_dirs(&self) {
        let live: BTreeSet<String> = self
            .claims
            .state()
            .iter()
            .map(|c| uid(&c.metadata))
            .collect();
        let Ok(entries) = std::fs::read_dir(self.root.join("claims")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let in_use = self
                .runs
                .values()
                .any(|r| r.volumes.values().any(|d| d == &e.path()));
            if !live.contains(&name) && !in_use {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// The program of a container: the member binary its image (or command) names.
    fn program(&self, c: &Container) -> Result<(PathBuf, Vec<String>)> {
        let mut args: Vec<String> = Vec::new();
        let name = match c.command.as_ref().and_then(|cmd| cmd.first()) {
            Some(first) => {
                args.extend(c.command.iter().flatten().skip(1).cloned());
                Path::new(first)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }
            None => image_program(c.image.as_deref().unwrap_or_default()),
        };
        args.extend(c.args.iter().flatten().cloned());
        let bin = match name.as_str() {
            "ferrokv" => self.ferrokv.clone(),
            "etcd" => self.etcd.clone().ok_or_else(|| {
                Error::Agent("the pod runs etcd but no etcd binary is installed".into())
            })?,
            "etcd36" => crate::member::etcd36_dir()
                .map(|d| d.join("etcd"))
                .map_err(|e| Error::Agent(format!("the pod runs etcd 3.6: {e}")))?,
            other => {
                return Err(Error::Agent(format!(
                "the node agent runs only ferrokv and etcd containers, not {other:?} (image {:?})",
                c.image
            )))
            }
        };
        Ok((bin, args))
    }

    /// Runs the pod's init containers one after the other, each to completion, before its
    /// container first starts (their output goes to the pod's log). Blocking: they are short
    /// (a restore from a backup), and the agent is a test harness.
    fn run_init_containers(&self, pod: &Pod, run: &mut PodRun) -> Result<()> {
        let inits = pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.clone())
            .unwrap_or_default();
        for (i, c) in inits.iter().enumerate() {
            let (mut cmd, bin, args) = self.container_command(pod, c, run)?;
            let started = now();
            let status =
                tokio::task::block_in_place(|| cmd.status()).map_err(|source| Error::Spawn {
                    bin: bin.clone(),
                    source,
                })?;
            let code = exit_code(&status);
            let restarts = run
                .init_statuses
                .get(i)
                .and_then(|s| s["restartCount"].as_i64())
                .map_or(0, |n| n + 1);
            let mut terminated = json!({"exitCode": code,
                "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": started, "finishedAt": now()});
            if code != 0 {
                terminated["message"] = json!(log_tail(&run.log, 5));
            }
            let entry = json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "ready": code == 0,
                "restartCount": restarts,
                "state": {"terminated": terminated},
            });
            if i < run.init_statuses.len() {
                run.init_statuses[i] = entry;
            } else {
                run.init_statuses.push(entry);
            }
            self.note(format!(
                "{}/{} init container {} exited {status}: {} {}",
                run.namespace,
                run.name,
                c.name,
                bin.display(),
                args.join(" ")
            ));
            if !status.success() {
                return Err(Error::Agent(format!(
                    "init container {} exited {status}: {}",
                    c.name,
                    log_tail(&run.log, 5)
                )));
            }
        }
        Ok(())
    }

    /// An env value from a Secret key (`valueFrom.secretKeyRef`) of the pod's namespace.
    fn secret_value(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        let s = self
            .secrets
            .state()
            .into_iter()
            .find(|s| s.name_any() == name && s.namespace().as_deref() == Some(namespace))?;
        let data = s.data.clone().unwrap_or_default();
        data.get(key)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    }

    fn start_container(&self, pod: &Pod, c: &Container, run: &mut PodRun) -> Result<()> {
        let (mut cmd, bin, args) = self.container_command(pod, c, run)?;
        let ip = run.ip.to_string();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&run.log)?;
        let log2 = log.try_clone()?;
        let child = cmd
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| Error::Spawn {
                bin: bin.clone(),
                source,
            })?;
        let mut s = lock(&self.shared);
        s.pids.insert(run.uid.clone(), child.id());
        s.note(format!(
            "{}/{} started pid {} at {ip}: {} {}",
            run.namespace,
            run.name,
            child.id(),
            bin.display(),
            args.join(" ")
        ));
        drop(s);
        run.child = Some(child);
        run.started_at = Some((Instant::now(), now()));
        Ok(())
    }

    /// The process of container `c` (init or main), ready to spawn: program, args and env
    /// with the pod's mount paths rewritten to host directories, output to the pod's log.
    fn container_command(
        &self,
        pod: &Pod,
        c: &Container,
        run: &PodRun,
    ) -> Result<(std::process::Command, PathBuf, Vec<String>)> {
        let (bin, args) = self.program(c)?;
        // Mount paths become the host directories, longest first so nested mounts win.
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some(dir) = run.volumes.get(&m.name) else {
                return Err(Error::Agent(format!("volume {} is not ready", m.name)));
            };
            let dir = match &m.sub_path {
                Some(sub) if !sub.is_empty() => dir.join(sub),
                _ => dir.clone(),
            };
            std::fs::create_dir_all(&dir)?;
            mounts.push((m.mount_path.trim_end_matches('/').to_string(), dir));
        }
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let ip = run.ip.to_string();
        let rewrite = |s: &str| -> String {
            let mut s = s.replace("0.0.0.0", &ip);
            for (path, dir) in &mounts {
                s = s.replace(path.as_str(), &dir.display().to_string());
            }
            s
        };
        let args: Vec<String> = args.iter().map(|a| rewrite(a)).collect();

        let spec = pod.spec.clone().unwrap_or_default();
        let hostname = spec.hostname.clone().unwrap_or_else(|| run.name.clone());
        let mut env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("HOSTNAME".into(), hostname),
            ("HOME".into(), run.dir.join("root").display().to_string()),
        ];
        // envFrom Secrets first: explicit `env` entries override them, as in kubelet.
        for from in c.env_from.iter().flatten() {
            let Some(name) = from.secret_ref.as_ref().map(|r| r.name.clone()) else {
                continue;
            };
            let found = self.secrets.state().into_iter().find(|s| {
                s.name_any() == name && s.namespace().as_deref() == Some(run.namespace.as_str())
            });
            for (k, v) in found.and_then(|s| s.data.clone()).unwrap_or_default() {
                env.push((k, String::from_utf8_lossy(&v.0).into_owned()));
            }
        }
        for e in c.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => rewrite(v),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.name") => run.name.clone(),
                        Some("metadata.namespace") => run.namespace.clone(),
                        Some("metadata.uid") => run.uid.clone(),
                        Some("status.podIP") => ip.clone(),
                        Some("status.hostIP") => "127.0.0.1".into(),
                        Some("spec.nodeName") => self.node.clone(),
                        _ => from
                            .secret_key_ref
                            .as_ref()
                            .and_then(|r| self.secret_value(&run.namespace, &r.name, &r.key))
                            .unwrap_or_default(),
                    }
                }
                (None, None) => String::new(),
            };
            env.push((e.name.clone(), value));
        }

        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&run.log)?;
        let log2 = log.try_clone()?;
        let mut cmd = hosts_command(&self.hosts, &bin, &args);
        cmd.env_clear()
            .envs(env)
            .current_dir(run.dir.join("root"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        Ok((cmd, bin, args))
    }

    /// Readiness and liveness: each probe runs as its own task so a frozen member cannot
    /// stall the agent; its result is taken on a later tick.
    fn probe(&self, run: &mut PodRun, c: &Container) {
        let Some((started, _)) = run.started_at.clone() else {
            return;
        };
        if run.child.is_none() {
            return;
        }
        match &c.readiness_probe {
            None => run.ready = true,
            Some(p) => {
                if let Some(ok) = step_probe(&mut run.readiness, p, c, run.ip, started) {
                    let threshold = p.success_threshold.unwrap_or(1).max(1);
                    let failures = p.failure_threshold.unwrap_or(3).max(1);
                    if ok && run.readiness.successes >= threshold {
                        run.ready = true;
                    } else if !ok && run.readiness.failures >= failures {
                        run.ready = false;
                    }
                }
            }
        }
        let key = format!("{}/{}", run.namespace, run.name);
        if lock(&self.shared).liveness_off.contains(&key) {
            return;
        }
        if let Some(p) = &c.liveness_probe {
            if let Some(false) = step_probe(&mut run.liveness, p, c, run.ip, started) {
                let failures = p.failure_threshold.unwrap_or(3).max(1);
                if run.liveness.failures >= failures {
                    // kubelet kills a container that fails liveness; it restarts per policy.
                    let line = format!(
                        "{}/{}: liveness failed {failures} times, killing",
                        run.namespace, run.name
                    );
                    lock(&self.shared).note(line);
                    if let Some(c) = run.child.as_mut() {
                        let _ = c.kill();
                    }
                    run.liveness = ProbeState::default();
                }
            }
        }
    }

    fn status(&self, run: &mut PodRun, c: &Container) -> Value {
        let running = run.child.is_some();
        let ready = running && run.ready;
        let phase = match run.completed {
            Some(0) => "Succeeded",
            Some(_) => "Failed",
            None if running || run.last_terminated.is_some() => "Running",
            None => "Pending",
        };
        let state = if let (true, Some((_, at))) = (running, &run.started_at) {
            json!({"running": {"startedAt": at}})
        } else if let (Some(code), Some(t)) = (run.completed, &run.last_terminated) {
            let mut s = json!({"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": t.started, "finishedAt": t.finished}});
            if let Some(m) = &t.message {
                s["terminated"]["message"] = json!(m);
            }
            s
        } else if let Some((reason, message)) = &run.waiting {
            json!({"waiting": {"reason": reason, "message": message}})
        } else {
            json!({"waiting": {"reason": "CrashLoopBackOff",
                "message": format!("back-off restarting failed container {}", c.name)}})
        };
        let mut cs = json!({
            "name": c.name,
            "image": c.image.clone().unwrap_or_default(),
            "imageID": "",
            "containerID": format!("ferrokv-agent://{}-{}", run.uid, run.restarts),
            "ready": ready,
            "started": running,
            "restartCount": run.restarts,
            "state": state,
        });
        if let Some(t) = &run.last_terminated {
            cs["lastState"] = json!({"terminated": {"exitCode": t.exit_code,
                "reason": "Error", "startedAt": t.started, "finishedAt": t.finished}});
            if let Some(m) = &t.message {
                cs["lastState"]["terminated"]["message"] = json!(m);
            }
        }
        let initialized = run
            .waiting
            .as_ref()
            .is_none_or(|w| w.0 != "ContainerCreating");
        let mut conditions = Vec::new();
        for (kind, ok) in [
            ("PodScheduled", true),
            ("Initialized", initialized),
            ("ContainersReady", ready),
            ("Ready", ready),
        ] {
            let since = run.transition(kind, ok);
            conditions.push(json!({
                "type": kind,
                "status": if ok { "True" } else { "False" },
                "lastTransitionTime": since,
            }));
        }
        let ip = run.ip.to_string();
        json!({
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": run.start_time,
            "qosClass": "BestEffort",
            "conditions": conditions,
            "containerStatuses": [cs],
            "initContainerStatuses": run.init_statuses,
        })
    }

    /// The hosts file: every admitted pod's names and every Service's names, rewritten in
    /// place (bind mounts of it must keep seeing it) and only when it changed.
    fn write_hosts(&mut self) {
        let mut lines: Vec<String> = Vec::new();
        let pods = self.pods.state();
        let labels_of = |u: &str| -> BTreeMap<String, String> {
            pods.iter()
                .find(|p| uid(&p.metadata) == u)
                .map(|p| p.labels().clone())
                .unwrap_or_default()
        };
        for run in self.runs.values() {
            let Some(pod) = pods.iter().find(|p| uid(&p.metadata) == run.uid) else {
                continue;
            };
            let spec = pod.spec.clone().unwrap_or_default();
            let mut names: Vec<String> = Vec::new();
            if let Some(h) = &spec.hostname {
                if let Some(sub) = &spec.subdomain {
                    let fq = format!("{h}.{sub}.{}", run.namespace);
                    names.push(format!("{fq}.svc.cluster.local"));
                    names.push(format!("{fq}.svc"));
                    names.push(fq);
                    names.push(format!("{h}.{sub}"));
                }
                names.push(h.clone());
            }
            if !names.is_empty() {
                lines.push(format!("{} {}", run.ip, names.join(" ")));
            }
        }
        for svc in self.services.state() {
            let ns = svc.namespace().unwrap_or_default();
            let spec = svc.spec.clone().unwrap_or_default();
            let Some(selector) = spec.selector.filter(|s| !s.is_empty()) else {
                continue;
            };
            let not_ready_too = spec.publish_not_ready_addresses.unwrap_or(false);
            let name = svc.name_any();
            let names = format!("{name}.{ns}.svc.cluster.local {name}.{ns}.svc {name}.{ns} {name}");
            for run in self.runs.values() {
                let labels = labels_of(&run.uid);
                let selected =
                    run.namespace == ns && selector.iter().all(|(k, v)| labels.get(k) == Some(v));
                let serving = run.child.is_some() && (run.ready || not_ready_too);
                if selected && serving && run.terminating.is_none() {
                    lines.push(format!("{} {names}", run.ip));
                }
            }
        }
        let text = format!(
            "{}\n# ferrokv test node agent\n{}\n",
            self.hosts_base.trim_end(),
            lines.join("\n")
        );
        if text == self.hosts_written {
            return;
        }
        match rewrite_in_place(&self.hosts, text.as_bytes()) {
            Ok(()) => self.hosts_written = text,
            Err(e) => self.note(format!("hosts file: {e}")),
        }
    }

    fn publish_views(&self) {
        let views = self
            .runs
            .values()
            .map(|r| PodView {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                uid: r.uid.clone(),
                ip: r.ip,
                state: match (&r.child, &r.waiting, r.terminating) {
                    (_, _, Some(_)) => "Terminating".into(),
                    (Some(_), _, _) => "Running".into(),
                    (None, Some((reason, msg)), _) => format!("{reason}: {msg}"),
                    (None, None, _) => match r.completed {
                        Some(code) => format!("Completed({code})"),
                        None => "BackOff".into(),
                    },
                },
                ready: r.ready && r.child.is_some(),
                restarts: r.restarts,
                pid: r.pid(),
                log: r.log.clone(),
            })
            .collect();
        lock(&self.shared).views = views;
    }
}

/// `ferrokv`/`etcd`/`etcd36` from an image reference such as `ghcr.io/ferrokv/ferrokv:0.1.0`,
/// `quay.io/coreos/etcd:v3.5` or `registry.k8s.io/etcd:3.6.16-0`: an etcd image tagged 3.6 runs
/// etcd 3.6 (from `scripts/build-etcd36.sh`), any other etcd image the system's etcd (3.4).
fn image_program(image: &str) -> String {
    let without_registry = image.rsplit('/').next().unwrap_or(image);
    let repo = without_registry
        .split([':', '@'])
        .next()
        .unwrap_or(without_registry);
    let tag = without_registry
        .split_once('@')
        .map_or(without_registry, |(before, _)| before)
        .split_once(':')
        .map(|(_, t)| t)
        .unwrap_or_default();
    if repo.contains("ferrokv") && !repo.contains("operator") {
        "ferrokv".into()
    } else if repo.contains("etcd") && tag.trim_start_matches('v').starts_with("3.6") {
        "etcd36".into()
    } else if repo.contains("etcd") {
        "etcd".into()
    } else {
        repo.to_string()
    }
}

/// Writes a Secret's or ConfigMap's keys as files when its resourceVersion changed, the way
/// kubelet's atomic writer does, so a running member never reads a half-updated volume: the
/// new version goes into a fresh directory `..<version>_<n>`, the `..data` symlink is swapped
/// to it with one rename, and each key is a symlink `<key> -> ..data/<key>`. A member that
/// reloads its certificates sees a new file (a new inode) behind an unchanged path.
fn write_files(
    run: &mut PodRun,
    volume: &str,
    dir: &Path,
    version: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: &[(String, String)],
) -> Result<()> {
    if run.volume_versions.get(volume).map(String::as_str) == Some(version) {
        return Ok(());
    }
    let files: Vec<(String, &Vec<u8>)> = if items.is_empty() {
        data.iter().map(|(k, v)| (k.clone(), v)).collect()
    } else {
        items
            .iter()
            .filter_map(|(k, p)| data.get(k).map(|v| (p.clone(), v)))
            .collect()
    };
    atomic_write(dir, version, &files)?;
    run.volume_versions
        .insert(volume.to_string(), version.to_string());
    Ok(())
}

/// kubelet's atomic writer layout in `dir` (see [`write_files`]); the previous version's
/// directory is removed after the swap.
fn atomic_write(dir: &Path, version: &str, files: &[(String, &Vec<u8>)]) -> std::io::Result<()> {
    use std::os::unix::fs::symlink;
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    let previous = std::fs::read_link(&data_link).ok();
    let mut n = 0u32;
    let fresh = loop {
        let name = format!("..{version}_{n}");
        if !dir.join(&name).exists() {
            break name;
        }
        n += 1;
    };
    let fresh_dir = dir.join(&fresh);
    std::fs::create_dir_all(&fresh_dir)?;
    for (path, bytes) in files {
        let target = fresh_dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, bytes)?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    symlink(&fresh, &tmp_link)?;
    std::fs::rename(&tmp_link, &data_link)?;
    // The user-visible names point through `..data`, so they follow the swap; only keys that
    // are new need a link (a key that went away keeps a dangling one, as with kubelet until
    // its cleanup; no member volume drops keys).
    for (path, _) in files {
        let top = path.split('/').next().unwrap_or(path);
        let visible = dir.join(top);
        if std::fs::symlink_metadata(&visible).is_err() {
            symlink(Path::new("..data").join(top), &visible)?;
        }
    }
    if let Some(old) = previous {
        if old != Path::new(&fresh) {
            let _ = std::fs::remove_dir_all(dir.join(old));
        }
    }
    Ok(())
}

/// Overwrites a file's contents without replacing the file: written from offset 0, then cut
/// to length, so a bind mount of it (or an open handle) sees the new bytes.
fn rewrite_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(bytes)?;
    f.set_len(u64::try_from(bytes.len()).unwrap_or(u64::MAX))?;
    f.sync_data()
}

/// kubelet's fallback termination message: the log's last 80 lines, at most its last 2048
/// bytes.
fn termination_log(log: &Path) -> String {
    let tail = log_tail(log, 80);
    let mut from = tail.len().saturating_sub(2048);
    while !tail.is_char_boundary(from) {
        from += 1;
    }
    tail[from..].to_string()
}

fn uid(meta: &ObjectMeta) -> String {
    meta.uid.clone().unwrap_or_default()
}

fn exit_code(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Advances one probe: starts it when due, collects it when done. `Some(result)` when a
/// result was collected on this call.
fn step_probe(
    state: &mut ProbeState,
    probe: &Probe,
    c: &Container,
    ip: Ipv4Addr,
    started: Instant,
) -> Option<bool> {
    let mut result = None;
    if state.running.as_ref().is_some_and(JoinHandle::is_finished) {
        if let Some(handle) = state.running.take() {
            // A finished task's output is ready: polling it once cannot block.
            let ok = futures::FutureExt::now_or_never(handle)
                .and_then(|r| r.ok())
                .unwrap_or(false);
            if ok {
                state.successes += 1;
                state.failures = 0;
            } else {
                state.failures += 1;
                state.successes = 0;
            }
            result = Some(ok);
        }
    }
    let secs = |v: Option<i32>, default: i32| {
        Duration::from_secs(u64::try_from(v.unwrap_or(default).max(0)).unwrap_or(0))
    };
    let delay = secs(probe.initial_delay_seconds, 0);
    let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
    let timeout = secs(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let due = state.next.unwrap_or(started + delay);
    if state.running.is_none() && Instant::now() >= due {
        state.next = Some(Instant::now() + period);
        let target = probe_target(probe, c, ip);
        state.running = Some(tokio::spawn(async move {
            match target {
                Some(t) => tokio::time::timeout(timeout, t.check())
                    .await
                    .unwrap_or(false),
                None => false,
            }
        }));
    }
    result
}

enum ProbeTarget {
    Http { addr: (Ipv4Addr, u16), path: String },
    Tcp((Ipv4Addr, u16)),
}

impl ProbeTarget {
    async fn check(self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        match self {
            ProbeTarget::Tcp(addr) => tokio::net::TcpStream::connect(addr).await.is_ok(),
            ProbeTarget::Http { addr, path } => {
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                    return false;
                };
                let req = format!(
                    "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: kube-probe/1.34\r\nConnection: close\r\n\r\n",
                    addr.0, addr.1
                );
                if s.write_all(req.as_bytes()).await.is_err() {
                    return false;
                }
                let mut head = [0u8; 64];
                let mut n = 0;
                while n < 12 {
                    match s.read(&mut head[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
                // "HTTP/1.1 200 ...": kubelet counts 200..=399 as success.
                let line = String::from_utf8_lossy(&head[..n]).into_owned();
                line.split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse::<u16>().ok())
                    .is_some_and(|code| (200..400).contains(&code))
            }
        }
    }
}

fn probe_target(probe: &Probe, c: &Container, pod_ip: Ipv4Addr) -> Option<ProbeTarget> {
    let port_of = |p: &IntOrString| -> Option<u16> {
        match p {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok()),
        }
    };
    if let Some(h) = &probe.http_get {
        let host = h
            .host
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or(pod_ip);
        return Some(ProbeTarget::Http {
            addr: (host, port_of(&h.port)?),
            path: h.path.clone().unwrap_or_else(|| "/".into()),
        });
    }
    if let Some(t) = &probe.tcp_socket {
        return Some(ProbeTarget::Tcp((pod_ip, port_of(&t.port)?)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_map_to_member_programs() {
        for (image, program) in [
            ("ghcr.io/ferrokv/ferrokv:0.1.0", "ferrokv"),
            ("ferrokv:dev", "ferrokv"),
            ("quay.io/coreos/etcd:v3.5.17", "etcd"),
            ("quay.io/coreos/etcd:v3.6.16", "etcd36"),
            ("registry.k8s.io/etcd:3.6.16-0", "etcd36"),
            ("gcr.io/etcd-development/etcd:v3.4.27", "etcd"),
            ("registry.k8s.io/etcd@sha256:abc", "etcd"),
            ("ghcr.io/ferrokv/ferrokv-operator:0.1.0", "ferrokv-operator"),
            ("busybox", "busybox"),
        ] {
            assert_eq!(image_program(image), program, "{image}");
        }
    }

    #[test]
    fn volume_files_are_swapped_atomically() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let v1 = b"first".to_vec();
        atomic_write(dir.path(), "1", &[("tls.crt".into(), &v1)]).expect("write v1");
        let crt = dir.path().join("tls.crt");
        assert_eq!(std::fs::read(&crt).expect("read"), b"first");
        let ino = std::fs::metadata(&crt).expect("meta").ino();
        let v2 = b"second".to_vec();
        atomic_write(dir.path(), "2", &[("tls.crt".into(), &v2)]).expect("write v2");
        assert_eq!(std::fs::read(&crt).expect("read"), b"second");
        assert_ne!(std::fs::metadata(&crt).expect("meta").ino(), ino);
        // The first version's directory is gone; only `..data`, the new one and the key stay.
        let names: BTreeSet<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            BTreeSet::from(["..2_0".to_string(), "..data".into(), "tls.crt".into()])
        );
    }

    #[test]
    fn rewriting_in_place_keeps_the_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        rewrite_in_place(&path, b"a long first version\n").expect("write");
        let ino = std::fs::metadata(&path).expect("meta").ino();
        rewrite_in_place(&path, b"short\n").expect("rewrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"short\n");
        assert_eq!(std::fs::metadata(&path).expect("meta").ino(), ino);
    }
}
