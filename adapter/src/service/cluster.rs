//! etcdserverpb.Cluster: MemberList names this member and its client URLs.
//! Membership belongs to the database, so the changing RPCs are refused.

use tonic::{Request, Response, Status};

use super::Identity;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use crate::store::Store;

pub struct ClusterService {
    pub store: std::sync::Arc<Store>,
    pub id: Identity,
    pub name: String,
    pub client_urls: Vec<String>,
}

fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!(
        "etcdsql: {what} is not supported: etcdsql members share the database and have no Raft membership"
    ))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(unsupported("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(unsupported("MemberRemove"))
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(unsupported("MemberUpdate"))
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let ai = super::auth::sender(self.store.auth(), &req).await?;
        self.store.auth().require(ai.as_ref())?;
        let meta = self.store.meta().await?;
        Ok(Response::new(MemberListResponse {
            header: self.id.header(meta.revision),
            members: vec![Member {
                id: self.id.member_id,
                name: self.name.clone(),
                peer_ur_ls: Vec::new(),
                client_ur_ls: self.client_urls.clone(),
                is_learner: false,
            }],
        }))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(unsupported("MemberPromote"))
    }
}
