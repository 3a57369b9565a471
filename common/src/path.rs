//! DFS path rules: absolute, normalized, no `.`/`..`, no NUL or control characters, bounded.
//! Every name is checked here before anything is written anywhere.

pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_NAME_BYTES: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path must be absolute (start with /): {0:?}")]
    NotAbsolute(String),
    #[error("path contains `.` or `..`, which is not allowed: {0:?}")]
    DotComponent(String),
    #[error("path contains a NUL or control character")]
    BadCharacter,
    #[error("path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("a name in the path is longer than {MAX_NAME_BYTES} bytes")]
    NameTooLong,
}

/// Check and normalize a path: `//a///b/` becomes `/a/b`. The root is `/`.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if raw.chars().any(|c| c == '\0' || c.is_control()) {
        return Err(PathError::BadCharacter);
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute(raw.to_string()));
    }
    let mut out = String::with_capacity(raw.len());
    for part in raw.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(PathError::DotComponent(raw.to_string()));
        }
        if part.len() > MAX_NAME_BYTES {
            return Err(PathError::NameTooLong);
        }
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Parent of a normalized path (`/` for top-level names, `None` for the root).
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// Last name of a normalized path (`""` for the root).
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

/// Is `path` equal to `dir` or inside it?
pub fn is_within(path: &str, dir: &str) -> bool {
    dir == "/"
        || path == dir
        || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

/// Every ancestor of `path`, from the top down, excluding the root and `path` itself.
pub fn ancestors(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut p = path;
    while let Some(par) = parent(p) {
        if par == "/" {
            break;
        }
        out.push(par);
        p = par;
    }
    out.reverse();
    out
}

/// Where deleted entries go: `/.trash/<user>/<deletion time>/<original path>`.
pub const TRASH: &str = "/.trash";

/// Is `p` the trash or inside it?
pub fn in_trash(p: &str) -> bool {
    is_within(p, TRASH)
}

/// The trash directory of `user`.
pub fn user_trash(user: &str) -> String {
    format!("{TRASH}/{user}")
}

/// `/.trash/<user>/<time>/<rest>` → (`/.trash/<user>/<time>`, `/<rest>`); `None` for a path
/// that is not inside a time directory.
pub fn split_trash_path(p: &str) -> Option<(&str, &str)> {
    let rest = p.strip_prefix(TRASH)?.strip_prefix('/')?;
    let user_end = rest.find('/')?;
    let time_end = rest[user_end + 1..].find('/')?;
    let split = TRASH.len() + 1 + user_end + 1 + time_end;
    Some((&p[..split], &p[split..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trash_paths() {
        assert_eq!(
            split_trash_path("/.trash/al/2026-12-07T01-48-28Z/a/b"),
            Some(("/.trash/al/2026-12-07T01-48-28Z", "/a/b"))
        );
        assert_eq!(split_trash_path("/.trash/al/t"), None);
        assert_eq!(split_trash_path("/.trashy/al/t/x"), None);
        assert_eq!(split_trash_path("/a/b/c/d"), None);
        assert!(in_trash("/.trash") && in_trash("/.trash/al") && !in_trash("/.trashy"));
        assert_eq!(user_trash("al"), "/.trash/al");
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("//a///b/").unwrap(), "/a/b");
        assert_eq!(normalize("/a b/c.txt").unwrap(), "/a b/c.txt");
    }

    #[test]
    fn rejects_bad_paths() {
        assert_eq!(normalize(""), Err(PathError::Empty));
        assert!(matches!(normalize("a/b"), Err(PathError::NotAbsolute(_))));
        assert!(matches!(
            normalize("/a/../b"),
            Err(PathError::DotComponent(_))
        ));
        assert!(matches!(
            normalize("/a/./b"),
            Err(PathError::DotComponent(_))
        ));
        assert_eq!(normalize("/a\0b"), Err(PathError::BadCharacter));
        assert_eq!(normalize("/a\nb"), Err(PathError::BadCharacter));
        assert_eq!(
            normalize(&format!("/{}", "x".repeat(256))),
            Err(PathError::NameTooLong)
        );
        assert_eq!(normalize(&"/x".repeat(3000)), Err(PathError::TooLong));
    }

    #[test]
    fn relations() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(file_name("/a/b"), "b");
        assert!(is_within("/a/b", "/a"));
        assert!(!is_within("/ab", "/a"));
        assert!(is_within("/x", "/"));
        assert_eq!(ancestors("/a/b/c"), vec!["/a", "/a/b"]);
    }
}
