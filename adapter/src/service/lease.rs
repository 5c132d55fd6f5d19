//! etcdserverpb.Lease: leases are rows in the database, so they survive
//! restarts and every etcdsql process sees the same ones.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::Identity;
use super::auth::sender;
use crate::error::Error;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::store::{Store, now_ms};

/// etcd's bounds: the shortest TTL its default election timeout allows, and
/// the longest it accepts.
pub const MIN_TTL: i64 = 2;
pub const MAX_TTL: i64 = 9_000_000_000;

pub struct LeaseService {
    pub store: Arc<Store>,
    pub id: Identity,
}

/// Whole seconds left, as etcd truncates them (a lease just granted 60 s
/// has 59 left); never below zero.
fn remaining(expires_at_ms: i64, now_ms: i64) -> i64 {
    expires_at_ms.saturating_sub(now_ms).max(0) / 1000
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let ai = sender(self.store.auth(), &req).await?;
        self.store.auth().require(ai.as_ref())?;
        let r = req.into_inner();
        if r.ttl > MAX_TTL {
            return Err(Error::LeaseTtlTooLarge.into());
        }
        let ttl = r.ttl.max(MIN_TTL);
        let (id, revision) = self.store.lease_grant(r.id, ttl).await?;
        Ok(Response::new(LeaseGrantResponse {
            header: self.id.header(revision),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let auth = self.store.auth();
        if auth.enabled() {
            let ai = sender(auth, &req).await?;
            auth.require(ai.as_ref())?;
            let keys = self.store.lease_keys(req.get_ref().id).await?;
            auth.check_keys(ai.as_ref(), &keys, true)?;
        }
        let revision = self.store.lease_revoke(req.into_inner().id).await?;
        Ok(Response::new(LeaseRevokeResponse {
            header: self.id.header(revision),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let ai = sender(self.store.auth(), &req).await?;
        let mut input = req.into_inner();
        let store = self.store.clone();
        let id = self.id;
        let out = async_stream(move |tx| async move {
            while let Some(msg) = input.next().await {
                let Ok(msg) = msg else { break };
                // etcd's checkLeaseRenew: root, or write on every key held.
                if store.auth().enabled() {
                    let allowed = match store.lease_keys(msg.id).await {
                        Ok(keys) => store.auth().check_keys(ai.as_ref(), &keys, true),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = allowed {
                        let _ = tx.send(Err(Status::from(e))).await;
                        break;
                    }
                }
                let resp = match store.lease_renew(msg.id).await {
                    Ok((ttl, revision)) => Ok(LeaseKeepAliveResponse {
                        header: id.header(revision),
                        id: msg.id,
                        ttl,
                    }),
                    // etcd answers an unknown lease with TTL 0.
                    Err(Error::LeaseNotFound) => match store.meta().await {
                        Ok(meta) => Ok(LeaseKeepAliveResponse {
                            header: id.header(meta.revision),
                            id: msg.id,
                            ttl: 0,
                        }),
                        Err(e) => Err(Status::from(e)),
                    },
                    Err(e) => Err(Status::from(e)),
                };
                if tx.send(resp).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(out))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let auth = self.store.auth();
        let ai = sender(auth, &req).await?;
        auth.require(ai.as_ref())?;
        let r = req.into_inner();
        if r.keys && auth.enabled() {
            let keys = self.store.lease_keys(r.id).await?;
            auth.check_keys(ai.as_ref(), &keys, false)?;
        }
        let Some(row) = self.store.lease(r.id).await? else {
            // etcd answers an unknown lease with TTL -1, not an error.
            let meta = self.store.meta().await?;
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header: self.id.header(meta.revision),
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            }));
        };
        let keys = if r.keys {
            self.store.lease_keys(r.id).await?
        } else {
            Vec::new()
        };
        let meta = self.store.meta().await?;
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.id.header(meta.revision),
            id: r.id,
            ttl: remaining(row.expires_at_ms, now_ms()),
            granted_ttl: row.ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self.store.leases().await?;
        let auth = self.store.auth();
        if auth.enabled() {
            // Root, or read on every key of every lease.
            let ai = sender(auth, &req).await?;
            auth.require(ai.as_ref())?;
            for l in &leases {
                let keys = self.store.lease_keys(l.id).await?;
                auth.check_keys(ai.as_ref(), &keys, false)?;
            }
        }
        let meta = self.store.meta().await?;
        Ok(Response::new(LeaseLeasesResponse {
            header: self.id.header(meta.revision),
            leases: leases.iter().map(|l| LeaseStatus { id: l.id }).collect(),
        }))
    }
}

/// A response stream fed by a task; the task stops when the client goes.
fn async_stream<T, F, Fut>(f: F) -> Pin<Box<dyn Stream<Item = T> + Send + 'static>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::remaining;

    #[test]
    fn remaining_seconds_are_truncated() {
        let now = 1_000_000;
        assert_eq!(remaining(now + 60_000, now), 60);
        assert_eq!(remaining(now + 59_990, now), 59);
        assert_eq!(remaining(now + 999, now), 0);
        assert_eq!(remaining(now - 5, now), 0);
        assert_eq!(remaining(i64::MIN, now), 0);
    }
}
