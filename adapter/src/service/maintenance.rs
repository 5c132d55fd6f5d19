//! etcdserverpb.Maintenance: Status, Alarm, Defragment, Hash, HashKV,
//! MoveLeader and Snapshot; Downgrade concerns etcd's own Raft and answers
//! Unimplemented.

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
/// The cluster version of /version, as that etcd reports it.
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

pub struct MaintenanceService {
    pub store: Arc<Store>,
    pub id: Identity,
}

/// Chunks etcd sends a snapshot in.
const SNAPSHOT_CHUNK: usize = 32 * 1024;

fn send_snapshot(
    handle: &tokio::runtime::Handle,
    store: &Store,
    tx: &tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>,
) -> Result<(), Status> {
    use sha2::Digest;
    use std::io::{Read, Seek};
    let failed = |e: std::io::Error| Status::internal(format!("etcdsql: snapshot: {e}"));
    let path = std::env::temp_dir().join(format!(
        "etcdsql-snapshot-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(failed)?;
    // Gone once closed, whatever happens.
    let _ = std::fs::remove_file(&path);
    let (mut file, revision, keys, total) = store.snapshot_file(handle, file)?;
    file.seek(std::io::SeekFrom::Start(0)).map_err(failed)?;
    tracing::info!(revision, keys, bytes = total, "sending a snapshot");
    let mut sha = sha2::Sha256::new();
    let mut sent = 0u64;
    let mut buf = vec![0u8; SNAPSHOT_CHUNK];
    while sent < total {
        let n = file.read(&mut buf).map_err(failed)?;
        if n == 0 {
            return Err(Status::internal("etcdsql: snapshot: the file ended early"));
        }
        sent += u64::try_from(n).unwrap_or_default();
        sha.update(&buf[..n]);
        let msg = SnapshotResponse {
            header: None,
            remaining_bytes: total - sent,
            blob: buf[..n].to_vec(),
        };
        if tx.blocking_send(Ok(msg)).is_err() {
            return Ok(());
        }
    }
    let _ = tx.blocking_send(Ok(SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: sha.finalize().to_vec(),
    }));
    Ok(())
}

fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!(
        "etcdsql: {what} is not supported: the data lives in the SQL database; use its own tools"
    ))
}

impl MaintenanceService {
    /// etcd's isAuthenticated of its maintenance calls: root only. etcd
    /// returns its auth store's errors as they are: gRPC's Unknown, with
    /// the store's `auth: …` text.
    async fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let checked = sender(self.store.auth(), req)
            .await
            .and_then(|ai| self.store.auth().check_admin(ai.as_ref()));
        checked.map_err(|e| match e {
            Error::AuthOldRevision => Status::unknown("auth: revision in header is old"),
            e @ (Error::UserEmpty
            | Error::UserNotFound
            | Error::PermissionDenied
            | Error::InvalidAuthToken) => {
                Status::unknown(e.to_string().replace("etcdserver: ", "auth: "))
            }
            e => e.into(),
        })
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

    /// The store as an etcd backend file (see `store::snapshot`), in
    /// 32 KiB chunks with the bytes still to come, then its SHA-256 in a
    /// last message, as etcd streams it. Written to a temporary file first.
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.admin(&req).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let store = self.store.clone();
        let handle = tokio::runtime::Handle::current();
        // Ends by itself: when sent, or when the client goes away.
        tokio::task::spawn_blocking(move || {
            if let Err(e) = send_snapshot(&handle, &store, &tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
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
        // etcd answers without a header.
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }

    async fn downgrade(
        &self,
        req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        self.admin(&req).await?;
        Err(unsupported("Downgrade"))
    }
}
