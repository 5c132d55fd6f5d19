//! Kubernetes-shaped load on etcd 3.4 and etcdsql side by side, in one run.
//! Each target is started fresh on this machine (etcd with its data in the
//! temp dir on the same disk, fsync on; etcdsql, a release build, on a new
//! database: SQLite in the temp dir, or PostgreSQL/MariaDB from
//! ETCDSQL_TEST_*_URL or a container, as in the integration suite), then
//! driven by the same clients. Progress goes to stderr, Markdown tables to
//! stdout, one per workload, with the etcdsql/etcd ratio.
//!
//!   cargo build --release -p etcdsql -p etcdsql-integration
//!   target/release/etcdsql-bench --etcdsql-bin target/release/etcdsql \
//!       --targets etcd,sqlite,postgres,mariadb
//!
//! Workloads (`--workloads`, all by default):
//! - `create`: custom-resource-like JSON objects (1 to 4 KiB, with labels)
//!   created by kube-apiserver's create Txn (mod_revision == 0 → put, else
//!   get), from many concurrent clients;
//! - `events` (not in the default set): Events as kube-apiserver creates
//!   them, the create Txn with a lease (one lease for many events, as the
//!   apiserver reuses one for a minute), from `--event-clients` clients;
//! - `keepalive` (not in the default set): lease keep-alives, each client
//!   renewing its own lease over its LeaseKeepAlive stream
//!   (`--event-clients` clients, `--event-objects` renewals in all);
//! - `update`: kube-apiserver's GuaranteedUpdate on a hot set of objects:
//!   read, then Txn mod_revision == read → put, else get, retried on
//!   conflict; contention is by design. `create` and `update` note CPU
//!   milliseconds per op: the server process's and, where the suite
//!   started the database in containers, the database's;
//! - `list`: paginated LIST of all objects, 500 per page, later pages at
//!   the first page's revision, as kube-apiserver pages;
//! - `watch`: event latency from put to each of many watchers on a prefix,
//!   and when each event arrived relative to the put's answer;
//! - `memory`: the server's RSS while it holds more and more keys;
//! - `replicas` (not in the default set): LIST throughput with 0, 1 and 2
//!   PostgreSQL hot standbys as `--read-endpoint`s, and the primary's share
//!   of the databases' CPU;
//! - `replica-lag` (not in the default set): linearizable gets on a
//!   PostgreSQL primary with one hot standby, replaying and then paused
//!   (behind but in rotation);
//! - `compact`: `--compact-rows` versions of `--compact-keys` keys, then
//!   one physical compaction at the head, timed; each etcdsql target runs
//!   it twice, dropping history epochs and deleting rows
//!   (`--history-compaction drop|delete`).
//!
//! - `selectors` (not in the default set): `--selector-objects` objects, a
//!   label selector matching 1% of them: a paginated LIST with the selector
//!   pushed down (RangeRequest 14) against a LIST of everything filtered by
//!   the client, and etcdsql's RSS during pushed-down LISTs at a tenth of
//!   the objects and at all of them.
//!
//! - `apiserver` (not in the default set; `--kube-apiserver` or
//!   `KUBE_APISERVER`): an unmodified kube-apiserver on each target, driven
//!   over its REST API by `--kube-clients` clients: ConfigMap creates,
//!   custom-resource creates, PATCHes of `--kube-hot` hot ConfigMaps (the
//!   apiserver's GuaranteedUpdate, retried inside it on conflict), updates
//!   of the same hot ConfigMaps read-modify-write from the client (GET,
//!   then PUT with the read resourceVersion, both again on 409 Conflict, as
//!   client-go's `RetryOnConflict`) and paginated LISTs; with the etcd-API
//!   server's CPU time per 1,000 requests (the database's own CPU is not
//!   counted).
//!
//! `--plot-dir DIR` also draws each table as PNG charts there.
//!
//! `--endpoint HOST:PORT` drives an already running etcd v3 server instead
//! (named `endpoint` in the tables; no RSS).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};
use etcdsql_integration::{Process, Started, Target};

#[derive(Parser)]
struct Args {
    /// The etcdsql binary to start (a release build for real numbers).
    #[arg(long, default_value = "target/release/etcdsql")]
    etcdsql_bin: PathBuf,
    /// Comma-separated: etcd, sqlite, postgres, mariadb, galera, cockroachdb, tidb.
    #[arg(
        long,
        default_value = "etcd,sqlite,postgres,mariadb",
        value_delimiter = ','
    )]
    targets: Vec<String>,
    /// An etcd v3 endpoint to drive as well (host:port).
    #[arg(long)]
    endpoint: Option<String>,
    /// Comma-separated: create, events, keepalive, update, list, watch,
    /// memory, compact, replicas, replica-lag, selectors, apiserver.
    #[arg(
        long,
        default_value = "create,update,list,watch,memory,compact",
        value_delimiter = ','
    )]
    workloads: Vec<String>,
    /// gRPC connections the clients share.
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// Objects created by `create`.
    #[arg(long, default_value_t = 60_000)]
    create_objects: usize,
    /// Concurrent clients of `create`.
    #[arg(long, default_value_t = 3600)]
    create_clients: usize,
    /// Events `events` creates (renewals of `keepalive`).
    #[arg(long, default_value_t = 30_000)]
    event_objects: usize,
    /// Concurrent clients of `events` (and of `keepalive`).
    #[arg(long, default_value_t = 256)]
    event_clients: usize,
    /// Objects in the hot set of `update`.
    #[arg(long, default_value_t = 100)]
    update_objects: usize,
    /// Successful updates `update` makes.
    #[arg(long, default_value_t = 20_000)]
    update_ops: usize,
    /// Concurrent clients of `update`.
    #[arg(long, default_value_t = 256)]
    update_clients: usize,
    /// Objects `list` lists.
    #[arg(long, default_value_t = 100_000)]
    list_objects: usize,
    /// Full paginated LISTs, run by `list_clients` clients at once.
    #[arg(long, default_value_t = 8)]
    lists: usize,
    #[arg(long, default_value_t = 2)]
    list_clients: usize,
    /// Watchers of `watch` (split over the connections).
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Puts per second during `watch`.
    #[arg(long, default_value_t = 100)]
    watch_rate: u64,
    /// Puts during `watch`.
    #[arg(long, default_value_t = 1000)]
    watch_events: usize,
    /// Keys `memory` grows to (RSS sampled at 1/10, 1/4, 1/2 and all of it).
    #[arg(long, default_value_t = 1_000_000)]
    memory_keys: usize,
    /// History rows (key versions) `compact` writes before compacting.
    #[arg(long, default_value_t = 1_000_000)]
    compact_rows: usize,
    /// Keys they are versions of.
    #[arg(long, default_value_t = 10_000)]
    compact_keys: usize,
    /// Clients of `replica-lag`.
    #[arg(long, default_value_t = 16)]
    lag_readers: usize,
    /// Seconds of each `replica-lag` phase.
    #[arg(long, default_value_t = 5)]
    lag_seconds: u64,
    /// Objects `selectors` lists (1% match its selector).
    #[arg(long, default_value_t = 100_000)]
    selector_objects: usize,
    /// The bucket (0–99) `selectors` selects: `bucket=b-<N>`.
    #[arg(long, default_value_t = 7)]
    selector_bucket: u32,
    /// Also draw each table as PNG charts in this directory: throughput
    /// per target (`*-throughput.png`) and latency CDFs (`*-latency.png`).
    #[arg(long)]
    plot_dir: Option<PathBuf>,
    /// kube-apiserver binary of `apiserver`.
    #[arg(long, env = "KUBE_APISERVER")]
    kube_apiserver: Option<PathBuf>,
    /// Concurrent clients of `apiserver` (one connection each).
    #[arg(long, default_value_t = 64)]
    kube_clients: usize,
    /// ConfigMaps, and custom resources, that `apiserver` creates.
    #[arg(long, default_value_t = 3000)]
    kube_objects: usize,
    /// PATCHes `apiserver` makes to its hot objects, and read-modify-write
    /// updates (GET and PUT) after them.
    #[arg(long, default_value_t = 3000)]
    kube_updates: usize,
    /// Hot objects the PATCHes and updates go to.
    #[arg(long, default_value_t = 20)]
    kube_hot: usize,
    /// Full paginated LISTs (500 per page) of the ConfigMaps.
    #[arg(long, default_value_t = 40)]
    kube_lists: usize,
}

/// A target under load: its clients and, where it was started here, its
/// process (for RSS).
struct Under {
    name: String,
    endpoint: String,
    clients: Vec<Client>,
    started: Option<Started>,
}

impl Under {
    async fn start(name: &str, args: &Args) -> anyhow::Result<Under> {
        Under::start_with(name, args, &[]).await
    }

    /// `extra`: etcdsql flags.
    async fn start_with(name: &str, args: &Args, extra: &[&str]) -> anyhow::Result<Under> {
        let (started, endpoint) = if name == "endpoint" {
            (None, args.endpoint.clone().unwrap_or_default())
        } else {
            let s = Started::with_args(target(name)?, &args.etcdsql_bin, extra).await?;
            let e = s.server.endpoint.clone();
            (Some(s), e)
        };
        let mut clients = Vec::new();
        for _ in 0..args.conns {
            clients.push(
                Client::connect(
                    [endpoint.as_str()],
                    Some(
                        etcd_client::ConnectOptions::new()
                            .with_timeout(Duration::from_secs(60))
                            .with_connect_timeout(Duration::from_secs(5)),
                    ),
                )
                .await?,
            );
        }
        Ok(Under {
            name: name.to_string(),
            endpoint,
            clients,
            started,
        })
    }

    fn process(&self) -> Option<&Process> {
        self.started.as_ref().map(|s| &s.server)
    }

    fn peak_rss(&self) -> Option<u64> {
        self.process().map(|p| p.rss().1)
    }

    /// CPU seconds used so far by the server process, and by the database
    /// where the suite started it in containers (None where not measured;
    /// SQLite's is the server's).
    fn cpu(&self) -> (Option<f64>, Option<f64>) {
        let Some(s) = &self.started else {
            return (None, None);
        };
        let db = match s.target {
            Target::Etcd | Target::Sqlite => None,
            t => etcdsql_integration::servers::server(t)
                .ok()
                .and_then(|d| d.cpu_seconds()),
        };
        (Some(s.server.cpu_seconds()), db)
    }

    /// `note`'s CPU part: milliseconds per op since `before` (from
    /// [`Self::cpu`]).
    fn cpu_note(&self, before: (Option<f64>, Option<f64>), ops: usize) -> String {
        let after = self.cpu();
        let per = |a: Option<f64>, b: Option<f64>| Some((a? - b?) * 1000.0 / ops as f64);
        match (per(after.0, before.0), per(after.1, before.1)) {
            (Some(s), Some(d)) => format!(
                "; CPU ms/op: server {s:.3} + database {d:.3} = {:.3}",
                s + d
            ),
            (Some(s), None) => format!("; CPU ms/op: server {s:.3}"),
            _ => String::new(),
        }
    }

    fn client(&self, i: usize) -> Client {
        self.clients[i % self.clients.len()].clone()
    }
}

fn target(name: &str) -> anyhow::Result<Target> {
    std::iter::once(Target::Etcd)
        .chain(Target::ETCDSQL)
        .find(|t| t.name() == name)
        .ok_or_else(|| anyhow::anyhow!("unknown target {name}"))
}

/// The value at `per_mille`/1000 of a sorted list (nearest rank).
fn percentile<T: Copy + Default>(sorted: &[T], per_mille: usize) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = (per_mille * sorted.len()).div_ceil(1000);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(b: u64) -> String {
    format!("{:.0}", b as f64 / f64::from(1 << 20))
}

/// One table row: throughput in `unit`/s and request latencies.
struct Row {
    target: String,
    rate: f64,
    latencies: Vec<Duration>,
    errors: usize,
    peak_rss: Option<u64>,
    note: String,
}

/// `--plot-dir`, set once at the start.
static PLOT_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The table's charts in `--plot-dir`, named after its title.
fn plot_table(title: &str, unit: &str, rows: &[Row]) {
    let Some(dir) = PLOT_DIR.get() else { return };
    let mut slug: String = title
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    slug.truncate(60);
    let slug = slug
        .split('-')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let short = title.split(" (").next().unwrap_or(title);
    let rates: Vec<(String, f64)> = rows.iter().map(|r| (r.target.clone(), r.rate)).collect();
    let file = dir.join(format!("{slug}-throughput.png"));
    match etcdsql_integration::plot::bars(&file, short, unit, &rates) {
        Ok(()) => eprintln!("  chart: {}", file.display()),
        Err(e) => eprintln!("  chart {}: {e:#}", file.display()),
    }
    if rows.iter().any(|r| !r.latencies.is_empty()) {
        let lines: Vec<(String, &[Duration])> = rows
            .iter()
            .map(|r| (r.target.clone(), r.latencies.as_slice()))
            .collect();
        let file = dir.join(format!("{slug}-latency.png"));
        match etcdsql_integration::plot::cdf(&file, short, &lines) {
            Ok(()) => eprintln!("  chart: {}", file.display()),
            Err(e) => eprintln!("  chart {}: {e:#}", file.display()),
        }
    }
}

fn print_table(title: &str, unit: &str, rows: &[Row]) {
    plot_table(title, unit, rows);
    println!("\n### {title}\n");
    println!(
        "| target | {unit}/s | p50 ms | p99 ms | max ms | errors | peak RSS MiB | vs etcd | |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    let etcd = rows.iter().find(|r| r.target == "etcd").map(|r| r.rate);
    for r in rows {
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |",
            r.target,
            r.rate,
            ms(percentile(&r.latencies, 500)),
            ms(percentile(&r.latencies, 990)),
            ms(r.latencies.last().copied().unwrap_or_default()),
            r.errors,
            r.peak_rss.map_or("–".to_string(), mib),
            etcd.filter(|e| *e > 0.0)
                .map_or("–".to_string(), |e| format!("{:.2}x", r.rate / e)),
            r.note
        );
    }
}

/// A deterministic custom-resource-like JSON object of 1 to 4 KiB.
fn object(n: usize, generation: usize) -> Vec<u8> {
    let size = 1024 + (n.wrapping_mul(2_654_435_761) % 3072);
    let head = format!(
        r#"{{"apiVersion":"bench.example.com/v1","kind":"Widget","metadata":{{"name":"w-{n:08}","namespace":"ns-{}","generation":{generation},"labels":{{"app":"app-{}","tier":"{}","shard":"{}","bucket":"b-{}"}}}},"spec":{{"replicas":{},"data":""#,
        n % 100,
        n % 50,
        ["web", "db", "cache"][n % 3],
        n % 16,
        n % 100,
        n % 5
    );
    let mut v = head.into_bytes();
    let pad = size.saturating_sub(v.len() + 3);
    v.extend(std::iter::repeat_n(b'x', pad));
    v.extend_from_slice(br#""}}"#);
    v
}

fn object_key(n: usize) -> String {
    format!(
        "/registry/bench.example.com/widgets/ns-{}/w-{n:08}",
        n % 100
    )
}

const PREFIX: &str = "/registry/bench.example.com/widgets/";

/// Puts keys `from..to` in Txns of 128 from 32 clients (the fastest way
/// in, for setup).
async fn load(
    u: &Under,
    from: usize,
    to: usize,
    key: impl Fn(usize) -> String + Sync,
    value: impl Fn(usize) -> Vec<u8> + Sync,
) -> anyhow::Result<()> {
    let (key, value) = (&key, &value);
    let next = AtomicUsize::new(from);
    let next = &next;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let mut c = u.client(i);
        tasks.push(async move {
            loop {
                let start = next.fetch_add(128, Ordering::Relaxed);
                if start >= to {
                    return Ok::<_, anyhow::Error>(());
                }
                let ops: Vec<TxnOp> = (start..(start + 128).min(to))
                    .map(|k| TxnOp::put(key(k), value(k), None))
                    .collect();
                c.txn(Txn::new().and_then(ops)).await?;
            }
        });
    }
    futures::future::try_join_all(tasks).await?;
    Ok(())
}

/// Puts objects `0..n`.
async fn preload(u: &Under, n: usize) -> anyhow::Result<()> {
    let t = Instant::now();
    load(u, 0, n, object_key, |k| object(k, 1)).await?;
    eprintln!(
        "  {}: {n} objects loaded in {:.1} s",
        u.name,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `op(client, n)` for n in 0..ops from `clients` tasks; returns the
/// elapsed time, sorted latencies and the number of failed operations.
async fn drive<F, Fut>(
    u: &Under,
    clients: usize,
    ops: usize,
    what: &str,
    op: F,
) -> (f64, Vec<Duration>, usize)
where
    F: Fn(Client, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let progress = {
        let (done, name, what) = (done.clone(), u.name.clone(), what.to_string());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                eprintln!(
                    "  {name} {what}: {}/{ops} after {:.0} s",
                    done.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (c, next, done, op) = (u.client(i), next.clone(), done.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= ops {
                    break;
                }
                let t = Instant::now();
                if !op(c.clone(), n).await {
                    errors += 1;
                }
                lat.push(t.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            (lat, errors)
        }));
    }
    let (mut latencies, mut errors) = (Vec::with_capacity(ops), 0);
    for t in tasks {
        if let Ok((l, e)) = t.await {
            latencies.extend(l);
            errors += e;
        }
    }
    progress.abort();
    latencies.sort();
    (started.elapsed().as_secs_f64(), latencies, errors)
}

/// kube-apiserver's create: put if absent, else get. Answers whether it
/// created the key.
async fn create_once(
    c: &mut Client,
    key: &str,
    value: Vec<u8>,
    options: Option<etcd_client::PutOptions>,
) -> bool {
    let txn = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value, options)])
        .or_else([TxnOp::get(key, None)]);
    matches!(c.txn(txn).await, Ok(r) if r.succeeded())
}

/// The row of a workload `drive` ran: `ops` in `secs`, CPU since `cpu`.
fn timed_row(
    u: &Under,
    cpu: (Option<f64>, Option<f64>),
    ops: usize,
    (secs, latencies, errors): (f64, Vec<Duration>, usize),
    what: &str,
) -> Row {
    Row {
        target: u.name.clone(),
        rate: ops as f64 / secs,
        latencies,
        errors,
        peak_rss: u.peak_rss(),
        note: format!("{ops} {what} in {secs:.1} s{}", u.cpu_note(cpu, ops)),
    }
}

async fn create(u: &Under, args: &Args) -> anyhow::Result<Row> {
    let cpu = u.cpu();
    let driven = drive(
        u,
        args.create_clients,
        args.create_objects,
        "create",
        |mut c, n| async move { create_once(&mut c, &object_key(n), object(n, 1), None).await },
    )
    .await;
    Ok(timed_row(u, cpu, args.create_objects, driven, "objects"))
}

async fn events(u: &Under, args: &Args) -> anyhow::Result<Row> {
    let lease = u.client(0).lease_grant(3600, None).await?.id();
    let cpu = u.cpu();
    let driven = drive(
        u,
        args.event_clients,
        args.event_objects,
        "events",
        move |mut c, n| async move {
            let key = format!("/registry/events/ns-{}/pod-{n:08}.{n:x}", n % 100);
            let value = format!(
                r#"{{"apiVersion":"v1","kind":"Event","metadata":{{"name":"pod-{n:08}.{n:x}","namespace":"ns-{}"}},"involvedObject":{{"kind":"Pod","name":"pod-{n:08}"}},"reason":"Scheduled","message":"Successfully assigned ns-{}/pod-{n:08} to node-{}","type":"Normal","count":1}}"#,
                n % 100,
                n % 100,
                n % 50
            );
            let lease = Some(etcd_client::PutOptions::new().with_lease(lease));
            create_once(&mut c, &key, value.into_bytes(), lease).await
        },
    )
    .await;
    Ok(timed_row(u, cpu, args.event_objects, driven, "events"))
}

async fn keepalive(u: &Under, args: &Args) -> anyhow::Result<Row> {
    let clients = args.event_clients;
    let mut streams = Vec::with_capacity(clients);
    for i in 0..clients {
        let mut c = u.client(i);
        let id = c.lease_grant(600, None).await?.id();
        streams.push(tokio::sync::Mutex::new(c.lease_keep_alive(id).await?));
    }
    let streams = Arc::new(streams);
    let cpu = u.cpu();
    let driven = drive(u, clients, args.event_objects, "keepalive", move |_, n| {
        let streams = streams.clone();
        async move {
            // Each client task takes ops in turn; a stream has one
            // renewal in flight at a time.
            let mut s = streams[n % streams.len()].lock().await;
            let (keeper, acks) = &mut *s;
            if keeper.keep_alive().await.is_err() {
                return false;
            }
            matches!(acks.message().await, Ok(Some(r)) if r.ttl() == 600)
        }
    })
    .await;
    let what = format!("renewals of {clients} leases");
    Ok(timed_row(u, cpu, args.event_objects, driven, &what))
}

async fn update(u: &Under, args: &Args) -> anyhow::Result<Row> {
    let hot = args.update_objects;
    preload(u, hot).await?;
    let conflicts = Arc::new(AtomicUsize::new(0));
    let c2 = conflicts.clone();
    let cpu = u.cpu();
    let (secs, latencies, errors) = drive(
        u,
        args.update_clients,
        args.update_ops,
        "update",
        move |mut c, n| {
            let conflicts = c2.clone();
            async move {
                // One GuaranteedUpdate: read, then CAS; on conflict the else
                // branch returns the current object and the update is retried.
                let key = object_key((n.wrapping_mul(7919)) % hot);
                let Ok(r) = c.get(key.as_str(), None).await else {
                    return false;
                };
                let Some(mut rev) = r.kvs().first().map(|kv| kv.mod_revision()) else {
                    return false;
                };
                for attempt in 0..100 {
                    let txn = Txn::new()
                        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
                        .and_then([TxnOp::put(key.as_str(), object(n, attempt + 2), None)])
                        .or_else([TxnOp::get(key.as_str(), None)]);
                    let Ok(r) = c.txn(txn).await else {
                        return false;
                    };
                    if r.succeeded() {
                        return true;
                    }
                    conflicts.fetch_add(1, Ordering::Relaxed);
                    let current = r.op_responses().into_iter().find_map(|op| match op {
                        etcd_client::TxnOpResponse::Get(g) => {
                            g.kvs().first().map(|kv| kv.mod_revision())
                        }
                        _ => None,
                    });
                    match current {
                        Some(r) => rev = r,
                        None => return false,
                    }
                }
                false
            }
        },
    )
    .await;
    Ok(Row {
        target: u.name.clone(),
        rate: args.update_ops as f64 / secs,
        latencies,
        errors,
        peak_rss: u.peak_rss(),
        note: format!(
            "{} updates of {hot} objects, {} conflicts retried{}",
            args.update_ops,
            conflicts.load(Ordering::Relaxed),
            u.cpu_note(cpu, args.update_ops)
        ),
    })
}

/// One kube-apiserver-style paginated LIST; returns objects seen and page
/// latencies.
async fn list_once(
    c: &mut Client,
    prefix: &str,
    pages: &mut Vec<Duration>,
) -> anyhow::Result<usize> {
    // The prefix's range end: its last byte ('/') plus one.
    let end = format!("{}0", &prefix[..prefix.len() - 1]);
    let (mut key, mut rev, mut seen) = (prefix.as_bytes().to_vec(), 0, 0);
    loop {
        let mut o = GetOptions::new().with_range(end.as_str()).with_limit(500);
        if rev > 0 {
            o = o.with_revision(rev);
        }
        let t = Instant::now();
        let r = c.get(key.clone(), Some(o)).await?;
        pages.push(t.elapsed());
        if rev == 0 {
            rev = r.header().map_or(0, |h| h.revision());
        }
        seen += r.kvs().len();
        match r.kvs().last() {
            Some(last) if r.more() => {
                key = last.key().to_vec();
                key.push(0);
            }
            _ => return Ok(seen),
        }
    }
}

/// `args.lists` full LISTs of `n` objects by `args.list_clients` clients:
/// page latencies (sorted), failed LISTs, objects seen, seconds.
async fn run_lists(
    u: &Under,
    args: &Args,
    n: usize,
) -> anyhow::Result<(Vec<Duration>, usize, usize, f64)> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    let next = Arc::new(AtomicUsize::new(0));
    for i in 0..args.list_clients {
        let (mut c, next, lists) = (u.client(i), next.clone(), args.lists);
        tasks.push(tokio::spawn(async move {
            let (mut pages, mut errors, mut objects) = (Vec::new(), 0, 0);
            while next.fetch_add(1, Ordering::Relaxed) < lists {
                match list_once(&mut c, PREFIX, &mut pages).await {
                    Ok(seen) if seen == n => objects += seen,
                    _ => errors += 1,
                }
            }
            (pages, errors, objects)
        }));
    }
    let (mut latencies, mut errors, mut objects) = (Vec::new(), 0, 0);
    for task in tasks {
        let (p, e, o) = task.await?;
        latencies.extend(p);
        errors += e;
        objects += o;
    }
    latencies.sort();
    Ok((latencies, errors, objects, t.elapsed().as_secs_f64()))
}

async fn list(u: &Under, args: &Args) -> anyhow::Result<Row> {
    let n = args.list_objects;
    preload(u, n).await?;
    let (latencies, errors, objects, secs) = run_lists(u, args, n).await?;
    eprintln!("  {}: {} full LISTs in {secs:.1} s", u.name, args.lists);
    Ok(Row {
        target: u.name.clone(),
        rate: objects as f64 / secs,
        latencies,
        errors,
        peak_rss: u.peak_rss(),
        note: format!(
            "{} LISTs of {n} ({} at a time), {:.2} s per LIST; latencies per page of 500",
            args.lists,
            args.list_clients,
            secs * args.list_clients as f64 / args.lists as f64
        ),
    })
}

fn now_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default()
}

/// `watch_events` puts at `watch_rate`/s, each seen by every watcher;
/// latencies from sending the put to each event.
async fn watch(u: &Under, args: &Args) -> anyhow::Result<Row> {
    let prefix = "/registry/bench.example.com/watched/";
    let mut streams = Vec::new();
    for i in 0..args.watchers {
        let mut c = u.client(i);
        let mut ws = c
            .watch(prefix, Some(WatchOptions::new().with_prefix()))
            .await?;
        ws.message().await?; // created
        streams.push(ws);
    }
    eprintln!("  {}: {} watchers created", u.name, args.watchers);
    let expected = args.watch_events;
    let mut readers = Vec::new();
    for mut ws in streams {
        readers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(expected);
            let mut seen = Vec::with_capacity(expected);
            while lat.len() < expected {
                let Ok(Ok(Some(r))) =
                    tokio::time::timeout(Duration::from_secs(10), ws.message()).await
                else {
                    break;
                };
                let now = now_micros();
                for e in r.events() {
                    let sent: u128 = e
                        .kv()
                        .and_then(|kv| kv.value_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(now);
                    lat.push(Duration::from_micros(
                        u64::try_from(now.saturating_sub(sent)).unwrap_or(u64::MAX),
                    ));
                    if let Some(kv) = e.kv() {
                        seen.push((kv.mod_revision(), now));
                    }
                }
            }
            (lat, seen)
        }));
    }
    let mut w = u.client(0);
    let mut errors = 0;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / args.watch_rate.max(1)));
    // When each put's answer arrived, by revision.
    let mut answered = std::collections::HashMap::new();
    for n in 0..expected {
        tick.tick().await;
        match w
            .put(
                format!("{prefix}k{}", n % 100),
                now_micros().to_string(),
                None,
            )
            .await
        {
            Ok(r) => {
                let now = now_micros();
                if let Some(h) = r.header() {
                    answered.insert(h.revision(), now);
                }
            }
            Err(_) => errors += 1,
        }
    }
    let mut latencies = Vec::new();
    // Event arrival minus the put's answer, in µs: negative when the
    // watcher had the event first.
    let mut after_answer = Vec::new();
    for r in readers {
        let (lat, seen) = r.await?;
        latencies.extend(lat);
        for (rev, at) in seen {
            if let Some(&answer) = answered.get(&rev) {
                after_answer.push(
                    i128::try_from(at).unwrap_or(i128::MAX) - i128::try_from(answer).unwrap_or(0),
                );
            }
        }
    }
    after_answer.sort_unstable();
    let pick = |per_mille| percentile(&after_answer, per_mille) as f64 / 1000.0;
    let early = after_answer.iter().filter(|&&us| us <= 0).count();
    let want = (expected - errors) * args.watchers;
    let lost = want.saturating_sub(latencies.len());
    latencies.sort();
    Ok(Row {
        target: u.name.clone(),
        rate: latencies.len() as f64 / (expected as f64 / args.watch_rate as f64),
        latencies,
        errors: errors + lost,
        peak_rss: u.peak_rss(),
        note: format!(
            "{} watchers × {expected} puts at {}/s; latency put→event; event after the put's answer: p50 {:.2} ms, p90 {:.2} ms, {:.0}% before it",
            args.watchers,
            args.watch_rate,
            pick(500),
            pick(900),
            100.0 * early as f64 / after_answer.len().max(1) as f64
        ),
    })
}

/// Loads `memory_keys` keys (256 B values) and samples the server's RSS as
/// they grow, then after a count and a first page over all of them.
async fn memory(u: &Under, args: &Args) -> anyhow::Result<Row> {
    let total = args.memory_keys;
    let marks = [total / 10, total / 4, total / 2, total];
    let mut samples = Vec::new();
    let mut loaded = 0;
    let t = Instant::now();
    let value = vec![b'm'; 256];
    for mark in marks {
        load(
            u,
            loaded,
            mark,
            |k| format!("/registry/memory/k{k:09}"),
            |_| value.clone(),
        )
        .await?;
        loaded = mark;
        let rss = u.process().map_or(0, |p| p.rss().0);
        eprintln!(
            "  {}: {loaded} keys after {:.0} s, RSS {} MiB",
            u.name,
            t.elapsed().as_secs_f64(),
            mib(rss)
        );
        samples.push(format!("{}k: {}", loaded / 1000, mib(rss)));
    }
    let secs = t.elapsed().as_secs_f64();
    let mut c = u.client(0);
    let count = c
        .get(
            "/registry/memory/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?
        .count();
    c.get(
        "/registry/memory/",
        Some(GetOptions::new().with_prefix().with_limit(500)),
    )
    .await?;
    let rss = u.process().map_or(0, |p| p.rss().0);
    samples.push(format!("after a count and a page: {}", mib(rss)));
    Ok(Row {
        target: u.name.clone(),
        rate: total as f64 / secs,
        latencies: Vec::new(),
        errors: usize::try_from(count).map_or(1, |c| usize::from(c != total)),
        peak_rss: u.peak_rss(),
        note: format!("RSS MiB at {}", samples.join(", ")),
    })
}

/// `replicas`: LIST throughput on a PostgreSQL primary with 0, 1 and 2 hot
/// standbys as `--read-endpoint`s, and the share of the databases' CPU time
/// the primary spent.
async fn replicas_table(args: &Args) -> anyhow::Result<()> {
    let (primary, standbys, containers) =
        tokio::task::spawn_blocking(|| etcdsql_integration::servers::postgres_with_standbys(2))
            .await??;
    let mut urls = vec![primary];
    urls.extend(standbys);
    let db = etcdsql_integration::TestDb::create_on(Target::Postgres, &urls).await?;
    let n = args.list_objects;
    let mut rows = Vec::new();
    for replicas in 0..=2usize {
        let mut extra = Vec::new();
        for dsn in &db.dsns[1..=replicas] {
            extra.extend(["--read-endpoint", dsn.as_str()]);
        }
        let p = Process::etcdsql_with(&args.etcdsql_bin, &db.dsn, &extra).await?;
        let mut clients = Vec::new();
        for _ in 0..args.conns {
            clients.push(Client::connect([p.endpoint.as_str()], None).await?);
        }
        let u = Under {
            name: format!("postgres + {replicas} replicas"),
            endpoint: p.endpoint.clone(),
            clients,
            started: None,
        };
        if replicas == 0 {
            preload(&u, n).await?;
        } else {
            // Replicas in rotation after their first health checks.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let cpu = |c: &etcdsql_integration::servers::Container| c.cpu_seconds().unwrap_or(f64::NAN);
        let before: Vec<f64> = containers.iter().map(cpu).collect();
        let (latencies, errors, objects, secs) = run_lists(&u, args, n).await?;
        let used: Vec<f64> = containers
            .iter()
            .map(cpu)
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect();
        let total: f64 = used[..=replicas].iter().sum();
        eprintln!(
            "  {}: {} full LISTs in {secs:.1} s; CPU s by server {used:.1?}",
            u.name, args.lists
        );
        rows.push(Row {
            target: u.name.clone(),
            rate: objects as f64 / secs,
            latencies,
            errors,
            peak_rss: Some(p.rss().1),
            note: format!(
                "primary {:.1} CPU s = {:.0}% of the databases' {:.1} s",
                used[0],
                100.0 * used[0] / total,
                total
            ),
        });
    }
    print_table(
        &format!(
            "replicas: paginated LIST of {n} objects, 500 per page, {} LISTs by {} clients, on a PostgreSQL primary with 0, 1, 2 hot standbys",
            args.lists, args.list_clients
        ),
        "objects",
        &rows,
    );
    drop(containers);
    Ok(())
}

/// `replica-lag`: linearizable gets by `--lag-readers` clients and 100
/// puts/s on a PostgreSQL primary with one hot standby as
/// `--read-endpoint` (`--max-replica-lag 1h`, `--replica-wait 500ms`), for
/// `--lag-seconds` with the standby replaying, then as long with its replay
/// paused (`pg_wal_replay_pause()`: in rotation but behind).
async fn lag_table(args: &Args) -> anyhow::Result<()> {
    let (primary, standbys, containers) =
        tokio::task::spawn_blocking(|| etcdsql_integration::servers::postgres_with_standbys(1))
            .await??;
    let standby = standbys[0].clone();
    let mut urls = vec![primary];
    urls.extend(standbys);
    let db = etcdsql_integration::TestDb::create_on(Target::Postgres, &urls).await?;
    let extra = [
        "--read-endpoint",
        db.dsns[1].as_str(),
        "--max-replica-lag",
        "1h",
        "--replica-wait",
        "500ms",
    ];
    let p = Process::etcdsql_with(&args.etcdsql_bin, &db.dsn, &extra).await?;
    let mut writer = Client::connect([p.endpoint.as_str()], None).await?;
    writer.put("/lag/k", "0", None).await?;
    // Replica in rotation after its first health checks.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rows = Vec::new();
    for (phase, sql) in [
        ("replaying", None),
        ("replay paused", Some("SELECT pg_wal_replay_pause()")),
    ] {
        if let Some(sql) = sql {
            etcdsql_integration::admin_sql(Target::Postgres, &standby, sql).await?;
        }
        let until = Instant::now() + Duration::from_secs(args.lag_seconds);
        let mut tasks = Vec::new();
        for _ in 0..args.lag_readers {
            let mut c = Client::connect([p.endpoint.as_str()], None).await?;
            tasks.push(tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0usize);
                while Instant::now() < until {
                    let t = Instant::now();
                    match c.get("/lag/k", None).await {
                        Ok(_) => lat.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            }));
        }
        let mut w = writer.clone();
        let puts = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut n = 0u64;
            while Instant::now() < until {
                tick.tick().await;
                n += 1;
                if w.put("/lag/k", n.to_string(), None).await.is_err() {
                    return Err(anyhow::anyhow!("a put failed"));
                }
            }
            Ok(())
        });
        let (mut latencies, mut errors) = (Vec::new(), 0);
        for t in tasks {
            let (l, e) = t.await?;
            latencies.extend(l);
            errors += e;
        }
        puts.await??;
        latencies.sort();
        eprintln!("  {phase}: {} gets", latencies.len());
        rows.push(Row {
            target: format!("postgres + standby, {phase}"),
            rate: latencies.len() as f64 / args.lag_seconds as f64,
            latencies,
            errors,
            peak_rss: Some(p.rss().1),
            note: String::new(),
        });
    }
    etcdsql_integration::admin_sql(Target::Postgres, &standby, "SELECT pg_wal_replay_resume()")
        .await?;
    print_table(
        &format!(
            "replica-lag: linearizable gets by {} clients and 100 puts/s, {} s with a hot standby replaying, then {} s with its replay paused (in rotation: --max-replica-lag 1h, --replica-wait 500ms)",
            args.lag_readers, args.lag_seconds, args.lag_seconds
        ),
        "gets",
        &rows,
    );
    drop(containers);
    Ok(())
}

/// One line of the `compact` table.
struct Compaction {
    target: String,
    method: &'static str,
    load: Duration,
    rows_before: Option<i64>,
    rows_after: Option<i64>,
    took: Duration,
}

/// `compact`: load versions, compact at the head (physical), timed.
async fn compact_run(name: &str, method: &'static str, args: &Args) -> anyhow::Result<Compaction> {
    let extra: &[&str] = match method {
        "drop" => &["--history-compaction", "drop"],
        "delete" => &["--history-compaction", "delete"],
        _ => &[],
    };
    let u = Under::start_with(name, args, extra).await?;
    let keys = args.compact_keys.max(128);
    let t = Instant::now();
    load(
        &u,
        0,
        args.compact_rows,
        |k| format!("/registry/events/ns-{}/e-{:06}", k % keys % 50, k % keys),
        |k| {
            let mut v =
                format!(r#"{{"kind":"Event","count":{},"message":""#, k / keys).into_bytes();
            v.resize(240, b'm');
            v.extend_from_slice(br#""}"#);
            v
        },
    )
    .await?;
    let load_took = t.elapsed();
    let db = u.started.as_ref().and_then(|s| s.db.as_ref());
    const HISTORY: &str = "SELECT COUNT(*) FROM etcdsql_history";
    let rows_before = match db {
        Some(db) => Some(db.count(HISTORY).await?),
        None => None,
    };
    let mut c = u.client(0);
    let head = c
        .get("/", Some(GetOptions::new().with_count_only()))
        .await?
        .header()
        .map_or(0, |h| h.revision());
    eprintln!(
        "  {name} ({method}): {} versions of {keys} keys loaded in {:.1} s, head {head}; compacting",
        args.compact_rows,
        load_took.as_secs_f64()
    );
    // Deleting a million rows can take minutes: no request timeout here.
    let endpoint = match &u.started {
        Some(s) => s.server.endpoint.clone(),
        None => args.endpoint.clone().unwrap_or_default(),
    };
    let mut c = Client::connect([endpoint.as_str()], None).await?;
    let t = Instant::now();
    c.compact(
        head,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await?;
    let took = t.elapsed();
    eprintln!(
        "  {name} ({method}): compacted in {:.2} s",
        took.as_secs_f64()
    );
    let rows_after = match db {
        Some(db) => Some(db.count(HISTORY).await?),
        None => None,
    };
    Ok(Compaction {
        target: name.to_string(),
        method,
        load: load_took,
        rows_before,
        rows_after,
        took,
    })
}

async fn compact_table(targets: &[String], args: &Args) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for name in targets {
        let methods: &[&'static str] = if name == "etcd" || name == "endpoint" {
            &["etcd"]
        } else {
            &["drop", "delete"]
        };
        for method in methods {
            eprintln!("compact on {name} ({method}) …");
            rows.push(compact_run(name, method, args).await?);
        }
    }
    println!(
        "\n### compact: {} versions of {} keys (~256 B values, Txns of 128), one physical compaction at the head\n",
        args.compact_rows, args.compact_keys
    );
    println!("| target | method | load s | history rows before | after | compaction s |");
    println!("|---|---|---:|---:|---:|---:|");
    let opt = |n: Option<i64>| n.map_or("–".to_string(), |n| n.to_string());
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {} | {} | {:.2} |",
            r.target,
            r.method,
            r.load.as_secs_f64(),
            opt(r.rows_before),
            opt(r.rows_after),
            r.took.as_secs_f64()
        );
    }
    Ok(())
}

/// The label selector of `selectors` and the client-side test for it (a
/// substring of the JSON: cheaper than the decoding kube-apiserver does).
fn bucket(args: &Args) -> (String, Vec<u8>) {
    let b = args.selector_bucket;
    (
        format!("bucket=b-{b}"),
        format!(r#""bucket":"b-{b}""#).into_bytes(),
    )
}

/// One paginated LIST (500 per page, later pages at the first page's
/// revision) with `selector`, or of everything filtered here when it is
/// empty. Returns (seconds, matching objects, objects transferred, pages)
/// and samples `rss` after each page.
async fn selector_list(
    kv: &mut etcdsql::proto::etcdserverpb::kv_client::KvClient<tonic::transport::Channel>,
    selector: &str,
    label: &[u8],
    mut rss: impl FnMut(),
) -> anyhow::Result<(f64, usize, usize, usize)> {
    let end = format!("{}0", &PREFIX[..PREFIX.len() - 1]).into_bytes();
    let (mut key, mut rev) = (PREFIX.as_bytes().to_vec(), 0);
    let (mut matched, mut moved, mut pages) = (0, 0, 0);
    let t = Instant::now();
    loop {
        let r = kv
            .range(etcdsql::proto::etcdserverpb::RangeRequest {
                key: key.clone(),
                range_end: end.clone(),
                limit: 500,
                revision: rev,
                label_selector: selector.to_string(),
                ..Default::default()
            })
            .await?
            .into_inner();
        pages += 1;
        rss();
        if rev == 0 {
            rev = r.header.as_ref().map_or(0, |h| h.revision);
        }
        moved += r.kvs.len();
        matched += r
            .kvs
            .iter()
            .filter(|kv| kv.value.windows(label.len()).any(|w| w == label))
            .count();
        match r.kvs.last() {
            Some(last) if r.more => {
                key = last.key.clone();
                key.push(0);
            }
            _ => break,
        }
    }
    Ok((t.elapsed().as_secs_f64(), matched, moved, pages))
}

/// The median of three runs' seconds, with the last run's other numbers.
async fn selector_median(
    kv: &mut etcdsql::proto::etcdserverpb::kv_client::KvClient<tonic::transport::Channel>,
    selector: &str,
    label: &[u8],
) -> anyhow::Result<(f64, usize, usize, usize)> {
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(selector_list(kv, selector, label, || {}).await?);
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(runs[1])
}

async fn selectors_table(targets: &[String], args: &Args) -> anyhow::Result<()> {
    let n = args.selector_objects;
    let small = n / 10;
    let (selector, label) = bucket(args);
    println!(
        "\n### selectors: LIST of {n} objects (1–4 KiB JSON) with a label selector matching 1% \
         (`{selector}`), pages of 500, median of 3; the selector timed after ANALYZE \
         (and right after the bulk load, before it)\n"
    );
    println!(
        "| target | LIST all + client filter s | objects moved | LIST with selector s | objects moved | speedup | etcdsql RSS MiB before → during selector LISTs, at {small} / {n} objects |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    for name in targets {
        eprintln!("selectors on {name} …");
        let u = Under::start(name, args).await?;
        let mut kv = etcdsql::proto::etcdserverpb::kv_client::KvClient::connect(format!(
            "http://{}",
            u.endpoint.trim_start_matches("http://")
        ))
        .await?
        .max_decoding_message_size(64 << 20);
        let pushdown = name != "etcd";
        let mut peak_at = Vec::new();
        let t = Instant::now();
        for (from, to) in [(0, small), (small, n)] {
            load(&u, from, to, object_key, |k| object(k, 1)).await?;
            eprintln!(
                "  {name}: {to} objects after {:.0} s",
                t.elapsed().as_secs_f64()
            );
            if pushdown {
                let before = u.process().map_or(0, |p| p.rss().0);
                let mut peak = before;
                for _ in 0..3 {
                    selector_list(&mut kv, &selector, &label, || {
                        peak = peak.max(u.process().map_or(0, |p| p.rss().0));
                    })
                    .await?;
                }
                peak_at.push(format!("{} → {}", mib(before), mib(peak)));
            }
        }
        let (all_s, all_matched, all_moved, _) = selector_median(&mut kv, "", &label).await?;
        let (sel, speedup) = if pushdown {
            // Right after the bulk load the planner has no statistics for it
            // yet (PostgreSQL then reads the whole range): timed as is, then
            // after ANALYZE, as autovacuum's next pass would leave it.
            let (fresh, ..) = selector_median(&mut kv, &selector, &label).await?;
            let analyzed = match u.started.as_ref().and_then(|s| s.db.as_ref()) {
                Some(db) => {
                    let sql = if db.target == Target::Mariadb || db.target == Target::Galera {
                        "ANALYZE TABLE etcdsql_live, etcdsql_label"
                    } else {
                        "ANALYZE"
                    };
                    db.execute(sql).await?;
                    true
                }
                None => false,
            };
            let (s, matched, moved, _) = selector_median(&mut kv, &selector, &label).await?;
            anyhow::ensure!(
                matched == all_matched && moved == matched,
                "{name}: the selector returned {moved} objects, {matched} matching; the client filter found {all_matched}"
            );
            (
                (
                    if analyzed {
                        format!("{s:.3} ({fresh:.3} before ANALYZE)")
                    } else {
                        format!("{s:.3}")
                    },
                    moved.to_string(),
                ),
                format!("{:.0}x", all_s / s),
            )
        } else {
            (("–".into(), "–".into()), "–".into())
        };
        println!(
            "| {name} | {all_s:.3} | {all_moved} | {} | {} | {speedup} | {} |",
            sel.0,
            sel.1,
            if peak_at.is_empty() {
                "–".to_string()
            } else {
                peak_at.join(" / ")
            }
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // On SIGINT/SIGTERM the run is dropped, which stops the servers it
    // started (exiting directly would leave them running).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = run(&args) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };
    etcdsql_integration::servers::shutdown();
    result
}

async fn run(args: &Args) -> anyhow::Result<()> {
    if let Some(dir) = &args.plot_dir {
        std::fs::create_dir_all(dir)?;
        let _ = PLOT_DIR.set(dir.clone());
    }
    let mut targets: Vec<String> = args
        .targets
        .iter()
        .filter(|t| !t.is_empty())
        .cloned()
        .collect();
    // `--targets endpoint` names it too; it runs once.
    if args.endpoint.is_some() && !targets.iter().any(|t| t == "endpoint") {
        targets.push("endpoint".to_string());
    }
    println!(
        "etcdsql-bench: targets {}, {} gRPC connections; {} cores",
        targets.join(","),
        args.conns,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for workload in &args.workloads {
        if workload == "compact" {
            compact_table(&targets, args).await?;
            continue;
        }
        if workload == "replicas" {
            replicas_table(args).await?;
            continue;
        }
        if workload == "replica-lag" {
            lag_table(args).await?;
            continue;
        }
        if workload == "selectors" {
            selectors_table(&targets, args).await?;
            continue;
        }
        if workload == "apiserver" {
            apiserver_table(&targets, args).await?;
            continue;
        }
        let mut rows = Vec::new();
        for name in &targets {
            eprintln!("{workload} on {name} …");
            let u = Under::start(name, args).await?;
            let row = match workload.as_str() {
                "create" => create(&u, args).await?,
                "update" => update(&u, args).await?,
                "events" => events(&u, args).await?,
                "keepalive" => keepalive(&u, args).await?,
                "list" => list(&u, args).await?,
                "watch" => watch(&u, args).await?,
                "memory" => memory(&u, args).await?,
                other => anyhow::bail!("unknown workload {other}"),
            };
            rows.push(row);
        }
        let (title, unit) = match workload.as_str() {
            "create" => (
                format!(
                    "create: {} objects (1–4 KiB JSON, labels), {} concurrent clients, create Txn",
                    args.create_objects, args.create_clients
                ),
                "objects",
            ),
            "events" => (
                format!(
                    "events: {} Events created with a lease (create Txn), {} concurrent clients",
                    args.event_objects, args.event_clients
                ),
                "events",
            ),
            "keepalive" => (
                format!(
                    "keepalive: {} lease renewals, {} clients each renewing its own lease",
                    args.event_objects, args.event_clients
                ),
                "renewals",
            ),
            "update" => (
                format!(
                    "update: GuaranteedUpdate (read + CAS Txn, retried on conflict), {} clients on {} objects",
                    args.update_clients, args.update_objects
                ),
                "updates",
            ),
            "list" => (
                format!(
                    "list: paginated LIST of {} objects, 500 per page, pinned revision",
                    args.list_objects
                ),
                "objects",
            ),
            "watch" => (
                format!(
                    "watch: {} watchers on a prefix, {} puts/s",
                    args.watchers, args.watch_rate
                ),
                "events",
            ),
            _ => (
                format!(
                    "memory: RSS while the server holds up to {} keys",
                    args.memory_keys
                ),
                "keys loaded",
            ),
        };
        print_table(&title, unit, &rows);
    }
    Ok(())
}

/// One phase of `apiserver`: `n` requests from `clients` connections,
/// request `i` made by `make(i)` (method, path, body) and expected to
/// answer `want`.
async fn kube_phase<F>(
    conns: &mut [etcdsql_integration::kube::Conn],
    n: usize,
    want: u16,
    make: F,
) -> (f64, Vec<Duration>, usize)
where
    F: Fn(usize) -> (&'static str, String, Option<Vec<u8>>) + Send + Sync + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let make = Arc::new(make);
    let started = Instant::now();
    let results = futures::future::join_all(conns.iter_mut().map(|c| {
        let (next, make) = (next.clone(), make.clone());
        async move {
            let (mut lat, mut errors) = (Vec::new(), 0usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return (lat, errors);
                }
                let (method, path, body) = make(i);
                let t = Instant::now();
                match c.request(method, &path, body).await {
                    Ok((s, _)) if s == want => lat.push(t.elapsed()),
                    other => {
                        if errors == 0 {
                            eprintln!("  {method} {path}: {}", status_text(&other));
                        }
                        errors += 1;
                    }
                }
            }
        }
    }))
    .await;
    gather(started, results)
}

/// `n` updates of the `hot` ConfigMaps `cm-0`… from the client, as a
/// controller without a cache makes them: GET the object, PUT it back
/// changed with the resourceVersion read, and on 409 Conflict both again.
/// Answers (updates/s, sorted latencies of whole updates, errors,
/// conflicts).
async fn kube_read_modify_write(
    conns: &mut [etcdsql_integration::kube::Conn],
    n: usize,
    hot: usize,
) -> (f64, Vec<Duration>, usize, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let conflicts = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let results = futures::future::join_all(conns.iter_mut().map(|c| {
        let (next, conflicts) = (next.clone(), conflicts.clone());
        async move {
            let (mut lat, mut errors) = (Vec::new(), 0usize);
            'updates: loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return (lat, errors);
                }
                let k = i % hot;
                let path = format!("/api/v1/namespaces/bench/configmaps/cm-{k}");
                let t = Instant::now();
                loop {
                    let version = match c.request("GET", &path, None).await {
                        Ok((200, body)) => resource_version(&body),
                        other => {
                            if errors == 0 {
                                eprintln!("  GET {path}: {}", status_text(&other));
                            }
                            errors += 1;
                            continue 'updates;
                        }
                    };
                    let body = format!(
                        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm-{k}","namespace":"bench","resourceVersion":"{version}","labels":{{"app":"a{}","parity":"{}"}}}},"data":{{"v":"{}","n":"{i}"}}}}"#,
                        k % 50,
                        ["even", "odd"][k % 2],
                        "x".repeat(1024)
                    );
                    match c.request("PUT", &path, Some(body.into_bytes())).await {
                        Ok((200, _)) => {
                            lat.push(t.elapsed());
                            continue 'updates;
                        }
                        Ok((409, _)) => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            if errors == 0 {
                                eprintln!("  PUT {path}: {}", status_text(&other));
                            }
                            errors += 1;
                            continue 'updates;
                        }
                    }
                }
            }
        }
    }))
    .await;
    let (rate, lat, errors) = gather(started, results);
    (rate, lat, errors, conflicts.load(Ordering::Relaxed))
}

/// A request's outcome as text, for the first failure a client reports.
fn status_text(r: &anyhow::Result<(u16, bytes::Bytes)>) -> String {
    match r {
        Ok((s, b)) => format!("{s} {}", String::from_utf8_lossy(b)),
        Err(e) => format!("{e:#}"),
    }
}

/// `metadata.resourceVersion` of an object answer ("" if absent).
fn resource_version(body: &[u8]) -> String {
    string_member(body, "resourceVersion")
}

/// The first string member `name` in a JSON answer ("" if absent).
fn string_member(body: &[u8], name: &str) -> String {
    let text = String::from_utf8_lossy(body);
    let head = format!(r#""{name}":""#);
    let Some(at) = text.find(&head) else {
        return String::new();
    };
    text[at + head.len()..]
        .split('"')
        .next()
        .unwrap_or("")
        .to_string()
}

/// The clients' latencies and errors since `started` as (requests/s, sorted
/// latencies, errors).
fn gather(started: Instant, results: Vec<(Vec<Duration>, usize)>) -> (f64, Vec<Duration>, usize) {
    let secs = started.elapsed().as_secs_f64();
    let errors = results.iter().map(|(_, e)| e).sum();
    let mut lat: Vec<Duration> = results.into_iter().flat_map(|(l, _)| l).collect();
    lat.sort();
    (lat.len() as f64 / secs, lat, errors)
}

/// `apiserver`: kube-apiserver on each target; one table per request kind.
async fn apiserver_table(targets: &[String], args: &Args) -> anyhow::Result<()> {
    use etcdsql_integration::kube::Apiserver;
    let bin = args
        .kube_apiserver
        .clone()
        .ok_or_else(|| anyhow::anyhow!("apiserver needs --kube-apiserver or KUBE_APISERVER"))?;
    let kinds = [
        "ConfigMap creates",
        "custom-resource creates",
        "PATCH of hot ConfigMaps",
        "GET+PUT of hot ConfigMaps",
        "LIST pages",
    ];
    let mut rows: Vec<Vec<Row>> = kinds.iter().map(|_| Vec::new()).collect();
    for name in targets {
        eprintln!("apiserver on {name} …");
        let u = Under::start(name, args).await?;
        let api = Apiserver::start(&bin, &u.endpoint).await?;
        let mut conns = Vec::new();
        for _ in 0..args.kube_clients {
            conns.push(api.connect().await?);
        }
        let (s, b) = conns[0]
            .request(
                "POST",
                "/api/v1/namespaces",
                Some(
                    br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"bench"}}"#
                        .to_vec(),
                ),
            )
            .await?;
        anyhow::ensure!(s == 201, "namespace: {s} {}", String::from_utf8_lossy(&b));
        let crd = r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
            "metadata":{"name":"widgets.bench.example.com"},
            "spec":{"group":"bench.example.com","scope":"Namespaced",
              "names":{"plural":"widgets","singular":"widget","kind":"Widget"},
              "versions":[{"name":"v1","served":true,"storage":true,
                "schema":{"openAPIV3Schema":{"type":"object","x-kubernetes-preserve-unknown-fields":true}}}]}}"#;
        let (s, b) = conns[0]
            .request(
                "POST",
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                Some(crd.as_bytes().to_vec()),
            )
            .await?;
        anyhow::ensure!(s == 201, "CRD: {s} {}", String::from_utf8_lossy(&b));
        let deadline = Instant::now() + Duration::from_secs(60);
        while conns[0]
            .request(
                "GET",
                "/apis/bench.example.com/v1/namespaces/bench/widgets",
                None,
            )
            .await?
            .0
            != 200
        {
            anyhow::ensure!(Instant::now() < deadline, "the CRD was not served in 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // One custom resource before the clock starts: the apiserver sets up
        // the new resource's storage on first use, which stalled the first
        // creates about 2 s on etcd and etcdsql alike.
        let warm = Instant::now();
        let (s, b) = conns[0]
            .request(
                "POST",
                "/apis/bench.example.com/v1/namespaces/bench/widgets",
                Some(
                    br#"{"apiVersion":"bench.example.com/v1","kind":"Widget","metadata":{"name":"warm-up"},"spec":{}}"#
                        .to_vec(),
                ),
            )
            .await?;
        anyhow::ensure!(
            s == 201,
            "first custom resource: {s} {}",
            String::from_utf8_lossy(&b)
        );
        eprintln!(
            "  first custom resource created in {:.0} ms",
            ms(warm.elapsed())
        );
        let server = u.process();
        // CPU seconds of the server and of the database (in containers);
        // `since` answers what each used after `c0`.
        let cpu = || u.cpu();
        let since = |c0: (Option<f64>, Option<f64>)| {
            let c = cpu();
            (
                c.0.zip(c0.0).map_or(0.0, |(a, b)| a - b),
                c.1.zip(c0.1).map(|(a, b)| a - b),
            )
        };
        let n = args.kube_objects;
        let hot = args.kube_hot;
        let mut measured = Vec::new();
        let c0 = cpu();
        measured.push(
            kube_phase(&mut conns, n, 201, |i| {
                let body = format!(
                    r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm-{i}","labels":{{"app":"a{}","parity":"{}"}}}},"data":{{"v":"{}"}}}}"#,
                    i % 50,
                    ["even", "odd"][i % 2],
                    "x".repeat(1024)
                );
                ("POST", "/api/v1/namespaces/bench/configmaps".to_string(), Some(body.into_bytes()))
            })
            .await,
        );
        let mut cpus = vec![since(c0)];
        let c0 = cpu();
        measured.push(
            kube_phase(&mut conns, n, 201, |i| {
                let body = format!(
                    r#"{{"apiVersion":"bench.example.com/v1","kind":"Widget","metadata":{{"name":"w-{i}","labels":{{"tier":"t{}"}}}},"spec":{{"size":{i},"data":"{}"}}}}"#,
                    i % 3,
                    "y".repeat(1024 + i % 2048)
                );
                ("POST", "/apis/bench.example.com/v1/namespaces/bench/widgets".to_string(), Some(body.into_bytes()))
            })
            .await,
        );
        cpus.push(since(c0));
        let c0 = cpu();
        measured.push(
            kube_phase(&mut conns, args.kube_updates, 200, move |i| {
                (
                    "PATCH",
                    format!("/api/v1/namespaces/bench/configmaps/cm-{}", i % hot),
                    Some(format!(r#"{{"data":{{"n":"{i}"}}}}"#).into_bytes()),
                )
            })
            .await,
        );
        cpus.push(since(c0));
        let c0 = cpu();
        let (rate, latencies, errors, conflicts) =
            kube_read_modify_write(&mut conns, args.kube_updates, hot).await;
        measured.push((rate, latencies, errors));
        cpus.push(since(c0));
        let mut conflicts = [None, None, None, Some(conflicts), None];
        // Paginated LISTs: each client walks whole lists, page by page.
        let c0 = cpu();
        let lists = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let total = args.kube_lists;
        let results = futures::future::join_all(conns.iter_mut().take(8).map(|c| {
            let lists = lists.clone();
            async move {
                let (mut lat, mut errors) = (Vec::new(), 0usize);
                while lists.fetch_add(1, Ordering::Relaxed) < total {
                    let mut token = String::new();
                    loop {
                        let path = format!(
                            "/api/v1/namespaces/bench/configmaps?limit=500{}",
                            if token.is_empty() {
                                String::new()
                            } else {
                                format!("&continue={token}")
                            }
                        );
                        let t = Instant::now();
                        match c.request("GET", &path, None).await {
                            Ok((200, body)) => {
                                lat.push(t.elapsed());
                                token = continue_token(&body);
                                if token.is_empty() {
                                    break;
                                }
                            }
                            _ => {
                                errors += 1;
                                break;
                            }
                        }
                    }
                }
                (lat, errors)
            }
        }))
        .await;
        measured.push(gather(started, results));
        cpus.push(since(c0));
        for (k, ((rate, latencies, errors), (secs, db))) in
            measured.into_iter().zip(cpus).enumerate()
        {
            let ops = latencies.len().max(1) as f64;
            let mut note = match conflicts[k].take() {
                Some(c) => format!("{c} conflicts"),
                None => String::new(),
            };
            if server.is_some() {
                if !note.is_empty() {
                    note.push_str("; ");
                }
                let per = |s: f64| s / ops * 1000.0;
                note.push_str(&match db {
                    Some(d) => format!(
                        "CPU s per 1,000: server {:.2} + database {:.2} = {:.2}",
                        per(secs),
                        per(d),
                        per(secs + d)
                    ),
                    None => format!("server CPU {:.2} s per 1,000", per(secs)),
                });
            }
            rows[k].push(Row {
                target: name.clone(),
                rate,
                errors,
                latencies,
                peak_rss: u.peak_rss(),
                note,
            });
        }
        drop(conns);
        drop(api);
    }
    eprintln!("kube-apiserver: {}", Apiserver::version(&bin));
    for (kind, rows) in kinds.iter().zip(rows) {
        print_table(
            &format!(
                "apiserver: {kind} through {} ({} clients; {} objects, {} PATCHes and {} updates on {} objects, {} LISTs)",
                Apiserver::version(&bin),
                args.kube_clients,
                args.kube_objects,
                args.kube_updates,
                args.kube_updates,
                args.kube_hot,
                args.kube_lists
            ),
            if *kind == "LIST pages" {
                "pages"
            } else {
                "requests"
            },
            &rows,
        );
    }
    Ok(())
}

/// `metadata.continue` of a list answer ("" at the end).
fn continue_token(body: &[u8]) -> String {
    // Base64 with '=' padding: escaped for the query string.
    string_member(body, "continue")
        .replace('=', "%3D")
        .replace('+', "%2B")
        .replace('/', "%2F")
}
