//! Where the bytes of a keyspace file go: `cargo run --release -p ferrokv-storage --example dbstat -- <db file>`.
//! Opens a copy (opening repairs an uncleanly closed file), prints the file size, the bytes in
//! use and each table's pages.

use ferrokv_storage::Store;

fn main() {
    let src = std::env::args().nth(1).expect("usage: dbstat <db file>");
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("db");
    std::fs::copy(&src, &copy).expect("copy");
    let store = Store::open(&copy).expect("open");
    let (file, in_use) = store.db_size().expect("size");
    println!("file {file} B, in use {in_use} B");
    for t in store.table_stats().expect("stats") {
        println!("  {t:?}");
    }
}
