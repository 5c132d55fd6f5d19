//! etcd's auth store (server/auth in etcd 3.5): users, roles, key
//! permissions, tokens, and the checks every request passes.
//!
//! The store lives in the database (`etcdsql_auth_user`, `etcdsql_auth_role`
//! as authpb records, `etcdsql_auth_token`, and `auth_enabled`,
//! `auth_revision` in `etcdsql_meta`), so every etcdsql on it shares users,
//! roles and tokens. A change runs in one transaction under the revision-row
//! lock (the write lock every batch takes), reads the store afresh, and
//! bumps the auth revision. Each process keeps a copy, re-read when the
//! revision it polls every [`POLL`] has moved, and at once after its own
//! changes: another process's change takes effect here within that.

mod perm;
mod token;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prost::Message;
use tonic::metadata::MetadataMap;

pub use perm::Permissions;
pub use token::TokenConfig;

use crate::backend::sql::Param;
use crate::backend::{Backend, DbError, Writer};
use crate::error::Error;
use crate::proto::authpb::{Permission, Role, User, UserAddOptions};
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::{RequestOp, TxnRequest};
use crate::tasks::Tasks;

/// How often a process looks for another's auth changes.
pub const POLL: Duration = Duration::from_millis(500);
const ROOT: &str = "root";
/// Conflicts (Galera certification, deadlocks) an auth change retries.
const RETRIES: u32 = 10;

/// Who sent a request: the user and the auth revision its credentials were
/// checked at.
#[derive(Clone, Debug)]
pub struct AuthInfo {
    pub user: String,
    pub revision: u64,
}

#[derive(Clone, Debug, Default)]
struct State {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Each user's permissions, merged from its roles.
    perms: BTreeMap<String, Arc<Permissions>>,
}

impl State {
    fn user(&self, name: &str) -> Result<&User, Error> {
        self.users.get(name).ok_or(Error::UserNotFound)
    }

    fn role(&self, name: &str) -> Result<&Role, Error> {
        self.roles.get(name).ok_or(Error::RoleNotFound)
    }

    fn is_root(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    fn derive(&mut self) {
        self.perms = self
            .users
            .iter()
            .map(|(name, u)| {
                let roles = u.roles.iter().filter_map(|r| self.roles.get(r));
                (name.clone(), Arc::new(Permissions::of(roles)))
            })
            .collect();
    }
}

pub struct Options {
    /// bcrypt's cost for new passwords (`--bcrypt-cost`).
    pub bcrypt_cost: u32,
    pub tokens: TokenConfig,
}

pub struct Auth {
    backend: Arc<dyn Backend>,
    state: RwLock<Arc<State>>,
    bcrypt_cost: u32,
    tokens: token::Tokens,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Reads the whole store: through `w` (inside a change's transaction) or
/// the backend.
async fn read(backend: &dyn Backend, mut w: Option<&mut dyn Writer>) -> Result<State, DbError> {
    let mut fetch = async |text: &str| {
        let s = backend.statement(text, &[]);
        match w.as_deref_mut() {
            Some(w) => w.rows(&s).await,
            None => backend.fetch(&s).await,
        }
    };
    let meta = fetch("SELECT auth_enabled, auth_revision FROM etcdsql_meta WHERE id = 1").await?;
    let mut st = State::default();
    if let Some(m) = meta.first() {
        st.enabled = m.int(0)? != 0;
        st.revision = m.int(1)?.cast_unsigned();
    }
    for r in fetch("SELECT data FROM etcdsql_auth_user").await?.iter() {
        let u = User::decode(r.bytes(0)?.unwrap_or_default().as_slice())
            .map_err(|e| DbError::Other(format!("a stored user does not decode: {e}")))?;
        st.users.insert(text(&u.name), u);
    }
    for r in fetch("SELECT data FROM etcdsql_auth_role").await?.iter() {
        let role = Role::decode(r.bytes(0)?.unwrap_or_default().as_slice())
            .map_err(|e| DbError::Other(format!("a stored role does not decode: {e}")))?;
        st.roles.insert(text(&role.name), role);
    }
    st.derive();
    Ok(st)
}

/// One change: the rows it writes.
#[derive(Default)]
struct Edit {
    users: Vec<(String, Option<User>)>,
    roles: Vec<(String, Option<Role>)>,
    enabled: Option<bool>,
    /// Users whose tokens end.
    invalidate: Vec<String>,
    /// Every token ends (auth disabled).
    invalidate_all: bool,
    /// Stored without a new auth revision (etcd's AuthEnable).
    same_revision: bool,
}

impl Edit {
    fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.roles.is_empty()
            && self.enabled.is_none()
            && self.invalidate.is_empty()
            && !self.invalidate_all
    }
}

impl Auth {
    pub async fn start(
        tasks: &Tasks,
        backend: Arc<dyn Backend>,
        options: Options,
    ) -> Result<Arc<Auth>, DbError> {
        let st = read(backend.as_ref(), None).await?;
        let auth = Arc::new(Auth {
            tokens: token::Tokens::new(backend.clone(), options.tokens),
            backend,
            state: RwLock::new(Arc::new(st)),
            bcrypt_cost: options.bcrypt_cost,
        });
        let weak = Arc::downgrade(&auth);
        tasks.spawn("auth store", async move {
            loop {
                tokio::time::sleep(POLL).await;
                let Some(a) = weak.upgrade() else { return };
                if let Err(e) = a.poll().await {
                    tracing::debug!(error = %e, "reading the auth store failed");
                }
            }
        });
        Ok(auth)
    }

    fn state(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the store if another process changed it.
    async fn poll(&self) -> Result<(), DbError> {
        let rows = self
            .backend
            .fetch(&self.backend.statement(
                "SELECT auth_enabled, auth_revision FROM etcdsql_meta WHERE id = 1",
                &[],
            ))
            .await?;
        let Some(m) = rows.first() else {
            return Ok(());
        };
        let st = self.state();
        if m.int(1)?.cast_unsigned() != st.revision || (m.int(0)? != 0) != st.enabled {
            self.reload().await?;
        }
        self.tokens.expire().await
    }

    async fn reload(&self) -> Result<(), DbError> {
        let st = read(self.backend.as_ref(), None).await?;
        let old = self.state();
        if st.revision != old.revision {
            // Users deleted or with a new password since: their tokens end
            // here too (the change's process deleted them from the table).
            self.tokens.forget_cached();
        }
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(st);
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.state().enabled
    }

    pub fn revision(&self) -> u64 {
        self.state().revision
    }

    /// Applies one change under the write lock, with the store read afresh
    /// in the same transaction; answers the new auth revision.
    async fn change<F>(&self, f: F) -> Result<u64, Error>
    where
        F: Fn(&State, &mut Edit) -> Result<(), Error>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.change_once(&f).await {
                Err(Error::Db(DbError::Retry(why))) if attempt < RETRIES => {
                    tracing::debug!(%why, attempt, "auth change conflicted; retrying");
                    tokio::time::sleep(Duration::from_millis(5 << attempt.min(6))).await;
                }
                r => return r,
            }
        }
    }

    async fn change_once<F>(&self, f: &F) -> Result<u64, Error>
    where
        F: Fn(&State, &mut Edit) -> Result<(), Error>,
    {
        let b = self.backend.as_ref();
        let mut w = b.writer().await?;
        let r = async {
            let meta = w.begin().await?;
            let st = read(b, Some(w.as_mut())).await?;
            let mut edit = Edit::default();
            f(&st, &mut edit)?;
            if edit.is_empty() {
                return Ok(st.revision);
            }
            for (name, user) in &edit.users {
                w.execute(&b.statement(
                    "DELETE FROM etcdsql_auth_user WHERE name = ?",
                    &[Param::Bytes(name.as_bytes().to_vec())],
                ))
                .await?;
                if let Some(u) = user {
                    w.execute(&b.statement(
                        "INSERT INTO etcdsql_auth_user (name, data) VALUES (?, ?)",
                        &[
                            Param::Bytes(name.as_bytes().to_vec()),
                            Param::Bytes(u.encode_to_vec()),
                        ],
                    ))
                    .await?;
                }
            }
            for (name, role) in &edit.roles {
                w.execute(&b.statement(
                    "DELETE FROM etcdsql_auth_role WHERE name = ?",
                    &[Param::Bytes(name.as_bytes().to_vec())],
                ))
                .await?;
                if let Some(r) = role {
                    w.execute(&b.statement(
                        "INSERT INTO etcdsql_auth_role (name, data) VALUES (?, ?)",
                        &[
                            Param::Bytes(name.as_bytes().to_vec()),
                            Param::Bytes(r.encode_to_vec()),
                        ],
                    ))
                    .await?;
                }
            }
            if edit.invalidate_all {
                w.execute(&b.statement("DELETE FROM etcdsql_auth_token", &[]))
                    .await?;
            }
            for name in &edit.invalidate {
                w.execute(&b.statement(
                    "DELETE FROM etcdsql_auth_token WHERE name = ?",
                    &[Param::Bytes(name.as_bytes().to_vec())],
                ))
                .await?;
            }
            let enabled = edit.enabled.unwrap_or(st.enabled);
            let revision = st.revision + u64::from(!edit.same_revision);
            w.execute(&b.statement(
                "UPDATE etcdsql_meta SET auth_enabled = ?, auth_revision = ? WHERE id = 1",
                &[
                    Param::Int(i64::from(enabled)),
                    Param::Int(revision.cast_signed()),
                ],
            ))
            .await?;
            w.commit(meta).await?;
            Ok::<_, Error>(revision)
        }
        .await;
        if r.is_err() {
            w.rollback().await;
        }
        let revision = r?;
        self.reload().await?;
        Ok(revision)
    }

    // ---- who is asking, and may they -------------------------------------

    /// The sender of a request: from its `token` metadata, else the common
    /// name of its client certificate. `None` while auth is disabled.
    pub async fn info(
        &self,
        md: &MetadataMap,
        cert_name: Option<&str>,
    ) -> Result<Option<AuthInfo>, Error> {
        let st = self.state();
        if !st.enabled {
            return Ok(None);
        }
        let token = md.get("token").or_else(|| md.get("authorization"));
        if let Some(token) = token.and_then(|t| t.to_str().ok()) {
            let token = token.strip_prefix("Bearer ").unwrap_or(token);
            let (user, revision) = self
                .tokens
                .verify(token, st.revision)
                .await?
                .ok_or(Error::InvalidAuthToken)?;
            return Ok(Some(AuthInfo { user, revision }));
        }
        Ok(cert_name.map(|cn| AuthInfo {
            user: cn.to_string(),
            revision: st.revision,
        }))
    }

    /// etcd's isOpPermitted: `[key, range_end)`, read or `write`.
    pub fn check(
        &self,
        ai: Option<&AuthInfo>,
        key: &[u8],
        range_end: &[u8],
        write: bool,
    ) -> Result<(), Error> {
        let st = self.state();
        if !st.enabled {
            return Ok(());
        }
        let Some(ai) = ai else {
            return Err(Error::UserEmpty);
        };
        if ai.revision < st.revision {
            return Err(Error::AuthOldRevision);
        }
        if !st.users.contains_key(&ai.user) {
            return Err(Error::PermissionDenied);
        }
        if st.is_root(&ai.user) {
            return Ok(());
        }
        match st.perms.get(&ai.user) {
            Some(p) if p.permits(key, range_end, write) => Ok(()),
            _ => Err(Error::PermissionDenied),
        }
    }

    /// etcd's requireAuthInfo: any user, while auth is enabled.
    pub fn require(&self, ai: Option<&AuthInfo>) -> Result<(), Error> {
        if self.enabled() && ai.is_none() {
            return Err(Error::UserEmpty);
        }
        Ok(())
    }

    /// Root, or allowed `[key, range_end)` for each of `keys` (etcd's
    /// lease checks: the keys a lease holds).
    pub fn check_keys(
        &self,
        ai: Option<&AuthInfo>,
        keys: &[Vec<u8>],
        write: bool,
    ) -> Result<(), Error> {
        if !self.enabled() || self.check_admin(ai).is_ok() {
            return Ok(());
        }
        for k in keys {
            self.check(ai, k, &[], write)?;
        }
        Ok(())
    }

    /// etcd's IsAdminPermitted: root only.
    pub fn check_admin(&self, ai: Option<&AuthInfo>) -> Result<(), Error> {
        let st = self.state();
        if !st.enabled {
            return Ok(());
        }
        let Some(ai) = ai.filter(|a| !a.user.is_empty()) else {
            return Err(Error::UserEmpty);
        };
        if !st.users.contains_key(&ai.user) {
            return Err(Error::UserNotFound);
        }
        if !st.is_root(&ai.user) {
            return Err(Error::PermissionDenied);
        }
        Ok(())
    }

    /// etcd's checkTxnAuth: every compare is read; each branch's ops as
    /// requests of their own (prev_kv also reads), nested Txns included.
    pub fn check_txn(&self, ai: Option<&AuthInfo>, t: &TxnRequest) -> Result<(), Error> {
        if !self.enabled() {
            return Ok(());
        }
        for c in &t.compare {
            self.check(ai, &c.key, &c.range_end, false)?;
        }
        self.check_ops(ai, &t.success)?;
        self.check_ops(ai, &t.failure)
    }

    fn check_ops(&self, ai: Option<&AuthInfo>, ops: &[RequestOp]) -> Result<(), Error> {
        for op in ops {
            match &op.request {
                Some(Op::RequestRange(r)) => self.check(ai, &r.key, &r.range_end, false)?,
                Some(Op::RequestPut(p)) => {
                    self.check(ai, &p.key, &[], true)?;
                    if p.prev_kv {
                        self.check(ai, &p.key, &[], false)?;
                    }
                }
                Some(Op::RequestDeleteRange(d)) => {
                    self.check(ai, &d.key, &d.range_end, true)?;
                    if d.prev_kv {
                        self.check(ai, &d.key, &d.range_end, false)?;
                    }
                }
                Some(Op::RequestTxn(t)) => self.check_txn(ai, t)?,
                None => {}
            }
        }
        Ok(())
    }

    // ---- the Auth service's operations ------------------------------------

    pub async fn auth_enable(&self) -> Result<u64, Error> {
        self.change(|st, e| {
            if st.enabled {
                return Ok(());
            }
            let root = st.users.get(ROOT).ok_or(Error::RootUserNotExist)?;
            if !root.roles.iter().any(|r| r == ROOT) {
                return Err(Error::RootRoleNotExist);
            }
            e.enabled = Some(true);
            e.same_revision = true;
            Ok(())
        })
        .await
    }

    pub async fn auth_disable(&self) -> Result<u64, Error> {
        self.change(|st, e| {
            if st.enabled {
                e.enabled = Some(false);
                e.invalidate_all = true;
            }
            Ok(())
        })
        .await
    }

    pub async fn authenticate(&self, name: &str, password: &str) -> Result<String, Error> {
        let st = self.state();
        if !st.enabled {
            return Err(Error::AuthNotEnabled);
        }
        let user = st.users.get(name).ok_or(Error::AuthFailed)?;
        if user.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(Error::NoPasswordUser);
        }
        let hash = text(&user.password);
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .unwrap_or(false);
        if !ok {
            return Err(Error::AuthFailed);
        }
        self.tokens.issue(name, st.revision).await
    }

    async fn hash(&self, password: &str) -> Result<Vec<u8>, Error> {
        let (password, cost) = (password.to_string(), self.bcrypt_cost);
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map(String::into_bytes)
            .map_err(|e| Error::Internal(format!("hashing the password: {e}")))
    }

    /// The stored password of an add or a change: `hashed` as given, else
    /// `password` hashed here; none for a user without one.
    async fn password(
        &self,
        password: &str,
        hashed: &str,
        no_password: bool,
    ) -> Result<Vec<u8>, Error> {
        if no_password {
            return Ok(Vec::new());
        }
        if !hashed.is_empty() {
            return Ok(hashed.as_bytes().to_vec());
        }
        self.hash(password).await
    }

    pub async fn user_add(
        &self,
        name: &str,
        password: &str,
        hashed: &str,
        options: Option<UserAddOptions>,
    ) -> Result<u64, Error> {
        if name.is_empty() {
            return Err(Error::UserEmpty);
        }
        let no_password = options.as_ref().is_some_and(|o| o.no_password);
        let stored = self.password(password, hashed, no_password).await?;
        self.change(|st, e| {
            if st.users.contains_key(name) {
                return Err(Error::UserAlreadyExist);
            }
            e.users.push((
                name.to_string(),
                Some(User {
                    name: name.as_bytes().to_vec(),
                    password: stored.clone(),
                    roles: Vec::new(),
                    options,
                }),
            ));
            Ok(())
        })
        .await
    }

    pub async fn user_delete(&self, name: &str) -> Result<u64, Error> {
        self.change(|st, e| {
            if st.enabled && name == ROOT {
                return Err(Error::InvalidAuthMgmt);
            }
            st.user(name)?;
            e.users.push((name.to_string(), None));
            e.invalidate.push(name.to_string());
            Ok(())
        })
        .await
    }

    pub async fn user_change_password(
        &self,
        name: &str,
        password: &str,
        hashed: &str,
    ) -> Result<u64, Error> {
        let stored = self.password(password, hashed, false).await?;
        self.change(|st, e| {
            let mut u = st.user(name)?.clone();
            if !u.options.as_ref().is_some_and(|o| o.no_password) {
                u.password = stored.clone();
            }
            e.users.push((name.to_string(), Some(u)));
            e.invalidate.push(name.to_string());
            Ok(())
        })
        .await
    }

    pub async fn user_grant_role(&self, user: &str, role: &str) -> Result<u64, Error> {
        self.change(|st, e| {
            let mut u = st.user(user)?.clone();
            if role != ROOT {
                st.role(role)?;
            }
            if u.roles.iter().any(|r| r == role) {
                return Ok(());
            }
            u.roles.push(role.to_string());
            u.roles.sort();
            e.users.push((user.to_string(), Some(u)));
            Ok(())
        })
        .await
    }

    pub async fn user_revoke_role(&self, user: &str, role: &str) -> Result<u64, Error> {
        self.change(|st, e| {
            if st.enabled && user == ROOT && role == ROOT {
                return Err(Error::InvalidAuthMgmt);
            }
            let mut u = st.user(user)?.clone();
            let before = u.roles.len();
            u.roles.retain(|r| r != role);
            if u.roles.len() == before {
                return Err(Error::RoleNotGranted);
            }
            e.users.push((user.to_string(), Some(u)));
            Ok(())
        })
        .await
    }

    /// The store as etcd's buckets hold it: enabled, revision, users and
    /// roles in name order.
    pub fn export(&self) -> (bool, u64, Vec<User>, Vec<Role>) {
        let st = self.state();
        (
            st.enabled,
            st.revision,
            st.users.values().cloned().collect(),
            st.roles.values().cloned().collect(),
        )
    }

    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.state()
            .users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// A user's roles.
    pub fn user_get(&self, name: &str) -> Result<Vec<String>, Error> {
        Ok(self.state().user(name)?.roles.clone())
    }

    pub fn user_list(&self) -> Vec<String> {
        self.state().users.keys().cloned().collect()
    }

    pub async fn role_add(&self, name: &str) -> Result<u64, Error> {
        if name.is_empty() {
            return Err(Error::RoleEmpty);
        }
        self.change(|st, e| {
            if st.roles.contains_key(name) {
                return Err(Error::RoleAlreadyExist);
            }
            e.roles.push((
                name.to_string(),
                Some(Role {
                    name: name.as_bytes().to_vec(),
                    key_permission: Vec::new(),
                }),
            ));
            Ok(())
        })
        .await
    }

    pub async fn role_delete(&self, name: &str) -> Result<u64, Error> {
        self.change(|st, e| {
            if st.enabled && name == ROOT {
                return Err(Error::InvalidAuthMgmt);
            }
            st.role(name)?;
            e.roles.push((name.to_string(), None));
            // Users lose the role.
            for (uname, u) in &st.users {
                if u.roles.iter().any(|r| r == name) {
                    let mut u = u.clone();
                    u.roles.retain(|r| r != name);
                    e.users.push((uname.clone(), Some(u)));
                }
            }
            Ok(())
        })
        .await
    }

    /// A role's permissions; the root role's is everything.
    pub fn role_get(&self, name: &str) -> Result<Vec<Permission>, Error> {
        let st = self.state();
        if name == ROOT && !st.roles.contains_key(ROOT) {
            return Err(Error::RoleNotFound);
        }
        Ok(st.role(name)?.key_permission.clone())
    }

    pub fn role_list(&self) -> Vec<String> {
        self.state().roles.keys().cloned().collect()
    }

    pub async fn role_grant_permission(&self, name: &str, perm: Permission) -> Result<u64, Error> {
        // etcd's checkKeyInterval: a key, and an end after it unless "\0".
        if perm.key.is_empty()
            || (!perm.range_end.is_empty() && perm.range_end != [0] && perm.key >= perm.range_end)
        {
            return Err(Error::InvalidAuthMgmt);
        }
        self.change(|st, e| {
            let mut role = st.role(name)?.clone();
            // The same range again replaces its type; otherwise added, in
            // key order.
            match role
                .key_permission
                .iter_mut()
                .find(|p| p.key == perm.key && p.range_end == perm.range_end)
            {
                Some(p) => p.perm_type = perm.perm_type,
                None => {
                    role.key_permission.push(perm.clone());
                    role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
                }
            }
            e.roles.push((name.to_string(), Some(role)));
            Ok(())
        })
        .await
    }

    pub async fn role_revoke_permission(
        &self,
        name: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<u64, Error> {
        self.change(|st, e| {
            let mut role = st.role(name)?.clone();
            let before = role.key_permission.len();
            role.key_permission
                .retain(|p| !(p.key == key && p.range_end == range_end));
            if role.key_permission.len() == before {
                return Err(Error::PermissionNotGranted);
            }
            e.roles.push((name.to_string(), Some(role)));
            Ok(())
        })
        .await
    }
}
