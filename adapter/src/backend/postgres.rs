//! PostgreSQL (also CockroachDB over the same protocol) on tokio-postgres:
//! a deadpool pool for reads, one dedicated connection for the committer.
//! Bulk writes bind whole columns as arrays and `UNNEST` them, so a batch of
//! any size is one statement per table.

use std::collections::HashMap;
use std::error::Error as _;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;

use futures::future::{BoxFuture, MaybeDone, maybe_done};
use futures::{FutureExt, StreamExt, TryFutureExt};
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{AsyncMessage, Client, NoTls, Row};

use super::sql::{self, Dialect, Param, Statement};
use super::{
    AssumedLeases, Backend, Began, Columns, DbError, HistoryRow, Holds, Kind, LeaseRow, Meta,
    PartitionInfo, Partitions, Promoted, RangeFold, RangeQuery, RangeRows, Rows, Selectable,
    Upsert, Writer, decode_kv, decode_lease, decode_range, first_bytes, first_ints,
};
use crate::proto::mvccpb::KeyValue;
use etcdsql_partitions::{Registry, ddl};

/// How long a DROP of a compacted epoch may wait for running reads before
/// it gives up (the next compaction tries again).
const DROP_LOCK_TIMEOUT: &str = "10s";

pub(crate) const DIALECT: Dialect = Dialect {
    numbered: true,
    null_bytes: "NULL::bytea",
    no_index: "",
    revision_index: false,
    names_hint: "",
    by_names_hint: "",
    update_limit: false,
    json_param: "::text::jsonb",
    insert_or_ignore: "INSERT",
    insert_or_ignore_tail: " ON CONFLICT DO NOTHING",
    insert_whole: "INSERT",
    purge_superseded: "DELETE FROM etcdsql_history h USING etcdsql_history n \
    WHERE n.revision > ? AND n.revision <= ? AND n.prev_revision > 0 \
    AND h.name = n.name AND h.revision = n.prev_revision",
    history_parts: true,
    json: sql::Json::Postgres,
    meta_apart: false,
    paren_parts: false,
};

pub const GET: &str = "SELECT name, value, create_revision, mod_revision, version, lease \
                   FROM etcdsql_live WHERE name = ANY($1)";
const UPSERT_LIVE: &str = "INSERT INTO etcdsql_live \
    (name, value, create_revision, mod_revision, version, lease, part, labels, fields) \
    SELECT * FROM UNNEST($1::bytea[], $2::bytea[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], \
    $7::text[], $8::text[]::jsonb[], $9::text[]::jsonb[]) \
    ON CONFLICT (name, part) DO UPDATE SET value = EXCLUDED.value, \
    create_revision = EXCLUDED.create_revision, mod_revision = EXCLUDED.mod_revision, \
    version = EXCLUDED.version, lease = EXCLUDED.lease, labels = EXCLUDED.labels, \
    fields = EXCLUDED.fields";
/// [`UPSERT_LIVE`] for rows known to be new: a plain INSERT skips the
/// check for a conflicting row before each (15% of the statement's time).
const INSERT_LIVE: &str = "INSERT INTO etcdsql_live \
    (name, value, create_revision, mod_revision, version, lease, part, labels, fields) \
    SELECT * FROM UNNEST($1::bytea[], $2::bytea[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], \
    $7::text[], $8::text[]::jsonb[], $9::text[]::jsonb[])";
pub const DELETE_LIVE: &str = "DELETE FROM etcdsql_live WHERE name = ANY($1)";
/// Rows of resources being moved to their own partition that are still in
/// the default one; an update re-inserts them in the resource's partition.
const DELETE_DEFAULT: &str = "DELETE FROM etcdsql_live WHERE part = '' AND name = ANY($1)";
const INSERT_HISTORY: &str = "INSERT INTO etcdsql_history \
    (revision, sub, name, value, create_revision, version, lease, deleted, prev_revision, part, \
    labels, fields, epoch, batch) \
    SELECT *, $13::int8, $14::int8 FROM UNNEST($1::int8[], $2::int4[], $3::bytea[], $4::bytea[], $5::int8[], \
    $6::int8[], $7::int8[], $8::int2[], $9::int8[], $10::text[], $11::text[]::jsonb[], \
    $12::text[]::jsonb[])";
const UPSERT_LEASE: &str = "INSERT INTO etcdsql_lease (id, ttl, expires_at_ms) \
    SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[]) \
    ON CONFLICT (id) DO UPDATE SET ttl = EXCLUDED.ttl, expires_at_ms = EXCLUDED.expires_at_ms";
const DELETE_LEASE: &str = "DELETE FROM etcdsql_lease WHERE id = ANY($1)";
/// [`Writer::check_assumed`]'s statement and its parameters: divides by
/// zero unless the revision row is `meta`, `version` and `epoch` and the
/// leases are as assumed; with the revision row as assumed, takes the
/// logarithm of zero if one of `absent` exists (the error tells
/// [`DbError::Existed`] apart). It runs after
/// LOCK_META, so every other writer has committed or not started. Behind a
/// proxy tier the comment keeps it on the primary. The text has only the
/// terms a batch needs: where the writer's connection plans a statement
/// for its parameters, the lease terms' subqueries cost more to plan than
/// to run (93 µs a batch in all). After [`LOCK_META_INDEXED`] it runs on
/// the transaction's generic plans, made once per shape. Otherwise, with
/// `generic`, the statement also switches the rest of the transaction to
/// generic plans, as [`GENERIC_PLANS`] would in a statement (and a reply)
/// of its own.
pub fn check_assumed(
    meta: Meta,
    version: i64,
    epoch: i64,
    absent: &[Vec<u8>],
    leases: &AssumedLeases,
    generic: bool,
) -> (String, Vec<Owned>) {
    const META: &str = "m.revision = $1 AND m.compact_revision = $2 \
         AND m.partitions_version = $3 AND m.epoch = $4";
    let mut t = format!("/*NO LOAD BALANCE*/ SELECT 1 / (CASE WHEN {META}");
    let mut params: Vec<Owned> = vec![
        Box::new(meta.revision),
        Box::new(meta.compact_revision),
        Box::new(version),
        Box::new(epoch),
    ];
    // The placeholder of the next parameter.
    let mut bind = |p: Owned| {
        params.push(p);
        params.len()
    };
    if !leases.ttls.is_empty() {
        let ids = bind(Box::new(
            leases.ttls.iter().map(|l| l.0).collect::<Vec<i64>>(),
        ));
        // Each lease as "id ttl" too: plain operators match the pairs.
        let pairs = bind(Box::new(
            leases
                .ttls
                .iter()
                .map(|(id, ttl)| format!("{id} {ttl}"))
                .collect::<Vec<String>>(),
        ));
        let count = bind(Box::new(
            i64::try_from(leases.ttls.len()).unwrap_or(i64::MAX),
        ));
        let _ = write!(
            t,
            " AND (SELECT count(*) FROM etcdsql_lease WHERE id = ANY(${ids}) \
             AND (id::text || ' ' || ttl::text) = ANY(${pairs})) = ${count}"
        );
    }
    if !leases.unexpired.is_empty() {
        let ids = bind(Box::new(leases.unexpired.clone()));
        let now = bind(Box::new(leases.now_ms));
        let _ = write!(
            t,
            " AND NOT EXISTS (SELECT 1 FROM etcdsql_lease WHERE id = ANY(${ids}) \
             AND expires_at_ms <= ${now})"
        );
    }
    t.push_str(" THEN 1 ELSE 0 END)");
    if !absent.is_empty() {
        let names = bind(Box::new(absent.to_vec()));
        let _ = write!(
            t,
            " + ln(CASE WHEN {META} AND EXISTS (SELECT 1 FROM etcdsql_live \
             WHERE name = ANY(${names})) THEN 0 ELSE 1 END)"
        );
    }
    if generic {
        t.push_str(", set_config('plan_cache_mode', 'force_generic_plan', true)");
    }
    t.push_str(" FROM etcdsql_meta m WHERE m.id = 1");
    (t, params)
}
pub const LEASES: &str = "SELECT id, ttl, expires_at_ms FROM etcdsql_lease WHERE id = ANY($1)";
const LEASE_KEYS: &str = "SELECT name FROM etcdsql_live WHERE lease = $1 ORDER BY name";
/// Every commit notifies this channel; watch hubs in all processes listen.
const CHANNEL: &str = "etcdsql_commit";
/// A batch's last write: the revision row, and the notification of it
/// (`pg_notify` is NOTIFY as a function). Prepared and planned once where
/// the batch's writes are ([`GENERIC_PLANS`]): as a simple query its plan
/// took 30 µs a batch, twice its execution.
const COMMIT_META: &str = "UPDATE etcdsql_meta SET revision = $1, compact_revision = $2 \
    WHERE id = 1 RETURNING pg_notify('etcdsql_commit', revision::text)";
/// [`COMMIT_META`] without the notification, while no other process
/// listens ([`Postgres::alone`]).
const COMMIT_META_QUIET: &str =
    "UPDATE etcdsql_meta SET revision = $1, compact_revision = $2 WHERE id = 1";
/// The LISTEN that every process's hub runs, as `pg_stat_activity` shows it
/// for the connection, which runs nothing after it.
const LISTEN: &str = "LISTEN etcdsql_commit";
/// Other sessions on this database whose last statement is [`LISTEN`], or
/// whose statements this role may not see (counted, to be safe). `$1` is
/// the asking listener's own process id.
const OTHER_LISTENERS: &str = "SELECT count(*) FROM pg_stat_activity \
    WHERE datname = current_database() AND pid <> $1 \
    AND (query = 'LISTEN etcdsql_commit' OR query = '<insufficient privilege>')";
/// How often a listener counts the others ([`OTHER_LISTENERS`]).
const ALONE_CHECK: Duration = Duration::from_secs(1);

/// Why a statement failed, in the store's terms.
fn classify(e: &tokio_postgres::Error) -> DbError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let msg = format!("{} ({code})", db.message());
        return match code {
            // serialization_failure, deadlock_detected, lock_not_available
            "40001" | "40P01" | "55P03" => DbError::Retry(msg),
            // connection and operator-intervention classes, too many connections
            c if c.starts_with("08") || c.starts_with("57P") || c == "53300" => {
                DbError::Unavailable(msg)
            }
            // string_data_right_truncation, program_limit_exceeded
            "22001" | "54000" => DbError::Rejected(msg),
            _ => DbError::Other(msg),
        };
    }
    if e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>()) {
        return DbError::Unavailable(e.to_string());
    }
    DbError::Other(e.to_string())
}

fn pool_error(e: PoolError) -> DbError {
    match e {
        PoolError::Backend(e) => classify(&e),
        other => DbError::Unavailable(other.to_string()),
    }
}

impl ToSql for Param {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Param::Bytes(b), &Type::BYTEA) => b.to_sql(ty, out),
            (Param::Int(i), &Type::INT8) => i.to_sql(ty, out),
            // history.sub is INTEGER, deleted SMALLINT: out of range is an error.
            (Param::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Param::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Param::Text(t), &Type::TEXT) => t.to_sql(ty, out),
            (Param::Null, _) => Ok(IsNull::Yes),
            (p, ty) => Err(format!("parameter {p:?} bound to a {ty} column").into()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::BYTEA | Type::INT8 | Type::INT4 | Type::INT2 | Type::TEXT
        )
    }

    to_sql_checked!();
}

fn params(p: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    p.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl Columns for Row {
    fn int(&self, i: usize) -> Result<i64, DbError> {
        self.int_opt(i)?
            .ok_or_else(|| DbError::Other(format!("column {i} is NULL")))
    }

    fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, DbError> {
        if self
            .columns()
            .get(i)
            .is_some_and(|c| *c.type_() == Type::TEXT)
        {
            return self
                .try_get::<_, Option<String>>(i)
                .map(|v| v.map(String::into_bytes))
                .map_err(|e| classify(&e));
        }
        self.try_get(i).map_err(|e| classify(&e))
    }

    fn int_opt(&self, i: usize) -> Result<Option<i64>, DbError> {
        // deleted is SMALLINT, sub INTEGER
        match self.columns().get(i).map(|c| c.type_().clone()) {
            Some(Type::INT2) => self
                .try_get::<_, Option<i16>>(i)
                .map(|v| v.map(i64::from))
                .map_err(|e| classify(&e)),
            Some(Type::INT4) => self
                .try_get::<_, Option<i32>>(i)
                .map(|v| v.map(i64::from))
                .map_err(|e| classify(&e)),
            _ => self.try_get(i).map_err(|e| classify(&e)),
        }
    }
}

pub struct Postgres {
    config: tokio_postgres::Config,
    pool: Pool,
    partitions: Arc<Partitions>,
    /// PostgreSQL itself, not another database on its protocol
    /// (CockroachDB): commits may skip the flush ([`PgWriter::durable`])
    /// and a crash is told by [`RUN`].
    postgres: bool,
    /// No other process listens for commits, as this process's listener
    /// last counted: its commits need not notify ([`COMMIT_META_QUIET`]).
    /// A NOTIFY costs PostgreSQL the queue's lock and a signal to each
    /// listening backend, this process's own listener included.
    alone: Arc<AtomicBool>,
}

/// The server's run ([`Writer::incarnation`]): a token in an unlogged
/// table, which crash recovery empties and a promoted standby has empty.
/// Where no run is recorded yet, [`PROMOTE_LEASES`] records one.
const RUN: &str = "SELECT run FROM etcdsql_run WHERE id = 1";

/// [`super::promote_by_update`]'s UPDATE and the run it commits in, in one statement,
/// so in one transaction on one server; `$2` becomes the run where none is
/// recorded. (Where another process records one meanwhile, the statement's
/// snapshot sees neither and answers NULL: the next expiry promotes again.)
const PROMOTE_LEASES: &str = "WITH p AS (UPDATE etcdsql_lease SET expires_at_ms = $1 + ttl * 1000 \
     WHERE expires_at_ms < $1 + ttl * 1000 RETURNING 1), \
     r AS (INSERT INTO etcdsql_run (id, run) VALUES (1, $2) ON CONFLICT (id) DO NOTHING RETURNING run) \
     SELECT (SELECT count(*) FROM p), \
     COALESCE((SELECT run FROM r), (SELECT run FROM etcdsql_run WHERE id = 1))";

/// A renewal-only transaction's commit returns without waiting for the
/// WAL flush ([`PgWriter::durable`]).
const NOT_DURABLE: &str = "SET LOCAL synchronous_commit = off";

async fn connect(config: &tokio_postgres::Config) -> Result<Client, DbError> {
    let (client, conn) = config.connect(NoTls).await.map_err(|e| classify(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

/// The committer's connection. A generic plan made while a table is small
/// scans it whole (`name = ANY($1)` is estimated at 18 rows) and stays
/// cached until the table is next analyzed: 15 ms per batch at 20,000 rows.
/// Plans made for the actual parameters do not, so the connection asks for
/// them, in its startup packet rather than by a SET, which Pgpool-II would
/// send to every node. Where the setting is unknown (older CockroachDB),
/// plans are left as they are.
/// Answers whether the setting took, and whether the server has
/// `enable_seqscan` (see [`LOCK_META_INDEXED`]).
async fn connect_writer(config: &tokio_postgres::Config) -> Result<(Client, bool, bool), DbError> {
    const CUSTOM_PLANS: &str = "-c plan_cache_mode=force_custom_plan";
    let mut custom = config.clone();
    custom.options(&match config.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {CUSTOM_PLANS}"),
        _ => CUSTOM_PLANS.to_string(),
    });
    match connect(&custom).await {
        Err(e) if e.to_string().contains("plan_cache_mode") => {
            tracing::debug!(error = %e, "plan_cache_mode not set");
            Ok((connect(config).await?, false, false))
        }
        Err(e) => Err(e),
        Ok(c) => {
            let seqscan = c.simple_query("SHOW enable_seqscan").await.is_ok();
            Ok((c, true, seqscan))
        }
    }
}

/// [`super::LOCK_META`] that also switches the transaction to generic
/// plans made without sequential scans. Every statement of a batch finds
/// its rows by names, ids or revisions, on an index whatever the table's
/// size, so such a plan is made once per connection and stays right as the
/// tables grow. Planned for its parameters instead, the lookup of a batch's
/// keys took 70 µs of planning for 8 µs of execution. Later statements
/// that want plans for their parameters get both settings back
/// ([`PgWriter::plans`]).
pub const LOCK_META_INDEXED: &str = "SELECT revision, compact_revision, partitions_version, epoch, \
    set_config('plan_cache_mode', 'force_generic_plan', true), \
    set_config('enable_seqscan', 'off', true) \
    FROM etcdsql_meta WHERE id = 1 FOR UPDATE";
const SEQSCAN_AGAIN: &str = "SET LOCAL enable_seqscan TO DEFAULT";

/// Within a transaction: plans made once for the writes that insert
/// arrays of rows (their plan does not depend on the rows), then plans
/// for the parameters again ([`connect_writer`]) for what follows. A plan
/// per batch took 20–25 µs for each insert of one row, and grew with the
/// arrays' size.
const GENERIC_PLANS: &str = "SET LOCAL plan_cache_mode = force_generic_plan";
const CUSTOM_PLANS_AGAIN: &str = "SET LOCAL plan_cache_mode = force_custom_plan";

impl Postgres {
    pub async fn open(url: &str) -> Result<Self, DbError> {
        Self::open_with(url, None, None).await
    }

    /// The balanced side of a proxy tier: a pooled connection is replaced
    /// once [`BALANCED_MAX_AGE`] old. A proxy balances a session over the
    /// servers it had when the session began (Pgpool-II, PgCat in session
    /// mode), so without new sessions a standby back from a restart would
    /// get no reads.
    pub async fn open_balanced(url: &str) -> Result<Self, DbError> {
        Self::open_with(url, None, Some(BALANCED_MAX_AGE)).await
    }

    /// The primary's side of a proxy tier: every pooled connection starts
    /// with an empty transaction, which proxies send to the primary, so a
    /// proxy that pins a session to the server of its first statement
    /// (PgCat in session mode) pins it there. (Not a SET: Pgpool-II sends
    /// those to every node, and after a standby's restart its sessions
    /// failed with "there is already a transaction in progress".)
    pub async fn open_primary_side(url: &str) -> Result<Self, DbError> {
        Self::open_with(url, Some("BEGIN; COMMIT"), None).await
    }

    async fn open_with(
        url: &str,
        first: Option<&'static str>,
        max_age: Option<Duration>,
    ) -> Result<Self, DbError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| DbError::Other(format!("invalid postgres endpoint: {e}")))?;
        if config.get_connect_timeout().is_none() {
            // An unreachable host should fail a request, not hang it.
            config.connect_timeout(Duration::from_secs(5));
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let mut pool = Pool::builder(manager).max_size(32);
        if let Some(first) = first {
            pool = pool.post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
                Box::pin(async move {
                    client
                        .batch_execute(first)
                        .await
                        .map_err(deadpool_postgres::HookError::Backend)
                })
            }));
        }
        if let Some(max_age) = max_age {
            pool = pool.pre_recycle(deadpool_postgres::Hook::sync_fn(move |_, metrics| {
                // A refused connection is dropped and another one taken.
                if metrics.age() < max_age {
                    Ok(())
                } else {
                    Err(deadpool_postgres::HookError::Message("old".into()))
                }
            }));
        }
        let pool = pool.build().map_err(|e| DbError::Other(e.to_string()))?;
        let mut pg = Postgres {
            config,
            pool,
            partitions: Arc::default(),
            postgres: false,
            alone: Arc::default(),
        };
        let version = pg.query("SELECT version()", &[]).await?;
        pg.postgres = version
            .first()
            .and_then(|r| r.try_get::<_, String>(0).ok())
            .is_some_and(|v| v.starts_with("PostgreSQL"));
        pg.reload_partitions().await?;
        Ok(pg)
    }

    async fn query(&self, text: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, DbError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let stmt = client
            .prepare_cached(text)
            .await
            .map_err(|e| classify(&e))?;
        client.query(&stmt, p).await.map_err(|e| classify(&e))
    }
}

#[async_trait]
impl Backend for Postgres {
    fn kind(&self) -> Kind {
        Kind::Postgres
    }

    fn sql(&self) -> Dialect {
        DIALECT
    }

    fn partitions(&self) -> Option<&Partitions> {
        Some(&self.partitions)
    }

    fn epoch_ddl(&self, epoch: i64, parts: &[String]) -> Vec<String> {
        ddl::postgres_epoch(epoch, parts)
    }

    async fn drop_epoch_partition(&self, epoch: i64) -> Result<(), DbError> {
        self.batch(&format!(
            "SET lock_timeout = '{DROP_LOCK_TIMEOUT}'; {}; RESET lock_timeout",
            ddl::postgres_drop_epoch(epoch)
        ))
        .await
    }

    async fn create_resource_partitions(&self, part: &str) -> Result<(), DbError> {
        let epochs = first_ints(
            &self
                .fetch(&self.statement("SELECT epoch FROM etcdsql_epoch ORDER BY epoch", &[]))
                .await?,
        )?;
        for s in ddl::postgres_add(part, &epochs) {
            self.batch(&s).await?;
        }
        Ok(())
    }

    fn resource_ddl(&self, part: &str, epochs: &[i64]) -> Vec<String> {
        ddl::postgres_add(part, epochs)
    }

    async fn partition_list(&self) -> Result<Vec<PartitionInfo>, DbError> {
        let text = |r: &dyn Columns, i: usize| -> Result<String, DbError> {
            Ok(String::from_utf8_lossy(&r.bytes(i)?.unwrap_or_default()).into_owned())
        };
        let mut out = Vec::new();
        for table in ["etcdsql_live", "etcdsql_history"] {
            let mut counts = HashMap::new();
            let q = format!("SELECT tableoid::regclass::text, COUNT(*) FROM {table} GROUP BY 1");
            for r in self.fetch(&self.statement(&q, &[])).await? {
                counts.insert(text(&*r, 0)?, r.int(1)?);
            }
            let q = format!(
                "SELECT t.relid::regclass::text, pg_total_relation_size(t.relid), \
                 pg_get_expr(c.relpartbound, c.oid) \
                 FROM pg_partition_tree('{table}') t JOIN pg_class c ON c.oid = t.relid \
                 WHERE t.isleaf ORDER BY 1"
            );
            for r in self.fetch(&self.statement(&q, &[])).await? {
                let name = text(&*r, 0)?;
                // The leaf's bound names its part: FOR VALUES IN ('<part>').
                let part = text(&*r, 2)?
                    .split('\'')
                    .nth(1)
                    .map_or(String::new(), str::to_string);
                out.push(PartitionInfo {
                    table: table.to_string(),
                    rows: counts.get(&name).copied().unwrap_or(0),
                    name,
                    holds: Holds::Part(part),
                    bytes: r.int(1)?,
                });
            }
        }
        Ok(out)
    }

    async fn batch(&self, text: &str) -> Result<(), DbError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client.batch_execute(text).await.map_err(|e| classify(&e))
    }

    async fn fetch_primary(&self, s: &Statement) -> Result<Rows, DbError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| classify(&e))?;
        let text = format!("{}{}", super::NO_LOAD_BALANCE, s.text);
        let rows = match client.query(text.as_str(), &params(&s.params)).await {
            Ok(rows) => rows,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(classify(&e));
            }
        };
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| classify(&e))?;
        Ok(super::boxed(rows))
    }

    async fn execute(&self, s: &Statement) -> Result<u64, DbError> {
        // Not cached: maintenance statements carry inlined lists.
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .execute(s.text.as_str(), &params(&s.params))
            .await
            .map_err(|e| classify(&e))
    }

    async fn fetch(&self, s: &Statement) -> Result<Rows, DbError> {
        let rows = self.query(&s.text, &params(&s.params)).await?;
        Ok(super::boxed(rows))
    }

    async fn fetch_range(&self, s: &Statement) -> Result<RangeFold, DbError> {
        // The driver's rows as they are, not boxed as `fetch` returns them.
        RangeFold::of(&self.query(&s.text, &params(&s.params)).await?)
    }

    async fn writer(&self) -> Result<Box<dyn Writer>, DbError> {
        Ok(Box::new(PgWriter {
            config: self.config.clone(),
            client: None,
            statements: HashMap::new(),
            partitions: self.partitions.clone(),
            epoch: 0,
            queue: Vec::new(),
            assumed: false,
            found: None,
            open: false,
            begin_pending: false,
            custom_plans: false,
            generic: false,
            indexed: false,
            no_seqscan: false,
            postgres: self.postgres,
            alone: self.alone.clone(),
            durable: true,
        }))
    }

    async fn promote_leases(&self, from_ms: i64) -> Result<Promoted, DbError> {
        if !self.postgres {
            return super::promote_by_update(self, from_ms).await;
        }
        let run = super::random_i64();
        let rows = self.query(PROMOTE_LEASES, &[&from_ms, &run]).await?;
        let row = rows
            .first()
            .ok_or_else(|| DbError::Other("promoting leases returned no row".into()))?;
        let leases: i64 = row.try_get(0).map_err(|e| classify(&e))?;
        Ok(Promoted {
            leases: u64::try_from(leases).unwrap_or_default(),
            incarnation: row.try_get(1).map_err(|e| classify(&e))?,
        })
    }

    async fn db_size(&self) -> Result<i64, DbError> {
        let rows = self
            .query(
                // A partitioned table has no storage of its own: sum its tree.
                "SELECT (pg_total_relation_size('etcdsql_meta') + pg_total_relation_size('etcdsql_lease') \
                 + (SELECT COALESCE(SUM(pg_total_relation_size(relid)), 0) FROM ( \
                 SELECT relid FROM pg_partition_tree('etcdsql_live') \
                 UNION ALL SELECT relid FROM pg_partition_tree('etcdsql_history')) t))::int8",
                &[],
            )
            .await?;
        rows.first().map_or(Ok(0), |r| r.int(0))
    }

    /// Autovacuum analyses a table up to `autovacuum_naptime` (a minute)
    /// after it changed by 10%; until then a freshly loaded partition has
    /// no statistics and a selector LIST scans its key range instead of
    /// the GIN index. This analyses such tables at once, each at most every
    /// 10 s (statistics shared by every etcdsql on the database; a table
    /// another session is analysing is skipped). A DO block is not a read,
    /// so a proxy tier sends it to the primary. A table that cannot be
    /// analysed now (dropped meanwhile) is left for the next round.
    async fn refresh_statistics(&self) -> Result<(), DbError> {
        self.batch(
            "DO $$ DECLARE t regclass; BEGIN \
             FOR t IN SELECT s.relid FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
             WHERE s.relname LIKE 'etcdsql\\_%' \
             AND s.n_mod_since_analyze > 500 + 0.1 * greatest(c.reltuples, 0) \
             AND coalesce(greatest(s.last_analyze, s.last_autoanalyze), '-infinity') \
             < now() - interval '10 seconds' \
             LOOP BEGIN EXECUTE format('ANALYZE (SKIP_LOCKED) %s', t); \
             EXCEPTION WHEN OTHERS THEN NULL; END; END LOOP; END $$",
        )
        .await
    }

    /// NOTIFY wakes the hub; polling is only the fallback.
    fn poll_interval(&self) -> Duration {
        Duration::from_millis(500)
    }

    fn subscribe(
        &self,
        wake: Arc<Notify>,
        mut known: crate::watch::Known,
    ) -> Option<futures::future::BoxFuture<'static, ()>> {
        let (config, pool) = (self.config.clone(), self.pool.clone());
        // Quiet commits only where a listener of its own could count.
        let alone = self.postgres.then(|| self.alone.clone());
        Some(Box::pin(async move {
            loop {
                let result = listen(&config, &pool, &wake, &mut known, alone.as_deref()).await;
                if let Some(a) = &alone {
                    a.store(false, Ordering::SeqCst);
                }
                match result {
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                    }
                    Ok(Deaf) => {
                        tracing::warn!(
                            poll = ?DEAF_POLL,
                            "notifications do not arrive through this endpoint (a proxy pooling \
                             by transaction, such as PgCat or PgBouncer in transaction mode): \
                             watches see other processes' commits by polling, up to this much later"
                        );
                        loop {
                            wake.notify_one();
                            tokio::time::sleep(DEAF_POLL).await;
                        }
                    }
                }
                // Whatever was missed meanwhile is found by the next poll.
                wake.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }
}

/// `text` on the primary, through a proxy tier too.
async fn pool_query(
    pool: &Pool,
    text: &str,
    p: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, DbError> {
    let client = pool.get().await.map_err(pool_error)?;
    let text = format!("{}{text}", super::NO_LOAD_BALANCE);
    client
        .query(text.as_str(), p)
        .await
        .map_err(|e| classify(&e))
}

/// A LISTEN that hears nothing: its session is not kept for it (a proxy
/// pooling by transaction hands the server connection to others).
struct Deaf;

/// How long a new LISTEN waits for the probe it sent itself.
const PROBE_WAIT: Duration = Duration::from_secs(3);
/// The hub's polling period where LISTEN hears nothing.
const DEAF_POLL: Duration = Duration::from_millis(50);

/// Holds a LISTEN connection and wakes the hub on every notification of a
/// revision it does not have (the payload is the committed revision; this
/// process's own commits usually reach the hub before their notification).
///
/// Once listening it sends a probe through the pool and waits for it: a
/// proxy pooling by transaction runs the LISTEN on a server connection it
/// then lends to others, and the probe never comes back ([`Deaf`]).
///
/// Heard, it counts the other processes' listeners every [`ALONE_CHECK`]
/// and keeps `alone` (where given) true while there are none. Another
/// process's probe, sent once it listens, makes it false at once; that
/// process polls every [`DEAF_POLL`] until a second after its own probe
/// came back.
async fn listen(
    config: &tokio_postgres::Config,
    pool: &Pool,
    wake: &Notify,
    known: &mut crate::watch::Known,
    alone: Option<&AtomicBool>,
) -> Result<Deaf, DbError> {
    let (client, mut conn) = config.connect(NoTls).await.map_err(|e| classify(&e))?;
    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
    // Before the LISTEN, which stays the session's last statement.
    let pid: i32 = match alone {
        Some(_) => {
            // On the server that the LISTEN goes to, behind a proxy too.
            let text = format!("{}SELECT pg_backend_pid()", super::NO_LOAD_BALANCE);
            let started = client.query_one(text.as_str(), &[]);
            tokio::pin!(started);
            // The connection's messages are polled here, as below.
            loop {
                tokio::select! {
                    r = &mut started => break r
                        .and_then(|r| r.try_get(0))
                        .map_err(|e| classify(&e))?,
                    m = messages.next() => if m.is_none() {
                        return Err(DbError::Unavailable("LISTEN connection closed".into()));
                    },
                }
            }
        }
        None => 0,
    };
    let listen = client.batch_execute(LISTEN);
    tokio::pin!(listen);
    let probe_payload = format!("probe {}", rand::random::<u64>());
    let probe = async {
        (&mut listen).await.map_err(|e| classify(&e))?;
        wake.notify_one();
        // Not a SELECT: a proxy sends it to the primary.
        let c = pool.get().await.map_err(pool_error)?;
        c.batch_execute(&format!(
            "{}NOTIFY {CHANNEL}, '{probe_payload}'",
            super::NO_LOAD_BALANCE
        ))
        .await
        .map_err(|e| classify(&e))?;
        tokio::time::sleep(PROBE_WAIT).await;
        Ok::<_, DbError>(())
    };
    tokio::pin!(probe);
    let mut probing = true;
    // Polled as often a while after, for commits that others started
    // quiet (see [`Postgres::alone`]) and ended after they heard the probe.
    let mut fast_until = None;
    let mut count = tokio::time::interval(ALONE_CHECK);
    count.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = &mut probe, if probing => match r {
                // Listening, the probe sent and not heard in time.
                Ok(()) => return Ok(Deaf),
                Err(e) => return Err(e),
            },
            // Until the probe comes back, notifications may not.
            () = tokio::time::sleep(DEAF_POLL),
                if probing || fast_until.is_some_and(|t| Instant::now() < t) => wake.notify_one(),
            _ = count.tick(), if !probing && alone.is_some() => {
                let others = pool_query(pool, OTHER_LISTENERS, &[&pid]).await;
                let none = matches!(
                    others.as_deref(),
                    Ok([r]) if r.try_get::<_, i64>(0).is_ok_and(|n| n == 0)
                );
                if let Some(a) = alone {
                    a.store(none, Ordering::SeqCst);
                }
            }
            m = messages.next() => match m {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if n.payload() == probe_payload {
                        probing = false;
                        fast_until = Some(Instant::now() + ALONE_CHECK);
                        continue;
                    }
                    if n.payload().starts_with("probe ") {
                        // Another process listens now; counted from the
                        // next full period on.
                        if let Some(a) = alone {
                            a.store(false, Ordering::SeqCst);
                            count.reset();
                        }
                        continue;
                    }
                    match n.payload().parse::<i64>() {
                        Ok(rev) if known.has(rev).await => {}
                        _ => wake.notify_one(),
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(classify(&e)),
                None => return Err(DbError::Unavailable("LISTEN connection closed".into())),
            },
        }
    }
}

/// The committer's connection. Statements are prepared once per connection.
///
/// Writes are not sent one by one: they wait in `queue` and go out with the
/// next read or the COMMIT, all in one pipeline, so a batch costs two round
/// trips (BEGIN with its reads, then its writes with COMMIT) and not one per
/// statement. The server runs them in the order sent; a failed write aborts
/// the transaction, so what follows it fails or (COMMIT) rolls back.
struct PgWriter {
    config: tokio_postgres::Config,
    client: Option<Client>,
    statements: HashMap<String, tokio_postgres::Statement>,
    partitions: Arc<Partitions>,
    /// History rows of this transaction belong to this epoch.
    epoch: i64,
    queue: Vec<Queued>,
    /// CHECK_ASSUMED is queued or sent in this transaction.
    assumed: bool,
    /// The revision row as this transaction found it under its lock (read,
    /// or assumed and checked).
    found: Option<Meta>,
    /// Something of this transaction has been sent (a ROLLBACK has work).
    open: bool,
    /// BEGIN goes out first with the next round trip.
    begin_pending: bool,
    /// The connection plans for the parameters (see [`connect_writer`]).
    custom_plans: bool,
    /// This transaction has switched to generic plans ([`GENERIC_PLANS`]).
    generic: bool,
    /// Transactions start with [`LOCK_META_INDEXED`].
    indexed: bool,
    /// This transaction has sequential scans off ([`LOCK_META_INDEXED`]).
    no_seqscan: bool,
    /// See [`Postgres::postgres`].
    postgres: bool,
    /// [`Postgres::alone`].
    alone: Arc<AtomicBool>,
    /// See [`Writer::durable`].
    durable: bool,
}

/// How long a pooled connection of a proxy tier's balanced side lives
/// (see [`Postgres::open_balanced`]).
const BALANCED_MAX_AGE: Duration = Duration::from_secs(30);

/// Writes queued before they are sent without waiting for the commit.
const MAX_QUEUED: usize = 16;

/// A parameter a queued write owns.
type Owned = Box<dyn ToSql + Sync + Send>;

/// A write waiting for the next round trip.
struct Queued {
    statement: tokio_postgres::Statement,
    params: Vec<Owned>,
}

/// What a round trip ends with, after the queued writes.
enum Tail<'a> {
    Nothing,
    Query(&'a tokio_postgres::Statement, &'a [&'a (dyn ToSql + Sync)]),
    /// Simple-query texts (no parameters), each sent on its own.
    Texts(&'a [&'a str]),
}

type Sent<'a> = BoxFuture<'a, Result<Vec<Row>, tokio_postgres::Error>>;

/// Awaits all of `futures`, polling each for the first time in the order
/// given. tokio-postgres sends a request when its future is first polled,
/// so this is the order the server receives and runs them in.
async fn in_order<T>(futures: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    let mut futures: Vec<MaybeDone<BoxFuture<'_, T>>> =
        futures.into_iter().map(maybe_done).collect();
    poll_fn(|cx| {
        let mut done = true;
        for f in &mut futures {
            done &= Pin::new(f).poll(cx).is_ready();
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    futures
        .iter_mut()
        .filter_map(|f| Pin::new(f).take_output())
        .collect()
}

impl PgWriter {
    fn client(&self) -> Result<&Client, DbError> {
        self.client
            .as_ref()
            .ok_or_else(|| DbError::Unavailable("no connection".into()))
    }

    async fn prepared(&mut self, text: &str) -> Result<tokio_postgres::Statement, DbError> {
        if let Some(s) = self.statements.get(text) {
            return Ok(s.clone());
        }
        let s = self
            .client()?
            .prepare(text)
            .await
            .map_err(|e| classify(&e))?;
        self.statements.insert(text.to_string(), s.clone());
        Ok(s)
    }

    /// Forgets the transaction's state; answers whether any of it had been
    /// sent.
    fn reset(&mut self) -> bool {
        self.queue.clear();
        self.assumed = false;
        self.found = None;
        self.begin_pending = false;
        self.generic = false;
        self.no_seqscan = false;
        std::mem::take(&mut self.open)
    }

    /// The revision row's lock that starts a transaction.
    fn lock_meta(&self) -> &'static str {
        if self.indexed {
            LOCK_META_INDEXED
        } else {
            super::LOCK_META
        }
    }

    /// Notes what the lock just queued or sent switched to.
    fn locked_indexed(&mut self) {
        if self.indexed {
            self.generic = true;
            self.no_seqscan = true;
        }
    }

    /// A new transaction's state, and a connection.
    async fn start(&mut self) -> Result<(), DbError> {
        self.reset();
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.statements.clear();
            let (client, custom_plans, seqscan) = connect_writer(&self.config).await?;
            self.client = Some(client);
            self.custom_plans = custom_plans;
            self.indexed = custom_plans && seqscan;
        }
        Ok(())
    }

    /// Queues a write for the next round trip.
    async fn push(&mut self, text: &str, params: Vec<Owned>) -> Result<(), DbError> {
        let generic = matches!(
            text,
            UPSERT_LIVE
                | INSERT_LIVE
                | INSERT_HISTORY
                | UPSERT_LEASE
                | COMMIT_META
                | COMMIT_META_QUIET
        );
        self.push_planned(text, params, generic).await
    }

    /// [`Self::push`] for a statement that wants `generic` plans or not.
    async fn push_planned(
        &mut self,
        text: &str,
        params: Vec<Owned>,
        generic: bool,
    ) -> Result<(), DbError> {
        self.plans(generic).await?;
        let statement = self.prepared(text).await?;
        self.queue.push(Queued { statement, params });
        // A batch queues a few statements; a long transaction (an import)
        // sends them as it goes rather than holding all its rows.
        if self.queue.len() >= MAX_QUEUED {
            self.send(Tail::Nothing).await?;
        }
        Ok(())
    }

    /// Sends the queued writes and `tail` in one pipeline and answers the
    /// tail's rows. A write's error wins over the tail's (it caused it).
    async fn send(&mut self, tail: Tail<'_>) -> Result<Vec<Row>, DbError> {
        let queue = std::mem::take(&mut self.queue);
        let begin = std::mem::take(&mut self.begin_pending);
        if queue.is_empty() && matches!(tail, Tail::Nothing) && !begin {
            return Ok(Vec::new());
        }
        self.open = true;
        let client = self.client()?;
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = queue
            .iter()
            .map(|q| {
                q.params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect()
            })
            .collect();
        let mut sent: Vec<Sent<'_>> = Vec::with_capacity(queue.len() + 3);
        if begin {
            sent.push(
                client
                    .batch_execute("BEGIN")
                    .map_ok(|()| Vec::new())
                    .boxed(),
            );
        }
        sent.extend(queue.iter().zip(&params).map(|(q, p)| {
            client
                .execute(&q.statement, p)
                .map_ok(|_| Vec::new())
                .boxed()
        }));
        match tail {
            Tail::Nothing => {}
            Tail::Query(s, p) => sent.push(client.query(s, p).boxed()),
            Tail::Texts(texts) => sent.extend(
                texts
                    .iter()
                    .map(|t| client.batch_execute(t).map_ok(|()| Vec::new()).boxed()),
            ),
        }
        let mut last = Ok(Vec::new());
        for r in in_order(sent).await {
            if last.is_ok() {
                last = r;
            }
        }
        // The only division and logarithm in a write transaction are
        // CHECK_ASSUMED's.
        let assumed = self.assumed;
        last.map_err(|e| match e.code() {
            Some(&SqlState::DIVISION_BY_ZERO) if assumed => DbError::Stale,
            Some(&SqlState::INVALID_ARGUMENT_FOR_LOG) if assumed => DbError::Existed,
            _ => classify(&e),
        })
    }

    /// Queues the switch to generic plans or back, where it is needed
    /// before a statement that wants `generic` ones.
    async fn plans(&mut self, generic: bool) -> Result<(), DbError> {
        if !self.custom_plans || self.generic == generic {
            return Ok(());
        }
        self.generic = generic;
        let mut texts = vec![if generic {
            GENERIC_PLANS
        } else {
            CUSTOM_PLANS_AGAIN
        }];
        if !generic && std::mem::take(&mut self.no_seqscan) {
            texts.push(SEQSCAN_AGAIN);
        }
        for text in texts {
            let statement = self.prepared(text).await?;
            self.queue.push(Queued {
                statement,
                params: Vec::new(),
            });
        }
        Ok(())
    }

    /// Live rows by `text` ([`UPSERT_LIVE`] or [`INSERT_LIVE`]).
    async fn write_live(&mut self, u: &[&Upsert], text: &str) -> Result<(), DbError> {
        let reg = self.partitions.get();
        let part: Vec<String> = u.iter().map(|k| reg.target(&k.key).to_owned()).collect();
        let key: Vec<Vec<u8>> = u.iter().map(|k| k.key.clone()).collect();
        let value: Vec<Vec<u8>> = u.iter().map(|k| k.value.clone()).collect();
        let create: Vec<i64> = u.iter().map(|k| k.create_revision).collect();
        let modr: Vec<i64> = u.iter().map(|k| k.mod_revision).collect();
        let version: Vec<i64> = u.iter().map(|k| k.version).collect();
        let lease: Vec<i64> = u.iter().map(|k| k.lease).collect();
        let labels: Vec<Option<String>> = u.iter().map(|k| k.labels().map(str::to_owned)).collect();
        let fields: Vec<Option<String>> = u.iter().map(|k| k.fields().map(str::to_owned)).collect();
        self.push(
            text,
            vec![
                Box::new(key),
                Box::new(value),
                Box::new(create),
                Box::new(modr),
                Box::new(version),
                Box::new(lease),
                Box::new(part),
                Box::new(labels),
                Box::new(fields),
            ],
        )
        .await
    }

    async fn query(&mut self, text: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, DbError> {
        self.plans(false).await?;
        let stmt = self.prepared(text).await?;
        self.send(Tail::Query(&stmt, p)).await
    }

    async fn execute(&mut self, text: &str, p: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError> {
        self.plans(false).await?;
        self.send(Tail::Nothing).await?;
        let stmt = self.prepared(text).await?;
        self.open = true;
        self.client()?
            .execute(&stmt, p)
            .await
            .map_err(|e| classify(&e))
    }
}

#[async_trait]
impl Writer for PgWriter {
    async fn begin(&mut self) -> Result<Meta, DbError> {
        Ok(self.begin_read(&[], &[]).await?.meta)
    }

    fn assumes(&self) -> bool {
        true
    }

    async fn begin_assuming(&mut self) -> Result<(), DbError> {
        self.start().await?;
        // As simple queries, as the read-first path sends them: PgCat routes
        // a transaction by its text BEGIN.
        self.begin_pending = true;
        self.push(self.lock_meta(), Vec::new()).await?;
        self.locked_indexed();
        Ok(())
    }

    fn tells_existed(&self) -> bool {
        true
    }

    /// Not durable: the commit returns once in the WAL's buffers, without
    /// its flush; a crash of the server (not of this process) may lose it,
    /// which [`Writer::incarnation`] tells. A later durable commit flushes
    /// it with its own.
    fn durable(&mut self, durable: bool) {
        self.durable = durable;
    }

    async fn incarnation(&mut self) -> Result<Option<i64>, DbError> {
        if !self.postgres {
            return Ok(None);
        }
        let rows = self.query(RUN, &[]).await?;
        rows.first()
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(|e| classify(&e))
    }

    async fn check_assumed(
        &mut self,
        meta: Meta,
        absent: &[Vec<u8>],
        leases: &AssumedLeases,
    ) -> Result<(), DbError> {
        self.assumed = true;
        self.found = Some(meta);
        let version = self.partitions.get().version;
        // After LOCK_META_INDEXED it runs on the lock's generic plans: it
        // finds rows by ids and names, as the writes after it do, and
        // switching to custom plans and back would cost three statements.
        // Otherwise its own plan is made for its parameters, and it
        // switches to the generic plans the writes after it want.
        let generic = self.custom_plans && !self.generic;
        let (text, params) = check_assumed(meta, version, self.epoch, absent, leases, generic);
        self.push_planned(&text, params, self.indexed).await?;
        self.generic |= generic;
        Ok(())
    }

    async fn begin_read(&mut self, keys: &[Vec<u8>], leases: &[i64]) -> Result<Began, DbError> {
        self.start().await?;
        self.open = true;
        let lock = self.prepared(self.lock_meta()).await?;
        self.locked_indexed();
        let get = self.prepared(GET).await?;
        let exist = self.prepared(LEASES).await?;
        let client = self.client()?;
        let (keys_param, leases_param): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
            ([&keys], [&leases]);
        // BEGIN and the reads in one round trip.
        let mut sent: Vec<Sent<'_>> = vec![
            client
                .batch_execute("BEGIN")
                .map_ok(|()| Vec::new())
                .boxed(),
            client.query(&lock, &[]).boxed(),
        ];
        if !keys.is_empty() {
            sent.push(client.query(&get, &keys_param).boxed());
        }
        if !leases.is_empty() {
            sent.push(client.query(&exist, &leases_param).boxed());
        }
        let mut results = in_order(sent).await.into_iter();
        let mut next = || {
            results
                .next()
                .unwrap_or_else(|| Ok(Vec::new()))
                .map_err(|e| classify(&e))
        };
        next()?;
        let locked = super::decode_locked(&next()?, &self.partitions)?;
        let got = if keys.is_empty() { Vec::new() } else { next()? };
        let found = if leases.is_empty() {
            Vec::new()
        } else {
            next()?
        };
        self.epoch = locked.epoch;
        self.found = Some(locked.meta);
        if locked.stale {
            let reg = self.query(super::REGISTRY_SQL, &[]).await?;
            self.partitions.set(super::decode_registry(&reg)?);
        }
        let mut kvs = Vec::with_capacity(got.len());
        for r in &got {
            kvs.extend(decode_kv(r, 0)?);
        }
        Ok(Began {
            meta: locked.meta,
            kvs,
            leases: found.iter().map(decode_lease).collect::<Result<_, _>>()?,
        })
    }

    async fn get(&mut self, keys: &[Vec<u8>]) -> Result<Vec<KeyValue>, DbError> {
        let rows = self.query(GET, &[&keys]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.extend(decode_kv(r, 0)?);
        }
        Ok(out)
    }

    async fn range(&mut self, q: &RangeQuery) -> Result<RangeRows, DbError> {
        let parts = super::parts_of(&self.partitions.get(), &q.key, &q.end);
        let s = sql::range(DIALECT, q, parts.as_deref());
        let rows = self.query(&s.text, &params(&s.params)).await?;
        decode_range(q, &rows)
    }

    async fn leases(&mut self, ids: &[i64]) -> Result<Vec<LeaseRow>, DbError> {
        let rows = self.query(LEASES, &[&ids]).await?;
        rows.iter().map(decode_lease).collect()
    }

    async fn lease_keys(&mut self, id: i64) -> Result<Vec<Vec<u8>>, DbError> {
        let rows = self.query(LEASE_KEYS, &[&id]).await?;
        first_bytes(&rows)
    }

    fn registry(&self) -> Option<Arc<Registry>> {
        Some(self.partitions.get())
    }

    fn dialect(&self) -> Dialect {
        DIALECT
    }

    async fn delete_live(&mut self, names: &[&Vec<u8>], default_only: bool) -> Result<(), DbError> {
        let names: Vec<Vec<u8>> = names.iter().map(|k| k.to_vec()).collect();
        let text = if default_only {
            DELETE_DEFAULT
        } else {
            DELETE_LIVE
        };
        self.push(text, vec![Box::new(names)]).await
    }

    async fn upsert_live(&mut self, rows: &[Upsert]) -> Result<(), DbError> {
        let (new, rest): (Vec<&Upsert>, Vec<&Upsert>) = rows.iter().partition(|u| u.absent);
        for (u, text) in [(new, INSERT_LIVE), (rest, UPSERT_LIVE)] {
            if !u.is_empty() {
                self.write_live(&u, text).await?;
            }
        }
        Ok(())
    }

    async fn insert_history(&mut self, h: &[HistoryRow], batch: i64) -> Result<(), DbError> {
        let reg = self.partitions.get();
        let rev: Vec<i64> = h.iter().map(|r| r.revision).collect();
        let sub: Vec<i32> = h.iter().map(|r| r.sub).collect();
        let key: Vec<Vec<u8>> = h.iter().map(|r| r.key.clone()).collect();
        let value: Vec<Vec<u8>> = h.iter().map(|r| r.value.clone()).collect();
        let create: Vec<i64> = h.iter().map(|r| r.create_revision).collect();
        let version: Vec<i64> = h.iter().map(|r| r.version).collect();
        let lease: Vec<i64> = h.iter().map(|r| r.lease).collect();
        let deleted: Vec<i16> = h.iter().map(|r| i16::from(r.deleted)).collect();
        let prev: Vec<i64> = h.iter().map(|r| r.prev_revision).collect();
        let part: Vec<String> = h.iter().map(|r| reg.target(&r.key).to_owned()).collect();
        let labels: Vec<Option<String>> = h.iter().map(|r| r.labels().map(str::to_owned)).collect();
        let fields: Vec<Option<String>> = h.iter().map(|r| r.fields().map(str::to_owned)).collect();
        let epoch = self.epoch;
        self.push(
            INSERT_HISTORY,
            vec![
                Box::new(rev),
                Box::new(sub),
                Box::new(key),
                Box::new(value),
                Box::new(create),
                Box::new(version),
                Box::new(lease),
                Box::new(deleted),
                Box::new(prev),
                Box::new(part),
                Box::new(labels),
                Box::new(fields),
                Box::new(epoch),
                Box::new(batch),
            ],
        )
        .await
    }

    async fn upsert_leases(&mut self, l: &[LeaseRow]) -> Result<(), DbError> {
        let id: Vec<i64> = l.iter().map(|r| r.id).collect();
        let ttl: Vec<i64> = l.iter().map(|r| r.ttl).collect();
        let exp: Vec<i64> = l.iter().map(|r| r.expires_at_ms).collect();
        self.push(
            UPSERT_LEASE,
            vec![Box::new(id), Box::new(ttl), Box::new(exp)],
        )
        .await
    }

    async fn delete_leases(&mut self, ids: &[i64]) -> Result<(), DbError> {
        self.push(DELETE_LEASE, vec![Box::new(ids.to_vec())]).await
    }

    async fn commit(&mut self, meta: Meta) -> Result<(), DbError> {
        // The queued writes, the revision row, and COMMIT in one round
        // trip. The notification, with the revision, is delivered to
        // listeners when (and only if) the transaction commits. COMMIT is a
        // query of its own: Pgpool-II sends a multi-statement query to the
        // primary alone, and the standby that had the BEGIN would be left
        // in a transaction. A batch that leaves the row as it found it
        // (lease grants and renewals) neither rewrites it nor notifies:
        // there is no revision to hear of.
        if self.found != Some(meta) {
            let quiet = self.postgres && self.alone.load(Ordering::SeqCst);
            self.push(
                if quiet {
                    COMMIT_META_QUIET
                } else {
                    COMMIT_META
                },
                vec![Box::new(meta.revision), Box::new(meta.compact_revision)],
            )
            .await?;
        }
        if !self.durable && self.postgres {
            self.push_planned(NOT_DURABLE, Vec::new(), self.generic)
                .await?;
        }
        let done = self.send(Tail::Texts(&["COMMIT"])).await.map(drop);
        // Answered, COMMIT ended the transaction, also after a failed write
        // (as a rollback); only a broken connection leaves it in doubt.
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            self.open = false;
        }
        done
    }

    async fn execute(&mut self, s: &Statement) -> Result<u64, DbError> {
        self.execute(&s.text, &params(&s.params)).await
    }

    async fn rows(&mut self, s: &Statement) -> Result<Rows, DbError> {
        let rows = self.query(&s.text, &params(&s.params)).await?;
        Ok(super::boxed(rows))
    }

    async fn rollback(&mut self) {
        if !self.reset() {
            // A batch that assumed and stopped before sending anything.
            return;
        }
        let ok = match &self.client {
            Some(c) => c.batch_execute("ROLLBACK").await.is_ok(),
            None => true,
        };
        if !ok {
            self.client = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        AssumedLeases, CHANNEL, COMMIT_META, COMMIT_META_QUIET, LISTEN, Meta, OTHER_LISTENERS,
        check_assumed,
    };

    #[test]
    fn listeners_are_counted_by_the_listen_they_run() {
        assert_eq!(LISTEN, format!("LISTEN {CHANNEL}"));
        assert!(OTHER_LISTENERS.contains(&format!("query = '{LISTEN}'")));
        assert!(!COMMIT_META_QUIET.contains("notify"));
        assert!(COMMIT_META.starts_with(COMMIT_META_QUIET));
    }

    #[test]
    fn commit_meta_notifies_the_channel_listened_to() {
        assert!(
            COMMIT_META.contains(&format!("pg_notify('{CHANNEL}', revision::text)")),
            "{COMMIT_META}"
        );
    }

    /// Each shape of the statement numbers its placeholders 1..=n without
    /// a gap, n being the parameters it binds.
    #[test]
    fn check_assumed_numbers_what_it_binds() {
        let meta = Meta {
            revision: 7,
            compact_revision: 0,
        };
        for shape in 0..8u8 {
            let (names, ttls, unexpired) = (shape & 1 != 0, shape & 2 != 0, shape & 4 != 0);
            let absent = if names {
                vec![b"k".to_vec()]
            } else {
                Vec::new()
            };
            let leases = AssumedLeases {
                ttls: if ttls { vec![(1, 60)] } else { Vec::new() },
                unexpired: if unexpired { vec![2] } else { Vec::new() },
                now_ms: 1000,
            };
            let (text, params) = check_assumed(meta, 0, 1, &absent, &leases, shape & 1 != 0);
            let mut used: Vec<usize> = text
                .split('$')
                .skip(1)
                .map(|s| {
                    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse().unwrap()
                })
                .collect();
            used.sort_unstable();
            used.dedup();
            let bound = 4 + usize::from(names) + 3 * usize::from(ttls) + 2 * usize::from(unexpired);
            assert_eq!(params.len(), bound, "{text}");
            assert_eq!(used, (1..=bound).collect::<Vec<_>>(), "{text}");
            assert_eq!(text.contains("etcdsql_live"), names, "{text}");
            assert_eq!(text.contains("count(*)"), ttls, "{text}");
            assert_eq!(text.contains("expires_at_ms"), unexpired, "{text}");
            assert_eq!(text.contains("set_config"), names, "{text}");
        }
    }
}
