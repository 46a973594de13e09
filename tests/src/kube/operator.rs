//! The operator binary run as a process, authenticated as its own ServiceAccount with a token
//! from the TokenRequest API, and resolving member names through the node agent's hosts file
//! as it would through cluster DNS.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{hosts_command, log_tail, print_tail_on_panic, ControlPlane, Error, Result};
use crate::member::{free_port, target_dir};

/// The ServiceAccount `manifests/install.yaml` and the chart create for the operator.
pub const OPERATOR_NAMESPACE: &str = "ferrokv-system";
pub const OPERATOR_SERVICE_ACCOUNT: &str = "ferrokv-operator";

/// A running `ferrokv-operator`. Dropping it kills the process; during a panic the tail of its
/// log is printed.
pub struct OperatorProcess {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub metrics_addr: String,
    log: PathBuf,
    hosts: PathBuf,
    /// Flags after `run --metrics-addr=...` (a scenario's `--cert-renew-before`).
    extra_args: Vec<String>,
    child: Option<Child>,
    /// The member binary, for the operator's restore drills (`FERROKV_BIN`).
    ferrokv: PathBuf,
}

impl OperatorProcess {
    /// `FERROKV_OPERATOR_BIN`, else `<target>/debug/ferrokv-operator`; missing is an error.
    pub fn binary() -> Result<PathBuf> {
        let path = match std::env::var_os("FERROKV_OPERATOR_BIN") {
            Some(p) => PathBuf::from(p),
            None => target_dir().join("debug").join("ferrokv-operator"),
        };
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::Member(crate::Error::BinaryMissing {
                path,
                hint: "run `cargo build -p ferrokv-operator` first (or set FERROKV_OPERATOR_BIN)"
                    .into(),
            }))
        }
    }

    /// Starts the operator as ServiceAccount `ferrokv-system/ferrokv-operator` (which the
    /// shipped install must already have created) and waits until its health endpoint answers.
    pub async fn start(cp: &ControlPlane, hosts: &Path) -> Result<OperatorProcess> {
        Self::start_with(cp, hosts, &[]).await
    }

    /// [`OperatorProcess::start`] with extra flags for `ferrokv-operator run`.
    pub async fn start_with(
        cp: &ControlPlane,
        hosts: &Path,
        extra_args: &[&str],
    ) -> Result<OperatorProcess> {
        let bin = Self::binary()?;
        let kubeconfig = cp.service_account_kubeconfig(
            OPERATOR_NAMESPACE,
            OPERATOR_SERVICE_ACCOUNT,
            Duration::from_secs(3600),
        )?;
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let log = cp.dir().join("ferrokv-operator.log");
        let mut op = OperatorProcess {
            bin,
            kubeconfig,
            metrics_addr,
            log,
            hosts: hosts.to_path_buf(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            child: None,
            ferrokv: crate::member::Backend::Ferrokv.binary()?,
        };
        op.spawn()?;
        op.wait_healthy().await?;
        Ok(op)
    }

    fn spawn(&mut self) -> Result<()> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let err = out.try_clone()?;
        let mut args = vec![
            "run".to_string(),
            format!("--metrics-addr={}", self.metrics_addr),
        ];
        args.extend(self.extra_args.iter().cloned());
        let child = hosts_command(&self.hosts, &self.bin, &args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,ferrokv_operator=debug")
            .env("POD_NAME", "ferrokv-operator-test")
            // The restore drills run the member binary, as the operator image ships it.
            .env("FERROKV_BIN", &self.ferrokv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| Error::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let timeout = Duration::from_secs(30);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(Error::Exited {
                    what: "ferrokv-operator".into(),
                    status: status.to_string(),
                    log: self.log_tail(40),
                });
            }
            if tokio::net::TcpStream::connect(&self.metrics_addr)
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    what: "ferrokv-operator metrics endpoint".into(),
                    secs: timeout.as_secs(),
                    last: format!("{} refuses connections", self.metrics_addr),
                    log: self.log_tail(40),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL (the operator crashing at an arbitrary point).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again with the same identity and waits until it is healthy.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_healthy().await
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
        print_tail_on_panic("ferrokv-operator log", &self.log, 60);
    }
}
