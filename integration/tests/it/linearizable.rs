//! Recorded histories of concurrent clients, checked for linearizability
//! and etcd's watch rules (`etcdsql_integration::lincheck`).
//!
//! Several etcdsql processes serve one database (on Galera, one per node);
//! 8 clients spread over them get, put, compare-and-swap (Txn) and delete 5
//! keys for a while, and one watch per process streams every revision.
//! Faults: none; kill -9 of an etcdsql (restarted on a new port, its
//! clients and watch reconnect); an immediate restart of the database
//! server; a Galera node stopped and rejoining. Any error a client sees is
//! an unknown outcome to the checker; an error a conflict caused (deadlock,
//! duplicate key, certification failure, serialization failure) fails the
//! case, and with no fault any error does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, EventType, Txn, TxnOp, WatchOptions};
use etcdsql_integration::lincheck::{self, Event, Op, Record};
use etcdsql_integration::{Process, Target, TestDb, servers};

use crate::{Case, bin, case};

const CLIENTS: usize = 8;
const KEYS: usize = 5;
/// How long the clients run (`ETCDSQL_LIN_SECONDS`, default 20).
fn run_time() -> Duration {
    let secs = std::env::var("ETCDSQL_LIN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}
const PREFIX: &str = "/lin/";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    KillEtcdsql,
    /// SIGKILL of the database server, started again at once.
    DatabaseRestart,
    /// A Galera node (not the bootstrap one) stopped, then rejoining.
    NodeRestart,
}

/// The processes of a run: the endpoint of each slot, which the fault
/// task changes when it restarts a process on a new port.
struct Slots {
    endpoints: Vec<RwLock<String>>,
}

impl Slots {
    fn endpoint(&self, i: usize) -> String {
        self.endpoints[i]
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

async fn connect(endpoint: &str) -> Option<Client> {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(8));
    Client::connect([endpoint], Some(opts)).await.ok()
}

/// xorshift64*: the case needs cheap, seeded choices, not good randomness.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33;
        usize::try_from(x).unwrap_or(0) % n
    }
}

fn elapsed(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Errors a conflict between writers caused: etcdsql must retry those.
fn conflict_error(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    [
        "deadlock",
        "duplicate",
        "certification",
        "serializ",
        "conflict",
        "(1213)",
        "(1062)",
        "40001",
    ]
    .iter()
    .any(|p| m.contains(p))
}

async fn client_loop(
    id: usize,
    slots: Arc<Slots>,
    t0: Instant,
    until: Instant,
    history: Arc<Mutex<Vec<Record>>>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    let slot = id % slots.endpoints.len();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) * 0x1000_0001));
    let mut client: Option<Client> = None;
    let mut seen: Vec<Option<String>> = vec![None; KEYS];
    let mut n = 0;
    while Instant::now() < until {
        let Some(c) = client.as_mut() else {
            client = connect(&slots.endpoint(slot)).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        let k = rng.below(KEYS);
        let key = format!("{PREFIX}k{k}");
        n += 1;
        let value = format!("c{id}-{n}");
        let invoke = elapsed(t0);
        let (op, failed) = match rng.below(10) {
            0..=3 => match c.get(key.as_str(), None).await {
                Ok(r) => {
                    let at = r.header().map(|h| h.revision()).unwrap_or_default();
                    let v = r.kvs().first().map(|kv| {
                        (
                            kv.value_str().unwrap_or_default().to_string(),
                            kv.mod_revision(),
                        )
                    });
                    seen[k] = v.as_ref().map(|(v, _)| v.clone());
                    (Some(Op::Get { value: v, at }), None)
                }
                // A failed read had no effect: nothing to check.
                Err(e) => (None, Some(e.to_string())),
            },
            4..=5 => {
                let r = c.put(key.as_str(), value.as_str(), None).await;
                let ok = r
                    .as_ref()
                    .ok()
                    .and_then(|r| r.header())
                    .map(|h| h.revision());
                seen[k] = Some(value.clone());
                (Some(Op::Put { value, ok }), r.err().map(|e| e.to_string()))
            }
            6..=8 => {
                let expect = seen[k].clone();
                let cmp = match &expect {
                    Some(v) => Compare::value(key.as_str(), CompareOp::Equal, v.as_str()),
                    None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                };
                let t = Txn::new().when([cmp]).and_then([TxnOp::put(
                    key.as_str(),
                    value.as_str(),
                    None,
                )]);
                let r = c.txn(t).await;
                let outcome = r.as_ref().ok().map(|r| {
                    (
                        r.succeeded(),
                        r.header().map(|h| h.revision()).unwrap_or_default(),
                    )
                });
                if outcome.is_some_and(|(ok, _)| ok) {
                    seen[k] = Some(value.clone());
                }
                (
                    Some(Op::Cas {
                        expect,
                        value,
                        outcome,
                    }),
                    r.err().map(|e| e.to_string()),
                )
            }
            _ => {
                let r = c.delete(key.as_str(), None).await;
                let outcome = r.as_ref().ok().map(|r| {
                    (
                        r.deleted(),
                        r.header().map(|h| h.revision()).unwrap_or_default(),
                    )
                });
                seen[k] = None;
                (Some(Op::Delete { outcome }), r.err().map(|e| e.to_string()))
            }
        };
        let ret = elapsed(t0);
        if let Some(op) = op {
            history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Record {
                    client: id,
                    key,
                    op,
                    invoke,
                    ret: failed.is_none().then_some(ret),
                });
        }
        if let Some(e) = failed {
            errors.lock().unwrap_or_else(|e| e.into_inner()).push(e);
            // The server may be gone: connect again (to its successor).
            client = None;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Streams every event under the prefix after `start` from slot `slot`,
/// resuming after the last revision seen when the stream breaks, until
/// `done` is set and revision `end` (0: not known yet) was seen.
async fn watch_loop(
    slot: usize,
    slots: Arc<Slots>,
    start: i64,
    done: Arc<AtomicBool>,
    end: Arc<std::sync::atomic::AtomicI64>,
) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    let deadline = || Instant::now() + run_time() * 6;
    let give_up = deadline();
    loop {
        let last = events.last().map_or(start, |e| e.revision);
        let target = end.load(Ordering::Relaxed);
        if (done.load(Ordering::Relaxed) && target > 0 && last >= target)
            || Instant::now() > give_up
        {
            return events;
        }
        let Some(mut c) = connect(&slots.endpoint(slot)).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(last + 1);
        let Ok(mut stream) = c.watch(PREFIX, Some(opts)).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        loop {
            let target = end.load(Ordering::Relaxed);
            let last = events.last().map_or(start, |e| e.revision);
            if done.load(Ordering::Relaxed) && target > 0 && last >= target {
                return events;
            }
            match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                Err(_) => continue,
                Ok(Ok(Some(r))) => {
                    if r.canceled() {
                        break;
                    }
                    for e in r.events() {
                        let Some(kv) = e.kv() else { continue };
                        events.push(Event {
                            revision: kv.mod_revision(),
                            key: kv.key_str().unwrap_or_default().to_string(),
                            value: (e.event_type() == EventType::Put)
                                .then(|| kv.value_str().unwrap_or_default().to_string()),
                        });
                    }
                }
                Ok(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run(target: Target, fault: Fault) {
    // The database, and what the fault needs to act on.
    let mut containers = Vec::new();
    let db = match fault {
        Fault::DatabaseRestart | Fault::NodeRestart => {
            let (server, owned) =
                tokio::task::spawn_blocking(move || servers::dedicated_cluster(target))
                    .await
                    .expect("container task")
                    .expect("database containers of the case's own");
            containers = owned;
            TestDb::create_on(target, &server.urls)
                .await
                .expect("database")
        }
        _ => TestDb::create(target).await.expect("database"),
    };
    // One process per Galera node; two on one database elsewhere.
    let dsns: Vec<String> = if db.dsns.len() > 1 {
        db.dsns.clone()
    } else {
        vec![db.dsn.clone(), db.dsn.clone()]
    };
    let mut procs = Vec::new();
    for dsn in &dsns {
        procs.push(Some(Process::etcdsql(bin(), dsn).await.expect("etcdsql")));
    }
    let slots = Arc::new(Slots {
        endpoints: procs
            .iter()
            .map(|p| RwLock::new(p.as_ref().map(|p| p.endpoint.clone()).unwrap_or_default()))
            .collect(),
    });
    let mut c = connect(&slots.endpoint(0)).await.expect("client");
    let start = c
        .put("/setup", "x", None)
        .await
        .expect("setup put")
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();

    let done = Arc::new(AtomicBool::new(false));
    let end = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let watchers: Vec<_> = (0..dsns.len())
        .map(|i| {
            tokio::spawn(watch_loop(
                i,
                slots.clone(),
                start,
                done.clone(),
                end.clone(),
            ))
        })
        .collect();
    let history: Arc<Mutex<Vec<Record>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let t0 = Instant::now();
    let until = t0 + run_time();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client_loop(
                id,
                slots.clone(),
                t0,
                until,
                history.clone(),
                errors.clone(),
            ))
        })
        .collect();

    // The fault, a third into the run.
    tokio::time::sleep(run_time() / 3).await;
    let mut what = String::from("no fault");
    match fault {
        Fault::None => {}
        Fault::KillEtcdsql => {
            // Galera: the process of node 2; elsewhere the second process.
            let i = dsns.len() - 1;
            if let Some(mut p) = procs[i].take() {
                p.kill();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let p = Process::etcdsql(bin(), &dsns[i])
                .await
                .expect("etcdsql restarted");
            *slots.endpoints[i]
                .write()
                .unwrap_or_else(|e| e.into_inner()) = p.endpoint.clone();
            procs[i] = Some(p);
            what = format!("etcdsql {i} killed (-9) and restarted");
        }
        Fault::DatabaseRestart => {
            containers[0]
                .restart_now()
                .expect("restarting the database");
            what = "database killed (-9) and restarted".into();
        }
        Fault::NodeRestart => {
            let node = containers.last().expect("a node");
            node.stop().await.expect("stopping a Galera node");
            tokio::time::sleep(Duration::from_secs(2)).await;
            node.start_again().await.expect("starting the node again");
            what = format!("Galera node {} stopped 2 s and rejoined", containers.len());
        }
    }
    for t in clients {
        t.await.expect("client task");
    }
    // The last revision, once every process answers again.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = 0;
    for i in 0..dsns.len() {
        loop {
            let r = match connect(&slots.endpoint(i)).await {
                Some(mut c) => c.get("/setup", None).await.ok(),
                None => None,
            };
            if let Some(r) = r {
                last = last.max(r.header().map(|h| h.revision()).unwrap_or_default());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "process {i} does not answer after the run"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    end.store(last, Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    let mut streams = Vec::new();
    for (i, w) in watchers.into_iter().enumerate() {
        streams.push((
            format!("watch via process {i}"),
            w.await.expect("watch task"),
        ));
    }
    let history = std::mem::take(&mut *history.lock().unwrap_or_else(|e| e.into_inner()));
    let errors = std::mem::take(&mut *errors.lock().unwrap_or_else(|e| e.into_inner()));

    let violations = lincheck::check_linearizable(&history);
    let mut problems = lincheck::check_watches(&streams, &history, start, last);
    // The streams agree when the watch check passes; the fullest one.
    let order = streams
        .iter()
        .map(|(_, e)| e)
        .max_by_key(|e| e.len())
        .cloned()
        .unwrap_or_default();
    problems.extend(lincheck::check_revisions(&history, &order));
    let count = |f: fn(&Op) -> bool| history.iter().filter(|r| f(&r.op)).count();
    let gets = count(|o| matches!(o, Op::Get { .. }));
    let puts = count(|o| matches!(o, Op::Put { .. }));
    let cas = count(|o| matches!(o, Op::Cas { .. }));
    let deletes = count(|o| matches!(o, Op::Delete { .. }));
    let unknown = history.iter().filter(|r| r.ret.is_none()).count();
    let mut get_ms: Vec<f64> = history
        .iter()
        .filter(|r| matches!(r.op, Op::Get { .. }))
        .filter_map(|r| r.ret.map(|t| (t - r.invoke) as f64 / 1e6))
        .collect();
    get_ms.sort_by(f64::total_cmp);
    // The q-quantile (q in percent), nearest rank.
    let pct = |q: usize| {
        get_ms
            .get((get_ms.len() * q / 100).min(get_ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let events: usize = streams.iter().map(|(_, e)| e.len()).sum();
    eprintln!(
        "linearizable on {} ({what}; {} etcdsql): {} ops ({gets} get, {puts} put, {cas} cas, \
         {deletes} delete; {unknown} unknown outcome), {} errors, revisions {start}..={last}, \
         {events} events in {} streams; get latency p50 {:.2} ms, p99 {:.2} ms; \
         {} key(s) not linearizable, {} watch/revision problem(s)",
        target.name(),
        dsns.len(),
        history.len(),
        errors.len(),
        streams.len(),
        pct(50),
        pct(99),
        violations.len(),
        problems.len()
    );
    let conflicts: Vec<&String> = errors.iter().filter(|e| conflict_error(e)).collect();
    let mut failures = Vec::new();
    for v in &violations {
        failures.push(v.to_string());
    }
    failures.extend(problems.iter().take(20).cloned());
    if !conflicts.is_empty() {
        failures.push(format!(
            "{} errors a write conflict caused reached clients, e.g. {}",
            conflicts.len(),
            conflicts[0]
        ));
    }
    if fault == Fault::None && !errors.is_empty() {
        failures.push(format!(
            "{} errors without any fault, e.g. {}",
            errors.len(),
            errors[0]
        ));
    }
    if !failures.is_empty() {
        let logs: String = procs
            .iter()
            .flatten()
            .map(|p| {
                let log = p.log();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            })
            .collect::<Vec<_>>()
            .join("\n---\n");
        panic!("{}\nserver logs (tails):\n{logs}", failures.join("\n"));
    }
    assert!(
        gets > 0 && puts + cas > 0 && events > 0,
        "the run did too little to check"
    );
}

async fn none(target: Target) {
    run(target, Fault::None).await
}

async fn kill_etcdsql(target: Target) {
    run(target, Fault::KillEtcdsql).await
}

async fn database_restart(target: Target) {
    run(target, Fault::DatabaseRestart).await
}

async fn node_restart(target: Target) {
    run(target, Fault::NodeRestart).await
}

const SERVERS: [Target; 4] = [
    Target::Postgres,
    Target::Mariadb,
    Target::Cockroach,
    Target::Tidb,
];

pub fn cases() -> Vec<Case> {
    vec![
        case!("none", &Target::ETCDSQL, none),
        case!("kill_etcdsql", &Target::ETCDSQL, kill_etcdsql),
        case!("database_restart", &SERVERS, database_restart),
        case!("node_restart", &[Target::Galera], node_restart),
    ]
}
