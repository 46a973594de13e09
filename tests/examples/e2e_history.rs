//! The e2e suite's recording client (crates/operator/e2e/run.sh): clients doing put / get /
//! CAS / delete and a prefix watcher against a cluster's client endpoint, from when it starts
//! until a stop file appears, then a read of every key and the project's checks
//! (`ferrokv_tests::linearizability`) over the recorded history. Prints one summary line and
//! exits 0 when the history passes, 1 with the violation when it does not, 2 on bad usage.
//!
//! ```text
//! e2e_history --endpoint https://10.96.0.12:2379 --ca ca.crt --cert tls.crt --key tls.key \
//!     --domain demo-client.default.svc --stop-file /tmp/history.stop [--prefix /e2e-history/]
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Identity, TlsOptions};
use ferrokv_tests::history::{
    client_loop, execute, header_rev, longest_gap, seed_from_env, watch_loop, Endpoints,
    WatchConfig, Workload,
};
use ferrokv_tests::linearizability::{
    check_linearizable, check_revisions, History, Linearizability, Op, Outcome, Request,
};

const CLIENTS: u32 = 3;
const KEYS: u64 = 8;
const OP_TIMEOUT: Duration = Duration::from_secs(3);

struct Args {
    endpoint: String,
    tls: Option<TlsOptions>,
    stop_file: PathBuf,
    prefix: String,
}

fn usage(why: &str) -> ! {
    eprintln!(
        "e2e_history: {why}\nusage: e2e_history --endpoint URL [--ca F --cert F --key F \
         --domain NAME] --stop-file F [--prefix P]"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let (mut endpoint, mut ca, mut cert, mut key, mut domain, mut stop, mut prefix) = (
        None,
        None,
        None,
        None,
        None,
        None,
        "/e2e-history/".to_string(),
    );
    while let Some(a) = it.next() {
        let v = it
            .next()
            .unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--endpoint" => endpoint = Some(v),
            "--ca" => ca = Some(v),
            "--cert" => cert = Some(v),
            "--key" => key = Some(v),
            "--domain" => domain = Some(v),
            "--stop-file" => stop = Some(PathBuf::from(v)),
            "--prefix" => prefix = v,
            other => usage(&format!("unknown flag {other}")),
        }
    }
    let read = |p: &str| std::fs::read(p).unwrap_or_else(|e| usage(&format!("reading {p}: {e}")));
    let tls = match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) => {
            let mut t = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read(&ca)))
                .identity(Identity::from_pem(read(&cert), read(&key)));
            if let Some(d) = domain {
                t = t.domain_name(d);
            }
            Some(t)
        }
        (None, None, None) => None,
        _ => usage("--ca, --cert and --key go together"),
    };
    Args {
        endpoint: endpoint.unwrap_or_else(|| usage("no --endpoint")),
        tls,
        stop_file: stop.unwrap_or_else(|| usage("no --stop-file")),
        prefix,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let endpoints = match a.tls.clone() {
        Some(tls) => Endpoints::with_tls(vec![a.endpoint.clone()], tls),
        None => Endpoints::new(vec![a.endpoint.clone()]),
    };
    let mut c = None;
    for _ in 0..30 {
        c = endpoints.connect(0, OP_TIMEOUT).await;
        if c.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let Some(mut c) = c else {
        eprintln!("e2e_history: cannot connect to {}", a.endpoint);
        std::process::exit(1)
    };
    let initial = match c.get(a.prefix.as_str(), None).await {
        Ok(r) => header_rev(r.header()),
        Err(e) => {
            eprintln!("e2e_history: first read through {}: {e}", a.endpoint);
            std::process::exit(1)
        }
    };
    let seed = seed_from_env("E2E_HISTORY_SEED");
    eprintln!("e2e_history: recording from revision {initial}, E2E_HISTORY_SEED={seed}");

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let watch_stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(Mutex::new(Vec::new()));
    let watch_last = Arc::new(AtomicI64::new(initial));
    let watcher = tokio::spawn(watch_loop(
        endpoints.clone(),
        WatchConfig {
            prefix: a.prefix.clone(),
            op_timeout: OP_TIMEOUT,
            // Behind a Service a stream can sit on a member that was taken away quietly.
            quiet_failover: Some(Duration::from_secs(5)),
            retry_pause: Duration::from_millis(200),
        },
        watch_stop.clone(),
        events.clone(),
        watch_last.clone(),
    ));
    // Paced: the suite's cluster shares two cores with the control plane and the scenarios.
    let workload = Workload {
        op_timeout: OP_TIMEOUT,
        retry_pause: Duration::from_millis(200),
        pace: Duration::from_millis(50),
        ..Workload::new(&a.prefix, KEYS)
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
    while !a.stop_file.exists() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut history = History::new(initial);
    for c in clients {
        match c.await {
            Ok(ops) => history.ops.extend(ops),
            Err(e) => {
                eprintln!("e2e_history: a client task failed: {e}");
                std::process::exit(1)
            }
        }
    }
    let gap = longest_gap(&history.ops);

    // Every key read once everything is quiet: acknowledged writes must be there.
    let mut final_rev = None;
    for _ in 0..30 {
        if let Some(mut c) = endpoints.connect(0, OP_TIMEOUT).await {
            let mut reads = Vec::new();
            for k in 0..KEYS {
                let req = Request::Get {
                    key: format!("{}k{k}", a.prefix),
                };
                let call = t0.elapsed().as_nanos();
                let Some(resp) = execute(&mut c, &req, OP_TIMEOUT).await else {
                    break;
                };
                reads.push(Op {
                    client: 100,
                    call,
                    ret: t0.elapsed().as_nanos(),
                    req,
                    outcome: Outcome::Known(resp),
                });
            }
            if reads.len() == KEYS as usize {
                if let Ok(r) = c.get(a.prefix.as_str(), None).await {
                    history.ops.extend(reads);
                    final_rev = Some(header_rev(r.header()));
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let Some(final_rev) = final_rev else {
        eprintln!("e2e_history: the final reads got no answer");
        std::process::exit(1)
    };
    let caught_up = Instant::now() + Duration::from_secs(20);
    while watch_last.load(Ordering::SeqCst) < final_rev && Instant::now() < caught_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch_stop.store(true, Ordering::Relaxed);
    let streams = watcher.await.unwrap_or(0);
    let events = std::mem::take(&mut *events.lock().unwrap_or_else(|e| e.into_inner()));

    history.ops.sort_by_key(|o| o.call);
    let known = history
        .ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Known(_)))
        .count();
    let unknown = history.ops.len() - known;
    let summary = format!(
        "{} ops over {:.0}s ({known} answered, {unknown} writes unknown, {} failed reads), \
         longest gap without an answer {:.1}s, {} watch events on {streams} streams",
        history.ops.len(),
        t0.elapsed().as_secs_f64(),
        failed_reads.load(Ordering::Relaxed),
        gap.as_secs_f64(),
        events.len()
    );
    let state = match check_revisions(&history, &events) {
        Ok(s) => s,
        Err(v) => {
            println!("e2e_history: FAILED check A (revisions): {v}\n{summary}");
            std::process::exit(1)
        }
    };
    match check_linearizable(&history, Some(&state), Duration::from_secs(60)) {
        Linearizability::Ok { keys, ops } => {
            println!("e2e_history: linearizable ({keys} keys, {ops} ops checked); {summary}")
        }
        Linearizability::Violation(v) => {
            println!("e2e_history: FAILED check B (linearizability): {v}\n{summary}");
            std::process::exit(1)
        }
        Linearizability::Unknown { key } => {
            println!("e2e_history: FAILED check B ran out of time on {key}\n{summary}");
            std::process::exit(1)
        }
    }
}
