//! SQLite, the embedded default: a WAL-mode file with `synchronous=FULL`
//! (every commit is on disk before it is acknowledged, but a batch of lease
//! renewals only: see [`Writer::durable`]), a pool of sqlx
//! connections, range readers and one writer connection on rusqlite.
//! `BEGIN IMMEDIATE` takes the database's write lock, which also serialises
//! several etcdsql processes sharing one file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, Sqlite};

use super::sql::{self, Dialect, Param, Statement};
use super::{
    Backend, Columns, DbError, HistoryRow, KeyEnd, Kind, LeaseRow, Meta, RangeFold, RangeQuery,
    RangeRows, Rows, Selectable, Upsert, Writer, decode_kv, decode_lease, decode_meta,
    decode_range, first_bytes,
};
use crate::proto::mvccpb::KeyValue;

pub(crate) const DIALECT: Dialect = Dialect {
    numbered: false,
    null_bytes: "CAST(NULL AS BLOB)",
    no_index: "+",
    revision_index: false,
    names_hint: "",
    by_names_hint: "",
    update_limit: false,
    json_param: "",
    insert_or_ignore: "INSERT OR IGNORE",
    insert_or_ignore_tail: "",
    insert_whole: "INSERT OR FAIL",
    purge_superseded: "DELETE FROM etcdsql_history WHERE (name, revision) IN \
    (SELECT name, prev_revision FROM etcdsql_history \
     WHERE revision > ? AND revision <= ? AND prev_revision > 0)",
    history_parts: false,
    json: sql::Json::Sqlite,
    meta_apart: true,
    paren_parts: false,
};

const LEASE_KEYS: &str = "SELECT name FROM etcdsql_live WHERE lease = ? ORDER BY name";

fn classify(e: sqlx::Error) -> DbError {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let msg = format!("{} ({code})", db.message());
            // The primary result code is the low byte of an extended code.
            match code.parse::<i64>().map(|c| c & 0xff) {
                // SQLITE_BUSY, SQLITE_LOCKED
                Ok(5 | 6) => DbError::Retry(msg),
                // SQLITE_TOOBIG
                Ok(18) => DbError::Rejected(msg),
                _ => DbError::Other(msg),
            }
        }
        sqlx::Error::Io(e) => DbError::Unavailable(e.to_string()),
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => DbError::Unavailable(e.to_string()),
        other => DbError::Other(other.to_string()),
    }
}

type Query = sqlx::query::Query<'static, Sqlite, SqliteArguments>;

fn query(text: impl Into<String>, p: &[Param]) -> Query {
    let mut q = sqlx::query(AssertSqlSafe(text.into()));
    for p in p {
        q = match p {
            Param::Bytes(b) => q.bind(b.clone()),
            Param::Int(i) => q.bind(*i),
            Param::Text(t) => q.bind(t.clone()),
            Param::Null => q.bind(None::<String>),
        };
    }
    q
}

impl Columns for SqliteRow {
    fn int(&self, i: usize) -> Result<i64, DbError> {
        self.try_get(i).map_err(classify)
    }

    fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, DbError> {
        self.try_get(i).map_err(classify)
    }

    fn int_opt(&self, i: usize) -> Result<Option<i64>, DbError> {
        self.try_get(i).map_err(classify)
    }
}

/// How long a statement waits for a lock another connection holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SqliteBackend {
    pool: SqlitePool,
    readers: Arc<Readers>,
}

/// Connections that read ranges, on rusqlite rather than sqlx: sqlx copies
/// every column of every row (`sqlite3_value_dup`, an allocation each) into
/// its row type and hands rows over one at a time from its connection's
/// thread; here a blocking task steps the statement and decodes each row
/// in place. At most [`READERS`] run at once; idle ones are kept.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
    permits: tokio::sync::Semaphore,
}

/// Ranges read at once on SQLite (each on its own connection).
const READERS: usize = 8;

impl Readers {
    fn open(&self) -> Result<rusqlite::Connection, DbError> {
        // Range statements differ by options (limit, revision, count).
        open_rusqlite(&self.path, 64)
    }

    /// Runs `f` on an idle connection (or a new one) on this thread: for
    /// reads that take microseconds, where handing them to a blocking
    /// thread and back costs more than the read.
    fn inline<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => self.open()?,
        };
        let out = f(&conn);
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        out
    }

    /// Runs `f` on an idle connection (or a new one) on a blocking thread.
    async fn with<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| DbError::Other(e.to_string()))?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.inline(f))
            .await
            .map_err(|e| DbError::Other(format!("range reader: {e}")))?
    }
}

/// `s`'s rows folded as a range answer (see [`RangeFold`]).
fn read_range(c: &rusqlite::Connection, s: &Statement) -> Result<RangeFold, DbError> {
    let mut stmt = c.prepare_cached(&s.text).map_err(classify_rusqlite)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(s.params.iter()))
        .map_err(classify_rusqlite)?;
    let mut fold = RangeFold::default();
    while let Some(r) = rows.next().map_err(classify_rusqlite)? {
        fold.add(&ReaderRow(r))?;
    }
    Ok(fold)
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Param::Bytes(b) => ValueRef::Blob(b),
            Param::Int(i) => ValueRef::Integer(*i),
            Param::Text(t) => ValueRef::Text(t.as_bytes()),
            Param::Null => ValueRef::Null,
        }))
    }
}

/// A row of a [`Readers`] statement, read in place.
struct ReaderRow<'a>(&'a rusqlite::Row<'a>);

impl Columns for ReaderRow<'_> {
    fn int(&self, i: usize) -> Result<i64, DbError> {
        self.0.get(i).map_err(classify_rusqlite)
    }

    fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, DbError> {
        use rusqlite::types::ValueRef;
        match self.0.get_ref(i).map_err(classify_rusqlite)? {
            ValueRef::Null => Ok(None),
            ValueRef::Blob(b) | ValueRef::Text(b) => Ok(Some(b.to_vec())),
            v => Err(DbError::Other(format!(
                "column {i}: {} where bytes were expected",
                v.data_type()
            ))),
        }
    }

    fn int_opt(&self, i: usize) -> Result<Option<i64>, DbError> {
        self.0.get(i).map_err(classify_rusqlite)
    }
}

fn classify_rusqlite(e: rusqlite::Error) -> DbError {
    use rusqlite::ErrorCode;
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => DbError::Retry(e.to_string()),
            ErrorCode::TooBig => DbError::Rejected(e.to_string()),
            _ => DbError::Other(e.to_string()),
        },
        _ => DbError::Other(e.to_string()),
    }
}

impl SqliteBackend {
    pub async fn open(path: &Path) -> Result<Self, DbError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(classify)?;
        let readers = Arc::new(Readers {
            path: path.to_path_buf(),
            idle: Mutex::default(),
            permits: tokio::sync::Semaphore::new(READERS),
        });
        Ok(SqliteBackend { pool, readers })
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    fn kind(&self) -> Kind {
        Kind::Sqlite
    }

    fn sql(&self) -> Dialect {
        DIALECT
    }

    async fn fetch(&self, s: &Statement) -> Result<Rows, DbError> {
        let rows = query(s.text.clone(), &s.params)
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        Ok(super::boxed(rows))
    }

    async fn execute(&self, s: &Statement) -> Result<u64, DbError> {
        let r = query(s.text.clone(), &s.params)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(r.rows_affected())
    }

    async fn writer(&self) -> Result<Box<dyn Writer>, DbError> {
        Ok(Box::new(SqliteWriter {
            path: self.readers.path.clone(),
            conn: None,
            revisions: 0,
            found: None,
            durable: true,
            synchronous_full: Some(true),
        }))
    }

    async fn fetch_range(&self, s: &Statement) -> Result<RangeFold, DbError> {
        let s = s.clone();
        self.readers.with(move |c| read_range(c, &s)).await
    }

    async fn range(&self, q: &RangeQuery) -> Result<RangeRows, DbError> {
        let s = sql::range(DIALECT, q, None);
        let fold = if q.end == KeyEnd::Single {
            // One key: an index lookup, read here.
            self.readers.inline(|c| read_range(c, &s))?
        } else {
            self.readers.with(move |c| read_range(c, &s)).await?
        };
        Ok(fold.finish(q))
    }

    async fn checkpoint(&self) -> Result<(), DbError> {
        // PASSIVE: copies what no reader still needs, without waiting for
        // or blocking the writer, which goes on appending to the log.
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.pool)
            .await
            .map_err(classify)
            .map(drop)
    }

    async fn db_size(&self) -> Result<i64, DbError> {
        let s = self.statement(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            &[],
        );
        let rows = self.fetch(&s).await?;
        rows.first().map_or(Ok(0), |r| r.int(0))
    }
}

/// The committer's page cache (`PRAGMA cache_size`; negative is KiB).
const WRITER_CACHE: &str = "-16384";
/// Log pages (4 KiB) past which the committer checkpoints the log itself
/// when a commit ends. Below it that is left to [`Backend::checkpoint`]:
/// at SQLite's default (1000) the committer spent a fifth of its time
/// copying the log, on every write's path.
const WRITER_AUTOCHECKPOINT: &str = "16384";

/// The write connection, on rusqlite. Statements run on the caller's task:
/// against the page cache they take microseconds, and sqlx's handing of
/// each statement to its connection thread and back cost two thread
/// switches apiece, seven times a batch. BEGIN IMMEDIATE (which may wait for
/// another connection's write lock) runs on a blocking thread, and so does
/// the COMMIT (which waits for the fsync) of a large batch: see
/// [`INLINE_COMMIT_REVISIONS`].
struct SqliteWriter {
    path: PathBuf,
    conn: Option<rusqlite::Connection>,
    /// History rows written in this transaction ([`Writer::begin`]
    /// starts every one, and resets it).
    revisions: usize,
    /// The revision row as this transaction's BEGIN found it.
    found: Option<Meta>,
    /// The next transaction's COMMIT waits for its fsync ([`Writer::durable`]).
    durable: bool,
    /// `conn`'s `synchronous`: FULL (true, as opened) or NORMAL; `None`
    /// where a change may have failed halfway.
    synchronous_full: Option<bool>,
}

/// A transaction of at most this many history rows commits on the
/// committer's task, where the runtime has another worker to go on with:
/// the blocking thread's wake-up and the wake-up back cost a lone put
/// up to a tenth of its latency (docs/benchmarks.md, stop 47). A
/// larger batch means load, where those shared wake-ups cost each request
/// little and the worker is worth keeping free for the fsync's duration.
const INLINE_COMMIT_REVISIONS: usize = 16;

/// A row read by the writer, its columns owned.
struct OwnedRow(Vec<rusqlite::types::Value>);

impl Columns for OwnedRow {
    fn int(&self, i: usize) -> Result<i64, DbError> {
        match self.0.get(i) {
            Some(rusqlite::types::Value::Integer(v)) => Ok(*v),
            v => Err(DbError::Other(format!(
                "column {i}: {v:?} where an integer was expected"
            ))),
        }
    }

    fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, DbError> {
        use rusqlite::types::Value;
        match self.0.get(i) {
            Some(Value::Null) => Ok(None),
            Some(Value::Blob(b)) => Ok(Some(b.clone())),
            Some(Value::Text(t)) => Ok(Some(t.clone().into_bytes())),
            v => Err(DbError::Other(format!(
                "column {i}: {v:?} where bytes were expected"
            ))),
        }
    }

    fn int_opt(&self, i: usize) -> Result<Option<i64>, DbError> {
        match self.0.get(i) {
            Some(rusqlite::types::Value::Null) => Ok(None),
            _ => self.int(i).map(Some),
        }
    }
}

/// A rusqlite connection to the database file (which the pool created),
/// with the busy timeout and room for `statements` prepared statements.
fn open_rusqlite(path: &Path, statements: usize) -> Result<rusqlite::Connection, DbError> {
    use rusqlite::OpenFlags;
    let c = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(classify_rusqlite)?;
    c.busy_timeout(BUSY_TIMEOUT).map_err(classify_rusqlite)?;
    c.set_prepared_statement_cache_capacity(statements);
    Ok(c)
}

/// Opens the write connection with the pool's settings (WAL, `synchronous =
/// FULL`, the busy timeout) and the committer's own: SQLite's default page
/// cache is 2 MiB, beyond which every batch re-read index pages with a
/// pread each; and a multi-row statement keeps a statement journal (to undo
/// itself alone), which on disk was 8% of the writer's time.
fn open_writer(path: &Path) -> Result<rusqlite::Connection, DbError> {
    // Multi-row statements come in power-of-two sizes (row_chunks).
    let c = open_rusqlite(path, 128)?;
    c.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
         PRAGMA cache_size = {WRITER_CACHE}; \
         PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT}; \
         PRAGMA temp_store = MEMORY;"
    ))
    .map_err(classify_rusqlite)?;
    Ok(c)
}

const READ_META: &str = "SELECT revision, compact_revision FROM etcdsql_meta WHERE id = 1";

fn read_meta(c: &rusqlite::Connection) -> Result<Meta, DbError> {
    decode_meta(&fetch_on(c, READ_META, &[])?)
}

/// `BEGIN IMMEDIATE` and the revision row, or `None` where another
/// connection holds the write lock (nothing begun).
fn begin_unless_busy(c: &rusqlite::Connection) -> Result<Option<Meta>, DbError> {
    c.busy_timeout(Duration::ZERO).map_err(classify_rusqlite)?;
    let begun = c.execute_batch("BEGIN IMMEDIATE");
    c.busy_timeout(BUSY_TIMEOUT).map_err(classify_rusqlite)?;
    match begun {
        Ok(()) => read_meta(c).map(Some),
        Err(rusqlite::Error::SqliteFailure(f, _))
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(classify_rusqlite(e)),
    }
}

/// `text`'s rows on `c`.
fn fetch_on(c: &rusqlite::Connection, text: &str, p: &[Param]) -> Result<Vec<OwnedRow>, DbError> {
    let mut stmt = c.prepare_cached(text).map_err(classify_rusqlite)?;
    let n = stmt.column_count();
    let mut rows = stmt
        .query(rusqlite::params_from_iter(p.iter()))
        .map_err(classify_rusqlite)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(classify_rusqlite)? {
        let mut cols = Vec::with_capacity(n);
        for i in 0..n {
            cols.push(
                r.get::<_, rusqlite::types::Value>(i)
                    .map_err(classify_rusqlite)?,
            );
        }
        out.push(OwnedRow(cols));
    }
    Ok(out)
}

/// Runs `text` on `c` (rows it returns, if any, are passed over); returns
/// rows changed.
fn exec_on(c: &rusqlite::Connection, text: &str, p: &[Param]) -> Result<u64, DbError> {
    let mut stmt = c.prepare_cached(text).map_err(classify_rusqlite)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(p.iter()))
        .map_err(classify_rusqlite)?;
    while rows.next().map_err(classify_rusqlite)?.is_some() {}
    drop(rows);
    Ok(if stmt.readonly() { 0 } else { c.changes() })
}

impl SqliteWriter {
    fn conn(&self) -> Result<&rusqlite::Connection, DbError> {
        self.conn
            .as_ref()
            .ok_or_else(|| DbError::Unavailable("no connection".into()))
    }

    fn fetch(&self, text: impl AsRef<str>, p: &[Param]) -> Result<Vec<OwnedRow>, DbError> {
        fetch_on(self.conn()?, text.as_ref(), p)
    }

    /// One statement in the transaction; returns rows affected.
    fn exec(&self, text: impl AsRef<str>, p: &[Param]) -> Result<u64, DbError> {
        exec_on(self.conn()?, text.as_ref(), p)
    }

    /// Live rows by `text` (a row tuple between its head and tail).
    fn write_live(&self, rows: &[&Upsert], text: (&str, &str, &str)) -> Result<(), DbError> {
        for chunk in row_chunks(rows) {
            let mut p = Vec::with_capacity(chunk.len() * 8);
            for k in chunk {
                p.extend([
                    Param::Bytes(k.key.clone()),
                    Param::Bytes(k.value.clone()),
                    Param::Int(k.create_revision),
                    Param::Int(k.mod_revision),
                    Param::Int(k.version),
                    Param::Int(k.lease),
                    Param::text_or_null(k.labels()),
                    Param::text_or_null(k.fields()),
                ]);
            }
            self.exec(rows_text(text, chunk.len()), &p)?;
        }
        Ok(())
    }

    /// Runs `f` on the connection (opened first if need be) on a blocking
    /// thread. A connection whose thread failed is dropped and reopened
    /// next time.
    async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let conn = self.conn.take();
        let path = self.path.clone();
        let (conn, out) = tokio::task::spawn_blocking(move || {
            let conn = match conn {
                Some(c) => c,
                None => open_writer(&path)?,
            };
            let out = f(&conn);
            Ok::<_, DbError>((conn, out))
        })
        .await
        .map_err(|e| DbError::Other(format!("sqlite writer: {e}")))??;
        self.conn = Some(conn);
        out
    }
}

const UPSERT_LIVE: (&str, &str, &str) = (
    "INSERT INTO etcdsql_live \
     (name, value, create_revision, mod_revision, version, lease, labels, fields) VALUES ",
    "(?, ?, ?, ?, ?, ?, ?, ?)",
    " ON CONFLICT (name) DO UPDATE SET value = excluded.value, \
     create_revision = excluded.create_revision, mod_revision = excluded.mod_revision, \
     version = excluded.version, lease = excluded.lease, labels = excluded.labels, \
     fields = excluded.fields",
);
/// [`UPSERT_LIVE`] for rows known to be new.
const INSERT_LIVE: (&str, &str, &str) = (
    "INSERT OR FAIL INTO etcdsql_live \
     (name, value, create_revision, mod_revision, version, lease, labels, fields) VALUES ",
    "(?, ?, ?, ?, ?, ?, ?, ?)",
    "",
);
/// `OR FAIL`: see [`Dialect::insert_whole`].
const INSERT_HISTORY: (&str, &str, &str) = (
    "INSERT OR FAIL INTO etcdsql_history \
     (revision, sub, name, value, create_revision, version, lease, deleted, prev_revision, \
     labels, fields, batch) VALUES ",
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "",
);

/// Rows in the largest multi-row statement (12 parameters a row, within
/// SQLite's 32766). A power of two: see [`row_chunks`].
const MAX_ROWS: usize = 512;

/// Splits `rows` into statements of power-of-two sizes, largest first
/// (37 → 32, 4, 1). Each statement goes to SQLite's thread as one message
/// instead of one per row, and a writer prepares at most ten texts of
/// each kind, which sqlx's statement cache (keyed by text) keeps.
fn row_chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = rest.len().min(MAX_ROWS);
        let (chunk, tail) = rest.split_at(1 << n.ilog2());
        rest = tail;
        Some(chunk)
    })
}

/// `head` + `n` copies of `tuple`, comma-separated, + `tail`.
fn rows_text((head, tuple, tail): (&str, &str, &str), n: usize) -> String {
    let mut t = String::with_capacity(head.len() + n * (tuple.len() + 2) + tail.len());
    t.push_str(head);
    for i in 0..n {
        if i > 0 {
            t.push_str(", ");
        }
        t.push_str(tuple);
    }
    t.push_str(tail);
    t
}

#[async_trait]
impl Writer for SqliteWriter {
    async fn begin(&mut self) -> Result<Meta, DbError> {
        // The write lock is taken on this task where nobody holds it: a
        // blocking thread and back cost more than the BEGIN. Only another
        // process sharing the file makes it wait, and that wait runs on a
        // blocking thread.
        self.revisions = 0;
        self.found = None;
        // The level is set between transactions only. With NORMAL a
        // commit is in the log, and in the OS's cache, when it returns;
        // the next FULL commit's fsync takes it to disk with its own.
        let durable = self.durable;
        let synchronous = if durable {
            "PRAGMA synchronous = FULL"
        } else {
            "PRAGMA synchronous = NORMAL"
        };
        let meta = match &self.conn {
            Some(c) => {
                if self.synchronous_full != Some(durable) {
                    self.synchronous_full = None;
                    c.execute_batch(synchronous).map_err(classify_rusqlite)?;
                    self.synchronous_full = Some(durable);
                }
                begin_unless_busy(c)?
            }
            None => None,
        };
        let meta = match meta {
            Some(meta) => meta,
            None => {
                // Set again: the connection may be new.
                self.synchronous_full = None;
                let meta = self
                    .blocking(move |c| {
                        c.execute_batch(synchronous).map_err(classify_rusqlite)?;
                        exec_on(c, "BEGIN IMMEDIATE", &[])?;
                        read_meta(c)
                    })
                    .await?;
                self.synchronous_full = Some(durable);
                meta
            }
        };
        self.found = Some(meta);
        Ok(meta)
    }

    fn durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    async fn get(&mut self, keys: &[Vec<u8>]) -> Result<Vec<KeyValue>, DbError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in row_chunks(keys) {
            let text = sql::in_list(
                "SELECT name, value, create_revision, mod_revision, version, lease \
                 FROM etcdsql_live WHERE name IN",
                chunk.len(),
            );
            let p: Vec<Param> = chunk.iter().map(|k| Param::Bytes(k.clone())).collect();
            for r in self.fetch(text, &p)? {
                out.extend(decode_kv(&r, 0)?);
            }
        }
        Ok(out)
    }

    async fn range(&mut self, q: &RangeQuery) -> Result<RangeRows, DbError> {
        let s = sql::range(DIALECT, q, None);
        decode_range(q, &self.fetch(s.text, &s.params)?)
    }

    async fn leases(&mut self, ids: &[i64]) -> Result<Vec<LeaseRow>, DbError> {
        let mut out = Vec::new();
        for chunk in row_chunks(ids) {
            let p: Vec<Param> = chunk.iter().map(|id| Param::Int(*id)).collect();
            let text = sql::in_list(
                "SELECT id, ttl, expires_at_ms FROM etcdsql_lease WHERE id IN",
                chunk.len(),
            );
            for r in self.fetch(text, &p)? {
                out.push(decode_lease(&r)?);
            }
        }
        Ok(out)
    }

    async fn lease_keys(&mut self, id: i64) -> Result<Vec<Vec<u8>>, DbError> {
        let rows = self.fetch(LEASE_KEYS, &[Param::Int(id)])?;
        first_bytes(&rows)
    }

    fn dialect(&self) -> Dialect {
        DIALECT
    }

    async fn delete_live(
        &mut self,
        names: &[&Vec<u8>],
        _default_only: bool,
    ) -> Result<(), DbError> {
        // No partitions: `default_only` never comes.
        for chunk in row_chunks(names) {
            let p: Vec<Param> = chunk.iter().map(|k| Param::Bytes(k.to_vec())).collect();
            self.exec(
                sql::in_list("DELETE FROM etcdsql_live WHERE name IN", chunk.len()),
                &p,
            )?;
        }
        Ok(())
    }

    async fn upsert_live(&mut self, rows: &[Upsert]) -> Result<(), DbError> {
        // Rows known to be new go by a plain INSERT, which keeps no
        // statement journal; an upsert's update part always may (see
        // [`Dialect::insert_whole`]).
        let (new, rest): (Vec<&Upsert>, Vec<&Upsert>) = rows.iter().partition(|u| u.absent);
        for (rows, text) in [(new, INSERT_LIVE), (rest, UPSERT_LIVE)] {
            self.write_live(&rows, text)?;
        }
        Ok(())
    }

    async fn insert_history(&mut self, rows: &[HistoryRow], batch: i64) -> Result<(), DbError> {
        for chunk in row_chunks(rows) {
            let mut p = Vec::with_capacity(chunk.len() * 12);
            for h in chunk {
                p.extend([
                    Param::Int(h.revision),
                    Param::Int(i64::from(h.sub)),
                    Param::Bytes(h.key.clone()),
                    Param::Bytes(h.value.clone()),
                    Param::Int(h.create_revision),
                    Param::Int(h.version),
                    Param::Int(h.lease),
                    Param::Int(i64::from(h.deleted)),
                    Param::Int(h.prev_revision),
                    Param::text_or_null(h.labels()),
                    Param::text_or_null(h.fields()),
                    Param::Int(batch),
                ]);
            }
            self.exec(rows_text(INSERT_HISTORY, chunk.len()), &p)?;
        }
        self.revisions += rows.len();
        Ok(())
    }

    async fn upsert_leases(&mut self, rows: &[LeaseRow]) -> Result<(), DbError> {
        for l in rows {
            self.exec(
                "INSERT INTO etcdsql_lease (id, ttl, expires_at_ms) VALUES (?, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET ttl = excluded.ttl, expires_at_ms = excluded.expires_at_ms",
                &[Param::Int(l.id), Param::Int(l.ttl), Param::Int(l.expires_at_ms)],
            )?;
        }
        Ok(())
    }

    async fn delete_leases(&mut self, ids: &[i64]) -> Result<(), DbError> {
        for chunk in row_chunks(ids) {
            let p: Vec<Param> = chunk.iter().map(|id| Param::Int(*id)).collect();
            self.exec(
                sql::in_list("DELETE FROM etcdsql_lease WHERE id IN", chunk.len()),
                &p,
            )?;
        }
        Ok(())
    }

    async fn execute(&mut self, s: &Statement) -> Result<u64, DbError> {
        self.exec(&s.text, &s.params)
    }

    async fn rows(&mut self, s: &Statement) -> Result<Rows, DbError> {
        Ok(super::boxed(self.fetch(&s.text, &s.params)?))
    }

    async fn commit(&mut self, meta: Meta) -> Result<(), DbError> {
        // A batch that leaves the row as it found it (lease grants and
        // renewals) does not rewrite its page.
        if self.found != Some(meta) {
            self.exec(
                "UPDATE etcdsql_meta SET revision = ?, compact_revision = ? WHERE id = 1",
                &[Param::Int(meta.revision), Param::Int(meta.compact_revision)],
            )?;
        }
        if self.revisions <= INLINE_COMMIT_REVISIONS
            && tokio::runtime::Handle::current().metrics().num_workers() > 1
        {
            return self.exec("COMMIT", &[]).map(drop);
        }
        self.blocking(|c| exec_on(c, "COMMIT", &[]).map(drop)).await
    }

    async fn rollback(&mut self) {
        if self.exec("ROLLBACK", &[]).is_err() {
            self.conn = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SqliteWriter;
    use crate::backend::Writer;

    fn synchronous(w: &SqliteWriter) -> i64 {
        let c = w.conn.as_ref().expect("connection");
        c.query_row("PRAGMA synchronous", [], |r| r.get(0))
            .expect("PRAGMA synchronous")
    }

    /// A transaction begun after `durable(false)` commits at NORMAL (1),
    /// one after `durable(true)` at FULL (2) again, also on a new
    /// connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn synchronous_follows_durable() {
        let dir = std::env::temp_dir().join(format!("etcdsql-sync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("etcdsql.db");
        let dsn = crate::backend::dsn::Dsn::Sqlite(path.clone());
        drop(
            crate::server::open_backend(&dsn, true, false)
                .await
                .expect("migrated"),
        );
        let mut w = SqliteWriter {
            path,
            conn: None,
            revisions: 0,
            found: None,
            durable: true,
            synchronous_full: Some(true),
        };
        let mut levels = Vec::new();
        for (durable, drop_conn) in [
            (true, false),
            (false, false),
            (false, false),
            (true, false),
            (false, true),
            (true, true),
        ] {
            if drop_conn {
                w.conn = None;
            }
            w.durable(durable);
            w.begin().await.expect("begin");
            levels.push(synchronous(&w));
            w.commit(w.found.expect("found")).await.expect("commit");
        }
        assert_eq!(levels, [2, 1, 1, 2, 1, 2]);
        std::fs::remove_dir_all(&dir).expect("removed");
    }
}
