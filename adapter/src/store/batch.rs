//! One group commit: many write requests in one database transaction.
//!
//! The transaction locks the revision row, prefetches every single key and
//! lease the requests name, then evaluates the requests in arrival order
//! against an in-memory overlay of what earlier requests in the batch
//! changed. Each request that changes something gets the next revision.
//! Changes are written in bulk at the end (or before a range read, which
//! the database must answer with the batch's changes in place), then the
//! revision row is stored and the transaction commits.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;

use super::ops::{self, View};
use crate::backend::{
    DbError, Flush, HistoryRow, Indexed, LeaseRow, Meta, RangeQuery, RangeRows, Upsert, Writer,
};
use crate::error::Error;
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RequestOp, TxnRequest,
    TxnResponse,
};
use crate::proto::mvccpb::KeyValue;
use crate::selector::Catalog;

/// A request that goes through the committer.
#[derive(Debug)]
pub enum WriteOp {
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(i64),
    LeaseGrant {
        id: i64,
        ttl: i64,
        now_ms: i64,
    },
    LeaseRevoke(i64),
    LeaseRenew {
        id: i64,
        now_ms: i64,
    },
    /// Revokes the lease only if it is still expired at `now_ms`: a
    /// renewal that committed first wins, and of several processes
    /// expiring one lease only the first finds it.
    LeaseExpire {
        id: i64,
        now_ms: i64,
    },
}

impl WriteOp {
    /// Rough size, to bound a batch's memory.
    pub fn size(&self) -> usize {
        use prost::Message;
        match self {
            WriteOp::Put(p) => p.encoded_len(),
            WriteOp::DeleteRange(d) => d.encoded_len(),
            WriteOp::Txn(t) => t.encoded_len(),
            _ => 16,
        }
    }
}

#[derive(Debug)]
pub enum WriteResult {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    /// The compaction was recorded; history below `revision` may be purged.
    Compacted {
        previous: i64,
        revision: i64,
        current: i64,
    },
    LeaseGranted {
        id: i64,
        ttl: i64,
        revision: i64,
    },
    LeaseRevoked {
        revision: i64,
    },
    LeaseRenewed {
        ttl: i64,
        revision: i64,
    },
    /// The lease was not (or no longer) expired.
    LeaseKept,
}

/// The last history row a batch wrote: after a COMMIT whose outcome is
/// unknown, finding it (under the revision-row lock, so that the old
/// transaction has ended) tells whether the batch committed. Revisions are
/// unique, so another writer cannot have written this row.
#[derive(Clone, Debug)]
pub struct Probe {
    pub revision: i64,
    pub sub: i32,
    /// The batch's nonce, written into each of its history rows: another
    /// process may write an identical row at the same revision (the same
    /// compare-and-swap), so only this tells the rows apart.
    pub batch: i64,
}

/// A random nonce per batch.
fn nonce() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    i64::from_ne_bytes(h.finish().to_ne_bytes())
}

/// Why a commit failed, and whether its outcome is unknown.
pub struct CommitError {
    pub error: DbError,
    /// The COMMIT may have reached the database.
    pub after_commit_sent: bool,
    pub probe: Option<Probe>,
}

pub struct Batch<'w> {
    w: &'w mut dyn Writer,
    /// Selector columns of written objects; learns CRDs as they are written.
    catalog: &'w Catalog,
    /// See [`Probe::batch`].
    nonce: i64,
    /// See [`Probe`].
    probe: Option<Probe>,
    /// The store before the request being evaluated.
    meta: Meta,
    /// Changes the current request has made (its sub-revision counter).
    sub: i32,
    /// Latest known version of keys (None = absent), overlay included.
    cache: HashMap<Vec<u8>, Option<KeyValue>>,
    /// Live-table changes not yet written.
    dirty: BTreeMap<Vec<u8>, Option<KeyValue>>,
    history: Vec<HistoryRow>,
    /// Leases known to exist (or not), and rows not yet written.
    leases: HashMap<i64, bool>,
    dirty_leases: BTreeMap<i64, Option<LeaseRow>>,
    /// CRD writes, for the catalog once the batch committed (a batch
    /// rolled back must not change what selectors may name).
    crd_writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Keys and leases a batch will certainly read, fetched in one query each.
fn collect(ops: &[WriteOp], keys: &mut HashSet<Vec<u8>>, leases: &mut HashSet<i64>) {
    fn requests(reqs: &[RequestOp], keys: &mut HashSet<Vec<u8>>, leases: &mut HashSet<i64>) {
        for r in reqs {
            match &r.request {
                Some(Request::RequestPut(p)) => put(p, keys, leases),
                Some(Request::RequestDeleteRange(d)) if d.range_end.is_empty() => {
                    keys.insert(d.key.clone());
                }
                Some(Request::RequestRange(g)) if g.range_end.is_empty() => {
                    keys.insert(g.key.clone());
                }
                Some(Request::RequestTxn(t)) => txn(t, keys, leases),
                _ => {}
            }
        }
    }
    fn put(p: &PutRequest, keys: &mut HashSet<Vec<u8>>, leases: &mut HashSet<i64>) {
        keys.insert(p.key.clone());
        if p.lease != 0 {
            leases.insert(p.lease);
        }
    }
    fn txn(t: &TxnRequest, keys: &mut HashSet<Vec<u8>>, leases: &mut HashSet<i64>) {
        for c in t.compare.iter().filter(|c| c.range_end.is_empty()) {
            keys.insert(c.key.clone());
        }
        requests(&t.success, keys, leases);
        requests(&t.failure, keys, leases);
    }
    for op in ops {
        match op {
            WriteOp::Put(p) => put(p, keys, leases),
            WriteOp::DeleteRange(d) if d.range_end.is_empty() => {
                keys.insert(d.key.clone());
            }
            WriteOp::Txn(t) => txn(t, keys, leases),
            WriteOp::LeaseGrant { id, .. } if *id != 0 => {
                leases.insert(*id);
            }
            WriteOp::LeaseRevoke(id)
            | WriteOp::LeaseRenew { id, .. }
            | WriteOp::LeaseExpire { id, .. } => {
                leases.insert(*id);
            }
            _ => {}
        }
    }
}

impl<'w> Batch<'w> {
    pub async fn begin(
        w: &'w mut dyn Writer,
        catalog: &'w Catalog,
        ops: &[WriteOp],
    ) -> Result<Batch<'w>, DbError> {
        let meta = w.begin().await?;
        let mut b = Batch {
            w,
            catalog,
            nonce: nonce(),
            meta,
            sub: 0,
            cache: HashMap::new(),
            dirty: BTreeMap::new(),
            history: Vec::new(),
            probe: None,
            leases: HashMap::new(),
            dirty_leases: BTreeMap::new(),
            crd_writes: Vec::new(),
        };
        let (mut keys, mut leases) = (HashSet::new(), HashSet::new());
        collect(ops, &mut keys, &mut leases);
        if !keys.is_empty() {
            let keys: Vec<Vec<u8>> = keys.into_iter().collect();
            for kv in b.w.get(&keys).await? {
                b.cache.insert(kv.key.clone(), Some(kv));
            }
            for k in keys {
                b.cache.entry(k).or_insert(None);
            }
        }
        if !leases.is_empty() {
            // Only existence matters inside a batch; renewals re-read the row.
            let ids: Vec<i64> = leases.into_iter().collect();
            let found: HashSet<i64> = b.w.leases_exist(&ids).await?.into_iter().collect();
            for id in ids {
                b.leases.insert(id, found.contains(&id));
            }
        }
        Ok(b)
    }

    /// Writes what the batch changed so far.
    async fn flush(&mut self) -> Result<(), DbError> {
        let mut f = Flush::default();
        // Each put's selector columns, computed once for its history row
        // and, for the key's last put, its live row.
        let mut latest = HashMap::new();
        for h in &mut self.history {
            if !h.deleted {
                h.index = Indexed::of(self.catalog, &h.key, &h.value);
                latest.insert(h.key.clone(), h.index.clone());
            }
        }
        for (key, kv) in std::mem::take(&mut self.dirty) {
            match kv {
                Some(kv) => {
                    let index = match latest.remove(&key) {
                        Some(index) => index,
                        // Written by an earlier flush of this batch.
                        None => Indexed::of(self.catalog, &kv.key, &kv.value),
                    };
                    f.upserts.push(Upsert { kv, index });
                }
                None => f.deletes.push(key),
            }
        }
        if let Some(h) = self.history.last() {
            self.probe = Some(Probe {
                revision: h.revision,
                sub: h.sub,
                batch: self.nonce,
            });
        }
        f.history = std::mem::take(&mut self.history);
        f.batch = self.nonce;
        for (id, row) in std::mem::take(&mut self.dirty_leases) {
            match row {
                Some(row) => f.lease_upserts.push(row),
                None => f.lease_deletes.push(id),
            }
        }
        if !f.is_empty() {
            crate::backend::flush(self.w, &f).await?;
        }
        Ok(())
    }

    /// Flushes and commits; returns the revision row as stored. The flag on
    /// an error tells whether the COMMIT itself failed (outcome unknown).
    pub async fn commit(mut self) -> Result<Meta, CommitError> {
        self.flush().await.map_err(|error| CommitError {
            error,
            after_commit_sent: false,
            probe: None,
        })?;
        let probe = self.probe.take();
        self.w
            .commit(self.meta)
            .await
            .map_err(|error| CommitError {
                error,
                after_commit_sent: true,
                probe,
            })?;
        for (key, value) in &self.crd_writes {
            self.catalog.observe_write(key, value.as_deref());
        }
        Ok(self.meta)
    }

    /// Evaluates one request. A returned error is either the request's own
    /// (nothing of it was applied) or a database error that aborts the batch.
    pub async fn apply(&mut self, op: &WriteOp) -> Result<WriteResult, Error> {
        self.sub = 0;
        let result = self.apply_one(op).await;
        if self.sub > 0 {
            self.meta.revision += 1;
        }
        result
    }

    async fn apply_one(&mut self, op: &WriteOp) -> Result<WriteResult, Error> {
        match op {
            WriteOp::Put(p) => {
                ops::check_put(self, p).await?;
                Ok(WriteResult::Put(ops::put(self, p).await?))
            }
            WriteOp::DeleteRange(d) => {
                Ok(WriteResult::DeleteRange(ops::delete_range(self, d).await?))
            }
            WriteOp::Txn(t) => Ok(WriteResult::Txn(ops::txn(self, t, true).await?)),
            WriteOp::Compact(rev) => {
                // etcd's order: at or below the last compaction, then future.
                if *rev <= self.meta.compact_revision {
                    return Err(Error::Compacted);
                }
                if *rev > self.meta.revision {
                    return Err(Error::FutureRev);
                }
                let previous = self.meta.compact_revision;
                self.meta.compact_revision = *rev;
                Ok(WriteResult::Compacted {
                    previous,
                    revision: *rev,
                    current: self.meta.revision,
                })
            }
            WriteOp::LeaseGrant { id, ttl, now_ms } => {
                let id = if *id == 0 {
                    self.free_lease_id().await?
                } else {
                    *id
                };
                if self.lease_exists(id).await? {
                    return Err(Error::LeaseExists);
                }
                self.set_lease(id, Some(lease_row(id, *ttl, *now_ms)));
                Ok(WriteResult::LeaseGranted {
                    id,
                    ttl: *ttl,
                    revision: self.meta.revision,
                })
            }
            WriteOp::LeaseRevoke(id) => {
                if !self.lease_exists(*id).await? {
                    return Err(Error::LeaseNotFound);
                }
                self.revoke(*id).await
            }
            WriteOp::LeaseExpire { id, now_ms } => match self.lease_row(*id).await? {
                Some(row) if row.expires_at_ms <= *now_ms => self.revoke(*id).await,
                _ => Ok(WriteResult::LeaseKept),
            },
            WriteOp::LeaseRenew { id, now_ms } => {
                let row = self.lease_row(*id).await?.ok_or(Error::LeaseNotFound)?;
                self.set_lease(*id, Some(lease_row(*id, row.ttl, *now_ms)));
                Ok(WriteResult::LeaseRenewed {
                    ttl: row.ttl,
                    revision: self.meta.revision,
                })
            }
        }
    }

    /// Deletes the lease's keys (delete events in this request's revision)
    /// and the lease.
    async fn revoke(&mut self, id: i64) -> Result<WriteResult, Error> {
        self.flush().await?;
        for key in self.w.lease_keys(id).await? {
            if let Some(kv) = self.get(&key).await?.filter(|kv| kv.lease == id) {
                self.delete(&kv).await?;
            }
        }
        self.set_lease(id, None);
        Ok(WriteResult::LeaseRevoked {
            revision: self.meta.revision + i64::from(self.sub > 0),
        })
    }

    /// The lease's current row, the batch's own changes included.
    async fn lease_row(&mut self, id: i64) -> Result<Option<LeaseRow>, Error> {
        if let Some(row) = self.dirty_leases.get(&id) {
            return Ok(*row);
        }
        if self.leases.get(&id) == Some(&false) {
            return Ok(None);
        }
        Ok(self.w.lease_row(id).await?)
    }

    fn set_lease(&mut self, id: i64, row: Option<LeaseRow>) {
        self.leases.insert(id, row.is_some());
        self.dirty_leases.insert(id, row);
    }

    /// A random positive lease id nobody holds (etcd picks ids the same way).
    async fn free_lease_id(&mut self) -> Result<i64, Error> {
        loop {
            let id = i64::try_from(rand_u64() >> 1).unwrap_or(1).max(1);
            if !self.lease_exists(id).await? {
                return Ok(id);
            }
        }
    }
}

fn lease_row(id: i64, ttl: i64, now_ms: i64) -> LeaseRow {
    LeaseRow {
        id,
        ttl,
        expires_at_ms: now_ms.saturating_add(ttl.saturating_mul(1000)),
    }
}

/// 64 random bits from the standard library's per-process random hasher keys.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

#[async_trait]
impl View for Batch<'_> {
    fn meta(&self) -> Meta {
        self.meta
    }

    fn changed(&self) -> bool {
        self.sub > 0
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        if let Some(kv) = self.cache.get(key) {
            return Ok(kv.clone());
        }
        let kv = self.w.get(&[key.to_vec()]).await?.pop();
        self.cache.insert(key.to_vec(), kv.clone());
        Ok(kv)
    }

    async fn range(&mut self, q: &RangeQuery) -> Result<RangeRows, Error> {
        self.flush().await?;
        Ok(self.w.range(q).await?)
    }

    async fn lease_exists(&mut self, id: i64) -> Result<bool, Error> {
        if let Some(exists) = self.leases.get(&id) {
            return Ok(*exists);
        }
        let exists = !self.w.leases_exist(&[id]).await?.is_empty();
        self.leases.insert(id, exists);
        Ok(exists)
    }

    async fn put(&mut self, kv: KeyValue, prev_revision: i64) -> Result<(), Error> {
        self.history.push(HistoryRow {
            revision: kv.mod_revision,
            sub: self.sub,
            key: kv.key.clone(),
            value: kv.value.clone(),
            create_revision: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
            deleted: false,
            prev_revision,
            index: None,
        });
        if Catalog::concerns(&kv.key) {
            self.crd_writes
                .push((kv.key.clone(), Some(kv.value.clone())));
        }
        self.sub += 1;
        self.cache.insert(kv.key.clone(), Some(kv.clone()));
        self.dirty.insert(kv.key.clone(), Some(kv));
        Ok(())
    }

    async fn delete(&mut self, prev: &KeyValue) -> Result<(), Error> {
        self.history.push(HistoryRow {
            revision: self.meta.revision + 1,
            sub: self.sub,
            key: prev.key.clone(),
            value: Vec::new(),
            create_revision: prev.create_revision,
            version: prev.version,
            lease: prev.lease,
            deleted: true,
            prev_revision: prev.mod_revision,
            index: None,
        });
        if Catalog::concerns(&prev.key) {
            self.crd_writes.push((prev.key.clone(), None));
        }
        self.sub += 1;
        self.cache.insert(prev.key.clone(), None);
        self.dirty.insert(prev.key.clone(), None);
        Ok(())
    }
}
