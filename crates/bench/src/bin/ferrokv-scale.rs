//! `ferrokv-scale`: one member holding a large keyspace (issue 10's 1M-key rows), ferrokv
//! against etcd 3.6 in alternating rounds.
//!
//! Per side and round: a fresh single member is loaded with `--keys` puts of 32-byte keys and
//! 256-byte values by etcd's own `benchmark` tool (256 clients / 16 conns, every key once),
//! then measured: resident memory after loading and its peak so far (VmRSS / VmHWM), the
//! keyspace file and the WAL on disk, `etcdctl snapshot save` (etcd 3.6's etcdctl: time and
//! file size), a keys-only scan of the whole keyspace in pages of 1,000 (as a paginated LIST
//! reads it), a restart (SIGTERM, start, until `Status` reports a leader; the fastest of
//! `--restarts`) and the resident memory after the last one, then after a second paged scan.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use etcd_client::GetOptions;
use ferrokv_tests::etcd_tools;
use ferrokv_tests::{Backend, Member, MemberOpts};

#[derive(Parser, Debug)]
#[command(about = "One member with a large keyspace: memory, disk, snapshot, scan, restart")]
struct Args {
    /// Alternating rounds (etcd, ferrokv, etcd, ferrokv, ...).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Keys loaded (32-byte keys, 256-byte values, each written once).
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Keys per page of the scan.
    #[arg(long, default_value_t = 1000)]
    page: i64,
    /// ferrokv binary (default: FERROKV_BIN, else target/release/ferrokv).
    #[arg(long, env = "FERROKV_BIN")]
    ferrokv_bin: Option<PathBuf>,
    /// etcd binary (default: ETCD_BIN, else etcd 3.6.16 from scripts/build-etcd36.sh).
    #[arg(long, env = "ETCD_BIN")]
    etcd_bin: Option<PathBuf>,
    /// Restarts per side and round; the row is the fastest (a restart takes seconds and the
    /// machine's noise is of the same size).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    restarts: u32,
    /// A flag passed to ferrokv only, after the standard ones (repeatable), e.g.
    /// `--ferrokv-arg=--keyspace-cache-bytes=1073741824`.
    #[arg(long = "ferrokv-arg", allow_hyphen_values = true)]
    ferrokv_args: Vec<String>,
}

/// What one side measured in one round.
#[derive(Default, Clone)]
struct Sample {
    load_s: f64,
    rss_loaded_mib: f64,
    peak_loaded_mib: f64,
    db_mib: f64,
    wal_mib: f64,
    snapshot_s: f64,
    snapshot_mib: f64,
    scan_s: f64,
    scanned: u64,
    restart_s: f64,
    rss_restarted_mib: f64,
    rss_after_scan_mib: f64,
    peak_after_restart_mib: f64,
}

const MIB: f64 = 1024.0 * 1024.0;

/// `VmRSS` and `VmHWM` (the peak) of a process, in MiB.
fn memory(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Option<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    match (field("VmRSS:"), field("VmHWM:")) {
        (Some(rss), Some(hwm)) => Ok((rss, hwm)),
        _ => bail!("no VmRSS/VmHWM in /proc/{pid}/status"),
    }
}

fn pid(m: &Member) -> Result<u32> {
    m.pid().context("member process not running")
}

/// Bytes of the regular files under `dir`, recursively.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(md) if md.is_dir() => dir_bytes(&e.path()),
            Ok(md) => md.len(),
            Err(_) => 0,
        })
        .sum()
}

fn load(tool: &Path, endpoint: &str, keys: u64) -> Result<()> {
    let out = Command::new(tool)
        .args([
            &format!("--endpoints={endpoint}"),
            "--conns=16",
            "--clients=256",
            "put",
            "--key-size=32",
            "--val-size=256",
            "--sequential-keys",
            &format!("--key-space-size={keys}"),
            &format!("--total={keys}"),
        ])
        .output()
        .with_context(|| format!("running {}", tool.display()))?;
    if !out.status.success() {
        bail!(
            "benchmark put: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Reads every key (keys only) in pages of `page`, each starting after the last key of the
/// one before; returns the keys seen.
async fn scan(m: &Member, page: i64) -> Result<u64> {
    let mut c = m.client().await?;
    let mut from = vec![0u8];
    let mut seen = 0u64;
    loop {
        let opts = GetOptions::new()
            .with_range(vec![0u8])
            .with_keys_only()
            .with_limit(page)
            .with_serializable();
        let resp = c.get(from.clone(), Some(opts)).await?;
        let kvs = resp.kvs();
        seen += kvs.len() as u64;
        let Some(last) = kvs.last() else { break };
        if !resp.more() {
            break;
        }
        from = last.key().to_vec();
        from.push(0);
    }
    Ok(seen)
}

async fn measure(backend: Backend, bin: &Path, tool: &Path, a: &Args) -> Result<Sample> {
    let opts = MemberOpts {
        bin: Some(bin.to_path_buf()),
        ready_timeout: Duration::from_secs(120),
        extra_args: match backend {
            Backend::Ferrokv => a.ferrokv_args.clone(),
            _ => Vec::new(),
        },
        ..MemberOpts::default()
    };
    let mut m = Member::start(backend, opts)
        .await
        .with_context(|| format!("starting {}", backend.name()))?;
    let mut s = Sample::default();

    let started = Instant::now();
    load(tool, m.endpoint(), a.keys)?;
    s.load_s = started.elapsed().as_secs_f64();
    (s.rss_loaded_mib, s.peak_loaded_mib) = memory(pid(&m)?)?;

    let layout = m.layout();
    s.db_mib = std::fs::metadata(layout.db())
        .map(|md| md.len())
        .unwrap_or(0) as f64
        / MIB;
    s.wal_mib = dir_bytes(&m.wal_dir()) as f64 / MIB;

    let file = m.scratch_dir().join("scale.snapshot.db");
    let file_arg = file.display().to_string();
    let started = Instant::now();
    let out = m.ctl36(&["snapshot", "save", &file_arg]);
    if !out.success() {
        bail!("snapshot save: {}", out.stderr.trim());
    }
    s.snapshot_s = started.elapsed().as_secs_f64();
    s.snapshot_mib = std::fs::metadata(&file).map(|md| md.len()).unwrap_or(0) as f64 / MIB;
    let _ = std::fs::remove_file(&file);

    let started = Instant::now();
    s.scanned = scan(&m, a.page).await?;
    s.scan_s = started.elapsed().as_secs_f64();
    if s.scanned != a.keys {
        bail!(
            "{}: the scan saw {} keys of {}",
            backend.name(),
            s.scanned,
            a.keys
        );
    }

    s.restart_s = f64::INFINITY;
    for _ in 0..a.restarts {
        m.terminate();
        let started = Instant::now();
        m.start_process()?;
        m.wait_ready().await?;
        s.restart_s = s.restart_s.min(started.elapsed().as_secs_f64());
    }
    s.rss_restarted_mib = memory(pid(&m)?)?.0;
    scan(&m, a.page).await?;
    (s.rss_after_scan_mib, s.peak_after_restart_mib) = memory(pid(&m)?)?;
    m.terminate();
    Ok(s)
}

fn default_ferrokv() -> PathBuf {
    ferrokv_tests::member::target_dir()
        .join("release")
        .join("ferrokv")
}

/// (row label, value of a sample, lower is better)
type Row = (&'static str, fn(&Sample) -> f64);

const ROWS: [Row; 12] = [
    ("load: seconds for every key once", |s| s.load_s),
    ("RSS after loading, MiB", |s| s.rss_loaded_mib),
    ("RSS peak while loading, MiB", |s| s.peak_loaded_mib),
    ("keyspace file (db), MiB", |s| s.db_mib),
    ("WAL, MiB", |s| s.wal_mib),
    ("etcdctl snapshot save, s", |s| s.snapshot_s),
    ("snapshot file, MiB", |s| s.snapshot_mib),
    ("keys-only paged scan, s", |s| s.scan_s),
    ("restart to a leader (fastest of --restarts), s", |s| {
        s.restart_s
    }),
    ("RSS after the restart, MiB", |s| s.rss_restarted_mib),
    ("RSS after a scan after the restart, MiB", |s| {
        s.rss_after_scan_mib
    }),
    ("RSS peak after the restart, MiB", |s| {
        s.peak_after_restart_mib
    }),
];

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
    let etcd = match &a.etcd_bin {
        Some(p) => p.clone(),
        None => Backend::Etcd36.binary()?,
    };
    let tool = etcd_tools::benchmark()?;
    if !tool.is_file() {
        bail!(
            "{} missing: run scripts/build-etcd-tools.sh",
            tool.display()
        );
    }
    // [side][round]
    let mut sides: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    for round in 0..a.rounds {
        for (side, backend, bin) in [(0, Backend::Etcd36, &etcd), (1, Backend::Ferrokv, &ferrokv)] {
            let s = measure(backend, bin, &tool, &a).await?;
            eprintln!(
                "round {} {:8} load {:.1} s, rss {:.0} MiB (peak {:.0}), db {:.0} MiB, wal {:.0} MiB, snapshot {:.2} s {:.0} MiB, scan {:.2} s, restart {:.2} s, rss {:.0} / {:.0} MiB",
                round + 1,
                backend.name(),
                s.load_s,
                s.rss_loaded_mib,
                s.peak_loaded_mib,
                s.db_mib,
                s.wal_mib,
                s.snapshot_s,
                s.snapshot_mib,
                s.scan_s,
                s.restart_s,
                s.rss_restarted_mib,
                s.rss_after_scan_mib
            );
            sides[side].push(s);
        }
    }
    println!(
        "### 1 member, {} keys (32 B keys, 256 B values), etcd 3.6 vs ferrokv, {} rounds",
        a.keys, a.rounds
    );
    println!();
    print!("| row |");
    for r in 0..a.rounds {
        print!(" round {}: etcd / ferrokv (ratio) |", r + 1);
    }
    println!();
    print!("|---|");
    for _ in 0..a.rounds {
        print!("---|");
    }
    println!();
    for (label, value) in ROWS {
        print!("| {label} |");
        for (e, f) in sides[0].iter().zip(&sides[1]) {
            let (e, f) = (value(e), value(f));
            let ratio = if e > 0.0 { f / e } else { f64::NAN };
            print!(" {e:.2} / {f:.2} ({ratio:.2}) |");
        }
        println!();
    }
    Ok(())
}
