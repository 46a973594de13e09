//! `ferrokv-bench`: runs the same workloads against a single-member etcd and a single-member
//! ferrokv on this machine, alternating rounds (etcd, ferrokv, etcd, ferrokv, ...) because a
//! single run on a small noisy machine proves nothing, and prints a Markdown table of the
//! per-side medians and the ferrokv/etcd ratio.
//!
//! Both members get identical flags and default durability (fsync on every commit), each a fresh
//! data dir under the same temp directory (same disk). The client is the `etcd-client` crate
//! over a few HTTP/2 connections, kept lean: each in-flight request is one task in a loop.
//!
//! Depends only on the test harness's member launcher and the public etcd v3 API, never on
//! ferrokv's server crates.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use etcd_client::GetOptions;
use ferrokv_tests::member::workspace_root;
use ferrokv_tests::{Backend, Member, MemberOpts};

#[derive(Parser, Debug)]
#[command(about = "Benchmark ferrokv against etcd in alternating rounds")]
struct Args {
    /// Rounds per side; each round starts fresh members and runs every workload once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per workload per round.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Client connections used by the concurrent workloads.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// In-flight requests of the concurrent workloads.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Value size in bytes for puts.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// ferrokv binary; default: FERROKV_BIN, else `cargo build --release -p ferrokv` and use it.
    #[arg(long, env = "FERROKV_BIN")]
    ferrokv_bin: Option<PathBuf>,
    /// etcd binary; default: ETCD_BIN or `etcd` on PATH.
    #[arg(long, env = "ETCD_BIN")]
    etcd_bin: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Workload {
    Put1,
    PutN,
    RangeLinearizable,
    RangeSerializable,
}

impl Workload {
    const ALL: [Workload; 4] = [
        Workload::Put1,
        Workload::PutN,
        Workload::RangeLinearizable,
        Workload::RangeSerializable,
    ];

    fn label(self, a: &Args) -> String {
        let (c, n) = (a.connections, a.concurrency);
        match self {
            Workload::Put1 => "put, 1 client (1 conn, 1 in flight)".into(),
            Workload::PutN => format!("put, {n} clients ({c} conns, {n} in flight)"),
            Workload::RangeLinearizable => {
                format!("range 1 key, linearizable ({c} conns, {n} in flight)")
            }
            Workload::RangeSerializable => {
                format!("range 1 key, serializable ({c} conns, {n} in flight)")
            }
        }
    }

    fn shape(self, a: &Args) -> (usize, usize) {
        match self {
            Workload::Put1 => (1, 1),
            _ => (a.connections, a.concurrency),
        }
    }
}

/// One workload's result on one side in one round.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn percentile(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted_us.len() - 1) as f64 * p).round() as usize;
    sorted_us[idx] as f64 / 1000.0
}

async fn run_workload(m: &Member, w: Workload, a: &Args) -> Result<Sample> {
    let (conns, inflight) = w.shape(a);
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        clients.push(m.client().await.context("connect")?);
    }
    let mut seed = clients[0].clone();
    seed.put("bench/read", vec![b'r'; a.value_size], None)
        .await
        .context("seed key")?;
    let value = Arc::new(vec![b'v'; a.value_size]);
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(inflight);
    for t in 0..inflight {
        let mut c = clients[t % conns].clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 14);
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let ok = match w {
                    Workload::Put1 | Workload::PutN => {
                        // Spread keys so the keyspace grows like a real write load.
                        let key = format!("bench/{t}/{}", i % 1000);
                        c.put(key, value.as_slice(), None).await.is_ok()
                    }
                    Workload::RangeLinearizable => c.get("bench/read", None).await.is_ok(),
                    Workload::RangeSerializable => c
                        .get("bench/read", Some(GetOptions::new().with_serializable()))
                        .await
                        .is_ok(),
                };
                if ok {
                    lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.context("worker task")?;
        all.extend(lat);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok(Sample {
        ops_per_sec: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
        errors,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Builds the release ferrokv unless a binary was given, so `make bench` never measures a
/// stale or debug build.
fn ferrokv_binary(a: &Args) -> Result<PathBuf> {
    if let Some(p) = &a.ferrokv_bin {
        if !p.is_file() {
            bail!("--ferrokv-bin {} does not exist", p.display());
        }
        return Ok(p.clone());
    }
    let root = workspace_root();
    eprintln!("building ferrokv (cargo build --release -p ferrokv) ...");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "ferrokv"])
        .current_dir(&root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p ferrokv failed");
    }
    let p = ferrokv_tests::member::target_dir()
        .join("release")
        .join("ferrokv");
    if !p.is_file() {
        bail!("{} missing after the build", p.display());
    }
    Ok(p)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let a = Args::parse();
    let ferrokv = ferrokv_binary(&a)?;
    let etcd = match &a.etcd_bin {
        Some(p) => p.clone(),
        None => Backend::Etcd.binary()?,
    };
    // results[workload][side] = samples over rounds; side 0 = etcd, 1 = ferrokv.
    let mut results: Vec<[Vec<Sample>; 2]> =
        Workload::ALL.iter().map(|_| Default::default()).collect();
    for round in 0..a.rounds {
        for (side, backend, bin) in [(0, Backend::Etcd, &etcd), (1, Backend::Ferrokv, &ferrokv)] {
            let opts = MemberOpts {
                bin: Some(bin.clone()),
                ..MemberOpts::default()
            };
            let m = Member::start(backend, opts)
                .await
                .with_context(|| format!("starting {}", backend.name()))?;
            for (wi, w) in Workload::ALL.iter().enumerate() {
                let s = run_workload(&m, *w, &a).await?;
                eprintln!(
                    "round {} {:8} {:55} {:>9.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
                    round + 1,
                    backend.name(),
                    w.label(&a),
                    s.ops_per_sec,
                    s.p50_ms,
                    s.p99_ms,
                    s.errors
                );
                results[wi][side].push(s);
            }
            drop(m);
        }
    }

    println!(
        "### ferrokv vs etcd: single member, fsync on both, medians of {} alternating rounds of {} s per workload",
        a.rounds, a.seconds
    );
    println!();
    println!(
        "Client: etcd-client crate, 1 connection / 1 in flight for `put, 1 client`; {} connections / {} in flight otherwise; values {} B.",
        a.connections, a.concurrency, a.value_size
    );
    println!();
    println!("| workload | etcd ops/s | etcd p50 ms | etcd p99 ms | ferrokv ops/s | ferrokv p50 ms | ferrokv p99 ms | ratio ops/s (ferrokv/etcd) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (wi, w) in Workload::ALL.iter().enumerate() {
        let col =
            |side: usize, f: fn(&Sample) -> f64| median(results[wi][side].iter().map(f).collect());
        let (e_ops, f_ops) = (col(0, |s| s.ops_per_sec), col(1, |s| s.ops_per_sec));
        let errs: u64 = results[wi].iter().flatten().map(|s| s.errors).sum();
        println!(
            "| {}{} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} |",
            w.label(&a),
            if errs > 0 {
                format!(" ({errs} errors)")
            } else {
                String::new()
            },
            e_ops,
            col(0, |s| s.p50_ms),
            col(0, |s| s.p99_ms),
            f_ops,
            col(1, |s| s.p50_ms),
            col(1, |s| s.p99_ms),
            f_ops / e_ops
        );
    }
    Ok(())
}
