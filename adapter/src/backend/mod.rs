//! Database access. The store above speaks only the [`Backend`] and
//! [`Writer`] traits; each dialect (SQLite, PostgreSQL, MySQL) implements them
//! in its own module, and [`sql`] holds the statements they share.
//!
//! The tables (see `schema/sql/*/0001_init.sql`):
//! - `etcdsql_meta`: one row with the current and compacted revision; the
//!   write transaction locks it first, which serialises writers across every
//!   etcdsql process and makes revisions gapless and commit-ordered;
//! - `etcdsql_live`: one row per existing key (the latest version);
//! - `etcdsql_history`: one row per change (revision, sub-index), with the
//!   revision of the version it replaced, for past reads, watch and compaction;
//! - `etcdsql_lease`: granted leases.

pub mod epochs;
pub mod mysql;
pub mod partitioning;
pub mod postgres;
pub mod sql;
pub mod sqlite;

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use etcdsql_partitions::{Registry, State};

use crate::proto::mvccpb::KeyValue;

/// Which database a backend talks to (the schema crate's name for it):
/// for logs and the migrations. What differs by database is a method of
/// [`Backend`] or a field of [`sql::Dialect`], implemented in that
/// database's module, never a test of this value in shared code.
pub use etcdsql_schema::Dialect as Kind;

/// One native partition, as `etcdsql partitions list` shows it.
#[derive(Clone, Debug)]
pub struct PartitionInfo {
    pub table: String,
    pub name: String,
    pub holds: Holds,
    pub rows: i64,
    pub bytes: i64,
}

/// What a partition holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holds {
    /// A resource's rows (its `part`; empty: the default partition).
    Part(String),
    /// History rows of an epoch.
    Epoch(i64),
}

/// What the store needs to tell database failures apart.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DbError {
    /// Serialization failure, deadlock, lock timeout, Galera certification
    /// failure, busy database: the whole transaction can be run again.
    #[error("transient database conflict: {0}")]
    Retry(String),
    /// The database cannot be reached or the connection broke.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused the data itself (for example a key longer than
    /// the dialect's key column).
    #[error("{0}")]
    Rejected(String),
    /// Anything else: a bug or a schema problem.
    #[error("database error: {0}")]
    Other(String),
}

/// The revision counter row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub revision: i64,
    /// Reads below this revision fail with "compacted"; -1 until the first
    /// compaction (as etcd), so that Compact(0) is accepted once.
    pub compact_revision: i64,
}

/// Which keys a range covers; `end` follows etcd's range_end conventions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyEnd {
    /// Exactly `key`.
    Single,
    /// `[key, end)`.
    Before(Vec<u8>),
    /// Every key `>= key` (range_end "\0").
    Unbounded,
}

impl KeyEnd {
    /// etcd's interpretation of a request's `range_end`.
    pub fn from_range_end(range_end: &[u8]) -> Self {
        match range_end {
            [] => KeyEnd::Single,
            [0] => KeyEnd::Unbounded,
            end => KeyEnd::Before(end.to_vec()),
        }
    }

    pub fn contains(&self, start: &[u8], key: &[u8]) -> bool {
        match self {
            KeyEnd::Single => key == start,
            KeyEnd::Before(end) => key >= start && key < end.as_slice(),
            KeyEnd::Unbounded => key >= start,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortTarget {
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// One Range, already validated, in the terms SQL needs.
#[derive(Clone, Debug)]
pub struct RangeQuery {
    pub key: Vec<u8>,
    pub end: KeyEnd,
    /// `None` reads the latest state; `Some(r)` the state as of revision r.
    pub at: Option<i64>,
    /// Rows to fetch (0 = all). The caller asks for one more than the
    /// client's limit to learn `more`.
    pub fetch_limit: i64,
    pub sort: SortTarget,
    pub descending: bool,
    pub keys_only: bool,
    pub count_only: bool,
    /// Whether to count the range (`count` is 0 otherwise).
    pub count: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
    /// Only objects matching this (see [`crate::selector`]).
    pub selector: Option<Arc<crate::selector::Selector>>,
}

impl RangeQuery {
    /// The latest version of every key in `[key, end)`, in key order.
    pub fn all(key: Vec<u8>, end: KeyEnd, at: Option<i64>) -> Self {
        RangeQuery {
            key,
            end,
            at,
            fetch_limit: 0,
            sort: SortTarget::Key,
            descending: false,
            keys_only: false,
            count_only: false,
            count: true,
            min_mod_revision: 0,
            max_mod_revision: 0,
            min_create_revision: 0,
            max_create_revision: 0,
            selector: None,
        }
    }
}

/// A range's answer, read in one snapshot.
#[derive(Clone, Debug, Default)]
pub struct RangeRows {
    pub meta: Option<Meta>,
    /// Keys in the range at the read revision, before min/max filters.
    pub count: i64,
    pub kvs: Vec<KeyValue>,
}

/// Column access the shared row decoders need; each driver implements it
/// for its row type.
pub trait Columns {
    fn int(&self, i: usize) -> Result<i64, DbError>;
    /// A bytes column that may be NULL.
    fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, DbError>;
    /// An integer column that may be NULL.
    fn int_opt(&self, i: usize) -> Result<Option<i64>, DbError>;
}

/// Rows of one statement, whatever the driver.
pub type Rows = Vec<Box<dyn Columns + Send + Sync>>;

/// A driver's rows as [`Rows`].
pub(crate) fn boxed<R: Columns + Send + Sync + 'static>(rows: Vec<R>) -> Rows {
    rows.into_iter()
        .map(|r| Box::new(r) as Box<dyn Columns + Send + Sync>)
        .collect()
}

impl Columns for Box<dyn Columns + Send + Sync> {
    fn int(&self, i: usize) -> Result<i64, DbError> {
        (**self).int(i)
    }

    fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, DbError> {
        (**self).bytes(i)
    }

    fn int_opt(&self, i: usize) -> Result<Option<i64>, DbError> {
        (**self).int_opt(i)
    }
}

/// One change, as a watcher sees it.
#[derive(Clone, Debug)]
pub struct EventRow {
    pub revision: i64,
    pub deleted: bool,
    /// For a delete: only the key and the deletion's revision, as etcd sends.
    pub kv: KeyValue,
    /// The version this change replaced; `None` for a create.
    pub prev: Option<KeyValue>,
}

impl EventRow {
    /// Approximate memory held, for the watch buffer's bound.
    pub fn size(&self) -> usize {
        64 + self.kv.key.len()
            + self.kv.value.len()
            + self
                .prev
                .as_ref()
                .map_or(0, |p| p.key.len() + p.value.len() + 48)
    }
}

/// Rows of [`sql::history`].
pub(crate) fn decode_events<R: Columns>(rows: &[R]) -> Result<Vec<EventRow>, DbError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let revision = r.int(0)?;
        let deleted = r.int(2)? != 0;
        let key = r.bytes(3)?.unwrap_or_default();
        let prev = match r.int_opt(12)? {
            Some(prev_rev) => Some(KeyValue {
                key: key.clone(),
                value: r.bytes(8)?.unwrap_or_default(),
                create_revision: r.int(9)?,
                mod_revision: prev_rev,
                version: r.int(10)?,
                lease: r.int(11)?,
            }),
            None => None,
        };
        let kv = if deleted {
            KeyValue {
                key,
                mod_revision: revision,
                ..Default::default()
            }
        } else {
            KeyValue {
                key,
                value: r.bytes(4)?.unwrap_or_default(),
                create_revision: r.int(5)?,
                mod_revision: revision,
                version: r.int(6)?,
                lease: r.int(7)?,
            }
        };
        out.push(EventRow {
            revision,
            deleted,
            kv,
            prev,
        });
    }
    Ok(out)
}

/// A key's version from columns `at..at + 6` (name, value, create_revision,
/// mod_revision, version, lease); `None` when the name is NULL.
pub(crate) fn decode_kv(r: &impl Columns, at: usize) -> Result<Option<KeyValue>, DbError> {
    let Some(key) = r.bytes(at)? else {
        return Ok(None);
    };
    Ok(Some(KeyValue {
        key,
        value: r.bytes(at + 1)?.unwrap_or_default(),
        create_revision: r.int(at + 2)?,
        mod_revision: r.int(at + 3)?,
        version: r.int(at + 4)?,
        lease: r.int(at + 5)?,
    }))
}

/// Folds the rows of the range statement (see [`sql::range`]) into one answer.
pub(crate) fn decode_range<R: Columns>(rows: &[R]) -> Result<RangeRows, DbError> {
    let mut out = RangeRows::default();
    for r in rows {
        out.meta = Some(Meta {
            revision: r.int(0)?,
            compact_revision: r.int(1)?,
        });
        out.count = r.int(2)?;
        out.kvs.extend(decode_kv(r, 3)?);
    }
    Ok(out)
}

/// Columns id, ttl, expires_at_ms.
pub(crate) fn decode_lease(r: &impl Columns) -> Result<LeaseRow, DbError> {
    Ok(LeaseRow {
        id: r.int(0)?,
        ttl: r.int(1)?,
        expires_at_ms: r.int(2)?,
    })
}

/// Columns revision, compact_revision.
pub(crate) fn decode_meta(rows: &[impl Columns]) -> Result<Meta, DbError> {
    let r = rows
        .first()
        .ok_or_else(|| DbError::Other("etcdsql_meta has no row".into()))?;
    Ok(Meta {
        revision: r.int(0)?,
        compact_revision: r.int(1)?,
    })
}

/// Pgpool-II sends a statement that starts with a comment to the primary.
pub(crate) const NO_LOAD_BALANCE: &str = "/*NO LOAD BALANCE*/ ";

/// The primary behind a proxy tier: every read through
/// [`Backend::fetch_primary`], everything else as the wrapped backend.
pub struct Primary(pub Arc<dyn Backend>);

#[async_trait]
impl Backend for Primary {
    fn kind(&self) -> Kind {
        self.0.kind()
    }

    fn max_key_bytes(&self) -> Option<usize> {
        self.0.max_key_bytes()
    }

    fn sql(&self) -> sql::Dialect {
        self.0.sql()
    }

    async fn fetch(&self, s: &sql::Statement) -> Result<Rows, DbError> {
        self.0.fetch_primary(s).await
    }

    async fn writer(&self) -> Result<Box<dyn Writer>, DbError> {
        self.0.writer().await
    }

    async fn purge_history(&self, from: i64, to: i64) -> Result<u64, DbError> {
        self.0.purge_history(from, to).await
    }

    async fn db_size(&self) -> Result<i64, DbError> {
        self.0.db_size().await
    }

    fn partitions(&self) -> Option<&Partitions> {
        self.0.partitions()
    }

    async fn batch(&self, text: &str) -> Result<(), DbError> {
        self.0.batch(text).await
    }

    async fn execute(&self, s: &sql::Statement) -> Result<u64, DbError> {
        self.0.execute(s).await
    }

    fn poll_interval(&self) -> std::time::Duration {
        self.0.poll_interval()
    }

    fn subscribe(&self, wake: Arc<tokio::sync::Notify>) -> Option<tokio::task::JoinHandle<()>> {
        self.0.subscribe(wake)
    }

    async fn create_epoch_partition(&self, epoch: i64) -> Result<(), DbError> {
        self.0.create_epoch_partition(epoch).await
    }

    fn epoch_ddl(&self, epoch: i64, parts: &[String]) -> Vec<String> {
        self.0.epoch_ddl(epoch, parts)
    }

    async fn drop_epoch_partition(&self, epoch: i64) -> Result<(), DbError> {
        self.0.drop_epoch_partition(epoch).await
    }

    async fn create_resource_partitions(&self, part: &str) -> Result<(), DbError> {
        self.0.create_resource_partitions(part).await
    }

    fn resource_ddl(&self, part: &str, epochs: &[i64]) -> Vec<String> {
        self.0.resource_ddl(part, epochs)
    }

    async fn partition_list(&self) -> Result<Vec<PartitionInfo>, DbError> {
        self.0.partition_list().await
    }
}

/// The first column of every row.
pub fn first_ints(rows: &[impl Columns]) -> Result<Vec<i64>, DbError> {
    rows.iter().map(|r| r.int(0)).collect()
}

/// The first column of every row, as bytes (NULLs skipped).
pub(crate) fn first_bytes(rows: &[impl Columns]) -> Result<Vec<Vec<u8>>, DbError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.extend(r.bytes(0)?);
    }
    Ok(out)
}

/// Revision windows `(lo, hi]` covering `(from, to]`, so that a purge
/// deletes in bounded chunks instead of one huge statement.
pub fn purge_windows(from: i64, to: i64) -> impl Iterator<Item = (i64, i64)> {
    const WINDOW: i64 = 10_000;
    let mut lo = from.max(0);
    std::iter::from_fn(move || {
        (lo < to).then(|| {
            let hi = (lo + WINDOW).min(to);
            let w = (lo, hi);
            lo = hi;
            w
        })
    })
}

/// One row of `etcdsql_history`.
#[derive(Clone, Debug)]
pub struct HistoryRow {
    pub revision: i64,
    /// Position of the change within its revision (a Txn changes several keys).
    pub sub: i32,
    pub key: Vec<u8>,
    /// Empty for deletes.
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub deleted: bool,
    /// Revision of the version this change replaced; 0 for a create.
    pub prev_revision: i64,
    /// A put's selector columns; `None` for deletes and values that are
    /// not readable Kubernetes objects (stored as NULL).
    pub index: Option<Arc<Indexed>>,
}

/// The `labels` and `fields` columns of a stored version: JSON objects of
/// strings (see [`crate::selector`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indexed {
    pub labels: String,
    pub fields: String,
    /// Rows of `etcdsql_label` (see [`crate::selector::hash`]).
    pub hashes: Vec<i64>,
}

impl Indexed {
    /// The columns of a value as `catalog` reads it; `None` when it is not
    /// a readable Kubernetes object.
    pub fn of(
        catalog: &crate::selector::Catalog,
        key: &[u8],
        value: &[u8],
    ) -> Option<Arc<Indexed>> {
        catalog.extract(key, value).map(|o| {
            let (labels, fields) = o.to_columns();
            Arc::new(Indexed {
                labels,
                fields,
                hashes: crate::selector::hash::of(Some(&o)),
            })
        })
    }
}

/// A live row to write, with its selector columns.
#[derive(Debug)]
pub struct Upsert {
    pub kv: KeyValue,
    pub index: Option<Arc<Indexed>>,
}

impl std::ops::Deref for Upsert {
    type Target = KeyValue;

    fn deref(&self) -> &KeyValue {
        &self.kv
    }
}

/// A row to write with selector columns (live or history): what the
/// dialects bind for them.
pub trait Selectable {
    fn index(&self) -> Option<&Indexed>;

    /// The `labels` column (NULL when `None`).
    fn labels(&self) -> Option<&str> {
        self.index().map(|i| i.labels.as_str())
    }

    /// The `fields` column (NULL when `None`).
    fn fields(&self) -> Option<&str> {
        self.index().map(|i| i.fields.as_str())
    }

    /// Its rows of `etcdsql_label`.
    fn hashes(&self) -> &[i64] {
        const OPAQUE: &[i64] = &[crate::selector::hash::OPAQUE];
        self.index().map_or(OPAQUE, |i| i.hashes.as_slice())
    }
}

impl Selectable for Upsert {
    fn index(&self) -> Option<&Indexed> {
        self.index.as_deref()
    }
}

impl Selectable for HistoryRow {
    fn index(&self) -> Option<&Indexed> {
        self.index.as_deref()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub id: i64,
    pub ttl: i64,
    /// Unix milliseconds at which the lease expires.
    pub expires_at_ms: i64,
}

/// Writes buffered by a batch, applied to the database in bulk.
#[derive(Debug, Default)]
pub struct Flush {
    pub upserts: Vec<Upsert>,
    pub deletes: Vec<Vec<u8>>,
    pub history: Vec<HistoryRow>,
    pub lease_upserts: Vec<LeaseRow>,
    pub lease_deletes: Vec<i64>,
    /// The batch's nonce, stored in `etcdsql_history.batch`.
    pub batch: i64,
}

impl Flush {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty()
            && self.deletes.is_empty()
            && self.history.is_empty()
            && self.lease_upserts.is_empty()
            && self.lease_deletes.is_empty()
    }
}

/// The partition registry as this process last read it, shared by the
/// read pool and the committer. Every statement that limits itself to some
/// partitions checks the `partitions_version` its snapshot saw against the
/// one the registry was read at, and reads again after a reload if they
/// differ; the committer reloads under the revision-row lock.
#[derive(Default)]
pub struct Partitions(RwLock<Arc<Registry>>);

impl Partitions {
    pub fn get(&self) -> Arc<Registry> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, r: Registry) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(r);
    }
}

/// Reads `etcdsql_partition` with the version, in one snapshot.
pub const REGISTRY_SQL: &str = "SELECT m.partitions_version, p.resource, p.part, p.state \
    FROM etcdsql_meta m LEFT JOIN etcdsql_partition p ON 1 = 1 WHERE m.id = 1";

/// The write transaction's first statement (PostgreSQL, MySQL): locks the
/// revision row and reads what the transaction's writes depend on.
pub(crate) const LOCK_META: &str = "SELECT revision, compact_revision, partitions_version, epoch \
    FROM etcdsql_meta WHERE id = 1 FOR UPDATE";

/// Rows of [`LOCK_META`].
pub(crate) struct Locked {
    pub meta: Meta,
    /// History rows of the transaction belong to this epoch.
    pub epoch: i64,
    /// The registry is older than the locked row says: reload it inside
    /// the transaction, before writing.
    pub stale: bool,
}

pub(crate) fn decode_locked(rows: &[impl Columns], p: &Partitions) -> Result<Locked, DbError> {
    let meta = decode_meta(rows)?;
    let r = &rows[0];
    Ok(Locked {
        meta,
        epoch: r.int(3)?,
        stale: r.int(2)? != p.get().version,
    })
}

/// Rows of [`REGISTRY_SQL`].
pub(crate) fn decode_registry(rows: &[impl Columns]) -> Result<Registry, DbError> {
    let mut reg = Registry::default();
    for r in rows {
        reg.version = r.int(0)?;
        if let (Some(resource), Some(part)) = (r.bytes(1)?, r.bytes(2)?) {
            let text = |b: Vec<u8>| {
                String::from_utf8(b).map_err(|e| DbError::Other(format!("etcdsql_partition: {e}")))
            };
            reg.resources
                .insert(text(resource)?, (text(part)?, State::from_code(r.int(3)?)));
        }
    }
    Ok(reg)
}

/// etcd's range end as `parts_for` takes it.
fn end_bytes(end: &KeyEnd) -> Option<&[u8]> {
    match end {
        KeyEnd::Single => None,
        KeyEnd::Before(e) => Some(e),
        KeyEnd::Unbounded => Some(&[]),
    }
}

/// The parts a range may read, by `reg`.
pub fn parts_of(reg: &Registry, q_key: &[u8], end: &KeyEnd) -> Option<Vec<String>> {
    reg.parts_for(q_key, end_bytes(end))
}

/// The read side: statements outside any transaction, each one snapshot.
#[async_trait]
pub trait Backend: Send + Sync {
    fn kind(&self) -> Kind;

    /// The longest key the schema stores, where the dialect has a limit.
    fn max_key_bytes(&self) -> Option<usize> {
        None
    }

    /// The dialect's spelling of shared statements.
    fn sql(&self) -> sql::Dialect;

    /// Runs one read statement on the pool.
    async fn fetch(&self, s: &sql::Statement) -> Result<Rows, DbError>;

    /// Runs one read statement where a proxy tier (Pgpool-II, pgcat,
    /// ProxySQL) sends it to the primary: inside a transaction, behind a
    /// `/*NO LOAD BALANCE*/` comment.
    async fn fetch_primary(&self, s: &sql::Statement) -> Result<Rows, DbError> {
        self.fetch(s).await
    }

    /// A connection for the committer, which owns it.
    async fn writer(&self) -> Result<Box<dyn Writer>, DbError>;

    /// Deletes history rows that no read at or above `to` needs, for
    /// revisions in `(from, to]`. Idempotent. Returns rows deleted.
    async fn purge_history(&self, from: i64, to: i64) -> Result<u64, DbError>;

    /// Bytes the etcdsql tables take on disk.
    async fn db_size(&self) -> Result<i64, DbError>;

    /// The partition registry, where the dialect has partitions.
    fn partitions(&self) -> Option<&Partitions> {
        None
    }

    /// Runs DDL outside any transaction (partition maintenance).
    async fn batch(&self, text: &str) -> Result<(), DbError> {
        Err(DbError::Other(format!("not supported here: {text}")))
    }

    /// One write statement outside any transaction (maintenance); returns
    /// rows affected.
    async fn execute(&self, s: &sql::Statement) -> Result<u64, DbError> {
        Err(DbError::Other(format!("not supported here: {}", s.text)))
    }

    /// Reads the registry again.
    async fn reload_partitions(&self) -> Result<(), DbError> {
        if let Some(p) = self.partitions() {
            let rows = self.fetch(&self.statement(REGISTRY_SQL, &[])).await?;
            p.set(decode_registry(&rows)?);
        }
        Ok(())
    }

    /// One range statement; `meta` in the answer is read in the same
    /// snapshot. Reads only the partitions that can hold the range.
    async fn range(&self, q: &RangeQuery) -> Result<RangeRows, DbError> {
        let Some(p) = self.partitions() else {
            return decode_range(&self.fetch(&sql::range(self.sql(), q, None)).await?);
        };
        loop {
            let reg = p.get();
            let parts = parts_of(&reg, &q.key, &q.end);
            let rows = self
                .fetch(&sql::range(self.sql(), q, parts.as_deref()))
                .await?;
            let seen = match rows.first() {
                Some(r) => r.int(9)?,
                None => reg.version,
            };
            if seen != reg.version {
                self.reload_partitions().await?;
                if parts.is_some() {
                    continue;
                }
            }
            return decode_range(&rows);
        }
    }

    /// The revision row, outside any transaction.
    async fn meta(&self) -> Result<Meta, DbError> {
        let s = self.statement(
            "SELECT revision, compact_revision FROM etcdsql_meta WHERE id = 1",
            &[],
        );
        decode_meta(&self.fetch(&s).await?)
    }

    /// The cluster id chosen when the schema was created.
    async fn cluster_id(&self) -> Result<i64, DbError> {
        let s = self.statement("SELECT cluster_id FROM etcdsql_meta WHERE id = 1", &[]);
        first_ints(&self.fetch(&s).await?).map(|ids| ids.first().copied().unwrap_or_default())
    }

    async fn lease(&self, id: i64) -> Result<Option<LeaseRow>, DbError> {
        let s = self.statement(
            "SELECT id, ttl, expires_at_ms FROM etcdsql_lease WHERE id = ?",
            &[sql::Param::Int(id)],
        );
        self.fetch(&s).await?.first().map(decode_lease).transpose()
    }

    async fn leases(&self) -> Result<Vec<LeaseRow>, DbError> {
        let s = self.statement(
            "SELECT id, ttl, expires_at_ms FROM etcdsql_lease ORDER BY id",
            &[],
        );
        self.fetch(&s).await?.iter().map(decode_lease).collect()
    }

    /// Leases whose expiry is at or before `now_ms`.
    async fn expired_leases(&self, now_ms: i64, limit: i64) -> Result<Vec<i64>, DbError> {
        let s = self.statement(
            "SELECT id FROM etcdsql_lease WHERE expires_at_ms <= ? ORDER BY expires_at_ms LIMIT ?",
            &[sql::Param::Int(now_ms), sql::Param::Int(limit)],
        );
        first_ints(&self.fetch(&s).await?)
    }

    /// Keys attached to a lease, latest state.
    async fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, DbError> {
        let s = self.statement(
            "SELECT name FROM etcdsql_live WHERE lease = ? ORDER BY name",
            &[sql::Param::Int(id)],
        );
        first_bytes(&self.fetch(&s).await?)
    }

    /// Changes in revisions `(after, upto]` (within a key range if given).
    async fn history(
        &self,
        after: i64,
        upto: i64,
        range: Option<(&[u8], &KeyEnd)>,
    ) -> Result<Vec<EventRow>, DbError> {
        let d = self.sql();
        let (Some(p), Some((key, end)), true) = (self.partitions(), range, d.history_parts) else {
            return decode_events(
                &self
                    .fetch(&sql::history(d, after, upto, range, None))
                    .await?,
            );
        };
        loop {
            let reg = p.get();
            let parts = parts_of(&reg, key, end);
            let rows = self
                .fetch(&sql::history(d, after, upto, range, parts.as_deref()))
                .await?;
            if parts.is_none() {
                return decode_events(&rows);
            }
            // Versions only grow: unchanged after the read means unchanged in it.
            let version = self
                .fetch(&self.statement(
                    "SELECT partitions_version FROM etcdsql_meta WHERE id = 1",
                    &[],
                ))
                .await?;
            if first_ints(&version)?.first() == Some(&reg.version) {
                return decode_events(&rows);
            }
            self.reload_partitions().await?;
        }
    }

    /// `text` with each `?` bound to the next of `params`, in this
    /// dialect's placeholder spelling.
    fn statement(&self, text: &str, params: &[sql::Param]) -> sql::Statement {
        sql::Statement::with_params(self.sql(), text, params)
    }

    /// How often the watch hub looks for commits by other processes when
    /// nothing wakes it.
    fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(20)
    }

    /// Starts a task that calls `wake` whenever any process commits, where
    /// the database can push that (PostgreSQL LISTEN/NOTIFY).
    fn subscribe(
        &self,
        _wake: std::sync::Arc<tokio::sync::Notify>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        None
    }

    // Native partitions. The defaults are for a database without them
    // (SQLite), whose `partitions()` is None, so that they are not called.

    /// Creates epoch `epoch`'s history partition before the transaction
    /// that starts the epoch, where DDL cannot run inside it (MySQL).
    async fn create_epoch_partition(&self, _epoch: i64) -> Result<(), DbError> {
        Ok(())
    }

    /// Statements that create epoch `epoch`'s partitions inside the
    /// transaction that starts it, given the resources' parts (PostgreSQL).
    fn epoch_ddl(&self, _epoch: i64, _parts: &[String]) -> Vec<String> {
        Vec::new()
    }

    /// Drops a compacted epoch's history partition(s), if present.
    async fn drop_epoch_partition(&self, _epoch: i64) -> Result<(), DbError> {
        Ok(())
    }

    /// Creates a resource's (empty) live and history partitions, outside
    /// any transaction; existing ones are kept.
    async fn create_resource_partitions(&self, _part: &str) -> Result<(), DbError> {
        Err(DbError::Other(
            "this database has no native partitions".into(),
        ))
    }

    /// Statements that make sure a resource has its partition in each of
    /// `epochs`, run under the revision-row lock (which a new epoch takes
    /// too) where history is partitioned by resource (PostgreSQL).
    fn resource_ddl(&self, _part: &str, _epochs: &[i64]) -> Vec<String> {
        Vec::new()
    }

    /// The native partitions with their rows and bytes.
    async fn partition_list(&self) -> Result<Vec<PartitionInfo>, DbError> {
        Ok(Vec::new())
    }
}

/// One write transaction at a time on a dedicated connection.
#[async_trait]
pub trait Writer: Send {
    /// Starts a transaction and locks the revision row.
    async fn begin(&mut self) -> Result<Meta, DbError>;

    /// Latest versions of these keys (missing keys are absent).
    async fn get(&mut self, keys: &[Vec<u8>]) -> Result<Vec<KeyValue>, DbError>;

    /// A range inside the transaction; sees what was flushed before.
    async fn range(&mut self, q: &RangeQuery) -> Result<RangeRows, DbError>;

    /// Which of these lease ids exist.
    async fn leases_exist(&mut self, ids: &[i64]) -> Result<Vec<i64>, DbError>;

    /// Keys attached to a lease (sees what was flushed before).
    async fn lease_keys(&mut self, id: i64) -> Result<Vec<Vec<u8>>, DbError>;

    /// A lease's row, if it exists.
    async fn lease_row(&mut self, id: i64) -> Result<Option<LeaseRow>, DbError>;

    async fn flush(&mut self, f: &Flush) -> Result<(), DbError>;

    /// Stores `meta` and commits.
    async fn commit(&mut self, meta: Meta) -> Result<(), DbError>;

    /// Best effort; a connection that cannot roll back is dropped and
    /// reopened by the next `begin`.
    async fn rollback(&mut self);

    /// One statement inside the transaction (partition maintenance);
    /// returns rows affected.
    async fn execute(&mut self, s: &sql::Statement) -> Result<u64, DbError> {
        Err(DbError::Other(format!("not supported here: {}", s.text)))
    }

    /// One query inside the transaction (maintenance).
    async fn rows(&mut self, s: &sql::Statement) -> Result<Rows, DbError> {
        Err(DbError::Other(format!("not supported here: {}", s.text)))
    }
}

/// Which database a DSN names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dsn {
    Sqlite(std::path::PathBuf),
    Postgres(String),
    Mysql(String),
}

impl Dsn {
    /// `sqlite:///path` (or `sqlite:path`), `postgres://…`/`postgresql://…`,
    /// `mysql://…`/`mariadb://…`.
    pub fn parse(dsn: &str) -> Result<Dsn, String> {
        let (scheme, rest) = dsn.split_once(':').ok_or_else(|| {
            format!("endpoint {dsn:?} has no scheme (sqlite:, postgres:, mysql:)")
        })?;
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                let path = path.split('?').next().unwrap_or(path);
                if path.is_empty() {
                    return Err("sqlite endpoint has no file path".into());
                }
                Ok(Dsn::Sqlite(path.into()))
            }
            "postgres" | "postgresql" => Ok(Dsn::Postgres(dsn.to_string())),
            "mysql" | "mariadb" => Ok(Dsn::Mysql(format!("mysql:{rest}"))),
            other => Err(format!(
                "endpoint scheme {other:?} is not supported (sqlite, postgres, postgresql, mysql, mariadb)"
            )),
        }
    }
}

impl Dsn {
    /// What `--endpoint` names, or without it the embedded SQLite file
    /// under `--data-dir`.
    pub fn from_flags(endpoint: Option<&str>, data_dir: &std::path::Path) -> Result<Dsn, String> {
        match endpoint {
            Some(e) => Dsn::parse(e),
            None => Ok(Dsn::Sqlite(data_dir.join("etcdsql.db"))),
        }
    }

    /// The schema crate's dialect and endpoint for this DSN.
    pub fn schema(&self) -> (Kind, String) {
        match self {
            Dsn::Sqlite(path) => (Kind::Sqlite, format!("sqlite://{}", path.display())),
            Dsn::Postgres(url) => (Kind::Postgres, url.clone()),
            Dsn::Mysql(url) => (Kind::Mysql, url.clone()),
        }
    }

    /// The DSN for messages: a password is replaced by `***`.
    pub fn redacted(&self) -> String {
        let text = self.schema().1;
        match url::Url::parse(&text) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            _ => text,
        }
    }
}

/// Connects to a database whose schema is current (see `server::open_backend`).
pub async fn open(dsn: &Dsn) -> Result<Arc<dyn Backend>, DbError> {
    Ok(match dsn {
        Dsn::Sqlite(path) => Arc::new(sqlite::SqliteBackend::open(path).await?),
        Dsn::Postgres(url) => Arc::new(postgres::Postgres::open(url).await?),
        Dsn::Mysql(url) => Arc::new(mysql::Mysql::open(url).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_schemes() {
        assert_eq!(
            Dsn::parse("sqlite:///var/lib/x.db").unwrap(),
            Dsn::Sqlite("/var/lib/x.db".into())
        );
        assert_eq!(
            Dsn::parse("sqlite:x.db").unwrap(),
            Dsn::Sqlite("x.db".into())
        );
        assert!(matches!(
            Dsn::parse("postgresql://u@h/db"),
            Ok(Dsn::Postgres(_))
        ));
        assert_eq!(
            Dsn::parse("mariadb://root@127.0.0.1/db").unwrap(),
            Dsn::Mysql("mysql://root@127.0.0.1/db".into())
        );
        assert!(
            Dsn::parse("redis://x")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(Dsn::parse("nothing").is_err());
    }

    #[test]
    fn purge_windows_cover_the_range_once() {
        let w: Vec<_> = purge_windows(5, 25_007).collect();
        assert_eq!(w, vec![(5, 10_005), (10_005, 20_005), (20_005, 25_007)]);
        assert_eq!(purge_windows(9, 9).count(), 0);
    }

    #[test]
    fn key_end_contains() {
        assert!(KeyEnd::Single.contains(b"a", b"a"));
        assert!(!KeyEnd::Single.contains(b"a", b"ab"));
        assert!(KeyEnd::Before(b"b".to_vec()).contains(b"a", b"az"));
        assert!(!KeyEnd::Before(b"b".to_vec()).contains(b"a", b"b"));
        assert!(KeyEnd::Unbounded.contains(b"a", b"zzz"));
        assert_eq!(KeyEnd::from_range_end(&[0]), KeyEnd::Unbounded);
    }
}
