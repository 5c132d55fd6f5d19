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
//!
//! # Layout
//! - one module per database: [`sqlite`], [`postgres`], [`mysql`] (MariaDB,
//!   Galera, TiDB): driver, error classification, bulk writes, partition
//!   DDL, the [`sql::Dialect`] spellings;
//! - shared: [`sql`] (statements), [`epochs`] (compaction by partition),
//!   [`partitioning`] (the partition engine);
//! - the model (`model`), column decoding (`decode`), errors (`error`), the
//!   partition registry and revision-row lock (`registry`), the proxy-tier
//!   wrapper (`primary`), the DSN (`dsn`); all re-exported here.

mod decode;
mod dsn;
pub mod epochs;
mod error;
mod model;
pub mod mysql;
pub mod partitioning;
pub mod postgres;
mod primary;
mod registry;
pub mod sql;
pub mod sqlite;

pub use decode::*;
pub use dsn::*;
pub use error::*;
pub use model::*;
pub use primary::*;
pub use registry::*;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use etcdsql_partitions::Registry;

use crate::proto::mvccpb::KeyValue;

/// Which database a backend talks to (the schema crate's name for it):
/// for logs and the migrations. What differs by database is a method of
/// [`Backend`] or a field of [`sql::Dialect`], implemented in that
/// database's module, never a test of this value in shared code.
pub use etcdsql_schema::Dialect as Kind;

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
    /// revisions in `(from, to]`, window by window: versions superseded by
    /// a change in the window, then the window's tombstones. Idempotent.
    /// Returns rows deleted.
    async fn purge_history(&self, from: i64, to: i64) -> Result<u64, DbError> {
        const TOMBSTONES: &str =
            "DELETE FROM etcdsql_history WHERE revision > ? AND revision <= ? AND deleted = 1";
        let mut deleted = 0;
        for (lo, hi) in purge_windows(from, to) {
            for text in [self.sql().purge_superseded, TOMBSTONES] {
                let window = [sql::Param::Int(lo), sql::Param::Int(hi)];
                deleted += self.execute(&self.statement(text, &window)).await?;
            }
        }
        Ok(deleted)
    }

    /// Bytes the etcdsql tables take on disk.
    async fn db_size(&self) -> Result<i64, DbError>;

    /// Refreshes the planner's statistics of tables that changed much since
    /// they were last analysed, where the database leaves that to a daemon
    /// that may come a minute later (a selector LIST right after a bulk
    /// load would be planned without them). Called every few seconds.
    async fn refresh_statistics(&self) -> Result<(), DbError> {
        Ok(())
    }

    /// Copies the write-ahead log into the database file, where the
    /// database would otherwise make the committing writer do it (SQLite's
    /// automatic checkpoint). Called in the background every few hundred
    /// milliseconds while the server runs.
    async fn checkpoint(&self) -> Result<(), DbError> {
        Ok(())
    }

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

    /// Returns once `revision`, which a read saw, cannot be taken back by a
    /// crash of the database. Reads call it before they answer. Nothing to
    /// do where a commit is durable before other sessions see it.
    async fn durable(&self, _revision: i64) -> Result<(), DbError> {
        Ok(())
    }

    /// Runs `s`, a range statement ([`sql::range`]), as [`Self::fetch`]
    /// does, and folds its rows. A driver may fold them as they are read.
    async fn fetch_range(&self, s: &sql::Statement) -> Result<RangeFold, DbError> {
        RangeFold::of(&self.fetch(s).await?)
    }

    /// One range statement; `meta` in the answer is read in the same
    /// snapshot. Reads only the partitions that can hold the range.
    async fn range(&self, q: &RangeQuery) -> Result<RangeRows, DbError> {
        let rows = match self.partitions() {
            None => self
                .fetch_range(&sql::range(self.sql(), q, None))
                .await?
                .finish(q),
            Some(p) => loop {
                let reg = p.get();
                let parts = parts_of(&reg, &q.key, &q.end);
                let fold = self
                    .fetch_range(&sql::range(self.sql(), q, parts.as_deref()))
                    .await?;
                if fold.parts_version.unwrap_or(reg.version) != reg.version {
                    self.reload_partitions().await?;
                    if parts.is_some() {
                        continue;
                    }
                }
                break fold.finish(q);
            },
        };
        self.durable(rows.meta.map_or(0, |m| m.revision)).await?;
        Ok(rows)
    }

    /// The latest version of each of the single `keys` (`None` where it
    /// does not exist), with the revision row it was read with: one
    /// statement, and one snapshot, per partition the keys fall in.
    async fn latest(&self, keys: &[Vec<u8>]) -> Result<Vec<(Meta, Option<KeyValue>)>, DbError> {
        let out = self.latest_unchecked(keys).await?;
        let seen = out.iter().map(|(m, _)| m.revision).max().unwrap_or(0);
        self.durable(seen).await?;
        Ok(out)
    }

    /// [`Self::latest`] without waiting for [`Self::durable`]: for what a
    /// write transaction checks again before it commits (read-ahead).
    async fn latest_unchecked(
        &self,
        keys: &[Vec<u8>],
    ) -> Result<Vec<(Meta, Option<KeyValue>)>, DbError> {
        'registry: loop {
            let reg = self.partitions().map(Partitions::get);
            let mut groups: BTreeMap<Option<Vec<String>>, Vec<usize>> = BTreeMap::new();
            for (i, k) in keys.iter().enumerate() {
                let parts = reg.as_ref().and_then(|r| parts_of(r, k, &KeyEnd::Single));
                groups.entry(parts).or_default().push(i);
            }
            let mut out = vec![None; keys.len()];
            for (parts, at) in &groups {
                let group: Vec<Vec<u8>> = at.iter().map(|&i| keys[i].clone()).collect();
                let fold = self
                    .fetch_range(&sql::latest(self.sql(), &group, parts.as_deref()))
                    .await?;
                if let Some(reg) = &reg
                    && fold.parts_version.unwrap_or(reg.version) != reg.version
                {
                    self.reload_partitions().await?;
                    continue 'registry;
                }
                for (&i, found) in at.iter().zip(latest_of(fold.into_rows(), &group)?) {
                    out[i] = Some(found);
                }
            }
            return Ok(out.into_iter().flatten().collect());
        }
    }

    /// The revision row, outside any transaction.
    async fn meta(&self) -> Result<Meta, DbError> {
        let s = self.statement(
            "SELECT revision, compact_revision FROM etcdsql_meta WHERE id = 1",
            &[],
        );
        let meta = decode_meta(&self.fetch(&s).await?)?;
        self.durable(meta.revision).await?;
        Ok(meta)
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

    /// Every lease, soonest expiry first, as etcd lists them.
    async fn leases(&self) -> Result<Vec<LeaseRow>, DbError> {
        let s = self.statement(
            "SELECT id, ttl, expires_at_ms FROM etcdsql_lease ORDER BY expires_at_ms, id",
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

    /// Gives every lease its TTL again from `from_ms`, where that is later
    /// than its expiry (etcd's `lessor.Promote`); returns the leases
    /// changed and the database's run it committed in
    /// ([`Writer::incarnation`]).
    async fn promote_leases(&self, from_ms: i64) -> Result<Promoted, DbError> {
        promote_by_update(self, from_ms).await
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
        let events = 'read: {
            let d = self.sql();
            let (Some(p), Some((key, end)), true) = (self.partitions(), range, d.history_parts)
            else {
                break 'read decode_events(
                    &self
                        .fetch(&sql::history(d, after, upto, range, None))
                        .await?,
                )?;
            };
            loop {
                let reg = p.get();
                let parts = parts_of(&reg, key, end);
                let rows = self
                    .fetch(&sql::history(d, after, upto, range, parts.as_deref()))
                    .await?;
                if parts.is_none() {
                    break 'read decode_events(&rows)?;
                }
                // Versions only grow: unchanged after the read means unchanged in it.
                let version = self
                    .fetch(&self.statement(
                        "SELECT partitions_version FROM etcdsql_meta WHERE id = 1",
                        &[],
                    ))
                    .await?;
                if first_ints(&version)?.first() == Some(&reg.version) {
                    break 'read decode_events(&rows)?;
                }
                self.reload_partitions().await?;
            }
        };
        self.durable(events.iter().map(|e| e.revision).max().unwrap_or(0))
            .await?;
        Ok(events)
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

    /// A task that calls `wake` whenever any process commits a revision
    /// past `known` (the hub's), where the database can push that
    /// (PostgreSQL LISTEN/NOTIFY); it runs until dropped. The caller spawns it.
    fn subscribe(
        &self,
        _wake: std::sync::Arc<tokio::sync::Notify>,
        _known: crate::watch::Known,
    ) -> Option<futures::future::BoxFuture<'static, ()>> {
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

/// A random number (a batch's nonce, a server's run).
pub fn random_i64() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    i64::from_ne_bytes(h.finish().to_ne_bytes())
}

/// [`Backend::promote_leases`] as one UPDATE, with no run recorded.
pub async fn promote_by_update<B: Backend + ?Sized>(
    b: &B,
    from_ms: i64,
) -> Result<Promoted, DbError> {
    let s = b.statement(
        "UPDATE etcdsql_lease SET expires_at_ms = ? + ttl * 1000 \
         WHERE expires_at_ms < ? + ttl * 1000",
        &[sql::Param::Int(from_ms), sql::Param::Int(from_ms)],
    );
    Ok(Promoted {
        leases: b.execute(&s).await?,
        incarnation: None,
    })
}

/// What [`Backend::promote_leases`] did.
#[derive(Debug, Clone, Copy)]
pub struct Promoted {
    /// Leases given a later expiry.
    pub leases: u64,
    /// The database's run it committed in ([`Writer::incarnation`]).
    pub incarnation: Option<i64>,
}

/// What [`Writer::begin_read`] found.
pub struct Began {
    pub meta: Meta,
    /// The keys' latest versions (missing keys are absent).
    pub kvs: Vec<KeyValue>,
    /// The rows of the leases that exist.
    pub leases: Vec<LeaseRow>,
}

/// One write transaction at a time on a dedicated connection.
#[async_trait]
pub trait Writer: Send {
    /// Starts a transaction and locks the revision row.
    async fn begin(&mut self) -> Result<Meta, DbError>;

    /// Whether the next transaction's COMMIT returns only once it is on
    /// disk (always, unless told otherwise before its BEGIN). A database
    /// that can relax that per transaction may, for `false`, return once
    /// the commit is written and would outlive this process, though not
    /// the machine.
    fn durable(&mut self, _durable: bool) {}

    /// The database server's run this transaction is in, where a commit
    /// that was not durable ([`durable`](Writer::durable)) can be lost
    /// while this process runs on (PostgreSQL: a token that a crash
    /// removes). A run other than the one leases were last promoted in
    /// ([`Backend::promote_leases`]) may have lost renewals. None where no
    /// commit is lost that way, or no run is recorded.
    async fn incarnation(&mut self) -> Result<Option<i64>, DbError> {
        Ok(None)
    }

    /// [`begin`](Writer::begin), then the latest versions of `keys` and
    /// the rows of `leases` that exist; a database may send them together.
    async fn begin_read(&mut self, keys: &[Vec<u8>], leases: &[i64]) -> Result<Began, DbError> {
        let meta = self.begin().await?;
        let kvs = if keys.is_empty() {
            Vec::new()
        } else {
            self.get(keys).await?
        };
        let leases = if leases.is_empty() {
            Vec::new()
        } else {
            self.leases(leases).await?
        };
        Ok(Began { meta, kvs, leases })
    }

    /// Whether [`begin_assuming`](Writer::begin_assuming) is supported.
    fn assumes(&self) -> bool {
        false
    }

    /// Whether [`check_assumed`](Writer::check_assumed) fails with
    /// [`DbError::Existed`] when the store is as assumed but a key taken as
    /// absent exists: then a batch may take a plain put's unknown key as
    /// absent, at the cost of one round trip where it is not.
    fn tells_existed(&self) -> bool {
        false
    }

    /// Starts a transaction like [`begin`](Writer::begin) without waiting
    /// for it: the batch is evaluated from what this writer's last commit
    /// left (`meta` and the keys it knows), and the database checks that
    /// with the writes (see [`check_assumed`](Writer::check_assumed)), all
    /// in one round trip at the commit.
    async fn begin_assuming(&mut self) -> Result<(), DbError> {
        Err(DbError::Other("begin_assuming is not supported".into()))
    }

    /// Queues the check, ahead of the writes: the store is still at `meta`
    /// (revision, compaction, partition registry, epoch), none of
    /// `absent` exists and every one of `leases` does as assumed. When it
    /// fails, the commit fails with [`DbError::Stale`] (or, where
    /// [`tells_existed`](Writer::tells_existed), [`DbError::Existed`] when
    /// only the absent keys failed it) and nothing is written.
    async fn check_assumed(
        &mut self,
        _meta: Meta,
        _absent: &[Vec<u8>],
        _leases: &AssumedLeases,
    ) -> Result<(), DbError> {
        Err(DbError::Other("check_assumed is not supported".into()))
    }

    /// Latest versions of these keys (missing keys are absent).
    async fn get(&mut self, keys: &[Vec<u8>]) -> Result<Vec<KeyValue>, DbError>;

    /// Replaces the `etcdsql_label` rows of `names` with `rows` (hash,
    /// name), where the dialect keeps that table.
    async fn replace_labels(
        &mut self,
        names: &[&Vec<u8>],
        rows: &[(i64, &Vec<u8>)],
    ) -> Result<(), DbError> {
        replace_labels(self, names, rows).await
    }

    /// A range inside the transaction; sees what was flushed before.
    async fn range(&mut self, q: &RangeQuery) -> Result<RangeRows, DbError>;

    /// The rows of these leases, where they exist.
    async fn leases(&mut self, ids: &[i64]) -> Result<Vec<LeaseRow>, DbError>;

    /// Keys attached to a lease (sees what was flushed before).
    async fn lease_keys(&mut self, id: i64) -> Result<Vec<Vec<u8>>, DbError>;

    /// A lease's row, if it exists.
    async fn lease_row(&mut self, id: i64) -> Result<Option<LeaseRow>, DbError> {
        Ok(self.leases(&[id]).await?.pop())
    }

    // A batch's changes become these statements, one kind each; [`flush`]
    // runs them in its order. Each database writes them its own way
    // (arrays, multi-row VALUES).

    /// The partition registry the transaction writes by (`begin` reloads
    /// it when stale); None without native partitions.
    fn registry(&self) -> Option<Arc<Registry>> {
        None
    }

    fn dialect(&self) -> sql::Dialect;

    /// Deletes live rows by name; with `default_only`, only those still in
    /// the default partition.
    async fn delete_live(&mut self, names: &[&Vec<u8>], default_only: bool) -> Result<(), DbError>;

    async fn upsert_live(&mut self, rows: &[Upsert]) -> Result<(), DbError>;

    async fn insert_history(&mut self, rows: &[HistoryRow], batch: i64) -> Result<(), DbError>;

    async fn upsert_leases(&mut self, rows: &[LeaseRow]) -> Result<(), DbError>;

    async fn delete_leases(&mut self, ids: &[i64]) -> Result<(), DbError>;

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

/// Rows per `etcdsql_label` statement (2 parameters a row; SQLite allows
/// 32766 in a statement, MySQL 65535). One statement per row doubled the
/// cost of a write on SQLite.
const LABEL_ROWS: usize = 500;

/// Writes what a batch changed, in one order for every database: live
/// deletes; rows of resources being moved still in the default partition
/// (the upsert puts them in their own); live upserts; the selector index
/// (`etcdsql_label`, where the dialect keeps one); history; leases.
pub async fn flush(w: &mut dyn Writer, f: &Flush) -> Result<(), DbError> {
    if !f.deletes.is_empty() {
        let names: Vec<&Vec<u8>> = f.deletes.iter().collect();
        w.delete_live(&names, false).await?;
    }
    if let Some(reg) = w.registry() {
        let moving: Vec<&Vec<u8>> = f
            .upserts
            .iter()
            .filter(|u| reg.moving(&u.key))
            .map(|u| &u.key)
            .collect();
        if !moving.is_empty() {
            w.delete_live(&moving, true).await?;
        }
    }
    if !f.upserts.is_empty() {
        w.upsert_live(&f.upserts).await?;
    }
    if w.dialect().label_table() {
        labels(w, f).await?;
    }
    if !f.history.is_empty() {
        w.insert_history(&f.history, f.batch).await?;
    }
    if !f.lease_upserts.is_empty() {
        w.upsert_leases(&f.lease_upserts).await?;
    }
    if !f.lease_deletes.is_empty() {
        w.delete_leases(&f.lease_deletes).await?;
    }
    Ok(())
}

/// The selector index follows the live rows: the rows of every written
/// name go, the upserts' hashes come back. An upsert whose rows the table
/// already holds (an update that kept the labels) touches none, and one of
/// a name without rows (a create) deletes none.
async fn labels(w: &mut dyn Writer, f: &Flush) -> Result<(), DbError> {
    let changed: Vec<&Upsert> = f
        .upserts
        .iter()
        .filter(|u| u.rows_held.as_deref() != Some(u.hashes()))
        .collect();
    let names: Vec<&Vec<u8>> = f
        .deletes
        .iter()
        .chain(
            changed
                .iter()
                .filter(|u| u.rows_held.as_ref().is_none_or(|h| !h.is_empty()))
                .map(|u| &u.key),
        )
        .collect();
    let rows: Vec<(i64, &Vec<u8>)> = changed
        .iter()
        .flat_map(|u| u.hashes().iter().map(move |h| (*h, &u.key)))
        .collect();
    if names.is_empty() && rows.is_empty() {
        return Ok(());
    }
    w.replace_labels(&names, &rows).await
}

/// [`Writer::replace_labels`] as statements with parameters, each run
/// when it is made.
async fn replace_labels<W: Writer + ?Sized>(
    w: &mut W,
    names: &[&Vec<u8>],
    rows: &[(i64, &Vec<u8>)],
) -> Result<(), DbError> {
    let d = w.dialect();
    for chunk in names.chunks(LABEL_ROWS) {
        let text = sql::in_list("DELETE FROM etcdsql_label WHERE name IN", chunk.len());
        let p: Vec<sql::Param> = chunk
            .iter()
            .map(|k| sql::Param::Bytes(k.to_vec()))
            .collect();
        w.execute(&sql::Statement::with_params(d, &text, &p))
            .await?;
    }
    for chunk in rows.chunks(LABEL_ROWS) {
        let text = format!(
            "{} INTO etcdsql_label (h, name) VALUES {}",
            d.insert_whole,
            vec!["(?, ?)"; chunk.len()].join(", ")
        );
        let mut p = Vec::with_capacity(chunk.len() * 2);
        for (h, k) in chunk {
            p.extend([sql::Param::Int(*h), sql::Param::Bytes(k.to_vec())]);
        }
        w.execute(&sql::Statement::with_params(d, &text, &p))
            .await?;
    }
    Ok(())
}

/// [`Backend::latest`]'s answers from one statement's rows, one per key
/// of `keys`, in order.
fn latest_of(rows: RangeRows, keys: &[Vec<u8>]) -> Result<Vec<(Meta, Option<KeyValue>)>, DbError> {
    let meta = rows
        .meta
        .ok_or_else(|| DbError::Other("etcdsql_meta has no row".into()))?;
    let found: std::collections::HashMap<Vec<u8>, KeyValue> = rows
        .kvs
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect();
    // A key asked for twice gets the same version.
    Ok(keys.iter().map(|k| (meta, found.get(k).cloned())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_windows_cover_the_range_once() {
        let w: Vec<_> = purge_windows(5, 25_007).collect();
        assert_eq!(w, vec![(5, 10_005), (10_005, 20_005), (20_005, 25_007)]);
        assert_eq!(purge_windows(9, 9).count(), 0);
    }
}
