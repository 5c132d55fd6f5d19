//! etcdserverpb.Maintenance: Status, Alarm, Defragment, Hash, HashKV and
//! MoveLeader; Snapshot and Downgrade concern etcd's own bbolt file and
//! Raft and answer Unimplemented.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::Identity;
use super::auth::sender;
use crate::error::Error;
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use crate::store::Store;

/// The etcd version etcdsql reports: kube-apiserver enables progress
/// requests and consistent reads from its cache from 3.5.13 on.
pub const ETCD_VERSION: &str = "3.5.17";

pub struct MaintenanceService {
    pub store: Arc<Store>,
    pub id: Identity,
}

fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!(
        "etcdsql: {what} is not supported: the data lives in the SQL database; use its own tools"
    ))
}

impl MaintenanceService {
    /// etcd's isAuthenticated of its maintenance calls: root only.
    async fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let ai = sender(self.store.auth(), req).await?;
        self.store.auth().check_admin(ai.as_ref())?;
        Ok(())
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let ai = sender(self.store.auth(), &req).await?;
        if req.get_ref().action == AlarmAction::Get as i32 {
            self.store.auth().require(ai.as_ref())?;
        } else {
            self.store.auth().check_admin(ai.as_ref())?;
        }
        let r = req.into_inner();
        let alarms = self.store.alarms();
        let listed = match AlarmAction::try_from(r.action) {
            Ok(AlarmAction::Get) => alarms.get(r.alarm).await?,
            Ok(AlarmAction::Activate) => alarms.activate(r.member_id, r.alarm).await?,
            Ok(AlarmAction::Deactivate) => alarms.deactivate(r.member_id, r.alarm).await?,
            Err(_) => return Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        };
        let meta = self.store.meta().await?;
        Ok(Response::new(AlarmResponse {
            header: self.id.header(meta.revision),
            alarms: listed,
        }))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let ai = sender(self.store.auth(), &req).await?;
        self.store.auth().require(ai.as_ref())?;
        let meta = self.store.meta().await?;
        let db_size = self.store.backend().db_size().await.map_err(Error::from)?;
        let index = u64::try_from(meta.revision).unwrap_or_default();
        Ok(Response::new(StatusResponse {
            header: self.id.header(meta.revision),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: self.id.member_id,
            raft_index: index,
            raft_term: self.id.raft_term,
            raft_applied_index: index,
            errors: self.store.alarms().status_errors(),
            db_size_in_use: db_size,
            is_learner: false,
        }))
    }

    /// Nothing to defragment here (the database reclaims space itself);
    /// answered as etcd answers, without a header.
    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.admin(&req).await?;
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    /// etcd hashes its whole bbolt file; etcdsql hashes what it holds of
    /// etcd's buckets: the key bucket as HashKV at the head, then the
    /// leases. Equal on every etcdsql of one database at one revision.
    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.admin(&req).await?;
        let (hash, revision) = self.store.hash().await?;
        Ok(Response::new(HashResponse {
            header: self.id.header(revision),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.admin(&req).await?;
        let (hash, compact_revision) = self.store.hash_kv(req.into_inner().revision).await?;
        let meta = self.store.meta().await?;
        Ok(Response::new(HashKvResponse {
            header: self.id.header(meta.revision),
            hash,
            compact_revision,
        }))
    }

    type SnapshotStream =
        Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.admin(&req).await?;
        Err(unsupported("Snapshot"))
    }

    /// As a one-member etcd: this member is the leader already, any other
    /// is not a member.
    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.admin(&req).await?;
        if req.into_inner().target_id != self.id.member_id {
            return Err(Status::failed_precondition(
                "etcdserver: bad leader transferee",
            ));
        }
        let meta = self.store.meta().await?;
        Ok(Response::new(MoveLeaderResponse {
            header: self.id.header(meta.revision),
        }))
    }

    async fn downgrade(
        &self,
        req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        self.admin(&req).await?;
        Err(unsupported("Downgrade"))
    }
}
