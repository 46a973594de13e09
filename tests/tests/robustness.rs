//! Robustness: recorded histories under SIGKILL + restart, checked for linearizability.
//!
//! 7 clients run random Put / Get / Delete / CAS (the kube-apiserver update txn) on 6 keys for
//! ~8 s while the member is SIGKILLed and restarted 3 times; one watcher watches the key prefix
//! from revision 1 with prev_kv and resumes from last revision + 1 after each restart. The
//! recorded history then goes through the checks in `ferrokv_tests::linearizability`: the
//! revision model (A), the per-key linearizability search (B) and the watch checks. The same
//! body runs against etcd, which validates the checker: if it flags etcd, the checker is wrong.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrokv_tests::history::{
    client_loop, execute, header_rev, seed_from_env, watch_loop, Endpoints, Rng, WatchConfig,
    Workload,
};
use ferrokv_tests::linearizability::{
    check_linearizable, check_revisions, check_watch, History, Linearizability, Op, Outcome,
    Request, Response, StateHistory, WatchEvent,
};
use ferrokv_tests::{both_backends, Backend, Member, MemberOpts};

const CLIENTS: u32 = 7;
const KEYS: u64 = 6;
const PREFIX: &str = "rob/";
const RUN: Duration = Duration::from_secs(8);
const KILLS: usize = 3;
const OP_TIMEOUT: Duration = Duration::from_secs(1);
const SNAPSHOT_COUNT: u64 = 1000;

async fn robustness(b: Backend) {
    let seed = seed_from_env("ROBUSTNESS_SEED");
    eprintln!("[{}] ROBUSTNESS_SEED={seed}", b.name());
    // A small snapshot count so restarts also recover from a raft snapshot plus a WAL tail,
    // not only from a WAL replay.
    let opts = MemberOpts {
        snapshot_count: Some(SNAPSHOT_COUNT),
        ..MemberOpts::default()
    };
    let mut m = Member::start(b, opts)
        .await
        .unwrap_or_else(|e| panic!("starting {}: {e}", b.name()));
    let url = m.client_url.clone();
    // A fresh store: revision 1, no keys under the prefix.
    {
        let mut c = m.client().await.expect("client");
        let r = c.get(PREFIX, None).await.expect("initial get");
        assert_eq!(header_rev(r.header()), 1, "store not fresh");
    }

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let watch_stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(Mutex::new(Vec::new()));
    let watch_last = Arc::new(AtomicI64::new(0));
    let endpoints = Endpoints::new(vec![url.clone()]);
    let watch = WatchConfig {
        prefix: PREFIX.into(),
        op_timeout: OP_TIMEOUT,
        quiet_failover: None,
        retry_pause: Duration::from_millis(50),
    };
    let watcher = tokio::spawn(watch_loop(
        endpoints.clone(),
        watch,
        watch_stop.clone(),
        events.clone(),
        watch_last.clone(),
    ));
    // Gets 35%, Puts 25%, CAS 25% (sometimes on a stale mod_revision), Deletes 15%.
    let workload = Workload {
        cas_until: 85,
        stale_cas: true,
        op_timeout: OP_TIMEOUT,
        retry_pause: Duration::from_millis(20),
        ..Workload::new(PREFIX, KEYS)
    };
    let failed_reads = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client_loop(
                id,
                endpoints.clone(),
                workload.clone(),
                seed,
                t0,
                stop.clone(),
                failed_reads.clone(),
            ))
        })
        .collect();

    // Kill at spread-out, seed-dependent points of the run; each outage lasts a little while
    // so clients see refused connections and timeouts.
    let mut rng = Rng(seed | 1);
    for i in 0..KILLS {
        let at = RUN.mul_f64((i as f64 + 0.6) / (KILLS as f64 + 1.0))
            + Duration::from_millis(rng.below(400));
        tokio::time::sleep(at.saturating_sub(t0.elapsed())).await;
        m.kill();
        eprintln!(
            "[{}] SIGKILL at {:.2}s",
            b.name(),
            t0.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(100 + rng.below(300))).await;
        m.restart()
            .await
            .unwrap_or_else(|e| panic!("restart {i} of {}: {e}", b.name()));
        eprintln!(
            "[{}] serving again at {:.2}s",
            b.name(),
            t0.elapsed().as_secs_f64()
        );
    }
    tokio::time::sleep(RUN.saturating_sub(t0.elapsed())).await;
    stop.store(true, Ordering::Relaxed);

    let mut history = History::new(1);
    for c in clients {
        history.ops.extend(c.await.expect("client task"));
    }
    // Final reads of every key once everything is quiet: acknowledged writes must still be
    // there (durability), and they give unknown writes a last chance to be observed.
    let mut c = m.client().await.expect("client after run");
    for k in 0..KEYS {
        let req = Request::Get {
            key: format!("{PREFIX}k{k}"),
        };
        let call = t0.elapsed().as_nanos();
        let resp = execute(&mut c, &req, OP_TIMEOUT)
            .await
            .expect("final read on a healthy member");
        history.ops.push(Op {
            client: 100,
            call,
            ret: t0.elapsed().as_nanos(),
            req,
            outcome: Outcome::Known(resp),
        });
    }
    let final_rev = header_rev(c.get(PREFIX, None).await.expect("final rev").header());

    // The watcher must catch up with everything.
    let caught_up = Instant::now() + Duration::from_secs(5);
    while watch_last.load(Ordering::SeqCst) < final_rev && Instant::now() < caught_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watch_stop.store(true, Ordering::Relaxed);
    let resumes = watcher.await.expect("watcher task");
    let events = std::mem::take(&mut *events.lock().unwrap_or_else(|e| e.into_inner()));
    assert_eq!(
        watch_last.load(Ordering::SeqCst),
        final_rev,
        "watcher did not catch up with revision {final_rev} ({} events)",
        events.len()
    );

    history.ops.sort_by_key(|o| o.call);
    let unknown = history
        .ops
        .iter()
        .filter(|o| o.outcome == Outcome::Unknown)
        .count();
    let writes = history
        .ops
        .iter()
        .filter(|o| !matches!(o.req, Request::Get { .. }))
        .count();
    assert!(
        history.ops.len() - unknown > 200,
        "only {} ops completed: the load did not run",
        history.ops.len() - unknown
    );

    let checks_started = Instant::now();
    // Check A, with the watch as evidence for unknown writes.
    let state = check_revisions(&history, &events)
        .unwrap_or_else(|v| panic!("[{}] check A (revisions): {v}", b.name()));
    // Watch checks.
    let ws = check_watch(&history, &state, &events, 1, &|k| k.starts_with(PREFIX))
        .unwrap_or_else(|v| panic!("[{}] watch check: {v}", b.name()));
    assert_eq!(ws.last_revision, final_rev);
    // Every key lives under the watched prefix, so the watch explains every revision.
    assert!(
        state.gaps.is_empty(),
        "[{}] revisions {:?} appear in no write and no watch event",
        b.name(),
        state.gaps
    );
    // Check B.
    let lin = check_linearizable(&history, Some(&state), Duration::from_secs(10));
    match &lin {
        Linearizability::Ok { .. } => {}
        Linearizability::Violation(v) => panic!("[{}] check B (linearizability): {v}", b.name()),
        Linearizability::Unknown { key } => {
            panic!("[{}] check B ran out of time on key {key}", b.name())
        }
    }
    let checks_took = checks_started.elapsed();
    mutants_are_caught(&history, &state, &events);
    let mutants_took = checks_started.elapsed() - checks_took;
    eprintln!(
        "[{}] {} ops ({writes} writes, {unknown} unknown, {} unknown resolved by observation), \
         revisions 1..={final_rev} ({} unexplained), {} watch events over {resumes} watch streams, \
         {KILLS} kills, {:.1}s; checks A, B, watch: ok ({lin:?}) in {checks_took:.2?}, \
         mutants caught in {mutants_took:.2?}",
        b.name(),
        history.ops.len(),
        state.resolved.len(),
        state.gaps.len(),
        ws.events,
        t0.elapsed().as_secs_f64(),
    );
}

/// The checkers must bite on this very history: a stale or lost final read, a duplicated
/// revision and a dropped watch event are each flagged. Guards against a checker that passes
/// real histories only because it checks nothing at this scale.
fn mutants_are_caught(history: &History, state: &StateHistory, events: &[WatchEvent]) {
    let budget = Duration::from_secs(5);
    let rejected = |h: &History, what: &str| {
        match check_revisions(h, events) {
            Err(_) => {}
            Ok(_) => panic!("check A accepted a history with {what}"),
        }
        // The state of the unmutated history pins the unknown writes (the mutation touches only
        // a read), which keeps the exhaustive search over a non-linearizable history short.
        let b = check_linearizable(h, Some(state), budget);
        assert!(
            matches!(b, Linearizability::Violation(_)),
            "check B accepted a history with {what}: {b:?}"
        );
    };
    // The final reads (client 100) of keys that had an older value before the current one.
    let mut tried = 0;
    for (i, op) in history.ops.iter().enumerate() {
        let (
            Request::Get { key },
            Outcome::Known(Response::Get {
                kv: Some(kv),
                revision,
            }),
        ) = (&op.req, &op.outcome)
        else {
            continue;
        };
        if op.client != 100 {
            continue;
        }
        let older = state
            .effects
            .range(..kv.1)
            .rev()
            .find(|(_, e)| e.key == *key && e.value.is_some());
        let Some((&old_rev, old)) = older else {
            continue;
        };
        let mut stale = history.clone();
        stale.ops[i].outcome = Outcome::Known(Response::Get {
            kv: Some((old.value.clone().unwrap_or_default(), old_rev)),
            revision: *revision,
        });
        rejected(&stale, "a stale final read");
        let mut lost = history.clone();
        lost.ops[i].outcome = Outcome::Known(Response::Get {
            kv: None,
            revision: *revision,
        });
        rejected(&lost, "a lost acknowledged write");
        tried += 1;
        // One key is enough: each mutant costs an exhaustive search.
        break;
    }
    assert!(tried > 0, "no final read to mutate");

    // Two acknowledged puts claiming one revision.
    let puts: Vec<usize> = history
        .ops
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o.outcome, Outcome::Known(Response::Put { .. })))
        .map(|(i, _)| i)
        .take(2)
        .collect();
    if let [a, b] = puts[..] {
        let mut dup = history.clone();
        dup.ops[b].outcome = dup.ops[a].outcome.clone();
        assert!(
            check_revisions(&dup, events).is_err(),
            "check A accepted a duplicated revision"
        );
    }

    // A watcher that skipped one event.
    let mut skipped = events.to_vec();
    skipped.remove(skipped.len() / 2);
    assert!(
        check_watch(history, state, &skipped, 1, &|k| k.starts_with(PREFIX)).is_err(),
        "watch check accepted a missing event"
    );
}

both_backends!(robustness);
