//! Flags, listeners and the serve loop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use tokio_stream::StreamExt;

use crate::authority::Lenient;
use crate::autopart::{Partitioner, PartitionsFile};
use crate::backend::{self, Backend, DbError, Dsn};
use crate::cork::Corked;
use crate::metrics::{self, RpcLayer};
use crate::proto::etcdserverpb::auth_server::AuthServer;
use crate::proto::etcdserverpb::cluster_server::ClusterServer;
use crate::proto::etcdserverpb::kv_server::KvServer;
use crate::proto::etcdserverpb::lease_server::LeaseServer;
use crate::proto::etcdserverpb::maintenance_server::MaintenanceServer;
use crate::proto::etcdserverpb::watch_server::WatchServer;
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;
use crate::replicas::{self, Replicas};
use crate::service::cluster::ClusterService;
use crate::service::election::ElectionService;
use crate::service::kv::KvService;
use crate::service::lease::LeaseService;
use crate::service::lock::LockService;
use crate::service::maintenance::MaintenanceService;
use crate::service::watch::WatchService;
use crate::service::{Identity, member_id};
use crate::store::check::MAX_TXN_OPS;
use crate::store::{Compaction, Store};
use crate::tasks::Tasks;
use crate::watch::{BufferLimits, Hub};

/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1_572_864;
/// gRPC framing headroom etcd allows above `--max-request-bytes`, so that
/// an oversized write gets etcd's own error instead of a transport error.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Server flags; names follow etcd's where etcd has the flag.
#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// The database: postgres://…, mysql://… (also mariadb://), or
    /// sqlite:///path. Without it, an SQLite file under --data-dir. Also
    /// read from ETCDSQL_ENDPOINT (keeps a password off the command line).
    #[arg(long, env = "ETCDSQL_ENDPOINT", hide_env_values = true)]
    pub endpoint: Option<String>,

    /// Where the embedded SQLite database lives when no --endpoint is given.
    #[arg(long, default_value = "default.etcd")]
    pub data_dir: PathBuf,

    /// This member's name (reported by the cluster APIs).
    #[arg(long, default_value = "default")]
    pub name: String,

    /// Comma-separated URLs to serve clients on.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    pub listen_client_urls: Vec<String>,

    /// Comma-separated URLs clients are told to use (default: the listen URLs).
    #[arg(long, value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,

    /// Largest write request accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,

    /// Size of the etcdsql tables (as the database reports it) at which
    /// writes fail and the NOSPACE alarm is raised, as etcd's flag; 0 or
    /// less: no quota (the database's own limits apply).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub quota_backend_bytes: i64,

    /// Auth tokens, as etcd's flag: `simple`, or
    /// `jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256,ttl=5m`.
    #[arg(long, default_value = "simple")]
    pub auth_token: String,

    /// How long a simple token lives after its last use, in seconds.
    #[arg(long, default_value_t = 300)]
    pub auth_token_ttl: u64,

    /// bcrypt cost of user passwords (4 to 31; another value is 10, as in
    /// etcd).
    #[arg(long, default_value_t = 10)]
    pub bcrypt_cost: u32,

    /// Most operations in one Txn branch.
    #[arg(long, default_value_t = MAX_TXN_OPS)]
    pub max_txn_ops: usize,

    /// Comma-separated http:// URLs serving Prometheus /metrics and /health.
    #[arg(long, value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,

    /// Server certificate (PEM) for https:// listen URLs.
    #[arg(long)]
    pub cert_file: Option<PathBuf>,

    /// Key of --cert-file (PEM).
    #[arg(long)]
    pub key_file: Option<PathBuf>,

    /// CA (PEM) that client certificates must chain to, with --client-cert-auth.
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,

    /// Refuse clients without a certificate signed by --trusted-ca-file.
    #[arg(long)]
    pub client_cert_auth: bool,

    /// How often watches that asked for progress notifications get one
    /// while idle (etcd's flag; e.g. 10m, 30s, 500ms).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub experimental_watch_progress_notify_interval: Duration,

    /// Apply pending schema migrations on start instead of refusing to
    /// start (default: on for the embedded SQLite, off for servers).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub auto_migrate: Option<bool>,

    /// How compaction removes obsolete history: `drop` whole epoch
    /// partitions (PostgreSQL, MySQL family; SQLite deletes rows) or
    /// `delete` rows.
    #[arg(long, value_enum, default_value_t = Compaction::Drop)]
    pub history_compaction: Compaction,

    /// A TOML file: `resources = [...]` to give partitions of their own at
    /// start (rows move online), `auto_partition = true|false`.
    #[arg(long)]
    pub partitions_file: Option<PathBuf>,

    /// Give each custom resource partitions of its own when its
    /// CustomResourceDefinition is written (PostgreSQL, MySQL family).
    #[arg(long)]
    pub auto_partition: bool,

    /// A read replica of --endpoint (repeatable; same dialect): Range and
    /// watch reads go to healthy replicas, still linearizable.
    #[arg(long = "read-endpoint")]
    pub read_endpoints: Vec<String>,

    /// How long a read waits for a replica to reach the revision it needs
    /// before the primary answers it.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub replica_wait: Duration,

    /// A replica further behind the primary than this is out of rotation
    /// until it catches up.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub max_replica_lag: Duration,

    /// A read on a replica that takes longer is abandoned and served by
    /// another replica or the primary.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub replica_read_timeout: Duration,

    /// --endpoint is a proxy tier over a primary and replicas (Pgpool-II,
    /// pgcat, ProxySQL): writes and fencing reads run in transactions it
    /// sends to the primary, other reads outside them, for it to balance.
    #[arg(long)]
    pub proxy_tier: bool,
}

/// The `--read-endpoint`s, each of the primary's dialect; with
/// `--proxy-tier`, the proxy's balanced side. `backend` is what the rest of
/// the server uses (behind a proxy, [`backend::Primary`] over `balanced`).
fn replicas(
    tasks: &Tasks,
    config: &Config,
    primary: &Dsn,
    backend: &Arc<dyn Backend>,
    balanced: &Arc<dyn Backend>,
) -> anyhow::Result<Option<Arc<Replicas>>> {
    let settings = replicas::Settings {
        wait: config.replica_wait,
        max_lag: config.max_replica_lag,
        read_timeout: config.replica_read_timeout,
    };
    if config.proxy_tier {
        if !config.read_endpoints.is_empty() || matches!(primary, Dsn::Sqlite(_)) {
            bail!(
                "--proxy-tier takes one PostgreSQL or MySQL --endpoint (the proxy) and no --read-endpoint"
            );
        }
        return Ok(Some(Replicas::start(
            tasks,
            backend.clone(),
            vec![(primary.clone(), Some(balanced.clone()))],
            settings,
        )));
    }
    if config.read_endpoints.is_empty() {
        return Ok(None);
    }
    let mut dsns = Vec::new();
    for e in &config.read_endpoints {
        let d = Dsn::parse(e).map_err(|e| anyhow::anyhow!("--read-endpoint: {e}"))?;
        if std::mem::discriminant(&d) != std::mem::discriminant(primary)
            || matches!(d, Dsn::Sqlite(_))
        {
            bail!(
                "--read-endpoint {} is not a replica of {}: replicas are PostgreSQL or MySQL servers of the primary's dialect",
                d.redacted(),
                primary.redacted()
            );
        }
        dsns.push((d, None));
    }
    Ok(Some(Replicas::start(
        tasks,
        backend.clone(),
        dsns,
        settings,
    )))
}

/// The server's own partitioning: the file's resources now, CRDs as they
/// come with `--auto-partition`.
fn partitioner(
    tasks: &Tasks,
    config: &Config,
    backend: &Arc<dyn Backend>,
) -> anyhow::Result<Option<Arc<Partitioner>>> {
    let file = match &config.partitions_file {
        Some(path) => PartitionsFile::read(path)?,
        None => PartitionsFile::default(),
    };
    let auto = config.auto_partition || file.auto_partition;
    if !auto && file.resources.is_empty() {
        return Ok(None);
    }
    if backend.partitions().is_none() {
        tracing::warn!(
            "SQLite has no native partitions: --partitions-file and --auto-partition do nothing here"
        );
        return Ok(None);
    }
    let p = Partitioner::new(tasks, backend.clone(), auto);
    for r in file.resources {
        p.ensure(r);
    }
    Ok(Some(p))
}

/// `10m`, `30s`, `500ms`, `1h`: what etcd's duration flags accept, minus
/// compound forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{s:?} has no unit (ms, s, m, h)"))?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().map_err(|_| format!("{s:?} is not a duration"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("unknown unit {u:?} in {s:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

impl Config {
    /// The defaults, on `endpoint` (or the SQLite under `data_dir`): for
    /// subcommands that open the store without serving it.
    pub fn for_tool(endpoint: Option<String>, data_dir: &std::path::Path) -> Config {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            config: Config,
        }
        let mut c = <Defaults as clap::Parser>::parse_from(["etcdsql"]).config;
        c.endpoint = endpoint;
        c.data_dir = data_dir.to_path_buf();
        c
    }

    pub fn dsn(&self) -> anyhow::Result<Dsn> {
        Dsn::from_flags(self.endpoint.as_deref(), &self.data_dir).map_err(anyhow::Error::msg)
    }
}

/// A bound client listener; `tls` for https:// URLs.
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: bool,
}

/// `http://host:port` or `https://host:port` → (address, TLS?).
fn listen_addr(url: &str) -> anyhow::Result<(SocketAddr, bool)> {
    let u = url::Url::parse(url).with_context(|| format!("invalid listen URL {url:?}"))?;
    let tls = match u.scheme() {
        "http" => false,
        "https" => true,
        s => bail!("{url}: unsupported scheme {s:?} (use http:// or https://)"),
    };
    let host = u.host_str().context("listen URL has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = u.port().unwrap_or(2379);
    let addr = format!("{host}:{port}")
        .parse::<SocketAddr>()
        .or_else(|_| {
            std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))
        })
        .with_context(|| format!("resolving {url}"))?;
    Ok((addr, tls))
}

/// The TLS settings for https:// listeners, from etcd's flags.
/// TLS for https:// listeners, terminated here rather than in tonic so that
/// [`Lenient`] sees the decrypted HTTP/2 (the peer's certificates still
/// reach requests: tonic's `TlsStream` connect info carries them).
fn tls_acceptor(config: &Config) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let path = |what: &str, p: &Option<PathBuf>| -> anyhow::Result<PathBuf> {
        p.clone()
            .with_context(|| format!("https:// listen URLs need {what}"))
    };
    let cert_file = path("--cert-file", &config.cert_file)?;
    let certs = CertificateDer::pem_file_iter(&cert_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading --cert-file {}", cert_file.display()))?;
    let key_file = path("--key-file", &config.key_file)?;
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .with_context(|| format!("reading --key-file {}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS settings")?;
    let builder = if config.client_cert_auth {
        let ca_file = path(
            "--trusted-ca-file (for --client-cert-auth)",
            &config.trusted_ca_file,
        )?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&ca_file)
            .with_context(|| format!("reading --trusted-ca-file {}", ca_file.display()))?
        {
            roots
                .add(
                    ca.with_context(|| format!("reading --trusted-ca-file {}", ca_file.display()))?,
                )
                .context("--trusted-ca-file")?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("--trusted-ca-file")?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut tls = builder
        .with_single_cert(certs, key)
        .context("--cert-file and --key-file")?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

/// How long a client may take to finish its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// How often SQLite's write-ahead log is copied into the database file,
/// off the committer's path (see `Backend::checkpoint`).
const CHECKPOINT_PERIOD: Duration = Duration::from_millis(250);

/// TLS handshakes of accepted connections, each on its own task (a slow
/// client delays no other); finished ones go to `tx`.
async fn handshakes(
    mut connections: TcpIncoming,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: tokio::sync::mpsc::Sender<
        std::io::Result<Corked<Lenient<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>>,
    >,
) {
    while let Some(c) = connections.next().await {
        let c = match c {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "accepting a connection");
                continue;
            }
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(c)).await {
                Ok(Ok(s)) => {
                    let _ = tx.send(Ok(Corked::new(Lenient::new(s)))).await;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(timeout = ?TLS_HANDSHAKE, "TLS handshake timed out"),
            }
        });
    }
}

/// Accepted connections with Nagle off (small responses such as watch
/// events must not wait for delayed ACKs) and TCP keepalive on.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)))
}

/// Opens the database, waiting while it is unreachable. Refuses a schema
/// this build does not know unless `auto_migrate`, which migrates it.
/// `behind_proxy`: the schema is read through a proxy tier, which may send
/// the read to a standby that has not replayed a migration just made on
/// the primary; pending versions are then looked at again for
/// [`REPLAY_GRACE`] before the start is refused. So is a version that did
/// not finish (MySQL records one before its DDL runs): another process
/// may be migrating, or a replica replaying that migration.
pub async fn open_backend(
    dsn: &Dsn,
    auto_migrate: bool,
    behind_proxy: bool,
) -> anyhow::Result<Arc<dyn Backend>> {
    let mut delay = Duration::from_millis(200);
    let (dialect, endpoint) = dsn.schema();
    let started = std::time::Instant::now();
    loop {
        match etcdsql_schema::status(dialect, &endpoint).await {
            Ok(status) => match status.refusal(&dsn.redacted()) {
                None => break,
                Some(why)
                    if !auto_migrate
                        && started.elapsed() < REPLAY_GRACE
                        && status.settling(behind_proxy) =>
                {
                    tracing::warn!(%why, "schema behind or mid-migration; reading again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                // Only pending versions are migrated; drift or a newer
                // version always stops the start. An unfinished one may be
                // another process migrating right now (MySQL's DDL is not
                // transactional): migrate() looks again under the lock.
                Some(why) if !auto_migrate || status.foreign() => {
                    bail!("{why}")
                }
                Some(_) => {
                    let applied = etcdsql_schema::migrate(dialect, &endpoint).await?;
                    tracing::info!(?applied, "schema migrated (--auto-migrate)");
                    break;
                }
            },
            Err(etcdsql_schema::SchemaError::Db(e)) if unreachable(&e) => {
                tracing::warn!(why = %e, "database unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("reading the schema version"),
        }
    }
    loop {
        let opened = if behind_proxy {
            backend::open_balanced(dsn).await
        } else {
            backend::open(dsn).await
        };
        match opened {
            Ok(b) => return Ok(b),
            Err(DbError::Unavailable(why)) => {
                tracing::warn!(%why, "database unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("opening the database"),
        }
    }
}

/// How long a start through a proxy tier waits for the schema it reads to
/// show the versions this build needs (see [`open_backend`]).
const REPLAY_GRACE: Duration = Duration::from_secs(10);

/// Whether a connection error means "try again later".
fn unreachable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)
    )
}

/// Binds every listen URL, then serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut metrics_listeners = Vec::new();
    for url in &config.listen_metrics_urls {
        let (addr, tls) = listen_addr(url)?;
        if tls {
            bail!("{url}: the metrics endpoint serves http:// only");
        }
        metrics_listeners.push(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics {addr}"))?,
        );
    }
    let mut listeners = Vec::new();
    for url in &config.listen_client_urls {
        let (addr, tls) = listen_addr(url)?;
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        listeners.push(Listener { tcp, tls });
    }
    serve(config, listeners, metrics_listeners, shutdown).await
}

/// Serves on already-bound listeners (tests bind 127.0.0.1:0).
pub async fn serve(
    config: Config,
    listeners: Vec<Listener>,
    metrics_listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = App::open(&config).await?;
    app.serve(&config, listeners, metrics_listeners, shutdown)
        .await
}

/// One server, built from its flags: the database, the store and its
/// committer, the watch hub, the services, and every background task
/// (owned by [`App::tasks`]). [`App::serve`] serves it; [`App::stop`]
/// ends it without listeners (in-process tests).
pub struct App {
    pub store: Arc<Store>,
    pub hub: Arc<Hub>,
    pub kv: Arc<KvService>,
    pub lease: Arc<LeaseService>,
    pub watch: Arc<WatchService>,
    pub cluster: Arc<ClusterService>,
    pub maintenance: Arc<MaintenanceService>,
    pub lock: Arc<LockService>,
    pub election: Arc<ElectionService>,
    pub auth: Arc<crate::service::auth::AuthService>,
    pub tasks: Tasks,
    /// Ends the watch streams (before the background tasks stop).
    streams: tokio::sync::watch::Sender<bool>,
}

impl App {
    pub async fn open(config: &Config) -> anyhow::Result<App> {
        if let Err(e) = metrics::register() {
            // A second server in one process (the tests) shares them.
            tracing::debug!(error = %e, "metrics already registered");
        }
        let tasks = Tasks::new();
        let dsn = config.dsn()?;
        let auto_migrate = config.auto_migrate.unwrap_or(matches!(dsn, Dsn::Sqlite(_)));
        let backend = open_backend(&dsn, auto_migrate, config.proxy_tier).await?;
        let cluster_id = backend
            .cluster_id()
            .await
            .context("reading the cluster id")?;
        let advertise = if config.advertise_client_urls.is_empty() {
            config.listen_client_urls.clone()
        } else {
            config.advertise_client_urls.clone()
        };
        let id = Identity {
            cluster_id: cluster_id.cast_unsigned(),
            member_id: member_id(&config.name, &advertise),
            raft_term: 1,
        };
        let committed = Arc::new(tokio::sync::Notify::new());
        // Behind a proxy tier everything but the balanced reads goes to the
        // primary, on connections of its own (a proxy may pin a session to
        // the server its first statement went to).
        let balanced = backend;
        let backend: Arc<dyn Backend> = if config.proxy_tier && !matches!(dsn, Dsn::Sqlite(_)) {
            let primary_side = backend::open_primary_side(&dsn)
                .await
                .context("opening the proxy's primary side")?;
            Arc::new(backend::Primary(primary_side))
        } else {
            balanced.clone()
        };
        let replicas = replicas(&tasks, config, &dsn, &backend, &balanced)?;
        let catalog = Arc::new(
            crate::store::backfill::load_catalog(backend.as_ref())
                .await
                .context("reading CRDs for their selectable fields")?,
        );
        {
            let (backend, catalog) = (backend.clone(), catalog.clone());
            tasks.spawn("selector backfill", async move {
                match crate::store::backfill::run(backend.as_ref(), &catalog).await {
                    Ok(0) => {}
                    Ok(rows) => tracing::info!(rows, "indexed labels and fields of earlier rows"),
                    Err(e) => {
                        tracing::error!(error = %e, "indexing labels and fields of earlier rows failed; the next start retries")
                    }
                }
            });
        }
        {
            let backend = backend.clone();
            tasks.spawn("planner statistics", async move {
                loop {
                    let pause = match backend.refresh_statistics().await {
                        Ok(()) => Duration::from_secs(2),
                        Err(e) => {
                            tracing::debug!(error = %e, "refreshing planner statistics failed");
                            Duration::from_secs(10)
                        }
                    };
                    tokio::time::sleep(pause).await;
                }
            });
        }
        if backend.kind() == backend::Kind::Sqlite {
            let backend = backend.clone();
            tasks.spawn("log checkpoints", async move {
                loop {
                    tokio::time::sleep(CHECKPOINT_PERIOD).await;
                    if let Err(e) = backend.checkpoint().await {
                        tracing::debug!(error = %e, "checkpointing the write-ahead log failed");
                    }
                }
            });
        }
        let hub = Hub::start(
            &tasks,
            backend.clone(),
            replicas.clone(),
            committed,
            BufferLimits::default(),
            catalog.clone(),
        )
        .await
        .context("starting the watch hub")?;
        let alarms = crate::store::alarms::Alarms::start(
            &tasks,
            backend.clone(),
            id.member_id,
            config.quota_backend_bytes,
        )
        .await
        .context("reading alarms")?;
        let tokens = crate::auth::TokenConfig::parse(
            &config.auth_token,
            Duration::from_secs(config.auth_token_ttl),
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        let bcrypt_cost = if (4..=31).contains(&config.bcrypt_cost) {
            config.bcrypt_cost
        } else {
            tracing::warn!(
                given = config.bcrypt_cost,
                "--bcrypt-cost is outside 4..=31; using 10"
            );
            10
        };
        let auth = crate::auth::Auth::start(
            &tasks,
            backend.clone(),
            crate::auth::Options {
                bcrypt_cost,
                tokens,
            },
        )
        .await
        .context("reading the auth store")?;
        let promoted = crate::store::promote_leases(backend.as_ref())
            .await
            .context("giving leases their TTL again")?;
        let store = Store::new(
            &tasks,
            backend.clone(),
            hub.clone(),
            crate::store::Parts {
                compaction: config.history_compaction,
                partitioner: partitioner(&tasks, config, &backend)?,
                replicas,
                catalog: catalog.clone(),
                alarms,
                auth: auth.clone(),
                promoted,
            },
        );
        let (streams, stop_rx) = tokio::sync::watch::channel(false);
        let watch = Arc::new(WatchService {
            auth: store.auth().clone(),
            hub: hub.clone(),
            catalog,
            id,
            progress_interval: config.experimental_watch_progress_notify_interval,
            stop: stop_rx,
        });
        let cluster = Arc::new(ClusterService {
            id,
            name: config.name.clone(),
            client_urls: advertise,
        });
        let kv = Arc::new(KvService {
            store: store.clone(),
            id,
            max_request_bytes: config.max_request_bytes,
            max_txn_ops: config.max_txn_ops,
            max_key_bytes: backend.max_key_bytes(),
        });
        let lease = Arc::new(LeaseService {
            store: store.clone(),
            id,
        });
        let maintenance = Arc::new(MaintenanceService {
            store: store.clone(),
            id,
        });
        let lock = Arc::new(LockService {
            store: store.clone(),
            hub: hub.clone(),
            tasks: tasks.clone(),
            id,
        });
        let election = Arc::new(ElectionService {
            store: store.clone(),
            hub: hub.clone(),
            tasks: tasks.clone(),
            id,
            stop: streams.subscribe(),
        });
        let auth = Arc::new(crate::service::auth::AuthService {
            auth,
            store: store.clone(),
            id,
        });
        Ok(App {
            auth,
            store,
            hub,
            kv,
            lease,
            watch,
            cluster,
            maintenance,
            lock,
            election,
            tasks,
            streams,
        })
    }

    /// Serves until `shutdown` resolves; then no new requests, the watch
    /// streams end, requests in flight get [`SHUTDOWN_GRACE`], and the
    /// background tasks stop (the committer after its batch).
    pub async fn serve(
        self,
        config: &Config,
        listeners: Vec<Listener>,
        metrics_listeners: Vec<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let tls = if listeners.iter().any(|l| l.tls) {
            Some(tls_acceptor(config)?)
        } else {
            None
        };
        let max_message = config.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let streams = self.streams.clone();
        self.tasks.spawn("shutdown signal", async move {
            shutdown.await;
            tracing::info!("stopping: no new requests; watch streams end");
            streams.send_replace(true);
        });
        let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let health: metrics::Health = {
            let store = Arc::downgrade(&self.store);
            Arc::new(move |excluded| {
                let store = store.clone();
                Box::pin(async move {
                    match store.upgrade() {
                        Some(s) => s.healthy(&excluded).await,
                        None => false,
                    }
                })
            })
        };
        for l in metrics_listeners {
            let addr = l.local_addr()?;
            tracing::info!(%addr, "serving /metrics");
            self.tasks.spawn(
                "metrics listener",
                metrics::serve(l, health.clone(), stopped(self.streams.subscribe())),
            );
        }
        let mut serving = Vec::new();
        for listener in listeners {
            let addr = listener.tcp.local_addr()?;
            tracing::info!(%addr, tls = listener.tls, database = ?self.store.backend().kind(), "serving etcd v3 API");
            let router = tonic::transport::Server::builder()
                // GET /metrics and /health over HTTP/1 too, as etcd.
                .accept_http1(true)
                .layer(RpcLayer {
                    health: health.clone(),
                })
                .add_service(
                    KvServer::from_arc(self.kv.clone()).max_decoding_message_size(max_message),
                )
                .add_service(
                    LeaseServer::from_arc(self.lease.clone())
                        .max_decoding_message_size(max_message),
                )
                .add_service(
                    WatchServer::from_arc(self.watch.clone())
                        .max_decoding_message_size(max_message),
                )
                .add_service(ClusterServer::from_arc(self.cluster.clone()))
                .add_service(
                    MaintenanceServer::from_arc(self.maintenance.clone())
                        .max_decoding_message_size(max_message),
                )
                .add_service(AuthServer::from_arc(self.auth.clone()))
                .add_service(LockServer::from_arc(self.lock.clone()))
                .add_service(ElectionServer::from_arc(self.election.clone()));
            let stop = stopped(self.streams.subscribe());
            let connections = incoming(listener.tcp);
            serving.push(if listener.tls {
                let acceptor = tls.clone().context("TLS settings")?;
                let (tx, rx) = tokio::sync::mpsc::channel(64);
                self.tasks
                    .spawn("TLS handshakes", handshakes(connections, acceptor, tx));
                let connections = tokio_stream::wrappers::ReceiverStream::new(rx);
                tokio::spawn(router.serve_with_incoming_shutdown(connections, stop))
            } else {
                let connections = connections.map(|c| c.map(|c| Corked::new(Lenient::new(c))));
                tokio::spawn(router.serve_with_incoming_shutdown(connections, stop))
            });
        }
        // Once stopping, requests in flight get a bounded time to be answered
        // (a write is answered once its batch committed or failed); what is
        // still running then is cut off, unacknowledged.
        let served = async {
            for t in serving {
                t.await.context("listener task")?.context("serving")?;
            }
            anyhow::Ok(())
        };
        tokio::pin!(served);
        let result = tokio::select! {
            r = &mut served => r,
            () = async {
                stopped(self.streams.subscribe()).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "requests still in flight at shutdown were cut off");
                Ok(())
            }
        };
        self.stop().await;
        result
    }

    /// Ends the watch streams, then stops every background task: the
    /// committer finishes its batch and answers the requests still queued
    /// "stopping"; what has not ended after [`TASKS_GRACE`] is aborted.
    pub async fn stop(self) {
        self.streams.send_replace(true);
        let aborted = self.tasks.join(TASKS_GRACE).await;
        if aborted > 0 {
            tracing::warn!(aborted, grace = ?TASKS_GRACE, "background tasks did not stop in time");
        }
    }
}

/// How long background tasks may take to stop (a batch's commit).
const TASKS_GRACE: Duration = Duration::from_secs(5);

/// How long requests in flight may take once the server is stopping.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_urls() {
        assert_eq!(
            listen_addr("http://127.0.0.1:2379").unwrap(),
            ("127.0.0.1:2379".parse().unwrap(), false)
        );
        assert_eq!(
            listen_addr("http://[::1]:23790").unwrap(),
            ("[::1]:23790".parse().unwrap(), false)
        );
        assert!(listen_addr("https://127.0.0.1:2379").unwrap().1);
        assert!(listen_addr("unix:///tmp/x").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
