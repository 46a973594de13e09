//! etcd's files and tools on ferrokv data dirs, and the other way round: the WAL, the
//! `member/snap/*.snap` files and the entries themselves (etcd's `InternalRaftRequest`) are in
//! etcd's formats, so etcd-dump-logs v3.6 reads a ferrokv data dir and prints, byte for byte,
//! what `ferrokv dump-logs` prints (and the other way round on an etcd 3.6 data dir), the same
//! etcdctl operations leave the same request lines in both logs, `ETCDCTL_API=2 etcdctl
//! backup` never changes a file of the data dir it reads, and data dirs of ferrokv's previous
//! WAL format and of its previous entry encoding open with nothing lost.

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

/// For entries of ferrokv's previous encoding (which etcd-dump-logs misreads): every line
/// that is not an entry's data must be the same: the snapshot, metadata, count and header
/// lines, and each entry's term, index and type.
fn assert_same_skeleton(etcd: &str, ferrokv: &str) {
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
    assert_eq!(etcd, ours, "etcd-dump-logs and ferrokv dump-logs differ");
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
    assert_eq!(etcd, ours, "etcd-dump-logs and ferrokv dump-logs differ");
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
    assert_same_skeleton(&etcd, &ferrokv_dump(&dir));
    assert_eq!(checksums(&dir), before);
    assert!(
        !before
            .keys()
            .any(|p| p.to_string_lossy().ends_with(".broken")),
        "{before:?}"
    );
}

/// The normal entries' request lines of a dump, with what differs by nature masked: request,
/// lease and member ids, tokens, password hashes, client URLs (ports). Empty entries (a new
/// leader's) are left out, and so are the two entries etcd proposes by itself at start, which
/// ferrokv does not (it keeps no cluster version and no start-up alarm query):
/// `cluster_version_set` and `alarm:<>`.
fn request_lines(dump: &str) -> Vec<String> {
    dump.lines()
        .filter_map(|l| {
            let c: Vec<&str> = l.splitn(4, '\t').collect();
            (c.len() == 4 && c[2] == "norm").then(|| c[3].to_string())
        })
        .filter(|d| {
            !d.is_empty() && !d.contains("cluster_version_set:") && !d.ends_with("> alarm:<> ")
        })
        .map(|d| {
            let d = mask_after(&d, &["ID:", "lease:", "member_ID:"], |c| c.is_ascii_digit());
            mask_quoted(&d, &["simple_token:", "hashedPassword:", "client_urls:"])
        })
        .collect()
}

/// Replaces the run of `keep` characters after each of `prefixes` with `N`.
fn mask_after(s: &str, prefixes: &[&str], keep: impl Fn(char) -> bool) -> String {
    let mut out = String::new();
    let mut rest = s;
    'outer: while !rest.is_empty() {
        for p in prefixes {
            if let Some(tail) = rest.strip_prefix(p) {
                out.push_str(p);
                let n = tail.find(|c: char| !keep(c)).unwrap_or(tail.len());
                out.push_str(if n > 0 { "N" } else { "" });
                rest = &tail[n..];
                continue 'outer;
            }
        }
        let ch = rest.chars().next().unwrap();
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    out
}

/// Replaces the quoted string after each of `prefixes` with `"…"`.
fn mask_quoted(s: &str, prefixes: &[&str]) -> String {
    let mut out = String::new();
    let mut rest = s;
    'outer: while !rest.is_empty() {
        for p in prefixes {
            if let Some(tail) = rest.strip_prefix(p).and_then(|t| t.strip_prefix('"')) {
                out.push_str(p);
                out.push_str("\"…\"");
                let end = tail.find('"').map_or(tail.len(), |i| i + 1);
                rest = &tail[end..];
                continue 'outer;
            }
        }
        let ch = rest.chars().next().unwrap();
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    out
}

/// etcdctl 3.6 on `m`; the command must succeed (unless `may_fail`).
fn ctl36(m: &Member, args: &[&str], stdin: Option<&str>) -> String {
    use ferrokv_tests::etcdctl::{run_with, Ctl};
    let mut all = m.ctl_flags();
    all.extend(args.iter().map(|s| s.to_string()));
    let out = run_with(Ctl::V36, &all, stdin);
    assert!(
        out.success(),
        "{}: etcdctl {args:?}: {}\n{}",
        m.backend.name(),
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// What an operator does with etcdctl 3.6: puts, a delete, a txn, a lease with a key and a
/// lease revoked, a compaction, users and roles with permissions, a password change, auth
/// enabled, writes as a user (each etcdctl run authenticates first), permission changes,
/// a user and a role deleted.
fn etcdctl_workload(m: &Member) {
    let c = |args: &[&str]| ctl36(m, args, None);
    for i in 1..=3 {
        c(&["put", &format!("k{i}"), &format!("v{i}")]);
    }
    c(&["del", "k1"]);
    ctl36(
        m,
        &["txn"],
        Some("value(\"k2\") = \"v2\"\n\nput t yes\n\nput t no\n\n"),
    );
    let lease = c(&["lease", "grant", "100000"]);
    let lease = lease.split_whitespace().nth(1).unwrap().to_string();
    c(&["put", "leased", "x", &format!("--lease={lease}")]);
    let other = c(&["lease", "grant", "600"]);
    let other = other.split_whitespace().nth(1).unwrap().to_string();
    c(&["lease", "revoke", &other]);
    c(&["compaction", "3"]);
    c(&["user", "add", "root:rootpw"]);
    c(&["role", "add", "root"]);
    c(&["user", "grant-role", "root", "root"]);
    c(&["user", "add", "alice:alicepw"]);
    c(&["role", "add", "w"]);
    c(&[
        "role",
        "grant-permission",
        "w",
        "readwrite",
        "a",
        "--prefix=true",
    ]);
    c(&["role", "grant-permission", "w", "read", "r1", "r9"]);
    c(&["user", "grant-role", "alice", "w"]);
    c(&["user", "add", "bob", "--no-password"]);
    ctl36(
        m,
        &["user", "passwd", "alice", "--interactive=false"],
        Some("alicepw2\n"),
    );
    c(&["auth", "enable"]);
    c(&["--user=alice:alicepw2", "put", "a1", "one"]);
    c(&["--user=alice:alicepw2", "del", "a", "--prefix"]);
    c(&[
        "--user=root:rootpw",
        "role",
        "revoke-permission",
        "w",
        "a",
        "--prefix=true",
    ]);
    c(&["--user=root:rootpw", "user", "revoke-role", "alice", "w"]);
    c(&["--user=root:rootpw", "user", "delete", "bob"]);
    c(&["--user=root:rootpw", "role", "delete", "w"]);
    c(&["--user=root:rootpw", "auth", "disable"]);
}

/// The same etcdctl operations leave the same request lines in a ferrokv log as in an etcd
/// 3.6 log (each dump read by both tools, which agree byte for byte), headers included: the
/// user and the auth revision of every request.
#[tokio::test]
async fn the_same_etcdctl_ops_leave_the_same_entries_as_in_etcd36() {
    let mut dumps = Vec::new();
    for b in [Backend::Etcd36, Backend::Ferrokv] {
        let mut m = Member::start(b, MemberOpts::default()).await.unwrap();
        etcdctl_workload(&m);
        m.terminate();
        let dir = m.data_dir();
        let etcd = etcd_dump(&dir);
        let ours = ferrokv_dump(&dir);
        assert_eq!(etcd, ours, "{}: the two tools differ", b.name());
        dumps.push(ours);
    }
    let (etcd, ferrokv) = (request_lines(&dumps[0]), request_lines(&dumps[1]));
    assert!(
        etcd.iter()
            .any(|l| l.contains("username:\"alice\" auth_revision:")),
        "{etcd:#?}"
    );
    if etcd != ferrokv {
        let n = etcd.len().max(ferrokv.len());
        let diff: Vec<String> = (0..n)
            .filter(|i| etcd.get(*i) != ferrokv.get(*i))
            .map(|i| {
                format!(
                    "#{i}\n  etcd:    {:?}\n  ferrokv: {:?}",
                    etcd.get(i),
                    ferrokv.get(i)
                )
            })
            .collect();
        panic!("request lines differ:\n{}", diff.join("\n"));
    }
}

/// A data dir written by ferrokv before its entries took etcd's format (made by the main
/// binary of then with an etcdctl 3.6 workload: puts, a delete, a txn, leases, a compaction,
/// users, roles, permissions, a password change, auth enabled, writes as alice, permission
/// changes; shipped without its keyspace, so every entry replays from the WAL). Every entry
/// applies as it did then, permission checks included (they were made when proposed).
#[tokio::test]
async fn a_data_dir_of_the_previous_entry_encoding_replays_with_nothing_lost() {
    let fixture = workspace_root().join("tests/fixtures/legacy-entries-datadir.tar.gz");
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
    let root = ["--user=root:rootpw"];
    let c = |args: &[&str]| ctl36(&m, &[&root[..], args].concat(), None);
    let kvs: Vec<String> = c(&["get", "", "--prefix"])
        .lines()
        .map(str::to_string)
        .collect();
    let want = [
        "a2", "two", "k2", "v2", "k3", "v3", "k4", "v4", "k5", "v5", "leased", "x", "t", "yes",
    ];
    assert_eq!(kvs, want);
    assert_eq!(c(&["user", "list"]), "alice\nroot\n");
    assert_eq!(c(&["role", "list"]), "root\nw\n");
    assert_eq!(
        c(&["role", "get", "w"]),
        "Role w\nKV Read:\n\tb\nKV Write:\n\tb\n"
    );
    assert_eq!(
        c(&["auth", "status"]),
        "Authentication Status: true\nAuthRevision: 15\n"
    );
    let lease = c(&["get", "leased", "-w", "json"]);
    assert!(lease.contains("\"lease\":"), "{lease}");
    // alice's password, set before the upgrade, and her permissions still hold.
    ctl36(&m, &["--user=alice:alicepw", "put", "b", "new"], None);
    let mut all = m.ctl_flags();
    all.extend(["--user=alice:alicepw", "put", "a3", "x"].map(String::from));
    let denied = ferrokv_tests::etcdctl::run_with(ferrokv_tests::etcdctl::Ctl::V36, &all, None);
    assert!(
        denied
            .stderr
            .contains("Error: etcdserver: permission denied"),
        "{}",
        denied.stderr
    );
    // bob changed his password, then was deleted.
    let mut all = m.ctl_flags();
    all.extend(["--user=bob:bob2pw", "get", "b"].map(String::from));
    let gone = ferrokv_tests::etcdctl::run_with(ferrokv_tests::etcdctl::Ctl::V36, &all, None);
    assert!(!gone.success(), "{}", gone.stdout);
    m.restart().await.unwrap();
    let c = |args: &[&str]| ctl36(&m, &[&root[..], args].concat(), None);
    assert_eq!(c(&["get", "b", "--print-value-only"]), "new\n");
    m.terminate();
    // Old entries and new ones, one log: both tools list every entry alike.
    let etcd = etcd_dump(&dir);
    let ours = ferrokv_dump(&dir);
    assert_same_skeleton(&etcd, &ours);
    assert!(
        ours.contains("header:<ID:") && ours.contains("put:<key:\"b\" value:\"new\" > "),
        "{ours}"
    );
}
