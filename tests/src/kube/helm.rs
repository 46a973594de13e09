//! Helm, built from the Go module proxy (`tests/helm/go.mod` pins `helm.sh/helm/v3`) by
//! `scripts/build-helm.sh` into the same cache as the control plane, so a scenario can run
//! `helm install` of the shipped chart the way a user does.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::{Error, Kubectl, Result};

/// The helm binary: built once per process (a no-op on a cache hit, a few minutes cold). A
/// failed build is an error: a helm scenario without helm must fail.
pub fn helm_binary() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(build).clone().map_err(Error::Build)
}

fn build() -> std::result::Result<PathBuf, String> {
    crate::member::cached_go_tools("build-helm.sh", &["helm"]).map(|d| d.join("helm"))
}

/// `helm <args>` against the cluster of `kubectl`'s kubeconfig; its stdout when it succeeded.
pub fn helm(kubectl: &Kubectl, args: &[&str]) -> Result<String> {
    let bin = helm_binary()?;
    // Helm keeps its cache and config under HOME-derived paths; a directory of the test's own
    // keeps runs apart and the user's files untouched.
    let home = std::env::temp_dir().join("ferrokv-helm-home");
    let out = Command::new(&bin)
        .arg(format!("--kubeconfig={}", kubectl.kubeconfig.display()))
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Agent(format!(
            "helm {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}
