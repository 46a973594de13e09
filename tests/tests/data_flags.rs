//! The data-dir flags against etcd 3.6.16, real processes on both sides: `--snapshot-count`
//! takes snapshots at the same raft indexes, `--max-snapshots`/`--max-wals` keep the `.snap`
//! files and WAL segments within their limits (and the member restarts with all its data),
//! and `--force-new-cluster` turns a stopped 3-member cluster into a one-member cluster with
//! every acknowledged key, the same cluster id, and room for a new member that catches up.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use ferrokv_tests::{Backend, Cluster, Member, MemberOpts};

const BACKENDS: [Backend; 2] = [Backend::Etcd36, Backend::Ferrokv];

/// `(term, index)` of every `<term:016x>-<index:016x>.snap` in the member's snap dir.
fn snap_files(m: &Member) -> Vec<(u64, u64)> {
    let dir = m.layout().snap();
    let mut out: Vec<(u64, u64)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".snap")?;
            let (t, i) = stem.split_once('-')?;
            Some((
                u64::from_str_radix(t, 16).ok()?,
                u64::from_str_radix(i, 16).ok()?,
            ))
        })
        .collect();
    out.sort_by_key(|(_, i)| *i);
    out
}

fn wal_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        })
        .count()
}

async fn applied_index(c: &mut Client) -> u64 {
    c.status().await.unwrap().raft_applied_index()
}

/// Sequential puts (one entry per committed batch) until the applied index reaches `target`.
async fn write_until_applied(c: &mut Client, target: u64) -> u64 {
    let mut i = 0u64;
    loop {
        let applied = applied_index(c).await;
        if applied >= target {
            return applied;
        }
        for _ in applied..target {
            c.put(format!("k{:06}", i % 1000), format!("v{i}"), None)
                .await
                .unwrap();
            i += 1;
        }
    }
}

/// Polls `check` for up to `timeout`; returns its last answer.
async fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> (bool, T)) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let (ok, v) = check();
        if ok || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The snapshot indexes `--snapshot-count=500` gives on each backend for the same sequential
/// workload up to applied index 2300: etcd snapshots at the end of the first batch that puts
/// the applied index more than 500 past the last snapshot (501, 1002, 1503, 2004).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_count_snapshots_at_etcds_indexes() {
    const COUNT: u64 = 500;
    const TARGET: u64 = 2300;
    let expected: BTreeSet<u64> = (1..)
        .map(|k| k * (COUNT + 1))
        .take_while(|i| *i <= TARGET)
        .collect();
    let mut got = Vec::new();
    for backend in BACKENDS {
        let opts = MemberOpts {
            snapshot_count: Some(COUNT),
            // Every snapshot file stays, so the whole sequence can be compared.
            extra_args: vec!["--max-snapshots=0".into()],
            ..MemberOpts::default()
        };
        let m = Member::start(backend, opts).await.unwrap();
        let mut c = m.client().await.unwrap();
        let applied = write_until_applied(&mut c, TARGET).await;
        assert!(
            applied < TARGET + COUNT / 2,
            "{backend:?}: applied {applied}"
        );
        let want_last = *expected.iter().next_back().unwrap();
        let snaps = eventually(Duration::from_secs(10), || {
            let s = snap_files(&m);
            (s.iter().any(|(_, i)| *i == want_last), s)
        })
        .await;
        // ferrokv's first boot writes the initial configuration as a snapshot at index 0
        // (raft-rs elects from it); it is no snapshot of applied entries, etcd has none.
        let indexes: BTreeSet<u64> = snaps.iter().map(|(_, i)| *i).filter(|i| *i > 0).collect();
        eprintln!("{backend:?}: snap files {snaps:?} (applied {applied})");
        got.push((backend, indexes));
    }
    for (backend, indexes) in &got {
        assert_eq!(indexes, &expected, "{backend:?}");
    }
    assert_eq!(got[0].1, got[1].1, "etcd 3.6 and ferrokv");
}

/// `--max-snapshots=2 --max-wals=2` with a snapshot every 21 entries and ~260 MB written:
/// after the purge round (etcd: every 30 s) at most 2 `.snap` files and 2 WAL segments are
/// left on both backends, and the member restarts with every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_snapshots_and_max_wals_purge_old_files() {
    const KEYS: usize = 260;
    const VALUE: usize = 1_000_000;
    for backend in BACKENDS {
        let mut extra = vec!["--max-snapshots=2".to_string(), "--max-wals=2".to_string()];
        if backend == Backend::Ferrokv {
            // etcd's segments are 64 MB; ferrokv's hidden test knob makes them 32 MiB, so
            // the 21 entries between snapshots fit in at most two segments, as in etcd.
            extra.push(format!("--experimental-wal-segment-bytes={}", 32 << 20));
        }
        let opts = MemberOpts {
            snapshot_count: Some(20),
            extra_args: extra,
            ..MemberOpts::default()
        };
        let mut m = Member::start(backend, opts).await.unwrap();
        let mut c = m.client().await.unwrap();
        let started = Instant::now();
        let mut most_snaps = 0;
        for i in 0..KEYS {
            let v = vec![b'a' + (i % 26) as u8; VALUE];
            c.put(format!("big/{i:04}"), v, None).await.unwrap();
            most_snaps = most_snaps.max(snap_files(&m).len());
        }
        let wrote = started.elapsed();
        let wal_dir = m.wal_dir();
        let (snaps, wals) = eventually(Duration::from_secs(45), || {
            let (s, w) = (snap_files(&m).len(), wal_files(&wal_dir));
            (s <= 2 && w <= 2, (s, w))
        })
        .await;
        eprintln!(
            "{backend:?}: wrote {KEYS} x {VALUE} B in {wrote:?}; at most {most_snaps} snap files \
             while writing; {snaps} snap files and {wals} wal segments after the purge"
        );
        assert!(snaps <= 2, "{backend:?}: {snaps} snap files");
        assert!(wals <= 2, "{backend:?}: {wals} wal segments");
        assert!(snaps >= 1 && wals >= 1, "{backend:?}: nothing left?");

        drop(c);
        m.terminate();
        m.start_process().unwrap();
        m.wait_ready().await.unwrap();
        let mut c = m.client().await.unwrap();
        let all = c
            .get(
                "big/",
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .unwrap();
        assert_eq!(all.kvs().len(), KEYS, "{backend:?}: keys after restart");
        for i in [0, KEYS / 2, KEYS - 1] {
            let r = c.get(format!("big/{i:04}"), None).await.unwrap();
            let v = r.kvs()[0].value();
            assert!(
                v.len() == VALUE && v.iter().all(|b| *b == b'a' + (i % 26) as u8),
                "{backend:?}: big/{i:04} after restart"
            );
        }
        c.put("after-restart", "ok", None).await.unwrap();
    }
}

/// What a forced cluster ends with: (name, slot) per member, and every key/value.
struct Forced {
    members: Vec<(String, Vec<String>)>,
    data: Vec<(String, String)>,
}

async fn kvs(c: &mut Client, serializable: bool) -> Vec<(String, String)> {
    let mut o = GetOptions::new().with_prefix();
    if serializable {
        o = o.with_serializable();
    }
    let r = c.get("key/", Some(o)).await.unwrap();
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn force_new_cluster_on(backend: Backend) -> Forced {
    let opts = MemberOpts::default();
    let mut cl = Cluster::start(backend, 3, opts).await.unwrap();
    let mut c = cl.client().await.unwrap();
    for i in 0..200 {
        c.put(format!("key/{i:03}"), format!("value-{i}"), None)
            .await
            .unwrap();
    }
    let before = c.member_list().await.unwrap();
    let cluster_id = before.header().unwrap().cluster_id();
    assert_eq!(before.members().len(), 3);
    let m1_id = cl.member_id("m1").await.unwrap();
    drop(c);
    for n in ["m2", "m3", "m1"] {
        cl.get_mut(n).unwrap().terminate();
    }

    let m1 = cl.get_mut("m1").unwrap();
    m1.opts.extra_args.push("--force-new-cluster".into());
    m1.start_process().unwrap();
    m1.wait_ready().await.unwrap();
    let mut c = m1.client().await.unwrap();
    let list = c.member_list().await.unwrap();
    let ids: Vec<u64> = list.members().iter().map(|m| m.id()).collect();
    assert_eq!(
        ids,
        vec![m1_id],
        "{backend:?}: only the forced member is left"
    );
    assert_eq!(
        list.header().unwrap().cluster_id(),
        cluster_id,
        "{backend:?}: the cluster id stays"
    );
    let data = kvs(&mut c, false).await;
    assert_eq!(data.len(), 200, "{backend:?}: every acknowledged key");
    c.put("key/after-force", "written", None).await.unwrap();

    // The forced member restarts normally afterwards (without the flag), still alone.
    m1.opts.extra_args.retain(|a| a != "--force-new-cluster");
    m1.terminate();
    m1.start_process().unwrap();
    m1.wait_ready().await.unwrap();

    // A new member joins the one-member cluster and catches up.
    let added = cl.add_member(false).await.unwrap();
    let new_member = cl.get(&added).unwrap();
    let mut nc = new_member.client().await.unwrap();
    let want = {
        let mut c = cl.get("m1").unwrap().client().await.unwrap();
        kvs(&mut c, false).await
    };
    let caught_up = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = kvs(&mut nc, true).await;
            if got == want || Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert_eq!(caught_up, want, "{backend:?}: the new member caught up");
    let mut c = cl.client().await.unwrap();
    c.put("key/two-members", "yes", None).await.unwrap();
    let list = c.member_list().await.unwrap();
    assert_eq!(list.header().unwrap().cluster_id(), cluster_id);
    let mut members: Vec<(String, Vec<String>)> = list
        .members()
        .iter()
        .map(|m| {
            let slot = m
                .peer_urls()
                .iter()
                .find_map(|u| cl.name_by_peer_url(u))
                .unwrap_or_default();
            (m.name().to_string(), vec![slot])
        })
        .collect();
    members.sort();
    let data = kvs(&mut c, false).await;
    Forced { members, data }
}

/// 3 members, writes, all stopped, one restarted with `--force-new-cluster`: one member, the
/// same cluster id, every acknowledged key, writes work, and a new member can join and catch
/// up; the member lists and data match etcd 3.6's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_keeps_the_data_and_drops_the_other_members() {
    let etcd = force_new_cluster_on(Backend::Etcd36).await;
    let ferrokv = force_new_cluster_on(Backend::Ferrokv).await;
    assert_eq!(
        etcd.members,
        vec![
            ("m1".to_string(), vec!["m1".to_string()]),
            ("m4".to_string(), vec!["m4".to_string()])
        ]
    );
    assert_eq!(ferrokv.members, etcd.members);
    assert_eq!(ferrokv.data, etcd.data);
}

/// `--force-new-cluster` on an empty data dir: etcd ignores it (only a member restarting
/// from its WAL is forced) and bootstraps `--initial-cluster` as usual; so does ferrokv.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_without_a_data_dir_bootstraps_as_usual() {
    let mut seen = Vec::new();
    for backend in BACKENDS {
        let opts = MemberOpts {
            extra_args: vec!["--force-new-cluster".into()],
            ..MemberOpts::default()
        };
        let m = Member::start(backend, opts).await.unwrap();
        let mut c = m.client().await.unwrap();
        c.put("key/x", "1", None).await.unwrap();
        let list = c.member_list().await.unwrap();
        let names: Vec<String> = list.members().iter().map(|m| m.name().into()).collect();
        seen.push((backend, names, kvs(&mut c, false).await));
    }
    assert_eq!(seen[0].1, vec!["m1".to_string()]);
    assert_eq!(seen[0].1, seen[1].1);
    assert_eq!(seen[0].2, seen[1].2);
}
