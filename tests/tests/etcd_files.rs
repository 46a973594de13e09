//! etcd's files and tools on ferrokv data dirs, and the other way round: the WAL and the
//! `member/snap/*.snap` files are in etcd's formats, so etcd-dump-logs v3.6 reads a ferrokv
//! data dir (and prints what `ferrokv dump-logs` prints), ferrokv reads (and appends to) an
//! etcd 3.6 data dir's WAL, `ETCDCTL_API=2 etcdctl backup` never changes a file of the data
//! dir it reads, and a data dir of ferrokv's previous WAL format opens with nothing lost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use etcd_client::{Client, Compare, CompareOp, MemberAddOptions, Txn, TxnOp};
use ferrokv_tests::etcd_tools::etcd_dump_logs;
use ferrokv_tests::member::workspace_root;
use ferrokv_tests::{Backend, Member, MemberOpts};
use sha2::{Digest, Sha256};

/// Path -> SHA-256 of every file under `dir` (names relative to it).
fn checksums(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for ent in std::fs::read_dir(dir).unwrap() {
            let path = ent.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                let sum: String = Sha256::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                out.insert(path.strip_prefix(root).unwrap().to_path_buf(), sum);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn etcd_dump(data_dir: &Path) -> String {
    let out = run(Command::new(etcd_dump_logs().unwrap()).arg(data_dir));
    assert!(
        out.status.success(),
        "etcd-dump-logs {} failed: {}\n{}",
        data_dir.display(),
        String::from_utf8_lossy(&out.stderr),
        stdout(&out)
    );
    stdout(&out)
}

fn ferrokv_dump(data_dir: &Path) -> String {
    let bin = Backend::Ferrokv.binary().unwrap();
    let out = run(Command::new(bin).arg("dump-logs").arg(data_dir));
    assert!(
        out.status.success(),
        "ferrokv dump-logs {} failed: {}",
        data_dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// The lines of both dumps must be the same, but for the data column of normal entries:
/// etcd decodes it as its `InternalRaftRequest` (printing ferrokv's requests as raw bytes,
/// newlines included), ferrokv as its own request encoding. So compared are every line that
/// is not an entry's data: the snapshot, metadata, count and header lines, and each entry's
/// term, index and type.
fn assert_same_dump(etcd: &str, ferrokv: &str) {
    fn skeleton(dump: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut in_entries = false;
        for l in dump.lines() {
            let c: Vec<&str> = l.split('\t').collect();
            let is_entry = c.len() >= 3
                && c[0].trim().parse::<u64>().is_ok()
                && c[1].trim().parse::<u64>().is_ok();
            if is_entry {
                out.push(c[..3].join("\t"));
            } else if l.starts_with("Entry types") || !in_entries {
                out.push(l.to_string());
            }
            in_entries |= l.starts_with("term\t");
        }
        out
    }
    assert_eq!(
        skeleton(etcd),
        skeleton(ferrokv),
        "etcd-dump-logs:\n{etcd}\nferrokv dump-logs:\n{ferrokv}"
    );
}

/// Puts, a delete, a txn, a lease grant and revoke, a compaction and a learner added.
async fn workload(c: &mut Client) {
    for i in 0..5 {
        c.put(format!("k{i}"), format!("v{i}"), None).await.unwrap();
    }
    c.delete("k0", None).await.unwrap();
    let txn = Txn::new()
        .when([Compare::value("k1", CompareOp::Equal, "v1")])
        .and_then([TxnOp::put("t", "yes", None)])
        .or_else([TxnOp::put("t", "no", None)]);
    c.txn(txn).await.unwrap();
    let lease = c.lease_grant(600, None).await.unwrap().id();
    c.lease_revoke(lease).await.unwrap();
    let rev = c.get("t", None).await.unwrap().header().unwrap().revision();
    c.compact(rev, None).await.unwrap();
    c.member_add(
        ["http://127.0.0.1:1"],
        Some(MemberAddOptions::new().with_is_learner()),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn etcd_dump_logs_reads_a_ferrokv_data_dir_as_ferrokv_dump_logs_does() {
    let mut m = Member::start(Backend::Ferrokv, MemberOpts::default())
        .await
        .unwrap();
    let mut c = m.client().await.unwrap();
    workload(&mut c).await;
    m.terminate();
    let dir = m.data_dir();
    let before = checksums(&dir);

    let etcd = etcd_dump(&dir);
    let ours = ferrokv_dump(&dir);
    assert_same_dump(&etcd, &ours);
    // A real commit index (the last entry is committed on a one-member cluster).
    let last: u64 = ours
        .lines()
        .find_map(|l| l.strip_prefix("lastIndex="))
        .expect("entries listed")
        .parse()
        .unwrap();
    let commit_line = ours
        .lines()
        .find(|l| l.starts_with("nodeID="))
        .unwrap()
        .to_string();
    assert!(
        commit_line.contains(&format!("commitIndex={last} ")),
        "{commit_line} (last index {last})\n{ours}"
    );
    assert!(
        !ours.contains("commitIndex=1 "),
        "commit index stuck at 1:\n{ours}"
    );
    assert_eq!(
        checksums(&dir),
        before,
        "etcd-dump-logs changed the data dir"
    );
}

#[tokio::test]
async fn ferrokv_reads_and_appends_to_an_etcd36_data_dir() {
    let mut m = Member::start(Backend::Etcd36, MemberOpts::default())
        .await
        .unwrap();
    let mut c = m.client().await.unwrap();
    for i in 0..5 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    c.delete("k0", None).await.unwrap();
    m.terminate();
    let dir = m.data_dir();
    let before = checksums(&dir);
    let etcd = etcd_dump(&dir);
    let ours = ferrokv_dump(&dir);
    assert_same_dump(&etcd, &ours);
    assert!(ours.contains("WAL entries: "), "{ours}");
    assert_eq!(
        checksums(&dir),
        before,
        "ferrokv dump-logs changed the data dir"
    );
}

#[tokio::test]
async fn etcdctl_v2_backup_never_changes_the_ferrokv_data_dir() {
    let mut m = Member::start(Backend::Ferrokv, MemberOpts::default())
        .await
        .unwrap();
    let mut c = m.client().await.unwrap();
    workload(&mut c).await;
    m.terminate();
    let dir = m.data_dir();
    let before = checksums(&dir);
    let backup = tempfile::tempdir().unwrap();
    let etcdctl = PathBuf::from("/usr/bin/etcdctl");
    assert!(
        etcdctl.is_file(),
        "Debian's etcdctl 3.4 is missing: apt-get install -y etcd-client"
    );
    let out = run(Command::new(&etcdctl)
        .env("ETCDCTL_API", "2")
        .arg("backup")
        .arg("--data-dir")
        .arg(&dir)
        .arg("--backup-dir")
        .arg(backup.path().join("b")));
    eprintln!(
        "etcdctl backup: {} {}\n{}",
        out.status,
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        checksums(&dir),
        before,
        "etcdctl backup changed or renamed files of the data dir"
    );
}

#[tokio::test]
async fn a_data_dir_of_the_previous_wal_format_opens_with_nothing_lost() {
    // Made by ferrokv before the WAL and .snap files took etcd's formats: 30 puts k1..k30,
    // k3 deleted, `leased` on a lease; snapshot-count 20, so a snapshot marker and a .snap.
    let fixture = workspace_root().join("tests/fixtures/legacy-wal-datadir.tar.gz");
    assert!(fixture.is_file(), "missing fixture {}", fixture.display());
    let mut m = Member::reserve(Backend::Ferrokv, MemberOpts::default(), "m1").unwrap();
    let dir = m.data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let out = run(Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(&dir));
    assert!(out.status.success(), "untar: {out:?}");
    m.start_process().unwrap();
    m.wait_ready().await.unwrap();
    let mut c = m.client().await.unwrap();
    let got = c
        .get("k", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let mut keys: Vec<String> = got
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    keys.sort();
    let mut want: Vec<String> = (1..=30)
        .filter(|i| *i != 3)
        .map(|i| format!("k{i}"))
        .collect();
    want.sort();
    assert_eq!(keys, want);
    for kv in got.kvs() {
        assert_eq!(
            &kv.key()[1..],
            &kv.value()[1..],
            "value of {:?}",
            kv.key_str()
        );
    }
    let leased = c.get("leased", None).await.unwrap();
    assert_eq!(leased.kvs().len(), 1);
    assert_ne!(leased.kvs()[0].lease(), 0);
    // Still writable, and what it writes survives a restart.
    c.put("after", "upgrade", None).await.unwrap();
    m.restart().await.unwrap();
    let mut c = m.client().await.unwrap();
    assert_eq!(c.get("after", None).await.unwrap().kvs().len(), 1);
    assert_eq!(
        c.get(
            "k",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only()
            )
        )
        .await
        .unwrap()
        .count(),
        29
    );
    m.terminate();
    // Upgraded: etcd's tool reads it, without renaming any .snap to .broken.
    let before = checksums(&dir);
    let etcd = etcd_dump(&dir);
    assert_same_dump(&etcd, &ferrokv_dump(&dir));
    assert_eq!(checksums(&dir), before);
    assert!(
        !before
            .keys()
            .any(|p| p.to_string_lossy().ends_with(".broken")),
        "{before:?}"
    );
}
