//! etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact.

use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};

use super::Identity;
use super::auth::sender;
use crate::error::Error;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};
use crate::store::{Store, check};

pub struct KvService {
    pub store: Arc<Store>,
    pub id: Identity,
    /// Writes whose encoding exceeds this get "request is too large", as in
    /// etcd (`--max-request-bytes`).
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// The backend's longest storable key, if it has one.
    pub max_key_bytes: Option<usize>,
}

impl KvService {
    fn check_size(&self, m: &impl Message) -> Result<(), Error> {
        if m.encoded_len() > self.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        Ok(())
    }

    fn check_key(&self, key: &[u8]) -> Result<(), Error> {
        match self.max_key_bytes {
            Some(max) if key.len() > max => Err(Error::Invalid(format!(
                "key is {} bytes; this backend stores keys of at most {max} bytes",
                key.len()
            ))),
            _ => Ok(()),
        }
    }

    fn check_txn_keys(&self, ops: &[RequestOp]) -> Result<(), Error> {
        for op in ops {
            match &op.request {
                Some(Op::RequestPut(p)) => self.check_key(&p.key)?,
                Some(Op::RequestTxn(t)) => {
                    self.check_txn_keys(&t.success)?;
                    self.check_txn_keys(&t.failure)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let ai = sender(self.store.auth(), &req).await?;
        let r = req.into_inner();
        check::range(&r)?;
        self.store
            .auth()
            .check(ai.as_ref(), &r.key, &r.range_end, false)?;
        let mut resp = self.store.range(&r).await?;
        self.id.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let ai = sender(self.store.auth(), &req).await?;
        let p = req.into_inner();
        check::put(&p)?;
        self.check_size(&p)?;
        self.check_key(&p.key)?;
        let auth = self.store.auth();
        if auth.enabled() {
            auth.check(ai.as_ref(), &p.key, &[], true)?;
            // A lease holding keys this user may not write cannot be
            // revoked by it, so it may not attach more (etcd's checkLeasePuts).
            if p.lease != 0 {
                for key in self.store.lease_keys(p.lease).await? {
                    auth.check(ai.as_ref(), &key, &[], true)?;
                }
            }
            if p.prev_kv {
                auth.check(ai.as_ref(), &p.key, &[], false)?;
            }
        }
        let mut resp = self.store.put(p).await?;
        self.id.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let ai = sender(self.store.auth(), &req).await?;
        let d = req.into_inner();
        check::delete(&d)?;
        self.check_size(&d)?;
        let auth = self.store.auth();
        auth.check(ai.as_ref(), &d.key, &d.range_end, true)?;
        if d.prev_kv {
            auth.check(ai.as_ref(), &d.key, &d.range_end, false)?;
        }
        let mut resp = self.store.delete_range(d).await?;
        self.id.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let ai = sender(self.store.auth(), &req).await?;
        let t = req.into_inner();
        check::txn(&t, self.max_txn_ops)?;
        self.store.auth().check_txn(ai.as_ref(), &t)?;
        if !check::txn_is_read_only(&t) {
            self.check_size(&t)?;
        }
        self.check_txn_keys(&t.success)?;
        self.check_txn_keys(&t.failure)?;
        let mut resp = self.store.txn(t).await?;
        self.id.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let ai = sender(self.store.auth(), &req).await?;
        self.store.auth().check_admin(ai.as_ref())?;
        let c = req.into_inner();
        self.store.alarms().check_corrupt()?;
        let current = self.store.compact(c.revision, c.physical).await?;
        Ok(Response::new(CompactionResponse {
            header: self.id.header(current),
        }))
    }
}
