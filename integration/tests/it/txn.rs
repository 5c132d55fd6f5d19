//! Compare-and-swap increments from 32 clients through two etcdsql
//! processes sharing one database (on Galera, through two different
//! nodes, so that certification failures happen and are retried). Every successful CAS writes the next
//! integer, so reading the key at each revision proves the revisions are
//! gapless and in commit order: the value at revision r must be r - 2.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use etcdsql_integration::{Process, Target, TestDb, free_port, metric_sum, scrape_metrics};

use crate::{Case, bin, case};

const CLIENTS: usize = 32;
const ATTEMPTS: usize = 40;
const KEY: &str = "/registry/counters/cas";

async fn increment_until_done(mut c: Client, successes: Arc<AtomicI64>) {
    for _ in 0..ATTEMPTS {
        let r = c.get(KEY, None).await.expect("get");
        let kv = &r.kvs()[0];
        let n: i64 = kv.value_str().expect("utf8").parse().expect("integer");
        let t = Txn::new()
            .when([Compare::mod_revision(
                KEY,
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([TxnOp::put(KEY, (n + 1).to_string(), None)])
            .or_else([TxnOp::get(KEY, None)]);
        if c.txn(t).await.expect("txn").succeeded() {
            successes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn cas_through_two_processes(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let ports = [free_port(), free_port()];
    let metrics = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let a = Process::etcdsql_with(bin(), &db.dsn, &["--listen-metrics-urls", &metrics(0)])
        .await
        .expect("first etcdsql");
    let b = Process::etcdsql_with(
        bin(),
        db.other_dsn(),
        &["--listen-metrics-urls", &metrics(1)],
    )
    .await
    .expect("second etcdsql");
    let mut first = a.client().await.expect("client");
    assert_eq!(
        first
            .put(KEY, "0", None)
            .await
            .expect("put")
            .header()
            .map(|h| h.revision()),
        Some(2)
    );

    let successes = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let server = if i % 2 == 0 { &a } else { &b };
        let c = server.client().await.expect("client");
        tasks.push(tokio::spawn(increment_until_done(c, successes.clone())));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let wins = successes.load(Ordering::Relaxed);
    assert!(wins > 0);

    // Read through the other process.
    let mut second = b.client().await.expect("client");
    let r = second.get(KEY, None).await.expect("get");
    let kv = &r.kvs()[0];
    assert_eq!(
        kv.value_str().unwrap(),
        wins.to_string(),
        "final value = successful CASes"
    );
    assert_eq!(kv.version(), wins + 1);
    let last = 2 + wins;
    assert_eq!(kv.mod_revision(), last);
    assert_eq!(
        r.header().unwrap().revision(),
        last,
        "no revision was used by anything else"
    );
    for rev in 2..=last {
        let r = second
            .get(KEY, Some(GetOptions::new().with_revision(rev)))
            .await
            .expect("past get");
        let kv = &r.kvs()[0];
        assert_eq!(kv.mod_revision(), rev, "a gap before revision {rev}");
        assert_eq!(
            kv.value_str().unwrap(),
            (rev - 2).to_string(),
            "revision {rev} out of commit order"
        );
    }
    let mut retries = 0.0;
    for port in ports {
        retries += metric_sum(&scrape_metrics(port).await, "etcdsql_db_retries_total");
    }
    eprintln!(
        "cas on {} ({} node(s)): {wins} of {} attempts succeeded; revisions 2..={last} gapless \
         and commit-ordered; {retries} database retries",
        target.name(),
        db.dsns.len().min(2),
        CLIENTS * ATTEMPTS
    );
}

pub fn cases() -> Vec<Case> {
    vec![case!(
        "cas_two_processes",
        &Target::ETCDSQL,
        cas_through_two_processes
    )]
}
