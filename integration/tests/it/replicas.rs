//! Read replicas (`--read-endpoint`) on a real PostgreSQL hot standby
//! (`pg_basebackup -R`) and a real MariaDB GTID replica: reads go to the
//! replica when it is healthy (counted on the replica's side), a default
//! Range never reads stale data while replication is paused (a
//! serializable one does, from the replica), watches keep delivering, and a
//! replica stopped under load costs no request, with the replica back in
//! rotation after it restarts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use etcd_client::{Client, GetOptions};
use etcdsql_integration::{Process, Target, TestDb, free_port, scrape_metrics, servers};

use crate::{Case, bin, case};

/// The sum of `name`'s samples whose labels contain `label`.
fn metric(scrape: &str, name: &str, label: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Reads counted on the replica's own server.
async fn replica_side_reads(target: Target, replica_admin: &str, db: &str) -> i64 {
    try_replica_side_reads(target, replica_admin, db)
        .await
        .expect("replica statistics")
}

async fn try_replica_side_reads(
    target: Target,
    replica_admin: &str,
    db: &str,
) -> anyhow::Result<i64> {
    let sql = if target.is_postgres() {
        format!("SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'")
    } else {
        "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'COM_SELECT'"
            .to_string()
    };
    let admin = TestDb::admin_lines(target, replica_admin, &sql).await?;
    Ok(admin.first().context("no statistics row")?.parse()?)
}

async fn wait_healthy(port: u16, healthy: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let m = scrape_metrics(port).await;
        if metric(&m, "etcdsql_replica_healthy", "replica=") == if healthy { 1.0 } else { 0.0 } {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: replica health never became {healthy}\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn served_by_replica(port: u16) -> f64 {
    let m = scrape_metrics(port).await;
    metric(&m, "etcdsql_reads_total", "kind=\"range\"")
        - metric(
            &m,
            "etcdsql_reads_total",
            "server=\"primary\",kind=\"range\"",
        )
}

/// Where etcdsql reaches the primary and the replica.
#[derive(Clone, Copy, PartialEq)]
enum Tier {
    /// `--endpoint` the primary, `--read-endpoint` the replica.
    Direct,
    Pgpool,
    /// PgCat in this pool mode.
    Pgcat(&'static str),
    Proxysql,
}

impl Tier {
    fn name(self) -> String {
        match self {
            Tier::Direct => String::new(),
            Tier::Pgpool => " through Pgpool-II".into(),
            Tier::Pgcat(mode) => format!(" through PgCat ({mode} mode)"),
            Tier::Proxysql => " through ProxySQL".into(),
        }
    }
}

async fn replicated(target: Target) {
    run(target, Tier::Direct).await;
}

/// The same through Pgpool-II in front of the primary and the standby.
async fn pgpool(target: Target) {
    run(target, Tier::Pgpool).await;
}

/// The same through PgCat, pooling by session and by transaction.
async fn pgcat_session(target: Target) {
    run(target, Tier::Pgcat("session")).await;
}

async fn pgcat_transaction(target: Target) {
    run(target, Tier::Pgcat("transaction")).await;
}

/// The same through ProxySQL in front of the MariaDB primary and replica.
async fn proxysql(target: Target) {
    run(target, Tier::Proxysql).await;
}

fn pgpool_installed() -> Result<(), String> {
    ["/usr/sbin/pgpool", "/usr/bin/pgpool"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
        .then_some(())
        .ok_or_else(|| "no pgpool (Debian package pgpool2)".to_string())
}

fn pgcat_found() -> Result<(), String> {
    servers::proxy_bin("PGCAT_BIN", "pgcat").map(|_| ())
}

fn proxysql_found() -> Result<(), String> {
    servers::proxy_bin("PROXYSQL_BIN", "proxysql").map(|_| ())
}

async fn run(target: Target, tier: Tier) {
    let through_proxy = tier != Tier::Direct;
    let (primary, replica, containers) = tokio::task::spawn_blocking(move || {
        if target.is_postgres() {
            servers::postgres_with_standby()
        } else {
            servers::mariadb_with_replica()
        }
    })
    .await
    .expect("container task")
    .expect("a primary and a replica");
    let db = TestDb::create_on(target, &[primary.clone(), replica.clone()])
        .await
        .expect("database");
    let metrics_port = free_port();
    let pool: Option<Box<dyn servers::Proxy>> = {
        let (a, b, d) = (primary.clone(), replica.clone(), db.dsn.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<Option<Box<dyn servers::Proxy>>> {
            Ok(match tier {
                Tier::Direct => None,
                Tier::Pgpool => Some(Box::new(servers::Pgpool::start(&a, &b)?)),
                Tier::Pgcat(mode) => Some(Box::new(servers::Pgcat::start(&a, &b, &d, mode)?)),
                Tier::Proxysql => Some(Box::new(servers::Proxysql::start(&a, &b)?)),
            })
        })
        .await
        .unwrap()
        .expect("the proxy")
    };
    // Through the pool: its one DSN, as a proxy tier.
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let mut args = vec![
        "--max-replica-lag",
        "1h",
        "--replica-wait",
        "300ms",
        "--listen-metrics-urls",
        &metrics_url,
    ];
    let endpoint = match &pool {
        Some(pool) => {
            // Migrations go to the primary itself: through the pool, a read
            // of the table just created may reach the standby first.
            let m = std::process::Command::new(bin())
                .args(["schema", "migrate", "--endpoint", &db.dsn])
                .output()
                .unwrap();
            assert!(m.status.success(), "{m:?}");
            args.extend(["--proxy-tier", "--auto-migrate=false"]);
            servers::with_port(&db.dsn, servers::port_of(pool.url()).unwrap()).unwrap()
        }
        None => {
            args.extend([
                "--read-endpoint",
                &db.dsns[1],
                "--replica-read-timeout",
                "1s",
            ]);
            db.dsn.clone()
        }
    };
    let p = Process::etcdsql_with(bin(), &endpoint, &args)
        .await
        .expect("etcdsql");
    wait_healthy(metrics_port, true, "at start").await;
    let mut c = p.client().await.unwrap();
    for i in 0..100 {
        c.put(format!("/r/{i:03}"), i.to_string(), None)
            .await
            .unwrap();
    }

    // Reads go to the replica, as both sides count them.
    let (ours, theirs) = (
        served_by_replica(metrics_port).await,
        replica_side_reads(target, &replica, &db.name).await,
    );
    for i in 0..100 {
        let r = c.get(format!("/r/{i:03}"), None).await.unwrap();
        assert_eq!(r.kvs()[0].value_str().unwrap(), i.to_string());
    }
    let list = c
        .get("/r/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(list.count(), 100);
    let by_replica = served_by_replica(metrics_port).await - ours;
    assert!(
        by_replica >= 90.0,
        "reads served by the replica: {by_replica} of 101"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let counted = loop {
        // PostgreSQL flushes a backend's statistics about once a second.
        let n = replica_side_reads(target, &replica, &db.name).await - theirs;
        if n >= 100 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        counted >= 100,
        "reads the replica itself counted: {counted}"
    );
    // Many at once: those that wait are read together, on the replica too.
    let before = served_by_replica(metrics_port).await;
    for round in 0..4 {
        let gets: Vec<_> = (0..64)
            .map(|i| {
                let mut c = c.clone();
                tokio::spawn(async move {
                    let k = (i * 3 + round) % 100;
                    let r = c.get(format!("/r/{k:03}"), None).await.unwrap();
                    assert_eq!(r.kvs()[0].value_str().unwrap(), k.to_string());
                })
            })
            .collect();
        for g in gets {
            g.await.unwrap();
        }
    }
    let gathered = etcdsql_integration::metric_sum(
        &scrape_metrics(metrics_port).await,
        "etcdsql_gathered_read_keys_count",
    );
    assert!(gathered > 0.0, "no reads were gathered");
    assert!(
        served_by_replica(metrics_port).await > before,
        "gathered reads did not go to the replica"
    );

    // A second etcdsql process on the same endpoint: its watcher gets every
    // put made through the first, in order.
    let cross = {
        let second_args: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| !a.starts_with("http://"))
            .filter(|a| *a != "--listen-metrics-urls")
            .collect();
        let q = Process::etcdsql_with(bin(), &endpoint, &second_args)
            .await
            .expect("a second etcdsql");
        let mut qc = q.client().await.unwrap();
        let mut w = qc
            .watch(
                "/cross/",
                Some(etcd_client::WatchOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        let created = w.message().await.unwrap().expect("watch open");
        assert!(created.created(), "{created:?}");
        let mut took = Vec::new();
        for i in 0..40 {
            let started = Instant::now();
            let put = c.put(format!("/cross/{i:02}"), "x", None).await.unwrap();
            let rev = put.header().unwrap().revision();
            let got = tokio::time::timeout(Duration::from_secs(10), w.message())
                .await
                .unwrap_or_else(|_| {
                    panic!("put {i} (revision {rev}) never reached the other process's watch")
                })
                .unwrap()
                .expect("watch open");
            let e = &got.events()[0];
            assert_eq!(
                e.kv().unwrap().mod_revision(),
                rev,
                "event {i} out of order"
            );
            took.push(started.elapsed());
        }
        took.sort();
        format!(
            "put → event in the other process: p50 {:.1} ms, p99 {:.1} ms; ",
            took[took.len() / 2].as_secs_f64() * 1e3,
            took[took.len() * 99 / 100].as_secs_f64() * 1e3
        )
    };

    // A lease through the tier: its renewals (on PostgreSQL, commits that
    // do not wait for the flush) keep its key past the TTL, and its expiry
    // (which reads the database's run in its transaction) deletes the key.
    let lease = c.lease_grant(2, None).await.unwrap().id();
    c.put(
        "/lease/k",
        "v",
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    let mut renewals = crate::Renewals::start(&mut c, lease).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(renewals.ttl().await, 2, "a renewal through the tier");
    }
    let kept = c.get("/lease/k", None).await.unwrap().kvs().len();
    assert_eq!(kept, 1, "the renewed lease's key");
    drop(renewals);
    crate::wait_gone(&mut c, "/lease/k", Duration::from_secs(10)).await;

    // Replication paused: a default Range still sees the newest write (from
    // the primary, after waiting for the replica); a serializable one is
    // served by the replica as it is.
    let (pause, resume) = if target.is_postgres() {
        (
            "SELECT pg_wal_replay_pause()",
            "SELECT pg_wal_replay_resume()",
        )
    } else {
        ("STOP SLAVE SQL_THREAD", "START SLAVE SQL_THREAD")
    };
    etcdsql_integration::admin_sql(target, &replica, pause)
        .await
        .unwrap();
    let mut w = c.watch("/fresh", None).await.unwrap();
    // Created before the put (etcd-client does not wait for it).
    let created = w.message().await.unwrap().expect("watch open");
    assert!(created.created(), "{created:?}");
    let put = c.put("/fresh", "new", None).await.unwrap();
    let rev = put.header().unwrap().revision();
    let fresh = c.get("/fresh", None).await.unwrap();
    assert_eq!(fresh.count(), 1, "a default Range saw the write");
    assert_eq!(fresh.kvs()[0].value_str().unwrap(), "new");
    let stale = c
        .get("/fresh", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(
        stale.count(),
        0,
        "a serializable Range came from the paused replica"
    );
    let at = c
        .get("/fresh", Some(GetOptions::new().with_revision(rev)))
        .await
        .unwrap();
    assert_eq!(at.count(), 1, "a Range at the write's revision saw it");
    // The replica is known to be behind: later reads go to the primary
    // without each waiting --replica-wait (300 ms) for it again.
    let mut took = Vec::new();
    for i in 0..10 {
        c.put("/fresh", format!("new{i}"), None).await.unwrap();
        let started = Instant::now();
        let r = c.get("/fresh", None).await.unwrap();
        took.push(started.elapsed());
        assert_eq!(r.kvs()[0].value_str().unwrap(), format!("new{i}"));
    }
    took.sort();
    assert!(
        took[5] < Duration::from_millis(150),
        "reads while the replica is paused waited for it each time: {took:?}"
    );
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = w.message().await.unwrap().expect("watch open");
            if let Some(e) = m.events().first() {
                return e.kv().unwrap().mod_revision();
            }
        }
    })
    .await
    .expect("the watch event while the replica is paused");
    assert_eq!(seen, rev);
    etcdsql_integration::admin_sql(target, &replica, resume)
        .await
        .unwrap();
    drop(w);
    // Caught up, it serves linearizable reads again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = served_by_replica(metrics_port).await;
        c.get("/fresh", None).await.unwrap();
        if served_by_replica(metrics_port).await > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed replica serves no linearizable read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The replica stops under load: no request fails, the primary answers,
    // and the replica is back in rotation after it restarts.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // The slowest request since it was last reset, in ms.
    let slowest = Arc::new(AtomicU64::new(0));
    let mut frozen = 0;
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let mut c: Client = p.client().await.unwrap();
        let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
        let slowest = slowest.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let started = Instant::now();
                let key = format!("/r/{:03}", (n * 7 + t) % 100);
                let r = match (t, n % 3) {
                    (0, _) => c.put(key, format!("w{n}"), None).await.map(|_| ()),
                    (_, 0) => c
                        .get(key, Some(GetOptions::new().with_serializable()))
                        .await
                        .map(|_| ()),
                    (_, 1) => c
                        .get("/r/", Some(GetOptions::new().with_prefix().with_limit(50)))
                        .await
                        .map(|_| ()),
                    _ => c.get(key, None).await.map(|_| ()),
                };
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                slowest.fetch_max(ms, Ordering::Relaxed);
                match r {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    if !through_proxy {
        // Frozen (its connections black-holed): reads on it time out after
        // --replica-read-timeout and go elsewhere; none fails.
        slowest.store(0, Ordering::Relaxed);
        containers[1].freeze(true).expect("freezing the replica");
        let before = done.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(3)).await;
        frozen = done.load(Ordering::Relaxed) - before;
        // Requests caught on it waited for the 1 s read timeout, not for
        // the thaw.
        let waited = slowest.load(Ordering::Relaxed);
        containers[1].freeze(false).expect("thawing the replica");
        assert!(
            waited < 2500,
            "a request waited {waited} ms while the replica was frozen"
        );
        assert!(
            p.log().contains("replica read timed out"),
            "no read timed out on the frozen replica"
        );
        wait_healthy(metrics_port, true, "replica thawed").await;
    }
    containers[1].stop().await.expect("stopping the replica");
    if through_proxy {
        // The proxy detaches the standby; its balanced side is the primary.
        tokio::time::sleep(Duration::from_secs(3)).await;
    } else {
        wait_healthy(metrics_port, false, "replica stopped").await;
    }
    let before = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let while_down = done.load(Ordering::Relaxed) - before;
    containers[1]
        .start_again()
        .await
        .expect("starting the replica");
    let after = if through_proxy {
        // Counted by the replica itself once the proxy attached it again.
        let mut base = None;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Ok(n)) = tokio::time::timeout(
                Duration::from_secs(5),
                try_replica_side_reads(target, &replica, &db.name),
            )
            .await
            {
                let b = *base.get_or_insert(n);
                if n - b >= 10 {
                    break (n - b) as f64;
                }
            }
            if Instant::now() > deadline {
                // The proxy's log first: the reason must end the output.
                let log = pool.as_ref().map(|p| p.log()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "{}\nthe replica never served reads again within 90 s of its restart \
                     (counted there: {base:?} at first)",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    } else {
        wait_healthy(metrics_port, true, "replica restarted").await;
        let back = served_by_replica(metrics_port).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        served_by_replica(metrics_port).await - back
    };
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests");
    assert!(
        while_down > 0,
        "requests answered while the replica was down"
    );
    assert!(after > 0.0, "reads served by the replica after it returned");
    assert!(
        through_proxy || frozen > 0,
        "requests answered while the replica was frozen"
    );
    eprintln!(
        "replicas on {}{}: {by_replica} of 101 reads by the replica ({counted} counted there); \
         {cross}paused: default Range fresh, serializable stale; {}\
         replica stopped: {while_down} requests in 2 s, 0 failed, \
         {after} reads by it after its return",
        target.name(),
        tier.name(),
        if through_proxy {
            String::new()
        } else {
            format!("frozen: {frozen} requests in 3 s, 0 failed; ")
        }
    );
    drop(p);
    drop(pool);
    drop(containers);
}

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "replicated",
            &[Target::Postgres, Target::Mariadb],
            replicated
        ),
        case!(
            "pgpool",
            &[Target::Postgres],
            pgpool,
            requires = pgpool_installed
        ),
        case!(
            "pgcat_session",
            &[Target::Postgres],
            pgcat_session,
            requires = pgcat_found
        ),
        case!(
            "pgcat_transaction",
            &[Target::Postgres],
            pgcat_transaction,
            requires = pgcat_found
        ),
        case!(
            "proxysql",
            &[Target::Mariadb],
            proxysql,
            requires = proxysql_found
        ),
    ]
}
