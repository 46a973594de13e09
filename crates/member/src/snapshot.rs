//! `ferrokv snapshot save|status|restore`: the etcdctl/etcdutl snapshot tools for ferrokv
//! files.
//!
//! A snapshot file is exactly the byte stream of `Maintenance.Snapshot`: an etcd backend
//! database (bbolt), then its SHA-256, as etcd streams it. `save` checks that hash while
//! streaming and only renames the file into place once it matched, so a file at the target
//! path is always complete. `status` and `restore` also take etcd's files and ferrokv's older
//! `FKVSNAP1` ones (see `crate::snapshot_format`).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use ferrokv_proto::etcdserverpb::{
    maintenance_client::MaintenanceClient, RangeRequest, SnapshotRequest,
};
use ferrokv_storage::Store;
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{Error, Result};
use crate::flags::{BackupTarget, ClientTls, SnapshotRestore, SnapshotSave};
use ferrokv_backup::{Destination, Encryption, Selector, StoreConfig};

const HASH_LEN: usize = 32;
const BLOCK: u64 = 512;

/// What `snapshot status` reports.
#[derive(Debug, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// Size of the whole file, framing and hash included.
    pub total_size: u64,
    /// Size of the keyspace (redb) inside.
    pub db_size: u64,
    pub revision: i64,
    pub total_keys: i64,
    /// The keyspace hash (what `Maintenance.Hash` would report for it); for a bbolt file
    /// etcdutl's hash.
    pub hash: u32,
    /// False for a bbolt file without the SHA-256 trailer (nothing to check).
    pub sha256_checked: bool,
}

impl fmt::Display for SnapshotStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "hash: {:08x}", self.hash)?;
        writeln!(
            f,
            "sha256: {}",
            if self.sha256_checked { "ok" } else { "none" }
        )?;
        writeln!(f, "revision: {}", self.revision)?;
        writeln!(f, "total keys: {}", self.total_keys)?;
        writeln!(f, "total size: {} bytes", self.total_size)?;
        writeln!(f, "db size: {} bytes", self.db_size)
    }
}

pub fn status(file: &Path) -> Result<SnapshotStatus> {
    if let Some(s) = crate::snapshot_format::status(file)? {
        return Ok(s);
    }
    let bytes = std::fs::read(file).map_err(|e| Error::io("reading", file, e))?;
    let data =
        ferrokv_server::snapshot_file::unwrap_snapshot(&bytes).map_err(|e| Error::BadSnapshot {
            path: file.to_path_buf(),
            reason: e.to_string(),
        })?;
    // redb needs a file it may write to (it records its own state on open), and the snapshot
    // must stay untouched, so inspect a private copy.
    let tmp = tempfile::tempdir().map_err(|e| Error::io("creating a temp dir for", file, e))?;
    let db_path = tmp.path().join("db");
    std::fs::write(&db_path, data).map_err(|e| Error::io("writing", &db_path, e))?;
    let storage = |source| Error::Storage {
        path: file.to_path_buf(),
        source,
    };
    let store = Store::open(&db_path).map_err(storage)?;
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..Default::default()
    };
    let total_keys = store.range(&all).map_err(storage)?.count;
    Ok(SnapshotStatus {
        total_size: bytes.len() as u64,
        db_size: data.len() as u64,
        revision: store.current_revision(),
        total_keys,
        hash: store.hash().map_err(storage)?,
        sha256_checked: true,
    })
}

/// What `snapshot restore` created.
#[derive(Debug)]
pub struct Restored {
    pub member_id: u64,
    pub cluster_id: u64,
    pub revision: i64,
}

/// Builds `<data-dir>/member/snap/db` for one member of a new cluster from a snapshot file.
///
/// The keyspace (keys, history, leases, revision, applied index) is kept; the membership is
/// replaced by `--initial-cluster` with ids computed exactly as the server computes them, so
/// the member starts as a fresh bootstrap (no WAL) whose raft log begins at the keyspace's
/// applied index. Every member restored from the same file with the same flags therefore
/// agrees on the log prefix and the cluster id. The data dir appears only once complete.
pub fn restore(r: &SnapshotRestore) -> Result<Restored> {
    let data_dir = &r.config.data_dir;
    if data_dir.exists() {
        return Err(Error::Conflict(format!(
            "data-dir {:?} exists; restore creates a new one",
            data_dir.display().to_string()
        )));
    }
    match &r.backup {
        None => restore_file(&r.file, &r.config, r.skip_hash_check),
        Some(target) => {
            // Downloaded next to the data dir (same file system, and never into a directory a
            // member could mistake for its own), checked, restored, then removed.
            let parent = match data_dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            std::fs::create_dir_all(&parent).map_err(|e| Error::io("creating", &parent, e))?;
            let tmp = tempfile::Builder::new()
                .prefix(".ferrokv-backup-")
                .tempdir_in(&parent)
                .map_err(|e| Error::io("creating a temp dir in", &parent, e))?;
            let file = tmp.path().join("snapshot.db");
            let rt = crate::runtime()?;
            let manifest = rt.block_on(download_backup(target, r.revision, &file))?;
            // A downloaded backup was checked against its manifest's sha256 already.
            let restored = restore_file(&file, &r.config, r.skip_hash_check)?;
            if restored.revision != manifest.revision {
                tracing::warn!(
                    manifest = manifest.revision,
                    snapshot = restored.revision,
                    "the snapshot's revision differs from its manifest's"
                );
            }
            Ok(restored)
        }
    }
}

/// Where a backup URL leads: the destination, the cluster label and which backup.
fn resolve_target(
    target: &BackupTarget,
    revision: Option<i64>,
) -> Result<(StoreConfig, String, Selector)> {
    let url = target.url.trim_end_matches('/');
    let last = url.rsplit('/').next().unwrap_or_default();
    let names_object = last.ends_with(ferrokv_backup::MANIFEST_SUFFIX) || last.contains(".snap");
    if names_object {
        // A backup by name: the store is opened at the object's directory (for `file://` the
        // original root is unknown, and any ancestor works since the manifest is found next
        // to its object).
        let loc = ferrokv_backup::Location::parse(url).map_err(backup_err)?;
        let root = match loc.scheme {
            ferrokv_backup::Scheme::File => {
                let dir = loc.bucket.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                format!("file://{}", if dir.is_empty() { "/" } else { dir })
            }
            _ => loc.root_url(),
        };
        let cfg = StoreConfig::from_env(root).map_err(backup_err)?;
        return Ok((cfg, String::new(), Selector::Uri(url.to_string())));
    }
    let (dest, cluster) = match &target.cluster {
        Some(c) => (url.to_string(), c.clone()),
        None => split_cluster(url)?,
    };
    let selector = match revision {
        Some(r) => Selector::AtOrBelow(r),
        None => Selector::Latest,
    };
    let cfg = StoreConfig::from_env(dest).map_err(backup_err)?;
    Ok((cfg, cluster, selector))
}

/// `s3://bucket/prefix/name` → (`s3://bucket/prefix`, `name`).
fn split_cluster(url: &str) -> Result<(String, String)> {
    let loc = ferrokv_backup::Location::parse(url).map_err(backup_err)?;
    let path = match loc.scheme {
        ferrokv_backup::Scheme::File => loc.bucket.clone(),
        _ => loc.prefix.clone(),
    };
    match url.rsplit_once('/') {
        Some((dest, name))
            if !name.is_empty() && !path.is_empty() && path != "/" && !dest.ends_with(':') && !dest.ends_with("//") =>
        {
            Ok((dest.to_string(), name.to_string()))
        }
        _ => Err(Error::Usage(format!(
            "{url}: name the cluster as the URL's last segment (s3://bucket/prefix/<cluster>) or with --cluster"
        ))),
    }
}

fn backup_err(e: ferrokv_backup::Error) -> Error {
    Error::Backup(e.to_string())
}

fn load_key(target: &BackupTarget) -> Result<Option<Encryption>> {
    match &target.encryption_key_file {
        None => Ok(None),
        Some(p) => {
            let raw = std::fs::read(p).map_err(|e| Error::io("reading", p, e))?;
            Encryption::from_secret_value(&raw)
                .map(Some)
                .map_err(|e| Error::Backup(format!("{}: {e}", p.display())))
        }
    }
}

async fn download_backup(
    target: &BackupTarget,
    revision: Option<i64>,
    file: &Path,
) -> Result<ferrokv_backup::Manifest> {
    let (cfg, cluster, selector) = resolve_target(target, revision)?;
    let key = load_key(target)?;
    let dest = Destination::open(&cfg).map_err(backup_err)?;
    let manifest = ferrokv_backup::select(&dest, &cluster, &selector)
        .await
        .map_err(backup_err)?;
    ferrokv_backup::download(&dest, &manifest, file, key.as_ref())
        .await
        .map_err(backup_err)?;
    tracing::info!(object = %dest.url_of(&manifest.object), revision = manifest.revision, "backup downloaded");
    Ok(manifest)
}

/// Uploads a snapshot streamed from the first endpoint that answers as a backup (object plus
/// manifest), never holding it whole in memory.
async fn save_to_store(save: &SnapshotSave, target: &BackupTarget) -> Result<()> {
    let (dest, cluster) = match &target.cluster {
        Some(c) => (target.url.trim_end_matches('/').to_string(), c.clone()),
        None => split_cluster(target.url.trim_end_matches('/'))?,
    };
    let cfg = StoreConfig::from_env(dest).map_err(backup_err)?;
    let key = load_key(target)?;
    let dest = Destination::open(&cfg).map_err(backup_err)?;
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| Error::io("reading", p, e));
    let tls = if save.tls.ca_file.is_some()
        || save.tls.cert_file.is_some()
        || save.tls.key_file.is_some()
    {
        Some(ferrokv_backup::MemberTls {
            ca_pem: save.tls.ca_file.as_ref().map(read).transpose()?,
            cert_pem: save.tls.cert_file.as_ref().map(read).transpose()?,
            key_pem: save.tls.key_file.as_ref().map(read).transpose()?,
        })
    } else {
        None
    };
    let source =
        ferrokv_backup::snapshot_from_member(&save.endpoints, tls.as_ref(), save.dial_timeout)
            .await
            .map_err(|e| Error::Rpc(e.to_string()))?;
    let m = ferrokv_backup::upload(
        &dest,
        &cluster,
        source.stream,
        source.meta,
        save.compression,
        key.as_ref(),
    )
    .await
    .map_err(backup_err)?;
    crate::emit(&format!(
        "Backup saved at {} ({} bytes, {} stored, revision {}, sha256 {})\n",
        dest.url_of(&m.object),
        m.size,
        m.stored_size,
        m.revision,
        m.sha256
    ))
}

/// Restores the snapshot file `file` into `cfg.data_dir`.
fn restore_file(
    file: &Path,
    cfg: &ferrokv_server::config::Config,
    skip_hash_check: bool,
) -> Result<Restored> {
    use ferrokv_server::{ids, membership};
    let data_dir = &cfg.data_dir;
    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io("creating", &parent, e))?;
    // Built beside the target and renamed into place: a crash leaves no half-made data dir
    // that a member would mistake for its own.
    let tmp = tempfile::Builder::new()
        .prefix(".ferrokv-restore-")
        .tempdir_in(&parent)
        .map_err(|e| Error::io("creating a temp dir in", &parent, e))?;
    let layout = ferrokv_datadir::DataDir::new(tmp.path());
    let snap_dir = layout.snap();
    std::fs::create_dir_all(&snap_dir).map_err(|e| Error::io("creating", &snap_dir, e))?;
    let db_path = layout.db();
    crate::snapshot_format::import(file, &db_path, skip_hash_check)?;

    // Client URLs are unknown until each member publishes them after it starts.
    let mut members = membership::initial_members(cfg);
    for m in &mut members {
        m.client_ur_ls.clear();
    }
    let member_ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let cluster_id = ids::cluster_id(&member_ids);
    let own_urls: Vec<String> = cfg
        .initial_advertise_peer_urls
        .iter()
        .map(membership::url_string)
        .collect();
    let member_id = ids::member_id(&own_urls, &cfg.initial_cluster_token);

    let storage = |source| Error::Storage {
        path: file.to_path_buf(),
        source,
    };
    let store = Store::open(&db_path).map_err(storage)?;
    let revision = store.current_revision();
    let conf = ferrokv_raftnode::eraftpb::ConfState {
        voters: member_ids,
        ..Default::default()
    };
    let conf = membership::encode_conf_state(&conf).map_err(|source| Error::Server {
        step: "encoding the raft configuration",
        source,
    })?;
    let mut batch = store.write_batch().map_err(storage)?;
    batch
        .set_meta(
            membership::MEMBERS_KEY,
            &membership::encode_members(&members),
        )
        .map_err(storage)?;
    batch
        .set_meta(membership::CONF_STATE_KEY, &conf)
        .map_err(storage)?;
    batch.commit(true).map_err(storage)?;
    drop(store);

    let built = tmp.keep();
    std::fs::rename(&built, data_dir)
        .map_err(|e| Error::io("renaming the restored dir to", data_dir, e))?;
    std::fs::File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync", &parent, e))?;
    Ok(Restored {
        member_id,
        cluster_id,
        revision,
    })
}

pub(crate) fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::io("creating", path, e))?;
    f.write_all(data)
        .map_err(|e| Error::io("writing", path, e))?;
    f.sync_all().map_err(|e| Error::io("fsync", path, e))
}

/// Streams a snapshot from the first endpoint that answers into `save.file`.
pub async fn save(save: &SnapshotSave) -> Result<()> {
    if let Some(target) = &save.backup {
        return save_to_store(save, target).await;
    }
    let mut failures = Vec::new();
    for endpoint in &save.endpoints {
        let channel = match connect(endpoint, save).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(endpoint, error = %e, "cannot connect");
                failures.push(format!("{endpoint}: {e}"));
                continue;
            }
        };
        let saved = stream_to_file(channel, &save.file).await?;
        return crate::emit(&format!(
            "Snapshot saved at {} ({} bytes, revision {})\n",
            save.file.display(),
            saved.bytes,
            saved.revision
        ));
    }
    Err(Error::Rpc(format!(
        "no endpoint could be reached: {}",
        failures.join("; ")
    )))
}

/// etcdctl accepts `host:port`; the scheme then follows whether TLS flags were given.
fn endpoint_url(endpoint: &str, tls: &ClientTls) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else if tls.ca_file.is_some() || tls.cert_file.is_some() {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

async fn connect(endpoint: &str, save: &SnapshotSave) -> Result<Channel> {
    let url = endpoint_url(endpoint, &save.tls);
    let mut ep = Endpoint::from_shared(url.clone())
        .map_err(|e| Error::Rpc(format!("bad endpoint {url}: {e}")))?
        .connect_timeout(save.dial_timeout);
    if url.starts_with("https://") {
        ep = ep
            .tls_config(tls_config(&save.tls)?)
            .map_err(|e| Error::Rpc(format!("TLS setup for {url}: {e}")))?;
    }
    ep.connect()
        .await
        .map_err(|e| Error::Rpc(format!("connecting to {url}: {e}")))
}

/// tonic's "transport error" alone does not say what failed; the source chain does (TLS
/// alert, refused connection, ...).
fn status_text(status: &tonic::Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn tls_config(tls: &ClientTls) -> Result<ClientTlsConfig> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| Error::io("reading", p, e));
    let mut cfg = ClientTlsConfig::new();
    if let Some(ca) = &tls.ca_file {
        cfg = cfg.ca_certificate(Certificate::from_pem(read(ca)?));
    } else {
        cfg = cfg.with_enabled_roots();
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => cfg = cfg.identity(Identity::from_pem(read(cert)?, read(key)?)),
        (None, None) => {}
        _ => {
            return Err(Error::Conflict(
                "--cert and --key must be given together".into(),
            ))
        }
    }
    Ok(cfg)
}

struct Saved {
    bytes: u64,
    revision: i64,
}

async fn stream_to_file(channel: Channel, file: &Path) -> Result<Saved> {
    let rpc = |e: tonic::Status| Error::Rpc(format!("Maintenance.Snapshot: {}", status_text(&e)));
    let mut stream = MaintenanceClient::new(channel)
        .snapshot(SnapshotRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // In the target's directory so the final rename is atomic (same file system).
    let mut tmp = tempfile::Builder::new()
        .prefix(".ferrokv-snapshot-")
        .tempfile_in(&dir)
        .map_err(|e| Error::io("creating a temp file in", &dir, e))?;
    let mut check = HashCheck::default();
    let mut revision = 0;
    while let Some(msg) = stream.message().await.map_err(rpc)? {
        if let Some(h) = &msg.header {
            revision = h.revision;
        }
        let ready = check.push(&msg.blob);
        tmp.write_all(ready)
            .map_err(|e| Error::io("writing", tmp.path(), e))?;
        check.consumed();
    }
    let body_len = check.body_len;
    let hash = check.finish().map_err(|reason| Error::BadSnapshot {
        path: file.to_path_buf(),
        reason,
    })?;
    tmp.write_all(&hash)
        .map_err(|e| Error::io("writing", tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io("fsync", tmp.path(), e))?;
    tmp.persist(file)
        .map_err(|e| Error::io("renaming the snapshot to", file, e.error))?;
    // The rename is only durable once the directory entry is.
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync", &dir, e))?;
    Ok(Saved {
        bytes: body_len + HASH_LEN as u64,
        revision,
    })
}

/// Checks the stream's framing while it passes: every byte but the last 32 is hashed; the
/// last 32 must be that hash. Holding back 32 bytes is enough to know where the body ends.
#[derive(Default)]
struct HashCheck {
    hasher: Sha256,
    pending: Vec<u8>,
    ready: usize,
    body_len: u64,
}

impl HashCheck {
    /// Adds a chunk; returns the bytes now known to be body (hashed), to be written out.
    fn push(&mut self, chunk: &[u8]) -> &[u8] {
        self.pending.extend_from_slice(chunk);
        self.ready = self.pending.len().saturating_sub(HASH_LEN);
        self.hasher.update(&self.pending[..self.ready]);
        self.body_len += self.ready as u64;
        &self.pending[..self.ready]
    }

    /// Drops the bytes returned by the last `push`.
    fn consumed(&mut self) {
        self.pending.drain(..self.ready);
        self.ready = 0;
    }

    fn finish(self) -> std::result::Result<Vec<u8>, String> {
        if self.pending.len() != HASH_LEN {
            return Err(format!(
                "stream ended after {} bytes, too short for a SHA-256 trailer",
                self.body_len + self.pending.len() as u64
            ));
        }
        if !self.body_len.is_multiple_of(BLOCK) {
            return Err(format!(
                "body of {} bytes is not a multiple of 512",
                self.body_len
            ));
        }
        if self.hasher.finalize().as_slice() != self.pending.as_slice() {
            return Err("SHA-256 mismatch: the stream is damaged".to_string());
        }
        Ok(self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_check(stream: &[u8], chunk: usize) -> std::result::Result<Vec<u8>, String> {
        let mut check = HashCheck::default();
        let mut out = Vec::new();
        for c in stream.chunks(chunk.max(1)) {
            out.extend_from_slice(check.push(c));
            check.consumed();
        }
        let hash = check.finish()?;
        out.extend_from_slice(&hash);
        Ok(out)
    }

    #[test]
    fn hash_check_accepts_a_framed_stream_in_any_chunking() {
        let framed = ferrokv_server::snapshot_file::wrap(b"some redb bytes");
        for chunk in [1, 7, 31, 32, 33, 512, 100_000] {
            assert_eq!(
                run_check(&framed, chunk).as_deref(),
                Ok(framed.as_slice()),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn hash_check_rejects_damage() {
        let framed = ferrokv_server::snapshot_file::wrap(b"some redb bytes");
        let mut flipped = framed.clone();
        flipped[3] ^= 1;
        let rows: Vec<(&str, Vec<u8>, &str)> = vec![
            ("bit flip", flipped, "SHA-256 mismatch"),
            (
                "truncated",
                framed[..framed.len() - 1].to_vec(),
                "not a multiple of 512",
            ),
            ("tiny", vec![1, 2, 3], "too short"),
            ("empty", Vec::new(), "too short"),
        ];
        for (name, bytes, want) in rows {
            let err = run_check(&bytes, 64).unwrap_err();
            assert!(err.contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn endpoints_without_scheme_follow_tls_flags() {
        let plain = ClientTls::default();
        let tls = ClientTls {
            ca_file: Some("ca.pem".into()),
            ..Default::default()
        };
        assert_eq!(
            endpoint_url("127.0.0.1:2379", &plain),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            endpoint_url("127.0.0.1:2379", &tls),
            "https://127.0.0.1:2379"
        );
        assert_eq!(endpoint_url("http://a:1", &tls), "http://a:1");
    }

    /// A framed snapshot of a store holding `n` keys (revision n + 1).
    fn snapshot_file(dir: &Path, n: usize) -> PathBuf {
        let db = dir.join("source-db");
        {
            let store = Store::open(&db).unwrap();
            let mut batch = store.write_batch().unwrap();
            for i in 0..n {
                batch
                    .put(&ferrokv_proto::etcdserverpb::PutRequest {
                        key: format!("k{i}").into_bytes(),
                        value: b"v".to_vec(),
                        ..Default::default()
                    })
                    .unwrap();
            }
            batch.set_applied_index(40, 3).unwrap();
            batch.commit(true).unwrap();
        }
        let file = dir.join("snap.db");
        std::fs::write(
            &file,
            ferrokv_server::snapshot_file::wrap(&std::fs::read(&db).unwrap()),
        )
        .unwrap();
        file
    }

    #[test]
    fn restore_keeps_the_keyspace_and_replaces_the_membership() {
        use ferrokv_server::{config::Config, ids, membership};
        let dir = tempfile::tempdir().unwrap();
        let file = snapshot_file(dir.path(), 3);
        let mut config = Config::with_defaults("n2");
        config.data_dir = dir.path().join("restored").join("n2.etcd");
        let url = |s: &str| url::Url::parse(s).unwrap();
        config.initial_advertise_peer_urls = vec![url("http://b:2380")];
        config.initial_cluster = vec![
            ("n1".into(), vec![url("http://a:2380")]),
            ("n2".into(), vec![url("http://b:2380")]),
        ];
        config.initial_cluster_token = "new-token".into();
        let req = SnapshotRestore {
            file,
            config: config.clone(),
            backup: None,
            revision: None,
            skip_hash_check: false,
        };
        let r = restore(&req).unwrap();

        let id_a = ids::member_id(&["http://a:2380".to_string()], "new-token");
        let id_b = ids::member_id(&["http://b:2380".to_string()], "new-token");
        assert_eq!(r.member_id, id_b);
        assert_eq!(r.cluster_id, ids::cluster_id(&[id_a, id_b]));
        assert_eq!(r.revision, 4);

        let store = Store::open(&ferrokv_datadir::DataDir::new(&config.data_dir).db()).unwrap();
        assert_eq!(store.current_revision(), 4);
        assert_eq!(store.applied_index(), (40, 3));
        let members = membership::load(&store).unwrap();
        let names: Vec<(&str, u64)> = members.iter().map(|m| (m.name.as_str(), m.id)).collect();
        assert_eq!(names, vec![("n1", id_a), ("n2", id_b)]);
        assert!(members.iter().all(|m| m.client_ur_ls.is_empty()));
        let conf = membership::load_conf_state(&store).unwrap().unwrap();
        assert_eq!(conf.voters, vec![id_a, id_b]);
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        assert_eq!(store.range(&all).unwrap().count, 3);
        // No WAL: the member bootstraps a new cluster from this keyspace.
        assert!(!ferrokv_datadir::DataDir::new(&config.data_dir)
            .wal()
            .exists());

        // A second restore to the same place refuses to overwrite it.
        let err = restore(&req).unwrap_err().to_string();
        assert!(err.contains("exists"), "{err}");
        // A damaged file leaves nothing behind.
        let mut bad = SnapshotRestore {
            file: dir.path().join("bad.db"),
            config,
            backup: None,
            revision: None,
            skip_hash_check: false,
        };
        bad.config.data_dir = dir.path().join("other");
        std::fs::write(&bad.file, b"junk").unwrap();
        assert!(restore(&bad).is_err());
        assert!(!bad.config.data_dir.exists());
    }

    #[test]
    fn status_of_a_store_snapshot_with_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = snapshot_file(dir.path(), 4);
        let s = status(&file).unwrap();
        assert_eq!((s.revision, s.total_keys), (5, 4));
    }

    #[test]
    fn status_of_a_store_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        {
            let store = Store::open(&db).unwrap();
            assert_eq!(store.current_revision(), 1);
        }
        let bytes = std::fs::read(&db).unwrap();
        let file = dir.path().join("snap.db");
        std::fs::write(&file, ferrokv_server::snapshot_file::wrap(&bytes)).unwrap();
        let s = status(&file).unwrap();
        assert_eq!(s.revision, 1);
        assert_eq!(s.total_keys, 0);
        assert_eq!(s.db_size, bytes.len() as u64);
        assert_eq!(s.total_size % 512, 32);
        let text = s.to_string();
        assert!(text.contains("revision: 1\ntotal keys: 0\n"), "{text}");

        let mut damaged = std::fs::read(&file).unwrap();
        damaged[0] ^= 0xff;
        std::fs::write(&file, damaged).unwrap();
        let err = status(&file).unwrap_err().to_string();
        assert!(err.contains("SHA-256"), "{err}");
    }

    #[test]
    fn backup_urls_name_destination_cluster_and_backup() {
        assert_eq!(
            split_cluster("s3://b/p/c").unwrap(),
            ("s3://b/p".to_string(), "c".to_string())
        );
        assert_eq!(
            split_cluster("file:///srv/backups/c").unwrap(),
            ("file:///srv/backups".to_string(), "c".to_string())
        );
        for bare in ["s3://b", "s3://b/", "file:///dir"] {
            let e = split_cluster(bare.trim_end_matches('/'))
                .unwrap_err()
                .to_string();
            assert!(e.contains("--cluster"), "{bare}: {e}");
        }
        let target = |url: &str, cluster: Option<&str>| BackupTarget {
            url: url.into(),
            cluster: cluster.map(str::to_string),
            encryption_key_file: None,
        };
        let (cfg, cluster, sel) =
            resolve_target(&target("gs://b/p/ns/x", Some("ns/x")), None).unwrap();
        // With --cluster the whole URL is the destination.
        assert_eq!(
            (cfg.url.as_str(), cluster.as_str(), sel),
            ("gs://b/p/ns/x", "ns/x", Selector::Latest)
        );
        let (cfg, cluster, sel) = resolve_target(&target("s3://b/p/c", None), Some(9)).unwrap();
        assert_eq!(
            (cfg.url.as_str(), cluster.as_str(), sel),
            ("s3://b/p", "c", Selector::AtOrBelow(9))
        );
        let m = "s3://b/p/c/20260101T000000000Z-00000000000000000007.manifest.json";
        let (cfg, _, sel) = resolve_target(&target(m, None), None).unwrap();
        assert_eq!((cfg.url.as_str(), sel), ("s3://b", Selector::Uri(m.into())));
        let f = "file:///srv/b/c/20260101T000000000Z-00000000000000000007.snap.zst";
        let (cfg, _, sel) = resolve_target(&target(f, None), None).unwrap();
        assert_eq!(
            (cfg.url.as_str(), sel),
            ("file:///srv/b/c", Selector::Uri(f.into()))
        );
    }
}
