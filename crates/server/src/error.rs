//! The crate's one error type and the one table that turns it into a gRPC status.
//!
//! Clients (etcdctl, clientv3, kube-apiserver) match etcd's error *text*, so every message
//! is spelled exactly as etcd spells it, once, in [`Error::etcd`]: the `Display` of an etcd
//! error and its gRPC status both come from that table.

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
    #[error("{}", self.etcd_text())]
    NoLeader,
    #[error("{}", self.etcd_text())]
    NotLeader,
    #[error("{}", self.etcd_text())]
    LeaderChanged,
    #[error("{}", self.etcd_text())]
    Stopped,
    #[error("{}", self.etcd_text())]
    Timeout,
    /// A proposal that timed out while a new leader took over (etcd's
    /// `ErrTimeoutDueToLeaderFail`): it was most likely lost with the old leader.
    #[error("{}", self.etcd_text())]
    TimeoutDueToLeaderFail,
    #[error("{}", self.etcd_text())]
    RequestTooLarge,
    #[error("{}", self.etcd_text())]
    LeaseTtlTooLarge,
    #[error("{}", self.etcd_text())]
    NoSpace,
    /// A CORRUPT alarm is raised: writes are refused cluster-wide (etcd's `ErrCorrupt`).
    #[error("{}", self.etcd_text())]
    CorruptCluster,
    #[error("{}", self.etcd_text())]
    MemberNotFound,
    #[error("{}", self.etcd_text())]
    InvalidPeerUrls,
    #[error("{}", self.etcd_text())]
    PeerUrlsExist,
    #[error("{}", self.etcd_text())]
    NotLearner,
    #[error("{}", self.etcd_text())]
    LearnerNotReady,
    #[error("{}", self.etcd_text())]
    TooManyLearners,
    #[error("{}", self.etcd_text())]
    Unhealthy,
    #[error("{}", self.etcd_text())]
    NotEnoughStartedMembers,
    #[error("{}", self.etcd_text())]
    LearnerRpc,
    #[error("{}", self.etcd_text())]
    BadLeaderTransferee,
    #[error("{}", self.etcd_text())]
    AuthNotEnabled,
    // The auth store's errors (etcd's rpctypes ErrGRPC* of auth).
    #[error("{}", self.etcd_text())]
    UserEmpty,
    #[error("{}", self.etcd_text())]
    RoleEmpty,
    #[error("{}", self.etcd_text())]
    UserExists,
    #[error("{}", self.etcd_text())]
    UserNotFound,
    #[error("{}", self.etcd_text())]
    RoleExists,
    #[error("{}", self.etcd_text())]
    RoleNotFound,
    #[error("{}", self.etcd_text())]
    AuthFailed,
    #[error("{}", self.etcd_text())]
    PermissionDenied,
    #[error("{}", self.etcd_text())]
    RoleNotGranted,
    #[error("{}", self.etcd_text())]
    PermissionNotGranted,
    #[error("{}", self.etcd_text())]
    PermissionNotGiven,
    #[error("{}", self.etcd_text())]
    InvalidAuthToken,
    #[error("{}", self.etcd_text())]
    InvalidAuthMgmt,
    /// A request checked against an auth revision older than the store's when applied.
    #[error("{}", self.etcd_text())]
    AuthOldRevision,
    #[error("{}", self.etcd_text())]
    RootUserNotExist,
    #[error("{}", self.etcd_text())]
    RootRoleNotExist,
    /// Not in etcd's rpctypes table, so etcd sends the auth store's own text with code Unknown.
    #[error("{}", self.etcd_text())]
    NoPasswordUser,
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
    /// The answer of the leader to a request this member forwarded there: passed on to the
    /// client exactly as the leader gave it.
    #[error("{}", .0.message())]
    Forwarded(Status),
    /// Something the member cannot continue from (fail-stop).
    #[error("fatal: {0}")]
    Fatal(String),
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        Error::Forwarded(s)
    }
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

impl Error {
    /// The table: the gRPC code and exact etcd text of every error etcd defines. None for
    /// ferrokv's own errors (config, I/O, fatal, ...).
    pub fn etcd(&self) -> Option<(Code, &'static str)> {
        use ferrokv_storage::Error as S;
        Some(match self {
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
                S::Backend(_) | S::BadSnapshot(_) => return None,
            },
            // Raft's own errors are the server errors etcd reports for them.
            Error::Raft(ferrokv_raftnode::Error::Stopped) => return Error::Stopped.etcd(),
            Error::Raft(ferrokv_raftnode::Error::ProposalDropped) => {
                return Error::LeaderChanged.etcd()
            }
            Error::Raft(ferrokv_raftnode::Error::NotLeader) => return Error::NotLeader.etcd(),
            Error::Raft(_) => return None,
            Error::NoLeader => (Code::Unavailable, "etcdserver: no leader"),
            Error::NotLeader => (Code::FailedPrecondition, "etcdserver: not leader"),
            Error::LeaderChanged => (Code::Unavailable, "etcdserver: leader changed"),
            Error::Stopped => (Code::Unavailable, "etcdserver: server stopped"),
            Error::Timeout => (Code::Unavailable, "etcdserver: request timed out"),
            Error::TimeoutDueToLeaderFail => (
                Code::Unavailable,
                "etcdserver: request timed out, possibly due to previous leader failure",
            ),
            Error::RequestTooLarge => (Code::InvalidArgument, "etcdserver: request is too large"),
            Error::LeaseTtlTooLarge => (Code::OutOfRange, "etcdserver: too large lease TTL"),
            Error::NoSpace => (
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            Error::CorruptCluster => (Code::DataLoss, "etcdserver: corrupt cluster"),
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
            Error::UserEmpty => (Code::InvalidArgument, "etcdserver: user name is empty"),
            Error::RoleEmpty => (Code::InvalidArgument, "etcdserver: role name is empty"),
            Error::UserExists => (
                Code::FailedPrecondition,
                "etcdserver: user name already exists",
            ),
            Error::UserNotFound => (Code::FailedPrecondition, "etcdserver: user name not found"),
            Error::RoleExists => (
                Code::FailedPrecondition,
                "etcdserver: role name already exists",
            ),
            Error::RoleNotFound => (Code::FailedPrecondition, "etcdserver: role name not found"),
            Error::AuthFailed => (
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            Error::PermissionDenied => (Code::PermissionDenied, "etcdserver: permission denied"),
            Error::RoleNotGranted => (
                Code::FailedPrecondition,
                "etcdserver: role is not granted to the user",
            ),
            Error::PermissionNotGranted => (
                Code::FailedPrecondition,
                "etcdserver: permission is not granted to the role",
            ),
            Error::PermissionNotGiven => {
                (Code::InvalidArgument, "etcdserver: permission not given")
            }
            Error::InvalidAuthToken => (Code::Unauthenticated, "etcdserver: invalid auth token"),
            Error::InvalidAuthMgmt => {
                (Code::InvalidArgument, "etcdserver: invalid auth management")
            }
            Error::AuthOldRevision => (
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
            Error::RootUserNotExist => (
                Code::FailedPrecondition,
                "etcdserver: root user does not exist",
            ),
            Error::RootRoleNotExist => (
                Code::FailedPrecondition,
                "etcdserver: root user does not have root role",
            ),
            Error::NoPasswordUser => (
                Code::Unknown,
                "auth: authentication failed, password was given for no password user",
            ),
            Error::Forwarded(_)
            | Error::SnapshotFile(_)
            | Error::Unimplemented(_)
            | Error::Config(_)
            | Error::Io(_)
            | Error::Tls(_)
            | Error::Fatal(_) => return None,
        })
    }

    /// The etcd text of an etcd error (what `Display` shows for it).
    fn etcd_text(&self) -> &'static str {
        self.etcd().map(|(_, text)| text).unwrap_or_default()
    }
}

/// The one mapping from [`Error`] to the gRPC status etcd would send.
pub fn to_status(err: &Error) -> Status {
    use ferrokv_storage::Error as S;
    if let Some((code, text)) = err.etcd() {
        return Status::new(code, text);
    }
    match err {
        Error::Storage(S::Backend(m)) => Status::new(Code::Internal, m.clone()),
        Error::Storage(S::BadSnapshot(m)) => Status::new(Code::DataLoss, m.clone()),
        Error::Raft(r) => Status::new(Code::Internal, r.to_string()),
        Error::Forwarded(status) => status.clone(),
        Error::Unimplemented(what) => Status::unimplemented(format!("{what} is not implemented")),
        other => Status::new(Code::Internal, other.to_string()),
    }
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
                Error::TimeoutDueToLeaderFail,
                Code::Unavailable,
                "etcdserver: request timed out, possibly due to previous leader failure",
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
            (
                Error::UserEmpty,
                Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            (
                Error::RoleEmpty,
                Code::InvalidArgument,
                "etcdserver: role name is empty",
            ),
            (
                Error::UserExists,
                Code::FailedPrecondition,
                "etcdserver: user name already exists",
            ),
            (
                Error::UserNotFound,
                Code::FailedPrecondition,
                "etcdserver: user name not found",
            ),
            (
                Error::RoleExists,
                Code::FailedPrecondition,
                "etcdserver: role name already exists",
            ),
            (
                Error::RoleNotFound,
                Code::FailedPrecondition,
                "etcdserver: role name not found",
            ),
            (
                Error::AuthFailed,
                Code::InvalidArgument,
                "etcdserver: authentication failed, invalid user ID or password",
            ),
            (
                Error::PermissionDenied,
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                Error::RoleNotGranted,
                Code::FailedPrecondition,
                "etcdserver: role is not granted to the user",
            ),
            (
                Error::PermissionNotGranted,
                Code::FailedPrecondition,
                "etcdserver: permission is not granted to the role",
            ),
            (
                Error::PermissionNotGiven,
                Code::InvalidArgument,
                "etcdserver: permission not given",
            ),
            (
                Error::InvalidAuthToken,
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                Error::InvalidAuthMgmt,
                Code::InvalidArgument,
                "etcdserver: invalid auth management",
            ),
            (
                Error::AuthOldRevision,
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old",
            ),
            (
                Error::RootUserNotExist,
                Code::FailedPrecondition,
                "etcdserver: root user does not exist",
            ),
            (
                Error::RootRoleNotExist,
                Code::FailedPrecondition,
                "etcdserver: root user does not have root role",
            ),
            (
                Error::NoPasswordUser,
                Code::Unknown,
                "auth: authentication failed, password was given for no password user",
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
