//! `auth.txt`: one line `user/key`, no trailing newline (the original client's format).
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read auth file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("auth file {path} is not one line of the form user/key")]
    Malformed { path: String },
    #[error("cannot write auth file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub key: String,
}

pub fn parse(text: &str) -> Option<Credentials> {
    let line = text.trim_end_matches(['\n', '\r']);
    let (user, key) = line.split_once('/')?;
    if user.is_empty() || key.is_empty() || line.contains('\n') {
        return None;
    }
    Some(Credentials {
        user: user.to_string(),
        key: key.to_string(),
    })
}

pub fn read(path: &Path) -> Result<Credentials, AuthFileError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
        path: p.clone(),
        source,
    })?;
    parse(&text).ok_or(AuthFileError::Malformed { path: p })
}

pub fn write(path: &Path, creds: &Credentials) -> Result<(), AuthFileError> {
    let line = format!("{}/{}", creds.user, creds.key);
    crate::durable::write_secret(path, line.as_bytes()).map_err(|source| AuthFileError::Write {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_format() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("auth.txt");
        let c = Credentials {
            user: "adrian".into(),
            key: "abc".into(),
        };
        write(&p, &c).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "adrian/abc");
        assert_eq!(read(&p).unwrap(), c);
        assert!(parse("nouser").is_none());
        assert!(parse("/key").is_none());
    }
}
