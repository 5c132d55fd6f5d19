//! Write throughput of etcd and etcdsql side by side, in one run: each
//! target is started fresh on this machine (etcd 3.4 with its data in the
//! temp dir, fsync on; etcdsql on a new database), then driven by the same
//! concurrent clients.
//!
//!   cargo build --release -p etcdsql -p etcdsql-integration
//!   target/release/etcdsql-bench --etcdsql-bin target/release/etcdsql \
//!       --targets etcd,postgres --clients 256 --ops 20000
//!
//! Workloads: `put` (unique keys), `create` (kube-apiserver's create:
//! Txn mod_revision(key) == 0 → put, else get), and `watch` (event latency
//! from put to watchers at a fixed write rate, with the watchers on the
//! writer's process and, for etcdsql, on a second process sharing the
//! database).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use etcdsql_integration::{Started, Target};

#[derive(Parser)]
struct Args {
    /// The etcdsql binary to start (a release build for real numbers).
    #[arg(long)]
    etcdsql_bin: PathBuf,
    /// Comma-separated: etcd, sqlite, postgres, mariadb.
    #[arg(long, default_value = "etcd,postgres", value_delimiter = ',')]
    targets: Vec<String>,
    /// Comma-separated: put, create.
    #[arg(long, default_value = "put,create", value_delimiter = ',')]
    workloads: Vec<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 256)]
    clients: usize,
    /// gRPC connections the clients share.
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// Requests per workload.
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Watchers for the watch workload (split over the connections).
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Writes per second for the watch workload.
    #[arg(long, default_value_t = 200)]
    watch_rate: u64,
    /// Writes for the watch workload.
    #[arg(long, default_value_t = 2000)]
    watch_events: usize,
}

struct Outcome {
    secs: f64,
    latencies: Vec<Duration>,
    errors: usize,
}

/// The latency at `per_mille`/1000 of a sorted list (nearest rank).
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (per_mille * sorted.len()).div_ceil(1000);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run(clients: &[Client], args: &Args, workload: &str) -> Outcome {
    let next = Arc::new(AtomicUsize::new(0));
    let value = Arc::new(vec![b'v'; args.value_size]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        let mut c = clients[i % clients.len()].clone();
        let (next, value, ops) = (next.clone(), value.clone(), args.ops);
        let workload = workload.to_string();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= ops {
                    break;
                }
                let t = Instant::now();
                let ok = if workload == "put" {
                    c.put(format!("/bench/put/{n:08}"), value.as_slice(), None)
                        .await
                        .is_ok()
                } else {
                    let key = format!("/registry/bench.example.com/widgets/ns/w-{n:08}");
                    let txn = Txn::new()
                        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key.as_str(), value.as_slice(), None)])
                        .or_else([TxnOp::get(key.as_str(), None)]);
                    matches!(c.txn(txn).await, Ok(r) if r.succeeded())
                };
                lat.push(t.elapsed());
                if !ok {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut latencies = Vec::with_capacity(args.ops);
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("client task");
        latencies.extend(l);
        errors += e;
    }
    latencies.sort();
    Outcome {
        secs: started.elapsed().as_secs_f64(),
        latencies,
        errors,
    }
}

fn now_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or_default()
}

/// Watch latency: `watch_events` puts at `watch_rate`/s on `writer`, seen
/// by `watchers` watchers on `watch_on` connections. Returns, sorted, the
/// time from sending each put to each event, and from the put's
/// acknowledgement to each event (delivery after commit; 0 when the event
/// arrived first).
async fn watch_latency(
    writer: &Client,
    watch_on: &[Client],
    args: &Args,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let mut streams = Vec::new();
    for i in 0..args.watchers {
        let mut c = watch_on[i % watch_on.len()].clone();
        let mut ws = c
            .watch(
                "/bench/watch/",
                Some(etcd_client::WatchOptions::new().with_prefix()),
            )
            .await?;
        ws.message().await?; // created
        streams.push(ws);
    }
    let expected = args.watch_events;
    let mut readers = Vec::new();
    for mut ws in streams {
        readers.push(tokio::spawn(async move {
            // (write number, send time, arrival time)
            let mut seen: Vec<(usize, u128, u128)> = Vec::with_capacity(expected);
            while seen.len() < expected {
                let Ok(Ok(Some(r))) =
                    tokio::time::timeout(Duration::from_secs(10), ws.message()).await
                else {
                    break;
                };
                let now = now_micros();
                for e in r.events() {
                    let v = e
                        .kv()
                        .and_then(|kv| kv.value_str().ok())
                        .unwrap_or_default();
                    let (n, sent) = v.split_once(':').unwrap_or(("0", "0"));
                    seen.push((n.parse().unwrap_or(0), sent.parse().unwrap_or(now), now));
                }
            }
            seen
        }));
    }
    let mut w = writer.clone();
    let mut acked = vec![0u128; expected];
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / args.watch_rate.max(1)));
    for (n, ack) in acked.iter_mut().enumerate() {
        tick.tick().await;
        w.put(
            format!("/bench/watch/k{}", n % 100),
            format!("{n}:{}", now_micros()),
            None,
        )
        .await?;
        *ack = now_micros();
    }
    let micros = |d: u128| Duration::from_micros(u64::try_from(d).unwrap_or(u64::MAX));
    let (mut from_send, mut from_ack) = (Vec::new(), Vec::new());
    for r in readers {
        for (n, sent, arrived) in r.await? {
            from_send.push(micros(arrived.saturating_sub(sent)));
            from_ack.push(micros(
                arrived.saturating_sub(acked.get(n).copied().unwrap_or(arrived)),
            ));
        }
    }
    anyhow::ensure!(
        from_send.len() == expected * args.watchers,
        "lost events: {} of {}",
        from_send.len(),
        expected * args.watchers
    );
    from_send.sort();
    from_ack.sort();
    Ok((from_send, from_ack))
}

async fn watch_rows(args: &Args) -> anyhow::Result<()> {
    println!(
        "\n{} watchers, {} puts at {}/s\n",
        args.watchers, args.watch_events, args.watch_rate
    );
    println!(
        "| watch | target | watchers on | events | put→event p50 ms | p99 ms | max ms | ack→event p50 ms | p99 ms |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for name in &args.targets {
        let t = target(name)?;
        let s = Started::new(t, &args.etcdsql_bin).await?;
        let mut local = Vec::new();
        for _ in 0..args.conns {
            local.push(s.server.client().await?);
        }
        let mut runs = vec![("the writer's process", local.clone())];
        let second = match &s.db {
            Some(db) => {
                Some(etcdsql_integration::Process::etcdsql(&args.etcdsql_bin, &db.dsn).await?)
            }
            None => None,
        };
        if let Some(p) = &second {
            let mut remote = Vec::new();
            for _ in 0..args.conns {
                remote.push(p.client().await?);
            }
            runs.push(("another process", remote));
        }
        for (mode, clients) in runs {
            eprintln!("watch on {name}, watchers on {mode} …");
            let (lat, after_ack) = watch_latency(&local[0], &clients, args).await?;
            println!(
                "| watch | {name} | {mode} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                lat.len(),
                ms(percentile(&lat, 500)),
                ms(percentile(&lat, 990)),
                ms(lat.last().copied().unwrap_or_default()),
                ms(percentile(&after_ack, 500)),
                ms(percentile(&after_ack, 990)),
            );
        }
    }
    Ok(())
}

fn target(name: &str) -> anyhow::Result<Target> {
    Ok(match name {
        "etcd" => Target::Etcd,
        "sqlite" => Target::Sqlite,
        "postgres" => Target::Postgres,
        "mariadb" => Target::Mariadb,
        other => anyhow::bail!("unknown target {other}"),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "clients {}, connections {}, {} requests per workload, {} B values\n",
        args.clients, args.conns, args.ops, args.value_size
    );
    if args.workloads.iter().any(|w| w != "watch") {
        println!("| workload | target | req/s | p50 ms | p99 ms | max ms | errors | vs etcd |");
        println!("|---|---|---:|---:|---:|---:|---:|---:|");
    }
    for workload in &args.workloads {
        if workload == "watch" {
            watch_rows(&args).await?;
            continue;
        }
        let mut rows = Vec::new();
        for name in &args.targets {
            let t = target(name)?;
            let s = Started::new(t, &args.etcdsql_bin).await?;
            let mut clients = Vec::new();
            for _ in 0..args.conns {
                clients.push(s.server.client().await?);
            }
            eprintln!("{workload} on {name} …");
            let o = run(&clients, &args, workload).await;
            rows.push((t, name, args.ops as f64 / o.secs, o));
        }
        let etcd_rate = rows.iter().find(|r| r.0 == Target::Etcd).map(|r| r.2);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        for (_, name, rate, o) in rows {
            println!(
                "| {workload} | {name} | {rate:.0} | {:.1} | {:.1} | {:.1} | {} | {} |",
                ms(percentile(&o.latencies, 500)),
                ms(percentile(&o.latencies, 990)),
                ms(o.latencies.last().copied().unwrap_or_default()),
                o.errors,
                etcd_rate.map_or("–".to_string(), |e| format!("{:.2}x", rate / e)),
            );
        }
    }
    Ok(())
}
