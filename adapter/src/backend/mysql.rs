//! MySQL, MariaDB (also Galera) and TiDB on mysql_async: a pool for reads,
//! one dedicated connection for the committer. Sessions run at READ
//! COMMITTED so that every statement after the revision-row lock sees the
//! previous writer's commit. On Galera, reads wait for the node to apply
//! every earlier commit (`wsrep_sync_wait`), and a certification failure
//! surfaces as a deadlock that the committer retries.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::{FromValue, Queryable};
use mysql_async::{Conn, Opts, OptsBuilder, Params, Pool, Row, Value};

use super::sql::{self, Dialect, Param, Statement};
use super::{
    AssumedLeases, Backend, Began, Columns, DbError, HistoryRow, Holds, Kind, LeaseRow, Meta,
    PartitionInfo, Partitions, RangeFold, RangeQuery, RangeRows, Rows, Selectable, Upsert, Writer,
    decode_kv, decode_lease, first_bytes,
};
use crate::proto::mvccpb::KeyValue;
use etcdsql_partitions::{Registry, ddl};

pub(crate) const DIALECT: Dialect = Dialect {
    numbered: false,
    null_bytes: "NULL",
    no_index: "",
    revision_index: true,
    names_hint: " FORCE INDEX (etcdsql_live_revision)",
    by_names_hint: " USE INDEX (PRIMARY)",
    update_limit: true,
    json_param: "",
    insert_or_ignore: "INSERT IGNORE",
    insert_or_ignore_tail: "",
    insert_whole: "INSERT",
    purge_superseded: "DELETE h FROM etcdsql_history h JOIN etcdsql_history n \
    ON h.name = n.name AND h.revision = n.prev_revision \
    WHERE n.revision > ? AND n.revision <= ? AND n.prev_revision > 0",
    history_parts: false,
    json: sql::Json::MySql,
    meta_apart: true,
    paren_parts: true,
};

/// Rows per multi-row statement, and bytes of values per statement (sent
/// as hexadecimal, twice that, below the 16 MiB default `max_allowed_packet`).
const CHUNK_ROWS: usize = 500;
const CHUNK_BYTES: usize = 4 << 20;

const LEASE_KEYS: &str = "SELECT name FROM etcdsql_live WHERE lease = ? ORDER BY name";
/// The committer stores the revision row only if it is still the one its
/// transaction locked: on a multi-primary cluster (Galera) the lock is local
/// to one node, and this is where a transaction that lost its lock (aborted
/// by a replicated write) finds out instead of committing a part of a batch.
///
/// Writes are queued as text with inline literals and sent together (see
/// `MyWriter::queued`); once the queue reaches this size it is sent at once,
/// which keeps one round trip well below the 16 MiB default
/// `max_allowed_packet` (a row counts twice, as hexadecimal).
const QUEUE_BYTES: usize = 4 << 20;
/// Bytes of values a transaction holds in session variables (they stay on
/// the server until the next transaction sets them again).
const SHARED_BYTES: usize = 4 << 20;
/// On MariaDB, a transaction's first values at least this large are set in
/// their session variables by a prepared statement, as bound bytes, one
/// round trip before the text that names them: MariaDB lexes a value written
/// as a hexadecimal literal two characters a byte. mariadbd's CPU for 100
/// values of 1 KiB and the insert naming them: 2.7–3.0 ms as literals,
/// 2.05–2.55 ms bound. Below this, the round trip costs more than the lexing.
const BOUND_VARS_BYTES: usize = 16 << 10;

fn classify(e: mysql_async::Error) -> DbError {
    use mysql_async::Error as E;
    match e {
        E::Server(s) => {
            let msg = format!("{} ({})", s.message, s.code);
            match s.code {
                // deadlock (also Galera certification failure), lock wait timeout,
                // TiDB write conflicts and retryable transaction errors; query
                // interrupted (Galera aborts statements that stand in the way
                // of replicated DDL, such as a compaction dropping a partition)
                1213 | 1205 | 9007 | 8002 | 8022 | 8028 | 1317 => DbError::Retry(msg),
                // duplicate key: a write built on a stale view of the
                // revision row (on a multi-primary cluster another node
                // took the revision first); the batch runs again
                1062 => DbError::Retry(msg),
                // WSREP not ready, server shutting down, too many connections
                1047 | 1053 | 1040 | 1927 => DbError::Unavailable(msg),
                // data too long (a key longer than the key column)
                1406 => DbError::Rejected(msg),
                _ => DbError::Other(msg),
            }
        }
        E::Io(e) => DbError::Unavailable(e.to_string()),
        E::Driver(e) => DbError::Unavailable(e.to_string()),
        other => DbError::Other(other.to_string()),
    }
}

fn value(p: &Param) -> Value {
    match p {
        Param::Bytes(b) => Value::Bytes(b.clone()),
        Param::Int(i) => Value::Int(*i),
        Param::Text(t) => Value::Bytes(t.clone().into_bytes()),
        Param::Null => Value::NULL,
    }
}

fn params(p: &[Param]) -> Params {
    if p.is_empty() {
        Params::Empty
    } else {
        Params::Positional(p.iter().map(value).collect())
    }
}

impl Columns for Row {
    fn int(&self, i: usize) -> Result<i64, DbError> {
        col(self, i)
    }

    fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, DbError> {
        col(self, i)
    }

    fn int_opt(&self, i: usize) -> Result<Option<i64>, DbError> {
        col(self, i)
    }
}

/// A row whose byte columns are moved out as they are read (each once, as
/// the decoders do), not copied.
struct Taking(std::cell::RefCell<Row>);

impl Columns for Taking {
    fn int(&self, i: usize) -> Result<i64, DbError> {
        col(&self.0.borrow(), i)
    }

    fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, DbError> {
        match self.0.borrow_mut().take_opt::<Option<Vec<u8>>, usize>(i) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(DbError::Other(format!("column {i}: {e}"))),
            None => Err(DbError::Other(format!("column {i} missing or read twice"))),
        }
    }

    fn int_opt(&self, i: usize) -> Result<Option<i64>, DbError> {
        col(&self.0.borrow(), i)
    }
}

/// A range statement's rows, folded (see [`RangeFold`]).
fn fold_range(rows: Vec<Row>) -> Result<RangeFold, DbError> {
    let mut fold = RangeFold::default();
    for r in rows {
        fold.add(&Taking(std::cell::RefCell::new(r)))?;
    }
    Ok(fold)
}

fn col<T: FromValue>(row: &Row, i: usize) -> Result<T, DbError> {
    match row.get_opt::<T, usize>(i) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(DbError::Other(format!("column {i}: {e}"))),
        None => Err(DbError::Other(format!("column {i} missing"))),
    }
}

/// Splits rows into statements of at most CHUNK_ROWS rows and about
/// CHUNK_BYTES bytes.
fn chunks<T>(items: &[T], size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let n = size(item);
        if i > start && (i - start >= CHUNK_ROWS || bytes + n > CHUNK_BYTES) {
            out.push(&items[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += n;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// How long a pooled connection past `pool_min` may stay idle.
const IDLE_CONNECTION_TTL: std::time::Duration = std::time::Duration::from_secs(60);

pub struct Mysql {
    /// The committer's connection: the pool's settings, and no autocommit.
    writer_opts: Opts,
    /// The server runs compound statements outside stored programs
    /// (MariaDB's `BEGIN NOT ATOMIC`; see [`MyWriter::compound`]).
    compound: bool,
    pool: Pool,
    partitions: Arc<Partitions>,
    durability: Arc<Durability>,
}

/// How long a read that saw a revision of this process's COMMIT in flight
/// waits for it before committing for itself (see [`Durability`]).
const COMMIT_WAIT: Duration = Duration::from_millis(500);

/// Without a binary log, InnoDB shows a commit to other sessions before it
/// flushes the commit's redo: a crash then takes back a revision that
/// readers and watchers already saw, and the next write reuses it. A read
/// here answers only once what it saw is flushed. InnoDB flushes its redo
/// in order, so a flushed commit covers every commit visible when its
/// transaction wrote: a batch of this process that took a later revision,
/// or a change committed for the purpose in `etcdsql_sync`.
///
/// With a binary log (two-phase commit) and on Galera (replicated before
/// it is shown) and TiDB, a commit is durable before it is visible.
struct Durability {
    /// Whether this database needs it: a writable primary without binlog.
    on: bool,
    /// The reads' pool, where a sync commits.
    pool: Pool,
    /// Revisions up to here are durable.
    durable: AtomicI64,
    /// The revision of this process's COMMIT in flight (0: none).
    committing: AtomicI64,
    /// A COMMIT ended (or a sync did): waiters look again.
    ended: tokio::sync::Notify,
    /// The highest revision a read asked for.
    wanted: AtomicI64,
    /// One sync at a time; the others find theirs covered.
    syncing: tokio::sync::Mutex<()>,
}

impl Durability {
    fn new(on: bool, pool: Pool) -> Durability {
        Durability {
            on,
            pool,
            durable: AtomicI64::default(),
            committing: AtomicI64::default(),
            ended: tokio::sync::Notify::new(),
            wanted: AtomicI64::default(),
            syncing: tokio::sync::Mutex::default(),
        }
    }

    /// Whether a server of this version and these settings needs it (and
    /// a warning where the settings can lose acknowledged writes).
    async fn needed(conn: &mut Conn, galera: bool, version: &str) -> Result<bool, DbError> {
        if galera || version.contains("TiDB") {
            return Ok(false);
        }
        type Settings = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);
        let row: Option<Settings> = match conn
            .query_first(
                "SELECT @@log_bin, @@read_only, @@sync_binlog, @@innodb_flush_log_at_trx_commit",
            )
            .await
        {
            Ok(row) => row,
            Err(mysql_async::Error::Server(e)) => {
                tracing::warn!(error = %e.message, "cannot read the database's log settings; \
                    reads will make what they saw durable first");
                return Ok(true);
            }
            Err(e) => return Err(classify(e)),
        };
        let Some((log_bin, read_only, sync_binlog, flush)) = row else {
            return Ok(true);
        };
        if flush != Some(1) {
            tracing::warn!(
                innodb_flush_log_at_trx_commit = flush,
                "the database does not flush its log at each commit: a crash of its machine can \
                 lose acknowledged writes (set innodb_flush_log_at_trx_commit = 1)"
            );
        }
        if log_bin == Some(1) && sync_binlog == Some(0) {
            tracing::warn!(
                "the database writes its binary log without syncing it: a crash of its machine \
                 can lose acknowledged writes (set sync_binlog = 1)"
            );
        }
        let on = log_bin == Some(0) && read_only == Some(0);
        if on {
            tracing::info!(
                "the database has no binary log, so a commit is visible before it is durable: \
                 reads make sure what they saw is flushed before they answer"
            );
        }
        Ok(on)
    }

    /// A COMMIT of revision `revision` goes out.
    fn sending(&self, revision: i64) {
        self.committing.fetch_max(revision, Ordering::AcqRel);
    }

    /// The COMMIT of `revision` ended; `ok`: it is durable, and so is every
    /// revision before it.
    fn ended(&self, revision: i64, ok: bool) {
        let _ = self
            .committing
            .compare_exchange(revision, 0, Ordering::AcqRel, Ordering::Acquire);
        if ok {
            self.durable.fetch_max(revision, Ordering::AcqRel);
        }
        self.ended.notify_waiters();
    }

    fn covers(&self, revision: i64) -> bool {
        !self.on || self.durable.load(Ordering::Acquire) >= revision
    }

    /// Returns once `revision`, which a read saw, is durable.
    async fn certify(&self, revision: i64) -> Result<(), DbError> {
        if self.covers(revision) {
            return Ok(());
        }
        // A COMMIT of this process in flight covers it: it ends soon.
        let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
        let mut waited = false;
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.covers(revision) {
                if waited {
                    crate::metrics::DURABLE_WAITS
                        .with_label_values(&["commit"])
                        .inc();
                }
                return Ok(());
            }
            if self.committing.load(Ordering::Acquire) < revision
                || tokio::time::timeout_at(deadline, ended).await.is_err()
            {
                break;
            }
            waited = true;
        }
        self.wanted.fetch_max(revision, Ordering::AcqRel);
        let _one = self.syncing.lock().await;
        if self.covers(revision) {
            return Ok(());
        }
        // Every revision asked for so far was visible before this runs.
        let covered = self.wanted.load(Ordering::Acquire);
        let mut conn = self.pool.get_conn().await.map_err(classify)?;
        match conn.query_drop(SYNC).await {
            Ok(()) => {}
            // A read-only server holds what replication brought, durable
            // where it was written.
            Err(mysql_async::Error::Server(e)) if e.code == 1290 || e.code == 1836 => {}
            Err(e) => return Err(classify(e)),
        }
        crate::metrics::DURABLE_WAITS
            .with_label_values(&["sync"])
            .inc();
        self.durable.fetch_max(covered, Ordering::AcqRel);
        self.ended.notify_waiters();
        Ok(())
    }
}

/// A change, and so a redo record and a flush at its commit (autocommit).
const SYNC: &str =
    "INSERT INTO etcdsql_sync (id, n) VALUES (1, 1) ON DUPLICATE KEY UPDATE n = n + 1";

impl Mysql {
    pub async fn open(url: &str) -> Result<Self, DbError> {
        let mut base = Opts::from_url(url)
            .map_err(|e| DbError::Other(format!("invalid mysql endpoint: {e}")))?;
        // mysql_async by default swaps a loopback TCP connection for the
        // server's socket path (@@socket) as seen on this machine: for a
        // server in a container, or another instance, that is a different
        // server. Use the socket only where the DSN asks for it.
        if !url.contains("prefer_socket=") {
            base = OptsBuilder::from_opts(base).prefer_socket(false).into();
        }
        let mut conn = Conn::new(base.clone()).await.map_err(classify)?;
        let galera: Option<(String, String)> = conn
            .query_first("SHOW VARIABLES LIKE 'wsrep_on'")
            .await
            .map_err(classify)?;
        let galera = galera.is_some_and(|(_, v)| v.eq_ignore_ascii_case("ON"));
        let version: String = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(classify)?
            .unwrap_or_default();
        let durable_first = Durability::needed(&mut conn, galera, &version).await?;
        // MariaDB from 10.1; not MySQL or TiDB, nor a proxy (ProxySQL
        // answers with a version of its own).
        let compound = version.contains("MariaDB");
        let mut init = vec!["SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED".to_string()];
        // No statement of the committer commits by itself: if the server
        // ends a batch's transaction behind its back (Galera aborts a
        // transaction that conflicts with a replicated one), the statements
        // after that open a new transaction, which `commit` refuses, rather
        // than committing one by one.
        let writer_init = "SET SESSION autocommit = 0".to_string();
        if galera {
            init.push("SET SESSION wsrep_sync_wait = 1".to_string());
        }
        // Session settings go in `setup`, which also runs after a
        // COM_RESET_CONNECTION (`init` runs only once per connection, so a
        // reset would silently put the session back to the server's
        // defaults: REPEATABLE READ, and no wsrep_sync_wait). Pooled
        // connections are not reset on return: nothing changes their
        // session, an open transaction is rolled back by the pool (see
        // `fetch_primary`), and their prepared statements stay cached.
        let mut pool_opts = base.pool_opts().clone().with_reset_connection(false);
        // With mysql_async's default idle time-to-live (0), a connection
        // returned while `pool_min` (10) others are idle is closed: under
        // more than 10 concurrent reads every read past the tenth opened a
        // connection (handshake, session setup, statements prepared again)
        // and closed it. Idle connections now stay, up to `pool_max`, for a
        // minute.
        if !url.contains("inactive_connection_ttl=") {
            pool_opts = pool_opts.with_inactive_connection_ttl(IDLE_CONNECTION_TTL);
        }
        let opts: Opts = OptsBuilder::from_opts(base)
            .setup(init.clone())
            .stmt_cache_size(256)
            .pool_opts(pool_opts)
            .into();
        init.push(writer_init);
        let writer_opts: Opts = OptsBuilder::from_opts(opts.clone()).setup(init).into();

        let _ = conn.disconnect().await;

        let pool = Pool::new(opts.clone());
        let my = Mysql {
            writer_opts,
            compound,
            durability: Arc::new(Durability::new(durable_first, pool.clone())),
            pool,
            partitions: Arc::default(),
        };
        my.reload_partitions().await?;
        Ok(my)
    }

    async fn query(&self, text: &str, p: Params) -> Result<Vec<Row>, DbError> {
        let mut conn = self.pool.get_conn().await.map_err(classify)?;
        conn.exec(text, p).await.map_err(classify)
    }

    /// Whether a table has a partition of this name.
    async fn has_partition(&self, table: &str, partition: &str) -> Result<bool, DbError> {
        let rows = self
            .query(
                "SELECT 1 FROM information_schema.PARTITIONS WHERE TABLE_SCHEMA = DATABASE() \
                 AND TABLE_NAME = ? AND PARTITION_NAME = ?",
                Params::Positional(vec![table.into(), partition.into()]),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Partition DDL that another process may have run meanwhile: a
    /// duplicate partition name (1517) is success.
    async fn partition_ddl(&self, text: &str) -> Result<(), DbError> {
        let mut conn = self.pool.get_conn().await.map_err(classify)?;
        match conn.query_drop(text).await {
            Err(mysql_async::Error::Server(e)) if e.code == 1517 => Ok(()),
            r => r.map_err(classify),
        }
    }
}

fn text(r: &Row, i: usize) -> Result<String, DbError> {
    Ok(String::from_utf8_lossy(&col::<Option<Vec<u8>>>(r, i)?.unwrap_or_default()).into_owned())
}

#[async_trait]
impl Backend for Mysql {
    fn kind(&self) -> Kind {
        Kind::Mysql
    }

    fn sql(&self) -> Dialect {
        DIALECT
    }

    fn partitions(&self) -> Option<&Partitions> {
        Some(&self.partitions)
    }

    async fn batch(&self, text: &str) -> Result<(), DbError> {
        let mut conn = self.pool.get_conn().await.map_err(classify)?;
        conn.query_drop(text).await.map_err(classify)
    }

    async fn fetch_primary(&self, s: &Statement) -> Result<Rows, DbError> {
        let mut conn = self.pool.get_conn().await.map_err(classify)?;
        // A transaction the driver tracks: dropped unfinished (an error, a
        // cancelled request), the pool rolls it back before reuse.
        let mut tx = conn
            .start_transaction(mysql_async::TxOpts::default())
            .await
            .map_err(classify)?;
        let text = format!("{}{}", super::NO_LOAD_BALANCE, s.text);
        let rows: Vec<Row> = tx
            .exec(text.as_str(), params(&s.params))
            .await
            .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(super::boxed(rows))
    }

    async fn execute(&self, s: &Statement) -> Result<u64, DbError> {
        let mut conn = self.pool.get_conn().await.map_err(classify)?;
        conn.exec_drop(s.text.as_str(), params(&s.params))
            .await
            .map_err(classify)?;
        Ok(conn.affected_rows())
    }

    async fn fetch(&self, s: &Statement) -> Result<Rows, DbError> {
        let rows = self.query(&s.text, params(&s.params)).await?;
        Ok(super::boxed(rows))
    }

    async fn fetch_range(&self, s: &Statement) -> Result<RangeFold, DbError> {
        fold_range(self.query(&s.text, params(&s.params)).await?)
    }

    async fn durable(&self, revision: i64) -> Result<(), DbError> {
        self.durability.certify(revision).await
    }

    fn max_key_bytes(&self) -> Option<usize> {
        Some(3000)
    }

    async fn writer(&self) -> Result<Box<dyn Writer>, DbError> {
        Ok(Box::new(MyWriter::new(
            self.writer_opts.clone(),
            self.partitions.clone(),
            self.durability.clone(),
            self.compound,
        )))
    }

    async fn create_epoch_partition(&self, epoch: i64) -> Result<(), DbError> {
        // DDL commits implicitly: it runs before the epoch's transaction.
        if self
            .has_partition("etcdsql_history", &format!("e{epoch}"))
            .await?
        {
            return Ok(());
        }
        self.partition_ddl(&ddl::mysql_epoch(epoch)).await
    }

    async fn drop_epoch_partition(&self, epoch: i64) -> Result<(), DbError> {
        if self
            .has_partition("etcdsql_history", &format!("e{epoch}"))
            .await?
        {
            self.batch(&ddl::mysql_drop_epoch(epoch)).await?;
        }
        Ok(())
    }

    async fn create_resource_partitions(&self, part: &str) -> Result<(), DbError> {
        // History is partitioned by epoch only: live alone gets one.
        if self
            .has_partition("etcdsql_live", &format!("p_{part}"))
            .await?
        {
            return Ok(());
        }
        self.partition_ddl(&ddl::mysql_add(part)).await
    }

    async fn partition_list(&self) -> Result<Vec<PartitionInfo>, DbError> {
        let sizes = self
            .query(
                "SELECT TABLE_NAME, PARTITION_NAME, CAST(DATA_LENGTH + INDEX_LENGTH AS SIGNED), \
                 PARTITION_DESCRIPTION FROM information_schema.PARTITIONS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ('etcdsql_live', 'etcdsql_history') \
                 ORDER BY TABLE_NAME DESC, PARTITION_ORDINAL_POSITION",
                Params::Empty,
            )
            .await?;
        let mut live = std::collections::HashMap::new();
        for r in self
            .query(
                "SELECT part, COUNT(*) FROM etcdsql_live GROUP BY part",
                Params::Empty,
            )
            .await?
        {
            live.insert(text(&r, 0)?, r.int(1)?);
        }
        let mut history = std::collections::HashMap::new();
        for r in self
            .query(
                "SELECT epoch, COUNT(*) FROM etcdsql_history GROUP BY epoch",
                Params::Empty,
            )
            .await?
        {
            history.insert(r.int(0)?, r.int(1)?);
        }
        let mut out = Vec::with_capacity(sizes.len());
        for r in &sizes {
            let (table, name) = (text(r, 0)?, text(r, 1)?);
            let (holds, rows) = if table == "etcdsql_live" {
                let part = text(r, 3)?.trim_matches('\'').to_string();
                let n = live.get(&part).copied().unwrap_or(0);
                (Holds::Part(part), n)
            } else {
                let epoch = name.trim_start_matches('e').parse::<i64>().unwrap_or(-1);
                (
                    Holds::Epoch(epoch),
                    history.get(&epoch).copied().unwrap_or(0),
                )
            };
            out.push(PartitionInfo {
                table,
                name,
                holds,
                rows,
                bytes: r.int(2)?,
            });
        }
        Ok(out)
    }

    async fn db_size(&self) -> Result<i64, DbError> {
        let rows = self
            .query(
                "SELECT CAST(COALESCE(SUM(data_length + index_length), 0) AS SIGNED) \
                 FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name LIKE 'etcdsql\\_%'",
                Params::Empty,
            )
            .await?;
        rows.first().map_or(Ok(0), |r| r.int(0))
    }
}

/// A statement that fails with a duplicate key on purpose (by its index in
/// a multi-statement text), and what that failure means.
type Sentinel = (usize, fn() -> DbError);

struct MyWriter {
    opts: Opts,
    conn: Option<Conn>,
    partitions: Arc<Partitions>,
    /// History rows of this transaction belong to this epoch.
    epoch: i64,
    /// The revision row as `begin` locked it.
    locked: Meta,
    /// Writes not yet sent: statements with their values inline, sent
    /// together before the next read or with the revision row at commit.
    queued: String,
    /// Statements in `queued`.
    queued_n: usize,
    /// Where CHECK_ASSUMED is in `queued`, until it is sent.
    check_at: Option<usize>,
    /// The transaction checks keys taken as absent ([`CHECK_ABSENT`]).
    absent_checked: bool,
    /// Something of this transaction has been sent (a ROLLBACK has work).
    open: bool,
    durability: Arc<Durability>,
    shared: Shared,
    /// Values of the first session variables (`@e0`, …), to be bound by
    /// [`MyWriter::set_bound`] before the queued text that names them is
    /// sent ([`BOUND_VARS_BYTES`]).
    bound: Vec<Value>,
    /// Texts without rows to read back go as one compound statement
    /// (`BEGIN NOT ATOMIC … END`). MariaDB answers each statement of a
    /// multi-statement text in a packet of its own, and flushes it: ten
    /// `send()`s for a one-put batch, and as many wake-ups of this
    /// connection. A compound statement is answered once. Its sentinels
    /// cannot be told apart by their place in the text: the revision-row
    /// guard raises an error of its own ([`GUARD_SIGNAL`]) instead.
    compound: bool,
}

/// Values of a transaction's live upserts held in session variables (`@e0`,
/// `@e1`, …): the history row of the same revision and key has the same
/// value and names the variable instead of sending the value again.
#[derive(Default)]
struct Shared {
    /// Variable numbers by mod revision and key.
    by_revision: HashMap<i64, Vec<(Vec<u8>, usize)>>,
    /// Variables set, and their bytes (at most SHARED_BYTES).
    n: usize,
    bytes: usize,
}

impl Shared {
    /// A variable for `k`'s value, if there is room: its number.
    fn add(&mut self, k: &Upsert) -> Option<usize> {
        if self.bytes + k.value.len() > SHARED_BYTES {
            return None;
        }
        let n = self.n;
        self.n += 1;
        self.bytes += k.value.len();
        let at = self.by_revision.entry(k.mod_revision).or_default();
        at.push((k.key.clone(), n));
        Some(n)
    }

    /// The variable holding `h`'s value, if its live upsert set one. A
    /// put's row has its upsert's value; etcd's Txn rejects a key changed
    /// twice in one revision.
    fn of(&self, h: &HistoryRow) -> Option<usize> {
        if h.deleted {
            return None;
        }
        let at = self.by_revision.get(&h.revision)?;
        at.iter().find(|(key, _)| *key == h.key).map(|(_, n)| *n)
    }
}

impl MyWriter {
    fn new(
        opts: Opts,
        partitions: Arc<Partitions>,
        durability: Arc<Durability>,
        compound: bool,
    ) -> Self {
        MyWriter {
            compound,
            opts,
            conn: None,
            locked: Meta {
                revision: 0,
                compact_revision: 0,
            },
            partitions,
            queued: String::new(),
            queued_n: 0,
            check_at: None,
            absent_checked: false,
            open: false,
            epoch: 0,
            durability,
            shared: Shared::default(),
            bound: Vec::new(),
        }
    }

    /// Queues `head name IN (…)` over `names`, in chunks (`head` ends with
    /// WHERE or AND).
    fn delete_names(&mut self, head: &str, names: &[&Vec<u8>]) {
        for chunk in chunks(names, |k| k.len()) {
            self.queued.push_str(head);
            self.queued.push_str(" name IN (");
            hex_list(&mut self.queued, chunk.iter().map(|k| k.as_slice()));
            self.queued.push_str(");");
            self.queued_n += 1;
        }
    }

    fn conn(&mut self) -> Result<&mut Conn, DbError> {
        self.conn
            .as_mut()
            .ok_or_else(|| DbError::Unavailable("no connection".into()))
    }

    async fn exec(&mut self, text: &str, p: Params) -> Result<Vec<Row>, DbError> {
        self.flush().await?;
        self.open = true;
        let r = self.conn()?.exec(text, p).await;
        self.check(r)
    }

    /// Runs `text`, `n` statements, in one round trip: each statement's
    /// rows and affected-row count. A failing statement ends it (the server
    /// runs none after it).
    async fn run(&mut self, text: &str, n: usize) -> Result<Vec<(Vec<Row>, u64)>, DbError> {
        self.run_guarded(text, n, &[]).await
    }

    /// [`run`](Self::run), where `sentinels` are statements (by index) that
    /// fail with a duplicate key on purpose, and what that failure means.
    async fn run_guarded(
        &mut self,
        text: &str,
        n: usize,
        sentinels: &[Sentinel],
    ) -> Result<Vec<(Vec<Row>, u64)>, DbError> {
        self.open = true;
        match Self::run_on(self.conn()?, text, n).await {
            Ok(sets) => Ok(sets),
            Err((at, e)) => {
                let sentinel = sentinels.iter().find(|(i, _)| *i == at);
                match (sentinel, &e) {
                    (Some((_, means)), mysql_async::Error::Server(s)) if s.code == 1062 => {
                        Err(means())
                    }
                    _ => self.check(Err(e)),
                }
            }
        }
    }

    /// On an error, the index of the statement that failed with it.
    async fn run_on(
        c: &mut Conn,
        text: &str,
        n: usize,
    ) -> Result<Vec<(Vec<Row>, u64)>, (usize, mysql_async::Error)> {
        let mut res = c.query_iter(text).await.map_err(|e| (0, e))?;
        let mut sets = Vec::with_capacity(n);
        for i in 0..n {
            // Read before `collect`, which moves on to the next statement
            // (and keeps a server error there for the next `collect`).
            let affected = res.affected_rows();
            let rows = res.collect::<Row>().await.map_err(|e| (i, e))?;
            sets.push((rows, affected));
        }
        res.drop_result().await.map_err(|e| (n, e))?;
        Ok(sets)
    }

    /// Sends the queued writes.
    async fn flush(&mut self) -> Result<(), DbError> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let text = std::mem::take(&mut self.queued);
        let n = std::mem::take(&mut self.queued_n);
        let sentinels = self.take_check();
        let compound = self.compound && text.len() + 2 * self.bound_bytes() <= COMPOUND_BYTES;
        self.set_bound().await?;
        self.run_writes(text, n, &sentinels, compound).await
    }

    /// Bytes of the values to be bound: they count as the hexadecimal they
    /// replace where a text's length decides how it is sent.
    fn bound_bytes(&self) -> usize {
        self.bound
            .iter()
            .map(|v| match v {
                Value::Bytes(b) => b.len(),
                _ => 0,
            })
            .sum()
    }

    /// Sets the session variables of [`bound`](Self::bound), in one prepared
    /// statement of a power of two variables (the rest set to NULL), so that
    /// a connection prepares a few statements, not one per batch size.
    async fn set_bound(&mut self) -> Result<(), DbError> {
        if self.bound.is_empty() {
            return Ok(());
        }
        let mut values = std::mem::take(&mut self.bound);
        let n = values.len().next_power_of_two();
        values.resize(n, Value::NULL);
        self.open = true;
        let r = self
            .conn()?
            .exec_drop(set_bound(n), Params::Positional(values))
            .await;
        self.check(r)
    }

    /// Runs queued writes, `n` statements of `text` with no rows to read
    /// back: as one compound statement if `compound`.
    async fn run_writes(
        &mut self,
        mut text: String,
        n: usize,
        sentinels: &[Sentinel],
        compound: bool,
    ) -> Result<(), DbError> {
        if !compound {
            return self.run_guarded(&text, n, sentinels).await.map(drop);
        }
        if !text.ends_with(';') {
            text.push(';');
        }
        text.insert_str(0, "BEGIN NOT ATOMIC ");
        text.push_str(" END");
        self.open = true;
        match Self::run_on(self.conn()?, &text, 1).await {
            Ok(_) => Ok(()),
            Err((_, e)) => match (&e, sentinels.first()) {
                // The duplicate key of a sentinel: CHECK_ASSUMED's.
                (mysql_async::Error::Server(s), Some((_, means))) if s.code == 1062 => Err(means()),
                (mysql_async::Error::Server(s), _)
                    if s.code == ER_SIGNAL_EXCEPTION && s.message == GUARD_MESSAGE =>
                {
                    Err(lost_lock())
                }
                _ => self.check(Err(e)),
            },
        }
    }

    /// The queued CHECK_ASSUMED as a sentinel, once.
    fn take_check(&mut self) -> Vec<Sentinel> {
        let stale: fn() -> DbError = || DbError::Stale;
        self.check_at
            .take()
            .map(|at| (at, stale))
            .into_iter()
            .collect()
    }

    /// Sends the queued writes once they are large enough to send.
    async fn flush_large(&mut self) -> Result<(), DbError> {
        if self.queued.len() >= QUEUE_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Drops the connection when it broke, so that `begin` reconnects.
    fn check<T>(&mut self, r: mysql_async::Result<T>) -> Result<T, DbError> {
        r.map_err(|e| {
            if self.absent_checked
                && matches!(&e, mysql_async::Error::Server(s) if s.code == ER_SUBQUERY_NO_1_ROW)
            {
                return DbError::Existed;
            }
            let e = classify(e);
            if matches!(e, DbError::Unavailable(_)) {
                self.conn = None;
            }
            e
        })
    }

    /// Forgets the transaction's state; answers whether any of it had been
    /// sent.
    fn reset(&mut self) -> bool {
        self.queued.clear();
        self.queued_n = 0;
        self.check_at = None;
        self.absent_checked = false;
        self.shared = Shared::default();
        self.bound.clear();
        std::mem::take(&mut self.open)
    }

    async fn connect(&mut self) -> Result<(), DbError> {
        self.reset();
        if self.conn.is_none() {
            let c = Conn::new(self.opts.clone()).await;
            self.conn = Some(self.check(c)?);
        }
        Ok(())
    }

    /// Takes what `begin` read: the revision row (first of `sets`).
    async fn locked(&mut self, sets: &[(Vec<Row>, u64)]) -> Result<Meta, DbError> {
        let rows = sets.first().map_or(&[][..], |s| &s.0[..]);
        let locked = super::decode_locked(rows, &self.partitions)?;
        self.epoch = locked.epoch;
        self.locked = locked.meta;
        if locked.stale {
            let reg = self.exec(super::REGISTRY_SQL, Params::Empty).await?;
            self.partitions.set(super::decode_registry(&reg)?);
        }
        Ok(locked.meta)
    }
}

/// `SELECT … FROM etcdsql_live WHERE name IN (…)` over `keys`, in chunks,
/// appended to `out`; how many statements.
fn get_text(out: &mut String, keys: &[Vec<u8>]) -> usize {
    let parts = chunks(keys, Vec::len);
    for chunk in &parts {
        out.push_str(
            "SELECT name, value, create_revision, mod_revision, version, lease \
             FROM etcdsql_live",
        );
        out.push_str(DIALECT.by_names_hint);
        out.push_str(" WHERE name IN (");
        hex_list(out, chunk.iter().map(Vec::as_slice));
        out.push_str(");");
    }
    parts.len()
}

fn leases_text(out: &mut String, ids: &[i64]) {
    out.push_str("SELECT id, ttl, expires_at_ms FROM etcdsql_lease WHERE id IN (");
    join_ints(out, ids.iter().copied());
    out.push_str(");");
}

fn join_ints(out: &mut String, ints: impl Iterator<Item = i64>) {
    for (i, n) in ints.enumerate() {
        let sep = if i > 0 { ", " } else { "" };
        let _ = write!(out, "{sep}{n}");
    }
}

/// `SET @e0 = ?, …` over `n` variables.
fn set_bound(n: usize) -> String {
    let mut s = String::with_capacity(4 + 12 * n);
    for i in 0..n {
        s.push_str(if i == 0 { "SET " } else { ", " });
        let _ = write!(s, "@e{i} = ?");
    }
    s
}

/// Byte strings as comma-separated hexadecimal literals.
fn hex_list<'a>(out: &mut String, items: impl Iterator<Item = &'a [u8]>) {
    for (i, b) in items.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        hex(out, "X'", b);
    }
}

/// Appends `b` as a hexadecimal literal after `head` (`X'` for bytes,
/// `_utf8mb4 X'` for text): no escaping, whatever the server's SQL mode.
fn hex(out: &mut String, head: &str, b: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(head.len() + 2 * b.len() + 1);
    out.push_str(head);
    // Digits go through a buffer a chunk at a time: a `String::push` per
    // digit cost a put's text on MariaDB several times more.
    let mut buf = [0u8; 512];
    for chunk in b.chunks(buf.len() / 2) {
        for (pair, &x) in buf.chunks_exact_mut(2).zip(chunk) {
            pair[0] = DIGITS[usize::from(x >> 4)];
            pair[1] = DIGITS[usize::from(x & 15)];
        }
        // Only ASCII digits were written: this cannot fail.
        out.push_str(std::str::from_utf8(&buf[..2 * chunk.len()]).unwrap_or_default());
    }
    out.push('\'');
}

/// A value written inline.
enum Lit<'a> {
    Bytes(&'a [u8]),
    /// The session variable `@e{n}`.
    Var(usize),
    Int(i64),
    /// Text, or NULL.
    Text(Option<&'a str>),
}

/// A row of literals, `(a, b, …)`, after a comma unless it is the first.
fn tuple(out: &mut String, first: bool, values: &[Lit]) {
    out.push_str(if first { "(" } else { ", (" });
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        match v {
            Lit::Bytes(b) => hex(out, "X'", b),
            Lit::Var(n) => {
                let _ = write!(out, "@e{n}");
            }
            Lit::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Lit::Text(Some(t)) => hex(out, "_utf8mb4 X'", t.as_bytes()),
            Lit::Text(None) => out.push_str("NULL"),
        }
    }
    out.push(')');
}

/// An INSERT of a second revision row, up to its FROM: a duplicate key
/// wherever its SELECT returns a row. MySQL has no error to raise from a
/// plain statement; this is how a statement stops a multi-statement text.
macro_rules! second_meta_row {
    () => {
        "INSERT INTO etcdsql_meta (id, revision, compact_revision, cluster_id, schema_version) \
         SELECT 1, 0, 0, 0, 0 FROM "
    };
}

/// [`Writer::check_assumed`]'s statement up to its terms: a duplicate key
/// unless the revision row and the leases are as assumed (the keys taken
/// as absent are CHECK_ABSENT's). It runs after LOCK_META, so every other
/// writer has committed or not started.
const CHECK_ASSUMED: &str = concat!(
    second_meta_row!(),
    "etcdsql_meta m WHERE m.id = 1 AND NOT ("
);

/// After CHECK_ASSUMED, where a batch took keys as absent: the head of a
/// scalar subquery that has a second row, failing with
/// ER_SUBQUERY_NO_1_ROW, if one of them exists. Its own error, so that
/// "a key exists" is told apart from "stale" ([`DbError::Existed`]) in a
/// multi-statement text and in a compound statement alike.
const CHECK_ABSENT: &str = "SET @etcdsql_absent = (SELECT 1";

/// "Subquery returns more than 1 row": only CHECK_ABSENT's in a write.
const ER_SUBQUERY_NO_1_ROW: u16 = 1242;

/// After the revision row's UPDATE: a duplicate key unless it changed the
/// row, which it does only if the row is still the one the transaction
/// locked (see [`MyWriter::commit`]).
const GUARD_UPDATED: &str = concat!(second_meta_row!(), "DUAL WHERE ROW_COUNT() <> 1;");

macro_rules! guard_message {
    () => {
        "etcdsql: the revision row changed"
    };
}

/// The guard of a compound statement ([`MyWriter::compound`]): the same
/// test as GUARD_UPDATED, with an error of its own.
const GUARD_SIGNAL: &str = concat!(
    "IF ROW_COUNT() <> 1 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '",
    guard_message!(),
    "'; END IF;"
);
const GUARD_MESSAGE: &str = guard_message!();

/// The longest text sent as a compound statement. Per row, MariaDB spends
/// more on a compound statement than on the same statements sent apart
/// (mariadbd's CPU per text, 100 rows with their label rows: 3.5–3.7 ms
/// apart, 3.8–4.2 ms compound; 10 rows: 0.70–0.75 and 0.65–0.70 ms), and
/// the packets it saves are few next to a large batch's rows.
const COMPOUND_BYTES: usize = 64 << 10;

/// MySQL's error for an unhandled `SIGNAL SQLSTATE '45000'`.
const ER_SIGNAL_EXCEPTION: u16 = 1644;

/// A compound statement's BEGIN and revision-row lock. Nothing of the row
/// is read back (CHECK_ASSUMED tests it), so it goes to a session variable
/// rather than a result set.
const LOCK_META_COMPOUND: &str = "START TRANSACTION;\
    SELECT id INTO @etcdsql_locked FROM etcdsql_meta WHERE id = 1 FOR UPDATE;";

/// What the guard's failure means.
fn lost_lock() -> DbError {
    DbError::Retry(
        "the revision row is no longer the one this transaction locked \
         (the transaction lost its lock)"
            .into(),
    )
}

/// Appends BEGIN and the revision-row lock, two statements.
fn begin_text(out: &mut String) {
    out.push_str("BEGIN;");
    out.push_str(super::LOCK_META);
    out.push(';');
}

#[async_trait]
impl Writer for MyWriter {
    async fn begin(&mut self) -> Result<Meta, DbError> {
        Ok(self.begin_read(&[], &[]).await?.meta)
    }

    fn assumes(&self) -> bool {
        true
    }

    fn tells_existed(&self) -> bool {
        true
    }

    async fn begin_assuming(&mut self) -> Result<(), DbError> {
        self.connect().await?;
        if self.compound {
            self.queued.push_str(LOCK_META_COMPOUND);
        } else {
            begin_text(&mut self.queued);
        }
        self.queued_n = 2;
        Ok(())
    }

    async fn check_assumed(
        &mut self,
        meta: Meta,
        absent: &[Vec<u8>],
        leases: &AssumedLeases,
    ) -> Result<(), DbError> {
        self.locked = meta;
        let version = self.partitions.get().version;
        let q = &mut self.queued;
        q.push_str(CHECK_ASSUMED);
        let _ = write!(
            q,
            "m.revision = {} AND m.compact_revision = {} AND m.partitions_version = {version} \
             AND m.epoch = {}",
            meta.revision, meta.compact_revision, self.epoch
        );
        if !leases.ttls.is_empty() {
            q.push_str(" AND (SELECT COUNT(*) FROM etcdsql_lease WHERE (id, ttl) IN (");
            for (i, (id, ttl)) in leases.ttls.iter().enumerate() {
                let sep = if i > 0 { ", " } else { "" };
                let _ = write!(q, "{sep}({id}, {ttl})");
            }
            let _ = write!(q, ")) = {}", leases.ttls.len());
        }
        if !leases.unexpired.is_empty() {
            q.push_str(" AND NOT EXISTS (SELECT 1 FROM etcdsql_lease WHERE id IN (");
            join_ints(q, leases.unexpired.iter().copied());
            let _ = write!(q, ") AND expires_at_ms <= {})", leases.now_ms);
        }
        q.push_str(");");
        self.check_at = Some(self.queued_n);
        self.queued_n += 1;
        if !absent.is_empty() {
            q.push_str(CHECK_ABSENT);
            for chunk in chunks(absent, Vec::len) {
                q.push_str(" UNION ALL SELECT 1 FROM etcdsql_live");
                q.push_str(DIALECT.by_names_hint);
                q.push_str(" WHERE name IN (");
                hex_list(q, chunk.iter().map(Vec::as_slice));
                q.push(')');
            }
            q.push_str(");");
            self.queued_n += 1;
            self.absent_checked = true;
        }
        Ok(())
    }

    async fn begin_read(&mut self, keys: &[Vec<u8>], leases: &[i64]) -> Result<Began, DbError> {
        self.connect().await?;
        let mut text = String::new();
        begin_text(&mut text);
        let gets = get_text(&mut text, keys);
        let n = 2 + gets + usize::from(!leases.is_empty());
        if !leases.is_empty() {
            leases_text(&mut text, leases);
        }
        let sets = self.run(&text, n).await?;
        let meta = self.locked(&sets[1..]).await?;
        let mut kvs = Vec::with_capacity(keys.len());
        for (rows, _) in sets.iter().skip(2).take(gets) {
            for r in rows {
                kvs.extend(decode_kv(r, 0)?);
            }
        }
        let leases = match sets.get(2 + gets) {
            Some((rows, _)) if !leases.is_empty() => {
                rows.iter().map(decode_lease).collect::<Result<_, _>>()?
            }
            _ => Vec::new(),
        };
        Ok(Began { meta, kvs, leases })
    }

    async fn get(&mut self, keys: &[Vec<u8>]) -> Result<Vec<KeyValue>, DbError> {
        self.flush().await?;
        let mut text = String::new();
        let n = get_text(&mut text, keys);
        let mut out = Vec::with_capacity(keys.len());
        for (rows, _) in self.run(&text, n).await? {
            for r in &rows {
                out.extend(decode_kv(r, 0)?);
            }
        }
        Ok(out)
    }

    async fn range(&mut self, q: &RangeQuery) -> Result<RangeRows, DbError> {
        let parts = super::parts_of(&self.partitions.get(), &q.key, &q.end);
        let s = sql::range(DIALECT, q, parts.as_deref());
        Ok(fold_range(self.exec(&s.text, params(&s.params)).await?)?.finish(q))
    }

    async fn leases(&mut self, ids: &[i64]) -> Result<Vec<LeaseRow>, DbError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.flush().await?;
        let mut text = String::new();
        leases_text(&mut text, ids);
        let sets = self.run(&text, 1).await?;
        sets.first()
            .map_or(&[][..], |s| &s.0[..])
            .iter()
            .map(decode_lease)
            .collect()
    }

    async fn lease_keys(&mut self, id: i64) -> Result<Vec<Vec<u8>>, DbError> {
        let rows = self
            .exec(LEASE_KEYS, Params::Positional(vec![Value::Int(id)]))
            .await?;
        first_bytes(&rows)
    }

    fn registry(&self) -> Option<Arc<Registry>> {
        Some(self.partitions.get())
    }

    fn dialect(&self) -> Dialect {
        DIALECT
    }

    async fn delete_live(&mut self, names: &[&Vec<u8>], default_only: bool) -> Result<(), DbError> {
        let head = if default_only {
            "DELETE FROM etcdsql_live WHERE part = '' AND"
        } else {
            "DELETE FROM etcdsql_live WHERE"
        };
        self.delete_names(head, names);
        self.flush_large().await
    }

    async fn replace_labels(
        &mut self,
        names: &[&Vec<u8>],
        rows: &[(i64, &Vec<u8>)],
    ) -> Result<(), DbError> {
        // Queued with the other writes rather than sent one by one.
        self.delete_names("DELETE FROM etcdsql_label WHERE", names);
        for chunk in rows.chunks(CHUNK_ROWS) {
            let q = &mut self.queued;
            q.push_str("INSERT INTO etcdsql_label (h, name) VALUES ");
            for (i, (h, name)) in chunk.iter().enumerate() {
                tuple(q, i == 0, &[Lit::Int(*h), Lit::Bytes(name)]);
            }
            q.push(';');
            self.queued_n += 1;
        }
        self.flush_large().await
    }

    async fn upsert_live(&mut self, rows: &[Upsert]) -> Result<(), DbError> {
        let reg = self.partitions.get();
        for chunk in chunks(rows, |k| k.key.len() + k.value.len()) {
            // Values the history rows will name: set first, in one SET.
            let first = self.shared.n == 0;
            let vars: Vec<Option<usize>> = chunk.iter().map(|k| self.shared.add(k)).collect();
            let bytes: usize = chunk.iter().map(|k| k.value.len()).sum();
            if first && self.compound && bytes >= BOUND_VARS_BYTES {
                // Numbered from 0, in order: bound instead (see set_bound).
                self.bound = chunk
                    .iter()
                    .zip(&vars)
                    .filter(|(_, n)| n.is_some())
                    .map(|(k, _)| Value::Bytes(k.value.clone()))
                    .collect();
            }
            let mut set = false;
            for (k, n) in chunk.iter().zip(&vars) {
                let Some(n) = n else { continue };
                if *n < self.bound.len() {
                    continue;
                }
                let q = &mut self.queued;
                if q.is_empty() {
                    // A text starts with anything but SET: proxies
                    // (ProxySQL) parse a leading SET as the session's.
                    q.push_str("DO 0;");
                    self.queued_n += 1;
                }
                q.push_str(if set { ", " } else { "SET " });
                set = true;
                let _ = write!(q, "@e{n} = ");
                hex(q, "X'", &k.value);
            }
            if set {
                self.queued.push(';');
                self.queued_n += 1;
            }
            let q = &mut self.queued;
            q.push_str(
                "INSERT INTO etcdsql_live (name, value, create_revision, mod_revision, version, \
                 lease, part, labels, fields) VALUES ",
            );
            for (i, (k, var)) in chunk.iter().zip(&vars).enumerate() {
                let values = [
                    Lit::Bytes(&k.key),
                    var.map_or(Lit::Bytes(&k.value), Lit::Var),
                    Lit::Int(k.create_revision),
                    Lit::Int(k.mod_revision),
                    Lit::Int(k.version),
                    Lit::Int(k.lease),
                    Lit::Bytes(reg.target(&k.key).as_bytes()),
                    Lit::Text(k.labels()),
                    Lit::Text(k.fields()),
                ];
                tuple(q, i == 0, &values);
            }
            q.push_str(
                " ON DUPLICATE KEY UPDATE value = VALUES(value), \
                 create_revision = VALUES(create_revision), mod_revision = VALUES(mod_revision), \
                 version = VALUES(version), lease = VALUES(lease), labels = VALUES(labels), \
                 fields = VALUES(fields);",
            );
            self.queued_n += 1;
            self.flush_large().await?;
        }
        Ok(())
    }

    async fn insert_history(&mut self, rows: &[HistoryRow], batch: i64) -> Result<(), DbError> {
        for chunk in chunks(rows, |h| h.key.len() + h.value.len()) {
            let q = &mut self.queued;
            q.push_str(
                "INSERT INTO etcdsql_history (revision, sub, name, value, create_revision, version, \
                 lease, deleted, prev_revision, epoch, labels, fields, batch) VALUES ",
            );
            for (i, h) in chunk.iter().enumerate() {
                let var = self.shared.of(h);
                let values = [
                    Lit::Int(h.revision),
                    Lit::Int(i64::from(h.sub)),
                    Lit::Bytes(&h.key),
                    var.map_or(Lit::Bytes(&h.value), Lit::Var),
                    Lit::Int(h.create_revision),
                    Lit::Int(h.version),
                    Lit::Int(h.lease),
                    Lit::Int(i64::from(h.deleted)),
                    Lit::Int(h.prev_revision),
                    Lit::Int(self.epoch),
                    Lit::Text(h.labels()),
                    Lit::Text(h.fields()),
                    Lit::Int(batch),
                ];
                tuple(q, i == 0, &values);
            }
            q.push(';');
            self.queued_n += 1;
            self.flush_large().await?;
        }
        Ok(())
    }

    async fn upsert_leases(&mut self, rows: &[LeaseRow]) -> Result<(), DbError> {
        for chunk in chunks(rows, |_| 24) {
            let q = &mut self.queued;
            q.push_str("INSERT INTO etcdsql_lease (id, ttl, expires_at_ms) VALUES ");
            for (i, l) in chunk.iter().enumerate() {
                let values = [Lit::Int(l.id), Lit::Int(l.ttl), Lit::Int(l.expires_at_ms)];
                tuple(q, i == 0, &values);
            }
            q.push_str(
                " ON DUPLICATE KEY UPDATE ttl = VALUES(ttl), expires_at_ms = VALUES(expires_at_ms);",
            );
            self.queued_n += 1;
        }
        self.flush_large().await
    }

    async fn delete_leases(&mut self, ids: &[i64]) -> Result<(), DbError> {
        for chunk in chunks(ids, |_| 8) {
            self.queued
                .push_str("DELETE FROM etcdsql_lease WHERE id IN (");
            join_ints(&mut self.queued, chunk.iter().copied());
            self.queued.push_str(");");
            self.queued_n += 1;
        }
        self.flush_large().await
    }

    async fn commit(&mut self, meta: Meta) -> Result<(), DbError> {
        let before = self.locked;
        // The queued writes, the revision row and COMMIT in one round trip.
        // MySQL counts changed rows, and the UPDATE changes the row only if
        // it is still the one the transaction locked; where it should have
        // changed, the guard stops the COMMIT unless it did.
        // A batch that leaves the row as it found it (lease grants and
        // renewals) has nothing to write there.
        let changes = meta != before;
        let mut text = std::mem::take(&mut self.queued);
        let mut n = std::mem::take(&mut self.queued_n);
        if changes {
            let _ = write!(
                text,
                "UPDATE etcdsql_meta SET revision = {}, compact_revision = {} \
                 WHERE id = 1 AND revision = {} AND compact_revision = {};",
                meta.revision, meta.compact_revision, before.revision, before.compact_revision
            );
            n += 1;
        }
        let mut sentinels = self.take_check();
        let compound = self.compound
            && text.len() + 2 * self.bound_bytes() + GUARD_SIGNAL.len() <= COMPOUND_BYTES;
        if changes {
            if compound {
                text.push_str(GUARD_SIGNAL);
            } else {
                text.push_str(GUARD_UPDATED);
                sentinels.push((n, lost_lock));
            }
            n += 1;
        }
        text.push_str("COMMIT");
        n += 1;
        // Where the revision row changes, the COMMIT's flush covers every
        // revision up to `meta`'s; otherwise it may flush nothing, and what
        // the batch read must be made durable.
        self.set_bound().await?;
        let d = self.durability.clone();
        if changes {
            d.sending(meta.revision);
        }
        let sent = self.run_writes(text, n, &sentinels, compound).await;
        if changes {
            d.ended(meta.revision, sent.is_ok());
        }
        sent?;
        self.open = false;
        if !changes {
            d.certify(before.revision).await?;
        }
        Ok(())
    }

    async fn execute(&mut self, s: &Statement) -> Result<u64, DbError> {
        self.exec(&s.text, params(&s.params)).await?;
        Ok(self.conn()?.affected_rows())
    }

    async fn rows(&mut self, s: &Statement) -> Result<Rows, DbError> {
        let rows = self.exec(&s.text, params(&s.params)).await?;
        Ok(super::boxed(rows))
    }

    async fn rollback(&mut self) {
        if !self.reset() {
            return;
        }
        if let Some(c) = self.conn.as_mut()
            && c.query_drop("ROLLBACK").await.is_err()
        {
            self.conn = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte value, across the buffer's chunk boundary, in capitals.
    #[test]
    fn hex_writes_every_byte() {
        let b: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        let mut out = String::from("x");
        hex(&mut out, "X'", &b);
        let want: String = b.iter().map(|x| format!("{x:02X}")).collect();
        assert_eq!(out, format!("xX'{want}'"));
        out.clear();
        hex(&mut out, "X'", &[]);
        assert_eq!(out, "X''");
    }

    /// A writer that has sent nothing: its queued text can be read.
    fn writer() -> MyWriter {
        let opts = Opts::from_url("mysql://root@127.0.0.1:9/none").expect("url");
        let durability = Arc::new(Durability::new(false, Pool::new(opts.clone())));
        let mut w = MyWriter::new(opts, Arc::default(), durability, false);
        w.epoch = 1;
        w
    }

    fn kv(key: &[u8], value: &[u8], revision: i64) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: 0,
        }
    }

    fn upsert(kv: KeyValue) -> Upsert {
        Upsert {
            kv,
            index: None,
            rows_held: None,
            absent: false,
        }
    }

    /// On MariaDB, a transaction's first large values are bound, not
    /// written: the text names their variables and sets only later ones.
    #[tokio::test]
    async fn large_first_values_are_bound() {
        let mut w = writer();
        w.compound = true;
        let big: Vec<Upsert> = (0..20u8)
            .map(|i| upsert(kv(&[b'k', i], &[i; 1024], 5)))
            .collect();
        w.upsert_live(&big).await.expect("queued");
        assert_eq!(w.bound.len(), 20);
        assert_eq!(w.bound_bytes(), 20 * 1024);
        assert!(matches!(&w.bound[3], Value::Bytes(v) if *v == [3u8; 1024]));
        let text = w.queued.clone();
        assert!(!text.contains("SET") && text.contains("@e19"), "{text}");
        // A later chunk's values are written inline, numbered on.
        w.upsert_live(&[upsert(kv(b"z", b"vz", 6))])
            .await
            .expect("queued");
        assert!(w.queued.contains("SET @e20 = X'767A';"), "{}", w.queued);
        assert_eq!(w.bound.len(), 20);
        // Small first values are written inline.
        w.reset();
        assert!(w.bound.is_empty() && w.bound_bytes() == 0);
        w.upsert_live(&big[..2]).await.expect("queued");
        assert!(w.bound.is_empty() && w.queued.contains("SET @e0 = X'"));
        assert_eq!(set_bound(2), "SET @e0 = ?, @e1 = ?");
    }

    #[tokio::test]
    async fn a_value_is_sent_once() {
        let mut w = writer();
        let (a, b) = (kv(b"a", b"va", 5), kv(b"b", b"vb", 6));
        w.upsert_live(&[upsert(a.clone()), upsert(b.clone())])
            .await
            .expect("queued");
        let mut deleted = HistoryRow::put(&kv(b"c", b"", 7), 7, 0, 3);
        deleted.deleted = true;
        let history = [
            HistoryRow::put(&a, 5, 0, 0),
            HistoryRow::put(&b, 6, 0, 0),
            // Same key, another revision: not the upsert's value.
            HistoryRow::put(&kv(b"a", b"old", 4), 4, 0, 0),
            deleted,
        ];
        w.insert_history(&history, 9).await.expect("queued");
        let text = &w.queued;
        // Nothing was sent: a text must not start with the SET.
        assert!(
            text.starts_with("DO 0;SET @e0 = X'7661', @e1 = X'7662';"),
            "{text}"
        );
        assert_eq!(text.matches("X'7661'").count(), 1, "{text}");
        assert_eq!(text.matches("X'7662'").count(), 1, "{text}");
        let (live, hist) = text
            .split_once("INSERT INTO etcdsql_history")
            .expect("history");
        assert!(live.contains("(X'61', @e0, 5, 5,") && live.contains("(X'62', @e1, 6, 6,"));
        assert!(hist.contains("(5, 0, X'61', @e0,") && hist.contains("(6, 0, X'62', @e1,"));
        assert!(hist.contains("(4, 0, X'61', X'6F6C64',"), "{hist}");
        assert!(hist.contains("(7, 0, X'63', X'',"), "{hist}");
        assert_eq!(w.queued_n, 4, "DO, SET and the two INSERTs");
        // A new transaction starts without variables.
        w.reset();
        w.insert_history(&history[..1], 9).await.expect("queued");
        assert!(w.queued.contains("X'7661'") && !w.queued.contains('@'));
    }

    #[test]
    fn chunks_respect_rows_and_bytes() {
        let small = vec![1u8; 1000];
        let c = chunks(&small, |_| 1);
        assert_eq!(
            c.iter().map(|c| c.len()).collect::<Vec<_>>(),
            vec![500, 500]
        );
        let big = vec![0u8; 3];
        let c = chunks(&big, |_| CHUNK_BYTES);
        assert_eq!(c.len(), 3, "one oversized row per statement");
        assert!(chunks(&Vec::<u8>::new(), |_| 1).is_empty());
    }
}
