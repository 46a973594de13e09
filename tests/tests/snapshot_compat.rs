//! Snapshot files both ways between ferrokv and etcd 3.6.16: `etcdctl snapshot save` from
//! ferrokv restores with `etcdutl snapshot restore` into an etcd that serves the same keys,
//! revisions, leases and auth; an etcd snapshot restores with `ferrokv snapshot restore` into
//! a ferrokv that serves the same; damaged files are refused without leaving a data dir.

use std::path::{Path, PathBuf};
use std::process::Command;

use etcd_client::{
    Client, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, Permission, PutOptions,
};
use ferrokv_tests::member::etcd36_dir;
use ferrokv_tests::{Backend, Member, MemberOpts};

const LEASE_A: i64 = 0x1234;
const LEASE_B: i64 = 0x5678;

/// Puts (several revisions of a key), deletes, a compaction, leases with and without keys, a
/// txn, users and roles; returns the compacted revision.
async fn workload(c: &mut Client) -> i64 {
    c.lease_grant(600, Some(LeaseGrantOptions::new().with_id(LEASE_A)))
        .await
        .unwrap();
    c.lease_grant(300, Some(LeaseGrantOptions::new().with_id(LEASE_B)))
        .await
        .unwrap();
    for i in 0..3 {
        c.put("multi", format!("v{i}"), None).await.unwrap();
    }
    // Enough keys for several leaf pages and a branch level in etcd's key bucket.
    for i in 0..300 {
        c.put(format!("bulk/{i:04}"), "x".repeat(40 + i % 50), None)
            .await
            .unwrap();
    }
    c.put(
        "leased/1",
        "l1",
        Some(PutOptions::new().with_lease(LEASE_A)),
    )
    .await
    .unwrap();
    c.put(
        "leased/2",
        "l2",
        Some(PutOptions::new().with_lease(LEASE_A)),
    )
    .await
    .unwrap();
    c.put("gone", "soon", None).await.unwrap();
    c.delete("gone", None).await.unwrap();
    c.delete(
        "bulk/00",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    let compact = c.put("multi", "v3", None).await.unwrap();
    let compact = compact.header().unwrap().revision();
    c.compact(compact, None).await.unwrap();
    c.put("multi", "v4", None).await.unwrap();
    c.put("after", "compaction", None).await.unwrap();
    c.delete("bulk/0299", None).await.unwrap();
    c.put("big", vec![7u8; 20_000], None).await.unwrap();
    c.user_add("alice", "secret", None).await.unwrap();
    c.role_add("r1").await.unwrap();
    c.role_grant_permission("r1", Permission::read_write("app/").with_prefix())
        .await
        .unwrap();
    c.user_grant_role("alice", "r1").await.unwrap();
    compact
}

/// (key, value, create, mod, version, lease) of one key.
type Kv = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);
/// The same without the lease (reads at an older revision).
type OldKv = (Vec<u8>, Vec<u8>, i64, i64, i64);

/// Everything a client sees of the keyspace, normalised for comparison.
#[derive(Debug, PartialEq)]
struct Seen {
    revision: i64,
    /// (key, value, create, mod, version, lease) of every live key.
    kvs: Vec<Kv>,
    /// The keyspace as of one revision after the compaction (history kept).
    at_compact_plus_one: Vec<OldKv>,
    /// Reading below the compacted revision fails with etcd's error.
    below_compaction: String,
    /// (id, granted ttl, attached keys).
    leases: Vec<(i64, i64, Vec<Vec<u8>>)>,
    users: Vec<String>,
    role_perms: Vec<(i32, Vec<u8>, Vec<u8>)>,
    /// `HashKV` at the current revision: (hash, compact revision), etcd's algorithm on both.
    hash_kv: (u32, i64),
}

async fn observe(c: &mut Client, compacted: i64) -> Seen {
    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    let revision = all.header().unwrap().revision();
    let kvs = all
        .kvs()
        .iter()
        .map(|k| {
            (
                k.key().to_vec(),
                k.value().to_vec(),
                k.create_revision(),
                k.mod_revision(),
                k.version(),
                k.lease(),
            )
        })
        .collect();
    let old = c
        .get(
            "",
            Some(
                GetOptions::new()
                    .with_all_keys()
                    .with_revision(compacted + 1),
            ),
        )
        .await
        .unwrap();
    let at_compact_plus_one = old
        .kvs()
        .iter()
        .map(|k| {
            (
                k.key().to_vec(),
                k.value().to_vec(),
                k.create_revision(),
                k.mod_revision(),
                k.version(),
            )
        })
        .collect();
    let below_compaction = match c
        .get(
            "multi",
            Some(GetOptions::new().with_revision(compacted - 1)),
        )
        .await
    {
        Ok(r) => format!("read below the compaction answered: {r:?}"),
        Err(e) => ferrokv_tests::grpc_error(&e)
            .map(|(_, m)| m)
            .unwrap_or_else(|| e.to_string()),
    };
    let mut ids: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort();
    let mut leases = Vec::new();
    for id in ids {
        let t = c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        let mut keys: Vec<Vec<u8>> = t.keys().to_vec();
        keys.sort();
        leases.push((id, t.granted_ttl(), keys));
    }
    let mut users = c.user_list().await.unwrap().users().to_vec();
    users.sort();
    let role_perms = c
        .role_get("r1")
        .await
        .unwrap()
        .permissions()
        .iter()
        .map(|p| (p.get_type(), p.key().to_vec(), p.range_end().to_vec()))
        .collect();
    let hk = c.hash_kv(0).await.unwrap();
    Seen {
        hash_kv: (hk.hash(), hk.compact_version()),
        revision,
        kvs,
        at_compact_plus_one,
        below_compaction,
        leases,
        users,
        role_perms,
    }
}

async fn start(b: Backend) -> Member {
    Member::start(b, MemberOpts::default())
        .await
        .unwrap_or_else(|e| panic!("starting {}: {e}", b.name()))
}

/// `etcdctl snapshot save` (3.6) from `m` into `<scratch>/<name>`.
fn save(m: &Member, name: &str) -> PathBuf {
    let path = m.scratch_dir().join(name);
    let out = m.ctl36(&["snapshot", "save", path.to_str().unwrap()]);
    assert!(
        out.success() && out.stdout.contains("Snapshot saved at"),
        "etcdctl snapshot save from {}: {}{}",
        m.backend.name(),
        out.stdout,
        out.stderr
    );
    path
}

fn etcdutl(args: &[&str]) -> std::process::Output {
    let bin = etcd36_dir().unwrap().join("etcdutl");
    Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

fn ferrokv(args: &[&str]) -> std::process::Output {
    let bin = Backend::Ferrokv.binary().unwrap();
    Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Restores `file` with `tool` (etcdutl or ferrokv) into the data dir of a new member of
/// `backend`, starts it and returns it.
async fn restore_and_start(backend: Backend, file: &Path, extra: &[&str]) -> Member {
    let mut m = Member::reserve(backend, MemberOpts::default(), "m1").unwrap();
    let data_dir = format!("--data-dir={}", m.data_dir().display());
    let cluster = format!("--initial-cluster=m1={}", m.peer_url);
    let peer = format!("--initial-advertise-peer-urls={}", m.peer_url);
    let token = format!("--initial-cluster-token={}", m.opts.token);
    let mut args = vec![
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--name=m1",
        &data_dir,
        &cluster,
        &peer,
        &token,
    ];
    args.extend_from_slice(extra);
    let out = match backend {
        Backend::Ferrokv => ferrokv(&args),
        _ => etcdutl(&args),
    };
    assert!(
        out.status.success(),
        "restore into {}: {}",
        backend.name(),
        text(&out)
    );
    m.start_process().unwrap();
    m.wait_ready()
        .await
        .unwrap_or_else(|e| panic!("{} on the restored dir: {e}\n{}", backend.name(), m.log()));
    m
}

/// etcdutl's `snapshot status -w json`: (hash, revision, totalKey).
fn etcdutl_status(file: &Path) -> (u64, i64, i64) {
    let out = etcdutl(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    assert!(
        out.status.success(),
        "etcdutl snapshot status: {}",
        text(&out)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (
        v["hash"].as_u64().unwrap(),
        v["revision"].as_i64().unwrap(),
        v["totalKey"].as_i64().unwrap(),
    )
}

/// `ferrokv snapshot status`: (hash, revision, total keys).
fn ferrokv_status(file: &Path) -> (u64, i64, i64) {
    let out = ferrokv(&["snapshot", "status", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "ferrokv snapshot status: {}",
        text(&out)
    );
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| -> String {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {s}"))
            .trim()
            .to_string()
    };
    (
        u64::from_str_radix(&field("hash:"), 16).unwrap(),
        field("revision:").parse().unwrap(),
        field("total keys:").parse().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferrokv_snapshot_restores_into_etcd36() {
    let src = start(Backend::Ferrokv).await;
    let mut c = src.client().await.unwrap();
    let compacted = workload(&mut c).await;
    let before = observe(&mut c, compacted).await;
    assert!(
        before.below_compaction.contains("compacted"),
        "{}",
        before.below_compaction
    );
    let file = save(&src, "ferrokv.db");

    let (hash, revision, total) = etcdutl_status(&file);
    assert_eq!(revision, before.revision, "etcdutl's revision");
    assert_eq!(total, before.kvs.len() as i64, "etcdutl's total keys");
    assert_eq!(
        ferrokv_status(&file),
        (hash, revision, total),
        "ferrokv snapshot status agrees with etcdutl"
    );

    let etcd = restore_and_start(Backend::Etcd36, &file, &[]).await;
    let mut e = etcd.client().await.unwrap();
    assert_eq!(observe(&mut e, compacted).await, before);
    // And the restored etcd takes writes at the next revision.
    let put = e.put("new", "write", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), before.revision + 1);

    // ferrokv's own round trip of the same file.
    let back = restore_and_start(Backend::Ferrokv, &file, &[]).await;
    let mut b = back.client().await.unwrap();
    assert_eq!(observe(&mut b, compacted).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd36_snapshot_restores_into_ferrokv() {
    let src = start(Backend::Etcd36).await;
    let mut c = src.client().await.unwrap();
    let compacted = workload(&mut c).await;
    let before = observe(&mut c, compacted).await;
    let file = save(&src, "etcd.db");

    let (hash, revision, total) = etcdutl_status(&file);
    assert_eq!(
        (revision, total),
        (before.revision, before.kvs.len() as i64)
    );
    assert_eq!(ferrokv_status(&file), (hash, revision, total));

    let m = restore_and_start(Backend::Ferrokv, &file, &[]).await;
    let mut f = m.client().await.unwrap();
    assert_eq!(observe(&mut f, compacted).await, before);
    let put = f.put("new", "write", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), before.revision + 1);
    // Going back: ferrokv's snapshot of the restored keyspace restores into etcd again.
    let again = save(&m, "again.db");
    drop(f);
    let etcd = restore_and_start(Backend::Etcd36, &again, &[]).await;
    let mut e = etcd.client().await.unwrap();
    let got = e.get("new", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"write");
    assert_eq!(got.header().unwrap().revision(), before.revision + 1);

    // etcd's bare backend file (member/snap/db, no hash) needs --skip-hash-check, as etcdutl.
    let bare = src.scratch_dir().join("bare.db");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&bare, &bytes[..bytes.len() - 32]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let refused = dir.path().join("refused.etcd");
    let out = ferrokv(&[
        "snapshot",
        "restore",
        bare.to_str().unwrap(),
        &format!("--data-dir={}", refused.display()),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--skip-hash-check"), "{}", text(&out));
    assert!(!refused.exists());
    let bare_member = restore_and_start(Backend::Ferrokv, &bare, &["--skip-hash-check"]).await;
    let mut bm = bare_member.client().await.unwrap();
    assert_eq!(observe(&mut bm, compacted).await, before);
}

/// Damaged etcd snapshots: a clear error from both `status` and `restore`, and nothing left
/// where the data dir would have been.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_etcd_snapshots_are_refused() {
    let src = start(Backend::Etcd36).await;
    let mut c = src.client().await.unwrap();
    for i in 0..500 {
        c.put(format!("k{i:04}"), "v".repeat(100), None)
            .await
            .unwrap();
    }
    let file = save(&src, "etcd.db");
    let good = std::fs::read(&file).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let mut flipped = good.clone();
    let mid = good.len() / 2;
    flipped[mid] ^= 0x40;
    // Damaged pages in a bare file (no hash to catch them): the page checks must. Every
    // page header but the metas' is overwritten, so the tree's root surely is.
    let mut bad_page = good[..good.len() - 32].to_vec();
    for page in bad_page.chunks_mut(4096).skip(2) {
        page[..16].fill(0xee);
    }
    let cases: Vec<(&str, PathBuf, &[&str], &str)> = vec![
        (
            "truncated",
            write("truncated.db", &good[..mid]),
            &[],
            "truncated",
        ),
        (
            "truncated at a page boundary plus a hash's length",
            write("cut.db", &good[..8 * 4096 + 32]),
            &[],
            "SHA-256 mismatch",
        ),
        (
            "bit flip",
            write("flipped.db", &flipped),
            &[],
            "SHA-256 mismatch",
        ),
        (
            "junk",
            write("junk.db", b"not a snapshot at all"),
            &[],
            "snapshot",
        ),
        (
            "bad page, no hash",
            write("bad-page.db", &bad_page),
            &["--skip-hash-check"],
            "page",
        ),
    ];
    for (name, path, extra, want) in cases {
        let target = dir.path().join(format!("{}.etcd", name.replace(' ', "-")));
        let mut args = vec![
            "snapshot".to_string(),
            "restore".into(),
            path.display().to_string(),
            format!("--data-dir={}", target.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ferrokv(&args);
        let msg = text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {msg}");
        assert!(msg.contains(want), "{name}: wanted {want:?} in {msg}");
        assert!(!msg.contains("panicked"), "{name}: {msg}");
        assert!(!target.exists(), "{name}: a data dir was left behind");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".ferrokv-restore")
            })
            .collect();
        assert!(leftovers.is_empty(), "{name}: {leftovers:?}");
        if extra.is_empty() {
            let out = ferrokv(&["snapshot", "status", path.to_str().unwrap()]);
            assert!(!out.status.success(), "{name}: status accepted it");
            assert!(!text(&out).contains("panicked"), "{name}: {}", text(&out));
        }
    }
    // The intact file still restores (the cases above did not damage it).
    let ok = dir.path().join("ok.etcd");
    let out = ferrokv(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        &format!("--data-dir={}", ok.display()),
    ]);
    assert!(out.status.success(), "{}", text(&out));
}
