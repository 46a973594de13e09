//! Snapshot backups of a ferrokv (or etcd) cluster to object storage, and their restore.
//!
//! A backup is two objects under `<destination prefix>/<cluster>/`:
//!
//! ```text
//! <stamp>-<revision>.snap[.zst][.enc]   the snapshot file (Maintenance.Snapshot's bytes),
//!                                       zstd-compressed and/or encrypted (see `codec`)
//! <stamp>-<revision>.manifest.json      a [`Manifest`], written only after the data object
//!                                       completed
//! ```
//!
//! `<stamp>` is the UTC start time `YYYYMMDDTHHMMSSmmmZ` and `<revision>` is zero-padded to 20
//! digits, so names sort by time. A data object without a manifest is a partial upload (or one
//! whose manifest retention already removed) and is never taken for a backup.
//! Retention deletes a manifest before its object, so a manifest never points at nothing.

mod codec;
mod error;
mod source;
mod store;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt as _, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use codec::{Compression, Encryption, ENCRYPTION_SCHEME};
pub use error::{Error, Result};
pub use source::{snapshot_from_member, MemberTls, SnapshotSource};
pub use store::*;

/// The manifest format this crate writes.
pub const MANIFEST_FORMAT: u32 = 1;
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
const SNAP_INFIX: &str = ".snap";
/// Multipart part size: S3 needs 5 MiB or more for every part but the last.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded at once; bounds memory to about `PART_SIZE * PARTS_IN_FLIGHT`.
const PARTS_IN_FLIGHT: usize = 2;
/// A data object without a manifest younger than this may still be getting its manifest (or,
/// on a file system, may still be written); retention leaves it alone until then.
pub const PARTIAL_GRACE: Duration = Duration::from_secs(3600);

/// What the snapshot's source reported about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub cluster_id: u64,
    pub member_id: u64,
    pub revision: i64,
    pub raft_index: u64,
}

/// The description of one backup, stored beside its data object as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The cluster label the backup was filed under (`namespace/name` for the operator).
    pub cluster: String,
    pub cluster_id: u64,
    /// The member the snapshot was streamed from.
    pub member_id: u64,
    pub revision: i64,
    pub raft_index: u64,
    /// Bytes of the plain snapshot file.
    pub size: u64,
    /// Bytes of the stored object (after compression and encryption).
    pub stored_size: u64,
    /// Hex SHA-256 of the plain snapshot file (what `sha256sum` of a restored file prints).
    pub sha256: String,
    pub ferrokv_version: String,
    /// RFC 3339, UTC: when the upload started.
    pub created: String,
    pub compression: Compression,
    /// The encryption scheme ([`ENCRYPTION_SCHEME`]), or none.
    pub encryption: Option<String>,
    /// The data object's key in the store.
    pub object: String,
    /// This manifest's key in the store.
    pub manifest: String,
}

impl Manifest {
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.created)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    pub fn encrypted(&self) -> bool {
        self.encryption.is_some()
    }
}

/// Which backup to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The newest backup of the cluster.
    Latest,
    /// The newest backup whose revision is at or below this one.
    AtOrBelow(i64),
    /// A backup by URL: its manifest (`...manifest.json`) or its data object (`....snap...`),
    /// in the destination's bucket.
    Uri(String),
}

/// A cluster label: segments of `[A-Za-z0-9._-]` separated by `/` (e.g. `namespace/name`).
pub fn check_cluster_label(cluster: &str) -> Result<()> {
    let ok = !cluster.is_empty()
        && cluster.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "cluster label {cluster:?}: use segments of letters, digits, '.', '_', '-' separated by '/'"
        )))
    }
}

fn cluster_dir(dest: &Destination, cluster: &str) -> Result<ObjPath> {
    check_cluster_label(cluster)?;
    dest.prefix_path(Some(cluster))
        .ok_or_else(|| Error::Config("empty cluster label".into()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The base name (without suffixes) of a backup started at `now` at `revision`.
fn base_name(now: DateTime<Utc>, revision: i64) -> String {
    format!(
        "{}-{:020}",
        now.format("%Y%m%dT%H%M%S%3fZ"),
        revision.max(0)
    )
}

/// Streams `snapshot` into a new backup of `cluster` and returns its manifest.
///
/// The bytes go through compression, encryption and a multipart upload as they arrive, so
/// memory is bounded by a few parts whatever the snapshot's size (a stored object that fits
/// in one part is sent with one PUT instead). The manifest is written only after the data
/// object completed; on any failure the multipart upload is aborted and no manifest is
/// written.
pub async fn upload<S, E>(
    dest: &Destination,
    cluster: &str,
    snapshot: S,
    meta: SnapshotMeta,
    compression: Compression,
    encryption: Option<&Encryption>,
) -> Result<Manifest>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let dir = cluster_dir(dest, cluster)?;
    let started = Utc::now();
    let base = format!("{dir}/{}", base_name(started, meta.revision));
    let object = format!(
        "{base}{SNAP_INFIX}{}{}",
        compression.suffix(),
        if encryption.is_some() { ".enc" } else { "" }
    );
    let manifest_key = format!("{base}{MANIFEST_SUFFIX}");
    let object_path = ObjPath::from(object.as_str());
    let url = dest.url_of(&object);

    let mut sink = Sink::Small(Vec::new());
    let streamed = stream_into(
        &mut sink,
        dest,
        &object_path,
        snapshot,
        compression,
        encryption,
        &url,
    )
    .await;
    let finished = match streamed {
        Ok(v) => sink.finish(dest, &object_path, &url).await.map(|()| v),
        Err(e) => Err(e),
    };
    let (size, stored_size, sha256) = match finished {
        Ok(v) => v,
        Err(e) => {
            sink.abort(&url).await;
            return Err(e);
        }
    };

    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        cluster: cluster.to_string(),
        cluster_id: meta.cluster_id,
        member_id: meta.member_id,
        revision: meta.revision,
        raft_index: meta.raft_index,
        size,
        stored_size,
        sha256,
        ferrokv_version: env!("CARGO_PKG_VERSION").to_string(),
        created: started.to_rfc3339_opts(SecondsFormat::Millis, true),
        compression,
        encryption: encryption.map(|_| ENCRYPTION_SCHEME.to_string()),
        object: object.clone(),
        manifest: manifest_key.clone(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Manifest {
        key: manifest_key.clone(),
        reason: e.to_string(),
    })?;
    if let Err(e) = dest
        .store
        .put(
            &ObjPath::from(manifest_key.as_str()),
            PutPayload::from(json),
        )
        .await
    {
        // Without its manifest the object is a partial backup; removing it now saves
        // retention the work (and it would be ignored either way).
        let _ = dest.store.delete(&object_path).await;
        return Err(Error::store(
            "writing the manifest",
            &dest.url_of(&manifest_key),
            e,
        ));
    }
    tracing::info!(
        object = %url,
        revision = manifest.revision,
        size = manifest.size,
        stored_size = manifest.stored_size,
        "backup uploaded"
    );
    Ok(manifest)
}

/// Where encoded bytes go: a buffer while they fit in one part (one PUT, no multipart upload
/// to leave behind, and the only path some emulators serve), then a multipart upload.
enum Sink {
    Small(Vec<u8>),
    Multipart(WriteMultipart),
    Done,
}

impl Sink {
    async fn write(
        &mut self,
        data: &[u8],
        dest: &Destination,
        path: &ObjPath,
        url: &str,
    ) -> Result<()> {
        if let Sink::Small(buf) = self {
            if buf.len() + data.len() <= PART_SIZE {
                buf.extend_from_slice(data);
                return Ok(());
            }
            let upload = dest
                .store
                .put_multipart(path)
                .await
                .map_err(|e| Error::store("starting the upload of", url, e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            writer.write(buf);
            *self = Sink::Multipart(writer);
        }
        if let Sink::Multipart(w) = self {
            // Backpressure: at most this many parts are buffered or in flight.
            w.wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|e| Error::store("uploading", url, e))?;
            w.write(data);
        }
        Ok(())
    }

    async fn finish(&mut self, dest: &Destination, path: &ObjPath, url: &str) -> Result<()> {
        match std::mem::replace(self, Sink::Done) {
            Sink::Small(buf) => dest
                .store
                .put(path, PutPayload::from(buf))
                .await
                .map(|_| ())
                .map_err(|e| Error::store("uploading", url, e)),
            Sink::Multipart(w) => w
                .finish()
                .await
                .map(|_| ())
                .map_err(|e| Error::store("completing the upload of", url, e)),
            Sink::Done => Ok(()),
        }
    }

    async fn abort(&mut self, url: &str) {
        if let Sink::Multipart(w) = std::mem::replace(self, Sink::Done) {
            if let Err(e) = w.abort().await {
                // The store's own lifecycle rules (or the bucket's) reclaim the parts.
                tracing::warn!(object = %url, error = %e, "aborting the multipart upload failed");
            }
        }
    }
}

async fn stream_into<S, E>(
    sink: &mut Sink,
    dest: &Destination,
    path: &ObjPath,
    mut snapshot: S,
    compression: Compression,
    encryption: Option<&Encryption>,
    url: &str,
) -> Result<(u64, u64, String)>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut encoder = codec::Encoder::new(compression, encryption)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stored = 0u64;
    while let Some(chunk) = snapshot.next().await {
        let chunk = chunk.map_err(|e| Error::Source(e.to_string()))?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        let out = encoder.push(&chunk)?;
        if !out.is_empty() {
            stored += out.len() as u64;
            sink.write(&out, dest, path, url).await?;
        }
    }
    if size == 0 {
        return Err(Error::Source("the snapshot stream was empty".into()));
    }
    let out = encoder.finish()?;
    stored += out.len() as u64;
    sink.write(&out, dest, path, url).await?;
    Ok((size, stored, hex(&hasher.finalize())))
}

async fn read_manifest(dest: &Destination, key: &str) -> Result<Manifest> {
    let url = dest.url_of(key);
    let got = dest
        .store
        .get(&ObjPath::from(key))
        .await
        .map_err(|e| Error::store("reading", &url, e))?;
    let bytes = got
        .bytes()
        .await
        .map_err(|e| Error::store("reading", &url, e))?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Manifest {
        key: url.clone(),
        reason: e.to_string(),
    })?;
    if m.format > MANIFEST_FORMAT {
        return Err(Error::Manifest {
            key: url,
            reason: format!(
                "format {} is newer than this ferrokv understands ({MANIFEST_FORMAT})",
                m.format
            ),
        });
    }
    Ok(m)
}

struct Listing {
    manifests: Vec<Manifest>,
    objects: Vec<object_store::ObjectMeta>,
}

async fn list_all(dest: &Destination, cluster: &str) -> Result<Listing> {
    let dir = cluster_dir(dest, cluster)?;
    // With a delimiter, so `ns/a` never sees `ns/a/...` (labels can nest) and only this
    // cluster's own objects are ever considered.
    let listed = dest
        .store
        .list_with_delimiter(Some(&dir))
        .await
        .map_err(|e| Error::store("listing", &dest.url_of(dir.as_ref()), e))?;
    let objects = listed.objects;
    let mut manifests = Vec::new();
    for o in &objects {
        let key = o.location.as_ref();
        if !key.ends_with(MANIFEST_SUFFIX) {
            continue;
        }
        match read_manifest(dest, key).await {
            Ok(m)
                if m.manifest == key && objects.iter().any(|x| x.location.as_ref() == m.object) =>
            {
                manifests.push(m)
            }
            Ok(m) => {
                tracing::warn!(manifest = key, object = %m.object, "manifest whose object is missing or elsewhere; ignored")
            }
            // A manifest deleted between the listing and the read is retention at work.
            Err(Error::NotFound(_)) => {}
            Err(e) => tracing::warn!(manifest = key, error = %e, "unreadable manifest; ignored"),
        }
    }
    manifests.sort_by(|a, b| (&a.created, a.revision).cmp(&(&b.created, b.revision)));
    Ok(Listing { manifests, objects })
}

/// The cluster's complete backups (those with a manifest), oldest first.
pub async fn list(dest: &Destination, cluster: &str) -> Result<Vec<Manifest>> {
    Ok(list_all(dest, cluster).await?.manifests)
}

/// Picks one backup.
pub async fn select(dest: &Destination, cluster: &str, selector: &Selector) -> Result<Manifest> {
    match selector {
        Selector::Latest => list(dest, cluster).await?.pop().ok_or_else(|| {
            Error::NotFound(format!(
                "a backup of {cluster:?} under {} (no manifest found)",
                dest.url()
            ))
        }),
        Selector::AtOrBelow(rev) => {
            let all = list(dest, cluster).await?;
            let oldest = all.iter().map(|m| m.revision).min();
            all.into_iter()
                .filter(|m| m.revision <= *rev)
                .max_by_key(|m| (m.revision, m.created.clone()))
                .ok_or_else(|| {
                    Error::NotFound(match oldest {
                        Some(o) => format!(
                            "a backup of {cluster:?} under {} at or below revision {rev} (the oldest is at revision {o})",
                            dest.url()
                        ),
                        None => format!("a backup of {cluster:?} under {}", dest.url()),
                    })
                })
        }
        Selector::Uri(uri) => {
            let key = key_of_uri(dest, uri)?;
            let manifest_key = manifest_key_for(&key).ok_or_else(|| Error::BadUrl {
                url: uri.clone(),
                reason: format!("neither a manifest (*{MANIFEST_SUFFIX}) nor a backup object (*{SNAP_INFIX}[.zst][.enc])"),
            })?;
            let m = read_manifest(dest, &manifest_key)
                .await
                .map_err(|e| match e {
                    Error::NotFound(_) => Error::NotFound(format!(
                        "the manifest {} (an object without one is a partial upload)",
                        dest.url_of(&manifest_key)
                    )),
                    e => e,
                })?;
            // The object lies next to its manifest. The keys recorded at upload are relative
            // to the store root used then; this destination may be rooted elsewhere (a
            // `file://` parent directory), so the keys are re-based on where it was found.
            let name = |k: &str| k.rsplit('/').next().unwrap_or_default().to_string();
            let object_name = name(&m.object);
            if name(&m.manifest) != name(&manifest_key)
                || manifest_key_for(&object_name).map(|k| name(&k)) != Some(name(&manifest_key))
            {
                return Err(Error::Manifest {
                    key: dest.url_of(&manifest_key),
                    reason: format!("it describes {} and {}", m.manifest, m.object),
                });
            }
            let dir = manifest_key
                .rsplit_once('/')
                .map(|(d, _)| format!("{d}/"))
                .unwrap_or_default();
            let mut m = m;
            m.object = format!("{dir}{object_name}");
            m.manifest = manifest_key;
            Ok(m)
        }
    }
}

/// The store key a URL points at, which must be in the destination's bucket.
pub fn key_of_uri(dest: &Destination, uri: &str) -> Result<String> {
    let loc = &dest.location;
    let parsed = Location::parse(uri)?;
    let bad = |reason: String| Error::BadUrl {
        url: uri.to_string(),
        reason,
    };
    if parsed.scheme != loc.scheme {
        return Err(bad(format!("not in the destination {}", dest.url())));
    }
    if loc.scheme == Scheme::File {
        // For files the "bucket" is the whole path; the key is what lies below the root.
        let root = format!("{}/", loc.bucket);
        return parsed
            .bucket
            .strip_prefix(&root)
            .map(str::to_string)
            .ok_or_else(|| bad(format!("not under {}", dest.url())));
    }
    if parsed.bucket != loc.bucket {
        return Err(bad(format!(
            "not in the destination's bucket {}",
            loc.bucket
        )));
    }
    if parsed.prefix.is_empty() {
        return Err(bad("names no object".into()));
    }
    Ok(parsed.prefix)
}

/// `x.manifest.json` for `x.manifest.json` or `x.snap[.zst][.enc]`.
fn manifest_key_for(key: &str) -> Option<String> {
    if key.ends_with(MANIFEST_SUFFIX) {
        return Some(key.to_string());
    }
    let name_start = key.rfind('/').map(|i| i + 1).unwrap_or(0);
    let idx = key[name_start..].rfind(SNAP_INFIX)? + name_start;
    let rest = &key[idx + SNAP_INFIX.len()..];
    matches!(rest, "" | ".zst" | ".enc" | ".zst.enc")
        .then(|| format!("{}{MANIFEST_SUFFIX}", &key[..idx]))
}

/// Downloads a backup into the snapshot file `to`, decrypting and decompressing as it
/// streams, and checks its size and SHA-256 against the manifest. `to` appears only once it
/// passed; on any failure nothing is left behind.
pub async fn download(
    dest: &Destination,
    manifest: &Manifest,
    to: &Path,
    encryption: Option<&Encryption>,
) -> Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let url = dest.url_of(&manifest.object);
    let key = match (&manifest.encryption, encryption) {
        (Some(_), None) => {
            return Err(Error::Key(format!(
                "{url} is encrypted ({}): an encryption key is needed",
                manifest.encryption.as_deref().unwrap_or_default()
            )))
        }
        (Some(scheme), Some(k)) if scheme == ENCRYPTION_SCHEME => Some(k),
        (Some(scheme), Some(_)) => {
            return Err(Error::Manifest {
                key: dest.url_of(&manifest.manifest),
                reason: format!("unknown encryption scheme {scheme:?}"),
            })
        }
        // A key for an unencrypted backup is harmless: the operator passes its key always.
        (None, _) => None,
    };
    let dir = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| Error::io(&dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".ferrokv-download-")
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    let (std_file, tmp_path) = tmp.into_parts();
    // `tmp_path` removes the partial file when dropped on any early return below.
    let mut file = tokio::fs::File::from_std(std_file);
    let got = dest
        .store
        .get(&ObjPath::from(manifest.object.as_str()))
        .await
        .map_err(|e| match Error::store("downloading", &url, e) {
            Error::NotFound(_) => Error::NotFound(format!("the backup object {url}")),
            e => e,
        })?;
    let mut body = got.into_stream();
    let mut decoder = codec::Decoder::new(manifest.compression, key, &url)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stored = 0u64;
    let io = |e| Error::io(tmp_path.to_path_buf(), e);
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| Error::store("downloading", &url, e))?
    {
        stored += chunk.len() as u64;
        let plain = decoder.push(&chunk)?;
        hasher.update(&plain);
        size += plain.len() as u64;
        file.write_all(&plain).await.map_err(io)?;
    }
    let plain = decoder.finish()?;
    hasher.update(&plain);
    size += plain.len() as u64;
    file.write_all(&plain).await.map_err(io)?;
    file.sync_all().await.map_err(io)?;
    drop(file);
    let corrupt = |reason: String| Error::Corrupt {
        object: url.clone(),
        reason,
    };
    if stored != manifest.stored_size {
        return Err(corrupt(format!(
            "stored size {stored} bytes, the manifest says {}",
            manifest.stored_size
        )));
    }
    if size != manifest.size {
        return Err(corrupt(format!(
            "snapshot size {size} bytes, the manifest says {}",
            manifest.size
        )));
    }
    let sha = hex(&hasher.finalize());
    if sha != manifest.sha256 {
        return Err(corrupt(format!(
            "sha256 {sha}, the manifest says {}",
            manifest.sha256
        )));
    }
    tmp_path.persist(to).map_err(|e| Error::io(to, e.error))?;
    Ok(())
}

/// Deletes the cluster's backups beyond the newest `keep_last` and/or older than `max_age`
/// (as of `now`), and partial objects (no manifest) older than [`PARTIAL_GRACE`]. The newest
/// backup with a manifest is never deleted. Returns the manifests of the deleted backups,
/// oldest first.
///
/// Each backup's manifest goes first, then its object: a crash in between leaves an object
/// without a manifest, which is ignored and cleaned as partial later, never a manifest that
/// points at nothing.
pub async fn apply_retention(
    dest: &Destination,
    cluster: &str,
    keep_last: Option<u32>,
    max_age: Option<Duration>,
    now: DateTime<Utc>,
) -> Result<Vec<Manifest>> {
    let Listing { manifests, objects } = list_all(dest, cluster).await?;
    let mut deleted = Vec::new();
    let keep = keep_last.map(|n| n.max(1) as usize);
    let max_age = max_age.and_then(|a| chrono::Duration::from_std(a).ok());
    for (i, m) in manifests.iter().rev().enumerate() {
        if i == 0 {
            continue;
        }
        let too_many = keep.is_some_and(|n| i >= n);
        let too_old = match (max_age, m.created_at()) {
            (Some(a), Some(t)) => now - t > a,
            _ => false,
        };
        if !(too_many || too_old) {
            continue;
        }
        delete_key(dest, &m.manifest).await?;
        delete_key(dest, &m.object).await?;
        tracing::info!(object = %dest.url_of(&m.object), revision = m.revision, "backup deleted by retention");
        deleted.push(m.clone());
    }
    let grace = chrono::Duration::from_std(PARTIAL_GRACE).unwrap_or_default();
    for o in &objects {
        let key = o.location.as_ref();
        if key.ends_with(MANIFEST_SUFFIX) || manifest_key_for(key).is_none() {
            continue;
        }
        if manifests.iter().any(|m| m.object == key) || now - o.last_modified < grace {
            continue;
        }
        delete_key(dest, key).await?;
        tracing::info!(object = %dest.url_of(key), "partial backup object deleted");
    }
    // Oldest first, like `list`.
    deleted.reverse();
    Ok(deleted)
}

async fn delete_key(dest: &Destination, key: &str) -> Result<()> {
    match dest.store.delete(&ObjPath::from(key)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(Error::store("deleting", &dest.url_of(key), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_keys_for_objects() {
        assert_eq!(
            manifest_key_for("p/c/20260101T000000000Z-00000000000000000042.snap.zst.enc")
                .as_deref(),
            Some("p/c/20260101T000000000Z-00000000000000000042.manifest.json")
        );
        assert_eq!(
            manifest_key_for("p/c/x.snap").as_deref(),
            Some("p/c/x.manifest.json")
        );
        assert_eq!(
            manifest_key_for("p/c/x.manifest.json").as_deref(),
            Some("p/c/x.manifest.json")
        );
        assert_eq!(manifest_key_for("p/c/x.snapshot"), None);
        assert_eq!(manifest_key_for("p/c.snap/x"), None);
    }

    #[test]
    fn cluster_labels() {
        for ok in ["a", "ns/name", "my-cluster.v1_2"] {
            check_cluster_label(ok).unwrap();
        }
        for bad in ["", "/a", "a/", "a//b", "..", "a/../b", "a b", "a?"] {
            assert!(check_cluster_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn base_names_sort_by_time() {
        let t = DateTime::parse_from_rfc3339("2026-12-01T19:24:53.123Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(base_name(t, 42), "20261201T192453123Z-00000000000000000042");
    }
}
