//! Auth in the server core: who a request comes from (the simple token in gRPC metadata
//! `token`, or `authorization` as grpc-gateway sends it), etcd's permission checks on the
//! request path, and the Auth requests.
//!
//! bcrypt runs here, on a blocking thread of the serving member, never in the apply loop:
//! UserAdd/UserChangePassword propose the hash, Authenticate verifies the password and then
//! proposes only the user name and the token it chose, so every member learns the token.
//!
//! Permissions are checked on the serving member against its applied auth state before a
//! request is served or proposed, and the proposal's header carries the user and the auth
//! revision of that check. The apply loop checks again as etcd's auth applier does: a write
//! checked at a revision older than the store's fails with "revision of auth store is old",
//! so a write proposed just before a revoke commits cannot apply after it.

use ferrokv_proto::etcdserverpb as pb;
use ferrokv_proto::ferrokvpb::InternalAuthenticateRequest;
use rand::distr::{Alphanumeric, SampleString};
use tonic::metadata::MetadataMap;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::EtcdServer;
use crate::apply::{AuthInfo, AuthResult, AuthView, Proposal};
use crate::error::{Error, Result};

/// Metadata keys etcd reads the token from (clientv3, then grpc-gateway).
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];
/// Length of the random part of a simple token (etcd: 16 letters, then `.` and an index).
const SIMPLE_TOKEN_LEN: usize = 16;

/// Who sent a request: its metadata (the token) and, on a TLS port, the verified client
/// certificate, whose CN is the user under `--client-cert-auth` when there is no token
/// (etcd's `AuthInfoFromTLS`). Building one costs nothing; the certificate is parsed only
/// when auth is enabled and no token came.
pub struct Caller<'a> {
    md: &'a MetadataMap,
    cert: CertName<'a>,
}

enum CertName<'a> {
    /// The request's extensions, where tonic keeps the TLS connection info; looked into only
    /// when the CN is needed, so a request with auth disabled pays nothing for it.
    Tls(&'a tonic::Extensions),
    Known(Option<&'a str>),
}

impl<'a> Caller<'a> {
    pub fn of<T>(r: &'a tonic::Request<T>) -> Caller<'a> {
        Caller::new(r.metadata(), r.extensions())
    }

    pub fn new(md: &'a MetadataMap, ext: &'a tonic::Extensions) -> Caller<'a> {
        Caller {
            md,
            cert: CertName::Tls(ext),
        }
    }

    /// A caller whose certificate CN was read already (a watch stream reads it once).
    pub fn with_cn(md: &'a MetadataMap, cn: Option<&'a str>) -> Caller<'a> {
        Caller {
            md,
            cert: CertName::Known(cn),
        }
    }

    /// The CN of the client certificate the TLS handshake verified, if any.
    pub fn cert_cn(&self) -> Option<String> {
        match &self.cert {
            CertName::Known(cn) => cn.map(str::to_string),
            CertName::Tls(ext) => {
                let certs = ext.get::<TlsConnectInfo<TcpConnectInfo>>()?.peer_certs()?;
                let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?).ok()?;
                let cn = cert.subject().iter_common_name().next()?;
                cn.as_str().ok().map(str::to_string)
            }
        }
    }
}

impl EtcdServer {
    /// One atomic load; everything else about auth is skipped while this is false.
    pub fn auth_enabled(&self) -> bool {
        self.auth.is_enabled()
    }

    /// The user a request comes from: its token's owner, else (with `--client-cert-auth`)
    /// its certificate's CN, else "" (etcd then answers "user name is empty" to anything
    /// that needs a user).
    fn caller(&self, caller: &Caller<'_>) -> Result<String> {
        let Some(value) = TOKEN_KEYS.iter().find_map(|k| caller.md.get(*k)) else {
            if self.cfg.client_tls.client_cert_auth {
                return Ok(caller.cert_cn().unwrap_or_default());
            }
            return Ok(String::new());
        };
        let token = value.to_str().map_err(|_| Error::InvalidAuthToken)?;
        let user = match &self.jwt {
            Some(jwt) => jwt.verify(token),
            None => self.auth.token_user(token),
        };
        user.ok_or(Error::InvalidAuthToken)
    }

    /// Runs `check` as the caller; with auth disabled this is one atomic load and nothing else.
    /// Returns who was checked at which auth revision, for the proposal's header.
    pub fn authorize(
        &self,
        caller: &Caller<'_>,
        check: impl FnOnce(&AuthView<'_>) -> Result<()>,
    ) -> Result<AuthInfo> {
        if !self.auth.is_enabled() {
            return Ok(AuthInfo::default());
        }
        let user = self.caller(caller)?;
        let data = self.auth.data();
        check(&AuthView {
            data: &data,
            user: &user,
        })?;
        Ok(AuthInfo {
            username: user,
            revision: data.revision,
        })
    }

    /// etcd's `IsAdminPermitted` for the caller (maintenance and membership operations).
    pub fn authorize_admin(&self, caller: &Caller<'_>) -> Result<AuthInfo> {
        self.authorize(caller, |v| v.admin())
    }

    /// Who the member's own lease revokes run as: etcd revokes expired leases as root
    /// (`WithRoot`), so the auth applier's key check passes.
    pub(super) fn as_root(&self) -> AuthInfo {
        if !self.auth.is_enabled() {
            return AuthInfo::default();
        }
        AuthInfo {
            username: crate::apply::auth::ROOT_USER.to_string(),
            revision: self.auth.data().revision,
        }
    }

    /// Checks a lease revoke as etcd does: the caller must be allowed to write every key
    /// attached to the lease (an admin always is).
    pub fn authorize_lease_keys(
        &self,
        caller: &Caller<'_>,
        id: i64,
        want_write: bool,
    ) -> Result<AuthInfo> {
        if !self.auth.is_enabled() {
            return Ok(AuthInfo::default());
        }
        let keys = self.store.lease_keys(id).unwrap_or_default();
        self.authorize(caller, |v| {
            if v.is_admin() {
                return Ok(());
            }
            keys.iter().try_for_each(|k| {
                if want_write {
                    v.write(k, &[])
                } else {
                    v.range(k, &[])
                }
            })
        })
    }

    async fn propose_auth<P, R>(&self, req: P, who: &AuthInfo) -> Result<R>
    where
        P: Proposal<Response = AuthResult<R>>,
    {
        self.reject_learner()?;
        self.propose_as(req, who).await?
    }

    pub async fn auth_status(&self, caller: &Caller<'_>) -> Result<pb::AuthStatusResponse> {
        self.authorize_admin(caller)?;
        let data = self.auth.data();
        Ok(pb::AuthStatusResponse {
            header: Some(self.header_now()),
            enabled: data.enabled,
            auth_revision: data.revision,
        })
    }

    pub async fn auth_enable(&self, caller: &Caller<'_>) -> Result<pb::AuthEnableResponse> {
        let who = self.authorize_admin(caller)?;
        let mut r = self.propose_auth(pb::AuthEnableRequest {}, &who).await?;
        r.header = Some(self.header_now());
        Ok(r)
    }

    pub async fn auth_disable(&self, caller: &Caller<'_>) -> Result<pb::AuthDisableResponse> {
        let who = self.authorize_admin(caller)?;
        let mut r = self.propose_auth(pb::AuthDisableRequest {}, &who).await?;
        r.header = Some(self.header_now());
        Ok(r)
    }

    /// Checks the password here (bcrypt off the async workers), then proposes the token so
    /// every member accepts it.
    pub async fn authenticate(
        &self,
        req: pb::AuthenticateRequest,
    ) -> Result<pb::AuthenticateResponse> {
        let data = self.auth.data();
        if !data.enabled {
            return Err(Error::AuthNotEnabled);
        }
        let user = data.users.get(&req.name).ok_or(Error::AuthFailed)?;
        if user.options.is_some_and(|o| o.no_password) {
            return Err(Error::NoPasswordUser);
        }
        if user.password.is_empty() {
            return Err(Error::AuthFailed);
        }
        let hash = String::from_utf8_lossy(&user.password).into_owned();
        let password = req.password;
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .map_err(|e| Error::Fatal(format!("bcrypt task: {e}")))?
            .unwrap_or(false);
        if !ok {
            return Err(Error::AuthFailed);
        }
        if let Some(jwt) = &self.jwt {
            // Stateless: any member with the public key verifies it, nothing to replicate.
            return Ok(pb::AuthenticateResponse {
                header: Some(self.header_now()),
                token: jwt.sign(&req.name, data.revision)?,
            });
        }
        let token = format!(
            "{}.{}",
            Alphanumeric.sample_string(&mut rand::rng(), SIMPLE_TOKEN_LEN),
            self.ids.next()
        );
        let mut r = self
            .propose_auth(
                InternalAuthenticateRequest {
                    name: req.name,
                    password: String::new(),
                    simple_token: token,
                },
                // etcd's Authenticate entry carries no user in its header.
                &AuthInfo::default(),
            )
            .await?;
        r.header = Some(self.header_now());
        Ok(r)
    }

    /// bcrypt of `password` at `--bcrypt-cost`, on a blocking thread, in base64 as etcd
    /// 3.5+ puts it in the `hashedPassword` of its log entries.
    async fn hash_password(&self, password: String) -> Result<String> {
        use base64::Engine as _;
        let cost = self.cfg.bcrypt_cost;
        let hash = tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Error::Fatal(format!("bcrypt task: {e}")))?
            .map_err(|e| Error::Config(format!("bcrypt: {e}")))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(hash))
    }

    pub async fn user_add(
        &self,
        caller: &Caller<'_>,
        mut req: pb::AuthUserAddRequest,
    ) -> Result<pb::AuthUserAddResponse> {
        let who = self.authorize_admin(caller)?;
        if req.name.is_empty() {
            return Err(Error::UserEmpty);
        }
        let no_password = req.options.is_some_and(|o| o.no_password);
        if !no_password && req.hashed_password.is_empty() {
            req.hashed_password = self
                .hash_password(std::mem::take(&mut req.password))
                .await?;
        }
        req.password.clear();
        let mut r = self.propose_auth(req, &who).await?;
        r.header = Some(self.header_now());
        Ok(r)
    }

    pub async fn user_change_password(
        &self,
        caller: &Caller<'_>,
        mut req: pb::AuthUserChangePasswordRequest,
    ) -> Result<pb::AuthUserChangePasswordResponse> {
        let who = self.authorize_admin(caller)?;
        if req.name.is_empty() {
            return Err(Error::UserEmpty);
        }
        if req.hashed_password.is_empty() {
            req.hashed_password = self
                .hash_password(std::mem::take(&mut req.password))
                .await?;
        }
        req.password.clear();
        let mut r = self.propose_auth(req, &who).await?;
        r.header = Some(self.header_now());
        Ok(r)
    }

    /// A user may read itself; anyone else needs the root role (etcd's rule).
    pub async fn user_get(
        &self,
        caller: &Caller<'_>,
        req: pb::AuthUserGetRequest,
    ) -> Result<pb::AuthUserGetResponse> {
        self.authorize(caller, |v| {
            if v.user == req.name {
                return Ok(());
            }
            v.admin()
        })?;
        self.read_barrier().await?;
        Ok(pb::AuthUserGetResponse {
            header: Some(self.header_now()),
            roles: self.auth.data().user_get(&req.name)?,
        })
    }

    pub async fn user_list(&self, caller: &Caller<'_>) -> Result<pb::AuthUserListResponse> {
        self.authorize_admin(caller)?;
        self.read_barrier().await?;
        Ok(pb::AuthUserListResponse {
            header: Some(self.header_now()),
            users: self.auth.data().users.keys().cloned().collect(),
        })
    }

    /// A user may read the roles it has; anyone else needs the root role.
    pub async fn role_get(
        &self,
        caller: &Caller<'_>,
        req: pb::AuthRoleGetRequest,
    ) -> Result<pb::AuthRoleGetResponse> {
        self.authorize(caller, |v| {
            let has = v
                .data
                .users
                .get(v.user)
                .is_some_and(|u| u.roles.contains(&req.role));
            if has {
                return Ok(());
            }
            v.admin()
        })?;
        self.read_barrier().await?;
        Ok(pb::AuthRoleGetResponse {
            header: Some(self.header_now()),
            perm: self.auth.data().role_get(&req.role)?,
        })
    }

    pub async fn role_list(&self, caller: &Caller<'_>) -> Result<pb::AuthRoleListResponse> {
        self.authorize_admin(caller)?;
        self.read_barrier().await?;
        Ok(pb::AuthRoleListResponse {
            header: Some(self.header_now()),
            roles: self.auth.data().roles.keys().cloned().collect(),
        })
    }
}

/// The admin-only Auth requests that need nothing but the proposal.
macro_rules! admin_proposals {
    ($($fn:ident: $req:ty => $resp:ty;)*) => {
        impl EtcdServer {
            $(pub async fn $fn(&self, caller: &Caller<'_>, req: $req) -> Result<$resp> {
                let who = self.authorize_admin(caller)?;
                let mut r = self.propose_auth(req, &who).await?;
                r.header = Some(self.header_now());
                Ok(r)
            })*
        }
    };
}

admin_proposals! {
    user_delete: pb::AuthUserDeleteRequest => pb::AuthUserDeleteResponse;
    user_grant_role: pb::AuthUserGrantRoleRequest => pb::AuthUserGrantRoleResponse;
    user_revoke_role: pb::AuthUserRevokeRoleRequest => pb::AuthUserRevokeRoleResponse;
    role_add: pb::AuthRoleAddRequest => pb::AuthRoleAddResponse;
    role_delete: pb::AuthRoleDeleteRequest => pb::AuthRoleDeleteResponse;
    role_grant_permission: pb::AuthRoleGrantPermissionRequest => pb::AuthRoleGrantPermissionResponse;
    role_revoke_permission: pb::AuthRoleRevokePermissionRequest => pb::AuthRoleRevokePermissionResponse;
}
