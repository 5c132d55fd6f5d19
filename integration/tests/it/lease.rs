//! Leases: keep-alive holds a lease, expiry deletes its keys as delete
//! events in one revision, exactly once even with two processes expiring,
//! and leases survive a restart of etcdsql.

use std::time::Duration;

use etcd_client::{EventType, LeaseGrantOptions, PutOptions, WatchOptions};
use etcdsql_integration::{Process, Started, Target, TestDb};

use crate::{Case, Renewals, bin, case};

async fn expiry_across_processes(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let a = Process::etcdsql(bin(), &db.dsn).await.unwrap();
    let b = Process::etcdsql(bin(), db.other_dsn()).await.unwrap();
    let mut ca = a.client().await.unwrap();
    let mut cb = b.client().await.unwrap();

    // A short lease with three keys, and one kept alive through the other process.
    let short = ca.lease_grant(2, None).await.unwrap().id();
    let kept = ca.lease_grant(2, None).await.unwrap().id();
    for k in ["/l/a", "/l/b", "/l/c"] {
        ca.put(k, "v", Some(PutOptions::new().with_lease(short)))
            .await
            .unwrap();
    }
    ca.put("/l/kept", "v", Some(PutOptions::new().with_lease(kept)))
        .await
        .unwrap();
    let start = ca
        .get("/l/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut ws = cb
        .watch(
            "/l/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(start + 1),
            ),
        )
        .await
        .unwrap();
    assert!(ws.message().await.unwrap().unwrap().created());

    let mut renewals = Renewals::start(&mut cb, kept).await;
    let mut deletes = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = tick.tick() => {
                assert_eq!(renewals.ttl().await, 2, "a kept-alive lease is renewed to its TTL");
            }
            m = ws.message() => {
                for e in m.unwrap().unwrap().events() {
                    assert_eq!(e.event_type(), EventType::Delete);
                    deletes.push((String::from_utf8_lossy(e.kv().unwrap().key()).to_string(), e.kv().unwrap().mod_revision()));
                }
            }
        }
    }
    assert_eq!(
        deletes.len(),
        3,
        "three delete events, once each: {deletes:?}"
    );
    assert!(
        deletes.iter().all(|(_, r)| *r == deletes[0].1),
        "one revision: {deletes:?}"
    );
    assert_eq!(deletes[0].1, start + 1, "expiry took exactly one revision");
    let now = ca
        .get("/l/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(now.kvs().len(), 1, "the kept-alive key stays");
    assert_eq!(now.header().unwrap().revision(), start + 1);
    let ttl = ca.lease_time_to_live(short, None).await.unwrap();
    assert_eq!(ttl.ttl(), -1, "the expired lease is gone");
    eprintln!(
        "leases on {}: expiry once across two processes, keep-alive holds",
        target.name()
    );

    // Leases live in the database: a restarted process still has them.
    drop(a);
    let a2 = Process::etcdsql(bin(), &db.dsn).await.unwrap();
    let mut c2 = a2.client().await.unwrap();
    let ttl = c2
        .lease_time_to_live(
            kept,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 2);
    assert_eq!(ttl.keys(), [b"/l/kept".to_vec()]);
    assert_eq!(lease_ids(&mut c2).await, [kept]);
}

/// Lease grants, renewals and the revoke of a lease without keys take no
/// revision, as in etcd; on PostgreSQL their batches neither rewrite the
/// revision row nor notify the processes listening for commits. A put
/// afterwards does both.
async fn renewals_leave_the_revision_row(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let p = Process::etcdsql(bin(), &db.dsn).await.unwrap();
    let mut c = p.client().await.unwrap();
    let lease = c.lease_grant(60, None).await.unwrap().id();
    let start = c
        .put("/r/held", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    // Counted as a hub's listener: LISTEN is its last statement, and its
    // probe turns notifications on before the count sees it.
    let mut listener = crate::Listener::new(&db, "LISTEN etcdsql_commit").await;
    let (pg, conn) = tokio_postgres::connect(&db.dsn, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    pg.batch_execute("NOTIFY etcdsql_commit, 'probe lease test'")
        .await
        .unwrap();
    let heard = &mut listener.heard;
    assert_eq!(heard.recv().await.unwrap(), "probe lease test");
    let row_version = || async {
        pg.query_one("SELECT xmin::text FROM etcdsql_meta WHERE id = 1", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    let before = row_version().await;

    let mut renewals = Renewals::start(&mut c, lease).await;
    for _ in 0..20 {
        assert_eq!(renewals.ttl().await, 60);
    }
    let other = c.lease_grant(30, None).await.unwrap().id();
    c.lease_revoke(other).await.unwrap();
    let now = c
        .get("/r/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(
        now, start,
        "grants, renewals and an empty revoke take no revision"
    );
    assert_eq!(
        row_version().await,
        before,
        "the revision row was rewritten"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        heard.try_recv().ok(),
        None,
        "a batch without a revision notified"
    );

    c.put("/r/next", "v", None).await.unwrap();
    let payload = tokio::time::timeout(Duration::from_secs(5), heard.recv())
        .await
        .expect("a put's commit notifies")
        .unwrap();
    assert_eq!(payload, (start + 1).to_string());
    assert_ne!(row_version().await, before);
}

/// As etcd's new leader does, a starting process gives every lease its full
/// TTL again before it expires any: a lease that ran out while no process
/// was up is renewable at once, and its keys stay until the TTL passes
/// again without a renewal.
async fn leases_promoted_at_start(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let p = Process::etcdsql(bin(), &db.dsn).await.unwrap();
    let mut c = p.client().await.unwrap();
    let lease = c.lease_grant(2, None).await.unwrap().id();
    c.put("/p/held", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    drop(c);
    drop(p);
    // Past the lease's expiry with no process up.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let p = Process::etcdsql(bin(), &db.dsn).await.unwrap();
    let mut c = p.client().await.unwrap();
    let mut renewals = Renewals::start(&mut c, lease).await;
    assert_eq!(
        renewals.ttl().await,
        2,
        "the lease is renewable after the start"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(renewals.ttl().await, 2, "the lease is still renewable");
    let got = c.get("/p/held", None).await.unwrap();
    assert_eq!(got.kvs().len(), 1, "the lease's key outlived the stop");
    drop(renewals);

    // Without renewals it expires as any lease does.
    crate::wait_gone(&mut c, "/p/held", Duration::from_secs(10)).await;
    assert_eq!(c.lease_time_to_live(lease, None).await.unwrap().ttl(), -1);
}

/// The ids LeaseLeases answers, in its order.
async fn lease_ids(c: &mut etcd_client::Client) -> Vec<i64> {
    let listed = c.leases().await.unwrap();
    listed.leases().iter().map(|l| l.id()).collect()
}

/// LeaseLeases lists the leases soonest expiry first, as etcd does.
async fn leases_listed_by_expiry(target: Target) {
    let s = Started::new(target, bin()).await.expect("start");
    let mut c = s.server.client().await.unwrap();
    for (id, ttl) in [(10, 100), (5, 50), (7, 200)] {
        c.lease_grant(ttl, Some(LeaseGrantOptions::new().with_id(id)))
            .await
            .unwrap();
    }
    assert_eq!(lease_ids(&mut c).await, [5, 10, 7], "on {}", target.name());
}

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "expiry_across_processes",
            &Target::ETCDSQL,
            expiry_across_processes
        ),
        case!(
            "leases_listed_by_expiry",
            &Target::ALL,
            leases_listed_by_expiry
        ),
        case!(
            "leases_promoted_at_start",
            &Target::ETCDSQL,
            leases_promoted_at_start
        ),
        case!(
            "renewals_leave_the_revision_row",
            &[Target::Postgres],
            renewals_leave_the_revision_row
        ),
    ]
}
