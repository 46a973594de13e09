//! The keyspace file as `Maintenance.Status` reports it, with etcd 3.6 as the control: after
//! overwrites and a compaction, `Defragment` gives the freed pages back (the reported db size
//! drops as etcd's does) and every key is intact; a SIGKILL in the middle of a defragment
//! leaves a member that restarts with all its data.
//!
//! Sizes only, never timings.

use std::time::Duration;

use etcd_client::{Client, CompactionOptions, GetOptions};
use ferrokv_tests::{Backend, Member, MemberOpts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEYS: usize = 200;
const ROUNDS: usize = 5;
const VALUE: usize = 16 * 1024;

fn value(key: usize, round: usize) -> Vec<u8> {
    let mut v = vec![b'a' + (round as u8); VALUE];
    v[..8].copy_from_slice(&(key as u64).to_be_bytes());
    v
}

async fn status(c: &mut Client) -> (i64, i64) {
    let s = c.status().await.expect("status");
    (s.db_size(), s.raft_used_db_size())
}

/// A gauge of `GET /metrics` on the client URL (HTTP/1.0, close-delimited).
async fn metric(m: &Member, name: &str) -> i64 {
    let addr = m.client_url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut raw = String::new();
    conn.read_to_string(&mut raw).await.expect("response");
    let line = raw
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in /metrics"));
    let v: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad sample {line:?}"));
    v as i64
}

async fn check_all(c: &mut Client, round: usize) {
    let r = c
        .get("k/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get all");
    assert_eq!(r.kvs().len(), KEYS, "keys after defragment");
    for (i, kv) in r.kvs().iter().enumerate() {
        assert_eq!(kv.key(), format!("k/{i:04}").as_bytes());
        assert_eq!(kv.value(), value(i, round).as_slice(), "value of k/{i:04}");
        assert_eq!(kv.version(), ROUNDS as i64);
    }
}

/// (size before the compaction, size after compact + defrag, in use after) of one backend.
async fn put_compact_defrag(b: Backend) -> (i64, i64, i64) {
    let m = Member::start(b, MemberOpts::default())
        .await
        .unwrap_or_else(|e| panic!("starting {}: {e}", b.name()));
    let mut c = m.client().await.expect("client");
    let mut rev = 0;
    for round in 0..ROUNDS {
        for i in 0..KEYS {
            let r = c
                .put(format!("k/{i:04}"), value(i, round), None)
                .await
                .expect("put");
            rev = r.header().expect("header").revision();
        }
    }
    // The apply loop measures the file at its periodic sync; give it one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (before, _) = status(&mut c).await;
    c.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    c.defragment().await.expect("defragment");
    let (after, in_use) = status(&mut c).await;
    // The metrics say what Status says (nothing writes between the two).
    assert_eq!(
        metric(&m, "etcd_mvcc_db_total_size_in_bytes").await,
        after,
        "{}",
        b.name()
    );
    assert_eq!(
        metric(&m, "etcd_mvcc_db_total_size_in_use_in_bytes").await,
        in_use,
        "{}",
        b.name()
    );
    check_all(&mut c, ROUNDS - 1).await;
    eprintln!(
        "{}: db {before} B before compaction, {after} B after compact + defrag ({in_use} B in use)",
        b.name()
    );
    (before, after, in_use)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_gives_back_what_a_compaction_freed_as_etcd_does() {
    let (etcd_before, etcd_after, _) = put_compact_defrag(Backend::Etcd36).await;
    let (before, after, in_use) = put_compact_defrag(Backend::Ferrokv).await;
    // The control: etcd keeps one revision of 200 × 16 KiB out of five.
    assert!(
        etcd_after * 3 < etcd_before,
        "etcd: {etcd_before} -> {etcd_after}"
    );
    assert!(after * 3 < before, "ferrokv: {before} -> {after}");
    assert!(in_use > 0 && in_use <= after, "in use {in_use} of {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_defragment_keeps_every_key() {
    let mut m = Member::start(Backend::Ferrokv, MemberOpts::default())
        .await
        .expect("starting ferrokv");
    let mut c = m.client().await.expect("client");
    for round in 0..ROUNDS {
        for i in 0..KEYS {
            c.put(format!("k/{i:04}"), value(i, round), None)
                .await
                .expect("put");
        }
    }
    let copy = m.layout().db().with_extension("defrag");
    let mut d = c.clone();
    let defrag = tokio::spawn(async move { d.defragment().await });
    let mut seen = false;
    for _ in 0..20_000 {
        if copy.exists() {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    assert!(
        seen,
        "the defragment's copy {} never appeared",
        copy.display()
    );
    m.kill();
    let _ = defrag.await;
    m.restart().await.expect("restart after SIGKILL");
    let mut c = m.client().await.expect("client");
    check_all(&mut c, ROUNDS - 1).await;
    assert!(!copy.exists(), "the interrupted copy is removed on start");
    // And a defragment afterwards completes.
    c.defragment().await.expect("defragment after restart");
    check_all(&mut c, ROUNDS - 1).await;
}
