//! etcdserverpb.Auth over [`crate::auth::Auth`]. As in etcd, while auth is
//! enabled every operation but Authenticate needs the root role, except
//! that a user may get itself and the roles it has.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Identity;
use crate::auth::{Auth, AuthInfo};
use crate::error::Error;
use crate::proto::etcdserverpb::auth_server;
use crate::proto::etcdserverpb::*;
use crate::store::Store;

pub struct AuthService {
    pub auth: Arc<Auth>,
    pub store: Arc<Store>,
    pub id: Identity,
}

/// The sender of a request (see [`Auth::info`]).
pub async fn sender<T>(auth: &Auth, req: &Request<T>) -> Result<Option<AuthInfo>, Error> {
    if !auth.enabled() {
        return Ok(None);
    }
    let cert = req
        .peer_certs()
        .and_then(|certs| certs.first().and_then(|c| common_name(c.as_ref())));
    auth.info(req.metadata(), cert.as_deref()).await
}

/// The end of the range of keys starting with `prefix` (etcd's
/// GetPrefixRangeEnd).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// etcd's requireAuthInfo: while auth is enabled, a known sender.
pub async fn require<T>(store: &Store, req: &Request<T>) -> Result<(), Status> {
    let ai = sender(store.auth(), req).await?;
    store.auth().require(ai.as_ref())?;
    Ok(())
}

/// What etcd's recipes (v3lock, v3election) need of the caller on a name:
/// writing its own key under `prefix` and reading the contenders.
pub async fn check_recipe<T>(
    store: &Store,
    req: &Request<T>,
    key: Option<&[u8]>,
    prefix: &[u8],
) -> Result<(), Status> {
    let auth = store.auth();
    if !auth.enabled() {
        return Ok(());
    }
    let ai = sender(auth, req).await?;
    if let Some(key) = key {
        auth.check(ai.as_ref(), key, &[], true)?;
    }
    auth.check(ai.as_ref(), prefix, &prefix_end(prefix), false)?;
    Ok(())
}

/// The common name of a DER certificate's subject, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

impl AuthService {
    async fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let ai = sender(&self.auth, req).await?;
        self.auth.check_admin(ai.as_ref())?;
        Ok(())
    }

    async fn header(&self) -> Result<Option<ResponseHeader>, Status> {
        Ok(self.id.header(self.store.meta().await?.revision))
    }
}

#[tonic::async_trait]
impl auth_server::Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        self.admin(&req).await?;
        self.auth.auth_enable().await?;
        Ok(Response::new(AuthEnableResponse {
            header: self.header().await?,
        }))
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        self.admin(&req).await?;
        self.auth.auth_disable().await?;
        Ok(Response::new(AuthDisableResponse {
            header: self.header().await?,
        }))
    }

    async fn auth_status(
        &self,
        req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        self.admin(&req).await?;
        Ok(Response::new(AuthStatusResponse {
            header: self.header().await?,
            enabled: self.auth.enabled(),
            auth_revision: self.auth.revision(),
        }))
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let r = req.into_inner();
        let token = self.auth.authenticate(&r.name, &r.password).await?;
        Ok(Response::new(AuthenticateResponse {
            header: self.header().await?,
            token,
        }))
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        self.admin(&req).await?;
        let r = req.into_inner();
        self.auth
            .user_add(&r.name, &r.password, &r.hashed_password, r.options)
            .await?;
        Ok(Response::new(AuthUserAddResponse {
            header: self.header().await?,
        }))
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let ai = sender(&self.auth, &req).await?;
        let r = req.into_inner();
        if let Err(e) = self.auth.check_admin(ai.as_ref())
            && ai.as_ref().is_none_or(|a| a.user != r.name)
        {
            return Err(e.into());
        }
        let roles = self.auth.user_get(&r.name)?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header().await?,
            roles,
        }))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.admin(&req).await?;
        Ok(Response::new(AuthUserListResponse {
            header: self.header().await?,
            users: self.auth.user_list(),
        }))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        self.admin(&req).await?;
        self.auth.user_delete(&req.into_inner().name).await?;
        Ok(Response::new(AuthUserDeleteResponse {
            header: self.header().await?,
        }))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        self.admin(&req).await?;
        let r = req.into_inner();
        self.auth
            .user_change_password(&r.name, &r.password, &r.hashed_password)
            .await?;
        Ok(Response::new(AuthUserChangePasswordResponse {
            header: self.header().await?,
        }))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        self.admin(&req).await?;
        let r = req.into_inner();
        self.auth.user_grant_role(&r.user, &r.role).await?;
        Ok(Response::new(AuthUserGrantRoleResponse {
            header: self.header().await?,
        }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        self.admin(&req).await?;
        let r = req.into_inner();
        self.auth.user_revoke_role(&r.name, &r.role).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse {
            header: self.header().await?,
        }))
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        self.admin(&req).await?;
        self.auth.role_add(&req.into_inner().name).await?;
        Ok(Response::new(AuthRoleAddResponse {
            header: self.header().await?,
        }))
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let ai = sender(&self.auth, &req).await?;
        let r = req.into_inner();
        if let Err(e) = self.auth.check_admin(ai.as_ref())
            && !ai
                .as_ref()
                .is_some_and(|a| self.auth.has_role(&a.user, &r.role))
        {
            return Err(e.into());
        }
        let perm = self.auth.role_get(&r.role)?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header().await?,
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.admin(&req).await?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.header().await?,
            roles: self.auth.role_list(),
        }))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        self.admin(&req).await?;
        self.auth.role_delete(&req.into_inner().role).await?;
        Ok(Response::new(AuthRoleDeleteResponse {
            header: self.header().await?,
        }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        self.admin(&req).await?;
        let r = req.into_inner();
        let perm = r.perm.ok_or(Error::PermissionNotGiven)?;
        self.auth.role_grant_permission(&r.name, perm).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse {
            header: self.header().await?,
        }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        self.admin(&req).await?;
        let r = req.into_inner();
        self.auth
            .role_revoke_permission(&r.role, &r.key, &r.range_end)
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse {
            header: self.header().await?,
        }))
    }
}
