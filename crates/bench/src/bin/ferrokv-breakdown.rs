//! `ferrokv-breakdown`: where one replicated put and one linearizable read spend their time
//! (issue 10, item 1), from the `ferrokv_debug_*` stage histograms every member exports.
//!
//! For 1 and 3 members it starts a fresh cluster, drives it with etcd's own `benchmark` tool
//! against the leader (1 client, then 64 clients), scrapes `/metrics` of every member before
//! and after each load and prints, per stage, the mean and the p50/p99 bucket bounds of what
//! the load added. An etcd 3.6 cluster of the same size runs the same load in alternating
//! rounds, so the client-side totals and etcd's own disk histograms (WAL fsync, backend commit)
//! stand next to ferrokv's stages. Low concurrency on purpose: stage times of one request are
//! what this is about, and they are less sensitive to a loaded machine than throughput.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferrokv_tests::etcd_tools;
use ferrokv_tests::{Backend, Cluster, MemberOpts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(about = "Per-stage latency of a replicated put and a linearizable read")]
struct Args {
    /// Alternating rounds (etcd, ferrokv, etcd, ferrokv, ...) per cluster size.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Requests per load.
    #[arg(long, default_value_t = 2000)]
    total: u64,
    /// Cluster sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    members: Vec<usize>,
    /// ferrokv binary (default: FERROKV_BIN, else target/release/ferrokv).
    #[arg(long, env = "FERROKV_BIN")]
    ferrokv_bin: Option<PathBuf>,
    /// etcd binary (default: ETCD_BIN, else etcd 3.6.16 from scripts/build-etcd36.sh).
    #[arg(long, env = "ETCD_BIN")]
    etcd_bin: Option<PathBuf>,
    /// Compare with this ferrokv binary (a build before a change) instead of etcd: the
    /// before/after numbers of one change, from alternating rounds of one run.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
}

/// What a load sends.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Put,
    TxnPut,
    RangeLinearizable,
    RangeSerializable,
    /// `benchmark watch-latency`: put → event latency seen by every watcher of one key.
    WatchLatency,
}

/// One load the `benchmark` tool runs.
#[derive(Clone, Copy)]
struct Load {
    label: &'static str,
    clients: usize,
    conns: usize,
    kind: Kind,
}

impl Load {
    const fn new(label: &'static str, clients: usize, conns: usize, kind: Kind) -> Self {
        Load {
            label,
            clients,
            conns,
            kind,
        }
    }

    fn writes(self) -> bool {
        matches!(self.kind, Kind::Put | Kind::TxnPut | Kind::WatchLatency)
    }
}

/// The 1-client and 64-client loads are the breakdown's; the others are `make bench`'s rows
/// of the table (3 members, etcd's own client).
const LOADS: [Load; 9] = [
    Load::new("put, 1 client", 1, 1, Kind::Put),
    Load::new("put, 64 clients / 8 conns", 64, 8, Kind::Put),
    Load::new("put, 256 clients / 16 conns", 256, 16, Kind::Put),
    Load::new("txn-put, 64 clients / 8 conns", 64, 8, Kind::TxnPut),
    Load::new(
        "range linearizable, 1 client",
        1,
        1,
        Kind::RangeLinearizable,
    ),
    Load::new(
        "range linearizable, 64 clients / 8 conns",
        64,
        8,
        Kind::RangeLinearizable,
    ),
    Load::new(
        "range serializable, 64 clients / 8 conns",
        64,
        8,
        Kind::RangeSerializable,
    ),
    Load::new(
        "range linearizable, 256 clients / 16 conns",
        256,
        16,
        Kind::RangeLinearizable,
    ),
    // 10 streams of 100 watchers on one key; the tool's rate limiter sets the puts, so the
    // row's numbers are the events' latency (from the put's response to each watcher's
    // event) and events/s.
    Load::new(
        "watch latency, 1,000 watchers, 250 puts/s",
        10,
        10,
        Kind::WatchLatency,
    ),
];

/// (stage histogram family, what the row says), in the order a request passes them.
const PUT_STAGES: [(&str, &str); 12] = [
    (
        "ferrokv_debug_server_propose_seconds",
        "server: encode → applied response (all below)",
    ),
    (
        "ferrokv_debug_raft_propose_queue_seconds",
        "raft inbox wait (propose queue)",
    ),
    (
        "ferrokv_debug_raft_propose_to_append_seconds",
        "accepted → leader WAL append starts",
    ),
    (
        "ferrokv_debug_raft_wal_append_leader_seconds",
        "leader WAL append + fsync (per Ready)",
    ),
    (
        "etcd_disk_wal_fsync_duration_seconds",
        "  of which fdatasync (leader and followers)",
    ),
    (
        "ferrokv_debug_raft_append_to_commit_seconds",
        "leader append done → committed (quorum ack)",
    ),
    (
        "ferrokv_debug_raft_step_queue_seconds",
        "peer message inbox wait (all members)",
    ),
    (
        "ferrokv_debug_raft_wal_append_follower_seconds",
        "follower WAL append + fsync (per Ready)",
    ),
    (
        "ferrokv_debug_raft_propose_to_commit_seconds",
        "accepted → handed to apply",
    ),
    (
        "ferrokv_debug_raft_hand_out_seconds",
        "hand-out to the apply loop (back-pressure)",
    ),
    (
        "ferrokv_debug_server_apply_batch_seconds",
        "apply batch (decode, redb commit, waiters)",
    ),
    (
        "etcd_disk_backend_commit_duration_seconds",
        "  of which redb commit",
    ),
];

const READ_STAGES: [(&str, &str); 4] = [
    (
        "ferrokv_debug_server_read_index_seconds",
        "ReadIndex call (inbox, raft round, reply)",
    ),
    (
        "ferrokv_debug_raft_read_index_round_seconds",
        "  raft: arrival → read state",
    ),
    (
        "ferrokv_debug_server_read_apply_wait_seconds",
        "wait for applied ≥ read index",
    ),
    (
        "ferrokv_debug_server_range_local_seconds",
        "redb read (blocking-thread hop included)",
    ),
];

const ETCD_STAGES: [(&str, &str); 2] = [
    ("etcd_disk_wal_fsync_duration_seconds", "WAL fsync"),
    (
        "etcd_disk_backend_commit_duration_seconds",
        "backend commit",
    ),
];

/// A histogram summed over the scraped members: bucket bound → cumulative count, sum, count.
#[derive(Clone, Default, Debug)]
struct Hist {
    buckets: BTreeMap<u64, f64>,
    sum: f64,
    count: f64,
}

impl Hist {
    fn minus(&self, before: &Hist) -> Hist {
        let mut buckets = BTreeMap::new();
        for (b, v) in &self.buckets {
            buckets.insert(*b, v - before.buckets.get(b).copied().unwrap_or(0.0));
        }
        Hist {
            buckets,
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    /// The upper bound (ms) of the bucket holding quantile `q`.
    fn quantile_ms(&self, q: f64) -> f64 {
        if self.count <= 0.0 {
            return f64::NAN;
        }
        let want = self.count * q;
        for (b, v) in &self.buckets {
            if *v >= want {
                return f64::from_bits(*b) * 1000.0;
            }
        }
        f64::INFINITY
    }

    fn mean_ms(&self) -> f64 {
        if self.count <= 0.0 {
            f64::NAN
        } else {
            self.sum / self.count * 1000.0
        }
    }
}

type Scrape = BTreeMap<String, Hist>;

/// The histograms in one member's `/metrics` text, keyed by family (labels summed over).
fn parse(text: &str) -> Scrape {
    let mut out: Scrape = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l),
            None => (series, ""),
        };
        if let Some(family) = name.strip_suffix("_bucket") {
            let Some(le) = labels
                .split(',')
                .find_map(|kv| kv.trim_end_matches('}').strip_prefix("le="))
            else {
                continue;
            };
            let le = le.trim_matches('"');
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse::<f64>() {
                    Ok(b) => b,
                    Err(_) => continue,
                }
            };
            *out.entry(family.to_string())
                .or_default()
                .buckets
                .entry(bound.to_bits())
                .or_default() += value;
        } else if let Some(family) = name.strip_suffix("_sum") {
            out.entry(family.to_string()).or_default().sum += value;
        } else if let Some(family) = name.strip_suffix("_count") {
            out.entry(family.to_string()).or_default().count += value;
        }
    }
    out
}

async fn scrape(client_url: &str) -> Result<Scrape> {
    let addr = client_url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await?;
    let raw = String::from_utf8_lossy(&raw);
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        bail!("{addr}: not an HTTP response");
    };
    if !head.contains(" 200 ") {
        bail!("{addr}: /metrics answered {head}");
    }
    Ok(parse(body))
}

fn merge(all: &[Scrape]) -> Scrape {
    let mut out: Scrape = BTreeMap::new();
    for s in all {
        for (family, h) in s {
            let e = out.entry(family.clone()).or_default();
            for (b, v) in &h.buckets {
                *e.buckets.entry(*b).or_default() += v;
            }
            e.sum += h.sum;
            e.count += h.count;
        }
    }
    out
}

/// What the `benchmark` tool printed that we keep.
#[derive(Clone, Copy, Default)]
struct ToolResult {
    rps: f64,
    avg_ms: f64,
    p99_ms: f64,
}

fn run_tool(tool: &Path, endpoint: &str, load: Load, total: u64) -> Result<ToolResult> {
    let mut cmd = Command::new(tool);
    cmd.arg(format!("--endpoints={endpoint}"))
        .arg(format!("--conns={}", load.conns))
        .arg(format!("--clients={}", load.clients));
    let total = format!("--total={total}");
    match load.kind {
        Kind::Put => cmd.args(["put", "--key-size=8", "--sequential-keys", "--val-size=256"]),
        Kind::TxnPut => cmd.args([
            "txn-put",
            "--txn-ops=1",
            "--key-size=8",
            "--key-space-size=100000",
            "--val-size=256",
        ]),
        Kind::RangeLinearizable => cmd.args(["range", "breakdown/read", "--consistency=l"]),
        Kind::RangeSerializable => cmd.args(["range", "breakdown/read", "--consistency=s"]),
        Kind::WatchLatency => cmd.args([
            "watch-latency",
            "--streams=10",
            "--watchers-per-stream=100",
            "--put-total=500",
            "--put-rate=250",
            "--key-size=8",
            "--val-size=256",
        ]),
    };
    // watch-latency has no --total (its --put-total sets the load); every other command does.
    if load.kind != Kind::WatchLatency {
        cmd.arg(total);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", tool.display()))?;
    if !out.status.success() {
        bail!(
            "benchmark {}: {}",
            load.label,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // watch-latency prints the puts' summary first; the row is the events'.
    let text = match (load.kind, text.split_once("Watch events summary:")) {
        (Kind::WatchLatency, Some((_, events))) => events.to_string(),
        (Kind::WatchLatency, None) => bail!("benchmark {}: no watch events summary", load.label),
        _ => text.into_owned(),
    };
    let secs_after = |prefix: &str| -> Option<f64> {
        text.lines().find_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix(prefix)?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
    };
    Ok(ToolResult {
        rps: secs_after("Requests/sec:").unwrap_or(f64::NAN),
        avg_ms: secs_after("Average:").unwrap_or(f64::NAN) * 1000.0,
        p99_ms: secs_after("99% in").unwrap_or(f64::NAN) * 1000.0,
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// One load on one side in one round: the tool's view and the stage histograms it added.
struct Measured {
    tool: ToolResult,
    stages: Scrape,
    load_avg: String,
}

async fn measure(
    backend: Backend,
    bin: &Path,
    size: usize,
    tool: &Path,
    total: u64,
) -> Result<Vec<Measured>> {
    let opts = MemberOpts {
        bin: Some(bin.to_path_buf()),
        ..MemberOpts::default()
    };
    let mut cluster = Cluster::start(backend, size, opts)
        .await
        .with_context(|| format!("starting {} x{size}", backend.name()))?;
    let leader = cluster.leader().await?;
    let endpoint = cluster.get(&leader)?.client_url.clone();
    let urls: Vec<String> = cluster.members().map(|m| m.client_url.clone()).collect();
    let mut c = cluster.client().await?;
    c.put("breakdown/read", vec![b'r'; 256], None).await?;
    let mut out = Vec::new();
    for load in LOADS {
        let mut before = Vec::new();
        for u in &urls {
            before.push(scrape(u).await?);
        }
        let tool_result = run_tool(tool, &endpoint, load, total)?;
        let load_avg = load_average();
        let mut after = Vec::new();
        for u in &urls {
            after.push(scrape(u).await?);
        }
        let (b, a) = (merge(&before), merge(&after));
        let stages = a
            .iter()
            .map(|(k, h)| (k.clone(), h.minus(&b.get(k).cloned().unwrap_or_default())))
            .collect();
        out.push(Measured {
            tool: tool_result,
            stages,
            load_avg,
        });
    }
    Ok(out)
}

fn cell(h: Option<&Hist>) -> String {
    match h {
        Some(h) if h.count > 0.0 => format!(
            "{:.3} | {:.3} | {:.3} | {:.0}",
            h.mean_ms(),
            h.quantile_ms(0.5),
            h.quantile_ms(0.99),
            h.count
        ),
        _ => "– | – | – | 0".into(),
    }
}

fn default_ferrokv() -> PathBuf {
    ferrokv_tests::member::target_dir()
        .join("release")
        .join("ferrokv")
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let a = Args::parse();
    let ferrokv = a.ferrokv_bin.clone().unwrap_or_else(default_ferrokv);
    if !ferrokv.is_file() {
        bail!(
            "{} missing: build it with cargo build --release -p ferrokv",
            ferrokv.display()
        );
    }
    let (base_name, base_backend, etcd) = match (&a.baseline_bin, &a.etcd_bin) {
        (Some(p), _) => ("before", Backend::Ferrokv, p.clone()),
        (None, Some(p)) => ("etcd", Backend::Etcd36, p.clone()),
        (None, None) => ("etcd", Backend::Etcd36, Backend::Etcd36.binary()?),
    };
    let tool = etcd_tools::benchmark()?;
    if !tool.is_file() {
        bail!(
            "{} missing: run scripts/build-etcd-tools.sh",
            tool.display()
        );
    }
    for &size in &a.members {
        // [side][round][load]
        let mut sides: [Vec<Vec<Measured>>; 2] = [Vec::new(), Vec::new()];
        for round in 0..a.rounds {
            for (side, backend, bin) in [(0, base_backend, &etcd), (1, Backend::Ferrokv, &ferrokv)]
            {
                let m = measure(backend, bin, size, &tool, a.total).await?;
                for (load, r) in LOADS.iter().zip(&m) {
                    eprintln!(
                        "{size} member(s) round {} {:8} {:42} {:>8.0} req/s avg {:>7.3} ms p99 {:>7.3} ms  load {}",
                        round + 1,
                        if side == 0 { base_name } else { "ferrokv" },
                        load.label,
                        r.tool.rps,
                        r.tool.avg_ms,
                        r.tool.p99_ms,
                        r.load_avg
                    );
                }
                sides[side].push(m);
            }
        }
        println!(
            "### {size} member(s): stage breakdown of the last round; client view of every round ({base_name} vs ferrokv)"
        );
        println!();
        for (li, load) in LOADS.iter().enumerate() {
            println!(
                "#### {} ({} requests, etcd `benchmark` tool, leader endpoint)",
                load.label, a.total
            );
            println!();
            println!("| round | {base_name} req/s | {base_name} avg ms | {base_name} p99 ms | ferrokv req/s | ferrokv avg ms | ferrokv p99 ms | ratio req/s | load avg ({base_name} / ferrokv) |");
            println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
            for (r, (base_round, our_round)) in sides[0].iter().zip(&sides[1]).enumerate() {
                let (e, f) = (&base_round[li], &our_round[li]);
                println!(
                    "| {} | {:.0} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {:.2} | {} / {} |",
                    r + 1,
                    e.tool.rps,
                    e.tool.avg_ms,
                    e.tool.p99_ms,
                    f.tool.rps,
                    f.tool.avg_ms,
                    f.tool.p99_ms,
                    f.tool.rps / e.tool.rps,
                    e.load_avg,
                    f.load_avg
                );
            }
            println!();
            let Some(last) = sides[1].last().and_then(|r| r.get(li)) else {
                continue;
            };
            let Some(etcd_last) = sides[0].last().and_then(|r| r.get(li)) else {
                continue;
            };
            println!("| stage (summed over members) | mean ms | p50 ≤ ms | p99 ≤ ms | samples |");
            println!("|---|---:|---:|---:|---:|");
            let rows: &[(&str, &str)] = if load.writes() {
                &PUT_STAGES
            } else {
                &READ_STAGES
            };
            for (family, what) in rows {
                println!("| ferrokv: {what} | {} |", cell(last.stages.get(*family)));
            }
            if base_name == "etcd" {
                for (family, what) in ETCD_STAGES {
                    println!(
                        "| etcd 3.6: {what} | {} |",
                        cell(etcd_last.stages.get(family))
                    );
                }
            } else {
                for (family, what) in rows {
                    println!(
                        "| before: {what} | {} |",
                        cell(etcd_last.stages.get(*family))
                    );
                }
            }
            println!();
        }
    }
    Ok(())
}
