//! Faults: an etcdsql process killed with SIGKILL during concurrent writes
//! loses nothing it acknowledged, and revisions stay gapless; a database
//! restarted under load costs clients Unavailable answers and nothing else;
//! garbage on the gRPC port leaves the server serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{GetOptions, KeyValue, PutOptions, WatchOptions};
use etcdsql_integration::{Process, Target, TestDb, admin_sql, servers};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::{Case, Renewals, bin, case, wait_gone};

const CLIENTS: usize = 64;
const WRITES: usize = 10_000;

async fn kill_during_writes(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let mut p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut client = p.client().await.unwrap();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..WRITES / CLIENTS {
                let key = format!("/f/{c:02}/{n:05}");
                match client.put(key.clone(), n.to_string(), None).await {
                    Ok(r) => acked
                        .lock()
                        .await
                        .push((key, r.header().unwrap().revision())),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once a good part of the writes is acknowledged.
    while acked.lock().await.len() < WRITES / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    p.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().await.clone();

    let p2 = Process::etcdsql(bin(), db.other_dsn())
        .await
        .expect("restarted etcdsql");
    let mut c = p2.client().await.unwrap();
    let applied = assert_acked_and_gapless(&mut c, "/f/", &acked).await;
    c.put("/f/after", "restart", None)
        .await
        .expect("writes after the restart");
    eprintln!(
        "kill -9 on {}: {} acknowledged before the kill, all present with their revisions; {} applied in all, gapless",
        target.name(),
        acked.len(),
        applied
    );
}

/// Every acknowledged write is readable at the revision it was acknowledged
/// with, and the keys under `prefix` took revisions 2..=n, each once.
async fn assert_acked_and_gapless(
    c: &mut etcd_client::Client,
    prefix: &str,
    acked: &[(String, i64)],
) -> i64 {
    for (key, rev) in acked {
        let r = c.get(key.as_str(), None).await.expect("get");
        let kv = r
            .kvs()
            .first()
            .unwrap_or_else(|| panic!("acknowledged {key} is missing"));
        assert_eq!(
            kv.mod_revision(),
            *rev,
            "{key} has the revision it was acknowledged with"
        );
    }
    let all = c
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("list");
    // Every applied write created one key in one revision: no gaps.
    assert_eq!(
        all.header().map(|h| h.revision()),
        Some(1 + all.count()),
        "revisions are gapless"
    );
    let mut revs: Vec<i64> = all.kvs().iter().map(|kv| kv.mod_revision()).collect();
    revs.sort_unstable();
    assert!(
        revs.iter().zip(2i64..).all(|(r, want)| *r == want),
        "revisions 2..=n, each once"
    );
    all.count()
}

/// A database server of the case's own (it is stopped or reconfigured), its
/// admin URL, a database on it and etcdsql serving that database.
async fn own_server(target: Target) -> (servers::Container, String, TestDb, Process) {
    let (server, container) = tokio::task::spawn_blocking(move || servers::dedicated(target))
        .await
        .expect("container task")
        .expect("a database container of its own");
    let db = TestDb::create_on(target, &server.urls)
        .await
        .expect("database");
    let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
    (container, server.urls[0].clone(), db, p)
}

/// Stops the database container under load and starts it again.
async fn database_restart(target: Target) {
    let (container, _admin, db, p) = own_server(target).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, i64, Instant)>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut c = p.client().await.unwrap();
        let (stop, acked, errors) = (stop.clone(), acked.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("/r/{w:02}/{n:06}");
                n += 1;
                let r = if w % 4 == 3 {
                    c.get(
                        "/r/",
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    )
                    .await
                    .map(|_| None)
                } else {
                    c.put(key.clone(), "v", None)
                        .await
                        .map(|r| Some(r.header().map_or(0, |h| h.revision())))
                };
                match r {
                    Ok(Some(rev)) => acked.lock().await.push((key, rev, Instant::now())),
                    Ok(None) => {}
                    Err(etcd_client::Error::GRpcStatus(s)) => {
                        errors
                            .lock()
                            .await
                            .push(format!("{:?}: {}", s.code(), s.message()));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => {
                        errors.lock().await.push(format!("client: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = acked.lock().await.len();
    container.stop().await.expect("stopping the database");
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    container
        .start_again()
        .await
        .expect("starting the database");
    let up = Instant::now();
    let recovered = loop {
        if let Some(t) = acked.lock().await.iter().map(|a| a.2).find(|t| *t > up) {
            break t - up;
        }
        assert!(
            up.elapsed() < Duration::from_secs(90),
            "no write succeeded within 90 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let errors = errors.lock().await.clone();
    // The outage was real: nothing was acknowledged while the database was
    // down. Requests either waited it out (etcdsql retries a broken
    // connection for about 2.5 s) or failed Unavailable.
    let during = acked
        .lock()
        .await
        .iter()
        .filter(|a| a.2 > down + Duration::from_millis(500) && a.2 < up)
        .count();
    assert_eq!(during, 0, "writes acknowledged while the database was down");
    let unexpected: Vec<&String> = errors
        .iter()
        .filter(|e| !e.starts_with("Unavailable: "))
        .collect();
    assert!(
        unexpected.is_empty(),
        "errors other than Unavailable: {unexpected:?}"
    );
    let acked: Vec<(String, i64)> = acked
        .lock()
        .await
        .iter()
        .map(|(k, r, _)| (k.clone(), *r))
        .collect();
    let mut c = p.client().await.unwrap();
    let applied = assert_acked_and_gapless(&mut c, "/r/", &acked).await;
    eprintln!(
        "database restart on {}: {before} writes before the stop, {} Unavailable answers while down, \
         first write {} ms after the start, {} acknowledged in all, all present; {applied} applied, gapless",
        target.name(),
        errors.len(),
        recovered.as_millis(),
        acked.len(),
    );
    drop(p);
    drop(db);
    tokio::task::spawn_blocking(move || drop(container))
        .await
        .unwrap();
}

/// SIGTERM while 1,000 watches are open and writes are in flight: the
/// process exits within 2 s, every watch stream ends, and every write it
/// acknowledged is there after a restart.
async fn sigterm_with_watches(target: Target) {
    const STREAMS: usize = 10;
    const PER_STREAM: usize = 100;
    const WRITERS: usize = 16;
    let db = TestDb::create(target).await.expect("database");
    let mut p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
    let mut streams = Vec::new();
    for s in 0..STREAMS {
        let mut c = p.client().await.expect("client");
        let mut ws = c
            .watch(
                format!("/t/{s}/0/"),
                Some(WatchOptions::new().with_prefix()),
            )
            .await
            .expect("watch");
        for w in 1..PER_STREAM {
            ws.watch(
                format!("/t/{s}/{w}/"),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_watch_id(w.try_into().unwrap()),
                ),
            )
            .await
            .expect("another watch on the stream");
        }
        // Each stream has answered every create.
        let mut created = 0;
        while created < PER_STREAM {
            let r = tokio::time::timeout(Duration::from_secs(10), ws.message())
                .await
                .expect("watch created in time")
                .expect("watch response")
                .expect("stream open");
            created += usize::from(r.created());
        }
        streams.push((c, ws));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut c = p.client().await.expect("client");
        let (stop, acked) = (stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("/t/{}/{}/{w}-{n}", n % STREAMS, n % PER_STREAM);
                match c.put(key.clone(), "v", None).await {
                    Ok(r) => acked
                        .lock()
                        .await
                        .push((key, r.header().map(|h| h.revision()).unwrap_or_default())),
                    Err(_) => return,
                }
                n += 1;
            }
        }));
    }
    while acked.lock().await.len() < 500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = tokio::task::block_in_place(|| p.terminate(Duration::from_secs(2)));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let took = took.unwrap_or_else(|| {
        panic!(
            "etcdsql still running 2 s after SIGTERM with {} watches open:\n{}",
            STREAMS * PER_STREAM,
            p.log()
        )
    });
    // Every stream ended (with an error or an end), none hangs.
    for (_, ws) in &mut streams {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.message()).await {
                Err(_) => panic!("a watch stream is still open after the server exited"),
                Ok(Ok(Some(_))) => continue,
                Ok(_) => break,
            }
        }
    }
    let acked = acked.lock().await.clone();
    let p2 = Process::etcdsql(bin(), &db.dsn).await.expect("restarted");
    let mut c = p2.client().await.expect("client");
    for (key, rev) in &acked {
        let r = c.get(key.as_str(), None).await.expect("get");
        assert_eq!(
            r.kvs().first().map(|kv| kv.mod_revision()),
            Some(*rev),
            "acknowledged {key} at {rev} is there after the restart"
        );
    }
    eprintln!(
        "SIGTERM on {} with {} watches open and {WRITERS} writers: exited in {} ms; {} acknowledged \
         writes, all present after the restart",
        target.name(),
        STREAMS * PER_STREAM,
        took.as_millis(),
        acked.len()
    );
}

async fn garbage_on_the_grpc_port(target: Target) {
    let db = TestDb::create(target).await.unwrap();
    let p = Process::etcdsql(bin(), &db.dsn).await.unwrap();
    let noise: Vec<u8> = (0..16_384u32)
        .map(|i| u8::try_from(i.wrapping_mul(2_654_435_761) >> 24).unwrap_or(0))
        .collect();
    let payloads: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &noise,
        // HTTP/2 preface, then a frame header announcing 16 MiB of nothing
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\x00\x00\x00\x00\x00\x01",
        b"",
    ];
    for bytes in payloads {
        let mut s = tokio::net::TcpStream::connect(p.endpoint.as_str())
            .await
            .unwrap();
        let _ = s.write_all(bytes).await;
        let _ = s.shutdown().await;
    }
    let mut c = p.client().await.unwrap();
    c.put("still", "serving", None)
        .await
        .expect("put after garbage");
    let r = c.get("still", None).await.unwrap();
    assert_eq!(r.kvs()[0].value_str().unwrap(), "serving");
    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(all.count(), 1, "garbage wrote nothing");
}

/// The connection breaks after COMMIT was sent, and the transaction did
/// commit: PostgreSQL waiting for a synchronous standby that does not exist
/// has committed locally; terminating that backend drops the connection.
/// etcdsql must find out that the batch committed and answer success, not
/// "may or may not have been applied", and not write it twice.
async fn connection_lost_during_commit(target: Target) {
    let (_container, admin, _db, p) = own_server(target).await;
    let mut c = p.client().await.unwrap();
    let before = c.put("/commit/a", "1", None).await.unwrap();
    let rev = before.header().unwrap().revision();
    // One statement per call: ALTER SYSTEM refuses a transaction block.
    let sql = |text: String| {
        let admin = admin.clone();
        async move {
            etcdsql_integration::admin_sql(target, &admin, &text)
                .await
                .unwrap()
        }
    };
    sql("ALTER SYSTEM SET synchronous_standby_names = 'nobody'".into()).await;
    sql("SELECT pg_reload_conf()".into()).await;
    // The backend learns the new setting when the postmaster passes the
    // reload on; a batch may commit before that, without waiting. Then the
    // next put tries again.
    let mut last = rev;
    let mut version = 1;
    let put = loop {
        version += 1;
        assert!(
            version <= 6,
            "no COMMIT waited for the standby\n{}",
            p.log()
        );
        let mut w = p.client().await.unwrap();
        let value = version.to_string();
        let put = tokio::spawn(async move { w.put("/commit/a", value, None).await });
        // The writer's COMMIT waits for the standby: terminate it there.
        let deadline = Instant::now() + Duration::from_secs(20);
        let waited = loop {
            let waiting = TestDb::admin_lines(
                target,
                &admin,
                "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
            )
            .await
            .unwrap();
            if let Some(pid) = waiting.first() {
                sql(format!("SELECT pg_terminate_backend({pid})")).await;
                sql("ALTER SYSTEM RESET synchronous_standby_names".into()).await;
                sql("SELECT pg_reload_conf()".into()).await;
                break true;
            }
            if put.is_finished() {
                break false;
            }
            assert!(
                Instant::now() < deadline,
                "no COMMIT waiting for the standby\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if waited {
            break put;
        }
        let done = put.await.unwrap().expect("a put that did not wait");
        last = done.header().unwrap().revision();
    };
    let put = tokio::time::timeout(Duration::from_secs(30), put)
        .await
        .expect("the put answered")
        .unwrap()
        .unwrap_or_else(|e| panic!("the committed put failed: {e}\n{}", p.log()));
    assert_eq!(put.header().unwrap().revision(), last + 1);
    let got = c.get("/commit/a", None).await.unwrap();
    assert_eq!(got.kvs()[0].value_str().unwrap(), version.to_string());
    assert_eq!(got.kvs()[0].mod_revision(), last + 1);
    assert_eq!(got.kvs()[0].version(), version, "written once");
    let next = c.put("/commit/a", "next", None).await.unwrap();
    assert_eq!(next.header().unwrap().revision(), last + 2);
    assert!(
        p.log().contains("the batch had committed"),
        "the outcome was checked\n{}",
        p.log()
    );
}

/// A MariaDB without binary log whose redo log writes the case can hold
/// back (integration/faults/slow_log.c, preloaded): a put through process
/// a commits, visible and not yet durable; process b reads and watches the
/// key meanwhile; the database and a are killed (-9) and the database
/// restarts without that commit; b writes again, taking its revision.
/// Whatever b answered before the crash, read or event, must be what the
/// store holds at that revision afterwards.
async fn visible_before_durable(target: Target) {
    const KEY: &str = "/crash/k";
    let dir = std::env::temp_dir().join(format!("etcdsql-slow-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let so = dir.join("slow_log.so");
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../integration/faults/slow_log.c"
    );
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .args([src, "-ldl"])
        .status()
        .expect("cc");
    assert!(built.success(), "building {src}");
    let d = dir.clone();
    let (url, container) = tokio::task::spawn_blocking(move || servers::mariadb_slow_log(&d))
        .await
        .unwrap()
        .expect("MariaDB with the slow log");
    let db = TestDb::create_on(target, &[url]).await.expect("database");
    let mut a = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql a");
    let b = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql b");
    let mut ca = a.client().await.unwrap();
    let mut cb = b.client().await.unwrap();
    let r0 = crate::put(&mut ca, KEY, "v0").await;
    let seen: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
    let mut stream = cb
        .watch(KEY, Some(WatchOptions::new().with_start_revision(r0 + 1)))
        .await
        .unwrap();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created());
    let s2 = seen.clone();
    let watching = tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    for e in m.events() {
                        s2.lock().await.push(rev_value(e.kv().unwrap()));
                    }
                }
                end => panic!("b's watch stream ended: {end:?}"),
            }
        }
    });
    let meta = "SELECT revision FROM etcdsql_meta WHERE id = 1";

    std::fs::write(dir.join("on"), b"").unwrap();
    let mut ca2 = ca.clone();
    let put = tokio::spawn(async move { ca2.put(KEY, "v1", None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shown = db.count(meta).await.unwrap();
    assert_eq!(
        shown,
        r0 + 1,
        "the database did not show the put before its redo log was written"
    );
    let read = tokio::time::timeout(Duration::from_secs(1), cb.get(KEY, None)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.kill();
    std::fs::remove_file(dir.join("on")).unwrap();
    container.restart_now().expect("restarting the database");
    put.abort();

    // Back up, without the commit.
    let after = count_when_back(&db, meta, Duration::from_secs(120)).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    assert_eq!(
        after, r0,
        "the database kept the put: the crash took back nothing, so the case shows nothing"
    );
    let r2 = loop {
        match cb.put(KEY, "v2", None).await {
            Ok(r) => break r.header().unwrap().revision(),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("b cannot write after the restart: {e}"),
        }
    };
    assert_eq!(r2, r0 + 1, "the next write takes the revision back");

    // The state at a revision, as the store holds it now.
    let at = |rev: i64| {
        let mut c = cb.clone();
        async move {
            let r = c
                .get(KEY, Some(GetOptions::new().with_revision(rev)))
                .await
                .unwrap();
            r.kvs().first().map(rev_value)
        }
    };
    let mut problems = Vec::new();
    let answered = match read {
        Ok(Ok(r)) => {
            let h = r.header().unwrap().revision();
            let got = r.kvs().first().map(rev_value);
            let held = at(h).await;
            if got != held {
                problems.push(format!(
                    "b answered {got:?} at revision {h} before the crash; the store holds {held:?} there"
                ));
            }
            format!("{got:?} at {h}")
        }
        Ok(Err(e)) => format!("error {e}"),
        Err(_) => "nothing within 1 s".to_string(),
    };
    let wait = Instant::now() + Duration::from_secs(10);
    while !seen.lock().await.iter().any(|(r, _)| *r >= r2) && Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = seen.lock().await.clone();
    assert!(!watching.is_finished(), "b's watch stream ended");
    watching.abort();
    if !events.iter().any(|(r, _)| *r == r2) {
        problems.push(format!("b's watcher never got the put at {r2}"));
    }
    for (rev, value) in &events {
        let held = at(*rev).await;
        if held.as_ref() != Some(&(*rev, value.clone())) {
            problems.push(format!(
                "b's watcher got {value:?} at revision {rev}; the store holds {held:?} there"
            ));
        }
    }
    eprintln!(
        "visible before durable on {}: the database showed revision {shown} and lost it; \
         b's read meanwhile: {answered}; b's watcher: {events:?}",
        target.name()
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A renewal commits without waiting for its WAL flush, so a crash of
/// PostgreSQL can lose it while etcdsql runs on. Process a grants a lease,
/// puts a key on it and renews it; the WAL writer is slowed (10 s) so that
/// the renewal is still in PostgreSQL's buffers when the server is killed
/// (-9) and restarted, and a with it. Process b was paused all along: it
/// saw no failed look and reads the lease as expired at its grant's TTL.
/// As with etcd's new leader, the lease must get its TTL again, not expire
/// before the renewal's TTL has passed; then, unrenewed, it expires.
async fn renewal_lost_with_the_database(target: Target) {
    const TTL: i64 = 20;
    let (server, container) = tokio::task::spawn_blocking(move || servers::dedicated(target))
        .await
        .expect("container task")
        .expect("a database container of its own");
    let admin = server.urls[0].clone();
    for sql in [
        "ALTER SYSTEM SET wal_writer_delay = '10s'",
        "SELECT pg_reload_conf()",
    ] {
        admin_sql(target, &admin, sql).await.expect(sql);
    }
    let db = TestDb::create_on(target, &server.urls)
        .await
        .expect("database");
    let expiry = "SELECT expires_at_ms FROM etcdsql_lease";
    let b = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql b");
    let mut cb = b.client().await.unwrap();
    let mut attempt = 0;
    let (lease, renewed_at, promised) = loop {
        attempt += 1;
        let mut a = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql a");
        let mut ca = a.client().await.unwrap();
        let lease = ca.lease_grant(TTL, None).await.unwrap().id();
        ca.put("/lost/k", "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
        let granted = db.count(expiry).await.unwrap();
        tokio::time::sleep(Duration::from_secs(12)).await;
        let mut renewals = Renewals::start(&mut ca, lease).await;
        assert_eq!(renewals.ttl().await, TTL);
        let renewed_at = Instant::now();
        let promised = renewed_at + Duration::from_secs(TTL as u64);
        let renewed = db.count(expiry).await.unwrap();
        assert!(renewed > granted, "the renewal is visible");
        b.pause(true);
        a.kill();
        container.restart_now().expect("restarting the database");
        let after = count_when_back(&db, expiry, Duration::from_secs(60)).await;
        b.pause(false);
        if after == granted {
            break (lease, renewed_at, promised);
        }
        // Flushed before the kill (another backend's flush took it along).
        assert_eq!(after, renewed);
        assert!(
            attempt < 3,
            "the renewal outlived the crash {attempt} times"
        );
        cb.lease_revoke(lease).await.unwrap();
    };
    // Past the expiry the database holds (the grant's, 8 s after the
    // renewal), and b's looks meanwhile.
    let past =
        (renewed_at + Duration::from_millis(9500)).max(Instant::now() + Duration::from_secs(3));
    tokio::time::sleep_until(past.into()).await;
    assert!(
        Instant::now() + Duration::from_millis(500) < promised,
        "the restart took too long for the case to show anything"
    );
    let ttl = cb.lease_time_to_live(lease, None).await.unwrap().ttl();
    let kept = cb.get("/lost/k", None).await.unwrap().kvs().len();
    assert!(
        ttl > 0 && kept == 1,
        "within the renewal's TTL, after the database lost the renewal: TTL {ttl}, {kept} key(s); b's log:\n{}",
        b.log()
    );
    // Unrenewed, it expires a TTL (and a second) after b promoted it.
    wait_gone(&mut cb, "/lost/k", Duration::from_secs(TTL as u64 + 15)).await;
    assert_eq!(cb.lease_time_to_live(lease, None).await.unwrap().ttl(), -1);
    eprintln!(
        "renewal lost with the database: attempt {attempt}; the lease kept its key through the \
         renewal's TTL, then expired"
    );
}

/// What a crash of PostgreSQL leaves, made by hand: the run's token gone
/// (crash recovery empties its unlogged table) and a renewal lost (the
/// lease's expiry back in the past). No connection breaks, so no look for
/// expired leases fails: only the token tells. Leases are promoted before
/// any expires. First, with the token there, a lease whose expiry is put
/// back expires at the next look.
async fn run_token_gone(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
    let mut c = p.client().await.unwrap();
    let runs = "SELECT COUNT(*) FROM etcdsql_run";
    assert_eq!(
        db.count(runs).await.unwrap(),
        1,
        "a run is recorded at start"
    );

    lapsed_lease(&mut c, &db, "/run/first", 60).await;
    wait_gone(&mut c, "/run/first", Duration::from_secs(3)).await;

    const TTL: i64 = 4;
    let lease = lapsed_lease(&mut c, &db, "/run/k", TTL).await;
    db.execute("DELETE FROM etcdsql_run").await.unwrap();
    let promoted = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !gone(&mut c, "/run/k").await,
        "the lease expired though the run's token was gone; log:\n{}",
        p.log()
    );
    let ttl = c.lease_time_to_live(lease, None).await.unwrap().ttl();
    assert!(ttl > 0, "TTL {ttl} after the promotion");
    assert_eq!(db.count(runs).await.unwrap(), 1, "a run is recorded again");
    // Then, unrenewed, it expires a TTL (and a second) after the promotion.
    wait_gone(&mut c, "/run/k", Duration::from_secs(TTL as u64 + 4)).await;
    assert!(promoted.elapsed() >= Duration::from_secs(TTL as u64));
}

/// A lease of `ttl` with `key` on it, its expiry then put two minutes
/// back in the database (as a lost renewal leaves it).
async fn lapsed_lease(c: &mut etcd_client::Client, db: &TestDb, key: &str, ttl: i64) -> i64 {
    let lease = c.lease_grant(ttl, None).await.unwrap().id();
    c.put(key, "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    db.execute(&format!(
        "UPDATE etcdsql_lease SET expires_at_ms = expires_at_ms - 120000 WHERE id = {lease}"
    ))
    .await
    .unwrap();
    lease
}

async fn gone(c: &mut etcd_client::Client, key: &str) -> bool {
    c.get(key, None).await.unwrap().kvs().is_empty()
}

/// `sql`'s count once the database answers again, after a restart.
async fn count_when_back(db: &TestDb, sql: &'static str, within: Duration) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        match db.count(sql).await {
            Ok(n) => return n,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the database did not come back: {e:#}"),
        }
    }
}

/// A key's mod revision and value, as text.
fn rev_value(kv: &KeyValue) -> (i64, String) {
    (
        kv.mod_revision(),
        String::from_utf8_lossy(kv.value()).into_owned(),
    )
}

/// Without a binary log, MariaDB shows a commit to other sessions before
/// it is flushed, and a crash takes it back (the next write reuses its
/// revision). A process that did not write a revision it read commits to
/// `etcdsql_sync` before it answers; the writer itself needs nothing.
/// Galera (replicated before shown), TiDB and MariaDB with a binary log
/// need no such commit.
async fn durable_before_read(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let needs = target == Target::Mariadb && db.count("SELECT @@log_bin").await.unwrap() == 0;
    let dsn_b = db.dsns.get(1).unwrap_or(&db.dsn).clone();
    let (pa, pb) = (
        etcdsql_integration::free_port(),
        etcdsql_integration::free_port(),
    );
    let metrics = |port: u16| format!("http://127.0.0.1:{port}");
    let a = Process::etcdsql_with(bin(), &db.dsn, &["--listen-metrics-urls", &metrics(pa)])
        .await
        .expect("etcdsql a");
    let b = Process::etcdsql_with(bin(), &dsn_b, &["--listen-metrics-urls", &metrics(pb)])
        .await
        .expect("etcdsql b");
    let (mut ca, mut cb) = (a.client().await.unwrap(), b.client().await.unwrap());
    let syncs = |port: u16| async move {
        let text = etcdsql_integration::scrape_metrics(port).await;
        text.lines()
            .find_map(|l| l.strip_prefix("etcdsql_durable_waits_total{how=\"sync\"} "))
            .map_or(0.0, |n| n.parse::<f64>().unwrap())
    };
    let n0 = db
        .count("SELECT n FROM etcdsql_sync WHERE id = 1")
        .await
        .unwrap();
    let (b0, a0) = (syncs(pb).await, syncs(pa).await);
    const WRITES: i32 = 10;
    for i in 0..WRITES {
        let put = ca.put("/durable/k", format!("v{i}"), None).await.unwrap();
        let got = cb.get("/durable/k", None).await.unwrap();
        let rev = put.header().unwrap().revision();
        assert!(got.header().unwrap().revision() >= rev);
        assert_eq!(got.kvs()[0].value(), format!("v{i}").as_bytes());
    }
    let (b1, a1) = (syncs(pb).await, syncs(pa).await);
    let n1 = db
        .count("SELECT n FROM etcdsql_sync WHERE id = 1")
        .await
        .unwrap();
    eprintln!(
        "durable before read on {} (binary log {}): {WRITES} puts through a, each read \
         through b: b committed {} syncs, a {}; etcdsql_sync.n {n0} -> {n1}",
        target.name(),
        if needs { "off" } else { "on, or not needed" },
        b1 - b0,
        a1 - a0
    );
    if needs {
        // Each put is a revision b had not seen durable: at least one sync.
        assert!(b1 - b0 >= f64::from(WRITES), "b synced {} times", b1 - b0);
        assert!(n1 - n0 >= i64::from(WRITES), "etcdsql_sync.n {n0} -> {n1}");
        assert_eq!(a1 - a0, 0.0, "the writer synced for its own writes");
    } else {
        assert_eq!(
            (b1 - b0, a1 - a0, n1 - n0),
            (0.0, 0.0, 0),
            "no sync needed here"
        );
    }
}

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "connection_lost_during_commit",
            &[Target::Postgres],
            connection_lost_during_commit
        ),
        case!("kill_during_writes", &Target::ETCDSQL, kill_during_writes),
        case!(
            "database_restart",
            &[Target::Postgres, Target::Mariadb],
            database_restart
        ),
        case!(
            "sigterm_with_watches",
            &[Target::Sqlite, Target::Postgres, Target::Mariadb],
            sigterm_with_watches
        ),
        case!(
            "renewal_lost_with_the_database",
            &[Target::Postgres],
            renewal_lost_with_the_database
        ),
        case!("run_token_gone", &[Target::Postgres], run_token_gone),
        case!(
            "visible_before_durable",
            &[Target::Mariadb],
            visible_before_durable
        ),
        case!(
            "durable_before_read",
            &[Target::Mariadb, Target::Galera, Target::Tidb],
            durable_before_read
        ),
        case!(
            "garbage_on_the_grpc_port",
            &[Target::Sqlite],
            garbage_on_the_grpc_port
        ),
    ]
}
