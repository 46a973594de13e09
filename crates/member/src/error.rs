//! The one error type of the `ferrokv` binary. `main` turns any of these into one line on
//! stderr and exit code 1, so every message names what was wrong and with which value.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag (or its `ETCD_*` env var) has a value etcd would reject.
    #[error("invalid value {value:?} for flag --{flag}: {reason}")]
    InvalidFlag {
        flag: String,
        value: String,
        reason: String,
    },
    /// Each flag is fine on its own but the combination is not (e.g. heartbeat vs election).
    #[error("{0}")]
    Conflict(String),
    /// The command line does not parse (unknown flag, missing argument, ...).
    #[error("{0}")]
    Usage(String),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the WAL in {}: {source}", dir.display())]
    Wal {
        dir: PathBuf,
        #[source]
        source: ferrokv_wal::Error,
    },
    /// The snapshot file is not what `Maintenance.Snapshot` produces.
    #[error("snapshot {}: {reason}", path.display())]
    BadSnapshot { path: PathBuf, reason: String },
    #[error("opening the keyspace of snapshot {}: {source}", path.display())]
    Storage {
        path: PathBuf,
        #[source]
        source: ferrokv_storage::Error,
    },
    /// A server-side encoding step (member list, raft conf state) failed during a restore.
    #[error("{step}: {source}")]
    Server {
        step: &'static str,
        #[source]
        source: ferrokv_server::Error,
    },
    /// `ferrokv check` found problems (listed on stdout).
    #[error("{0}")]
    CheckFailed(String),
    /// No endpoint could be reached or the stream failed.
    #[error("{0}")]
    Rpc(String),
    /// An object-store backup failed (upload, listing, download, checks).
    #[error("{0}")]
    Backup(String),
}

impl Error {
    pub fn invalid(flag: &str, value: &str, reason: impl Into<String>) -> Error {
        Error::InvalidFlag {
            flag: flag.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
