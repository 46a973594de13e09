//! Restore drills: the newest backup of a cluster restored into a scratch member and checked.
//!
//! The drill runs inside the operator pod, with the `ferrokv` binary the operator image ships
//! next to `ferrokv-operator` (`FERROKV_BIN` overrides its path): the backup is downloaded
//! (`ferrokv-backup` checks its size and sha256 against the manifest as it streams),
//! `ferrokv snapshot restore` builds a data dir in a temporary directory, and a one-member
//! ferrokv on loopback ports serves it. Its revision must equal the manifest's, and its key
//! count and HashKV at that revision must equal what the operator counted on the source
//! member right after the snapshot (`status.lastBackup.keys`, `.hashKv`). A process rather
//! than the storage crate in-process because this crate reaches members only through the
//! etcd API, and because the drill then restores exactly the way a person would.

use etcd_client::{Client, ConnectOptions, GetOptions};
use ferrokv_cluster_api::{BackupRecord, VerifiedBackup};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tracing::info;

/// The `ferrokv` binary: `FERROKV_BIN`, else `ferrokv` on `PATH`.
pub fn ferrokv_bin() -> PathBuf {
    std::env::var_os("FERROKV_BIN").map_or_else(|| PathBuf::from("ferrokv"), PathBuf::from)
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// Restores `manifest`'s backup and compares it with the manifest and with `recorded` (the
/// cluster's `status.lastBackup` when it names this backup).
pub async fn drill(
    dest: &ferrokv_backup::Destination,
    manifest: &ferrokv_backup::Manifest,
    recorded: Option<&BackupRecord>,
    encryption: Option<&ferrokv_backup::Encryption>,
) -> Result<VerifiedBackup, String> {
    let uri = dest.url_of(&manifest.object);
    let tmp = tempfile::tempdir().map_err(|e| format!("scratch directory: {e}"))?;
    let file = tmp.path().join("backup.db");
    ferrokv_backup::download(dest, manifest, &file, encryption)
        .await
        .map_err(|e| format!("download of {uri}: {e}"))?;
    let (client_port, peer_port, metrics_port) = (free_port()?, free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let data = tmp.path().join("data");
    let bin = ferrokv_bin();
    let identity = [
        "--name=drill".to_string(),
        format!("--data-dir={}", data.display()),
        format!("--initial-cluster=drill={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        "--initial-cluster-token=ferrokv-drill".to_string(),
    ];
    let out = tokio::process::Command::new(&bin)
        .args(["snapshot", "restore"])
        .arg(&file)
        .args(&identity)
        .output()
        .await
        .map_err(|e| format!("running {} snapshot restore: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "ferrokv snapshot restore of {uri} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // Dropped (and killed) when the drill returns, whatever happened.
    let _member = tokio::process::Command::new(&bin)
        .args(&identity)
        .args([
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--listen-metrics-urls=http://127.0.0.1:{metrics_port}"),
            "--initial-cluster-state=new".to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let mut client = connect(&client_url).await?;
    let count = client
        .get(
            vec![0u8],
            Some(GetOptions::new().with_from_key().with_count_only()),
        )
        .await
        .map_err(|e| format!("counting keys in the restored member: {e}"))?;
    let revision = count.header().map_or(0, |h| h.revision());
    let keys = count.count();
    let hash_kv = client
        .hash_kv(revision)
        .await
        .map_err(|e| format!("HashKV of the restored member: {e}"))?
        .hash();
    if revision != manifest.revision {
        return Err(format!(
            "{uri}: the restored member is at revision {revision}, the manifest says {}",
            manifest.revision
        ));
    }
    if let Some(r) = recorded.filter(|r| r.uri == uri) {
        if let Some(want) = r.keys.filter(|k| *k != keys) {
            return Err(format!(
                "{uri}: the restored member holds {keys} keys, {want} were counted when it was taken"
            ));
        }
        if let Some(want) = r.hash_kv.filter(|h| *h != hash_kv) {
            return Err(format!(
                "{uri}: HashKV of the restored member is {hash_kv}, {want} when it was taken"
            ));
        }
    }
    info!(%uri, revision, keys, hash_kv, "restore drill passed");
    Ok(VerifiedBackup {
        time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        uri,
        revision,
        keys,
        hash_kv,
    })
}

/// A client of the scratch member once it answers (it starts in well under a second; a
/// large data dir takes longer to open).
async fn connect(url: &str) -> Result<Client, String> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    let mut last = String::new();
    for _ in 0..120 {
        match Client::connect([url], Some(opts.clone())).await {
            Ok(mut c) => match c.status().await {
                Ok(_) => return Ok(c),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!(
        "the scratch member at {url} did not answer within 30 s: {last}"
    ))
}
