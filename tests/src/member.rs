//! One member process (ferrokv or etcd) on loopback with its own data dir.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::tls::TlsFiles;
use crate::{Error, Result};

/// Which implementation a member runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Ferrokv,
    /// The system etcd (Debian's 3.4).
    Etcd,
    /// etcd 3.6 built from the Go module proxy (`tests/etcd36`, `scripts/build-etcd36.sh`).
    Etcd36,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Ferrokv => "ferrokv",
            Backend::Etcd => "etcd",
            Backend::Etcd36 => "etcd36",
        }
    }

    /// The binary to launch. ferrokv: `FERROKV_BIN`, else `<target>/debug/ferrokv`; etcd:
    /// `ETCD_BIN`, else `etcd` from PATH. A missing binary is an error, never a skip: a test
    /// that silently does nothing proves nothing.
    pub fn binary(self) -> Result<PathBuf> {
        match self {
            Backend::Ferrokv => {
                let path = match std::env::var_os("FERROKV_BIN") {
                    Some(p) => PathBuf::from(p),
                    None => target_dir().join("debug").join("ferrokv"),
                };
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(Error::BinaryMissing {
                        path,
                        hint: "run `cargo build -p ferrokv` first (or set FERROKV_BIN)".into(),
                    })
                }
            }
            Backend::Etcd36 => Ok(etcd36_dir()?.join("etcd")),
            Backend::Etcd => {
                let name = std::env::var_os("ETCD_BIN").unwrap_or_else(|| "etcd".into());
                let path = PathBuf::from(&name);
                if path.components().count() > 1 {
                    return if path.is_file() {
                        Ok(path)
                    } else {
                        Err(Error::BinaryMissing {
                            path,
                            hint: "ETCD_BIN points to no file".into(),
                        })
                    };
                }
                find_on_path(&path).ok_or(Error::BinaryMissing {
                    path,
                    hint: "install it: apt-get install -y etcd-server etcd-client".into(),
                })
            }
        }
    }
}

/// Runs `scripts/<script>` (one of the `build-*.sh` scripts that build Go tools into the cache
/// outside the checkout: a no-op on a cache hit) and returns the directory it printed last,
/// checked to hold every file in `expect`. The error carries the tail of the script's stderr.
pub fn cached_go_tools(script: &str, expect: &[&str]) -> std::result::Result<PathBuf, String> {
    let path = workspace_root().join("scripts").join(script);
    let out = Command::new("bash")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", path.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        return Err(format!(
            "{} failed ({}):\n{tail}",
            path.display(),
            out.status
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    match expect.iter().find(|f| !dir.join(f).is_file()) {
        Some(missing) => Err(format!(
            "{} printed no directory holding {missing} (got {})",
            path.display(),
            dir.display()
        )),
        None => Ok(dir),
    }
}

/// The directory holding etcd 3.6's `etcd`, `etcdctl` and `etcdutl`: `ETCD36_DIR`, else what
/// `scripts/build-etcd36.sh` prints. Built at most once per test process.
pub fn etcd36_dir() -> Result<PathBuf> {
    static DIR: std::sync::OnceLock<std::result::Result<PathBuf, String>> =
        std::sync::OnceLock::new();
    let got = DIR.get_or_init(|| match std::env::var_os("ETCD36_DIR") {
        Some(d) => Ok(PathBuf::from(d)),
        None => cached_go_tools("build-etcd36.sh", &["etcd", "etcdctl", "etcdutl"]),
    });
    match got {
        Ok(d) if d.join("etcd").is_file() => Ok(d.clone()),
        Ok(d) => Err(Error::BinaryMissing {
            path: d.join("etcd"),
            hint: "ETCD36_DIR holds no etcd".into(),
        }),
        Err(e) => Err(Error::BinaryMissing {
            path: PathBuf::from("etcd (3.6)"),
            hint: e.clone(),
        }),
    }
}

/// The workspace's target dir (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => workspace_root().join("target"),
    }
}

pub fn workspace_root() -> PathBuf {
    // This crate lives at `<workspace>/tests`.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn find_on_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Ports handed out by this process, so two members started at the same moment never get the
/// same "free" port between our probe and the member's own bind.
static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that was free a moment ago and that this process has not handed out.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if port == 0 {
            continue;
        }
        let mut guard = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// TLS on the peer port: the member's certificate, key and the CA it trusts for peers.
#[derive(Debug, Clone)]
pub struct PeerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// `--peer-client-cert-auth`: peers must present a certificate signed by `ca`.
    pub client_cert_auth: bool,
}

/// How to launch a member. `Default` gives a plain single-member http cluster.
#[derive(Debug, Clone)]
pub struct MemberOpts {
    /// Binary override (the benchmark points this at a release build).
    pub bin: Option<PathBuf>,
    pub snapshot_count: Option<u64>,
    /// Serve clients over https with these files; with `client_cert_auth` require client certs.
    pub tls: Option<TlsFiles>,
    pub client_cert_auth: bool,
    /// Serve the peer port over https.
    pub peer_tls: Option<PeerTls>,
    /// `--heartbeat-interval` / `--election-timeout` in ms (the binary's defaults when unset).
    pub heartbeat_ms: Option<u64>,
    pub election_ms: Option<u64>,
    pub token: String,
    /// Appended verbatim after the standard flags.
    pub extra_args: Vec<String>,
    pub ready_timeout: Duration,
}

impl Default for MemberOpts {
    fn default() -> Self {
        MemberOpts {
            bin: None,
            snapshot_count: None,
            tls: None,
            client_cert_auth: false,
            peer_tls: None,
            heartbeat_ms: None,
            election_ms: None,
            token: "ferrokv-test".into(),
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// A running (or stopped) member. Dropping it kills the process; when the drop happens during
/// a panic (a failed test) the tail of the member's log is printed.
pub struct Member {
    pub backend: Backend,
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub opts: MemberOpts,
    /// `--initial-cluster`: `name=peer-url,...`; the member alone unless a [`crate::Cluster`]
    /// sets it.
    pub initial_cluster: String,
    /// `--initial-cluster-state`: `new`, or `existing` for a member added to a running cluster.
    pub initial_state: &'static str,
    bin: PathBuf,
    dir: TempDir,
    child: Option<Child>,
}

impl Member {
    /// Starts a fresh single-member cluster and waits until it has a leader.
    pub async fn start(backend: Backend, opts: MemberOpts) -> Result<Member> {
        let mut m = Member::spawn(backend, opts)?;
        m.wait_ready().await?;
        Ok(m)
    }

    /// Starts the process without waiting for it to serve.
    pub fn spawn(backend: Backend, opts: MemberOpts) -> Result<Member> {
        let mut m = Member::reserve(backend, opts, "m1")?;
        m.start_process()?;
        Ok(m)
    }

    /// A member with its ports, data dir and log chosen but no process yet: a cluster needs
    /// every peer URL before the first member starts.
    pub fn reserve(backend: Backend, opts: MemberOpts, name: &str) -> Result<Member> {
        let bin = match &opts.bin {
            Some(b) => b.clone(),
            None => backend.binary()?,
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-{name}-", backend.name()))
            .tempdir()?;
        let scheme = |tls: bool| if tls { "https" } else { "http" };
        let client_url = format!("{}://127.0.0.1:{}", scheme(opts.tls.is_some()), free_port());
        let peer_url = format!(
            "{}://127.0.0.1:{}",
            scheme(opts.peer_tls.is_some()),
            free_port()
        );
        Ok(Member {
            backend,
            name: name.into(),
            initial_cluster: format!("{name}={peer_url}"),
            initial_state: "new",
            client_url,
            peer_url,
            opts,
            bin,
            dir,
            child: None,
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The data dir's layout (`member/wal`, `member/snap/db`), the same for both backends.
    pub fn layout(&self) -> ferrokv_datadir::DataDir {
        ferrokv_datadir::DataDir::new(self.data_dir())
    }

    /// `<data-dir>/member/wal`.
    pub fn wal_dir(&self) -> PathBuf {
        self.layout().wal()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("member.log")
    }

    /// A scratch directory that lives as long as the member (snapshots, certificates).
    pub fn scratch_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The client endpoint without scheme, as `etcdctl --endpoints` takes it.
    pub fn endpoint(&self) -> &str {
        &self.client_url
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The command line both backends accept.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", self.data_dir().display()),
            format!("--listen-client-urls={}", self.client_url),
            format!("--advertise-client-urls={}", self.client_url),
            format!("--listen-peer-urls={}", self.peer_url),
            format!("--initial-advertise-peer-urls={}", self.peer_url),
            format!("--initial-cluster={}", self.initial_cluster),
            format!("--initial-cluster-state={}", self.initial_state),
            format!("--initial-cluster-token={}", self.opts.token),
            "--log-level=info".into(),
        ];
        if self.backend == Backend::Etcd {
            // etcd 3.4 only honours --log-level with the zap logger (capnslog is the default).
            a.push("--logger=zap".into());
        }
        if let Some(n) = self.opts.snapshot_count {
            a.push(format!("--snapshot-count={n}"));
        }
        if let Some(ms) = self.opts.heartbeat_ms {
            a.push(format!("--heartbeat-interval={ms}"));
        }
        if let Some(ms) = self.opts.election_ms {
            a.push(format!("--election-timeout={ms}"));
        }
        if let Some(t) = &self.opts.peer_tls {
            a.push(format!("--peer-cert-file={}", t.cert.display()));
            a.push(format!("--peer-key-file={}", t.key.display()));
            a.push(format!("--peer-trusted-ca-file={}", t.ca.display()));
            if t.client_cert_auth {
                a.push("--peer-client-cert-auth".into());
            }
        }
        if let Some(t) = &self.opts.tls {
            a.push(format!("--cert-file={}", t.server_cert.display()));
            a.push(format!("--key-file={}", t.server_key.display()));
            a.push(format!("--trusted-ca-file={}", t.ca_cert.display()));
            if self.opts.client_cert_auth {
                a.push("--client-cert-auth".into());
            }
        }
        a.extend(self.opts.extra_args.iter().cloned());
        a
    }

    /// Spawns the process with the current args, appending its output to the log file.
    pub fn start_process(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let log2: File = log.try_clone()?;
        let child = Command::new(&self.bin)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| Error::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        self.child = Some(child);
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Polls `Status` until the member reports a leader (so it takes writes), failing early
    /// with the log when the process exits.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.opts.ready_timeout;
        let mut last = String::from("no attempt yet");
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(Error::ExitedEarly {
                        backend: self.backend.name(),
                        status: status.to_string(),
                        log: self.log(),
                    });
                }
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    backend: self.backend.name(),
                    secs: self.opts.ready_timeout.as_secs(),
                    last,
                    log: self.log(),
                });
            }
            let probe = async {
                let mut c = self.client().await?;
                let s = c.status().await?;
                Ok::<_, Error>(s.leader())
            };
            match tokio::time::timeout(Duration::from_secs(2), probe).await {
                Ok(Ok(leader)) if leader != 0 => return Ok(()),
                Ok(Ok(_)) => last = "status: no leader yet".into(),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "status timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL if the process has not exited within 10 s.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(s))) => {
                    self.child = None;
                    return Some(s);
                }
                Some(Ok(None)) => std::thread::sleep(Duration::from_millis(50)),
                _ => return None,
            }
        }
        None
    }

    /// SIGKILLs the process and deletes its data dir: a lost disk. The ports stay reserved.
    pub fn kill_and_wipe(&mut self) -> Result<()> {
        self.kill();
        match std::fs::remove_dir_all(self.data_dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// SIGSTOP / SIGCONT: a member that is alive but answers nothing (a frozen node).
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let sig = if frozen { "-STOP" } else { "-CONT" };
        Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()?;
        Ok(())
    }

    /// The binary the next `start_process` launches (a rolling upgrade swaps it).
    pub fn set_binary(&mut self, bin: PathBuf) {
        self.bin = bin;
    }

    /// Starts the process again on the same data dir and ports and waits until ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.start_process()?;
        self.wait_ready().await
    }

    /// An `etcd-client` connected to this member (with TLS and a client cert if configured).
    pub async fn client(&self) -> Result<etcd_client::Client> {
        crate::client::connect(self).await
    }

    /// `etcdctl` flags reaching this member: endpoint and, with TLS, the client certificate.
    pub fn ctl_flags(&self) -> Vec<String> {
        let mut f = vec![format!("--endpoints={}", self.client_url)];
        if let Some(t) = &self.opts.tls {
            f.push(format!("--cacert={}", t.ca_cert.display()));
            f.push(format!("--cert={}", t.client_cert.display()));
            f.push(format!("--key={}", t.client_key.display()));
        }
        f
    }

    /// Runs `etcdctl <flags> <args>` against this member.
    pub fn ctl(&self, args: &[&str]) -> crate::CtlOutput {
        let mut all: Vec<String> = self.ctl_flags();
        all.extend(args.iter().map(|s| s.to_string()));
        crate::etcdctl::run(&all, None)
    }

    /// Runs etcd 3.6's `etcdctl <flags> <args>` against this member.
    pub fn ctl36(&self, args: &[&str]) -> crate::CtlOutput {
        let mut all: Vec<String> = self.ctl_flags();
        all.extend(args.iter().map(|s| s.to_string()));
        crate::etcdctl::run_with(crate::etcdctl::Ctl::V36, &all, None)
    }

    /// Runs `etcdctl` with `stdin` fed to it (interactive `txn`).
    pub fn ctl_stdin(&self, args: &[&str], stdin: &str) -> crate::CtlOutput {
        let mut all: Vec<String> = self.ctl_flags();
        all.extend(args.iter().map(|s| s.to_string()));
        crate::etcdctl::run(&all, Some(stdin))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!(
                "----- {} member log ({}; last {} lines) -----\n{}\n----- end of log -----",
                self.backend.name(),
                self.log_path().display(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}
