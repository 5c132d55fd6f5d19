//! Database servers for the suite. Each target's server comes from its DSN
//! variable when that is set, and otherwise from containers started here
//! with testcontainers (host networking, loopback ports) and owned by the
//! run: [`shutdown`] removes them, and the watchdog removes them on
//! SIGINT/SIGTERM.
//!
//! | target    | DSN variable                          | image (override variable)                 |
//! |-----------|---------------------------------------|-------------------------------------------|
//! | postgres  | ETCDSQL_TEST_POSTGRES_URL             | postgres:15 (ETCDSQL_TEST_POSTGRES_IMAGE)  |
//! | mariadb   | ETCDSQL_TEST_MYSQL_URL                | mariadb:10.11 (ETCDSQL_TEST_MARIADB_IMAGE) |
//! | galera    | ETCDSQL_TEST_GALERA_URLS (one per node, comma-separated) | mariadb:10.11, 3 nodes |
//! | cockroach | ETCDSQL_TEST_COCKROACH_URL            | cockroachdb/cockroach:v24.3.5 (ETCDSQL_TEST_COCKROACH_IMAGE) |
//! | tidb      | ETCDSQL_TEST_TIDB_URL                 | pingcap/tidb:v8.5.1 (ETCDSQL_TEST_TIDB_IMAGE) |
//!
//! `integration/images/build.sh` builds postgres:15 and mariadb:10.11 from
//! Debian's packages where no registry is reachable. MySQL URLs carry
//! `prefer_socket=false`: mysql_async would otherwise swap the container's
//! loopback port for the socket path it reports, which on the host is
//! another server's.

use std::future::Future;
use std::process::{Command, Stdio};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};

use crate::{Target, free_port};

/// Docker calls run on this runtime, whatever runtime the caller is on:
/// the Docker client and the containers outlive any one test's runtime.
static DOCKER_RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("docker")
        .enable_all()
        .build()
        .expect("a runtime for Docker calls")
});

/// Runs `f` on the Docker runtime and waits for it (from synchronous code).
fn on_docker_blocking<F>(f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    DOCKER_RT.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().expect("the Docker runtime dropped a task")
}

/// A running container; removed on drop.
pub struct Container {
    inner: Option<Arc<ContainerAsync<GenericImage>>>,
}

impl Container {
    fn start(req: ContainerRequest<GenericImage>) -> anyhow::Result<Container> {
        let c = on_docker_blocking(async move { req.start().await })?;
        Ok(Container {
            inner: Some(Arc::new(c)),
        })
    }

    fn handle(&self) -> Arc<ContainerAsync<GenericImage>> {
        self.inner.clone().expect("container present until drop")
    }

    /// Stops the container (SIGTERM, then SIGKILL after 10 s), as an
    /// operator's restart would.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let c = self.handle();
        Ok(DOCKER_RT.spawn(async move { c.stop().await }).await??)
    }

    /// Freezes (`docker pause`) or thaws the container: its connections stay
    /// open and answer nothing, as a black-holed host's would.
    pub fn freeze(&self, frozen: bool) -> anyhow::Result<()> {
        let id = self.handle().id().to_string();
        let verb = if frozen { "pause" } else { "unpause" };
        anyhow::ensure!(docker(&[verb, &id]), "docker {verb} {id} failed");
        Ok(())
    }

    /// Kills the container's server (SIGKILL, no shutdown) and starts it
    /// again at once, as a power cut and reboot would.
    pub fn restart_now(&self) -> anyhow::Result<()> {
        let id = self.handle().id().to_string();
        anyhow::ensure!(
            docker(&["restart", "-t", "0", &id]),
            "docker restart {id} failed"
        );
        Ok(())
    }

    pub async fn start_again(&self) -> anyhow::Result<()> {
        let c = self.handle();
        Ok(DOCKER_RT.spawn(async move { c.start().await }).await??)
    }

    /// CPU time the container has used (cgroup v1 or v2), in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        container_cpu_seconds(self.handle().id())
    }

    fn id(&self) -> String {
        self.handle().id().to_string()
    }

    /// The container's output so far, for failure messages.
    pub fn logs(&self) -> String {
        let c = self.handle();
        on_docker_blocking(async move {
            let mut out = c.stdout_to_vec().await.unwrap_or_default();
            out.extend(c.stderr_to_vec().await.unwrap_or_default());
            String::from_utf8_lossy(&out).into_owned()
        })
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(c) = self.inner.take() {
            // ContainerAsync removes itself on drop, which needs its runtime.
            on_docker_blocking(async move { drop(c) });
        }
    }
}

/// CPU time container `id` has used (cgroup v1 or v2), in seconds.
fn container_cpu_seconds(id: &str) -> Option<f64> {
    let v1 = format!("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage");
    if let Ok(ns) = std::fs::read_to_string(v1) {
        return ns.trim().parse::<f64>().ok().map(|ns| ns / 1e9);
    }
    for v2 in [
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat"),
        format!("/sys/fs/cgroup/docker/{id}/cpu.stat"),
    ] {
        if let Ok(stat) = std::fs::read_to_string(v2) {
            let us = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?;
            return us.trim().parse::<f64>().ok().map(|us| us / 1e6);
        }
    }
    None
}

/// Containers that live for the whole run (shared by the cases).
static OWNED: Mutex<Vec<Container>> = Mutex::new(Vec::new());

/// Removes the shared containers; the test binary calls it before exiting.
pub fn shutdown() {
    let owned = std::mem::take(&mut *OWNED.lock().unwrap_or_else(|e| e.into_inner()));
    drop(owned);
}

/// A database server: admin DSNs, one per node (one for a single server).
pub struct Server {
    pub urls: Vec<String>,
    /// Its containers' ids, where the suite started it.
    pub containers: Vec<String>,
}

impl Server {
    /// CPU time its containers have used, in seconds; None for a server
    /// given by DSN.
    pub fn cpu_seconds(&self) -> Option<f64> {
        if self.containers.is_empty() {
            return None;
        }
        self.containers
            .iter()
            .map(|id| container_cpu_seconds(id))
            .sum()
    }
}

fn slot(target: Target) -> &'static OnceLock<Result<Server, String>> {
    const TARGETS: usize = Target::ETCDSQL.len() + 1;
    static SLOTS: [OnceLock<Result<Server, String>>; TARGETS] =
        [const { OnceLock::new() }; TARGETS];
    &SLOTS[target as usize]
}

/// The shared server for `target`, started on first use; the error says
/// why there is none ("no image for cockroachdb", ...).
pub fn server(target: Target) -> Result<&'static Server, String> {
    slot(target)
        .get_or_init(|| provide(target).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(Clone::clone)
}

/// A server of its own for a case that stops and restarts it: always a
/// container (a DSN's server is not ours to restart).
pub fn dedicated(target: Target) -> anyhow::Result<(Server, Container)> {
    let (server, mut owned) = start_containers(target)?;
    let c = owned.pop().context("one container")?;
    Ok((server, c))
}

/// As [`dedicated`], every container of the target (Galera: one per node,
/// the bootstrap node first).
pub fn dedicated_cluster(target: Target) -> anyhow::Result<(Server, Vec<Container>)> {
    start_containers(target)
}

fn dsn_var(target: Target) -> Option<&'static str> {
    Some(match target {
        Target::Postgres => "ETCDSQL_TEST_POSTGRES_URL",
        Target::Mariadb => "ETCDSQL_TEST_MYSQL_URL",
        Target::Galera => "ETCDSQL_TEST_GALERA_URLS",
        Target::Cockroach => "ETCDSQL_TEST_COCKROACH_URL",
        Target::Tidb => "ETCDSQL_TEST_TIDB_URL",
        Target::Etcd | Target::Sqlite => return None,
    })
}

fn image(target: Target) -> (String, &'static str) {
    let (var, default) = match target {
        Target::Postgres => ("ETCDSQL_TEST_POSTGRES_IMAGE", "postgres:15"),
        Target::Mariadb | Target::Galera => ("ETCDSQL_TEST_MARIADB_IMAGE", "mariadb:10.11"),
        Target::Cockroach => (
            "ETCDSQL_TEST_COCKROACH_IMAGE",
            "cockroachdb/cockroach:v24.3.5",
        ),
        Target::Tidb => ("ETCDSQL_TEST_TIDB_IMAGE", "pingcap/tidb:v8.5.1"),
        Target::Etcd | Target::Sqlite => ("", ""),
    };
    (
        std::env::var(var).unwrap_or_else(|_| default.to_string()),
        var,
    )
}

fn provide(target: Target) -> anyhow::Result<Server> {
    if let Some(var) = dsn_var(target)
        && let Ok(v) = std::env::var(var)
    {
        let urls: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
        if target == Target::Galera && urls.len() < 2 {
            bail!(
                "{var} names {} node(s); the Galera cases need 2 or more",
                urls.len()
            );
        }
        return Ok(Server {
            urls,
            containers: Vec::new(),
        });
    }
    let (mut server, owned) = start_containers(target)?;
    server.containers = owned.iter().map(Container::id).collect();
    OWNED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(owned);
    Ok(server)
}

fn docker(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure `name` is present locally, pulling it where a registry is
/// reachable.
fn ensure_image(target: Target, name: &str, var: &str) -> anyhow::Result<()> {
    if !docker(&["version", "--format", "{{.Server.Version}}"]) {
        bail!(
            "no Docker engine, and {} is not set",
            dsn_var(target).unwrap_or_default()
        );
    }
    if docker(&["image", "inspect", name]) || docker(&["pull", "-q", name]) {
        return Ok(());
    }
    bail!(
        "no image for {} ({name}; {var} names another)",
        target.name()
    )
}

fn request(name: &str) -> ContainerRequest<GenericImage> {
    let (repo, tag) = name.rsplit_once(':').unwrap_or((name, "latest"));
    host(GenericImage::new(repo, tag))
}

fn host(image: GenericImage) -> ContainerRequest<GenericImage> {
    image
        .with_network("host")
        .with_label("org.etcdsql.test", std::process::id().to_string())
        .with_startup_timeout(Duration::from_secs(180))
}

/// The target's containers, started and ready; a second attempt, on new
/// ports, where the first did not come up (seen once for Galera on a loaded
/// machine). A failed attempt's containers are removed as it returns.
fn start_containers(target: Target) -> anyhow::Result<(Server, Vec<Container>)> {
    let (name, var) = image(target);
    ensure_image(target, &name, var)?;
    match launch(target, &name) {
        Ok(started) => Ok(started),
        Err(e) => {
            eprintln!("{}: retrying after: {e:#}", target.name());
            launch(target, &name)
        }
    }
}

fn launch(target: Target, name: &str) -> anyhow::Result<(Server, Vec<Container>)> {
    // Single servers: the container request and the admin DSN.
    let (req, url) = match target {
        Target::Galera => return galera(name),
        Target::Postgres => {
            let port = free_port();
            (
                request(name)
                    .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
                    .with_cmd([
                        "postgres".to_string(),
                        "-p".into(),
                        port.to_string(),
                        "-c".into(),
                        "listen_addresses=127.0.0.1".into(),
                        "-c".into(),
                        "max_connections=500".into(),
                    ]),
                format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            )
        }
        Target::Mariadb => {
            let port = free_port();
            (mariadb_request(name, port, &[]), mysql_url(port))
        }
        Target::Cockroach => {
            let (port, http) = (free_port(), free_port());
            (
                request(name).with_cmd([
                    "start-single-node".to_string(),
                    "--insecure".into(),
                    format!("--listen-addr=127.0.0.1:{port}"),
                    format!("--http-addr=127.0.0.1:{http}"),
                    "--store=type=mem,size=2GiB".into(),
                ]),
                format!("postgres://root@127.0.0.1:{port}/defaultdb?sslmode=disable"),
            )
        }
        Target::Tidb => {
            let (port, status) = (free_port(), free_port());
            (
                request(name).with_cmd([
                    "-host".to_string(),
                    "127.0.0.1".into(),
                    "-P".into(),
                    port.to_string(),
                    "-status".into(),
                    status.to_string(),
                ]),
                mysql_url(port),
            )
        }
        Target::Etcd | Target::Sqlite => bail!("{} needs no server", target.name()),
    };
    let c = start_ready(target, req, &url)?;
    Ok((
        Server {
            urls: vec![url],
            containers: Vec::new(),
        },
        vec![c],
    ))
}

fn mysql_url(port: u16) -> String {
    format!("mysql://root@127.0.0.1:{port}/mysql?prefer_socket=false")
}

fn mariadb_request(name: &str, port: u16, extra: &[String]) -> ContainerRequest<GenericImage> {
    let mut cmd = vec![
        format!("--port={port}"),
        "--bind-address=127.0.0.1".to_string(),
        "--max-connections=1000".to_string(),
    ];
    cmd.extend_from_slice(extra);
    request(name)
        .with_env_var("MARIADB_ALLOW_EMPTY_ROOT_PASSWORD", "1")
        .with_cmd(cmd)
}

/// Three MariaDB Galera nodes on loopback ports: the first bootstraps the
/// cluster, the others join it by state transfer (rsync).
fn galera(name: &str) -> anyhow::Result<(Server, Vec<Container>)> {
    const NODES: usize = 3;
    let ports: Vec<[u16; 4]> = (0..NODES)
        .map(|_| [free_port(), free_port(), free_port(), free_port()])
        .collect();
    let (mut urls, mut owned) = (Vec::new(), Vec::new());
    for (i, [sql, gcomm, ist, sst]) in ports.iter().enumerate() {
        let cluster = if i == 0 {
            "gcomm://".to_string()
        } else {
            format!("gcomm://127.0.0.1:{}", ports[0][1])
        };
        let args = [
            "--wsrep_on=ON".to_string(),
            "--wsrep_provider=/usr/lib/galera/libgalera_smm.so".into(),
            "--wsrep_cluster_name=etcdsql_it".into(),
            format!("--wsrep_cluster_address={cluster}"),
            format!("--wsrep_node_name=node{}", i + 1),
            format!("--wsrep_node_address=127.0.0.1:{gcomm}"),
            format!(
                "--wsrep_provider_options=gmcast.listen_addr=tcp://127.0.0.1:{gcomm};ist.recv_addr=127.0.0.1:{ist}"
            ),
            format!("--wsrep_sst_receive_address=127.0.0.1:{sst}"),
            "--wsrep_sst_method=rsync".into(),
            "--binlog_format=ROW".into(),
            "--innodb_autoinc_lock_mode=2".into(),
        ];
        let url = mysql_url(*sql);
        let c = start_ready(Target::Galera, mariadb_request(name, *sql, &args), &url)?;
        owned.push(c);
        urls.push(url);
    }
    Ok((
        Server {
            urls,
            containers: Vec::new(),
        },
        owned,
    ))
}

/// The port of a `scheme://user@127.0.0.1:PORT/...` URL.
pub fn port_of(url: &str) -> anyhow::Result<u16> {
    let after = url.rsplit_once('@').map_or(url, |(_, a)| a);
    let port = after
        .split(['/', '?'])
        .next()
        .and_then(|h| h.rsplit_once(':'))
        .context("no port in the URL")?
        .1;
    Ok(port.parse()?)
}

/// `url` with its port replaced.
pub fn with_port(url: &str, port: u16) -> anyhow::Result<String> {
    let old = port_of(url)?;
    Ok(url.replacen(&format!(":{old}/"), &format!(":{port}/"), 1))
}

/// A PostgreSQL primary of our own, and a hot standby of it made with
/// `pg_basebackup -R` (streaming replication) in a second container: the
/// primary's admin URL, the standby's, and both containers (primary
/// first). The standby keeps its data across a stop and start.
pub fn postgres_with_standby() -> anyhow::Result<(String, String, Vec<Container>)> {
    let (url, mut standbys, containers) = postgres_with_standbys(1)?;
    Ok((url, standbys.remove(0), containers))
}

/// As [`postgres_with_standby`], with `n` standbys.
pub fn postgres_with_standbys(n: usize) -> anyhow::Result<(String, Vec<String>, Vec<Container>)> {
    let (name, var) = image(Target::Postgres);
    ensure_image(Target::Postgres, &name, var)?;
    let (server, primary) = dedicated(Target::Postgres)?;
    let url = server.urls[0].clone();
    let primary_port = port_of(&url)?;
    let mut containers = vec![primary];
    let mut urls = Vec::new();
    for _ in 0..n {
        let port = free_port();
        let script = format!(
            "set -e; bin=/usr/lib/postgresql/15/bin; d=/var/lib/postgresql/standby; \
             install -d -o postgres -g postgres -m 0700 $d; install -d -o postgres -g postgres /var/run/postgresql; \
             if [ ! -s $d/PG_VERSION ]; then runuser -u postgres -- $bin/pg_basebackup -h 127.0.0.1 \
             -p {primary_port} -U postgres -D $d -R -X stream; fi; \
             exec setpriv --reuid=postgres --regid=postgres --init-groups $bin/postgres -D $d -p {port} \
             -c listen_addresses=127.0.0.1 -c hot_standby=on -c max_connections=500"
        );
        let (repo, tag) = name.rsplit_once(':').unwrap_or((&name, "latest"));
        let req = host(GenericImage::new(repo, tag).with_entrypoint("sh"))
            .with_cmd(["-c".to_string(), script]);
        let standby_url = with_port(&url, port)?;
        let standby = start_ready(Target::Postgres, req, &standby_url)?;
        containers.push(standby);
        urls.push(standby_url);
    }
    Ok((url, urls, containers))
}

/// A MariaDB primary (binary log, server id 1) and a replica of it by GTID
/// (server id 2, read-only): both admin URLs and both containers.
pub fn mariadb_with_replica() -> anyhow::Result<(String, String, Vec<Container>)> {
    let (name, var) = image(Target::Mariadb);
    ensure_image(Target::Mariadb, &name, var)?;
    let (p, r) = (free_port(), free_port());
    let primary_url = mysql_url(p);
    let primary = start_ready(
        Target::Mariadb,
        mariadb_request(
            &name,
            p,
            &[
                "--server-id=1".into(),
                "--log-bin=mysql-bin".into(),
                "--binlog-format=ROW".into(),
            ],
        ),
        &primary_url,
    )?;
    let replica_url = mysql_url(r);
    let replica = start_ready(
        Target::Mariadb,
        mariadb_request(
            &name,
            r,
            &[
                "--server-id=2".into(),
                "--read-only=ON".into(),
                "--log-bin=mysql-bin".into(),
                "--log-slave-updates=ON".into(),
            ],
        ),
        &replica_url,
    )?;
    let start = format!(
        "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {p}, MASTER_USER = 'root', \
         MASTER_PASSWORD = '', MASTER_USE_GTID = slave_pos; START SLAVE"
    );
    let u = replica_url.clone();
    on_docker_blocking(async move { crate::admin_sql(Target::Mariadb, &u, &start).await })?;
    Ok((primary_url, replica_url, vec![primary, replica]))
}

/// A MariaDB server of its own (no binary log) with `dir/slow_log.so`
/// preloaded: while `dir/on` exists, each write and sync of its redo log
/// first sleeps (integration/faults/slow_log.c). Its admin URL and container.
pub fn mariadb_slow_log(dir: &std::path::Path) -> anyhow::Result<(String, Container)> {
    let (name, var) = image(Target::Mariadb);
    ensure_image(Target::Mariadb, &name, var)?;
    let port = free_port();
    let url = mysql_url(port);
    let req = mariadb_request(&name, port, &[])
        .with_mount(testcontainers::core::Mount::bind_mount(
            dir.to_string_lossy().into_owned(),
            "/slow",
        ))
        .with_env_var("LD_PRELOAD", "/slow/slow_log.so")
        .with_env_var("SLOW_LOG_TRIGGER", "/slow/on");
    let c = start_ready(Target::Mariadb, req, &url)?;
    Ok((url, c))
}

/// Starts a container and waits until its server at `url` is ready.
fn start_ready(
    target: Target,
    req: ContainerRequest<GenericImage>,
    url: &str,
) -> anyhow::Result<Container> {
    let c = Container::start(req)?;
    wait_ready(target, url, &c)?;
    Ok(c)
}

/// Waits until the server answers (and, on Galera, is synced).
fn wait_ready(target: Target, url: &str, c: &Container) -> anyhow::Result<()> {
    let url = url.to_string();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last = String::new();
    while Instant::now() < deadline {
        let u = url.clone();
        match on_docker_blocking(async move { probe(target, &u).await }) {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!(
        "{} at {url} not ready after 180 s: {last}\n{}",
        target.name(),
        c.logs()
    )
}

async fn probe(target: Target, url: &str) -> anyhow::Result<()> {
    if target == Target::Galera {
        use mysql_async::prelude::Queryable;
        let mut c = mysql_async::Conn::from_url(url).await?;
        let ready: Option<i64> = c
            .query_first(
                "SELECT 1 FROM information_schema.GLOBAL_STATUS \
                 WHERE VARIABLE_NAME = 'WSREP_READY' AND VARIABLE_VALUE = 'ON'",
            )
            .await?;
        let _ = c.disconnect().await;
        if ready.is_none() {
            bail!("wsrep_ready is not ON");
        }
    }
    crate::admin_sql(target, url, "SELECT 1").await
}

/// A Pgpool-II (Debian's `pgpool2`) on the host, in streaming-replication
/// mode over `primary` and `standby`, balancing plain reads to the standby
/// (the primary's weight is 0) statement by statement; stopped on drop.
pub struct Pgpool {
    child: Child,
    /// The admin URL through the pool (database `postgres`).
    pub url: String,
}

impl Pgpool {
    pub fn start(primary: &str, standby: &str) -> anyhow::Result<Pgpool> {
        let bin = ["/usr/sbin/pgpool", "/usr/bin/pgpool"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .context("no pgpool (Debian package pgpool2)")?;
        let dir = std::env::temp_dir().join(format!("etcdsql-pgpool-{}", free_port()));
        std::fs::create_dir_all(&dir)?;
        let (port, pcp) = (free_port(), free_port());
        let d = dir.display();
        let conf = format!(
            "backend_clustering_mode = 'streaming_replication'\n\
             listen_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{d}'\npcp_listen_addresses = '127.0.0.1'\npcp_port = {pcp}\n\
             pcp_socket_dir = '{d}'\npid_file_name = '{d}/pgpool.pid'\nlogdir = '{d}'\n\
             backend_hostname0 = '127.0.0.1'\nbackend_port0 = {p0}\nbackend_weight0 = 0\n\
             backend_flag0 = 'ALLOW_TO_FAILOVER'\n\
             backend_hostname1 = '127.0.0.1'\nbackend_port1 = {p1}\nbackend_weight1 = 1\n\
             backend_flag1 = 'ALLOW_TO_FAILOVER'\nbackend_application_name1 = 'walreceiver'\n\
             enable_pool_hba = off\npool_passwd = ''\n\
             load_balance_mode = on\nstatement_level_load_balance = on\n\
             sr_check_period = 1\nsr_check_user = 'postgres'\nsr_check_password = ''\n\
             sr_check_database = 'postgres'\n\
             health_check_period = 1\nhealth_check_user = 'postgres'\nhealth_check_password = ''\n\
             health_check_database = 'postgres'\nhealth_check_max_retries = 0\n\
             auto_failback = on\nauto_failback_interval = 1\n\
             failover_on_backend_error = on\n\
             num_init_children = 128\nmax_pool = 1\nchild_life_time = 0\n\
             connection_life_time = 0\nlog_min_messages = warning\n",
            p0 = port_of(primary)?,
            p1 = port_of(standby)?,
        );
        std::fs::write(dir.join("pgpool.conf"), conf)?;
        std::fs::write(dir.join("pcp.conf"), "")?;
        std::fs::write(dir.join("pool_hba.conf"), "")?;
        // SIGINT: a fast shutdown that takes its child processes along.
        let child = Child::spawn(
            dir.clone(),
            "pgpool.log",
            "-INT",
            Command::new(bin)
                .arg("-n")
                .arg("-f")
                .arg(dir.join("pgpool.conf"))
                .arg("-F")
                .arg(dir.join("pcp.conf"))
                .arg("-a")
                .arg(dir.join("pool_hba.conf")),
        )?;
        let pool = Pgpool {
            child,
            url: with_port(primary, port)?,
        };
        pool.child
            .wait_serving(Target::Postgres, &pool.url, "SELECT 1")?;
        Ok(pool)
    }
}

/// A proxy tier in front of a primary and a replica.
pub trait Proxy: Send {
    /// The admin URL through the proxy.
    fn url(&self) -> &str;
    /// What the proxy logged.
    fn log(&self) -> String;
}

impl Proxy for Pgpool {
    fn url(&self) -> &str {
        &self.url
    }
    fn log(&self) -> String {
        self.child.log()
    }
}

/// A proxy binary: `var` (PGCAT_BIN, PROXYSQL_BIN) or `name` on PATH.
pub fn proxy_bin(var: &str, name: &str) -> Result<std::path::PathBuf, String> {
    if let Ok(p) = std::env::var(var) {
        let p = std::path::PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{var}={} is not a file", p.display()))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("no {name} on PATH and {var} is not set (docs/compatibility.md)"))
}

/// A child process in a directory of its own, its output in a log file
/// there; when dropped, stopped by `signal` (killed after 5 s) and the
/// directory removed.
pub(crate) struct Child {
    child: std::process::Child,
    pub(crate) dir: std::path::PathBuf,
    log: &'static str,
    signal: &'static str,
}

impl Child {
    /// `signal`: what stops it, as `kill` spells it ("-TERM").
    pub(crate) fn spawn(
        dir: std::path::PathBuf,
        log: &'static str,
        signal: &'static str,
        cmd: &mut Command,
    ) -> anyhow::Result<Child> {
        let out = std::fs::File::create(dir.join(log))?;
        let child = cmd
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        Ok(Child {
            child,
            dir,
            log,
            signal,
        })
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(self.log)).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub(crate) fn exited(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits until `sql` succeeds at `url`.
    fn wait_serving(&self, target: Target, url: &str, sql: &'static str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let u = url.to_string();
            match on_docker_blocking(async move { crate::admin_sql(target, &u, sql).await }) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!("{} not serving: {e:#}\n{}", self.log, self.log())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args([self.signal, &self.child.id().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// PgCat (PGCAT_BIN or `pgcat` on PATH) in front of a PostgreSQL primary
/// and a hot standby, splitting reads from writes with its query parser.
pub struct Pgcat {
    child: Child,
    /// The URL of `database` through PgCat.
    pub url: String,
    /// The configuration it runs.
    pub config: String,
}

impl Pgcat {
    /// `db`: a database's URL on the primary (it exists on both servers;
    /// PgCat serves one pool per database). `mode`: "session" or
    /// "transaction".
    pub fn start(primary: &str, standby: &str, db: &str, mode: &str) -> anyhow::Result<Pgcat> {
        let database = db
            .rsplit('/')
            .next()
            .and_then(|d| d.split('?').next())
            .filter(|d| !d.is_empty())
            .with_context(|| format!("no database in {db}"))?;
        let bin = proxy_bin("PGCAT_BIN", "pgcat").map_err(anyhow::Error::msg)?;
        let dir = std::env::temp_dir().join(format!("etcdsql-pgcat-{}", free_port()));
        std::fs::create_dir_all(&dir)?;
        let port = free_port();
        let config = format!(
            r#"[general]
host = "127.0.0.1"
port = {port}
admin_username = "pgcat"
admin_password = "pgcat"
enable_prometheus_exporter = false
ban_time = 2
healthcheck_delay = 500
connect_timeout = 1000

[pools.{database}]
pool_mode = "{mode}"
query_parser_enabled = true
query_parser_read_write_splitting = true
primary_reads_enabled = false
prepared_statements_cache_size = 500

[pools.{database}.users.0]
username = "postgres"
password = "postgres"
auth_type = "trust"
pool_size = 40
statement_timeout = 0

[pools.{database}.shards.0]
database = "{database}"
servers = [["127.0.0.1", {p0}, "primary"], ["127.0.0.1", {p1}, "replica"]]
"#,
            p0 = port_of(primary)?,
            p1 = port_of(standby)?,
        );
        std::fs::write(dir.join("pgcat.toml"), &config)?;
        let child = Child::spawn(
            dir.clone(),
            "pgcat.log",
            "-TERM",
            Command::new(bin).arg(dir.join("pgcat.toml")),
        )?;
        let url = with_port(db, port)?;
        let pool = Pgcat { child, url, config };
        pool.child
            .wait_serving(Target::Postgres, &pool.url, "SELECT 1")?;
        Ok(pool)
    }
}

impl Proxy for Pgcat {
    fn url(&self) -> &str {
        &self.url
    }
    fn log(&self) -> String {
        self.child.log()
    }
}

/// ProxySQL (PROXYSQL_BIN or `proxysql` on PATH) in front of a MariaDB
/// primary (hostgroup 10) and its replica (hostgroup 20): etcdsql's
/// primary statements (`/*NO LOAD BALANCE*/`, transactions, `FOR UPDATE`)
/// to the primary, other SELECTs to the replica, the primary serving them
/// only while the replica is shunned.
pub struct Proxysql {
    child: Child,
    /// The admin URL through ProxySQL.
    pub url: String,
    /// The configuration it runs.
    pub config: String,
}

impl Proxysql {
    pub fn start(primary: &str, replica: &str) -> anyhow::Result<Proxysql> {
        let bin = proxy_bin("PROXYSQL_BIN", "proxysql").map_err(anyhow::Error::msg)?;
        let dir = std::env::temp_dir().join(format!("etcdsql-proxysql-{}", free_port()));
        std::fs::create_dir_all(dir.join("data"))?;
        let (port, admin) = (free_port(), free_port());
        let (p0, p1) = (port_of(primary)?, port_of(replica)?);
        let config = format!(
            r#"datadir = "{data}"
admin_variables = {{
  admin_credentials = "admin:admin"
  mysql_ifaces = "127.0.0.1:{admin}"
}}
mysql_variables = {{
  threads = 2
  interfaces = "127.0.0.1:{port}"
  server_version = "10.11.0-MariaDB"
  monitor_username = "root"
  monitor_password = ""
  monitor_ping_interval = 1000
  monitor_connect_interval = 1000
  monitor_replication_lag_interval = 1000
  connect_timeout_server = 1000
  connect_timeout_server_max = 3000
  shun_recovery_time_sec = 1
  poll_timeout = 100
}}
mysql_servers = (
  {{ address = "127.0.0.1", port = {p0}, hostgroup = 10, max_connections = 200 }},
  {{ address = "127.0.0.1", port = {p1}, hostgroup = 20, weight = 10000000, max_connections = 200 }},
  {{ address = "127.0.0.1", port = {p0}, hostgroup = 20, weight = 1, max_connections = 200 }}
)
mysql_users = (
  {{ username = "root", password = "", default_hostgroup = 10, transaction_persistent = 1 }}
)
mysql_query_rules = (
  {{ rule_id = 1, active = 1, match_pattern = "^/\\*NO LOAD BALANCE\\*/", destination_hostgroup = 10, apply = 1 }},
  {{ rule_id = 2, active = 1, match_digest = "FOR UPDATE", destination_hostgroup = 10, apply = 1 }},
  {{ rule_id = 3, active = 1, match_digest = "^SELECT", destination_hostgroup = 20, apply = 1 }}
)
"#,
            data = dir.join("data").display(),
        );
        std::fs::write(dir.join("proxysql.cnf"), &config)?;
        let child = Child::spawn(
            dir.clone(),
            "proxysql.log",
            "-TERM",
            Command::new(bin)
                .args(["-f", "--initial", "-c"])
                .arg(dir.join("proxysql.cnf"))
                .arg("-D")
                .arg(dir.join("data")),
        )?;
        let proxy = Proxysql {
            child,
            url: with_port(primary, port)?,
            config,
        };
        proxy
            .child
            .wait_serving(Target::Mariadb, &proxy.url, "SELECT 1")?;
        Ok(proxy)
    }
}

impl Proxy for Proxysql {
    fn url(&self) -> &str {
        &self.url
    }
    fn log(&self) -> String {
        self.child.log()
    }
}
