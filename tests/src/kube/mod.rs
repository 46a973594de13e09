//! A real Kubernetes control plane for operator tests, with a node agent of our own.
//!
//! Owns: building (or finding in the cache) kube-apiserver, kube-controller-manager and kubectl
//! through `scripts/build-kube.sh`; running them as envtest does, backed by a ferrokv member
//! ([`ControlPlane`]); a test node agent that plays kubelet for member pods and runs their
//! containers as real `ferrokv` processes ([`NodeAgent`]); and the operator binary run as its
//! own ServiceAccount ([`OperatorProcess`]), all three together with the shipped install
//! applied ([`Testbed`]). Only the container runtime is replaced: the API
//! server, the controllers, RBAC, the operator and the members are the real programs.
//!
//! Name resolution: member pods and the operator find each other by their cluster DNS names
//! (`<member>.<cluster>-peer.<ns>.svc`). Instead of editing the machine's `/etc/hosts`, every
//! process the agent or the operator runner starts runs in a mount namespace of its own
//! (`unshare --mount`) with the agent's generated hosts file bind-mounted over `/etc/hosts`
//! ([`hosts_command`]). The agent rewrites that file in place, never by rename, so the bind
//! mounts keep seeing its changes.
//!
//! Must not depend on the operator or any ferrokv crate: everything is reached through
//! binaries, flags, files and the Kubernetes and etcd APIs.

pub mod control_plane;
pub mod helm;
pub mod node_agent;
pub mod operator;
pub mod testbed;

pub use control_plane::{ControlPlane, KubeBinaries, Kubectl};
pub use node_agent::{NodeAgent, PodView};
pub use operator::OperatorProcess;
pub use testbed::{eventually, Testbed};

use std::path::{Path, PathBuf};
use std::process::Command;

/// Every way the control-plane harness can fail (as opposed to an assertion in a test).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the Kubernetes binaries failed: {0}")]
    Build(String),
    #[error("could not spawn {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} exited ({status}); log tail:\n{log}")]
    Exited {
        what: String,
        status: String,
        log: String,
    },
    #[error("{what} not ready after {secs} s (last: {last}); log tail:\n{log}")]
    NotReady {
        what: String,
        secs: u64,
        last: String,
        log: String,
    },
    #[error("kubectl {args} failed ({status}):\n{stderr}")]
    Kubectl {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: not within {secs} s\n{context}")]
    Timeout {
        what: String,
        secs: u64,
        context: String,
    },
    #[error("{0}")]
    Agent(String),
    #[error("member harness: {0}")]
    Member(#[from] crate::Error),
    #[error("kubernetes API: {0}")]
    Kube(#[from] ::kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] ::kube::config::KubeconfigError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A command that runs `program args...` in a mount namespace of its own in which `hosts` is
/// bind-mounted over `/etc/hosts`. `unshare` without `--fork` and `exec` in the shell keep the
/// pid of the returned child the pid of `program`, so signals reach it directly.
pub fn hosts_command(hosts: &Path, program: &Path, args: &[String]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        // `$0` is the hosts file, `"$@"` the program and its arguments.
        .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
        .arg(hosts)
        .arg(program)
        .args(args);
    c
}

/// The last `n` lines of a log file (empty when it cannot be read).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Prints a log tail when a test is failing (called from `Drop` impls).
pub(crate) fn print_tail_on_panic(what: &str, path: &Path, n: usize) {
    if std::thread::panicking() {
        eprintln!(
            "----- {what} ({}; last {n} lines) -----\n{}\n----- end of {what} -----",
            path.display(),
            log_tail(path, n)
        );
    }
}
