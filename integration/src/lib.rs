//! The integration harness: real databases, real etcdsql processes, and
//! etcd itself as the reference.
//!
//! - [`Target`]: what a case runs against (etcd 3.4, or etcdsql on SQLite,
//!   PostgreSQL, MariaDB, Galera, CockroachDB, TiDB);
//! - [`servers`]: each target's database server, from a DSN variable or
//!   from containers the run owns;
//! - [`TestDb`]: a uniquely named database on that server, dropped on drop;
//! - [`Process`]: a server process (etcdsql or etcd) on a free loopback
//!   port, killed on drop;
//! - `ETCDSQL_REQUIRE=etcd,sqlite,postgres,mariadb,galera`: a required
//!   target that is unavailable fails the run instead of being skipped.
//!
//! The test cases themselves are in `tests/it/`, compiled as the `it` test
//! of the etcdsql package so that Cargo builds the real binary for them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub use etcd_client;

pub mod kube;
pub mod lincheck;
pub mod plot;
pub mod servers;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// etcd 3.4 from Debian's etcd-server: the reference.
    Etcd,
    Sqlite,
    Postgres,
    Mariadb,
    /// A MariaDB Galera cluster (3 nodes unless given by DSNs).
    Galera,
    Cockroach,
    Tidb,
}

impl Target {
    pub const ETCDSQL: [Target; 6] = [
        Target::Sqlite,
        Target::Postgres,
        Target::Mariadb,
        Target::Galera,
        Target::Cockroach,
        Target::Tidb,
    ];

    /// etcd, then every backend.
    pub const ALL: [Target; 7] = {
        let mut all = [Target::Etcd; 7];
        let mut i = 0;
        while i < Target::ETCDSQL.len() {
            all[i + 1] = Target::ETCDSQL[i];
            i += 1;
        }
        all
    };

    pub fn name(self) -> &'static str {
        match self {
            Target::Etcd => "etcd",
            Target::Sqlite => "sqlite",
            Target::Postgres => "postgres",
            Target::Mariadb => "mariadb",
            Target::Galera => "galera",
            Target::Cockroach => "cockroachdb",
            Target::Tidb => "tidb",
        }
    }

    pub fn required(self) -> bool {
        required(self.name())
    }

    /// Why this target cannot run here, if it cannot. The first call for a
    /// database target starts its server.
    pub fn unavailable(self) -> Option<String> {
        match self {
            Target::Etcd => which("etcd")
                .is_none()
                .then(|| "no etcd binary on PATH (Debian package etcd-server)".to_string()),
            Target::Sqlite => None,
            _ => servers::server(self).err(),
        }
    }

    /// Whether the target speaks PostgreSQL's protocol (else MySQL's).
    pub fn is_postgres(self) -> bool {
        matches!(self, Target::Postgres | Target::Cockroach)
    }

    /// `true` if the case should run; prints a plain skip line otherwise,
    /// and panics if the target is required.
    pub fn available(self) -> bool {
        match self.unavailable() {
            None => true,
            Some(why) if self.required() => {
                panic!(
                    "{} is required (ETCDSQL_REQUIRE) but unavailable: {why}",
                    self.name()
                )
            }
            Some(why) => {
                eprintln!("skipped: {}: {why}", self.name());
                false
            }
        }
    }
}

/// Whether `ETCDSQL_REQUIRE` (comma-separated) lists `name`.
pub fn required(name: &str) -> bool {
    std::env::var("ETCDSQL_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .any(|t| t.trim() == name)
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(bin))
            .find(|p| p.is_file())
    })
}

/// Runs `start` (which binds ports from [`free_port`]) again, up to three
/// times, where another process took a port between [`free_port`] and the
/// server's bind: cases run in parallel.
async fn on_free_ports<F, Fut>(start: F) -> anyhow::Result<Process>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Process>>,
{
    let mut tries = 0;
    loop {
        match start().await {
            Err(e)
                if tries < 2
                    && format!("{e:#}")
                        .to_lowercase()
                        .contains("address already in use") =>
            {
                tries += 1;
            }
            r => return r,
        }
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

static UNIQUE: AtomicU32 = AtomicU32::new(0);

pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed),
        Instant::now().elapsed().subsec_nanos() % 1000
    )
}

/// A fresh database for one case; dropped (with its data) on drop.
pub struct TestDb {
    pub target: Target,
    /// The DSN etcdsql gets.
    pub dsn: String,
    /// The same database through every node (Galera); `[dsn]` otherwise.
    pub dsns: Vec<String>,
    pub name: String,
    admin: String,
    _dir: Option<tempdir::Dir>,
}

mod tempdir {
    use std::path::{Path, PathBuf};

    /// A directory under the system temp dir, removed on drop.
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(name: &str) -> std::io::Result<Dir> {
            let p = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&p)?;
            Ok(Dir(p))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
pub use tempdir::Dir as TempDir;

fn replace_db(url: &str, db: &str) -> String {
    // scheme://authority/path?query → scheme://authority/db?query
    let (head, query) = url
        .split_once('?')
        .map_or((url, None), |(h, q)| (h, Some(q)));
    let after_scheme = head.find("://").map_or(0, |i| i + 3);
    let base = match head[after_scheme..].find('/') {
        Some(i) => &head[..after_scheme + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

impl TestDb {
    pub async fn create(target: Target) -> anyhow::Result<TestDb> {
        if target == Target::Sqlite {
            let name = unique_name("etcdsql_it");
            let dir = tempdir::Dir::new(&name)?;
            let dsn = format!("sqlite://{}", dir.path().join("etcdsql.db").display());
            return Ok(TestDb {
                target,
                dsns: vec![dsn.clone()],
                dsn,
                name,
                admin: String::new(),
                _dir: Some(dir),
            });
        }
        if target == Target::Etcd {
            bail!("etcd brings its own storage");
        }
        let urls = servers::server(target)
            .map_err(|e| anyhow::anyhow!("{}: {e}", target.name()))?
            .urls
            .clone();
        Self::create_on(target, &urls).await
    }

    /// A fresh database on the server with these admin DSNs (one per node).
    pub async fn create_on(target: Target, urls: &[String]) -> anyhow::Result<TestDb> {
        let name = unique_name("etcdsql_it");
        let admin = urls[0].clone();
        admin_sql(target, &admin, &format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating the test database on {}", target.name()))?;
        let dsns: Vec<String> = urls.iter().map(|u| replace_db(u, &name)).collect();
        Ok(TestDb {
            target,
            dsn: dsns[0].clone(),
            dsns,
            name,
            admin,
            _dir: None,
        })
    }

    /// A `SELECT COUNT(*) ...` run directly on the test database.
    pub async fn count(&self, sql: &'static str) -> anyhow::Result<i64> {
        match self.target {
            Target::Sqlite => {
                use sqlx::Connection;
                let mut c = sqlx::SqliteConnection::connect(&self.dsn).await?;
                Ok(sqlx::query_scalar(sql).fetch_one(&mut c).await?)
            }
            t if t.is_postgres() => {
                let (c, conn) = tokio_postgres::connect(&self.dsn, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                Ok(c.query_one(sql, &[]).await?.get(0))
            }
            Target::Etcd => bail!("etcd's storage is not SQL"),
            _ => {
                use mysql_async::prelude::Queryable;
                let mut c = mysql_async::Conn::from_url(&self.dsn).await?;
                let n: Option<i64> = c.query_first(sql).await?;
                let _ = c.disconnect().await;
                n.context("no row")
            }
        }
    }

    /// Runs statements on the test database.
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        if self.target == Target::Sqlite {
            use sqlx::{Connection, Executor};
            let mut c = sqlx::SqliteConnection::connect(&self.dsn).await?;
            c.execute(sqlx::AssertSqlSafe(sql.to_string())).await?;
            return Ok(());
        }
        admin_sql(self.target, &self.dsn, sql).await
    }

    /// The rows of a statement on the test database, each as its columns
    /// joined by " | " (for EXPLAIN output).
    pub async fn lines(&self, sql: &str) -> anyhow::Result<Vec<String>> {
        TestDb::admin_lines(self.target, &self.dsn, sql).await
    }

    /// [`TestDb::lines`] on any server of the target's dialect.
    pub async fn admin_lines(target: Target, url: &str, sql: &str) -> anyhow::Result<Vec<String>> {
        if target.is_postgres() {
            let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let mut out = Vec::new();
            for m in c.simple_query(sql).await? {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    let cols: Vec<&str> =
                        (0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect();
                    out.push(cols.join(" | "));
                }
            }
            Ok(out)
        } else {
            use mysql_async::prelude::Queryable;
            let mut c = mysql_async::Conn::from_url(url).await?;
            let rows: Vec<mysql_async::Row> = c.query(sql).await?;
            let _ = c.disconnect().await;
            Ok(rows
                .into_iter()
                .map(|r| {
                    r.unwrap()
                        .into_iter()
                        .map(|v| match v {
                            mysql_async::Value::Bytes(b) => {
                                String::from_utf8_lossy(&b).into_owned()
                            }
                            mysql_async::Value::NULL => "NULL".into(),
                            other => format!("{other:?}"),
                        })
                        .collect::<Vec<_>>()
                        .join(" | ")
                })
                .collect())
        }
    }

    /// The database through another node where there are several (Galera),
    /// for a second etcdsql process; `dsn` otherwise.
    pub fn other_dsn(&self) -> &str {
        self.dsns.last().unwrap_or(&self.dsn)
    }
}

/// One statement on the server's admin connection.
pub async fn admin_sql(target: Target, admin: &str, sql: &str) -> anyhow::Result<()> {
    if target.is_postgres() {
        let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.batch_execute(sql).await?;
    } else {
        use mysql_async::prelude::Queryable;
        let mut conn = mysql_async::Conn::from_url(admin).await?;
        conn.query_drop(sql).await?;
        let _ = conn.disconnect().await;
    }
    Ok(())
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (target, admin) = (self.target, self.admin.clone());
        let sql = match target {
            Target::Sqlite | Target::Etcd => return,
            Target::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            Target::Cockroach => format!("DROP DATABASE IF EXISTS {} CASCADE", self.name),
            _ => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        // Drop runs outside async; use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(admin_sql(target, &admin, &sql)).ok()
        })
        .join();
    }
}

/// A server process on a loopback port; killed on drop.
pub struct Process {
    pub endpoint: String,
    child: Child,
    _dir: Option<tempdir::Dir>,
    log: PathBuf,
}

impl Process {
    /// etcdsql serving `dsn`.
    pub async fn etcdsql(bin: &Path, dsn: &str) -> anyhow::Result<Process> {
        Self::etcdsql_with(bin, dsn, &[]).await
    }

    pub async fn etcdsql_with(bin: &Path, dsn: &str, extra: &[&str]) -> anyhow::Result<Process> {
        on_free_ports(|| async {
            let port = free_port();
            let log = std::env::temp_dir().join(format!("{}.log", unique_name("etcdsql_log")));
            let mut cmd = Command::new(bin);
            cmd.args(["--endpoint", dsn, "--listen-client-urls"])
                .arg(format!("http://127.0.0.1:{port}"))
                .args(extra);
            // Each case gets a fresh database; the schema cases test refusals.
            if !extra.iter().any(|a| a.starts_with("--auto-migrate")) {
                cmd.arg("--auto-migrate");
            }
            Self::launch(cmd, port, log, None).await
        })
        .await
    }

    /// etcd 3.4 with a fresh data dir (fsync on, as shipped).
    pub async fn etcd() -> anyhow::Result<Process> {
        on_free_ports(Self::etcd_once).await
    }

    async fn etcd_once() -> anyhow::Result<Process> {
        let (port, peer) = (free_port(), free_port());
        let dir = tempdir::Dir::new(&unique_name("etcd_it"))?;
        let client = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new("etcd");
        cmd.arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("default={peer_url}")]);
        let log = dir.path().join("etcd.log");
        Self::launch(cmd, port, log, Some(dir)).await
    }

    /// Starts `cmd` with its stderr in `log` and waits until it serves on `port`.
    async fn launch(
        mut cmd: Command,
        port: u16,
        log: PathBuf,
        dir: Option<tempdir::Dir>,
    ) -> anyhow::Result<Process> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        let mut p = Process {
            endpoint: format!("127.0.0.1:{port}"),
            child,
            _dir: dir,
            log,
        };
        p.wait_ready().await?;
        Ok(p)
    }

    /// Waits until a Range answers (etcd needs to elect itself first).
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "server exited with {status}:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(mut c) = self.client().await
                && c.get("etcdsql-it-ready", None).await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "server at {} not ready after 30 s:\n{}",
                    self.endpoint,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(30));
        Ok(etcd_client::Client::connect([self.endpoint.as_str()], Some(opts)).await?)
    }

    /// Resident memory now and at its peak (VmRSS, VmHWM), in bytes.
    pub fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        (kib("VmRSS:"), kib("VmHWM:"))
    }

    /// CPU time it has used (user + system), in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the parenthesised name: utime and stime are the
        // 12th and 13th, in clock ticks (100 per second on Linux).
        let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
        let f: Vec<u64> = after
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / 100.0
    }

    /// SIGTERM, as `systemctl stop` or a pod's termination sends; then
    /// waits up to `limit` for the process to exit. Returns how long it
    /// took, or None if it was still running (it is killed then).
    pub fn terminate(&mut self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        while sent && started.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        None
    }

    /// SIGSTOP, or SIGCONT to go on: a paused process notices nothing.
    pub fn pause(&self, paused: bool) {
        let signal = if paused { "-STOP" } else { "-CONT" };
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill {signal} {}", self.child.id());
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The text of etcdsql's Prometheus endpoint on `port` (HTTP response
/// included).
pub async fn scrape_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("metrics port");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("metrics request");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("metrics response");
    out
}

/// The sum of a counter's samples (all label sets) in a scrape.
pub fn metric_sum(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A target started fresh: the server and, for etcdsql, its database.
pub struct Started {
    pub target: Target,
    pub server: Process,
    pub db: Option<TestDb>,
}

impl Started {
    pub async fn new(target: Target, bin: &Path) -> anyhow::Result<Started> {
        Started::with_args(target, bin, &[]).await
    }

    /// `extra` goes to etcdsql's command line (not to etcd's).
    pub async fn with_args(target: Target, bin: &Path, extra: &[&str]) -> anyhow::Result<Started> {
        if target == Target::Etcd {
            return Ok(Started {
                target,
                server: Process::etcd().await?,
                db: None,
            });
        }
        let db = TestDb::create(target).await?;
        let server = Process::etcdsql_with(bin, &db.dsn, extra).await?;
        Ok(Started {
            target,
            server,
            db: Some(db),
        })
    }
}

/// etcd's answers to a test script, computed once per test binary and
/// shared by the cases that compare against it; `None` where etcd is not
/// installed (and not required).
pub struct Reference(tokio::sync::OnceCell<Option<Vec<String>>>);

impl Reference {
    pub const fn new() -> Self {
        Reference(tokio::sync::OnceCell::const_new())
    }

    pub async fn get<F, Fut>(&self, transcript: F) -> Option<&Vec<String>>
    where
        F: FnOnce(Target) -> Fut,
        Fut: std::future::Future<Output = Vec<String>>,
    {
        self.0
            .get_or_init(|| async {
                if Target::Etcd.available() {
                    Some(transcript(Target::Etcd).await)
                } else {
                    None
                }
            })
            .await
            .as_ref()
    }
}

impl Default for Reference {
    fn default() -> Self {
        Self::new()
    }
}

/// A response's Debug text with what legitimately differs between servers
/// (cluster and member ids, Raft term) blanked out.
pub fn normalize(debug: &str) -> String {
    let mut out = debug.to_string();
    for field in ["cluster_id: ", "member_id: ", "raft_term: "] {
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(i) = rest.find(field) {
            let (head, tail) = rest.split_at(i + field.len());
            result.push_str(head);
            let digits = tail.chars().take_while(char::is_ascii_digit).count();
            result.push('_');
            rest = &tail[digits..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_blanks_identity_fields() {
        let s = "ResponseHeader { cluster_id: 123, member_id: 45, revision: 7, raft_term: 2 }";
        assert_eq!(
            normalize(s),
            "ResponseHeader { cluster_id: _, member_id: _, revision: 7, raft_term: _ }"
        );
    }

    #[test]
    fn database_names_replace_the_path() {
        assert_eq!(
            replace_db("postgres://u@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u@h:5432/x?sslmode=disable"
        );
        assert_eq!(
            replace_db("mysql://root@127.0.0.1:3306", "x"),
            "mysql://root@127.0.0.1:3306/x"
        );
    }
}
