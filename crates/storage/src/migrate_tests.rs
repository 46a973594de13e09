//! Schema 1 files (written here by the schema 1 writer kept in `legacy.rs`) and schema 2 files
//! open with nothing lost, and a SIGKILL in the middle of a migration leaves a file that opens.

use super::*;
use crate::legacy::{HISTORY_V1, LATEST_V1};
use std::process::{Command, Stdio};

/// Everything a reader can see of a store, for comparing two of them.
fn content(
    s: &Store,
) -> (
    Vec<mvccpb::KeyValue>,
    Vec<mvccpb::Event>,
    KvHash,
    u32,
    Vec<LeaseRecord>,
) {
    let all = s
        .range(&pb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .unwrap()
        .kvs;
    let events = s
        .events_since(s.compacted_revision().max(1), &[0], &[0], true, usize::MAX)
        .unwrap();
    (
        all,
        events,
        s.kv_hash(0).unwrap(),
        s.hash().unwrap(),
        s.leases().unwrap(),
    )
}

/// A store with small and chunk-sized values, overwrites, deletes, a lease and a compaction.
fn fill(s: &Store, keys: usize) {
    let mut b = s.write_batch().unwrap();
    b.lease_grant(7, 60).unwrap();
    b.commit(true).unwrap();
    for round in 0..3u8 {
        let mut b = s.write_batch().unwrap();
        for i in 0..keys {
            let len = match i % 10 {
                0 => 3 * record::CHUNK + 17,
                1 => record::CHUNK + record::INLINE_MAX + 5,
                _ => 40 + i % 300,
            };
            b.put(&pb::PutRequest {
                key: format!("k/{i:05}").into(),
                value: vec![b'a' + round + (i % 7) as u8; len],
                lease: if i % 13 == 0 { 7 } else { 0 },
                ..Default::default()
            })
            .unwrap();
        }
        b.delete_range(&pb::DeleteRangeRequest {
            key: format!("k/{:05}", round).into(),
            ..Default::default()
        })
        .unwrap();
        b.set_applied_index(10 + u64::from(round), 2).unwrap();
        b.commit(false).unwrap();
        if round == 1 {
            let mut b = s.write_batch().unwrap();
            let rev = b.revision() - 2;
            b.compact(rev).unwrap();
            b.commit(true).unwrap();
        }
    }
    let mut b = s.write_batch().unwrap();
    b.set_meta("members", b"m").unwrap();
    b.commit(true).unwrap();
}

/// Writes the content of `src` as the schema 1 code wrote it, to a new file at `dest`.
fn write_v1(src: &Store, dest: &Path) {
    let db = src.db();
    let rtx = db.begin_read().unwrap();
    let out = Database::create(dest).unwrap();
    let wtx = out.begin_write().unwrap();
    {
        let view_l = rtx.open_table(LATEST).unwrap();
        let view_i = rtx.open_table(KEY_INDEX).unwrap();
        let view_h = rtx.open_table(HISTORY).unwrap();
        let view_c = rtx.open_table(CHUNKS).unwrap();
        let v = View {
            latest: &view_l,
            index: &view_i,
            history: &view_h,
            chunks: &view_c,
        };
        let mut latest = wtx.open_table(LATEST_V1).unwrap();
        let mut history = wtx.open_table(HISTORY_V1).unwrap();
        for r in view_h.iter().unwrap() {
            let (k, _) = r.unwrap();
            let (m, s) = k.value();
            let (h, key, value) = v.record(m, s).unwrap();
            history
                .insert((m, s), legacy::encode_history(&h, &key, &value).as_slice())
                .unwrap();
        }
        for r in view_l.iter().unwrap() {
            let (k, rec) = r.unwrap();
            let h = record::decode_latest(rec.value()).unwrap();
            let value = if h.tombstone {
                Vec::new()
            } else {
                v.value_of(&h).unwrap()
            };
            latest
                .insert(k.value(), legacy::encode_latest(&h, &value).as_slice())
                .unwrap();
        }
    }
    write_full_index(&rtx, &wtx);
    copy_table(&rtx, &wtx, LEASES).unwrap();
    copy_table(&rtx, &wtx, LEASE_KEYS).unwrap();
    {
        let from = rtx.open_table(META).unwrap();
        let mut to = wtx.open_table(META).unwrap();
        for r in from.iter().unwrap() {
            let (k, v) = r.unwrap();
            // Schema 1 files had no schema entry.
            if k.value() != META_SCHEMA {
                to.insert(k.value(), v.value()).unwrap();
            }
        }
    }
    wtx.commit().unwrap();
}

/// The key index of schemas 1 and 2: every revision of a key, its newest (`latest`) too.
fn write_full_index(rtx: &redb::ReadTransaction, wtx: &redb::WriteTransaction) {
    copy_table(rtx, wtx, KEY_INDEX).unwrap();
    let mut index = wtx.open_table(KEY_INDEX).unwrap();
    for r in rtx.open_table(LATEST).unwrap().iter().unwrap() {
        let (k, rec) = r.unwrap();
        let h = record::decode_latest(rec.value()).unwrap();
        let (m, s) = h.history_key();
        assert!(index
            .insert((k.value(), m, s), h.tombstone)
            .unwrap()
            .is_none());
    }
}

/// Writes the content of `src` as the schema 2 code wrote it, to a new file at `dest`.
fn write_v2(src: &Store, dest: &Path) {
    let db = src.db();
    let rtx = db.begin_read().unwrap();
    let out = Database::create(dest).unwrap();
    let wtx = out.begin_write().unwrap();
    copy_table(&rtx, &wtx, LATEST).unwrap();
    copy_table(&rtx, &wtx, HISTORY).unwrap();
    copy_table(&rtx, &wtx, CHUNKS).unwrap();
    write_full_index(&rtx, &wtx);
    copy_table(&rtx, &wtx, LEASES).unwrap();
    copy_table(&rtx, &wtx, LEASE_KEYS).unwrap();
    copy_table(&rtx, &wtx, META).unwrap();
    wtx.open_table(META)
        .unwrap()
        .insert(META_SCHEMA, 2i64.to_le_bytes().as_slice())
        .unwrap();
    wtx.commit().unwrap();
}

fn file_schema(path: &Path) -> i64 {
    let db = Database::open(path).unwrap();
    let rtx = db.begin_read().unwrap();
    migrate::schema_of(&rtx).unwrap()
}

#[test]
fn a_schema_1_file_opens_migrated_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let want = Store::open(&dir.path().join("new")).unwrap();
    fill(&want, 60);
    let v1 = dir.path().join("v1");
    write_v1(&want, &v1);
    assert_eq!(file_schema(&v1), 1);
    let got = Store::open_with(&v1, true).unwrap();
    assert_eq!(content(&got), content(&want));
    assert_eq!(got.applied_index(), want.applied_index());
    assert_eq!(
        got.meta("members").unwrap().as_deref(),
        Some(b"m".as_slice())
    );
    assert!(got.verify().unwrap().ok());
    drop(got);
    assert_eq!(file_schema(&v1), SCHEMA);
    // Reopening a migrated file changes nothing.
    let again = Store::open(&v1).unwrap();
    assert_eq!(content(&again), content(&want));
}

#[test]
fn a_schema_2_file_opens_migrated_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let want = Store::open(&dir.path().join("new")).unwrap();
    fill(&want, 60);
    let v2 = dir.path().join("v2");
    write_v2(&want, &v2);
    assert_eq!(file_schema(&v2), 2);
    let got = Store::open_with(&v2, true).unwrap();
    assert_eq!(content(&got), content(&want));
    assert!(got.verify().unwrap().ok());
    assert_eq!(got.sequential_problem().unwrap(), None);
    drop(got);
    assert_eq!(file_schema(&v2), SCHEMA);
    let again = Store::open(&v2).unwrap();
    assert_eq!(content(&again), content(&want));
}

#[test]
fn a_schema_2_snapshot_restores_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let want = Store::open(&dir.path().join("new")).unwrap();
    fill(&want, 30);
    let v2 = dir.path().join("v2.snap");
    write_v2(&want, &v2);
    let s = Store::open(&dir.path().join("follower")).unwrap();
    apply_one_put(&s);
    assert_eq!(s.restore_from(&v2).unwrap(), want.applied_index());
    assert_eq!(content(&s), content(&want));
    assert!(s.verify().unwrap().ok());
}

/// A raft snapshot is written in schema 2 (a follower of the previous version may read it),
/// the same file `write_v2` writes, and restores migrated.
#[test]
fn a_raft_snapshot_is_schema_2_and_restores_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let want = Store::open(&dir.path().join("new")).unwrap();
    fill(&want, 30);
    let snap = dir.path().join("raft.snap");
    want.snapshot_to(&snap).unwrap();
    assert_eq!(file_schema(&snap), 2);
    let v2 = dir.path().join("v2");
    write_v2(&want, &v2);
    let rows = |p: &Path| -> Vec<(Vec<u8>, u64, u32, bool)> {
        let db = Database::open(p).unwrap();
        let rtx = db.begin_read().unwrap();
        let t = rtx.open_table(KEY_INDEX).unwrap();
        t.iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                let (key, m, s) = k.value();
                (key.to_vec(), m, s, v.value())
            })
            .collect()
    };
    assert_eq!(rows(&snap), rows(&v2));
    let s = Store::open(&dir.path().join("follower")).unwrap();
    apply_one_put(&s);
    assert_eq!(s.restore_from(&snap).unwrap(), want.applied_index());
    assert_eq!(content(&s), content(&want));
    assert_eq!(s.sequential_problem().unwrap(), None);
}

/// A schema 2 key index that lacks a key's newest revision is not silently trimmed: the
/// migration refuses the file.
#[test]
fn a_schema_2_file_with_an_index_row_missing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let want = Store::open(&dir.path().join("new")).unwrap();
    fill(&want, 10);
    let v2 = dir.path().join("v2");
    write_v2(&want, &v2);
    {
        let db = Database::open(&v2).unwrap();
        let wtx = db.begin_write().unwrap();
        {
            let latest = wtx.open_table(LATEST).unwrap();
            let (k, rec) = latest.first().unwrap().unwrap();
            let (m, s) = record::decode_latest(rec.value()).unwrap().history_key();
            let mut index = wtx.open_table(KEY_INDEX).unwrap();
            index.remove((k.value(), m, s)).unwrap();
        }
        wtx.commit().unwrap();
    }
    let err = Store::open(&v2)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("has no key index entry"), "{err}");
    assert_eq!(
        file_schema(&v2),
        2,
        "the refused migration left the file as it was"
    );
}

#[test]
fn a_schema_1_snapshot_restores_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let want = Store::open(&dir.path().join("new")).unwrap();
    fill(&want, 30);
    let v1 = dir.path().join("v1.snap");
    write_v1(&want, &v1);
    let s = Store::open(&dir.path().join("follower")).unwrap();
    apply_one_put(&s);
    assert_eq!(s.restore_from(&v1).unwrap(), want.applied_index());
    assert_eq!(content(&s), content(&want));
    assert!(s.verify().unwrap().ok());
}

fn apply_one_put(s: &Store) {
    let mut b = s.write_batch().unwrap();
    b.put(&pb::PutRequest {
        key: b"other".to_vec(),
        value: b"x".to_vec(),
        ..Default::default()
    })
    .unwrap();
    b.commit(true).unwrap();
}

const CHILD_ENV: &str = "FERROKV_MIGRATE_CHILD_DB";

/// Run by `sigkill_during_migration_leaves_an_openable_file` in a child process, which it
/// kills while this migrates.
#[test]
#[ignore = "the child process of sigkill_during_migration_leaves_an_openable_file"]
fn migration_child() {
    let path = std::env::var_os(CHILD_ENV)
        .unwrap_or_else(|| panic!("{CHILD_ENV} not set: this test is run by its parent"));
    println!("opening");
    Store::open(Path::new(&path)).unwrap();
    println!("migrated");
}

#[test]
fn sigkill_during_migration_leaves_an_openable_file() {
    let dir = tempfile::tempdir().unwrap();
    let want = Store::open(&dir.path().join("new")).unwrap();
    fill(&want, 3000);
    let want_content = content(&want);
    let master = dir.path().join("v1.master");
    write_v1(&want, &master);
    let exe = std::env::current_exe().unwrap();
    let mut killed_mid_migration = 0;
    for delay_ms in [5u64, 20, 50, 100, 200, 400] {
        let path = dir.path().join(format!("v1.{delay_ms}"));
        std::fs::copy(&master, &path).unwrap();
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "migrate_tests::migration_child",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the child is about to open the file, then kill it after `delay_ms`.
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
            assert!(n > 0, "the child exited before opening the file");
            if line.trim() == "opening" {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let schema = file_schema(&path);
        if schema == 1 {
            killed_mid_migration += 1;
        }
        let s = Store::open_with(&path, true)
            .unwrap_or_else(|e| panic!("killed after {delay_ms} ms (schema {schema}): {e}"));
        assert_eq!(content(&s), want_content, "killed after {delay_ms} ms");
        drop(s);
        std::fs::remove_file(&path).unwrap();
    }
    assert!(
        killed_mid_migration > 0,
        "no kill landed before the migration committed: make the file larger"
    );
}
