//! The official Go etcd client (`go.etcd.io/etcd/client/v3`, what kube-apiserver links) against
//! both backends. `tests/goclient` is a small Go program whose scenarios do what
//! k8s.io/apiserver's etcd3 storage does (create/update/delete txns, paged lists at one
//! revision, count-only and keys-only ranges, prefix watches with prev kv and progress
//! requests, shared leases, kube-style compaction, typed errors, Status, MemberList) and print
//! one JSON line per scenario. This test builds it once with `go build`, runs it against a
//! fresh member and requires every scenario to pass.
//!
//! etcd is the control: a scenario failing there is a wrong scenario, not a ferrokv bug. Two
//! controls run: the system etcd the harness uses (Debian: 3.4.x) and etcd 3.6 built from Go
//! modules (`Backend::Etcd36`, `tests/etcd36`), because kube-apiserver's progress-request
//! contract only exists from etcd 3.5.13 on and a 3.4 server cannot check it.
//! Go is required (CI machines have it); without it these tests fail with a clear message.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use ferrokv_tests::member::{target_dir, workspace_root};
use ferrokv_tests::{all_backends, both_backends, Backend, Member, MemberOpts, TlsFiles};
use serde_json::Value;

/// The whole program run is bounded: every scenario has its own 60 s limit inside the Go
/// program, this only catches a hung process.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Builds `tests/goclient` into `<target>/goclient/goclient` once per test process; the
/// result (or the build's error text) is shared by every test.
fn goclient() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(|| go_build("goclient", "goclient")) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// `go build -v -o <target>/goclient/<out> .` in `tests/<dir>`, with the environment's
/// GOPATH/GOMODCACHE/GOFLAGS/GOPROXY. go.sum is committed, so no `-mod=mod` is needed.
fn go_build(dir: &str, out: &str) -> Result<PathBuf, String> {
    let src = workspace_root().join("tests").join(dir);
    let out = target_dir().join("goclient").join(out);
    let version = std::process::Command::new("go")
        .arg("version")
        .output()
        .map_err(|e| {
            format!(
                "`go` is not runnable ({e}): these tests need the Go toolchain (>= 1.23) on PATH \
                 to build tests/{dir}; install it from https://go.dev/dl/"
            )
        })?;
    eprintln!(
        "{}: building {} into {} (the first build downloads modules through GOPROXY and \
         lists them below)",
        String::from_utf8_lossy(&version.stdout).trim(),
        src.display(),
        out.display()
    );
    // `-v` names every package compiled and go prints "go: downloading ..." for each module
    // fetched, so a slow first build shows where the time goes. Output is captured and echoed
    // (visible with --nocapture, and on failure).
    let build = std::process::Command::new("go")
        .args(["build", "-v", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(&src)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running go build: {e}"))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    let downloads = log
        .lines()
        .filter(|l| l.starts_with("go: downloading"))
        .count();
    eprintln!(
        "----- go build tests/{dir} ({} lines, {downloads} module downloads) -----\n{}----- end of go build -----",
        log.lines().count(),
        log
    );
    if !build.status.success() {
        return Err(format!(
            "go build of {} failed ({}):\n{log}",
            src.display(),
            build.status
        ));
    }
    Ok(out)
}

/// Every scenario the program knows, so a crash halfway (missing lines) is a failure too.
fn scenario_names(bin: &Path) -> Vec<String> {
    let out = std::process::Command::new(bin)
        .arg("--list")
        .output()
        .expect("goclient --list");
    assert!(out.status.success(), "goclient --list: {}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Runs the program against `m` (only `scenarios` when non-empty) and asserts that every
/// expected scenario printed `ok: true`.
/// `min_version` overrides the program's Status version floor (kube's 3.5.13).
async fn run_against(m: &Member, scenarios: &[&str], min_version: Option<&str>) {
    let bin = goclient();
    let expected: Vec<String> = if scenarios.is_empty() {
        scenario_names(bin)
    } else {
        scenarios.iter().map(|s| s.to_string()).collect()
    };
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg(format!("--endpoints={}", m.client_url));
    if let Some(t) = &m.opts.tls {
        cmd.arg(format!("--cacert={}", t.ca_cert.display()))
            .arg(format!("--cert={}", t.client_cert.display()))
            .arg(format!("--key={}", t.client_key.display()));
    }
    if let Some(v) = min_version {
        cmd.arg(format!("--min-server-version={v}"));
    }
    if !scenarios.is_empty() {
        cmd.arg(format!("--scenarios={}", scenarios.join(",")));
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(RUN_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("goclient did not finish within {RUN_TIMEOUT:?}"))
        .expect("spawn goclient");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);

    let mut results: Vec<Value> = Vec::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("goclient printed a non-JSON line ({e}): {line}"));
        results.push(v);
    }
    eprintln!("----- goclient against {} -----", m.backend.name());
    for r in &results {
        let ok = r["ok"].as_bool() == Some(true);
        eprintln!(
            "{} {}: {}",
            if ok { "PASS" } else { "FAIL" },
            r["scenario"].as_str().unwrap_or("?"),
            r["observations"]
        );
    }
    if !stderr.trim().is_empty() {
        eprintln!("goclient stderr:\n{stderr}");
    }

    let mut failures: Vec<String> = results
        .iter()
        .filter(|r| r["ok"].as_bool() != Some(true))
        .map(|r| {
            format!(
                "  {}: {}",
                r["scenario"].as_str().unwrap_or("?"),
                r["error"].as_str().unwrap_or("?")
            )
        })
        .collect();
    for name in &expected {
        if !results.iter().any(|r| r["scenario"].as_str() == Some(name)) {
            failures.push(format!("  {name}: no result line (program died?)"));
        }
    }
    if failures.is_empty() && !out.status.success() {
        failures.push(format!(
            "  goclient exited {} with every scenario ok",
            out.status
        ));
    }
    assert!(
        failures.is_empty(),
        "Go client against {}: {} of {} scenarios failed:\n{}",
        m.backend.name(),
        failures.len(),
        expected.len(),
        failures.join("\n")
    );
    assert_eq!(results.len(), expected.len(), "scenario count");
}

/// The Status version floor for a backend: ferrokv must claim what kube-apiserver needs
/// (>= 3.5.13, the program's default); the system etcd (Debian: 3.4.x) is older, so its control
/// only checks that the version is semver. (`watch_progress_load` reports itself skipped on a
/// server below 3.5.13; etcd 3.6 is its control.)
fn min_version(b: Backend) -> Option<&'static str> {
    match b {
        Backend::Etcd => Some("3.4.0"),
        Backend::Etcd36 | Backend::Ferrokv => None,
    }
}

/// Every scenario over plain http.
async fn kube_storage(b: Backend) {
    let m = Member::start(b, MemberOpts::default())
        .await
        .unwrap_or_else(|e| panic!("starting {}: {e}", b.name()));
    run_against(&m, &[], min_version(b)).await;
}

/// The Go client's TLS path (CA + client certificate, as kube-apiserver is configured) with
/// `--client-cert-auth`: a write, a read and a watch with a progress request.
async fn kube_storage_tls(b: Backend) {
    let pki = tempfile::tempdir().expect("tempdir");
    let tls = TlsFiles::generate(pki.path()).expect("generate certificates");
    let opts = MemberOpts {
        tls: Some(tls),
        client_cert_auth: true,
        ..MemberOpts::default()
    };
    let m = Member::start(b, opts)
        .await
        .unwrap_or_else(|e| panic!("starting {} with TLS: {e}", b.name()));
    run_against(
        &m,
        &["status", "create", "get", "watch_progress"],
        min_version(b),
    )
    .await;
}

all_backends!(kube_storage);
both_backends!(kube_storage_tls);
