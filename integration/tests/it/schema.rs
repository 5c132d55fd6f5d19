//! The schema and partitions subcommands on a real database: migrate a
//! fresh database, migrate again (no-op), status, dry-run, the server's
//! refusal of an unmigrated or newer schema, migrations from several
//! processes at once; `partitions add` while writes continue, losing
//! nothing, and the plans of a LIST and a watch resync touching only the
//! resource's partitions.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use etcdsql::backend::sql::{self, Param, Statement};
use etcdsql::backend::{KeyEnd, RangeQuery};
use etcdsql_integration::{Process, Target, TestDb, free_port};

use crate::{Case, bin, case};

const SERVERS: &[Target] = &[Target::Postgres, Target::Mariadb];

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("etcdsql")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Starts a server with `--auto-migrate=false` and waits for it to exit.
fn refused_start(dsn: &str) -> Output {
    let mut child = Command::new(bin())
        .args([
            "--endpoint",
            dsn,
            "--auto-migrate=false",
            "--listen-client-urls",
        ])
        .arg(format!("http://127.0.0.1:{}", free_port()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdsql");
    for _ in 0..200 {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("etcdsql started on a schema it should refuse");
}

async fn migrations(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let dsn = db.dsn.as_str();

    // A fresh database: status lists both migrations as pending and fails.
    let st = run(&["schema", "status", "--endpoint", dsn]);
    assert!(!st.status.success(), "{}", stdout(&st));
    assert!(
        stdout(&st).contains("pending  0001 init"),
        "{}",
        stdout(&st)
    );
    assert!(
        stdout(&st).contains("pending  0002 layout")
            && stdout(&st).contains("pending  0003 selectors")
            && stdout(&st).contains("pending  0004 alarms")
            && stdout(&st).contains("pending  0005 auth")
            && stdout(&st).contains("pending  0006 rowid tables")
            && stdout(&st).contains("pending  0007 hot updates"),
        "{}",
        stdout(&st)
    );
    let refused = refused_start(dsn);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("the database schema is empty; this etcdsql needs version 10: run `etcdsql schema migrate --endpoint"),
        "{}",
        stderr(&refused)
    );

    // Dry run: the exact SQL, and nothing changes.
    let dry = run(&["schema", "migrate", "--dry-run", "--endpoint", dsn]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let sql = stdout(&dry);
    assert!(sql.starts_with("-- migration 1 (init)"), "{sql}");
    assert!(
        sql.contains("CREATE TABLE IF NOT EXISTS etcdsql_meta ("),
        "{sql}"
    );
    assert!(sql.contains("-- migration 2 (layout)"), "{sql}");
    assert!(sql.contains("PARTITION BY"), "{sql}");
    assert!(sql.contains("-- migration 3 (selectors)"), "{sql}");
    assert!(sql.contains("-- migration 4 (alarms)"), "{sql}");
    assert!(sql.contains("-- migration 5 (auth)"), "{sql}");
    assert!(sql.contains("-- migration 6 (rowid tables)"), "{sql}");
    assert!(sql.contains("-- migration 7 (hot updates)"), "{sql}");
    assert!(sql.contains("-- migration 8 (label hashes)"), "{sql}");
    assert!(sql.contains("-- migration 9 (sync)"), "{sql}");
    assert!(sql.contains("-- migration 10 (run)"), "{sql}");
    assert!(
        !run(&["schema", "status", "--endpoint", dsn])
            .status
            .success()
    );

    // Three processes at once: one applies, the others wait and find it done.
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let dsn = dsn.to_string();
            std::thread::spawn(move || run(&["schema", "migrate", "--endpoint", &dsn]))
        })
        .collect();
    for h in handles {
        let o = h.join().expect("thread");
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(
        db.count("SELECT COUNT(*) FROM _sqlx_migrations")
            .await
            .unwrap(),
        10
    );
    let again = run(&["schema", "migrate", "--endpoint", dsn]);
    assert!(
        stdout(&again).contains("up to date, nothing to run"),
        "{}",
        stdout(&again)
    );
    let st = run(&["schema", "status", "--endpoint", dsn]);
    assert!(st.status.success(), "{}", stderr(&st));
    let text = stdout(&st);
    assert!(
        text.contains("schema version 10 (this etcdsql: 10)") && text.contains("applied  0010 run"),
        "{text}"
    );
    assert!(text.ends_with("up to date\n"), "{text}");

    // Migrated: the server starts without --auto-migrate and serves.
    let p = Process::etcdsql_with(bin(), dsn, &["--auto-migrate=false"])
        .await
        .expect("etcdsql");
    let mut c = p.client().await.unwrap();
    c.put("/registry/pods/ns/a", "1", None).await.unwrap();
    assert_eq!(
        c.get("/registry/pods/ns/a", None).await.unwrap().kvs()[0].value(),
        b"1"
    );
    drop(p);

    // A newer etcdsql migrated it: refused, naming what to do.
    let (zero, one) = if target.is_postgres() {
        ("'\\x00'::bytea", "'\\x01'::bytea")
    } else {
        ("X'00'", "X'01'")
    };
    db.execute(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (11, 'from the future', TRUE, {zero}, 0)"
    ))
    .await
    .unwrap_or_else(|_| panic!("recording version 11"));
    let refused = refused_start(dsn);
    assert!(
        stderr(&refused).contains("is at version 11 (from the future), newer than this etcdsql knows (up to 10); run a newer etcdsql"),
        "{}",
        stderr(&refused)
    );
    let st = run(&["schema", "status", "--endpoint", dsn]);
    assert!(
        !st.status.success() && stdout(&st).contains("UNKNOWN"),
        "{}",
        stdout(&st)
    );
    let m = run(&["schema", "migrate", "--endpoint", dsn]);
    assert!(!m.status.success(), "migrate must refuse a newer schema");
    db.execute("DELETE FROM _sqlx_migrations WHERE version = 11")
        .await
        .unwrap();

    // Unfinished: MySQL records a version before its DDL runs, so another
    // process may be migrating (or a replica replaying it). A server
    // without --auto-migrate waits for it to finish...
    let set_success = |on: bool| {
        format!(
            "UPDATE _sqlx_migrations SET success = {} WHERE version = 2",
            if on { "TRUE" } else { "FALSE" }
        )
    };
    db.execute(&set_success(false)).await.unwrap();
    let start = tokio::spawn({
        let dsn = dsn.to_string();
        async move { Process::etcdsql_with(bin(), &dsn, &["--auto-migrate=false"]).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!start.is_finished(), "started on an unfinished migration");
    db.execute(&set_success(true)).await.unwrap();
    let p = start
        .await
        .unwrap()
        .expect("etcdsql once the migration finished");
    let mut c = p.client().await.unwrap();
    assert_eq!(
        c.get("/registry/pods/ns/a", None).await.unwrap().kvs()[0].value(),
        b"1"
    );
    drop(p);
    // ...and refuses the start when it never does, naming what to do.
    db.execute(&set_success(false)).await.unwrap();
    assert!(
        stderr(&refused_start(dsn)).contains("schema migration 2 (layout) did not finish"),
        "unfinished migration not refused"
    );
    db.execute(&set_success(true)).await.unwrap();

    // Drift: a migration recorded with another text.
    db.execute(&format!(
        "UPDATE _sqlx_migrations SET checksum = {one} WHERE version = 2"
    ))
    .await
    .unwrap();
    let st = run(&["schema", "status", "--endpoint", dsn]);
    assert!(
        !st.status.success()
            && stdout(&st).contains("0002 layout")
            && stdout(&st).contains("CHECKSUM DRIFT"),
        "{}",
        stdout(&st)
    );
    assert!(stderr(&refused_start(dsn)).contains("checksum drift"));
}

/// A statement with its parameters written in, for EXPLAIN.
fn inline(target: Target, s: &Statement) -> String {
    let lit = |p: &Param| match p {
        Param::Int(i) => i.to_string(),
        Param::Text(t) => format!("'{t}'"),
        Param::Null => "NULL".to_string(),
        Param::Bytes(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            if target.is_postgres() {
                format!("'\\x{hex}'::bytea")
            } else {
                format!("X'{hex}'")
            }
        }
    };
    let mut out = s.text.clone();
    if target.is_postgres() {
        for (i, p) in s.params.iter().enumerate().rev() {
            out = out.replace(&format!("${}", i + 1), &lit(p));
        }
    } else {
        for p in &s.params {
            out = out.replacen('?', &lit(p), 1);
        }
    }
    out
}

async fn explain(db: &TestDb, s: &Statement) -> String {
    let prefix = if db.target.is_postgres() {
        "EXPLAIN "
    } else {
        "EXPLAIN PARTITIONS "
    };
    db.lines(&format!("{prefix}{}", inline(db.target, s)))
        .await
        .expect("explain")
        .join("\n")
}

async fn partition_add_under_writes(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
    let mut c = p.client().await.unwrap();
    for i in 0..1500u32 {
        c.put(
            format!("/registry/pods/ns/p{i:05}"),
            format!("v0-{i}"),
            None,
        )
        .await
        .unwrap();
        if i.is_multiple_of(3) {
            c.put(format!("/registry/configmaps/ns/c{i:05}"), "c", None)
                .await
                .unwrap();
        }
    }
    let before = c
        .get("/", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    let pinned = before.header().unwrap().revision();
    let plan = run(&["partitions", "plan", "--endpoint", &db.dsn]);
    assert!(
        stdout(&plan).contains("etcdsql partitions add pods"),
        "{}",
        stdout(&plan)
    );

    // Writers keep creating and updating pods (and configmaps) while the
    // rows move; each remembers the last value it got acknowledged per key.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6 {
        let mut c = p.client().await.unwrap();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = if n.is_multiple_of(2) {
                    format!("/registry/pods/ns/p{:05}", (n * 7 + w) % 2000)
                } else {
                    format!("/registry/configmaps/ns/w{w}-{n}")
                };
                let value = format!("w{w}-{n}");
                let r = c
                    .put(key.clone(), value.clone(), None)
                    .await
                    .expect("write during the move");
                acked.insert(key, (value, r.header().unwrap().revision()));
            }
            acked
        }));
    }
    let dsn = db.dsn.clone();
    let add = tokio::task::spawn_blocking(move || {
        run(&[
            "partitions",
            "add",
            "pods",
            "--batch",
            "100",
            "--endpoint",
            &dsn,
        ])
    })
    .await
    .unwrap();
    assert!(add.status.success(), "{}", stderr(&add));
    assert!(
        stdout(&add).contains("pods: partition pods,"),
        "{}",
        stdout(&add)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for w in writers {
        for (k, v) in w.await.unwrap() {
            match acked.get(&k) {
                Some((_, r)) if *r > v.1 => {}
                _ => {
                    acked.insert(k, v);
                }
            }
        }
    }
    assert!(acked.len() > 50, "writers made progress: {}", acked.len());

    // Nothing lost: every acknowledged write is the key's latest value,
    // the pinned revision reads as before, revisions stayed gapless.
    for (k, (v, rev)) in &acked {
        let r = c.get(k.as_str(), None).await.unwrap();
        let kv = &r.kvs()[0];
        assert_eq!(
            (kv.value_str().unwrap(), kv.mod_revision()),
            (v.as_str(), *rev),
            "{k}"
        );
    }
    let pods = GetOptions::new().with_prefix();
    let now = c.get("/registry/pods/", Some(pods.clone())).await.unwrap();
    let old = c
        .get("/registry/pods/", Some(pods.clone().with_revision(pinned)))
        .await
        .unwrap();
    assert_eq!(old.count(), 1500);
    assert!(
        old.kvs()
            .iter()
            .enumerate()
            .all(|(i, kv)| kv.value_str().unwrap() == format!("v0-{i}"))
    );
    let head = now.header().unwrap().revision();
    assert_eq!(
        db.count("SELECT COUNT(*) FROM etcdsql_history")
            .await
            .unwrap(),
        head - 1
    );
    // Every pod row is in the pods partition, nothing else is.
    let in_pods = "SELECT COUNT(*) FROM etcdsql_live WHERE part = 'pods'";
    assert_eq!(db.count(in_pods).await.unwrap(), now.count());
    let (lo, hi) = if target.is_postgres() {
        (
            "'\\x2f72656769737472792f706f64732f'::bytea",
            "'\\x2f72656769737472792f706f647330'::bytea",
        )
    } else {
        (
            "X'2f72656769737472792f706f64732f'",
            "X'2f72656769737472792f706f647330'",
        )
    };
    let stray = format!(
        "SELECT COUNT(*) FROM etcdsql_live WHERE part = '' AND name >= {lo} AND name < {hi}"
    );
    let strays: i64 = db.lines(&stray).await.unwrap()[0].parse().unwrap();
    assert_eq!(strays, 0, "pods rows left in the default partition");
    let list = run(&["partitions", "list", "--endpoint", &db.dsn]);
    assert!(
        stdout(&list).contains("etcdsql_live_pods") || stdout(&list).contains("p_pods"),
        "{}",
        stdout(&list)
    );
    eprintln!("{}: partitions list\n{}", target.name(), stdout(&list));

    // The plans: a LIST page of pods and a watch resync of pods.
    let parts = vec!["pods".to_string()];
    let mut q = RangeQuery::all(
        b"/registry/pods/".to_vec(),
        KeyEnd::Before(b"/registry/pods0".to_vec()),
        None,
    );
    q.fetch_limit = 501;
    let dialect = etcdsql::backend::open(&etcdsql::backend::Dsn::parse(&db.dsn).unwrap())
        .await
        .unwrap()
        .sql();
    let list_plan = explain(&db, &sql::range(dialect, &q, Some(&parts))).await;
    let resync = sql::history(
        dialect,
        pinned,
        head,
        Some((b"/registry/pods/", &q.end)),
        Some(&parts),
    );
    let resync_plan = explain(&db, &resync).await;
    eprintln!(
        "{}: LIST /registry/pods/ plan\n{list_plan}\n{}: watch resync plan\n{resync_plan}",
        target.name(),
        target.name()
    );
    if target.is_postgres() {
        assert!(list_plan.contains("etcdsql_live_pods"), "{list_plan}");
        assert!(!list_plan.contains("etcdsql_live_default"), "{list_plan}");
        assert!(
            resync_plan.contains("etcdsql_history_e1_pods"),
            "{resync_plan}"
        );
        assert!(!resync_plan.contains("_default"), "{resync_plan}");
    } else {
        assert!(
            list_plan.contains("p_pods") && !list_plan.contains("p_default"),
            "{list_plan}"
        );
    }
}

/// The server partitions by itself: the resources its `--partitions-file`
/// lists (moving rows already there), and with `--auto-partition` a custom
/// resource once its CRD is written (by a create Txn, as kube-apiserver
/// writes it); reads see every object throughout.
async fn server_partitions(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    // Events exist before the server that partitions them starts.
    {
        let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
        let mut c = p.client().await.unwrap();
        for i in 0..300 {
            c.put(format!("/registry/events/ns/e{i:04}"), "e", None)
                .await
                .unwrap();
        }
    }
    let file = std::env::temp_dir().join(format!("etcdsql-partitions-{}.toml", free_port()));
    std::fs::write(&file, "resources = [\"events\"]\n").unwrap();
    let p = Process::etcdsql_with(
        bin(),
        &db.dsn,
        &[
            "--partitions-file",
            file.to_str().unwrap(),
            "--auto-partition",
        ],
    )
    .await
    .expect("etcdsql");
    let mut c = p.client().await.unwrap();
    let crd = "/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com";
    let created = c
        .txn(
            Txn::new()
                .when([Compare::mod_revision(crd, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    crd,
                    "{\"kind\":\"CustomResourceDefinition\"}",
                    None,
                )]),
        )
        .await
        .unwrap();
    assert!(created.succeeded());
    for i in 0..200 {
        c.put(
            format!("/registry/example.com/widgets/ns/w{i:04}"),
            "w",
            None,
        )
        .await
        .unwrap();
        c.put(format!("/registry/events/ns/n{i:04}"), "e", None)
            .await
            .unwrap();
    }
    let ready = "SELECT COUNT(*) FROM etcdsql_partition WHERE state = 1 \
                 AND resource IN ('events', 'example.com/widgets')";
    let mut waited = 0;
    while db.count(ready).await.unwrap() < 2 {
        waited += 1;
        assert!(waited < 300, "partitions not ready after 30 s: {}", p.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::remove_file(&file).unwrap();
    let parts = db
        .lines("SELECT resource, part FROM etcdsql_partition ORDER BY resource")
        .await
        .unwrap();
    assert_eq!(
        parts,
        [
            "events | events",
            "example.com/widgets | example_com_widgets"
        ]
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM etcdsql_live WHERE part = 'events'")
            .await
            .unwrap(),
        500
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM etcdsql_live WHERE part = 'example_com_widgets'")
            .await
            .unwrap(),
        200
    );
    let all = GetOptions::new().with_prefix().with_count_only();
    for (prefix, n) in [
        ("/registry/events/", 500),
        ("/registry/example.com/widgets/", 200),
    ] {
        let r = c.get(prefix, Some(all.clone())).await.unwrap();
        assert_eq!(r.count(), n, "{prefix}");
    }
}

/// The committer's statements on PostgreSQL are planned once per
/// connection, so each plan must find rows by an index whatever the table
/// held when it was made. On a small, analysed table, plans made as the
/// writer makes them (its transaction started by `LOCK_META_INDEXED`) scan
/// indexes; a generic plan made without it scans the table, the plan that
/// would stay cached while the table grows.
async fn writer_plans_index_scans(target: Target) {
    use etcdsql::backend::postgres::{DELETE_LIVE, GET, LEASES, LOCK_META_INDEXED, check_assumed};
    use etcdsql::backend::{AssumedLeases, Meta};
    let db = TestDb::create(target).await.expect("database");
    let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
    let mut kv = p.client().await.unwrap();
    for i in 0..40 {
        kv.put(format!("k{i:02}"), "v", None).await.unwrap();
    }
    drop(p);
    db.execute("ANALYZE").await.unwrap();
    let (c, conn) = tokio_postgres::connect(&db.dsn, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c.batch_execute("SET plan_cache_mode = force_custom_plan")
        .await
        .unwrap();
    // The assumption check with every term it may have: absent names,
    // leases with their TTLs, leases not expired.
    let leases = AssumedLeases {
        ttls: vec![(1, 60)],
        unexpired: vec![2],
        now_ms: 0,
    };
    let meta = Meta {
        revision: 0,
        compact_revision: 0,
    };
    let (check, bound) = check_assumed(meta, 0, 0, &[b"k".to_vec()], &leases, false);
    assert_eq!(bound.len(), 10, "{check}");
    let statements = [
        ("lookup by names", GET, "ARRAY['\\x01'::bytea]"),
        ("lease lookup", LEASES, "ARRAY[1::int8]"),
        ("delete by names", DELETE_LIVE, "ARRAY['\\x01'::bytea]"),
        (
            "assumption check",
            check.as_str(),
            "0, 0, 0, 0, ARRAY[1::int8], ARRAY['1 60'], 1, ARRAY[2::int8], 0, ARRAY['\\x01'::bytea]",
        ),
    ];
    let mut round = 0;
    let mut plans = |start: &'static str| {
        round += 1;
        let c = &c;
        async move {
            c.batch_execute("BEGIN").await.unwrap();
            c.simple_query(start).await.expect(start);
            let mut out = Vec::new();
            for (i, (what, text, arg)) in statements.iter().enumerate() {
                let name = format!("s{round}_{i}");
                c.batch_execute(&format!("PREPARE {name} AS {text}"))
                    .await
                    .expect(text);
                let plan: Vec<String> = c
                    .simple_query(&format!("EXPLAIN EXECUTE {name}({arg})"))
                    .await
                    .expect("explain")
                    .into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                        _ => None,
                    })
                    .collect();
                out.push((*what, plan.join("\n")));
            }
            c.batch_execute("ROLLBACK").await.unwrap();
            out
        }
    };
    for (what, plan) in plans(LOCK_META_INDEXED).await {
        assert!(
            plan.contains("Index") && !plan.contains("Seq Scan"),
            "{what}: {plan}"
        );
    }
    let unguarded = plans("SET LOCAL plan_cache_mode = force_generic_plan").await;
    assert!(unguarded[0].1.contains("Seq Scan"), "{}", unguarded[0].1);
}

pub fn cases() -> Vec<Case> {
    vec![
        case!("server_partitions", SERVERS, server_partitions),
        case!("migrations", SERVERS, migrations),
        case!(
            "writer_plans_index_scans",
            &[Target::Postgres],
            writer_plans_index_scans
        ),
        case!(
            "partition_add_under_writes",
            SERVERS,
            partition_add_under_writes
        ),
    ]
}
