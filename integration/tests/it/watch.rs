//! Watch, compared with etcd 3.4: one scripted stream with several watches
//! (prefix, range, single key, filters, prev_kv, client-chosen and duplicate
//! ids, cancel, replay from a past revision, progress request, a watch below
//! the compaction), its answers grouped per watch id. Responses may batch
//! events differently, so the comparison is on each watch's sequence of
//! events and control responses, not on response boundaries.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, DeleteOptions, EventType, GetOptions, Txn, TxnOp, WatchFilterType, WatchOptions,
    WatchStream,
};
use etcdsql_integration::{Process, Reference, Started, Target, TestDb};

use crate::{Case, Listener, bin, case};

/// What each watch id (and -1, progress) received, in order.
#[derive(Default)]
struct Log(BTreeMap<i64, Vec<String>>);

impl Log {
    fn record(&mut self, r: &etcd_client::WatchResponse) {
        let id = r.watch_id();
        let rev = r.header().map_or(0, |h| h.revision());
        let lines = self.0.entry(id).or_default();
        if r.created() {
            lines.push(format!(
                "created rev={rev} canceled={} reason={:?}",
                r.canceled(),
                r.cancel_reason()
            ));
        } else if r.canceled() {
            lines.push(format!(
                "canceled rev={rev} compact={}",
                r.compact_revision()
            ));
        } else if r.events().is_empty() {
            lines.push(format!("progress rev={rev}"));
        }
        for e in r.events() {
            let kv = e.kv().map(|k| {
                format!(
                    "{}={:?} c={} m={} v={} l={}",
                    String::from_utf8_lossy(k.key()),
                    String::from_utf8_lossy(k.value()),
                    k.create_revision(),
                    k.mod_revision(),
                    k.version(),
                    k.lease()
                )
            });
            let prev = e.prev_kv().map(|k| {
                format!(
                    "{:?} m={} v={}",
                    String::from_utf8_lossy(k.value()),
                    k.mod_revision(),
                    k.version()
                )
            });
            let ty = if e.event_type() == EventType::Put {
                "PUT"
            } else {
                "DELETE"
            };
            lines.push(format!("{ty} {} prev={prev:?}", kv.unwrap_or_default()));
        }
    }

    fn lines(&self) -> Vec<String> {
        self.0
            .iter()
            .flat_map(|(id, l)| l.iter().map(move |l| format!("watch {id}: {l}")))
            .collect()
    }
}

/// Reads responses until none came for a while.
async fn settle(ws: &mut WatchStream, log: &mut Log) {
    while let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_millis(400), ws.message()).await
    {
        log.record(&r);
    }
}

async fn script(c: &mut Client) -> Vec<String> {
    let mut log = Log::default();
    let opts = WatchOptions::new;
    let mut ws = c
        .watch("w/", Some(opts().with_prefix().with_prev_key()))
        .await
        .expect("watch");
    ws.watch(
        "w/a",
        Some(
            opts()
                .with_watch_id(7)
                .with_filters([WatchFilterType::NoDelete]),
        ),
    )
    .await
    .expect("watch 7");
    ws.watch(
        "w/b",
        Some(
            opts()
                .with_range("w/d")
                .with_watch_id(8)
                .with_filters([WatchFilterType::NoPut])
                .with_prev_key(),
        ),
    )
    .await
    .expect("watch 8");
    ws.watch("w/x", Some(opts().with_watch_id(7)))
        .await
        .expect("duplicate");
    settle(&mut ws, &mut log).await;
    ws.watch("w/z", Some(opts().with_range("w/a")))
        .await
        .expect("empty range");
    settle(&mut ws, &mut log).await;
    // Negative starts: -1 is "from now" until something is compacted; a
    // start below etcd's compacted revision (-1 before any) is compacted.
    ws.watch(
        "w/a",
        Some(opts().with_start_revision(-1).with_watch_id(30)),
    )
    .await
    .expect("start -1");
    ws.watch(
        "w/a",
        Some(opts().with_start_revision(-2).with_watch_id(31)),
    )
    .await
    .expect("start -2");
    settle(&mut ws, &mut log).await;

    c.put("w/a", "1", None).await.unwrap(); // 2
    c.put("w/b", "2", None).await.unwrap(); // 3
    c.put("w/c", "3", None).await.unwrap(); // 4
    c.put("w/a", "4", None).await.unwrap(); // 5
    c.delete("w/b", None).await.unwrap(); // 6
    c.txn(Txn::new().and_then([TxnOp::put("w/d", "5", None), TxnOp::delete("w/c", None)]))
        .await
        .unwrap(); // 7
    c.put("elsewhere", "x", None).await.unwrap(); // 8
    settle(&mut ws, &mut log).await;

    ws.cancel(8).await.unwrap();
    settle(&mut ws, &mut log).await;
    c.put("w/b", "6", None).await.unwrap(); // 9
    settle(&mut ws, &mut log).await;

    // replay from history
    ws.watch(
        "w/",
        Some(
            opts()
                .with_prefix()
                .with_start_revision(3)
                .with_prev_key()
                .with_watch_id(20),
        ),
    )
    .await
    .unwrap();
    settle(&mut ws, &mut log).await;
    ws.request_progress().await.unwrap();
    settle(&mut ws, &mut log).await;

    c.compact(5, None).await.unwrap();
    ws.watch(
        "w/",
        Some(
            opts()
                .with_prefix()
                .with_start_revision(2)
                .with_watch_id(21),
        ),
    )
    .await
    .unwrap();
    ws.watch(
        "w/",
        Some(
            opts()
                .with_prefix()
                .with_start_revision(5)
                .with_watch_id(22),
        ),
    )
    .await
    .unwrap();
    ws.watch("w/", Some(opts().with_start_revision(-1).with_watch_id(32)))
        .await
        .unwrap();
    // From the compacted revision with prev_kv: the event at 5 has none
    // (its previous version is read at 4, compacted), later ones do.
    ws.watch(
        "w/",
        Some(
            opts()
                .with_prefix()
                .with_start_revision(5)
                .with_prev_key()
                .with_watch_id(33),
        ),
    )
    .await
    .unwrap();
    settle(&mut ws, &mut log).await;

    c.delete("w/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap(); // 10
    ws.watch("", Some(opts().with_all_keys().with_watch_id(23)))
        .await
        .unwrap();
    settle(&mut ws, &mut log).await;
    c.put("z", "last", None).await.unwrap(); // 11
    settle(&mut ws, &mut log).await;
    // A watch ended by compaction keeps its id until the client cancels it.
    ws.watch("w/q", Some(opts().with_watch_id(21)))
        .await
        .unwrap();
    settle(&mut ws, &mut log).await;
    ws.cancel(21).await.unwrap();
    settle(&mut ws, &mut log).await;
    log.lines()
}

async fn transcript(target: Target) -> Vec<String> {
    let s = Started::new(target, bin()).await.expect("start");
    let mut c = s.server.client().await.expect("client");
    script(&mut c).await
}

static REFERENCE: Reference = Reference::new();

async fn check(target: Target) {
    let got = transcript(target).await;
    let want = REFERENCE.get(transcript).await;
    // Semantics that hold with or without the reference.
    let has = |s: &str| got.iter().any(|l| l.contains(s));
    assert!(
        has(
            "watch -1: created rev=1 canceled=true reason=\"mvcc: duplicate watch ID provided on the WatchStream\""
        ),
        "{got:#?}"
    );
    assert!(
        has("watch -1: created rev=1 canceled=true reason=\"mvcc: watcher range is empty\""),
        "{got:#?}"
    );
    assert!(has("watch 21: canceled rev=0 compact=5"), "{got:#?}");
    assert!(has("watch 21: canceled rev=11 compact=0"), "{got:#?}");
    assert!(has("watch 30: PUT w/a=\"4\""), "{got:#?}");
    assert!(has("watch 31: canceled rev=0 compact=-1"), "{got:#?}");
    assert!(has("watch 32: canceled rev=0 compact=5"), "{got:#?}");
    assert!(
        has("watch 33: PUT w/a=\"4\" c=2 m=5 v=2 l=0 prev=None"),
        "{got:#?}"
    );
    assert!(
        has("watch 33: DELETE w/b=\"\" c=0 m=6 v=0 l=0 prev=Some"),
        "{got:#?}"
    );
    assert!(has("watch -1: progress rev=9"), "{got:#?}");
    assert!(
        !got.iter().any(|l| l.starts_with("watch 7: DELETE")),
        "NODELETE: {got:#?}"
    );
    if let Some(want) = want {
        assert_eq!(
            got.join("\n"),
            want.join("\n"),
            "watch transcript on {} differs from etcd 3.4",
            target.name()
        );
    }
    eprintln!(
        "watch script on {}: {} lines{}",
        target.name(),
        got.len(),
        if want.is_some() {
            ", identical to etcd 3.4"
        } else {
            ""
        }
    );
}

const WRITES: i64 = 300;

/// Writes through one process reach a watcher on another in order, none
/// lost; a watcher started later on a third process replays everything
/// from the history table.
async fn across_processes(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let a = Process::etcdsql(bin(), &db.dsn)
        .await
        .expect("writer process");
    let b = Process::etcdsql(bin(), db.other_dsn())
        .await
        .expect("watcher process");
    let mut writer = a.client().await.unwrap();
    let mut watcher = b.client().await.unwrap();
    let mut ws = watcher
        .watch(
            "/registry/pods/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert!(ws.message().await.unwrap().unwrap().created());

    let mut latencies = Vec::new();
    let mut seen = 0;
    for i in 0..WRITES {
        let key = format!("/registry/pods/ns/p{}", i % 10);
        let sent = Instant::now();
        writer.put(key, i.to_string(), None).await.unwrap();
        // Wait for this write's event before the next write.
        while seen <= i {
            let r = tokio::time::timeout(Duration::from_secs(5), ws.message())
                .await
                .expect("event within 5 s")
                .unwrap()
                .unwrap();
            for e in r.events() {
                let kv = e.kv().unwrap();
                assert_eq!(
                    kv.mod_revision(),
                    seen + 2,
                    "events in revision order, none lost"
                );
                assert_eq!(kv.value_str().unwrap(), seen.to_string());
                if seen >= 10 {
                    let prev = e.prev_kv().expect("prev_kv");
                    assert_eq!(prev.value_str().unwrap(), (seen - 10).to_string());
                }
                seen += 1;
            }
        }
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    let p = |q: usize| latencies[(latencies.len() * q / 100).min(latencies.len() - 1)];
    eprintln!(
        "watch across processes on {}: {WRITES} events in order; put→event p50 {:?} p99 {:?} max {:?}",
        target.name(),
        p(50),
        p(99),
        latencies.last().unwrap()
    );

    // A process started now has none of this in memory: replay from history.
    let c = Process::etcdsql(bin(), &db.dsn)
        .await
        .expect("third process");
    let mut late = c.client().await.unwrap();
    let mut ws = late
        .watch(
            "/registry/pods/",
            Some(WatchOptions::new().with_prefix().with_start_revision(2)),
        )
        .await
        .unwrap();
    let mut replayed = 0;
    while replayed < WRITES {
        let r = tokio::time::timeout(Duration::from_secs(5), ws.message())
            .await
            .expect("replay within 5 s")
            .unwrap()
            .unwrap();
        for e in r.events() {
            assert_eq!(e.kv().unwrap().mod_revision(), replayed + 2);
            replayed += 1;
        }
    }
    let last = late
        .get(
            "/registry/pods/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(last.count(), 10);
}

/// An idle watch that asked for progress gets a notification at every
/// tick of `--experimental-watch-progress-notify-interval`, as from etcd
/// (each tick notifies the watches sent nothing since the tick before).
async fn progress_every_tick(target: Target) {
    let s = Started::with_args(
        target,
        bin(),
        &["--experimental-watch-progress-notify-interval", "500ms"],
    )
    .await
    .expect("start");
    let mut c = s.server.client().await.unwrap();
    c.put("p/k", "v", None).await.unwrap();
    let mut ws = c
        .watch(
            "p/",
            Some(WatchOptions::new().with_prefix().with_progress_notify()),
        )
        .await
        .unwrap();
    assert!(ws.message().await.unwrap().unwrap().created());
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2750);
    let mut notified = 0;
    while let Ok(m) = tokio::time::timeout_at(deadline, ws.message()).await {
        let r = m.unwrap().unwrap();
        assert!(r.events().is_empty(), "{r:?}");
        notified += 1;
    }
    // Ticks at 0.5, 1.0, … 2.5 s after the stream opened, each notifying.
    assert!(
        (5..=6).contains(&notified),
        "{notified} progress notifications in 2.75 s at a 500 ms interval"
    );
}

/// On PostgreSQL a commit notifies other processes' hubs; with none
/// listening it does not. Listeners are told by the statement they last
/// ran (`LISTEN etcdsql_commit`, counted about every second), and a new
/// one by the probe it sends once listening, heard at once.
async fn notifies_only_other_listeners(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
    let mut c = p.client().await.unwrap();
    // Listening, but not as a hub does: not counted.
    let mut hidden = Listener::new(&db, "LISTEN etcdsql_commit; SELECT 1").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !hidden.hears_put(&mut c, "n/1").await,
        "a commit notified with no other process listening"
    );
    // A hub's probe: notifications again, before the next count.
    hidden
        .client
        .batch_execute("NOTIFY etcdsql_commit, 'probe 7'")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        hidden.hears_put(&mut c, "n/2").await,
        "no notification after another process's probe"
    );
    // Counted again, and none listens.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!hidden.hears_put(&mut c, "n/3").await);
    // A session whose last statement is the hub's LISTEN is counted.
    let mut hub = Listener::new(&db, "LISTEN etcdsql_commit").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut i = 0;
    while !hub.hears_put(&mut c, &format!("n/4/{i}")).await {
        i += 1;
        assert!(
            Instant::now() < deadline,
            "no notification with another listener"
        );
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(hub.hears_put(&mut c, "n/5").await, "the listener counted");
    drop(hub);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!hidden.hears_put(&mut c, "n/6").await, "alone again");
}

pub fn cases() -> Vec<Case> {
    vec![
        case!("script", &Target::ETCDSQL, check),
        case!("across_processes", &Target::ETCDSQL, across_processes),
        case!(
            "progress_every_tick",
            &[Target::Sqlite, Target::Postgres],
            progress_every_tick
        ),
        case!(
            "notifies_only_other_listeners",
            &[Target::Postgres],
            notifies_only_other_listeners
        ),
    ]
}
