//! v3electionpb.Election, as etcd's server runs it: an election recipe
//! over the store. Errors that etcd returns as plain Go errors come back
//! with gRPC code Unknown and etcd's message.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::Identity;
use super::auth::{check_recipe, require};
use super::recipes::{
    Abandon, claim, delete_if_held, edge, keys, next_events, prefix_range, put_if_held,
    session_lease, wait_deletes,
};
use crate::backend::KeyEnd;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use crate::store::Store;
use crate::tasks::Tasks;
use crate::watch::Hub;

const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
const MISSING_LEADER: &str = "\"leader\" field must be provided";

pub struct ElectionService {
    pub store: Arc<Store>,
    pub hub: Arc<Hub>,
    pub tasks: Tasks,
    pub id: Identity,
    /// Set when the server stops: Observe streams end.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

type Observed = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        require(&self.store, &req).await?;
        let lease = session_lease(&self.store, req.get_ref().lease).await?;
        let (prefix, key) = keys(&req.get_ref().name, lease);
        check_recipe(&self.store, &req, Some(&key), &prefix).await?;
        let r = req.into_inner();
        let mine = claim(&self.store, &key, &r.value, lease).await?;
        let rev = mine.create_revision;
        let mut abandon = Abandon {
            store: self.store.clone(),
            tasks: self.tasks.clone(),
            key: key.clone(),
            rev,
            armed: true,
        };
        // Campaigning again with the same lease announces the new value.
        if mine.value != r.value {
            let (held, _) = put_if_held(&self.store, &key, rev, &r.value, lease).await?;
            if !held {
                abandon.armed = false;
                return Err(Status::unknown(NOT_LEADER));
            }
        }
        let at = wait_deletes(&self.store, &self.hub, &prefix, rev - 1).await?;
        abandon.armed = false;
        Ok(Response::new(CampaignResponse {
            header: self.id.header(at),
            leader: Some(LeaderKey {
                name: r.name,
                key,
                rev,
                lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        if let Some(l) = &req.get_ref().leader {
            check_recipe(&self.store, &req, Some(&l.key), &l.key).await?;
        }
        let r = req.into_inner();
        let l = r.leader.ok_or_else(|| Status::unknown(MISSING_LEADER))?;
        let (held, at) = put_if_held(&self.store, &l.key, l.rev, &r.value, l.lease).await?;
        if !held {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(Response::new(ProclaimResponse {
            header: self.id.header(at),
        }))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let (prefix, _) = keys(&req.get_ref().name, 0);
        check_recipe(&self.store, &req, None, &prefix).await?;
        let (first, at) = edge(&self.store, &prefix, true, 0).await?;
        let kv = first.ok_or_else(|| Status::unknown(NO_LEADER))?;
        Ok(Response::new(LeaderResponse {
            header: self.id.header(at),
            kv: Some(kv),
        }))
    }

    type ObserveStream = Observed;

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let (prefix, _) = keys(&req.get_ref().name, 0);
        check_recipe(&self.store, &req, None, &prefix).await?;
        let (store, hub, id) = (self.store.clone(), self.hub.clone(), self.id);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let observing = observe(&store, &hub, id, &prefix, &tx);
            tokio::select! {
                r = observing => {
                    if let Err(e) = r {
                        let _ = tx.send(Err(e)).await;
                    }
                }
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    let _ = tx.send(Err(Status::unavailable("etcdserver: server stopped"))).await;
                }
                () = tx.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        if let Some(l) = &req.get_ref().leader {
            check_recipe(&self.store, &req, Some(&l.key), &l.key).await?;
        }
        let l = req
            .into_inner()
            .leader
            .ok_or_else(|| Status::unknown(MISSING_LEADER))?;
        let at = delete_if_held(&self.store, &l.key, l.rev).await?;
        Ok(Response::new(ResignResponse {
            header: self.id.header(at),
        }))
    }
}

/// Sends the leader's key-value, then each new value it proclaims, then the
/// next leader's, and so on (etcd's `Election.Observe`).
async fn observe(
    store: &Store,
    hub: &Hub,
    id: Identity,
    prefix: &[u8],
    tx: &tokio::sync::mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<(), Status> {
    loop {
        let (first, mut at) = edge(store, prefix, true, 0).await?;
        let leader = match first {
            Some(kv) => kv,
            // No leader yet: the first key put under the prefix leads.
            None => loop {
                let events = next_events(hub, &mut at, prefix, &prefix_range(prefix)).await?;
                if let Some(e) = events.into_iter().find(|e| !e.deleted) {
                    at = e.revision;
                    break e.kv;
                }
            },
        };
        let key = leader.key.clone();
        let send = |kv, rev| {
            tx.send(Ok(LeaderResponse {
                header: id.header(rev),
                kv: Some(kv),
            }))
        };
        if send(leader, at).await.is_err() {
            return Ok(());
        }
        // Its proclamations, until it resigns or its lease ends.
        'leading: loop {
            for e in next_events(hub, &mut at, &key, &KeyEnd::Single).await? {
                if e.deleted {
                    break 'leading;
                }
                if send(e.kv, e.revision).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
