//! Real-process test harness for ferrokv.
//!
//! Owns: launching member processes (`ferrokv` or the reference `etcd`, same flags) on free
//! loopback ports with their own data dirs, waiting until they serve, killing/restarting them,
//! alone ([`Member`]) or as a multi-member [`Cluster`] grown and shrunk through the member API;
//! driving the real `etcdctl`; connecting the `etcd-client` crate; and normalising responses
//! so that the two backends can be compared with ids masked.
//!
//! Must not depend on any ferrokv server crate: the member is a black box reached only through
//! its binary, its flags, its data-dir layout (`ferrokv-datadir`, shared with etcd) and the
//! etcd v3 wire API (`ferrokv-proto` is used for raw gRPC calls
//! the `etcd-client` crate cannot express, e.g. an invalid sort enum).

pub mod client;
pub mod cluster;
pub mod dns;
pub mod etcd_tools;
pub mod etcdctl;
pub mod history;
pub mod kube;
pub mod linearizability;
pub mod member;
pub mod netns;
pub mod normalize;
pub mod objstore;
pub mod tls;

pub use self::kube::{ControlPlane, NodeAgent, OperatorProcess};
pub use client::{connect, connect_endpoints, grpc_error, raw_kv};
pub use cluster::Cluster;
pub use etcdctl::{etcdctl, etcdctl_stdin, CtlOutput, CtlWatch};
pub use member::{free_port, Backend, Member, MemberOpts, PeerTls};
pub use normalize::{first_mismatch, mask_ids, IdMasker};
pub use tls::TlsFiles;

use std::path::PathBuf;

/// Every way the harness itself can fail (as opposed to an assertion in a test).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("member binary {path} not found: {hint}")]
    BinaryMissing { path: PathBuf, hint: String },
    #[error("could not spawn {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("{backend} member exited before it was ready ({status}); log:\n{log}")]
    ExitedEarly {
        backend: &'static str,
        status: String,
        log: String,
    },
    #[error("{backend} member not ready after {secs} s (last error: {last}); log:\n{log}")]
    NotReady {
        backend: &'static str,
        secs: u64,
        last: String,
        log: String,
    },
    #[error("cluster did not settle: {0}")]
    Settle(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("etcd client: {0}")]
    Client(#[from] etcd_client::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("TLS: {0}")]
    Tls(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Generates three `#[tokio::test]`s per body: `<body>::etcd` (Debian's 3.4),
/// `<body>::etcd36` (etcd 3.6 from the Go module proxy) and `<body>::ferrokv`.
#[macro_export]
macro_rules! all_backends {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                super::$body($crate::Backend::Etcd).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd36() {
                super::$body($crate::Backend::Etcd36).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ferrokv() {
                super::$body($crate::Backend::Ferrokv).await
            }
        }
    )*};
}

/// Generates two `#[tokio::test]`s per body, `<body>::etcd` and `<body>::ferrokv`, so one test
/// body checks both backends and a filter like `::etcd` picks one side.
#[macro_export]
macro_rules! both_backends {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                super::$body($crate::Backend::Etcd).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ferrokv() {
                super::$body($crate::Backend::Ferrokv).await
            }
        }
    )*};
}
