//! Measures the keyspace file for a put workload and times reads, to compare layouts:
//! `cargo run --release -p ferrokv-storage --example sizebench -- <keys> <key bytes> <value bytes> [puts per batch] [batches per sync]`.
//! Keys are `key-<n>` zero-padded to the key size, values pseudo-random (incompressible).
//! `KEYS=varint` makes them as etcd's `benchmark put --sequential-keys` does (the zigzag varint
//! of n, zero-padded): in key order they land all over the key space, as in `ferrokv-scale`.

use ferrokv_proto::etcdserverpb as pb;
use ferrokv_storage::Store;
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric argument"))
        .collect();
    let (n, ksz, vsz) = (args[0], args[1], args[2]);
    let per_batch = args.get(3).copied().unwrap_or(8);
    let per_sync = args.get(4).copied().unwrap_or(16);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let store = Store::open(&path).expect("open");
    let varint = std::env::var("KEYS").is_ok_and(|k| k == "varint");
    let key = |i: usize| {
        if varint {
            let mut k = vec![0u8; ksz];
            let mut v = (i as u64) << 1;
            let mut at = 0;
            while v >= 0x80 {
                k[at] = (v as u8) | 0x80;
                v >>= 7;
                at += 1;
            }
            k[at] = v as u8;
            k
        } else {
            format!("key-{i:0>w$}", w = ksz.saturating_sub(4)).into_bytes()
        }
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut value = vec![0u8; vsz];
    let t = Instant::now();
    let mut batches = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(per_batch) {
        let mut b = store.write_batch().expect("batch");
        for &i in chunk {
            for x in value.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *x = seed as u8;
            }
            b.put(&pb::PutRequest {
                key: key(i),
                value: value.clone(),
                ..Default::default()
            })
            .expect("put");
        }
        b.commit(false).expect("commit");
        batches += 1;
        if batches % per_sync == 0 {
            store.sync().expect("sync");
        }
    }
    store.sync().expect("sync");
    let put_s = t.elapsed().as_secs_f64();
    let (file, in_use) = store.db_size().expect("size");
    println!(
        "puts={n} key={ksz} value={vsz}: file {file} B ({:.1} MiB), in use {in_use} B, {:.0} puts/s",
        file as f64 / 1048576.0,
        n as f64 / put_s
    );
    for t in store.table_stats().expect("stats") {
        println!("  {t:?}");
    }
    if std::env::var_os("DEFRAG").is_some() {
        let mut b = store.write_batch().expect("batch");
        let rev = b.revision();
        b.compact(rev).expect("compact");
        b.commit(true).expect("commit");
        let t = Instant::now();
        let (before, after) = store.defragment().expect("defrag");
        println!(
            "defrag: {before} -> {after} B in {:.2}s, in use now {:?}",
            t.elapsed().as_secs_f64(),
            store.db_size().expect("size")
        );
    }
    // Point gets of random keys, then full-range pages of 1000 keys.
    let gets = 20_000.min(n * 4);
    let t = Instant::now();
    for j in 0..gets {
        let i = (j * 7919) % n;
        let r = store
            .range(&pb::RangeRequest {
                key: key(i),
                ..Default::default()
            })
            .expect("get");
        assert_eq!(r.kvs.len(), 1);
    }
    println!(
        "get: {:.2} us/op",
        t.elapsed().as_secs_f64() * 1e6 / gets as f64
    );
    let pages = 200.min(n / 10 + 1);
    let t = Instant::now();
    for j in 0..pages {
        let i = (j * 7919) % n;
        let r = store
            .range(&pb::RangeRequest {
                key: key(i),
                range_end: vec![0],
                limit: 100,
                ..Default::default()
            })
            .expect("range");
        assert!(!r.kvs.is_empty());
    }
    println!(
        "range limit 100: {:.2} us/op",
        t.elapsed().as_secs_f64() * 1e6 / pages as f64
    );
    if varint {
        // key(i)..key(i + 1000) spans 1000 keys only when the keys sort as their numbers do.
        println!("range of 1000 keys: not timed with KEYS=varint (the keys are out of order)");
        return;
    }
    // Ranges of exactly 1000 keys with their values (no counting past the page).
    let t = Instant::now();
    let spans = 200;
    for j in 0..spans {
        let i = (j * 7919) % n.saturating_sub(1000).max(1);
        let r = store
            .range(&pb::RangeRequest {
                key: key(i),
                range_end: key(i + 1000),
                ..Default::default()
            })
            .expect("range");
        assert_eq!(r.kvs.len(), 1000.min(n));
    }
    println!(
        "range of 1000 keys: {:.2} us/op",
        t.elapsed().as_secs_f64() * 1e6 / spans as f64
    );
}
