//! The Auth service: users, roles, permissions, enabling auth and authenticating, as etcd
//! 3.6 serves them. Each RPC calls one `EtcdServer` method with the request's metadata (the
//! caller's token) and returns its answer.

use std::sync::Arc;

use ferrokv_proto::etcdserverpb::{auth_server::Auth, *};
use tonic::{Request, Response, Status};

use crate::etcdserver::EtcdServer;

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
        Ok(Response::new(self.server.auth_status(r.metadata()).await?))
    }

    async fn auth_enable(
        &self,
        r: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        Ok(Response::new(self.server.auth_enable(r.metadata()).await?))
    }

    async fn auth_disable(
        &self,
        r: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        Ok(Response::new(self.server.auth_disable(r.metadata()).await?))
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
        Ok(Response::new(self.server.user_list(r.metadata()).await?))
    }

    async fn role_list(
        &self,
        r: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        Ok(Response::new(self.server.role_list(r.metadata()).await?))
    }

    async fn user_add(
        &self,
        r: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let (md, _, req) = r.into_parts();
        Ok(Response::new(self.server.user_add(&md, req).await?))
    }

    async fn user_get(
        &self,
        r: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let (md, _, req) = r.into_parts();
        Ok(Response::new(self.server.user_get(&md, req).await?))
    }

    async fn user_delete(
        &self,
        r: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let (md, _, req) = r.into_parts();
        Ok(Response::new(self.server.user_delete(&md, req).await?))
    }

    async fn user_change_password(
        &self,
        r: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let (md, _, req) = r.into_parts();
        Ok(Response::new(
            self.server.user_change_password(&md, req).await?,
        ))
    }

    async fn user_grant_role(
        &self,
        r: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let (md, _, req) = r.into_parts();
        Ok(Response::new(self.server.user_grant_role(&md, req).await?))
    }

    async fn user_revoke_role(
        &self,
        r: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let (md, _, req) = r.into_parts();
        Ok(Response::new(self.server.user_revoke_role(&md, req).await?))
    }

    async fn role_add(
        &self,
        r: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let (md, _, req) = r.into_parts();
        Ok(Response::new(self.server.role_add(&md, req).await?))
    }

    async fn role_get(
        &self,
        r: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let (md, _, req) = r.into_parts();
        Ok(Response::new(self.server.role_get(&md, req).await?))
    }

    async fn role_delete(
        &self,
        r: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let (md, _, req) = r.into_parts();
        Ok(Response::new(self.server.role_delete(&md, req).await?))
    }

    async fn role_grant_permission(
        &self,
        r: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let (md, _, req) = r.into_parts();
        Ok(Response::new(
            self.server.role_grant_permission(&md, req).await?,
        ))
    }

    async fn role_revoke_permission(
        &self,
        r: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let (md, _, req) = r.into_parts();
        Ok(Response::new(
            self.server.role_revoke_permission(&md, req).await?,
        ))
    }
}
