//! The crate's one error type and the one table that turns it into a gRPC status.
//!
//! Clients (etcdctl, clientv3, kube-apiserver) match etcd's error *text*, so every message
//! here is spelled exactly as etcd spells it and lives nowhere else.

use tonic::{Code, Status};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A storage error: per-request ones (compacted, lease not found, ...) map to etcd errors;
    /// `Backend`/`Corrupt` are fatal for the apply loop.
    #[error(transparent)]
    Storage(#[from] ferrokv_storage::Error),
    #[error("raft: {0}")]
    Raft(#[from] ferrokv_raftnode::Error),
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: given member URLs are invalid")]
    InvalidPeerUrls,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlsExist,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: rpc not supported for learner")]
    LearnerRpc,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("snapshot file: {0}")]
    SnapshotFile(&'static str),
    #[error("{0} is not implemented")]
    Unimplemented(&'static str),
    /// The member cannot start with this configuration / data dir.
    #[error("config: {0}")]
    Config(String),
    #[error("io: {0}")]
    Io(String),
    #[error("tls: {0}")]
    Tls(String),
    /// Something the member cannot continue from (fail-stop).
    #[error("fatal: {0}")]
    Fatal(String),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

impl Error {
    /// True for errors that mean "this member must stop": the state it would carry on from is
    /// not proven (failed durable write, undecodable record).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::Fatal(_)
                | Error::Storage(ferrokv_storage::Error::Backend(_))
                | Error::Storage(ferrokv_storage::Error::Corrupt(_))
        )
    }
}

/// The one mapping from [`Error`] to the gRPC status etcd would send.
pub fn to_status(err: &Error) -> Status {
    use ferrokv_storage::Error as S;
    let (code, msg): (Code, &str) = match err {
        Error::Storage(s) => match s {
            S::Compacted => (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            S::FutureRevision => (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            S::KeyNotFound => (Code::InvalidArgument, "etcdserver: key not found"),
            S::LeaseNotFound => (Code::NotFound, "etcdserver: requested lease not found"),
            S::LeaseExists => (Code::FailedPrecondition, "etcdserver: lease already exists"),
            S::EmptyKey => (Code::InvalidArgument, "etcdserver: key is not provided"),
            S::ValueProvided => (Code::InvalidArgument, "etcdserver: value is provided"),
            S::LeaseProvided => (Code::InvalidArgument, "etcdserver: lease is provided"),
            S::TooManyOps => (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            S::DuplicateKey => (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            S::InvalidSortOption => (Code::InvalidArgument, "etcdserver: invalid sort option"),
            S::Corrupt(_) => (Code::DataLoss, "etcdserver: corrupt cluster"),
            S::Backend(m) => return Status::new(Code::Internal, m.clone()),
            S::BadSnapshot(m) => return Status::new(Code::DataLoss, m.clone()),
        },
        Error::Raft(r) => match r {
            ferrokv_raftnode::Error::Stopped => (Code::Unavailable, "etcdserver: server stopped"),
            ferrokv_raftnode::Error::ProposalDropped => {
                (Code::Unavailable, "etcdserver: leader changed")
            }
            ferrokv_raftnode::Error::NotLeader => {
                (Code::FailedPrecondition, "etcdserver: not leader")
            }
            other => return Status::new(Code::Internal, other.to_string()),
        },
        Error::NoLeader => (Code::Unavailable, "etcdserver: no leader"),
        Error::NotLeader => (Code::FailedPrecondition, "etcdserver: not leader"),
        Error::LeaderChanged => (Code::Unavailable, "etcdserver: leader changed"),
        Error::Stopped => (Code::Unavailable, "etcdserver: server stopped"),
        Error::Timeout => (Code::Unavailable, "etcdserver: request timed out"),
        Error::RequestTooLarge => (Code::InvalidArgument, "etcdserver: request is too large"),
        Error::LeaseTtlTooLarge => (Code::OutOfRange, "etcdserver: too large lease TTL"),
        Error::NoSpace => (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        ),
        Error::MemberNotFound => (Code::NotFound, "etcdserver: member not found"),
        Error::InvalidPeerUrls => (
            Code::InvalidArgument,
            "etcdserver: given member URLs are invalid",
        ),
        Error::PeerUrlsExist => (
            Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists",
        ),
        Error::LearnerRpc => (
            Code::FailedPrecondition,
            "etcdserver: rpc not supported for learner",
        ),
        Error::NotLearner => (
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member",
        ),
        Error::LearnerNotReady => (
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader",
        ),
        Error::TooManyLearners => (
            Code::FailedPrecondition,
            "etcdserver: too many learner members in cluster",
        ),
        Error::Unhealthy => (Code::Unavailable, "etcdserver: unhealthy cluster"),
        Error::NotEnoughStartedMembers => (
            Code::FailedPrecondition,
            "etcdserver: re-configuration failed due to not enough started members",
        ),
        Error::BadLeaderTransferee => (
            Code::FailedPrecondition,
            "etcdserver: bad leader transferee",
        ),
        Error::AuthNotEnabled => (
            Code::FailedPrecondition,
            "etcdserver: authentication is not enabled",
        ),
        Error::Unimplemented(what) => {
            return Status::unimplemented(format!("{what} is not implemented"))
        }
        Error::SnapshotFile(_)
        | Error::Config(_)
        | Error::Io(_)
        | Error::Tls(_)
        | Error::Fatal(_) => return Status::new(Code::Internal, err.to_string()),
    };
    Status::new(code, msg)
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        to_status(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrokv_storage::Error as S;

    #[test]
    fn etcd_codes_and_messages() {
        let rows: Vec<(Error, Code, &str)> = vec![
            (
                Error::Storage(S::Compacted),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                Error::Storage(S::FutureRevision),
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                Error::Storage(S::KeyNotFound),
                Code::InvalidArgument,
                "etcdserver: key not found",
            ),
            (
                Error::Storage(S::LeaseNotFound),
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                Error::Storage(S::LeaseExists),
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                Error::Storage(S::EmptyKey),
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                Error::Storage(S::ValueProvided),
                Code::InvalidArgument,
                "etcdserver: value is provided",
            ),
            (
                Error::Storage(S::LeaseProvided),
                Code::InvalidArgument,
                "etcdserver: lease is provided",
            ),
            (
                Error::Storage(S::TooManyOps),
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                Error::Storage(S::DuplicateKey),
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                Error::Storage(S::InvalidSortOption),
                Code::InvalidArgument,
                "etcdserver: invalid sort option",
            ),
            (
                Error::Storage(S::Corrupt("x".into())),
                Code::DataLoss,
                "etcdserver: corrupt cluster",
            ),
            (
                Error::Raft(ferrokv_raftnode::Error::Stopped),
                Code::Unavailable,
                "etcdserver: server stopped",
            ),
            (Error::NoLeader, Code::Unavailable, "etcdserver: no leader"),
            (
                Error::NotLeader,
                Code::FailedPrecondition,
                "etcdserver: not leader",
            ),
            (
                Error::LeaderChanged,
                Code::Unavailable,
                "etcdserver: leader changed",
            ),
            (
                Error::Stopped,
                Code::Unavailable,
                "etcdserver: server stopped",
            ),
            (
                Error::Timeout,
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
            (
                Error::RequestTooLarge,
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                Error::LeaseTtlTooLarge,
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                Error::MemberNotFound,
                Code::NotFound,
                "etcdserver: member not found",
            ),
            (
                Error::BadLeaderTransferee,
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ),
            (
                Error::NoSpace,
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                Error::InvalidPeerUrls,
                Code::InvalidArgument,
                "etcdserver: given member URLs are invalid",
            ),
            (
                Error::PeerUrlsExist,
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            (
                Error::NotLearner,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            (
                Error::LearnerNotReady,
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (
                Error::TooManyLearners,
                Code::FailedPrecondition,
                "etcdserver: too many learner members in cluster",
            ),
            (
                Error::Unhealthy,
                Code::Unavailable,
                "etcdserver: unhealthy cluster",
            ),
            (
                Error::NotEnoughStartedMembers,
                Code::FailedPrecondition,
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            (
                Error::LearnerRpc,
                Code::FailedPrecondition,
                "etcdserver: rpc not supported for learner",
            ),
            (
                Error::AuthNotEnabled,
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
        ];
        for (err, code, msg) in rows {
            let st = to_status(&err);
            assert_eq!(st.code(), code, "{err:?}");
            assert_eq!(st.message(), msg, "{err:?}");
        }
    }

    #[test]
    fn fatal_classification() {
        assert!(Error::Storage(S::Backend("disk".into())).is_fatal());
        assert!(Error::Storage(S::Corrupt("bad".into())).is_fatal());
        assert!(!Error::Storage(S::Compacted).is_fatal());
        assert!(!Error::Timeout.is_fatal());
    }
}
