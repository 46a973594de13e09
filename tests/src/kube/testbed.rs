//! One operator test environment: the control plane, the node agent, the CRD and
//! `manifests/install.yaml` applied as a user applies them, and the operator binary running as
//! the install's ServiceAccount; plus the reads scenarios assert on (the cluster's status,
//! member pods, Events, `etcdctl` over the cluster's DNS names) and a failure context that
//! shows all of it.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use ::kube::api::{Api, ListParams};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use serde_json::Value;

use super::{hosts_command, ControlPlane, Error, NodeAgent, OperatorProcess, Result};
use crate::member::workspace_root;

/// Polls `check` every 200 ms until it returns `Some`; after `timeout` fails with `what` and
/// what `context()` says (so a failure shows the state it was waiting on).
pub async fn eventually<T, F, Fut>(
    timeout: Duration,
    what: &str,
    mut check: F,
    context: impl Fn() -> String,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: what.to_string(),
                secs: timeout.as_secs(),
                context: context(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The control plane, the node agent and the operator installed from the shipped manifests.
pub struct Testbed {
    pub cp: ControlPlane,
    pub agent: NodeAgent,
    pub operator: OperatorProcess,
    /// An admin client, for the test's own reads.
    pub client: ::kube::Client,
}

impl Testbed {
    /// `kubectl apply` of `crds/etcdcluster.yaml` and `manifests/install.yaml`, with the
    /// install's Deployment scaled to 0 (no kubelet runs the operator image: the test runs the
    /// binary itself, as the install's ServiceAccount, over the agent's hosts file).
    pub async fn start() -> Result<Testbed> {
        Self::start_with(&[]).await
    }

    /// [`Testbed::start`] with extra flags for the operator (`--cert-renew-before=...`).
    pub async fn start_with(operator_args: &[&str]) -> Result<Testbed> {
        let cp = ControlPlane::start().await?;
        let agent = NodeAgent::start(&cp).await?;
        let root = workspace_root();
        let kubectl = cp.kubectl();
        for file in ["crds/etcdcluster.yaml", "manifests/install.yaml"] {
            let path = root.join(file).display().to_string();
            kubectl.run(&["apply", "-f", &path])?;
        }
        kubectl.run(&[
            "wait",
            "--for=condition=Established",
            "crd/etcdclusters.ferrokv.io",
            "--timeout=60s",
        ])?;
        kubectl.run(&[
            "scale",
            "-n",
            "ferrokv-system",
            "deployment/ferrokv-operator",
            "--replicas=0",
        ])?;
        let operator = OperatorProcess::start_with(&cp, agent.hosts_file(), operator_args).await?;
        let client = cp.client().await?;
        Ok(Testbed {
            cp,
            agent,
            operator,
            client,
        })
    }

    /// kubectl's output, or its error as text (for failure messages).
    pub fn kubectl_text(&self, args: &[&str]) -> String {
        self.cp
            .kubectl()
            .run(args)
            .unwrap_or_else(|e| format!("({e})"))
    }

    /// Everything worth reading when a scenario in namespace `ns` fails: the clusters, their
    /// objects and Events, the operator's log and the agent's view with pod logs.
    pub fn context(&self, ns: &str) -> String {
        format!(
            "----- kubectl get etcdclusters -o yaml -----\n{}\n\
             ----- kubectl get pods,pvc,svc,pdb -----\n{}\n\
             ----- events -----\n{}\n\
             ----- operator log (last 40 lines) -----\n{}\n{}",
            self.kubectl_text(&["get", "etcdclusters", "-n", ns, "-o", "yaml"]),
            self.kubectl_text(&["get", "pods,pvc,svc,pdb", "-n", ns, "-o", "wide"]),
            self.kubectl_text(&[
                "get",
                "events",
                "-n",
                ns,
                "--sort-by=.metadata.creationTimestamp"
            ]),
            self.operator.log_tail(40),
            self.agent.describe(),
        )
    }

    /// The `EtcdCluster` as JSON (`None` while it cannot be read).
    pub fn cluster(&self, ns: &str, name: &str) -> Option<Value> {
        let out = self
            .cp
            .kubectl()
            .run(&["get", "etcdcluster", name, "-n", ns, "-o", "json"])
            .ok()?;
        serde_json::from_str(&out).ok()
    }

    /// Waits until the cluster reports `Available=True` with `replicas` ready, healthy voters
    /// for its current generation; returns its status.
    pub async fn wait_available(
        &self,
        ns: &str,
        name: &str,
        replicas: usize,
        timeout: Duration,
    ) -> Result<Value> {
        eventually(
            timeout,
            &format!("EtcdCluster {ns}/{name} Available with {replicas} ready members"),
            || async {
                let ec = self.cluster(ns, name)?;
                let st = &ec["status"];
                let available = st["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Available" && c["status"] == "True");
                let ready = st["readyMembers"].as_u64()? == u64::try_from(replicas).ok()?;
                let voters = st["members"]
                    .as_array()?
                    .iter()
                    .filter(|m| m["learner"] != true && m["healthy"] == true)
                    .count()
                    == replicas;
                let current = st["observedGeneration"] == ec["metadata"]["generation"];
                (available && ready && voters && current).then(|| st.clone())
            },
            || self.context(ns),
        )
        .await
    }

    /// The member pods of a cluster that are not being deleted, as (name, pod IP), by name.
    pub async fn member_pods(&self, ns: &str, cluster: &str) -> Result<Vec<(String, String)>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={cluster}"));
        let mut out: Vec<(String, String)> = pods
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                let ip = p.status.as_ref()?.pod_ip.clone()?;
                Some((p.metadata.name.clone()?, ip))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// (reason, note) of the Events regarding the cluster object, oldest first.
    pub async fn events(&self, ns: &str, cluster: &str) -> Result<Vec<(String, String)>> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let mut evs: Vec<Event> = api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(cluster))
            .collect();
        // eventTime has microseconds; creationTimestamp only seconds, so Events of one second
        // would come in name order.
        evs.sort_by_key(|e| {
            (
                e.event_time.as_ref().map(|t| t.0),
                e.metadata.creation_timestamp.clone(),
            )
        });
        Ok(evs
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect())
    }

    /// `etcdctl <args>` against `member` by its DNS name, run over the agent's hosts file as a
    /// client inside the cluster would; with `tls`, with the client certificate the operator
    /// issued for users (`<cluster>-client-tls`). Its stdout when it succeeded.
    pub async fn etcdctl_dns(
        &self,
        ns: &str,
        cluster: &str,
        member: &str,
        tls: bool,
        args: &[&str],
    ) -> Result<String> {
        let scheme = if tls { "https" } else { "http" };
        let mut all: Vec<String> = vec![
            "--dial-timeout=3s".into(),
            "--command-timeout=10s".into(),
            format!("--endpoints={scheme}://{member}.{cluster}-peer.{ns}.svc:2379"),
        ];
        let dir = tempfile::tempdir()?;
        if tls {
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
            let name = format!("{cluster}-client-tls");
            let data = secrets.get(&name).await?.data.unwrap_or_default();
            for (key, flag) in [
                ("ca.crt", "--cacert"),
                ("tls.crt", "--cert"),
                ("tls.key", "--key"),
            ] {
                let bytes = data
                    .get(key)
                    .ok_or_else(|| Error::Agent(format!("Secret {name} has no {key}")))?;
                let path = dir.path().join(key);
                std::fs::write(&path, &bytes.0)?;
                all.push(format!("{flag}={}", path.display()));
            }
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let out = hosts_command(self.agent.hosts_file(), Path::new("etcdctl"), &all)
            .env("ETCDCTL_API", "3")
            .output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Error::Agent(format!(
                "etcdctl {} failed ({}): {}{}",
                all.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }
}
