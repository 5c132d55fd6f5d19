//! The revision-log store: etcd's KV and lease semantics over a
//! [`Backend`]. Reads run as single statements on the read pool; writes go
//! through the [`committer`], which group-commits them.
//!
//! - [`check`]: request validation etcd does before its store;
//! - [`ops`]: Range/Put/DeleteRange/Txn semantics over a [`ops::View`];
//! - [`batch`]: the write view, one database transaction per batch;
//! - [`committer`]: the batching loop and its retries.

pub mod alarms;
pub mod backfill;
pub mod batch;
pub mod check;
pub mod committer;
mod counts;
mod crc32c;
pub mod ops;
mod reads;
pub mod snapshot;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::autopart::{Partitioner, put_keys, puts};
use crate::backend::sql::Param;
use crate::backend::{
    Backend, DbError, HistoryRow, KeyEnd, LeaseRow, Meta, RangeQuery, RangeRows, epochs,
};
use crate::error::Error;
use crate::metrics;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;
use crate::replicas::Replicas;
use crate::selector::{Catalog, Selector};
use crate::tasks::Tasks;
use crate::watch::{self, Hub};
use batch::{
    Compact, Compacted, Expiry, Extracted, LeaseExpire, LeaseGrant, LeaseRenew, LeaseRevoke,
};
use committer::Committer;
use ops::View;

/// A std mutex's guard; a poisoned mutex is taken as it is.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Attempts for a read that hit a transient conflict (SQLite busy, a
/// statement Galera interrupted for replicated DDL).
const READ_RETRIES: u32 = 8;
/// How long a Range whose count comes from the watch hub waits for the hub
/// to reach the revision it read at (another process's commit reaches it
/// by notification or poll); then the database counts.
const COUNT_WAIT: Duration = Duration::from_millis(10);
/// Revisions of events a kept count is carried over at most; a count older
/// than that is counted again by the database.
const COUNT_SPAN: i64 = 10_000;
/// Attempts for a read on the primary whose connection broke.
const READ_RECONNECTS: u32 = crate::backend::RECONNECTS;

/// A read, run again on conflicts and, on the primary, on a broken
/// connection (a replica's error sends the read elsewhere).
async fn retried<T, F, Fut>(primary: bool, mut read: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    let (mut conflicts, mut broken) = (0, 0);
    loop {
        match read().await {
            Err(DbError::Retry(_)) if conflicts < READ_RETRIES => {
                // 5 ms doubling: about 1.3 s in all, enough for the DDL
                // of a compaction on Galera to pass.
                tokio::time::sleep(Duration::from_millis(5 << conflicts)).await;
                conflicts += 1;
            }
            Err(DbError::Unavailable(_)) if primary && broken < READ_RECONNECTS => {
                broken += 1;
                tokio::time::sleep(crate::backend::reconnect_delay(broken)).await;
            }
            r => return r,
        }
    }
}

/// How compaction removes obsolete history.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compaction {
    /// Drop whole history epochs (partitions), keeping their survivors;
    /// row deletes where the dialect has no partitions (SQLite).
    #[default]
    Drop,
    /// Delete obsolete rows one by one (no DDL at compaction).
    Delete,
}

pub struct Store {
    backend: Arc<dyn Backend>,
    compaction: Compaction,
    partitioner: Option<Arc<Partitioner>>,
    replicas: Option<Arc<Replicas>>,
    /// Selector columns of written objects, and what selectors may name.
    catalog: Arc<Catalog>,
    committer: Committer,
    hub: Arc<Hub>,
    /// One purge at a time per process; purges are idempotent across processes.
    purge: Arc<tokio::sync::Mutex<()>>,
    page_counts: counts::PageCounts,
    range_counts: counts::RangeCounts,
    /// Single-key reads of the latest state, gathered.
    reads: Arc<reads::Reads>,
    tasks: Tasks,
    alarms: Arc<alarms::Alarms>,
    auth: Arc<crate::auth::Auth>,
}

/// Revisions read per history query of [`Store::hash_kv`].
const HASH_WINDOW: i64 = 10_000;

/// A version as etcd's key bucket holds it: its revision key and value.
fn hash_entry(r: HistoryRow) -> (Vec<u8>, Vec<u8>) {
    use prost::Message;
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&r.revision.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&i64::from(r.sub).to_be_bytes());
    let kv = if r.deleted {
        k.push(b't');
        KeyValue {
            key: r.key,
            ..Default::default()
        }
    } else {
        KeyValue {
            key: r.key,
            value: r.value,
            create_revision: r.create_revision,
            mod_revision: r.revision,
            version: r.version,
            lease: r.lease,
        }
    };
    (k, kv.encode_to_vec())
}

/// How often each process looks for expired leases.
const LEASE_EXPIRY_INTERVAL: Duration = Duration::from_millis(500);

/// What a promoted lease gets beyond its TTL: etcd's default election
/// timeout, which its new leader adds.
const LEASE_PROMOTE_EXTEND_MS: i64 = 1000;

/// Gives every lease its full TTL again, as etcd's new leader does before
/// it expires any (`lessor.Promote`): no holder could renew while no
/// process was up, or while the database could not be reached, and renewals
/// a restarted database lost are made up for. Returns the database's run it
/// committed in ([`Writer::incarnation`](crate::backend::Writer::incarnation)).
/// A conflict (a renewal or revocation of another process holding a row)
/// is retried.
pub async fn promote_leases(backend: &dyn Backend) -> Result<Option<i64>, DbError> {
    let mut conflicts = 0;
    let p = loop {
        match backend
            .promote_leases(now_ms() + LEASE_PROMOTE_EXTEND_MS)
            .await
        {
            Err(DbError::Retry(_)) if conflicts < 10 => conflicts += 1,
            r => break r?,
        }
    };
    if p.leases > 0 {
        tracing::info!(leases = p.leases, "leases given their TTL again");
    }
    Ok(p.incarnation)
}

/// What a store works with besides its backend and hub.
pub struct Parts {
    pub compaction: Compaction,
    pub partitioner: Option<Arc<Partitioner>>,
    pub replicas: Option<Arc<Replicas>>,
    pub catalog: Arc<Catalog>,
    pub alarms: Arc<alarms::Alarms>,
    pub auth: Arc<crate::auth::Auth>,
    /// The database's run the server's first [`promote_leases`] committed in.
    pub promoted: Option<i64>,
}

impl Store {
    /// Committed writes reach `hub` before they are answered.
    pub fn new(
        tasks: &Tasks,
        backend: Arc<dyn Backend>,
        hub: Arc<Hub>,
        parts: Parts,
    ) -> Arc<Store> {
        let Parts {
            compaction,
            partitioner,
            replicas,
            catalog,
            alarms,
            auth,
            promoted,
        } = parts;
        let store = Arc::new(Store {
            committer: Committer::spawn(tasks, backend.clone(), hub.clone(), catalog.clone()),
            hub,
            catalog,
            reads: reads::Reads::new(backend.clone(), replicas.clone()),
            backend,
            compaction,
            partitioner,
            replicas,
            purge: Arc::default(),
            page_counts: counts::PageCounts::default(),
            range_counts: counts::RangeCounts::default(),
            tasks: tasks.clone(),
            alarms,
            auth,
        });
        tasks.spawn(
            "lease expirer",
            expire_leases(Arc::downgrade(&store), promoted),
        );
        store
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn alarms(&self) -> &alarms::Alarms {
        &self.alarms
    }

    pub fn auth(&self) -> &Arc<crate::auth::Auth> {
        &self.auth
    }

    /// A Range on the primary, or with replicas on one that has reached
    /// the revision it needs: the primary's current one (linearizable), the
    /// one asked for (`revision` set), or none (serializable).
    async fn route(&self, r: &RangeRequest, q: &RangeQuery) -> Result<RangeRows, Error> {
        let Some(rs) = &self.replicas else {
            return self.read(self.backend.as_ref(), q, true).await;
        };
        let min = match (r.serializable, r.revision > 0) {
            (_, true) => Some(r.revision),
            (true, false) => None,
            (false, false) => Some(rs.fence().await?),
        };
        let rows = rs
            .read("range", min, |b| async move {
                let primary = Arc::ptr_eq(&b, rs.primary());
                let rows = self
                    .read(b.as_ref(), q, primary)
                    .await
                    .map_err(|e| match e {
                        Error::Db(e) => e,
                        other => DbError::Other(other.to_string()),
                    })?;
                let at = rows.meta.as_ref().map_or(0, |m| m.revision);
                Ok((rows, at))
            })
            .await?;
        Ok(rows)
    }

    /// A Range on `backend`, retried as [`retried`] says.
    async fn read(
        &self,
        backend: &dyn Backend,
        q: &RangeQuery,
        primary: bool,
    ) -> Result<RangeRows, Error> {
        Ok(retried(primary, || backend.range(q)).await?)
    }

    pub async fn range(&self, r: &RangeRequest) -> Result<RangeResponse, Error> {
        let at = (r.revision > 0).then_some(r.revision);
        let mut q = ops::range_query(r, at);
        q.selector = Selector::parse(
            &r.label_selector,
            &r.field_selector,
            &r.key,
            &r.range_end,
            &self.catalog,
        )
        .map_err(Error::Invalid)?
        .map(Arc::new);
        // A page of a paginated LIST (ascending keys, no filters) whose
        // count the previous page left.
        let pageable = r.limit > 0
            && !r.count_only
            && r.sort_target() == crate::proto::etcdserverpb::range_request::SortTarget::Key
            && q.sort == crate::backend::SortTarget::Key
            && !q.descending
            && r.min_mod_revision == 0
            && r.max_mod_revision == 0
            && r.min_create_revision == 0
            && r.max_create_revision == 0
            && matches!(q.end, KeyEnd::Before(_) | KeyEnd::Unbounded);
        let known = match at {
            Some(rev) if pageable => self.page_counts.take(&counts::scope(r), rev, &r.key),
            _ => None,
        };
        // A whole range at the latest revision (so no page count) whose
        // count a previous Range left (see [`counts::RangeCounts`]).
        let whole = at.is_none() && q.selector.is_none() && q.end != KeyEnd::Single;
        let counted = if whole {
            self.range_counts
                .get(&r.key, &r.range_end)
                .filter(|&(rev, _)| self.hub.revision() - rev <= COUNT_SPAN)
        } else {
            None
        };
        q.count = known.is_none() && counted.is_none();
        if q.end == KeyEnd::Single && at.is_none() && !r.serializable {
            // A key read before a compare-and-swap (GuaranteedUpdate):
            // this process's batch in flight commits before the CAS is
            // evaluated, so reading what it wrote saves a conflict.
            self.hub.settled().await;
        }
        let mut rows = if q.end == KeyEnd::Single
            && at.is_none()
            && q.selector.is_none()
            // Serializable reads on replicas need no fence.
            && (self.replicas.is_none() || !r.serializable)
        {
            let (meta, kv) = self.reads.get(&r.key).await?;
            let mut rows = ops::single_key_rows(kv, &q);
            rows.meta = Some(meta);
            rows
        } else {
            self.route(r, &q).await?
        };
        let revision = |rows: &RangeRows| {
            rows.meta
                .ok_or_else(|| Error::Internal("range statement returned no revision".into()))
        };
        if let Some((from, count)) = counted {
            let upto = revision(&rows)?.revision;
            match self.count_since(&r.key, &q.end, from, count, upto).await {
                Some(n) => rows.count = n,
                None => {
                    metrics::RANGE_COUNTS.with_label_values(&["counted"]).inc();
                    q.count = true;
                    rows = self.route(r, &q).await?;
                }
            }
        }
        let meta = revision(&rows)?;
        if whole {
            self.range_counts
                .put(&r.key, &r.range_end, meta.revision, rows.count);
        }
        if let Some(rev) = at {
            if rev > meta.revision {
                return Err(Error::FutureRev);
            }
            if rev < meta.compact_revision {
                return Err(Error::Compacted);
            }
        }
        if let Some(n) = known {
            rows.count = n;
        }
        let resp = ops::range_response(r, rows, meta.revision);
        if pageable
            && resp.more
            && let Some(last) = resp.kvs.last()
        {
            let mut next = last.key.clone();
            next.push(0);
            let rest = resp.count - i64::try_from(resp.kvs.len()).unwrap_or(i64::MAX);
            self.page_counts
                .put(&counts::scope(r), at.unwrap_or(meta.revision), next, rest);
        }
        Ok(resp)
    }

    /// The count of the range at `upto` from its count at `from`, by the
    /// watch hub's events in between; None if the hub does not hold them
    /// all (it has not reached `upto` soon enough, or dropped some).
    async fn count_since(
        &self,
        key: &[u8],
        end: &KeyEnd,
        from: i64,
        count: i64,
        upto: i64,
    ) -> Option<i64> {
        if upto < from {
            return None;
        }
        if self.hub.revision() < upto {
            let mut hub = self.hub.subscribe();
            tokio::time::timeout(COUNT_WAIT, hub.wait_for(|r| *r >= upto))
                .await
                .ok()?
                .ok()?;
        }
        match self.hub.slice(from + 1, upto, usize::MAX) {
            watch::Slice::Events(events) => {
                metrics::RANGE_COUNTS.with_label_values(&["kept"]).inc();
                Some(counts::advance(count, key, end, &events))
            }
            watch::Slice::Evicted => None,
        }
    }

    /// With `--auto-partition`: the custom resources whose CRDs a write puts.
    fn crds<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) -> Vec<String> {
        self.partitioner
            .as_ref()
            .map(|p| p.crds(keys))
            .unwrap_or_default()
    }

    /// After the write committed: partitions for those resources, and
    /// fields read again where a CRD's selectable fields changed.
    fn partition(&self, crds: Vec<String>) {
        if let Some(p) = &self.partitioner {
            for r in crds {
                p.ensure(r);
            }
        }
        for resource in self.catalog.take_changed() {
            let (backend, catalog) = (self.backend.clone(), self.catalog.clone());
            self.tasks.spawn("selector backfill", async move {
                match backfill::resource(backend.as_ref(), &catalog, &resource).await {
                    Ok(rows) => {
                        tracing::info!(%resource, rows, "selectable fields changed; objects indexed again")
                    }
                    Err(e) => {
                        tracing::error!(%resource, error = %e, "indexing objects again after their CRD changed failed")
                    }
                }
            });
        }
    }

    pub async fn put(&self, p: PutRequest) -> Result<PutResponse, Error> {
        self.alarms.check_space(alarms::put_cost(&p)).await?;
        let crds = self.crds([p.key.as_slice()]);
        let mut extracted = Vec::new();
        Extracted::of_put(&self.catalog, &p, &mut extracted);
        let r = self.committer.submit_extracted(p, extracted).await?;
        self.partition(crds);
        Ok(r)
    }

    pub async fn delete_range(&self, d: DeleteRangeRequest) -> Result<DeleteRangeResponse, Error> {
        self.alarms.check_corrupt()?;
        self.committer.submit(d).await
    }

    /// Read-only Txns are answered at one fixed revision without the
    /// committer; the others go through it.
    pub async fn txn(&self, t: TxnRequest) -> Result<TxnResponse, Error> {
        // etcd checks the quota of every Txn, read-only ones included, and
        // refuses only those that write while CORRUPT is raised.
        let read_only = check::txn_is_read_only(&t);
        if !read_only {
            self.alarms.check_corrupt()?;
        }
        self.alarms.check_quota(alarms::txn_cost(&t)).await?;
        if read_only {
            let meta = self.backend.meta().await?;
            let mut view = ReadView {
                backend: self.backend.as_ref(),
                meta,
            };
            return ops::txn(&mut view, &t, false).await;
        }
        let [on_success, on_failure] = [&t.success, &t.failure].map(|ops| self.crds(put_keys(ops)));
        let mut extracted = Vec::new();
        for p in [&t.success, &t.failure]
            .into_iter()
            .flat_map(|ops| puts(ops))
        {
            Extracted::of_put(&self.catalog, p, &mut extracted);
        }
        let r = self.committer.submit_extracted(t, extracted).await?;
        self.partition(if r.succeeded { on_success } else { on_failure });
        Ok(r)
    }

    /// Records the compaction, then deletes the history it made obsolete (in
    /// the background unless `physical`). Returns the current revision.
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<i64, Error> {
        let Compacted {
            previous,
            revision,
            current,
        } = self.committer.submit(Compact(revision)).await?;
        let backend = self.backend.clone();
        let lock = self.purge.clone();
        let epochs = self.compaction == Compaction::Drop && backend.partitions().is_some();
        let purge = async move {
            let _one = lock.lock().await;
            let started = std::time::Instant::now();
            let r = async {
                if !epochs {
                    return backend.purge_history(previous, revision).await;
                }
                let e = epochs::compact(&*backend, revision).await?;
                let [roll, moving, purge, drop] = e.took;
                tracing::info!(revision, rolled = ?e.rolled, dropped = ?e.dropped, moved = e.moved,
                    deleted = e.deleted, ?roll, ?moving, ?purge, ?drop,
                    elapsed = ?started.elapsed(), "dropped compacted epochs");
                // Rows at or below the revision in epochs that stay.
                Ok(e.deleted
                    + backend
                        .purge_history(previous.max(e.covered), revision)
                        .await?)
            }
            .await;
            match &r {
                Ok(rows) => {
                    tracing::info!(revision, rows, elapsed = ?started.elapsed(), "compacted history")
                }
                Err(e) => {
                    tracing::error!(revision, error = %e, "purging compacted history failed; the next compaction retries it")
                }
            }
            r
        };
        // The purge goes on if the client goes away.
        let (tx, done) = tokio::sync::oneshot::channel();
        self.tasks.spawn("purge", async move {
            let _ = tx.send(purge.await);
        });
        if physical {
            done.await.map_err(|_| Error::Stopping)??;
        }
        Ok(current)
    }

    /// etcd's HashKV: CRC-32C of the key bucket as etcd's bbolt holds it
    /// after the same history, hashed as etcd hashes it. `key`, then each
    /// version at or below `revision` in (revision, sub) order, as its
    /// revision key (with `t` for a deletion) and its marshalled KeyValue;
    /// of the versions at or below the compaction only those still the
    /// latest at `revision` (all of them if no key is live then, as etcd).
    /// Answers (hash, compact revision).
    pub async fn hash_kv(&self, revision: i64) -> Result<(u32, i64), Error> {
        // This process's purge of compacted history has finished and none
        // starts meanwhile: at or below the compaction, one version per key.
        let _purge = self.purge.lock().await;
        let meta = self.backend.meta().await?;
        let compact = meta.compact_revision;
        if revision > 0 && revision <= compact {
            return Err(Error::Compacted);
        }
        if revision > meta.revision {
            return Err(Error::FutureRev);
        }
        if revision < 0 {
            // etcd hashes the versions below revision + 1: none.
            let mut crc = crc32c::Crc::default();
            crc.update(b"key");
            return Ok((crc.finish(), compact));
        }
        let rev = if revision > 0 {
            revision
        } else {
            meta.revision
        };
        // Keys changed after the compaction, and whether each is deleted at `rev`.
        let mut changed: HashMap<Vec<u8>, bool> = HashMap::new();
        self.history_rows(compact.max(0), rev, false, |r| {
            changed.insert(r.key, r.deleted);
        })
        .await?;
        let mut live = changed.values().any(|deleted| !deleted);
        // Versions at or below the compaction: kept if still the latest.
        let (mut kept, mut all) = (crc32c::Crc::default(), crc32c::Crc::default());
        kept.update(b"key");
        all.update(b"key");
        self.history_rows(0, compact.max(0), true, |r| {
            let latest = !changed.contains_key(&r.key);
            let (k, v) = hash_entry(r);
            if latest {
                live = true;
                kept.update(&k);
                kept.update(&v);
            }
            all.update(&k);
            all.update(&v);
        })
        .await?;
        let mut crc = if live { kept } else { all };
        self.history_rows(compact.max(0), rev, true, |r| {
            let (k, v) = hash_entry(r);
            crc.update(&k);
            crc.update(&v);
        })
        .await?;
        Ok((crc.finish(), compact))
    }

    /// etcdsql's Hash: CRC-32C of the HashKV hash at the head, then each
    /// lease (id and TTL, big-endian) in id order. Answers (hash, revision).
    pub async fn hash(&self) -> Result<(u32, i64), Error> {
        let revision = self.backend.meta().await?.revision;
        // At the head (0), which a compaction there leaves hashable.
        let (kv, _) = self.hash_kv(0).await?;
        let mut leases = self.backend.leases().await?;
        leases.sort_by_key(|l| l.id);
        let mut crc = crc32c::Crc::default();
        crc.update(&kv.to_be_bytes());
        crc.update(b"lease");
        for l in &leases {
            crc.update(&l.id.to_be_bytes());
            crc.update(&l.ttl.to_be_bytes());
        }
        Ok((crc.finish(), revision))
    }

    /// History rows in `(after, upto]`, in (revision, sub) order; without
    /// their values (empty) unless `values`.
    async fn history_rows(
        &self,
        mut after: i64,
        upto: i64,
        values: bool,
        mut f: impl FnMut(HistoryRow),
    ) -> Result<(), Error> {
        let value = if values {
            "value"
        } else {
            self.backend.sql().null_bytes
        };
        let text = format!(
            "SELECT revision, sub, deleted, name, {value}, create_revision, version, lease \
             FROM etcdsql_history WHERE revision > ? AND revision <= ? ORDER BY revision, sub"
        );
        while after < upto {
            let to = upto.min(after + HASH_WINDOW);
            let rows = self
                .backend
                .fetch(
                    &self
                        .backend
                        .statement(&text, &[Param::Int(after), Param::Int(to)]),
                )
                .await?;
            for r in rows.iter() {
                f(HistoryRow {
                    revision: r.int(0)?,
                    sub: i32::try_from(r.int(1)?).unwrap_or_default(),
                    deleted: r.int(2)? != 0,
                    key: r.bytes(3)?.unwrap_or_default(),
                    value: r.bytes(4)?.unwrap_or_default(),
                    create_revision: r.int(5)?,
                    version: r.int(6)?,
                    lease: r.int(7)?,
                    prev_revision: 0,
                    index: None,
                });
            }
            after = to;
        }
        Ok(())
    }

    /// Grants a lease; `id` 0 lets the store choose. Returns (id, revision).
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<(i64, i64), Error> {
        self.alarms.check_space(alarms::LEASE_COST).await?;
        self.committer
            .submit(LeaseGrant {
                id,
                ttl,
                now_ms: now_ms(),
            })
            .await
    }

    /// Deletes the lease and its keys (one revision). Returns the revision.
    pub async fn lease_revoke(&self, id: i64) -> Result<i64, Error> {
        self.alarms.check_corrupt()?;
        self.committer.submit(LeaseRevoke(id)).await
    }

    /// Restarts a lease's TTL. Returns (ttl, revision).
    pub async fn lease_renew(&self, id: i64) -> Result<(i64, i64), Error> {
        self.committer
            .submit(LeaseRenew {
                id,
                now_ms: now_ms(),
            })
            .await
    }

    pub async fn lease(&self, id: i64) -> Result<Option<LeaseRow>, Error> {
        Ok(self.backend.lease(id).await?)
    }

    pub async fn leases(&self) -> Result<Vec<LeaseRow>, Error> {
        Ok(self.backend.leases().await?)
    }

    pub async fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, Error> {
        Ok(self.backend.lease_keys(id).await?)
    }

    pub async fn meta(&self) -> Result<Meta, Error> {
        Ok(self.backend.meta().await?)
    }

    /// etcd's /health: no raised alarm but those `excluded` (by name, as
    /// `NOSPACE`), and the revision row read from the database within a
    /// second (etcd's check is a quorum read).
    pub async fn healthy(&self, excluded: &[String]) -> bool {
        if self
            .alarms
            .raised_names()
            .iter()
            .any(|a| !excluded.iter().any(|e| e.as_str() == a.as_ref()))
        {
            return false;
        }
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.backend.meta()).await,
            Ok(Ok(_))
        )
    }
}

/// Revokes expired leases. Every process runs this; the revocation checks
/// the expiry again under the revision lock, so each lease expires once.
/// After a look that failed (the database could not be reached), and
/// where the database runs again since leases were promoted (`promoted`,
/// checked in each expiry's transaction), leases are promoted
/// ([`promote_leases`]) before any is expired. The server promotes them
/// once before it serves.
async fn expire_leases(store: std::sync::Weak<Store>, mut promoted: Option<i64>) {
    let mut promote = false;
    loop {
        tokio::time::sleep(LEASE_EXPIRY_INTERVAL).await;
        let Some(store) = store.upgrade() else { return };
        if promote {
            match promote_leases(store.backend.as_ref()).await {
                Ok(incarnation) => promoted = incarnation,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot promote leases");
                    continue;
                }
            }
            promote = false;
        }
        let now = now_ms();
        let expired = match store.backend.expired_leases(now, 256).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::debug!(error = %e, "cannot look for expired leases");
                promote = true;
                continue;
            }
        };
        for id in expired {
            let expire = LeaseExpire {
                id,
                now_ms: now,
                incarnation: promoted,
            };
            match store.committer.submit(expire).await {
                Ok(Expiry::Revoked(revision)) => {
                    tracing::debug!(lease = id, revision, "lease expired");
                }
                Ok(Expiry::Kept) => {}
                Ok(Expiry::Restarted) => {
                    tracing::info!("the database has restarted since leases were promoted");
                    promote = true;
                    break;
                }
                Err(e) => tracing::warn!(lease = id, error = %e, "expiring a lease failed"),
            }
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A read-only Txn's view: every read at one revision.
struct ReadView<'a> {
    backend: &'a dyn Backend,
    meta: Meta,
}

#[async_trait]
impl View for ReadView<'_> {
    fn meta(&self) -> Meta {
        self.meta
    }

    fn changed(&self) -> bool {
        false
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        let q = RangeQuery::all(key.to_vec(), KeyEnd::Single, None);
        Ok(self.range(&q).await?.kvs.pop())
    }

    async fn range(&mut self, q: &RangeQuery) -> Result<RangeRows, Error> {
        let mut q = q.clone();
        let at = *q.at.get_or_insert(self.meta.revision);
        let rows = self.backend.range(&q).await?;
        // A compaction past our revision may have purged what we read.
        if rows.meta.is_some_and(|m| at < m.compact_revision) {
            return Err(Error::Compacted);
        }
        Ok(rows)
    }

    async fn lease_exists(&mut self, id: i64) -> Result<bool, Error> {
        Ok(self.backend.lease(id).await?.is_some())
    }

    async fn put(&mut self, _: KeyValue, _: i64) -> Result<(), Error> {
        Err(Error::Internal("put in a read-only txn".into()))
    }

    async fn delete(&mut self, _: &KeyValue) -> Result<(), Error> {
        Err(Error::Internal("delete in a read-only txn".into()))
    }
}
