use std::path::PathBuf;

/// Everything that can go wrong in a backup, a listing, a download or a retention pass. Each
/// message names the object or URL involved, because the operator shows it verbatim in a
/// condition and an Event.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad backup URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("backup store configuration: {0}")]
    Config(String),
    #[error("encryption key: {0}")]
    Key(String),
    /// A request to the store failed; `hint` says what usually causes this kind of failure.
    #[error("{op} {location}: {message}{hint}")]
    Store {
        op: &'static str,
        location: String,
        message: String,
        hint: String,
    },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("backup {object} is damaged: {reason}")]
    Corrupt { object: String, reason: String },
    #[error("manifest {key}: {reason}")]
    Manifest { key: String, reason: String },
    #[error("snapshot source: {0}")]
    Source(String),
    #[error("compression: {0}")]
    Compression(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps an object_store error with the whole source chain (reqwest's top-level message
    /// alone says "error sending request", the cause is further down) and a hint for the
    /// common mistakes: wrong credentials, a missing bucket, an unreachable endpoint.
    pub(crate) fn store(op: &'static str, location: &str, e: object_store::Error) -> Error {
        // A read of a missing key is "not found"; a write can only miss its bucket.
        let writing = matches!(
            op,
            "starting the upload of"
                | "uploading"
                | "completing the upload of"
                | "writing the manifest"
        );
        if matches!(e, object_store::Error::NotFound { .. }) && !writing {
            return Error::NotFound(location.to_string());
        }
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        let lower = message.to_ascii_lowercase();
        let hint = if matches!(
            e,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ) || lower.contains("403")
            || lower.contains("401")
            || lower.contains("accessdenied")
            || lower.contains("invalidaccesskeyid")
            || lower.contains("signaturedoesnotmatch")
            || lower.contains("authenticationfailed")
        {
            " (the store refused the credentials: check the access key and secret in the credentials Secret or environment)"
        } else if lower.contains("nosuchbucket")
            || (writing && matches!(e, object_store::Error::NotFound { .. }))
            || lower.contains("containernotfound")
            || lower.contains("bucket does not exist")
            || (lower.contains("404") && lower.contains("bucket"))
        {
            " (the bucket or container does not exist: create it first)"
        } else if lower.contains("connect") || lower.contains("dns") || lower.contains("timed out")
        {
            " (the store's endpoint cannot be reached)"
        } else if lower.contains("certificate") || lower.contains("tls") {
            " (TLS failed: is the store's CA given, e.g. AWS_CA_BUNDLE?)"
        } else {
            ""
        };
        Error::Store {
            op,
            location: location.to_string(),
            message,
            hint: hint.to_string(),
        }
    }
}
