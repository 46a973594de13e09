//! Backups against real object-storage servers started here (moto for S3, Azurite, fake-gcs-
//! server, the file system) and a real ferrokv member under write load; restores through the
//! real `ferrokv snapshot restore` into a member that must serve exactly the backup's data.
//! Servers come from `scripts/build-backup-servers.sh` (`make deps`); a missing one fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferrokv_backup::{
    apply_retention, download, list, select, snapshot_from_member, upload, Compression,
    Destination, Encryption, Manifest, Selector, SnapshotMeta, StoreConfig,
};
use ferrokv_tests::objstore::{self, Kind, ObjectServer};
use ferrokv_tests::{Backend, Member, MemberOpts, TlsFiles};

const BUCKET: &str = "backups";
const KEY: [u8; 32] = [0x5a; 32];

/// A member with a writer putting unique keys and recording each acknowledged write's revision.
struct Loaded {
    member: Member,
    acked: Arc<Mutex<Vec<(String, i64)>>>,
    stop: Arc<AtomicBool>,
    writer: Option<tokio::task::JoinHandle<()>>,
}

impl Loaded {
    async fn start() -> Loaded {
        let member = Member::start(Backend::Ferrokv, MemberOpts::default())
            .await
            .unwrap();
        let mut client = member.client().await.unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acked.clone(), stop.clone());
        let writer = tokio::spawn(async move {
            // Bounded: at most 50k writes, whatever happens to `stop`.
            for i in 0..50_000u32 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let key = format!("k/{i:06}");
                match client.put(key.clone(), format!("v{i}"), None).await {
                    Ok(r) => {
                        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
                        a.lock().unwrap().push((key, rev));
                    }
                    Err(e) => panic!("write {key} failed: {e}"),
                }
            }
        });
        // Some data before the first snapshot.
        while acked.lock().unwrap().len() < 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Loaded {
            member,
            acked,
            stop,
            writer: Some(writer),
        }
    }

    async fn stop_writes(&mut self) -> Vec<(String, i64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.writer.take() {
            w.await.unwrap();
        }
        self.acked.lock().unwrap().clone()
    }

    async fn backup(
        &self,
        dest: &Destination,
        cluster: &str,
        c: Compression,
        e: Option<&Encryption>,
    ) -> Manifest {
        let src = snapshot_from_member(
            std::slice::from_ref(&self.member.client_url),
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(src.meta.revision > 1, "{:?}", src.meta);
        assert_ne!(src.meta.cluster_id, 0);
        upload(dest, cluster, src.stream, src.meta, c, e)
            .await
            .unwrap()
    }
}

fn ferrokv_bin() -> PathBuf {
    Backend::Ferrokv.binary().unwrap()
}

/// The environment the CLI reads for `server`.
fn cli_env(server: Option<&ObjectServer>, ca_file: Option<&Path>) -> Vec<(String, String)> {
    let Some(s) = server else { return vec![] };
    let mut env = Vec::new();
    let mut put = |k: &str, v: String| env.push((k.to_string(), v));
    match s.kind {
        Kind::S3 => {
            put("AWS_ACCESS_KEY_ID", s.access_key.clone());
            put("AWS_SECRET_ACCESS_KEY", s.secret_key.clone());
            put("AWS_ENDPOINT_URL", s.endpoint.clone());
            if let Some(ca) = ca_file {
                put("AWS_CA_BUNDLE", ca.display().to_string());
            }
        }
        Kind::Azure => {
            put(
                "AZURE_STORAGE_ACCOUNT_NAME",
                objstore::AZURITE_ACCOUNT.into(),
            );
            put("AZURE_STORAGE_ACCOUNT_KEY", objstore::AZURITE_KEY.into());
            put("AZURE_STORAGE_ENDPOINT", s.endpoint.clone());
        }
        Kind::Gcs => {
            put(
                "GOOGLE_SERVICE_ACCOUNT_JSON",
                objstore::FAKE_GCS_SERVICE_ACCOUNT.into(),
            );
            put("GOOGLE_STORAGE_ENDPOINT", s.endpoint.clone());
        }
    }
    env
}

/// The library's config for `url` on `server`, from the same names the CLI reads.
fn config(url: &str, server: Option<&ObjectServer>) -> StoreConfig {
    let env: BTreeMap<String, String> = cli_env(server, None).into_iter().collect();
    let mut cfg = StoreConfig::from_lookup(url, |k| env.get(k).cloned()).unwrap();
    if let Some(s) = server {
        cfg.ca_pem = s.ca_pem.clone();
    }
    cfg
}

fn run_cli(args: &[String], env: &[(String, String)]) -> std::process::Output {
    Command::new(ferrokv_bin())
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

/// `ferrokv snapshot restore <source>` into a new member, started; checks it serves exactly
/// the acknowledged writes at or below the manifest's revision, at that revision.
async fn restore_and_check(
    source: &str,
    extra: &[String],
    env: &[(String, String)],
    manifest: &Manifest,
    acked: &[(String, i64)],
) {
    let mut m = Member::reserve(Backend::Ferrokv, MemberOpts::default(), "m1").unwrap();
    let mut args: Vec<String> = vec![
        "snapshot".into(),
        "restore".into(),
        source.into(),
        "--name=m1".into(),
        format!("--data-dir={}", m.data_dir().display()),
        format!("--initial-cluster={}", m.initial_cluster),
        format!("--initial-advertise-peer-urls={}", m.peer_url),
        format!("--initial-cluster-token={}", m.opts.token),
    ];
    args.extend_from_slice(extra);
    let out = run_cli(&args, env);
    assert!(
        out.status.success(),
        "restore {source}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("revision {}", manifest.revision)),
        "{stdout}"
    );
    m.start_process().unwrap();
    m.wait_ready().await.unwrap();
    let mut c = m.client().await.unwrap();
    let got = c
        .get("k/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let revision = got.header().unwrap().revision();
    assert_eq!(revision, manifest.revision, "restored revision");
    let have: Vec<String> = got
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = acked
        .iter()
        .filter(|(_, r)| *r <= manifest.revision)
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(
        have.len(),
        want.len(),
        "key count at revision {}",
        manifest.revision
    );
    assert_eq!(have, want, "keys at revision {}", manifest.revision);
    // The restored keyspace is a new cluster.
    assert_ne!(got.header().unwrap().cluster_id(), manifest.cluster_id);
}

/// Every store × {none, zstd} × {plain, encrypted}: a backup under write load, then
/// `ferrokv snapshot restore` by manifest URL, by data-object URL and by destination (latest).
async fn round_trip(kind: Option<Kind>) {
    let server = match kind {
        Some(Kind::S3) => Some(ObjectServer::s3(&[BUCKET], None).await.unwrap()),
        Some(Kind::Azure) => Some(ObjectServer::azurite(&[BUCKET]).await.unwrap()),
        Some(Kind::Gcs) => Some(ObjectServer::gcs(&[BUCKET]).await.unwrap()),
        None => None,
    };
    let dir = tempfile::tempdir().unwrap();
    let url = match kind {
        Some(Kind::S3) => format!("s3://{BUCKET}/prod/etcd"),
        Some(Kind::Azure) => format!("az://{BUCKET}/prod/etcd"),
        // Same keys as the file store the GCS objects are seeded from (see below).
        Some(Kind::Gcs) => format!("gs://{BUCKET}"),
        None => format!("file://{}/store", dir.path().display()),
    };
    let dest = Destination::open(&config(&url, server.as_ref())).unwrap();
    dest.check().await.unwrap();
    // fake-gcs-server does not serve the XML API object_store writes with: for GCS the
    // backups are written to a file store and copied in with the emulator's JSON API, and
    // everything else (list, select, download, restore) goes through gs://.
    let seed_root = dir.path().join("seed");
    let upload_dest = match kind {
        Some(Kind::Gcs) => {
            Destination::open(&StoreConfig::new(format!("file://{}", seed_root.display()))).unwrap()
        }
        _ => dest.clone(),
    };
    let key = Encryption::from_key(KEY);
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, base64_of(&KEY)).unwrap();

    let mut load = Loaded::start().await;
    let mut made = Vec::new();
    for (c, e) in [
        (Compression::None, None),
        (Compression::Zstd, None),
        (Compression::None, Some(&key)),
        (Compression::Zstd, Some(&key)),
    ] {
        let m = load.backup(&upload_dest, "ns/db", c, e).await;
        if let Some(gcs) = server.as_ref().filter(|s| s.kind == Kind::Gcs) {
            for key in [&m.object, &m.manifest] {
                let data = std::fs::read(seed_root.join(key)).unwrap();
                gcs.put_object(BUCKET, key, &data).unwrap();
            }
        }
        assert_eq!(m.compression, c);
        assert_eq!(m.encrypted(), e.is_some());
        if c == Compression::Zstd {
            assert!(m.stored_size < m.size, "{m:?}");
        }
        made.push(m);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let acked = load.stop_writes().await;
    let listed = list(&dest, "ns/db").await.unwrap();
    assert_eq!(listed, made, "list returns the manifests, oldest first");
    assert!(made.windows(2).all(|w| w[0].revision <= w[1].revision));

    // Library download: checks size and sha256.
    let file = dir.path().join("dl.db");
    download(&dest, &made[3], &file, Some(&key)).await.unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), made[3].size);
    let e = download(&dest, &made[3], &dir.path().join("nokey.db"), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("encryption key is needed"), "{e}");

    let env = cli_env(server.as_ref(), None);
    let key_flag = format!("--encryption-key-file={}", key_file.display());
    let loc = dest.location().clone();
    // By manifest URL, unencrypted.
    restore_and_check(&loc.url_of(&made[0].manifest), &[], &env, &made[0], &acked).await;
    // By data-object URL.
    restore_and_check(&loc.url_of(&made[1].object), &[], &env, &made[1], &acked).await;
    // Encrypted, by manifest URL.
    restore_and_check(
        &loc.url_of(&made[2].manifest),
        std::slice::from_ref(&key_flag),
        &env,
        &made[2],
        &acked,
    )
    .await;
    // The destination and cluster: the latest backup.
    restore_and_check(
        &url,
        &["--cluster=ns/db".into(), key_flag.clone()],
        &env,
        &made[3],
        &acked,
    )
    .await;
    // At or below a revision between two backups: the older one.
    let picked = select(&dest, "ns/db", &Selector::AtOrBelow(made[3].revision - 1))
        .await
        .unwrap();
    assert!(picked.revision < made[3].revision && picked.revision >= made[2].revision);
}

fn base64_of(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_s3() {
    round_trip(Some(Kind::S3)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_azure() {
    round_trip(Some(Kind::Azure)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_gcs() {
    round_trip(Some(Kind::Gcs)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_file() {
    round_trip(None).await
}

/// S3 over TLS signed by a test CA with path-style addressing, through the CLI both ways
/// (`snapshot save s3://...` and `snapshot restore s3://...`); without the CA it fails with a
/// message about TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_tls_custom_ca_path_style_via_cli() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::generate(dir.path()).unwrap();
    let server = ObjectServer::s3(&[BUCKET], Some(&tls)).await.unwrap();
    assert!(server.endpoint.starts_with("https://"));
    let mut load = Loaded::start().await;
    let acked_before = load.acked.lock().unwrap().len();
    assert!(acked_before > 0);
    let env = cli_env(Some(&server), Some(&tls.ca_cert));
    let mut with_member = env.clone();
    with_member.push(("AWS_S3_FORCE_PATH_STYLE".into(), "true".into()));
    let out = run_cli(
        &[
            "snapshot".into(),
            "save".into(),
            format!("s3://{BUCKET}/tls/site-a"),
            format!("--endpoints={}", load.member.client_url),
        ],
        &with_member,
    );
    assert!(
        out.status.success(),
        "save: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("Backup saved at s3://{BUCKET}/tls/site-a/")),
        "{stdout}"
    );
    let acked = load.stop_writes().await;

    let mut cfg = config(&format!("s3://{BUCKET}/tls"), Some(&server));
    cfg.path_style = true;
    let dest = Destination::open(&cfg).unwrap();
    let m = select(&dest, "site-a", &Selector::Latest).await.unwrap();
    assert_eq!(m.compression, Compression::Zstd);
    restore_and_check(&format!("s3://{BUCKET}/tls/site-a"), &[], &env, &m, &acked).await;

    // Without the CA the system roots do not know the server's certificate.
    let mut no_ca = cfg.clone();
    no_ca.ca_pem = None;
    let e = Destination::open(&no_ca)
        .unwrap()
        .check()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.to_lowercase().contains("certificate") || e.contains("TLS"),
        "{e}"
    );
}

/// A stream of `total` bytes that stops after `pause_at` bytes until `go` fires.
fn paused_stream(
    total: usize,
    pause_at: usize,
    go: tokio::sync::oneshot::Receiver<()>,
    reached: tokio::sync::oneshot::Sender<()>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    let chunk = 1 << 20;
    let state = (0usize, Some(go), Some(reached));
    Box::pin(futures::stream::unfold(
        state,
        move |(sent, mut go, mut reached)| async move {
            if sent >= total {
                return None;
            }
            if sent >= pause_at {
                if let Some(r) = reached.take() {
                    let _ = r.send(());
                }
                if let Some(g) = go.take() {
                    let _ = g.await;
                }
            }
            let n = chunk.min(total - sent);
            let data: Vec<u8> = (0..n).map(|i| ((sent + i) * 31 % 253) as u8).collect();
            Some((Ok(Bytes::from(data)), (sent + n, go, reached)))
        },
    ))
}

/// The server killed in the middle of an upload (40 MiB, killed after parts were sent): the
/// upload fails, no manifest and no object exist after the server comes back, and the next
/// upload succeeds. Run on Azurite, which persists across a restart (moto keeps nothing,
/// fake-gcs-server takes no XML uploads).
async fn killed_mid_upload(kind: Kind) {
    let mut server = match kind {
        Kind::Azure => ObjectServer::azurite(&[BUCKET]).await.unwrap(),
        _ => unreachable!(
            "moto keeps no state across a restart; fake-gcs-server takes no XML uploads"
        ),
    };
    // Azurite saves its metadata every 5 s; a container younger than that would not survive
    // the SIGKILL below.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let scheme = "az";
    let total: usize = 40 << 20;
    let url = format!("{scheme}://{BUCKET}/crash");
    let dest = Destination::open(&config(&url, Some(&server))).unwrap();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel();
    let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
    let meta = SnapshotMeta {
        cluster_id: 1,
        member_id: 2,
        revision: 10,
        raft_index: 11,
    };
    let d2 = dest.clone();
    let up = tokio::spawn(async move {
        upload(
            &d2,
            "c",
            paused_stream(total, total / 2, go_rx, reached_tx),
            meta,
            Compression::None,
            None,
        )
        .await
    });
    reached_rx.await.unwrap();
    // Let the parts in flight land, then crash the server.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.kill();
    go_tx.send(()).unwrap();
    let e = tokio::time::timeout(Duration::from_secs(120), up)
        .await
        .expect("the upload gives up")
        .unwrap()
        .unwrap_err();
    eprintln!("upload failed as it should: {e}");
    server.restart().await.unwrap();
    assert_eq!(
        list(&dest, "c").await.unwrap(),
        vec![],
        "no manifest after a failed upload"
    );
    let (go_tx, go_rx) = tokio::sync::oneshot::channel();
    let (reached_tx, _reached_rx) = tokio::sync::oneshot::channel();
    go_tx.send(()).unwrap();
    let m = upload(
        &dest,
        "c",
        paused_stream(total, 0, go_rx, reached_tx),
        meta,
        Compression::Zstd,
        None,
    )
    .await
    .unwrap();
    assert_eq!(list(&dest, "c").await.unwrap(), vec![m.clone()]);
    let file = tempfile::tempdir().unwrap();
    download(&dest, &m, &file.path().join("x"), None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_upload_azure() {
    killed_mid_upload(Kind::Azure).await
}

fn small_stream(n: usize) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    futures::stream::iter(vec![Ok(Bytes::from(vec![7u8; n]))])
}

fn meta(revision: i64) -> SnapshotMeta {
    SnapshotMeta {
        cluster_id: 9,
        member_id: 8,
        revision,
        raft_index: revision as u64 + 5,
    }
}

/// Wrong credentials and a missing bucket: clear errors before and during an upload, and no
/// manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_missing_bucket() {
    let s3 = ObjectServer::s3(&[BUCKET], None).await.unwrap();
    let mut bad = config(&format!("s3://{BUCKET}/x"), Some(&s3));
    bad.credentials
        .insert("AWS_SECRET_ACCESS_KEY".into(), "wrong".into());
    let dest = Destination::open(&bad).unwrap();
    let e = dest.check().await.unwrap_err().to_string();
    assert!(e.contains("refused the credentials"), "{e}");
    let e = upload(
        &dest,
        "c",
        small_stream(1000),
        meta(3),
        Compression::None,
        None,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("refused the credentials"), "{e}");
    let missing = Destination::open(&config("s3://no-such-bucket/x", Some(&s3))).unwrap();
    let e = missing.check().await.unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{e}");
    let e = upload(
        &missing,
        "c",
        small_stream(1000),
        meta(3),
        Compression::None,
        None,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("does not exist"), "{e}");
    let good = Destination::open(&config(&format!("s3://{BUCKET}/x"), Some(&s3))).unwrap();
    assert_eq!(list(&good, "c").await.unwrap(), vec![]);

    let az = ObjectServer::azurite(&[BUCKET]).await.unwrap();
    let mut bad = config(&format!("az://{BUCKET}/x"), Some(&az));
    bad.credentials
        .insert("AZURE_STORAGE_ACCOUNT_KEY".into(), base64_of(&[1u8; 64]));
    let e = Destination::open(&bad)
        .unwrap()
        .check()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("refused the credentials"), "{e}");
    let missing = Destination::open(&config("az://nothere/x", Some(&az))).unwrap();
    let e = missing.check().await.unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{e}");

    // Unknown schemes and missing keys are refused before any request.
    let e = Destination::open(&StoreConfig::new("ftp://b/x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown scheme"), "{e}");
    let e = Destination::open(&StoreConfig::new("s3://b/x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
}

/// Retention keeps the newest N, deletes by age, never touches another cluster's objects
/// (including one whose label shares a prefix), never deletes the only/newest backup, and
/// removes stale partial objects.
async fn retention(dest: &Destination, root: Option<&Path>) {
    let mut a = Vec::new();
    for rev in [10, 20, 30, 40] {
        a.push(
            upload(
                dest,
                "ns/a",
                small_stream(3000),
                meta(rev),
                Compression::Zstd,
                None,
            )
            .await
            .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b = upload(
        dest,
        "ns/ab",
        small_stream(3000),
        meta(5),
        Compression::None,
        None,
    )
    .await
    .unwrap();
    let nested = upload(
        dest,
        "ns/a/sub",
        small_stream(3000),
        meta(6),
        Compression::None,
        None,
    )
    .await
    .unwrap();
    let now = chrono::Utc::now();
    let deleted = apply_retention(dest, "ns/a", Some(2), None, now)
        .await
        .unwrap();
    assert_eq!(deleted, a[..2].to_vec());
    assert_eq!(list(dest, "ns/a").await.unwrap(), a[2..].to_vec());
    assert_eq!(list(dest, "ns/ab").await.unwrap(), vec![b.clone()]);
    assert_eq!(list(dest, "ns/a/sub").await.unwrap(), vec![nested.clone()]);
    // keep_last 0 still keeps the newest.
    let deleted = apply_retention(dest, "ns/a", Some(0), None, now)
        .await
        .unwrap();
    assert_eq!(deleted, vec![a[2].clone()]);
    // Everything is far too old, but the newest good backup stays, here and for "ns/ab".
    let later = now + chrono::Duration::days(365);
    let day = Some(Duration::from_secs(86_400));
    assert_eq!(
        apply_retention(dest, "ns/a", None, day, later)
            .await
            .unwrap(),
        vec![]
    );
    assert_eq!(
        apply_retention(dest, "ns/ab", None, day, later)
            .await
            .unwrap(),
        vec![]
    );
    assert_eq!(list(dest, "ns/a").await.unwrap(), vec![a[3].clone()]);
    assert_eq!(list(dest, "ns/ab").await.unwrap(), vec![b]);
    assert_eq!(list(dest, "ns/a/sub").await.unwrap(), vec![nested]);

    // A partial object (no manifest) is left alone while young, removed once stale.
    if let Some(root) = root {
        let dir = root.join(&dest.location().prefix).join("ns/a");
        let partial = dir.join("20000101T000000000Z-00000000000000000001.snap.zst");
        std::fs::write(&partial, b"partial").unwrap();
        apply_retention(dest, "ns/a", Some(5), None, now)
            .await
            .unwrap();
        assert!(partial.exists());
        apply_retention(
            dest,
            "ns/a",
            Some(5),
            None,
            now + chrono::Duration::hours(2),
        )
        .await
        .unwrap();
        assert!(!partial.exists());
        assert_eq!(list(dest, "ns/a").await.unwrap(), vec![a[3].clone()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_file() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Destination::open(&StoreConfig::new(format!(
        "file://{}",
        dir.path().display()
    )))
    .unwrap();
    retention(&dest, Some(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_s3() {
    let s3 = ObjectServer::s3(&[BUCKET], None).await.unwrap();
    let dest = Destination::open(&config(&format!("s3://{BUCKET}/keep"), Some(&s3))).unwrap();
    retention(&dest, None).await;
}

/// A flipped byte in the stored object fails the download (and `snapshot restore`) with a
/// clear error, leaving no file or data dir behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_object_fails_download_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let url = format!("file://{}", root.display());
    let dest = Destination::open(&StoreConfig::new(&url)).unwrap();
    let key = Encryption::from_key(KEY);
    let mut load = Loaded::start().await;
    let plain = load.backup(&dest, "c", Compression::None, None).await;
    let zstd = load.backup(&dest, "c", Compression::Zstd, None).await;
    let enc = load.backup(&dest, "c", Compression::Zstd, Some(&key)).await;
    load.stop_writes().await;
    for (m, want) in [
        (&plain, "sha256"),
        (&zstd, "damaged"),
        (&enc, "fails authentication"),
    ] {
        let obj = root.join(&m.object);
        let len = std::fs::metadata(&obj).unwrap().len();
        objstore::flip_byte(&obj, len / 2).unwrap();
        let to = dir.path().join("out").join("snap.db");
        let e = download(&dest, m, &to, Some(&key))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("is damaged") && e.contains(want), "{e}");
        assert!(e.contains(&m.object), "names the object: {e}");
        assert!(!to.exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("out")).unwrap().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    // The CLI names the mismatch and creates no data dir.
    let data_dir = dir.path().join("restored");
    let out = run_cli(
        &[
            "snapshot".into(),
            "restore".into(),
            format!("{url}/{}", plain.manifest),
            format!("--data-dir={}", data_dir.display()),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is damaged: sha256"), "{stderr}");
    assert!(
        stderr.contains(&plain.sha256),
        "names the expected sha256: {stderr}"
    );
    assert!(!data_dir.exists());
}

/// The operator streams from members that require client certificates: `snapshot_from_member`
/// with the CA and a client identity works (and the header names the member and cluster);
/// without the client certificate it fails, naming the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_from_a_member_with_mutual_tls() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::generate(dir.path()).unwrap();
    let opts = MemberOpts {
        tls: Some(tls.clone()),
        client_cert_auth: true,
        ..Default::default()
    };
    let member = Member::start(Backend::Ferrokv, opts).await.unwrap();
    let mut c = member.client().await.unwrap();
    let put = c.put("a", "1", None).await.unwrap();
    let read = |p: &Path| Some(std::fs::read(p).unwrap());
    let full = ferrokv_backup::MemberTls {
        ca_pem: read(&tls.ca_cert),
        cert_pem: read(&tls.client_cert),
        key_pem: read(&tls.client_key),
    };
    let status = c.status().await.unwrap();
    let mut src = snapshot_from_member(
        &["127.0.0.1:1".to_string(), member.client_url.clone()],
        Some(&full),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(
        src.endpoint, member.client_url,
        "the dead endpoint is skipped"
    );
    assert_eq!(src.meta.revision, put.header().unwrap().revision());
    assert_eq!(src.meta.member_id, status.header().unwrap().member_id());
    assert_eq!(src.meta.cluster_id, status.header().unwrap().cluster_id());
    assert!(src.meta.raft_index > 0);
    let mut bytes = 0;
    while let Some(chunk) = src.stream.next().await {
        bytes += chunk.unwrap().len();
    }
    assert!(bytes > 32 && (bytes - 32) % 512 == 0, "{bytes}");

    let no_cert = ferrokv_backup::MemberTls {
        ca_pem: read(&tls.ca_cert),
        ..Default::default()
    };
    let e = snapshot_from_member(
        std::slice::from_ref(&member.client_url),
        Some(&no_cert),
        Duration::from_secs(2),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains(&member.client_url), "{e}");
}
