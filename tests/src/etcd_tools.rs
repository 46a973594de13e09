//! etcd's own tools built from the root module `go.etcd.io/etcd/v3` at v3.6.8
//! (`tests/etcd-tools`, `scripts/build-etcd-tools.sh`): `etcd-dump-logs` and `benchmark`.

use std::path::PathBuf;

use crate::member::cached_go_tools;
use crate::{Error, Result};

/// The directory holding `etcd-dump-logs` and `benchmark`: `ETCD_TOOLS_DIR`, else what
/// `scripts/build-etcd-tools.sh` prints. Built at most once per test process. Missing tools
/// are an error, never a skip.
pub fn etcd_tools_dir() -> Result<PathBuf> {
    static DIR: std::sync::OnceLock<std::result::Result<PathBuf, String>> =
        std::sync::OnceLock::new();
    let got = DIR.get_or_init(|| match std::env::var_os("ETCD_TOOLS_DIR") {
        Some(d) => Ok(PathBuf::from(d)),
        None => cached_go_tools("build-etcd-tools.sh", &["etcd-dump-logs", "benchmark"]),
    });
    match got {
        Ok(d) if d.join("etcd-dump-logs").is_file() => Ok(d.clone()),
        Ok(d) => Err(Error::BinaryMissing {
            path: d.join("etcd-dump-logs"),
            hint: "ETCD_TOOLS_DIR holds no etcd-dump-logs".into(),
        }),
        Err(e) => Err(Error::BinaryMissing {
            path: PathBuf::from("etcd-dump-logs (3.6)"),
            hint: e.clone(),
        }),
    }
}

/// `etcd-dump-logs` v3.6.8.
pub fn etcd_dump_logs() -> Result<PathBuf> {
    Ok(etcd_tools_dir()?.join("etcd-dump-logs"))
}

/// etcd's `benchmark` tool v3.6.8.
pub fn benchmark() -> Result<PathBuf> {
    Ok(etcd_tools_dir()?.join("benchmark"))
}
