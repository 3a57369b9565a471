//! Typed client errors. Every gRPC status maps to one variant by its code, keeping the
//! server's sentence; callers match on the variant (a mount turns them into errno values),
//! people read the message. What must stay true: the message is one line that says what failed.
use tonic::{Code, Status};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    NotADirectory(String),
    #[error("{0}")]
    IsADirectory(String),
    #[error("{0}")]
    NotEmpty(String),
    /// Not allowed, or not authenticated.
    #[error("{0}")]
    Permission(String),
    /// No metadata node or chunk server could serve the request in time.
    #[error("{0}")]
    Unavailable(String),
    /// Bytes read back were wrong (checksum, size) or could not be read from any replica.
    #[error("{0}")]
    DataError(String),
    /// No chunk server has room (or a quota is used up); nothing was stored.
    #[error("{0}")]
    NoSpace(String),
    /// A bad path, name or argument; nothing was changed.
    #[error("{0}")]
    InvalidName(String),
    /// A get found its file removed or replaced under it: the chunks it was reading belong to
    /// no file any more. Not a damaged replica.
    #[error("{path} was removed or replaced while it was being read; read it again")]
    ChangedWhileReading { path: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The TLS files this client was told to use cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] dfs_common::tls::TlsError),
    #[error("{0}")]
    Other(String),
}

/// The server's sentence, or the code's name when it sent none.
pub fn status_line(s: &Status) -> String {
    let msg = s.message();
    match s.code() {
        Code::Unauthenticated => {
            format!("{msg} (check the auth file: --auth-file or DFS_AUTH_FILE)")
        }
        _ if msg.is_empty() => format!("{:?}", s.code()),
        _ => msg.to_string(),
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Self {
        let line = status_line(&s);
        let lower = line.to_ascii_lowercase();
        let text_kind = matches!(s.code(), Code::FailedPrecondition | Code::InvalidArgument);
        match s.code() {
            Code::NotFound => Error::NotFound(line),
            Code::AlreadyExists => Error::Exists(line),
            Code::PermissionDenied | Code::Unauthenticated => Error::Permission(line),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                Error::Unavailable(line)
            }
            Code::DataLoss => Error::DataError(line),
            Code::ResourceExhausted => Error::NoSpace(line),
            _ if text_kind && lower.contains("not empty") => Error::NotEmpty(line),
            _ if text_kind && lower.contains("not a directory") => Error::NotADirectory(line),
            _ if text_kind && lower.contains("is a directory") => Error::IsADirectory(line),
            Code::InvalidArgument => Error::InvalidName(line),
            _ => Error::Other(line),
        }
    }
}

impl Error {
    pub fn other(msg: impl Into<String>) -> Self {
        Error::Other(msg.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_their_kind_and_keep_the_sentence() {
        let e = Error::from(Status::failed_precondition(
            "/a: directory not empty (use -r to remove it and its contents)",
        ));
        assert!(matches!(&e, Error::NotEmpty(m) if m.starts_with("/a: directory not empty")));
        let e = Error::from(Status::failed_precondition("/f is a file, not a directory"));
        assert!(matches!(e, Error::NotADirectory(_)));
        let e = Error::from(Status::invalid_argument("/d is a directory"));
        assert!(matches!(e, Error::IsADirectory(_)));
        assert!(matches!(
            Error::from(Status::invalid_argument("bad name")),
            Error::InvalidName(_)
        ));
        assert!(matches!(
            Error::from(Status::not_found("/x not found")),
            Error::NotFound(_)
        ));
        assert!(matches!(
            Error::from(Status::already_exists("/x exists")),
            Error::Exists(_)
        ));
        assert!(matches!(
            Error::from(Status::permission_denied("no")),
            Error::Permission(_)
        ));
        assert!(matches!(
            Error::from(Status::unavailable("")),
            Error::Unavailable(m) if m == "Unavailable"
        ));
        assert!(matches!(
            Error::from(Status::internal("boom")),
            Error::Other(_)
        ));
    }
}
