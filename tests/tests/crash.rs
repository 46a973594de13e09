//! Crash durability: 8 concurrent writers put unique keys; the member is SIGKILLed mid-load and
//! restarted. Every acknowledged put must survive with its revision, and the revision history
//! must have no gap (each put of a fresh key creates exactly one revision). Repeated 3 times on
//! the same data dir. Runs against etcd too, which validates the test itself.
//!
//! The same on three members: the leader is SIGKILLed mid-load, writers carry on through the
//! election, then every member is SIGKILLed at once and restarted; each member must hold every
//! acknowledged put at its acknowledged revision.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::GetOptions;
use ferrokv_tests::{both_backends, Backend, Cluster, Member, MemberOpts};

const WRITERS: usize = 8;
const ROUNDS: usize = 3;

async fn kill_mid_load(b: Backend) {
    let mut m = Member::start(b, MemberOpts::default())
        .await
        .unwrap_or_else(|e| panic!("starting {}: {e}", b.name()));
    let mut acked: BTreeMap<String, i64> = BTreeMap::new();

    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            // One connection per writer, like independent clients.
            let mut c = m.client().await.expect("client");
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("crash/{round}/{w}/{i:06}");
                    let put =
                        tokio::time::timeout(Duration::from_secs(2), c.put(key.clone(), "v", None));
                    match put.await {
                        Ok(Ok(r)) => {
                            let rev = r.header().map(|h| h.revision()).unwrap_or(0);
                            mine.push((key, rev));
                        }
                        // The member is gone: this put may or may not have been applied.
                        _ => break,
                    }
                    i += 1;
                }
                mine
            }));
        }
        // Kill at a different point of the load each round.
        tokio::time::sleep(Duration::from_millis(1500 + 600 * round as u64)).await;
        m.kill();
        stop.store(true, Ordering::Relaxed);
        let mut this_round = 0;
        for t in tasks {
            for (k, rev) in t.await.expect("writer task") {
                assert!(rev >= 2, "acknowledged put of {k} with revision {rev}");
                this_round += 1;
                acked.insert(k, rev);
            }
        }
        assert!(
            this_round > 50,
            "round {round}: only {this_round} puts acknowledged"
        );

        m.restart()
            .await
            .unwrap_or_else(|e| panic!("restart after SIGKILL (round {round}): {e}"));
        let mut c = m.client().await.expect("client");
        let all = c
            .get("crash/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("range after restart");
        let current = all.header().map(|h| h.revision()).unwrap_or(0);
        let found: BTreeMap<String, i64> = all
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.mod_revision(),
                )
            })
            .collect();
        for (k, rev) in &acked {
            match found.get(k) {
                Some(r) => assert_eq!(r, rev, "round {round}: {k} acknowledged at {rev}, found at {r}"),
                None => panic!("round {round}: acknowledged key {k} (revision {rev}) lost after SIGKILL; current revision {current}"),
            }
        }
        // Every key was written once, so the mod revisions must be exactly 2..=current.
        let mut revs: Vec<i64> = found.values().copied().collect();
        revs.sort_unstable();
        let expected: Vec<i64> = (2..=current).collect();
        if revs != expected {
            let missing: Vec<i64> = expected
                .iter()
                .filter(|r| revs.binary_search(r).is_err())
                .take(10)
                .copied()
                .collect();
            panic!(
                "round {round}: revisions 2..={current} have gaps or duplicates: {} keys, first missing {missing:?}",
                revs.len()
            );
        }
        // The member takes writes after recovery; the key stays, so later rounds' gap checks
        // still see one live key per revision.
        let r = c
            .put(format!("crash/after/{round}"), "x", None)
            .await
            .expect("put after restart");
        assert_eq!(r.header().map(|h| h.revision()), Some(current + 1));
    }
}

async fn kill_leader_mid_load(b: Backend) {
    let opts = MemberOpts {
        heartbeat_ms: Some(50),
        election_ms: Some(500),
        ..MemberOpts::default()
    };
    let mut c = Cluster::start(b, 3, opts)
        .await
        .unwrap_or_else(|e| panic!("starting 3 {} members: {e}", b.name()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut client = c.client().await.expect("client");
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // A put that fails or times out may or may not have been applied: its key is
                // never used again, and only acknowledged keys are checked.
                let key = format!("crash/{w}/{i:06}");
                i += 1;
                let put = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.put(key.clone(), "v", None),
                );
                match put.await {
                    Ok(Ok(r)) => mine.push((key, r.header().map(|h| h.revision()).unwrap_or(0))),
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            mine
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leader = c.leader().await.expect("a leader");
    c.kill(&leader).expect("kill the leader");
    // Writers go on through the election and on the new leader.
    let next = c.leader().await.expect("a new leader");
    assert_ne!(next, leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Then the whole cluster loses power at once.
    for name in c.running() {
        c.kill(&name).expect("kill");
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked: BTreeMap<String, i64> = BTreeMap::new();
    for t in tasks {
        for (k, rev) in t.await.expect("writer task") {
            assert!(rev >= 2, "acknowledged put of {k} with revision {rev}");
            acked.insert(k, rev);
        }
    }
    assert!(acked.len() > 100, "only {} puts acknowledged", acked.len());
    let names: Vec<String> = c.members().map(|m| m.name.clone()).collect();
    for name in &names {
        c.get_mut(name)
            .expect("member")
            .start_process()
            .expect("start");
    }
    for name in &names {
        c.get_mut(name)
            .expect("member")
            .wait_ready()
            .await
            .unwrap_or_else(|e| panic!("{name} after power loss: {e}"));
    }
    for name in &names {
        let mut client = c.get(name).expect("member").client().await.expect("client");
        // Serializable: what this member itself holds, once it has caught up with the leader.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let found: BTreeMap<String, i64> = loop {
            let all = client
                .get(
                    "crash/",
                    Some(GetOptions::new().with_prefix().with_serializable()),
                )
                .await
                .expect("range after restart");
            let found: BTreeMap<String, i64> = all
                .kvs()
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        kv.mod_revision(),
                    )
                })
                .collect();
            if acked.keys().all(|k| found.contains_key(k)) || std::time::Instant::now() > deadline {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for (k, rev) in &acked {
            match found.get(k) {
                Some(r) => assert_eq!(r, rev, "{name}: {k} acknowledged at {rev}, found at {r}"),
                None => panic!("{name}: acknowledged key {k} (revision {rev}) lost"),
            }
        }
    }
}

both_backends!(kill_mid_load, kill_leader_mid_load);
