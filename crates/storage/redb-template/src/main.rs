//! Writes an empty redb database whose regions are `REGION` bytes instead of redb's 4 GiB.
//!
//! Why: within one region redb grows a file by doubling it, so a keyspace of 70 MB of pages
//! sat in a 128 MiB file. Past its first region a file grows one region at a time, so with
//! small regions the file stays within two regions of its data, as bbolt grows etcd's file in
//! 16 MiB steps. The region size is part of the file (its header), fixed at creation, and
//! every redb reads it from there; only creating such a file needs the `fuzzing` cfg.

const REGION: u64 = 4 << 20;

fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: ferrokv-redb-template OUT");
    let _ = std::fs::remove_file(&out);
    let db = redb::Builder::new()
        .set_region_size(REGION)
        .create(&out)
        .expect("create");
    drop(db);
    let len = std::fs::metadata(&out).expect("stat").len();
    println!("{out}: {len} bytes, regions of {REGION} bytes");
}
