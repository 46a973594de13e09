//! A rolling upgrade across the raft entry format change (issue 9): a 3-member cluster of the
//! previous version (commit 29f8bdd, ferrokv's own entry encoding, built by
//! `scripts/build-ferrokv-old.sh`) is rolled one member at a time to this version on the same
//! data dirs while a writer runs puts, deletes, txns, leases with keys and compactions. After
//! each step every member must agree (the same keyspace, HashKV equal at the same revision)
//! and hold every acknowledged write; after the last, the cluster writes etcd's entry format
//! (`ferrokv dump-logs` shows etcd's request lines, headers included, for later entries).
//!
//! Without the entry format gate the previous version misreads the new entries (a compaction
//! as a lease revoke, a put not at all) and the cluster diverges or loses members.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use ferrokv_tests::{connect_endpoints, Backend, Cluster, Member, MemberOpts};
use tokio::sync::Mutex;

/// The previous version's binary: `FERROKV_OLD_BIN`, else where the build script caches it.
fn old_binary() -> PathBuf {
    let path = match std::env::var_os("FERROKV_OLD_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/ferrokv/ferrokv-29f8bdd/ferrokv"),
    };
    assert!(
        path.is_file(),
        "the previous ferrokv binary {} is missing: run scripts/build-ferrokv-old.sh \
         (part of `make deps`) or set FERROKV_OLD_BIN",
        path.display()
    );
    path
}

/// What the writer had acknowledged.
#[derive(Default)]
struct Acked {
    /// key -> value of acknowledged puts not deleted since.
    present: BTreeMap<String, String>,
    /// Keys whose delete (or lease revoke) was acknowledged.
    gone: Vec<String>,
    ops: u64,
    compactions: u64,
    revokes: u64,
    txns: u64,
}

struct Writer {
    acked: Arc<Mutex<Acked>>,
    /// Held by the writer for each operation, by the checks while they compare members.
    pause: Arc<Mutex<()>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Puts, deletes of earlier keys, txns, a lease with a key then its revoke, and a compaction,
/// in turns, through a client of every endpoint; failures (a member restarting) are retried
/// by moving on, and only acknowledged outcomes are recorded.
fn start_writer(mut client: Client) -> Writer {
    let acked = Arc::new(Mutex::new(Acked::default()));
    let pause = Arc::new(Mutex::new(()));
    let stop = Arc::new(AtomicBool::new(false));
    let (a, p, s) = (acked.clone(), pause.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let mut i: u64 = 0;
        while !s.load(Ordering::Relaxed) {
            let _g = p.lock().await;
            i += 1;
            let key = format!("w/{i:06}");
            let val = format!("v{i}");
            match i % 10 {
                // Delete an acknowledged key of earlier.
                3 => {
                    let victim = a.lock().await.present.keys().next().cloned();
                    if let Some(victim) = victim {
                        let ok = client.delete(victim.as_str(), None).await.is_ok();
                        let mut a = a.lock().await;
                        // A failed delete may still have committed: the key is then
                        // neither known present nor known gone.
                        a.present.remove(&victim);
                        if ok {
                            a.gone.push(victim);
                            a.ops += 1;
                        }
                    }
                }
                // A txn whose compare holds on an acknowledged key.
                5 => {
                    let target = a.lock().await.present.keys().last().cloned();
                    if let Some(target) = target {
                        let tkey = format!("t/{i:06}");
                        let txn = Txn::new()
                            .when([Compare::version(target.as_str(), CompareOp::Greater, 0)])
                            .and_then([TxnOp::put(tkey.as_str(), "yes", None)])
                            .or_else([TxnOp::put(tkey.as_str(), "no", None)]);
                        if let Ok(r) = client.txn(txn).await {
                            let mut a = a.lock().await;
                            // Only the writer deletes, and it holds the pause: still there.
                            assert!(r.succeeded(), "txn on {target} took the else branch");
                            a.present.insert(tkey, "yes".into());
                            a.txns += 1;
                            a.ops += 1;
                        }
                    }
                }
                // A lease with a key, then its revoke (which must take the key).
                7 => {
                    if let Ok(l) = client.lease_grant(600, None).await {
                        let lkey = format!("l/{i:06}");
                        let put = client
                            .put(
                                lkey.as_str(),
                                "leased",
                                Some(PutOptions::new().with_lease(l.id())),
                            )
                            .await;
                        if client.lease_revoke(l.id()).await.is_ok() {
                            let mut a = a.lock().await;
                            if put.is_ok() {
                                a.gone.push(lkey);
                            }
                            a.revokes += 1;
                            a.ops += 1;
                        }
                    }
                }
                // Compact a little behind the head.
                9 => {
                    if let Ok(r) = client.get("w/", None).await {
                        let rev = r.header().map_or(0, |h| h.revision()) - 5;
                        if rev > 0 && client.compact(rev, None).await.is_ok() {
                            let mut a = a.lock().await;
                            a.compactions += 1;
                            a.ops += 1;
                        }
                    }
                }
                _ => {
                    if client.put(key.as_str(), val.as_str(), None).await.is_ok() {
                        let mut a = a.lock().await;
                        a.present.insert(key, val);
                        a.ops += 1;
                    }
                }
            }
            drop(_g);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    Writer {
        acked,
        pause,
        stop,
        task,
    }
}

type Kv = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

/// The whole keyspace as `m` serves it locally, with the revision it is at.
async fn local_keyspace(m: &Member) -> Result<(i64, Vec<Kv>), String> {
    let mut c = m.client().await.map_err(|e| e.to_string())?;
    let r = c
        .get(
            vec![0u8],
            Some(GetOptions::new().with_from_key().with_serializable()),
        )
        .await
        .map_err(|e| e.to_string())?;
    let rev = r.header().map_or(0, |h| h.revision());
    let kvs = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    Ok((rev, kvs))
}

/// With the writer paused: every member runs, serves the same keyspace at the same revision,
/// has the same HashKV there, and holds what the writer had acknowledged.
async fn assert_agree(c: &mut Cluster, w: &Writer, step: &str) {
    let _paused = w.pause.lock().await;
    let mut client = c.client().await.unwrap();
    let head = client
        .get("w/", None)
        .await
        .unwrap_or_else(|e| panic!("{step}: linearizable read: {e}"))
        .header()
        .map_or(0, |h| h.revision());
    let names: Vec<String> = c.members().map(|m| m.name.clone()).collect();
    let mut spaces = Vec::new();
    for n in &names {
        let m = c.get_mut(n).unwrap();
        assert!(m.is_running(), "{step}: member {n} is not running");
        let deadline = Instant::now() + Duration::from_secs(20);
        let space = loop {
            match local_keyspace(m).await {
                Ok((rev, kvs)) if rev == head => break kvs,
                other if Instant::now() > deadline => {
                    panic!("{step}: member {n} never reached revision {head}: {other:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let mut mc = m.client().await.unwrap();
        let hk = mc
            .hash_kv(head)
            .await
            .unwrap_or_else(|e| panic!("{step}: HashKV of {n} at {head}: {e}"));
        spaces.push((n.clone(), space, (hk.hash(), hk.compact_version())));
    }
    let (first, space0, hash0) = &spaces[0];
    for (n, space, hash) in &spaces[1..] {
        assert!(
            space == space0,
            "{step}: the keyspace of {n} differs from {first}'s at revision {head}"
        );
        assert_eq!(
            hash, hash0,
            "{step}: HashKV (hash, compact revision) of {n} differs from {first}'s at {head}"
        );
    }
    let acked = w.acked.lock().await;
    let live: BTreeMap<String, String> = space0
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.0).into_owned(),
                String::from_utf8_lossy(&kv.1).into_owned(),
            )
        })
        .collect();
    for (k, v) in &acked.present {
        assert_eq!(
            live.get(k),
            Some(v),
            "{step}: acknowledged {k}={v} is missing"
        );
    }
    for k in &acked.gone {
        assert!(!live.contains_key(k), "{step}: {k} was deleted but is back");
    }
    eprintln!(
        "{step}: 3 members agree at revision {head} (hash {:#x}, compacted at {}); {} ops \
         acknowledged ({} txns, {} lease revokes, {} compactions)",
        hash0.0, hash0.1, acked.ops, acked.txns, acked.revokes, acked.compactions
    );
}

/// Lets the writer get at least `n` more operations acknowledged.
async fn let_writer_run(w: &Writer, n: u64) {
    let start = w.acked.lock().await.ops;
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.acked.lock().await.ops < start + n {
        assert!(
            Instant::now() < deadline,
            "the writer got fewer than {n} operations through in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_upgrade_across_the_entry_format_change_keeps_members_in_agreement() {
    let old = old_binary();
    let new = Backend::Ferrokv.binary().unwrap();
    let opts = MemberOpts {
        bin: Some(old),
        ..Default::default()
    };
    let mut c = Cluster::start(Backend::Ferrokv, 3, opts).await.unwrap();
    let endpoints = c.endpoints();
    let mut writer = start_writer(connect_endpoints(&endpoints, None).await.unwrap());
    let_writer_run(&writer, 60).await;
    assert_agree(&mut c, &writer, "all on the previous version").await;

    let names: Vec<String> = c.members().map(|m| m.name.clone()).collect();
    for (i, n) in names.iter().enumerate() {
        {
            let m = c.get_mut(n).unwrap();
            m.terminate();
            m.set_binary(new.clone());
        }
        // The writer goes on against the two members left.
        let_writer_run(&writer, 20).await;
        {
            let m = c.get_mut(n).unwrap();
            m.start_process().unwrap();
            m.wait_ready().await.unwrap();
        }
        let_writer_run(&writer, 60).await;
        assert_agree(&mut c, &writer, &format!("{} of 3 upgraded ({n})", i + 1)).await;
    }

    // Every member announced: later entries are in etcd's format.
    let_writer_run(&writer, 60).await;
    writer.stop.store(true, Ordering::Relaxed);
    (&mut writer.task).await.unwrap();
    let mut client = c.client().await.unwrap();
    for i in 0..5 {
        client
            .put(format!("post/{i}"), "after", None)
            .await
            .unwrap();
    }
    assert_agree(&mut c, &writer, "all upgraded").await;

    let m = c.get_mut(&names[0]).unwrap();
    m.terminate();
    let out = Command::new(&new)
        .arg("dump-logs")
        .arg(m.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ferrokv dump-logs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout);
    let line = |key: &str| {
        dump.lines()
            .find(|l| l.contains(&format!("put:<key:\"{key}\"")))
            .unwrap_or_else(|| panic!("no put of {key} in the dump:\n{dump}"))
            .to_string()
    };
    // The first writes were made by the previous version, in its encoding (no header).
    let before = line("w/000001");
    assert!(!before.contains("header:<"), "{before}");
    // Those after the last member was upgraded: etcd's request lines, header first.
    let after = line("post/4");
    assert!(after.contains("header:<ID:"), "{after}");
    // The switch itself: etcd's cluster version entry, proposed once every member announced.
    let switch = dump
        .lines()
        .find(|l| l.contains("cluster_version_set:<ver:\"3.6.0\""))
        .unwrap_or_else(|| panic!("no switch entry in the dump:\n{dump}"));
    eprintln!("before: {before}\nswitch: {switch}\nafter:  {after}");
}
