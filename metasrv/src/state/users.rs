//! Users: the admin created at initialization, users added by an admin or self-registered.
use super::command::{ApplyError, ErrorKind, Reply};
use super::{ClusterMeta, RecordKey, Role, State, User, ROOT_INO};

/// User names: 1 to 64 of `[A-Za-z0-9_.-]`, not starting with `.` (they end up in auth files).
pub fn validate_user_name(name: &str) -> Result<(), ApplyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApplyError::new(
            ErrorKind::InvalidArgument,
            format!("invalid user name {name:?}: use 1 to 64 letters, digits, '_', '-' or '.'"),
        ))
    }
}

impl State {
    pub(super) fn init(
        &mut self,
        cluster_id: &str,
        admin_key_hash: &str,
        now_ms: i64,
        touched: &mut Vec<RecordKey>,
    ) -> Reply {
        if !self.meta.cluster_id.is_empty() {
            return Reply::Initialized { won: false };
        }
        // Chunk servers may have registered before this entry: keep their ids unique.
        self.meta = ClusterMeta {
            cluster_id: cluster_id.to_string(),
            next_chunk_server_id: self.meta.next_chunk_server_id.max(1),
            next_ino: ROOT_INO + 1,
            inode_numbers: true,
            created_ms: now_ms,
            ..Default::default()
        };
        self.users.insert(
            "admin".into(),
            User {
                name: "admin".into(),
                role: Role::Admin,
                key_hash: admin_key_hash.into(),
                created_ms: now_ms,
            },
        );
        touched.push(RecordKey::Meta);
        touched.push(RecordKey::User("admin".into()));
        Reply::Initialized { won: true }
    }

    pub(super) fn add_user(
        &mut self,
        actor: Option<&str>,
        name: &str,
        role: Role,
        key_hash: &str,
        now_ms: i64,
        touched: &mut Vec<RecordKey>,
    ) -> Result<Reply, ApplyError> {
        match actor {
            Some(a) if !self.is_admin(a) => {
                return Err(ApplyError::denied("only an admin can add users"))
            }
            None if role == Role::Admin => {
                return Err(ApplyError::denied(
                    "self-registration cannot create an admin",
                ))
            }
            _ => {}
        }
        validate_user_name(name)?;
        if self.users.contains_key(name) {
            return Err(ApplyError::new(
                ErrorKind::AlreadyExists,
                format!("user {name} already exists"),
            ));
        }
        self.users.insert(
            name.to_string(),
            User {
                name: name.to_string(),
                role,
                key_hash: key_hash.to_string(),
                created_ms: now_ms,
            },
        );
        touched.push(RecordKey::User(name.to_string()));
        Ok(Reply::Done)
    }

    pub(super) fn remove_user(
        &mut self,
        actor: &str,
        name: &str,
        touched: &mut Vec<RecordKey>,
    ) -> Result<Reply, ApplyError> {
        if !self.is_admin(actor) {
            return Err(ApplyError::denied("only an admin can remove users"));
        }
        let Some(user) = self.users.get(name) else {
            return Err(ApplyError::new(
                ErrorKind::NotFound,
                format!("no user named {name}"),
            ));
        };
        if user.role == Role::Admin
            && self
                .users
                .values()
                .filter(|u| u.role == Role::Admin)
                .count()
                == 1
        {
            return Err(ApplyError::new(
                ErrorKind::FailedPrecondition,
                "cannot remove the last admin",
            ));
        }
        // Files stay, owned by the removed name, so an admin can still read or remove them.
        self.users.remove(name);
        touched.push(RecordKey::User(name.to_string()));
        Ok(Reply::Done)
    }
}
