//! The Auth service: users, roles, permissions, enabling auth and authenticating, as etcd
//! 3.6 serves them. Each RPC calls one `EtcdServer` method with the request's metadata (the
//! caller's token) and returns its answer.

use std::sync::Arc;

use ferrokv_proto::etcdserverpb::{auth_server::Auth, *};
use tonic::{Request, Response, Status};

use crate::etcdserver::{Caller, EtcdServer};

#[derive(Clone)]
pub struct AuthService {
    server: Arc<EtcdServer>,
}

impl AuthService {
    pub fn new(server: Arc<EtcdServer>) -> Self {
        AuthService { server }
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_status(
        &self,
        r: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        Ok(Response::new(
            self.server.auth_status(&Caller::of(&r)).await?,
        ))
    }

    async fn auth_enable(
        &self,
        r: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        Ok(Response::new(
            self.server.auth_enable(&Caller::of(&r)).await?,
        ))
    }

    async fn auth_disable(
        &self,
        r: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        Ok(Response::new(
            self.server.auth_disable(&Caller::of(&r)).await?,
        ))
    }

    async fn authenticate(
        &self,
        r: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        Ok(Response::new(
            self.server.authenticate(r.into_inner()).await?,
        ))
    }

    async fn user_list(
        &self,
        r: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        Ok(Response::new(self.server.user_list(&Caller::of(&r)).await?))
    }

    async fn role_list(
        &self,
        r: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        Ok(Response::new(self.server.role_list(&Caller::of(&r)).await?))
    }

    async fn user_add(
        &self,
        r: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let (md, ext, req) = r.into_parts();
        Ok(Response::new(
            self.server.user_add(&Caller::new(&md, &ext), req).await?,
        ))
    }

    async fn user_get(
        &self,
        r: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let (md, ext, req) = r.into_parts();
        Ok(Response::new(
            self.server.user_get(&Caller::new(&md, &ext), req).await?,
        ))
    }

    async fn user_delete(
        &self,
        r: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let (md, ext, req) = r.into_parts();
        Ok(Response::new(
            self.server
                .user_delete(&Caller::new(&md, &ext), req)
                .await?,
        ))
    }

    async fn user_change_password(
        &self,
        r: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let (md, ext, req) = r.into_parts();
        Ok(Response::new(
            self.server
                .user_change_password(&Caller::new(&md, &ext), req)
                .await?,
        ))
    }

    async fn user_grant_role(
        &self,
        r: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let (md, ext, req) = r.into_parts();
        Ok(Response::new(
            self.server
                .user_grant_role(&Caller::new(&md, &ext), req)
                .await?,
        ))
    }

    async fn user_revoke_role(
        &self,
        r: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let (md, ext, req) = r.into_parts();
        Ok(Response::new(
            self.server
                .user_revoke_role(&Caller::new(&md, &ext), req)
                .await?,
        ))
    }

    async fn role_add(
        &self,
        r: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let (md, ext, req) = r.into_parts();
        Ok(Response::new(
            self.server.role_add(&Caller::new(&md, &ext), req).await?,
        ))
    }

    async fn role_get(
        &self,
        r: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let (md, ext, req) = r.into_parts();
        Ok(Response::new(
            self.server.role_get(&Caller::new(&md, &ext), req).await?,
        ))
    }

    async fn role_delete(
        &self,
        r: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let (md, ext, req) = r.into_parts();
        Ok(Response::new(
            self.server
                .role_delete(&Caller::new(&md, &ext), req)
                .await?,
        ))
    }

    async fn role_grant_permission(
        &self,
        r: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let (md, ext, req) = r.into_parts();
        Ok(Response::new(
            self.server
                .role_grant_permission(&Caller::new(&md, &ext), req)
                .await?,
        ))
    }

    async fn role_revoke_permission(
        &self,
        r: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let (md, ext, req) = r.into_parts();
        Ok(Response::new(
            self.server
                .role_revoke_permission(&Caller::new(&md, &ext), req)
                .await?,
        ))
    }
}
