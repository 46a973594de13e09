//! The auth store, etcd's `auth.AuthStore`: users, roles, key permissions, the enabled flag,
//! the auth revision and the simple tokens.
//!
//! The replicated part ([`AuthData`]) changes only through committed raft entries: the
//! Applier applies each Auth* request to the batch's working copy with the pure methods of
//! [`AuthData`], writes the copy into the keyspace file (one meta entry, in the batch's
//! transaction, so raft snapshots and `snapshot save` carry it) and installs it here after
//! the commit. Simple tokens are not persisted (etcd keeps them in memory too): a restart
//! makes clients authenticate again.
//!
//! Depends on the base modules only; bcrypt never runs here (the serving member hashes and
//! verifies passwords before proposing, so the apply loop never spends 50 ms on one).

mod perms;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrokv_proto::authpb::{permission, Permission, Role, User, UserAddOptions};
use ferrokv_proto::etcdserverpb as pb;
use ferrokv_proto::ferrokvpb::AuthState;
use ferrokv_storage::Store;
use parking_lot::{Mutex, RwLock};
use prost::Message as _;

use crate::error::{Error, Result};

pub use perms::AuthView;

/// Who proposed a request: the user and the auth revision its permissions were checked at
/// (etcd's `AuthInfo`, carried in the entry's `RequestHeader`). Default: nobody, revision 0
/// (auth disabled when proposed, or a member's own request).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub username: String,
    pub revision: u64,
}

/// The bcrypt hash as it is kept from the `hashedPassword` of an entry: etcd 3.5+ logs it in
/// base64 (and so does ferrokv now); ferrokv's earlier entries carry the bcrypt text itself,
/// whose `$` is no base64 character, so the two never mix up.
fn stored_hash(hashed: &str) -> Vec<u8> {
    use base64::Engine as _;
    if hashed.starts_with('$') {
        return hashed.as_bytes().to_vec();
    }
    base64::engine::general_purpose::STANDARD
        .decode(hashed)
        .unwrap_or_else(|_| hashed.as_bytes().to_vec())
}

/// The meta entry that holds the encoded [`AuthState`].
pub const AUTH_META_KEY: &str = "auth";
/// etcd's names: the user that must exist to enable auth and the role that grants everything.
pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

/// The replicated auth state. Maps keyed by name keep etcd's sorted listings for free.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthData {
    pub enabled: bool,
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

impl Default for AuthData {
    /// A fresh store is at auth revision 1, as etcd's (it commits revision 1 on creation).
    fn default() -> Self {
        AuthData {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

impl AuthData {
    pub fn decode(bytes: &[u8]) -> Result<AuthData> {
        let st = AuthState::decode(bytes)
            .map_err(|e| Error::Fatal(format!("auth state does not decode: {e}")))?;
        Ok(AuthData {
            enabled: st.enabled,
            revision: st.revision,
            users: st
                .users
                .into_iter()
                .map(|u| (String::from_utf8_lossy(&u.name).into_owned(), u))
                .collect(),
            roles: st
                .roles
                .into_iter()
                .map(|r| (String::from_utf8_lossy(&r.name).into_owned(), r))
                .collect(),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        AuthState {
            enabled: self.enabled,
            revision: self.revision,
            users: self.users.values().cloned().collect(),
            roles: self.roles.values().cloned().collect(),
        }
        .encode_to_vec()
    }

    /// The state stored in `store` (the default one when auth was never touched).
    pub fn load(store: &Store) -> Result<AuthData> {
        match store.meta(AUTH_META_KEY)? {
            Some(bytes) => AuthData::decode(&bytes),
            None => Ok(AuthData::default()),
        }
    }

    fn bump(&mut self) {
        self.revision += 1;
    }

    pub fn enable(&mut self) -> Result<()> {
        if self.enabled {
            return Ok(());
        }
        let root = self.users.get(ROOT_USER).ok_or(Error::RootUserNotExist)?;
        if !has_root_role(root) {
            return Err(Error::RootRoleNotExist);
        }
        // etcd re-reads the revision on enable instead of committing a new one (disabling
        // does commit one).
        self.enabled = true;
        Ok(())
    }

    pub fn disable(&mut self) {
        if !self.enabled {
            return;
        }
        self.enabled = false;
        self.bump();
    }

    /// `r.hashed_password` is the bcrypt hash the serving member computed (empty for a
    /// no-password user); the clear password never reaches the log.
    pub fn user_add(&mut self, r: &pb::AuthUserAddRequest) -> Result<()> {
        if r.name.is_empty() {
            return Err(Error::UserEmpty);
        }
        if self.users.contains_key(&r.name) {
            return Err(Error::UserExists);
        }
        let options = r.options.unwrap_or(UserAddOptions { no_password: false });
        let password = if options.no_password {
            Vec::new()
        } else {
            stored_hash(&r.hashed_password)
        };
        self.users.insert(
            r.name.clone(),
            User {
                name: r.name.as_bytes().to_vec(),
                password,
                roles: Vec::new(),
                options: Some(options),
            },
        );
        self.bump();
        Ok(())
    }

    pub fn user_delete(&mut self, name: &str) -> Result<()> {
        if self.enabled && name == ROOT_USER {
            return Err(Error::InvalidAuthMgmt);
        }
        if self.users.remove(name).is_none() {
            return Err(Error::UserNotFound);
        }
        self.bump();
        Ok(())
    }

    pub fn user_change_password(&mut self, name: &str, hashed: &str) -> Result<()> {
        let user = self.users.get_mut(name).ok_or(Error::UserNotFound)?;
        user.password = stored_hash(hashed);
        self.bump();
        Ok(())
    }

    pub fn user_grant_role(&mut self, name: &str, role: &str) -> Result<()> {
        if !self.users.contains_key(name) {
            return Err(Error::UserNotFound);
        }
        // etcd lets anyone be granted "root" before a root role was ever created.
        if role != ROOT_ROLE && !self.roles.contains_key(role) {
            return Err(Error::RoleNotFound);
        }
        let user = self.users.get_mut(name).ok_or(Error::UserNotFound)?;
        match user.roles.binary_search_by(|r| r.as_str().cmp(role)) {
            // Granting a granted role is a no-op for etcd, without a revision bump.
            Ok(_) => return Ok(()),
            Err(at) => user.roles.insert(at, role.to_string()),
        }
        self.bump();
        Ok(())
    }

    pub fn user_revoke_role(&mut self, name: &str, role: &str) -> Result<()> {
        if self.enabled && name == ROOT_USER && role == ROOT_ROLE {
            return Err(Error::InvalidAuthMgmt);
        }
        let user = self.users.get_mut(name).ok_or(Error::UserNotFound)?;
        let at = user
            .roles
            .iter()
            .position(|r| r == role)
            .ok_or(Error::RoleNotGranted)?;
        user.roles.remove(at);
        self.bump();
        Ok(())
    }

    pub fn role_add(&mut self, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::RoleEmpty);
        }
        if self.roles.contains_key(name) {
            return Err(Error::RoleExists);
        }
        self.roles.insert(
            name.to_string(),
            Role {
                name: name.as_bytes().to_vec(),
                key_permission: Vec::new(),
            },
        );
        self.bump();
        Ok(())
    }

    /// Deleting a role also takes it from every user that had it (etcd does the same).
    pub fn role_delete(&mut self, name: &str) -> Result<()> {
        if self.enabled && name == ROOT_ROLE {
            return Err(Error::InvalidAuthMgmt);
        }
        if self.roles.remove(name).is_none() {
            return Err(Error::RoleNotFound);
        }
        for user in self.users.values_mut() {
            user.roles.retain(|r| r != name);
        }
        self.bump();
        Ok(())
    }

    pub fn role_grant_permission(&mut self, name: &str, perm: Option<&Permission>) -> Result<()> {
        let perm = perm.ok_or(Error::PermissionNotGiven)?;
        if !perms::is_valid_range(&perm.key, &perm.range_end) {
            return Err(Error::InvalidAuthMgmt);
        }
        let role = self.roles.get_mut(name).ok_or(Error::RoleNotFound)?;
        // The same range granted again only changes its type; permissions stay sorted by key.
        match role
            .key_permission
            .iter_mut()
            .find(|p| p.key == perm.key && p.range_end == perm.range_end)
        {
            Some(p) => p.perm_type = perm.perm_type,
            None => {
                let at = role
                    .key_permission
                    .partition_point(|p| p.key.as_slice() <= perm.key.as_slice());
                role.key_permission.insert(at, perm.clone());
            }
        }
        self.bump();
        Ok(())
    }

    pub fn role_revoke_permission(&mut self, name: &str, key: &[u8], end: &[u8]) -> Result<()> {
        let role = self.roles.get_mut(name).ok_or(Error::RoleNotFound)?;
        let at = role
            .key_permission
            .iter()
            .position(|p| p.key == key && p.range_end == end)
            .ok_or(Error::PermissionNotGranted)?;
        role.key_permission.remove(at);
        self.bump();
        Ok(())
    }

    pub fn user_get(&self, name: &str) -> Result<Vec<String>> {
        self.users
            .get(name)
            .map(|u| u.roles.clone())
            .ok_or(Error::UserNotFound)
    }

    /// The root role reads as "everything, read and write" whether or not it was created.
    pub fn role_get(&self, name: &str) -> Result<Vec<Permission>> {
        if name == ROOT_ROLE {
            return Ok(vec![Permission {
                perm_type: permission::Type::Readwrite as i32,
                key: Vec::new(),
                range_end: vec![0],
            }]);
        }
        self.roles
            .get(name)
            .map(|r| r.key_permission.clone())
            .ok_or(Error::RoleNotFound)
    }
}

pub(crate) fn has_root_role(user: &User) -> bool {
    user.roles.iter().any(|r| r == ROOT_ROLE)
}

/// A simple token's owner and when it lapses; every use pushes the deadline out by the TTL
/// (etcd's simple-token keeper does the same).
struct Token {
    user: String,
    deadline: Instant,
}

/// The auth state every layer reads: the enabled flag as an atomic (the one load the request
/// path pays while auth is disabled), the replicated data, and the simple tokens.
pub struct AuthStore {
    enabled: AtomicBool,
    data: RwLock<Arc<AuthData>>,
    tokens: Mutex<HashMap<String, Token>>,
    token_ttl: Duration,
}

impl AuthStore {
    pub fn new(data: AuthData, token_ttl: Duration) -> AuthStore {
        AuthStore {
            enabled: AtomicBool::new(data.enabled),
            data: RwLock::new(Arc::new(data)),
            tokens: Mutex::new(HashMap::new()),
            token_ttl,
        }
    }

    /// One atomic load: with auth disabled nothing else on the request path looks at auth.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The current replicated state (a cheap shared snapshot).
    pub fn data(&self) -> Arc<AuthData> {
        self.data.read().clone()
    }

    /// Installs the state a committed batch (or a keyspace snapshot) produced. Tokens of users
    /// that are gone or whose password changed stop working; disabling auth drops them all.
    pub fn replace(&self, data: AuthData) {
        {
            let mut tokens = self.tokens.lock();
            if !data.enabled {
                tokens.clear();
            } else {
                tokens.retain(|_, t| {
                    let old = self.data.read();
                    match (old.users.get(&t.user), data.users.get(&t.user)) {
                        (Some(a), Some(b)) => a.password == b.password,
                        _ => false,
                    }
                });
            }
        }
        self.enabled.store(data.enabled, Ordering::Release);
        *self.data.write() = Arc::new(data);
    }

    /// Registers a token a committed Authenticate chose.
    pub fn assign_token(&self, token: String, user: String) {
        let deadline = Instant::now() + self.token_ttl;
        self.tokens.lock().insert(token, Token { user, deadline });
    }

    /// The user a token belongs to, if it is known and not expired (the use renews it).
    pub fn token_user(&self, token: &str) -> Option<String> {
        let mut tokens = self.tokens.lock();
        let now = Instant::now();
        let t = tokens.get_mut(token)?;
        if t.deadline <= now {
            tokens.remove(token);
            return None;
        }
        t.deadline = now + self.token_ttl;
        Some(t.user.clone())
    }
}
