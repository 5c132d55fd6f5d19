//! etcdsql's schema: versioned migrations per SQL dialect, embedded in the
//! binary and applied with sqlx's migrator (table `_sqlx_migrations`,
//! checksums, a database lock while migrating), plus what the `etcdsql
//! schema` subcommand and the server's start-up check need: the status of a
//! database (applied, pending, checksum drift, unknown newer versions) and
//! the exact SQL a migration would run.
//!
//! Migrations are numbered alike in every dialect (`sql/<dialect>/NNNN_name.sql`).
//! Version 1 is idempotent (`IF NOT EXISTS`), so a database created by an
//! etcdsql from before versioning is brought under it by running it again.

use std::borrow::Cow;

use sqlx::AnyConnection;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Connection, Row, SqlStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

/// (file name, text) of every migration of a dialect, in version order.
fn sources(d: Dialect) -> &'static [(&'static str, &'static str)] {
    macro_rules! files {
        ($dir:literal: $($file:literal),+) => {
            &[$(($file, include_str!(concat!("../sql/", $dir, "/", $file)))),+]
        };
    }
    match d {
        Dialect::Sqlite => {
            files!("sqlite": "0001_init.sql", "0002_layout.sql", "0003_selectors.sql", "0004_alarms.sql", "0005_auth.sql", "0006_rowid_tables.sql", "0007_hot_updates.sql", "0008_label_hashes.sql", "0009_sync.sql", "0010_run.sql")
        }
        Dialect::Postgres => {
            files!("postgres": "0001_init.sql", "0002_layout.sql", "0003_selectors.sql", "0004_alarms.sql", "0005_auth.sql", "0006_rowid_tables.sql", "0007_hot_updates.sql", "0008_label_hashes.sql", "0009_sync.sql", "0010_run.sql")
        }
        Dialect::Mysql => {
            files!("mysql": "0001_init.sql", "0002_layout.sql", "0003_selectors.sql", "0004_alarms.sql", "0005_auth.sql", "0006_rowid_tables.sql", "0007_hot_updates.sql", "0008_label_hashes.sql", "0009_sync.sql", "0010_run.sql")
        }
    }
}

/// The embedded migrations of a dialect.
pub fn migrations(d: Dialect) -> Vec<Migration> {
    sources(d)
        .iter()
        .map(|(file, text)| {
            let (num, rest) = file.split_once('_').expect("NNNN_name.sql");
            let version = num.parse().expect("numbered migration");
            let description = rest.trim_end_matches(".sql").replace('_', " ");
            Migration::new(
                version,
                Cow::Owned(description),
                MigrationType::Simple,
                SqlStr::from_static(text),
                false,
            )
        })
        .collect()
}

/// The schema version this build creates and requires.
pub fn latest(d: Dialect) -> i64 {
    migrations(d).last().map_or(0, |m| m.version)
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database is not at the version this build requires.
    #[error("{0}")]
    Mismatch(String),
    /// The SQLite file's directory could not be made.
    #[error("{0}")]
    Io(String),
}

/// One applied migration as recorded in `_sqlx_migrations`.
#[derive(Clone, Debug)]
pub struct Applied {
    pub version: i64,
    pub description: String,
    pub installed_on: String,
    /// The recorded checksum differs from the embedded migration's.
    pub drifted: bool,
    /// Recorded but unknown to this build (a newer etcdsql migrated it).
    pub unknown: bool,
    /// Started but did not finish (MySQL runs DDL outside transactions).
    pub dirty: bool,
}

/// What a database holds compared with this build's migrations.
#[derive(Clone, Debug)]
pub struct Status {
    pub dialect: Dialect,
    pub applied: Vec<Applied>,
    /// (version, description) not yet applied, in order.
    pub pending: Vec<(i64, String)>,
    /// etcdsql's tables exist but no migration was ever recorded: created by
    /// an etcdsql from before versioned migrations (schema version 1).
    pub unversioned: bool,
}

impl Status {
    /// The highest version recorded as applied, 0 for none.
    pub fn current(&self) -> i64 {
        self.applied
            .iter()
            .filter(|a| !a.dirty)
            .map(|a| a.version)
            .max()
            .unwrap_or(0)
    }

    /// Whether all that differs from this build is pending migrations.
    pub fn pending_only(&self) -> bool {
        self.applied
            .iter()
            .all(|a| !a.drifted && !a.unknown && !a.dirty)
    }

    /// Whether a version was applied that this build did not write: newer
    /// than it knows, or from a different text (drift). No migration fixes
    /// that.
    pub fn foreign(&self) -> bool {
        self.applied.iter().any(|a| a.unknown || a.drifted)
    }

    /// Whether this may be a migration still under way rather than a state
    /// to refuse: a version that did not finish (another process may be
    /// running it), or, when `replica_possible`, pending versions (a standby
    /// may not have replayed them yet). Never for a newer or drifted schema.
    pub fn settling(&self, replica_possible: bool) -> bool {
        !self.foreign()
            && (self.applied.iter().any(|a| a.dirty)
                || (replica_possible && !self.pending.is_empty()))
    }

    /// Why the server must not start on this database, naming the command
    /// that fixes it; `None` when it may.
    pub fn refusal(&self, endpoint: &str) -> Option<String> {
        let want = latest(self.dialect);
        if let Some(a) = self.applied.iter().find(|a| a.unknown) {
            return Some(format!(
                "the database schema is at version {} ({}), newer than this etcdsql knows (up to {want}); run a newer etcdsql",
                a.version, a.description
            ));
        }
        if let Some(a) = self.applied.iter().find(|a| a.dirty) {
            return Some(format!(
                "schema migration {} ({}) did not finish; inspect the database, delete its row from _sqlx_migrations, then run `etcdsql schema migrate --endpoint {endpoint}`",
                a.version, a.description
            ));
        }
        if let Some(a) = self.applied.iter().find(|a| a.drifted) {
            return Some(format!(
                "schema migration {} ({}) was applied from a different text than this etcdsql's (checksum drift); see `etcdsql schema status --endpoint {endpoint}`",
                a.version, a.description
            ));
        }
        if !self.pending.is_empty() {
            let have = if self.unversioned {
                "unversioned (from an etcdsql before schema versions)".to_string()
            } else if self.current() == 0 {
                "empty".to_string()
            } else {
                format!("at version {}", self.current())
            };
            return Some(format!(
                "the database schema is {have}; this etcdsql needs version {want}: run `etcdsql schema migrate --endpoint {endpoint}` (or start with --auto-migrate)"
            ));
        }
        None
    }

    /// The SQL `migrate` would run, each migration headed by a comment.
    pub fn pending_sql(&self) -> String {
        let all = migrations(self.dialect);
        let mut out = String::new();
        for (v, _) in &self.pending {
            if let Some(m) = all.iter().find(|m| m.version == *v) {
                out.push_str(&format!(
                    "-- migration {} ({}), in one transaction where the database allows\n",
                    m.version, m.description
                ));
                out.push_str(m.sql.as_str().trim_end());
                out.push_str("\n\n");
            }
        }
        out
    }
}

/// sqlx's URL for an endpoint: SQLite files are created if missing.
fn url(d: Dialect, endpoint: &str) -> String {
    match d {
        Dialect::Sqlite => format!("sqlite://{}?mode=rwc", sqlite_path(endpoint)),
        Dialect::Postgres => endpoint.to_string(),
        Dialect::Mysql => {
            // mysql_async's own options are not sqlx's.
            let base = endpoint.replacen("mariadb:", "mysql:", 1);
            base.split('?').next().unwrap_or(&base).to_string()
        }
    }
}

/// The file of an SQLite endpoint.
fn sqlite_path(endpoint: &str) -> &str {
    let path = endpoint
        .strip_prefix("sqlite://")
        .or_else(|| endpoint.strip_prefix("sqlite:"))
        .unwrap_or(endpoint);
    path.split('?').next().unwrap_or(path)
}

async fn connect(d: Dialect, endpoint: &str) -> Result<AnyConnection, SchemaError> {
    if d == Dialect::Sqlite {
        // The embedded default's --data-dir need not exist yet.
        let dir = std::path::Path::new(sqlite_path(endpoint)).parent();
        if let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| SchemaError::Io(format!("creating {}: {e}", dir.display())))?;
        }
    }
    sqlx::any::install_default_drivers();
    let mut conn = AnyConnection::connect(&url(d, endpoint)).await?;
    if d == Dialect::Sqlite {
        // Several processes may migrate one file at once.
        sqlx::query("PRAGMA busy_timeout = 30000")
            .execute(&mut conn)
            .await?;
    }
    if d == Dialect::Mysql {
        // Galera applies other nodes' commits asynchronously: without this a
        // node may still show a migration another node finished as running.
        // Other MySQL servers have no such variable (an error, ignored).
        let _ = sqlx::query("SET SESSION wsrep_sync_wait = 1")
            .execute(&mut conn)
            .await;
    }
    Ok(conn)
}

async fn table_exists(conn: &mut AnyConnection, table: &str) -> bool {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM {table} WHERE 1 = 0"
    )))
    .fetch_optional(conn)
    .await
    .is_ok()
}

/// The status of the database at `endpoint`. Reads only.
pub async fn status(d: Dialect, endpoint: &str) -> Result<Status, SchemaError> {
    let mut conn = connect(d, endpoint).await?;
    let known = migrations(d);
    let mut applied = Vec::new();
    let recorded = table_exists(&mut conn, "_sqlx_migrations").await;
    if recorded {
        let text = match d {
            Dialect::Postgres => "CAST(installed_on AS TEXT)",
            Dialect::Mysql => "CAST(installed_on AS CHAR)",
            Dialect::Sqlite => "CAST(installed_on AS TEXT)",
        };
        for (success, cond) in [(true, "success"), (false, "NOT success")] {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT version, description, checksum, {text} FROM _sqlx_migrations WHERE {cond} ORDER BY version"
            )))
            .fetch_all(&mut conn)
            .await?;
            for r in rows {
                let version: i64 = r.try_get(0)?;
                let checksum: Vec<u8> = r.try_get(2)?;
                let m = known.iter().find(|m| m.version == version);
                applied.push(Applied {
                    version,
                    description: r.try_get(1)?,
                    installed_on: r.try_get(3)?,
                    drifted: m.is_some_and(|m| *m.checksum != *checksum),
                    unknown: m.is_none(),
                    dirty: !success,
                });
            }
        }
        applied.sort_by_key(|a| a.version);
    }
    let unversioned = !recorded && table_exists(&mut conn, "etcdsql_meta").await;
    let pending = known
        .iter()
        .filter(|m| !applied.iter().any(|a| a.version == m.version))
        .map(|m| (m.version, m.description.to_string()))
        .collect();
    conn.close().await?;
    Ok(Status {
        dialect: d,
        applied,
        pending,
        unversioned,
    })
}

/// Applies every pending migration under the database's lock (PostgreSQL
/// advisory lock, MySQL `GET_LOCK`; SQLite's write lock, retried), so several
/// processes may run it at once; returns the versions that were pending
/// (this call or a concurrent one applied them).
/// Refuses a database with drift, a dirty or an unknown newer version.
pub async fn migrate(d: Dialect, endpoint: &str) -> Result<Vec<i64>, SchemaError> {
    let mut last = None;
    for _ in 0..5 {
        let mut conn = connect(d, endpoint).await?;
        if d == Dialect::Mysql {
            // sqlx's own lock is GET_LOCK(…, -1), which MariaDB does not
            // take as "wait forever": hold one of ours around the check and
            // the run. MySQL's DDL is not transactional, so before the lock
            // a migration in progress elsewhere would look dirty.
            let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('etcdsql_schema', 300)")
                .fetch_one(&mut conn)
                .await?;
            if got != Some(1) {
                return Err(SchemaError::Mismatch(
                    "another process held the schema lock for 300 s".into(),
                ));
            }
        }
        let before = status(d, endpoint).await?;
        if let Some(a) = before
            .applied
            .iter()
            .find(|a| a.unknown || a.drifted || a.dirty)
        {
            return Err(SchemaError::Mismatch(
                before
                    .refusal(endpoint)
                    .unwrap_or_else(|| format!("migration {} cannot be verified", a.version)),
            ));
        }
        if before.pending.is_empty() {
            conn.close().await?;
            return Ok(Vec::new());
        }
        let migrator = Migrator::with_migrations(migrations(d));
        match migrator.run_direct(None, &mut conn, false).await {
            Ok(()) => {
                conn.close().await?;
                return Ok(before.pending.iter().map(|(v, _)| *v).collect());
            }
            // Another process applied the same migration first (SQLite has
            // no lock around the whole run): look again.
            Err(e) if d == Dialect::Sqlite => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.map_or_else(
        || SchemaError::Mismatch("migration did not settle".into()),
        SchemaError::from,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dialect_has_the_same_versions() {
        let versions = |d| {
            migrations(d)
                .iter()
                .map(|m| (m.version, m.description.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(versions(Dialect::Sqlite), versions(Dialect::Postgres));
        assert_eq!(versions(Dialect::Mysql), versions(Dialect::Postgres));
        assert_eq!(latest(Dialect::Mysql), 10);
    }

    #[test]
    fn version_one_creates_every_table() {
        for d in [Dialect::Sqlite, Dialect::Postgres, Dialect::Mysql] {
            let init = sources(d)[0].1;
            for table in [
                "etcdsql_meta",
                "etcdsql_live",
                "etcdsql_history",
                "etcdsql_lease",
            ] {
                assert!(
                    init.contains(&format!("CREATE TABLE IF NOT EXISTS {table} (")),
                    "{d:?} lacks {table}"
                );
            }
        }
    }

    #[test]
    fn urls_per_dialect() {
        assert_eq!(
            url(Dialect::Sqlite, "sqlite:///tmp/x.db"),
            "sqlite:///tmp/x.db?mode=rwc"
        );
        assert_eq!(
            url(Dialect::Sqlite, "sqlite:x.db"),
            "sqlite://x.db?mode=rwc"
        );
        assert_eq!(
            url(
                Dialect::Mysql,
                "mariadb://root@127.0.0.1:3306/db?prefer_socket=false"
            ),
            "mysql://root@127.0.0.1:3306/db"
        );
    }
}
