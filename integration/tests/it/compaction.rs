//! Compaction: a physical compaction removes every history row that no
//! read at or after the compaction revision can need, reads below it get
//! etcd's error, reads at it still see the state of that revision, and a
//! watch that is caught up keeps streaming across it.

use std::collections::BTreeMap;
use std::time::Instant;

use etcd_client::{Client, CompactionOptions, EventType, GetOptions, WatchOptions};
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
    let wrong = seen
        .iter()
        .copied()
        .zip(2..)
        .position(|(got, want)| got != want);
    assert!(
        wrong.is_none() && seen.len() == usize::try_from(compact_at).unwrap(),
        "the watch saw every revision once, in order: {} events, first wrong at {wrong:?}: {:?}",
        seen.len(),
        &seen[wrong.unwrap_or(0).saturating_sub(3)..seen.len().min(wrong.unwrap_or(0) + 5)]
    );
    assert_eq!(db.count(history).await.unwrap(), live + 1);
    eprintln!(
        "compaction on {}: {} history rows down to {live} in {} ms; watch streamed across it",
        target.name(),
        compact_at - 1,
        took.as_millis()
    );
}

/// Every change a client was acknowledged: key → (revision, value or
/// None for a delete), in revision order.
#[derive(Default)]
struct Model(BTreeMap<String, Vec<(i64, Option<String>)>>);

impl Model {
    fn record(&mut self, key: &str, revision: i64, value: Option<&str>) {
        self.0
            .entry(key.to_string())
            .or_default()
            .push((revision, value.map(str::to_string)));
    }

    /// The keys and values a read at `rev` sees.
    fn at(&self, rev: i64) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter_map(|(k, v)| {
                let last = v.iter().rev().find(|(r, _)| *r <= rev)?;
                Some((k.clone(), last.1.clone()?))
            })
            .collect()
    }

    /// History rows a read or watch at or above `compacted` can need: every
    /// change after it, and each key's last put at or below it.
    fn needed(&self, compacted: i64) -> i64 {
        let mut n = 0;
        for v in self.0.values() {
            n += v.iter().filter(|(r, _)| *r > compacted).count();
            if let Some((_, Some(_))) = v.iter().rev().find(|(r, _)| *r <= compacted) {
                n += 1;
            }
        }
        i64::try_from(n).unwrap()
    }
}

async fn put(c: &mut Client, m: &mut Model, key: &str, value: &str) -> i64 {
    let r = c.put(key, value, None).await.unwrap();
    let rev = r.header().unwrap().revision();
    m.record(key, rev, Some(value));
    rev
}

async fn delete(c: &mut Client, m: &mut Model, key: &str) -> i64 {
    let r = c.delete(key, None).await.unwrap();
    assert_eq!(r.deleted(), 1, "{key} existed");
    let rev = r.header().unwrap().revision();
    m.record(key, rev, None);
    rev
}

/// Reads at these revisions equal the model's.
async fn check_reads(c: &mut Client, m: &Model, revs: &[i64], what: &str) {
    for &rev in revs {
        let got = c
            .get(
                "/registry/",
                Some(GetOptions::new().with_prefix().with_revision(rev)),
            )
            .await
            .unwrap();
        let got: Vec<(String, String)> = got
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    kv.value_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(got, m.at(rev), "{what}: a read at revision {rev}");
    }
}

async fn partition_count(db: &TestDb) -> usize {
    let sql = if db.target.is_postgres() {
        "SELECT COUNT(*) FROM pg_inherits WHERE inhparent = 'etcdsql_history'::regclass"
    } else {
        "SELECT COUNT(*) FROM information_schema.PARTITIONS WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME = 'etcdsql_history'"
    };
    usize::try_from(db.count(sql).await.unwrap()).unwrap()
}

async fn epochs(db: &TestDb) -> Vec<String> {
    db.lines("SELECT epoch, last_revision FROM etcdsql_epoch ORDER BY epoch")
        .await
        .unwrap()
}

/// Compaction by epochs: the first compaction (below the head) starts
/// epoch 2 and deletes rows; the second, above where epoch 1 ended, moves
/// its survivors into epoch 0 and drops its partition (with the pods
/// resource in partitions of its own, so a new epoch has to create them
/// too). Reads at and above each compaction, a watch across them and the
/// exact history left are checked against what the clients were told,
/// including keys deleted in the dropped epoch (which must stay deleted)
/// and writes running during the compaction.
async fn drops_epochs(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
    let add = std::process::Command::new(bin())
        .args(["partitions", "add", "pods", "--endpoint", &db.dsn])
        .output()
        .unwrap();
    assert!(add.status.success(), "{add:?}");
    let mut c = p.client().await.unwrap();
    let mut m = Model::default();
    let key = |i: usize| {
        if i.is_multiple_of(3) {
            format!("/registry/configmaps/ns/c{i:02}")
        } else {
            format!("/registry/pods/ns/p{i:02}")
        }
    };
    for round in 0..10 {
        for i in 0..30 {
            put(&mut c, &mut m, &key(i), &format!("r{round}")).await;
        }
    }
    for i in 0..6 {
        delete(&mut c, &mut m, &key(i)).await;
    }
    // One revision, three keys; only the first is updated in epoch 2, so
    // the survivors' move carries a superseded row along (purged after).
    let together: Vec<String> = (0..3).map(|i| format!("/registry/pods/ns/t{i}")).collect();
    let r = c
        .txn(
            etcd_client::Txn::new().and_then(
                together
                    .iter()
                    .map(|k| etcd_client::TxnOp::put(k.as_str(), "t", None))
                    .collect::<Vec<_>>(),
            ),
        )
        .await
        .unwrap();
    let rev = r.header().unwrap().revision();
    for k in &together {
        m.record(k, rev, Some("t"));
    }
    let first = 200;
    let end_of_epoch1 = m.0.values().flatten().map(|(r, _)| *r).max().unwrap();
    c.compact(first, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    assert_eq!(
        epochs(&db).await,
        [
            "0 | NULL".to_string(),
            format!("1 | {end_of_epoch1}"),
            "2 | NULL".into()
        ],
        "the first compaction started epoch 2"
    );
    assert_eq!(partition_count(&db).await, 3);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM etcdsql_history")
            .await
            .unwrap(),
        m.needed(first),
        "history after compacting below the head (rows deleted)"
    );
    check_reads(
        &mut c,
        &m,
        &[first, end_of_epoch1],
        "after the first compaction",
    )
    .await;

    // Epoch 2: updates, a delete, and a key deleted in epoch 1 created again.
    put(&mut c, &mut m, &together[0], "t2").await;
    for i in 6..30 {
        put(&mut c, &mut m, &key(i), "r10").await;
    }
    delete(&mut c, &mut m, &key(10)).await;
    put(&mut c, &mut m, &key(0), "again").await;
    let second = end_of_epoch1 + 20;
    let mut events = c
        .watch(
            "/registry/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_start_revision(second + 1),
            ),
        )
        .await
        .unwrap();
    // Writes keep coming while the second compaction runs.
    let mut w = p.client().await.unwrap();
    let writer = tokio::spawn(async move {
        let mut m = Model::default();
        for n in 0..200 {
            put(&mut w, &mut m, &format!("/registry/pods/ns/w{n:03}"), "w").await;
        }
        m
    });
    let started = Instant::now();
    c.compact(second, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let took = started.elapsed();
    for (k, v) in writer.await.unwrap().0 {
        m.0.insert(k, v);
    }
    let head = m.0.values().flatten().map(|(r, _)| *r).max().unwrap();
    let e = epochs(&db).await;
    assert_eq!(e.len(), 3, "{e:?}");
    assert_eq!(e[0], "0 | NULL");
    assert!(
        e[1].starts_with("2 | ") && e[2].starts_with("3 | NULL"),
        "epoch 1 dropped: {e:?}"
    );
    assert_eq!(partition_count(&db).await, 3);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM etcdsql_history WHERE epoch = 1")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM etcdsql_history")
            .await
            .unwrap(),
        m.needed(second),
        "history after dropping epoch 1"
    );
    check_reads(
        &mut c,
        &m,
        &[second, second + 1, head],
        "after dropping epoch 1",
    )
    .await;
    // Deleted in epoch 1, whose tombstones are gone: still deleted.
    for i in 1..6 {
        let r = c
            .get(key(i), Some(GetOptions::new().with_revision(second)))
            .await
            .unwrap();
        assert_eq!(r.count(), 0, "{} stays deleted", key(i));
    }

    // The watch from above the compaction: every change, with its previous
    // value (read from epoch 0 where the previous version survived there).
    let mut want = Vec::new();
    for (k, v) in &m.0 {
        for (i, (rev, value)) in v.iter().enumerate() {
            if *rev > second {
                let prev = i.checked_sub(1).and_then(|j| v[j].1.clone());
                want.push((*rev, k.clone(), value.clone(), prev));
            }
        }
    }
    want.sort();
    let mut seen = Vec::new();
    while seen.len() < want.len() {
        let r = events.message().await.unwrap().expect("watch open");
        assert!(!r.canceled(), "the watch was canceled: {r:?}");
        for ev in r.events() {
            let kv = ev.kv().unwrap();
            let value =
                (ev.event_type() == EventType::Put).then(|| kv.value_str().unwrap().to_string());
            let prev = ev.prev_kv().map(|p| p.value_str().unwrap().to_string());
            seen.push((
                kv.mod_revision(),
                kv.key_str().unwrap().to_string(),
                value,
                prev,
            ));
        }
    }
    assert_eq!(seen, want, "the watch from above the compaction");
    eprintln!(
        "epoch compaction on {}: epoch 1 dropped at revision {second} in {} ms with 200 writes running; {} history rows left",
        target.name(),
        took.as_millis(),
        m.needed(second)
    );
}

/// The first write after a compaction finds the revision row changed (its
/// compacted revision): the batch that assumed the row fails its check
/// and runs again. Its COMMIT, sent with it, already ended the failed
/// transaction; a ROLLBACK after it would make PostgreSQL warn "there is
/// no transaction in progress".
async fn stale_batch_ends_once(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let port = etcdsql_integration::free_port();
    let metrics = format!("http://127.0.0.1:{port}");
    let p = Process::etcdsql_with(bin(), &db.dsn, &["--listen-metrics-urls", &metrics])
        .await
        .expect("etcdsql");
    let mut c = p.client().await.unwrap();
    let put = c.put("/s/a", "1", None).await.unwrap();
    c.compact(put.header().unwrap().revision(), None)
        .await
        .unwrap();
    // The purge after it rolls the history epoch: the revision row changes.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !p.log().contains("compacted history") && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let after = c.put("/s/b", "2", None).await.unwrap();
    assert_eq!(after.header().unwrap().revision(), 3);
    let text = etcdsql_integration::scrape_metrics(port).await;
    let stale = text
        .lines()
        .find_map(|l| l.strip_prefix("etcdsql_write_batches_total{path=\"stale\"} "))
        .map_or(0.0, |n| n.parse::<f64>().unwrap());
    assert!(stale >= 1.0, "no stale batch: {text}");
    let log = p.log();
    assert!(!log.contains("no transaction in progress"), "{log}");
}

pub fn cases() -> Vec<Case> {
    vec![
        case!("purges_history", &Target::ETCDSQL, purges_history),
        case!(
            "stale_batch_ends_once",
            &[Target::Postgres],
            stale_batch_ends_once
        ),
        case!(
            "drops_epochs",
            &[Target::Postgres, Target::Mariadb, Target::Galera],
            drops_epochs
        ),
    ]
}
