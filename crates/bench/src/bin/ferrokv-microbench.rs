//! `ferrokv-microbench`: timings of the two engines under the member, without a network or a
//! reference to compare with — the WAL's append path (one `fdatasync` per append) and replay,
//! and the MVCC store's hot paths (batched puts, counts, pages, point gets, compaction).
//!
//! These are for watching ferrokv's own layers move between commits, run by `make bench`
//! after the etcd comparison; they prove nothing about etcd. Each row is a median of
//! `--rounds` fresh runs on a temp dir, because one run on a noisy 2-core machine is noise.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use ferrokv_proto::etcdserverpb as pb;
use ferrokv_storage::Store;
use ferrokv_wal::{Entry, HardState, Wal, WalOptions};

#[derive(Parser, Debug)]
#[command(about = "Timings of ferrokv's WAL and MVCC store, medians of fresh rounds")]
struct Args {
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Single-entry appends (each one fdatasync'd).
    #[arg(long, default_value_t = 2000)]
    wal_appends: u64,
    /// Keys loaded into the store.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
}

type Row = (&'static str, Duration);

fn wal_round(a: &Args) -> Result<Vec<Row>> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("wal");
    let mut wal = Wal::create(&dir, b"microbench", WalOptions::default())?;
    let entry = |index: u64| Entry {
        index,
        term: 1,
        entry_type: 0,
        data: vec![index as u8; 100],
        context: vec![],
    };
    let hs = |commit: u64| HardState {
        term: 1,
        vote: 1,
        commit,
    };
    let n = a.wal_appends;
    let t = Instant::now();
    for i in 1..=n {
        wal.append(&[entry(i)], Some(&hs(i)))?;
    }
    let single = t.elapsed() / n as u32;
    let batch: Vec<Entry> = (n + 1..=n + 100_000).map(entry).collect();
    let t = Instant::now();
    for chunk in batch.chunks(1000) {
        wal.append(chunk, Some(&hs(1)))?;
    }
    let batched = t.elapsed();
    drop(wal);
    let t = Instant::now();
    let replay = Wal::read(&dir)?;
    let replayed = t.elapsed();
    anyhow::ensure!(
        replay.entries.len() as u64 == n + 100_000,
        "replay lost entries"
    );
    Ok(vec![
        ("wal: one entry appended + fdatasync (per append)", single),
        ("wal: 100k entries in appends of 1000", batched),
        ("wal: replay of all entries", replayed),
    ])
}

fn range(key: &str, end: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

fn store_round(a: &Args) -> Result<Vec<Row>> {
    let tmp = tempfile::tempdir()?;
    let store = Store::open(&tmp.path().join("db"))?;
    let put = |i: usize| pb::PutRequest {
        key: format!("/registry/k/{i:08}").into_bytes(),
        value: vec![7; 256],
        ..Default::default()
    };
    let t = Instant::now();
    for chunk in (0..a.keys).collect::<Vec<_>>().chunks(1000) {
        let mut b = store.write_batch()?;
        for &i in chunk {
            b.put(&put(i))?;
        }
        b.commit(false)?;
    }
    let load = t.elapsed();
    let t = Instant::now();
    let r = store.range(&pb::RangeRequest {
        count_only: true,
        ..range("/registry/", "/registry0")
    })?;
    let count = t.elapsed();
    anyhow::ensure!(
        r.count as usize == a.keys,
        "count {} != {}",
        r.count,
        a.keys
    );
    let page = pb::RangeRequest {
        limit: 500,
        ..range("/registry/", "/registry0")
    };
    let t = Instant::now();
    store.range(&page)?;
    let paged = t.elapsed();
    let at = store.current_revision();
    let mut b = store.write_batch()?;
    b.put(&put(1))?;
    b.commit(false)?;
    let t = Instant::now();
    store.range(&pb::RangeRequest {
        revision: at,
        ..page.clone()
    })?;
    let old_page = t.elapsed();
    let t = Instant::now();
    for i in 0..10_000 {
        store.range(&range(&format!("/registry/k/{:08}", (i * 7) % a.keys), ""))?;
    }
    let gets = t.elapsed();
    let t = Instant::now();
    let mut b = store.write_batch()?;
    b.compact(at)?;
    b.commit(false)?;
    let compact = t.elapsed();
    Ok(vec![
        ("store: load in write batches of 1000 puts", load),
        ("store: count_only over every key", count),
        ("store: page of 500 at the current revision", paged),
        ("store: page of 500 at an older revision", old_page),
        ("store: 10,000 point gets", gets),
        ("store: compaction of the whole history", compact),
    ])
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let a = Args::parse();
    let mut rows: Vec<(&'static str, Vec<Duration>)> = Vec::new();
    for round in 0..a.rounds.max(1) {
        let mut got = wal_round(&a).with_context(|| format!("wal round {round}"))?;
        got.extend(store_round(&a).with_context(|| format!("store round {round}"))?);
        for (i, (label, d)) in got.into_iter().enumerate() {
            match rows.get_mut(i) {
                Some(r) => r.1.push(d),
                None => rows.push((label, vec![d])),
            }
        }
    }
    println!(
        "| ferrokv engines ({} keys, medians of {} rounds) | time |",
        a.keys, a.rounds
    );
    println!("|---|---:|");
    for (label, ds) in rows {
        println!("| {label} | {:?} |", median(ds));
    }
    Ok(())
}
