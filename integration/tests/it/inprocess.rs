//! In process: the store, committer, watch hub and task owner driven
//! through `server::App` on each database (no listener, no client), for
//! what the other cases can only see through the binary.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use etcdsql::error::Error;
use etcdsql::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, compare,
    request_op,
};
use etcdsql::server::{App, Config};
use etcdsql::watch::{BufferLimits, Hub, Slice};
use etcdsql_integration::{Target, TestDb};

use crate::{Case, case};

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    config: Config,
}

/// A server on `dsn`, migrating its schema if needed.
async fn open(dsn: &str) -> App {
    let flags = Flags::parse_from(["etcdsql", "--endpoint", dsn, "--auto-migrate"]);
    App::open(&flags.config).await.expect("server")
}

/// Two servers on one database (on two nodes of a Galera cluster).
async fn two(db: &TestDb) -> (App, App) {
    (
        open(&db.dsns[0]).await,
        open(&db.dsns[1 % db.dsns.len()]).await,
    )
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

async fn get(app: &App, key: &str) -> Option<(Vec<u8>, i64)> {
    let r = app
        .store
        .range(&RangeRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    r.kvs.first().map(|kv| (kv.value.clone(), kv.mod_revision))
}

/// Increments a counter key with compare-and-swap until it succeeds.
async fn increment(app: &App, key: &str) -> i64 {
    loop {
        let (value, rev) = get(app, key).await.unwrap_or_default();
        let n: i64 = std::str::from_utf8(&value)
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        let t = TxnRequest {
            compare: vec![Compare {
                key: key.into(),
                target: compare::CompareTarget::Mod as i32,
                result: compare::CompareResult::Equal as i32,
                target_union: Some(compare::TargetUnion::ModRevision(rev)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(put(
                    key,
                    &(n + 1).to_string(),
                ))),
            }],
            failure: vec![],
        };
        if app.store.txn(t).await.unwrap().succeeded {
            return n + 1;
        }
    }
}

/// Concurrent requests each get their own answer, in revision order, and
/// every acknowledged write is there.
async fn concurrent_writes(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let app = open(&db.dsn).await;
    let start = app.store.meta().await.unwrap().revision;
    let store = app.store.clone();
    let writes = (0..300).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let r = store
                .put(put(&format!("/k/{i}"), &format!("v{i}")))
                .await
                .unwrap();
            (i, r.header.unwrap().revision)
        })
    });
    let mut revisions: Vec<i64> = Vec::new();
    for w in futures::future::join_all(writes).await {
        let (i, rev) = w.unwrap();
        assert_eq!(
            get(&app, &format!("/k/{i}")).await,
            Some((format!("v{i}").into_bytes(), rev))
        );
        revisions.push(rev);
    }
    revisions.sort_unstable();
    let expected: Vec<i64> = (start + 1..=start + 300).collect();
    assert_eq!(
        revisions, expected,
        "one revision per put, none skipped or shared"
    );
    app.stop().await;
}

/// Two servers on one database: their committers conflict on the revision
/// row and retry; no increment is lost and no revision is given twice.
async fn two_committers(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let (a, b) = two(&db).await;
    let start = a.store.meta().await.unwrap().revision;
    let mut tasks = Vec::new();
    for app in [a.store.clone(), b.store.clone()] {
        for _ in 0..4 {
            let store = app.clone();
            tasks.push(tokio::spawn(async move {
                let mut revs = Vec::new();
                for i in 0..25 {
                    let r = store
                        .put(put(&format!("/own/{}", revs.len()), &i.to_string()))
                        .await
                        .unwrap();
                    revs.push(r.header.unwrap().revision);
                }
                revs
            }));
        }
    }
    let mut all: Vec<i64> = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "a revision was given to two writes");
    assert_eq!(a.store.meta().await.unwrap().revision, start + 200);
    assert_eq!(b.store.meta().await.unwrap().revision, start + 200);
    a.stop().await;
    b.stop().await;
}

/// Compare-and-swap increments through two servers lose nothing.
async fn compare_and_swap_on_two(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let (a, b) = two(&db).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut tasks = Vec::new();
    for app in [a.clone(), b.clone()] {
        for _ in 0..3 {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..20 {
                    increment(&app, "/counter").await;
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(get(&a, "/counter").await.unwrap().0, b"120");
    assert_eq!(get(&b, "/counter").await.unwrap().0, b"120");
    for app in [a, b] {
        Arc::into_inner(app).expect("no other owner").stop().await;
    }
}

/// A hub finds commits of another process in the database, and a hub whose
/// buffer no longer holds a revision says so instead of skipping it.
async fn hub_catch_up_and_eviction(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let (writer, reader) = two(&db).await;
    // A second hub on the reader's database with room for 10 events.
    let small = Hub::start(
        &reader.tasks,
        reader.store.backend().clone(),
        None,
        Arc::new(tokio::sync::Notify::new()),
        BufferLimits {
            events: 10,
            bytes: 1 << 20,
        },
        Arc::new(Default::default()),
    )
    .await
    .unwrap();
    let from = writer.store.meta().await.unwrap().revision + 1;
    let mut last = 0;
    for i in 0..30 {
        last = writer
            .store
            .put(put(&format!("/hub/{i}"), "x"))
            .await
            .unwrap()
            .header
            .unwrap()
            .revision;
    }
    // No commit of its own wakes the reader: it polls, or is notified.
    for hub in [&reader.hub, &small] {
        let mut seen = hub.subscribe();
        tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|r| *r >= last))
            .await
            .expect("the hub did not reach the other process's revision")
            .unwrap();
    }
    let Slice::Events(events) = reader.hub.slice(from, last, usize::MAX) else {
        panic!("the default buffer holds 30 events");
    };
    let keys: Vec<String> = events
        .iter()
        .map(|e| String::from_utf8(e.kv.key.clone()).unwrap())
        .collect();
    assert_eq!(
        keys,
        (0..30).map(|i| format!("/hub/{i}")).collect::<Vec<_>>()
    );
    assert!(matches!(
        small.slice(from, last, usize::MAX),
        Slice::Evicted
    ));
    let Slice::Events(tail) = small.slice(last - 9, last, usize::MAX) else {
        panic!("the last 10 revisions are held");
    };
    assert_eq!(tail.len(), 10);
    // What the buffer lost is read from the database, in order.
    let read = small
        .read(
            from - 1,
            last,
            b"/hub/",
            &etcdsql::backend::KeyEnd::Before(b"/hub0".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(read.len(), 30);
    assert!(read.windows(2).all(|w| w[0].revision < w[1].revision));
    writer.stop().await;
    reader.stop().await;
}

/// Stop ends every background task; a write after it is refused, not
/// hung, and every write acknowledged before it is there after a restart.
async fn stop(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let app = open(&db.dsn).await;
    let tasks = app.tasks.clone();
    let store = app.store.clone();
    // A lease makes the expirer busy too.
    let (lease, _) = store.lease_grant(0, 60).await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                match store.put(put(&format!("/s/{i}"), "v")).await {
                    Ok(_) => acked.push(i),
                    Err(e) => return (acked, e),
                }
            }
            unreachable!()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tasks.running() >= 3, "committer, hub and lease expirer run");
    tokio::time::timeout(Duration::from_secs(4), app.stop())
        .await
        .expect("stop waited for its abort deadline: a task ignored the stop");
    assert_eq!(tasks.running(), 0);
    let (acked, error) = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("a write hung after stop")
        .unwrap();
    assert!(matches!(error, Error::Stopping), "{error:?}");
    assert!(!acked.is_empty());
    drop(store);
    let again = open(&db.dsn).await;
    for i in acked {
        assert!(
            get(&again, &format!("/s/{i}")).await.is_some(),
            "acknowledged /s/{i} lost"
        );
    }
    assert!(again.store.lease(lease).await.unwrap().is_some());
    again.stop().await;
}

/// The lease expirer runs under the task owner: an expired lease's keys go.
async fn lease_expiry(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let app = open(&db.dsn).await;
    let (lease, _) = app.store.lease_grant(0, 1).await.unwrap();
    let mut p = put("/leased", "v");
    p.lease = lease;
    app.store.put(p).await.unwrap();
    assert!(get(&app, "/leased").await.is_some());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get(&app, "/leased").await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leased key outlived its lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app.store.lease(lease).await.unwrap().is_none());
    app.stop().await;
}

/// A write's events are in the hub, with their previous versions, before
/// the write is answered (watchers see them no later than the writer).
async fn events_before_answers(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let app = open(&db.dsn).await;
    for i in 0..50 {
        let key = format!("/e/{}", i % 7);
        let (rev, deleted) = if i % 5 == 4 {
            let r = app
                .store
                .delete_range(DeleteRangeRequest {
                    key: key.clone().into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            if r.deleted == 0 {
                continue;
            }
            (r.header.unwrap().revision, true)
        } else {
            let r = app.store.put(put(&key, &format!("v{i}"))).await.unwrap();
            (r.header.unwrap().revision, false)
        };
        assert!(
            app.hub.revision() >= rev,
            "answered before the hub had revision {rev}"
        );
        let Slice::Events(events) = app.hub.slice(rev, rev, usize::MAX) else {
            panic!("revision {rev} not buffered");
        };
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(
            (e.revision, e.deleted, &e.kv.key[..]),
            (rev, deleted, key.as_bytes())
        );
        if !deleted {
            assert_eq!(e.kv.value, format!("v{i}").into_bytes());
        }
        // The previous version is the one the database holds at rev - 1.
        let before = app
            .store
            .range(&RangeRequest {
                key: key.clone().into(),
                revision: rev - 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            e.prev.as_ref(),
            before.kvs.first(),
            "prev of {key} at {rev}"
        );
        // Exactly what a watcher reading history would get.
        let read = app
            .hub
            .read(
                rev - 1,
                rev,
                key.as_bytes(),
                &etcdsql::backend::KeyEnd::Single,
            )
            .await
            .unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(
            (
                read[0].revision,
                read[0].deleted,
                &read[0].kv,
                &read[0].prev
            ),
            (e.revision, e.deleted, &e.kv, &e.prev)
        );
    }
    // A range delete reads its victims without values; watchers still get
    // each one's whole previous version.
    let d = app
        .store
        .delete_range(DeleteRangeRequest {
            key: b"/e/".to_vec(),
            range_end: b"/e0".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    let rev = d.header.unwrap().revision;
    let mut seen = app.hub.subscribe();
    tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|r| *r >= rev))
        .await
        .expect("the hub got the range delete")
        .unwrap();
    let Slice::Events(events) = app.hub.slice(rev, rev, usize::MAX) else {
        panic!("revision {rev} not buffered");
    };
    assert_eq!(events.len(), usize::try_from(d.deleted).unwrap());
    assert!(!events.is_empty());
    for e in events {
        let prev = e.prev.as_ref().expect("prev");
        assert!(prev.value.starts_with(b"v"), "{e:?}");
    }
    app.stop().await;
}

pub fn cases() -> Vec<Case> {
    vec![
        case!("concurrent_writes", &Target::ETCDSQL, concurrent_writes),
        case!("two_committers", &Target::ETCDSQL, two_committers),
        case!(
            "compare_and_swap_on_two",
            &Target::ETCDSQL,
            compare_and_swap_on_two
        ),
        case!(
            "hub_catch_up_and_eviction",
            &Target::ETCDSQL,
            hub_catch_up_and_eviction
        ),
        case!("stop", &Target::ETCDSQL, stop),
        case!("lease_expiry", &Target::ETCDSQL, lease_expiry),
        case!(
            "events_before_answers",
            &Target::ETCDSQL,
            events_before_answers
        ),
    ]
}
