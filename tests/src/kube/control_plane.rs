//! kube-apiserver and kube-controller-manager on loopback, backed by a ferrokv member, run the
//! way envtest runs them; kubectl and kube-rs clients for the admin and for ServiceAccounts.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

use super::{print_tail_on_panic, Error, Result};
use crate::member::{free_port, Backend, Member, MemberOpts};

/// The controllers kube-controller-manager runs: what the operator's objects need (owner
/// garbage collection, namespace deletion, PDB status, default ServiceAccounts and their token
/// Secrets, the pvc-protection finalizer) and nothing that expects real nodes or networks.
/// The endpointslice controller is left out: it refuses the agent's loopback pod IPs.
pub const CONTROLLERS: &str =
    "garbage-collector-controller,namespace-controller,disruption-controller,\
     serviceaccount-controller,serviceaccount-token-controller,\
     persistentvolumeclaim-protection-controller";

/// The service network (ClusterIPs are allocated from it but never routed: the node agent's
/// hosts file resolves Service names to pod IPs instead).
pub const SERVICE_CIDR: &str = "10.0.0.0/24";

const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// kube-apiserver, kube-controller-manager and kubectl as `scripts/build-kube.sh` built them.
#[derive(Debug, Clone)]
pub struct KubeBinaries {
    pub dir: PathBuf,
    pub apiserver: PathBuf,
    pub controller_manager: PathBuf,
    pub kubectl: PathBuf,
}

impl KubeBinaries {
    /// Runs `scripts/build-kube.sh` (a no-op on a cache hit, about 7 minutes cold) once per
    /// process. A failed build is an error: a test without its control plane must fail.
    pub fn ensure() -> Result<KubeBinaries> {
        static BUILT: OnceLock<std::result::Result<KubeBinaries, String>> = OnceLock::new();
        BUILT.get_or_init(build).clone().map_err(Error::Build)
    }
}

fn build() -> std::result::Result<KubeBinaries, String> {
    let dir = crate::member::cached_go_tools(
        "build-kube.sh",
        &["kube-apiserver", "kube-controller-manager", "kubectl"],
    )?;
    Ok(KubeBinaries {
        apiserver: dir.join("kube-apiserver"),
        controller_manager: dir.join("kube-controller-manager"),
        kubectl: dir.join("kubectl"),
        dir,
    })
}

/// kubectl bound to one kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    /// Runs kubectl to completion; its stdout when it succeeded.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        self.run_stdin(args, None)
    }

    /// Runs kubectl with `stdin` fed to it (`apply -f -`).
    pub fn run_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        use std::io::Write;
        let mut child = Command::new(&self.bin)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Error::Kubectl {
                args: args.join(" "),
                status: out.status.to_string(),
                stderr: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            })
        }
    }

    /// `kubectl apply -f <text>`.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        self.run_stdin(&["apply", "-f", "-"], Some(yaml))
    }
}

/// PEM paths of the control plane's PKI.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    /// Signs ServiceAccount tokens (private) and verifies them (public).
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

impl Pki {
    fn generate(dir: &Path) -> Result<Pki> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "ferrokv-test-kube-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::from_params(&ca, &ca_key);

        // Every name a client inside or outside the "cluster" may use for the API server,
        // including the first address of the service range (the `kubernetes` Service).
        let serving_sans = [
            "127.0.0.1",
            "localhost",
            "10.0.0.1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ];
        let (serving_pem, serving_key) = leaf(
            &issuer,
            "kube-apiserver",
            None,
            serving_sans.iter().map(|s| s.to_string()).collect(),
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        // system:masters is the group RBAC never restricts: the envtest admin.
        let (admin_pem, admin_key) = leaf(
            &issuer,
            "ferrokv-test-admin",
            Some("system:masters"),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let sa = KeyPair::generate()?;

        let pki = Pki {
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
        };
        std::fs::write(&pki.ca_cert, ca_pem)?;
        std::fs::write(&pki.serving_cert, serving_pem)?;
        std::fs::write(&pki.serving_key, serving_key)?;
        std::fs::write(&pki.admin_cert, admin_pem)?;
        std::fs::write(&pki.admin_key, admin_key)?;
        std::fs::write(&pki.sa_key, sa.serialize_pem())?;
        std::fs::write(&pki.sa_pub, sa.public_key_pem())?;
        Ok(pki)
    }
}

fn leaf(
    issuer: &Issuer<'_, &KeyPair>,
    cn: &str,
    org: Option<&str>,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String)> {
    let mut p = CertificateParams::new(sans)?;
    p.distinguished_name.push(DnType::CommonName, cn);
    if let Some(o) = org {
        p.distinguished_name.push(DnType::OrganizationName, o);
    }
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A kubeconfig (JSON is valid YAML) for `server` with either client-certificate files or a
/// bearer token.
fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: serde_json::Value,
    namespace: &str,
) -> Result<()> {
    let kc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "ferrokv-test", "cluster": {
            "server": server,
            "certificate-authority": ca,
        }}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "ferrokv-test", "context": {
            "cluster": "ferrokv-test",
            "user": "user",
            "namespace": namespace,
        }}],
        "current-context": "ferrokv-test",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&kc)?)?;
    Ok(())
}

/// A kube-rs client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> Result<::kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = ::kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(::kube::Client::try_from(config)?)
}

/// kube-apiserver + kube-controller-manager over a ferrokv member. Dropping it kills both and
/// the member; during a panic the tails of their logs are printed.
pub struct ControlPlane {
    pub bins: KubeBinaries,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    pub pki: Pki,
    /// A kubeconfig of the admin (group `system:masters`).
    pub admin_kubeconfig: PathBuf,
    /// The API server's storage: the project's own member.
    pub storage: Member,
    dir: TempDir,
    apiserver: Option<Child>,
    controller_manager: Option<Child>,
}

impl ControlPlane {
    /// Builds or reuses the binaries, starts the storage member, the API server (waits for
    /// `/readyz`) and the controller-manager (waits until its serviceaccount controller has
    /// created the `default` ServiceAccount, which proves it runs and reaches the API server).
    pub async fn start() -> Result<ControlPlane> {
        let bins = KubeBinaries::ensure()?;
        let storage = Member::start(Backend::Ferrokv, MemberOpts::default()).await?;
        let dir = tempfile::Builder::new().prefix("kube-cp-").tempdir()?;
        let pki = Pki::generate(dir.path())?;
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let admin_kubeconfig = dir.path().join("admin.kubeconfig");
        write_kubeconfig(
            &admin_kubeconfig,
            &url,
            &pki.ca_cert,
            serde_json::json!({
                "client-certificate": pki.admin_cert,
                "client-key": pki.admin_key,
            }),
            "default",
        )?;
        let mut cp = ControlPlane {
            bins,
            url,
            pki,
            admin_kubeconfig,
            storage,
            dir,
            apiserver: None,
            controller_manager: None,
        };
        cp.start_apiserver(port)?;
        cp.wait_apiserver_ready().await?;
        cp.start_controller_manager()?;
        cp.wait_controller_manager().await?;
        Ok(cp)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn apiserver_log(&self) -> PathBuf {
        self.dir.path().join("kube-apiserver.log")
    }

    pub fn controller_manager_log(&self) -> PathBuf {
        self.dir.path().join("kube-controller-manager.log")
    }

    fn spawn(&self, bin: &Path, args: &[String], log: &Path) -> Result<Child> {
        let out: File = OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| Error::Spawn {
                bin: bin.to_path_buf(),
                source,
            })
    }

    fn start_apiserver(&mut self, port: u16) -> Result<()> {
        let p = &self.pki;
        let path = |p: &Path| p.display().to_string();
        let args = vec![
            format!("--etcd-servers={}", self.storage.client_url),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!(
                "--cert-dir={}",
                self.dir.path().join("apiserver-certs").display()
            ),
            format!("--tls-cert-file={}", path(&p.serving_cert)),
            format!("--tls-private-key-file={}", path(&p.serving_key)),
            format!("--client-ca-file={}", path(&p.ca_cert)),
            "--authorization-mode=Node,RBAC".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            format!("--service-account-issuer={}", self.url),
            format!("--service-account-key-file={}", path(&p.sa_pub)),
            format!("--service-account-signing-key-file={}", path(&p.sa_key)),
            // No kubelet mounts tokens into member pods; the agent would have to fake the
            // projected volume the plugin adds. The operator gets its token by TokenRequest.
            "--disable-admission-plugins=ServiceAccount".into(),
            "--allow-privileged=true".into(),
            // The `kubernetes` Service endpoint would be 127.0.0.1, which Endpoints refuse.
            "--endpoint-reconciler-type=none".into(),
        ];
        let log = self.apiserver_log();
        self.apiserver = Some(self.spawn(&self.bins.apiserver.clone(), &args, &log)?);
        Ok(())
    }

    fn start_controller_manager(&mut self) -> Result<()> {
        let p = &self.pki;
        let kc = self.admin_kubeconfig.display().to_string();
        let args = vec![
            format!("--kubeconfig={kc}"),
            format!("--controllers={CONTROLLERS}"),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free_port()),
            format!("--service-account-private-key-file={}", p.sa_key.display()),
            format!("--root-ca-file={}", p.ca_cert.display()),
            "--use-service-account-credentials=false".into(),
            // Garbage collection and namespace deletion as fast as the machine allows.
            "--concurrent-gc-syncs=5".into(),
        ];
        let log = self.controller_manager_log();
        self.controller_manager =
            Some(self.spawn(&self.bins.controller_manager.clone(), &args, &log)?);
        Ok(())
    }

    fn check_alive(child: &mut Option<Child>, what: &str, log: &Path) -> Result<()> {
        if let Some(c) = child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(Error::Exited {
                    what: what.into(),
                    status: status.to_string(),
                    log: super::log_tail(log, 40),
                });
            }
        }
        Ok(())
    }

    async fn wait_apiserver_ready(&mut self) -> Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let log = self.apiserver_log();
        loop {
            Self::check_alive(&mut self.apiserver, "kube-apiserver", &log)?;
            let last = match http::Request::get("/readyz").body(Vec::new()) {
                Ok(req) => match client.request_text(req).await {
                    Ok(text) if text.trim() == "ok" => return Ok(()),
                    Ok(text) => text,
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    what: "kube-apiserver /readyz".into(),
                    secs: READY_TIMEOUT.as_secs(),
                    last,
                    log: super::log_tail(&self.apiserver_log(), 40),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn wait_controller_manager(&mut self) -> Result<()> {
        use k8s_openapi::api::core::v1::ServiceAccount;
        let client = self.client().await?;
        let sas: ::kube::Api<ServiceAccount> = ::kube::Api::namespaced(client, "default");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let log = self.controller_manager_log();
            Self::check_alive(
                &mut self.controller_manager,
                "kube-controller-manager",
                &log,
            )?;
            let last = match sas.get_opt("default").await {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => "no default ServiceAccount yet".to_string(),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    what: "kube-controller-manager (default ServiceAccount)".into(),
                    secs: READY_TIMEOUT.as_secs(),
                    last,
                    log: super::log_tail(&log, 40),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A kube-rs client of the admin.
    pub async fn client(&self) -> Result<::kube::Client> {
        client_from(&self.admin_kubeconfig).await
    }

    /// kubectl as the admin.
    pub fn kubectl(&self) -> Kubectl {
        Kubectl {
            bin: self.bins.kubectl.clone(),
            kubeconfig: self.admin_kubeconfig.clone(),
        }
    }

    /// A kubeconfig authenticating as ServiceAccount `namespace/name` with a token from the
    /// TokenRequest API (`kubectl create token`), valid for `lifetime`.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        lifetime: Duration,
    ) -> Result<PathBuf> {
        let duration = format!("--duration={}s", lifetime.as_secs());
        let token = self
            .kubectl()
            .run(&["create", "token", name, "-n", namespace, &duration])?;
        let path = self
            .dir
            .path()
            .join(format!("sa-{namespace}-{name}.kubeconfig"));
        write_kubeconfig(
            &path,
            &self.url,
            &self.pki.ca_cert,
            serde_json::json!({ "token": token.trim() }),
            namespace,
        )?;
        Ok(path)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in [self.controller_manager.take(), self.apiserver.take()]
            .into_iter()
            .flatten()
        {
            let mut c = child;
            let _ = c.kill();
            let _ = c.wait();
        }
        print_tail_on_panic(
            "kube-controller-manager log",
            &self.controller_manager_log(),
            30,
        );
        print_tail_on_panic("kube-apiserver log", &self.apiserver_log(), 30);
    }
}
