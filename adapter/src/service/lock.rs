//! v3lockpb.Lock, as etcd's server runs it: a mutex recipe over the store.
//! The caller's lease keeps the lock; the server does not renew it.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Identity;
use super::auth::{check_recipe, require};
use super::recipes::{Abandon, claim, keys, session_lease, wait_deletes};
use crate::error::Error;
use crate::proto::etcdserverpb::{DeleteRangeRequest, RangeRequest};
use crate::proto::v3lockpb::lock_server::Lock;
use crate::proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use crate::store::Store;
use crate::tasks::Tasks;
use crate::watch::Hub;

pub struct LockService {
    pub store: Arc<Store>,
    pub hub: Arc<Hub>,
    pub tasks: Tasks,
    pub id: Identity,
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        require(&self.store, &req).await?;
        let lease = session_lease(&self.store, req.get_ref().lease).await?;
        let (prefix, key) = keys(&req.get_ref().name, lease);
        check_recipe(&self.store, &req, Some(&key), &prefix).await?;
        let mine = claim(&self.store, &key, b"", lease).await?;
        let mut abandon = Abandon {
            store: self.store.clone(),
            tasks: self.tasks.clone(),
            key: key.clone(),
            rev: mine.create_revision,
            armed: true,
        };
        let rev = wait_deletes(&self.store, &self.hub, &prefix, mine.create_revision - 1).await?;
        // The key may have gone with its lease while waiting (etcd 3.5).
        let now = self
            .store
            .range(&RangeRequest {
                key: key.clone(),
                ..Default::default()
            })
            .await?;
        abandon.armed = false;
        if now.kvs.first().map(|kv| kv.create_revision) != Some(mine.create_revision) {
            return Err(Status::unknown("session expired"));
        }
        Ok(Response::new(LockResponse {
            header: self.id.header(rev),
            key,
        }))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let key = req.get_ref().key.clone();
        check_recipe(&self.store, &req, Some(&key), &key).await?;
        let r = req.into_inner();
        if r.key.is_empty() {
            return Err(Error::EmptyKey.into());
        }
        let d = self
            .store
            .delete_range(DeleteRangeRequest {
                key: r.key,
                ..Default::default()
            })
            .await?;
        let rev = d.header.map_or(0, |h| h.revision);
        Ok(Response::new(UnlockResponse {
            header: self.id.header(rev),
        }))
    }
}
