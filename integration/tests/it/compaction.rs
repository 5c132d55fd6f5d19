//! Compaction: a physical compaction removes every history row that no
//! read at or after the compaction revision can need, reads below it get
//! etcd's error, reads at it still see the state of that revision, and a
//! watch that is caught up keeps streaming across it.

use std::time::Instant;

use etcd_client::{CompactionOptions, GetOptions, WatchOptions};
use etcdsql_integration::{Process, Target, TestDb};

use crate::{Case, bin, case};

const KEYS: usize = 50;
const ROUNDS: usize = 20;
const DELETED: usize = 10;

async fn purges_history(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
    let mut c = p.client().await.unwrap();
    let mut events = c
        .watch("/c/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    for r in 0..ROUNDS {
        for k in 0..KEYS {
            c.put(format!("/c/{k:02}"), r.to_string(), None)
                .await
                .unwrap();
        }
    }
    for k in 0..DELETED {
        c.delete(format!("/c/{k:02}"), None).await.unwrap();
    }
    // Revisions 2..=1011: 1000 puts, then 10 deletes.
    let compact_at = i64::try_from(1 + KEYS * ROUNDS + DELETED).unwrap();
    let history = "SELECT COUNT(*) FROM etcdsql_history";
    assert_eq!(
        db.count(history).await.unwrap(),
        compact_at - 1,
        "one history row per revision"
    );
    let started = Instant::now();
    c.compact(compact_at, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let took = started.elapsed();
    // What a read at the compaction revision needs: the live keys' last puts.
    let live = i64::try_from(KEYS - DELETED).unwrap();
    assert_eq!(
        db.count(history).await.unwrap(),
        live,
        "history after compaction"
    );

    let at = c
        .get(
            "/c/",
            Some(GetOptions::new().with_prefix().with_revision(compact_at)),
        )
        .await
        .unwrap();
    assert_eq!(at.count(), live);
    assert!(
        at.kvs()
            .iter()
            .all(|kv| kv.value_str().unwrap() == (ROUNDS - 1).to_string())
    );
    let below = c
        .get(
            "/c/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_revision(compact_at - 1),
            ),
        )
        .await
        .expect_err("a read below the compaction");
    assert!(
        below
            .to_string()
            .contains("required revision has been compacted"),
        "{below}"
    );

    c.put("/c/after", "1", None).await.unwrap();
    let mut seen = Vec::new();
    while seen.last() != Some(&(compact_at + 1)) {
        let r = events.message().await.unwrap().expect("watch open");
        assert!(!r.canceled(), "the watch was canceled: {r:?}");
        seen.extend(r.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    assert!(
        seen.iter().copied().eq(2..=compact_at + 1),
        "the watch saw every revision once, in order"
    );
    assert_eq!(db.count(history).await.unwrap(), live + 1);
    eprintln!(
        "compaction on {}: {} history rows down to {live} in {} ms; watch streamed across it",
        target.name(),
        compact_at - 1,
        took.as_millis()
    );
}

pub fn cases() -> Vec<Case> {
    vec![case!("purges_history", &Target::ETCDSQL, purges_history)]
}
