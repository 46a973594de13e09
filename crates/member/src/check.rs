//! `ferrokv check --data-dir DIR`: verifies a stopped member's keyspace offline, the checks a
//! member runs at start (`--keyspace-verify-on-open`) plus the lease index, and reports every
//! problem. The file is never changed: redb's check repairs what it can, so it runs on a copy.

use std::io::Write;
use std::path::Path;

use ferrokv_storage::{check_pages, Store};

use crate::error::{Error, Result};

pub fn run(data_dir: &Path, out: &mut dyn Write) -> Result<()> {
    let db = ferrokv_datadir::DataDir::new(data_dir).db();
    if !db.is_file() {
        return Err(Error::CheckFailed(format!(
            "{}: no keyspace file (is {} a member's --data-dir?)",
            db.display(),
            data_dir.display()
        )));
    }
    let tmp = tempfile::tempdir().map_err(|e| Error::io("creating", "a temp dir", e))?;
    let copy = tmp.path().join("db");
    std::fs::copy(&db, &copy).map_err(|e| Error::io("copying", &db, e))?;
    let storage = |source| Error::Storage {
        path: db.clone(),
        source,
    };
    let w = |out: &mut dyn Write, line: String| {
        writeln!(out, "{line}").map_err(|e| Error::io("writing", "stdout", e))
    };
    w(out, format!("checking {}", db.display()))?;
    let mut failed = Vec::new();
    match check_pages(&copy) {
        Ok(true) => w(out, "redb integrity (page checksums, allocator): ok".into())?,
        Ok(false) => w(
            out,
            "redb integrity: ok after redb's crash recovery (the member was not shut down cleanly; its last unsynced commits are replayed from the WAL at start)"
                .into(),
        )?,
        Err(e) => {
            w(out, format!("redb integrity: FAILED: {e}"))?;
            failed.push("redb integrity".to_string());
        }
    }
    if failed.is_empty() {
        let store = Store::open(&copy).map_err(storage)?;
        let report = store.verify().map_err(storage)?;
        w(
            out,
            format!(
                "keyspace: revision {}, compacted {}, {} keys, {} history records, {} leases",
                store.current_revision(),
                store.compacted_revision(),
                report.keys,
                report.history_records,
                report.leases
            ),
        )?;
        if report.ok() {
            w(out, "latest/history/key index/lease index: ok".into())?;
        } else {
            for p in &report.problems {
                w(out, format!("  {p}"))?;
            }
            if report.more_problems > 0 {
                w(out, format!("  ... and {} more", report.more_problems))?;
            }
            w(
                out,
                format!(
                    "latest/history/key index/lease index: FAILED ({} problems)",
                    report.problems.len() as u64 + report.more_problems
                ),
            )?;
            failed.push("keyspace consistency".to_string());
        }
    }
    if failed.is_empty() {
        w(out, "OK".into())?;
        Ok(())
    } else {
        Err(Error::CheckFailed(format!(
            "{} failed: {}",
            db.display(),
            failed.join(", ")
        )))
    }
}
