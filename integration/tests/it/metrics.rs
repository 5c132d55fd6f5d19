//! The Prometheus endpoint: per-RPC latency, batch sizes, watch counts.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, WatchOptions};
use etcdsql_integration::{Process, Target, TestDb, free_port, scrape_metrics as scrape};

use crate::{Case, Renewals, bin, case, put};

async fn metrics_endpoint(target: Target) {
    let db = TestDb::create(target).await.unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let p = Process::etcdsql_with(bin(), &db.dsn, &["--listen-metrics-urls", &url])
        .await
        .unwrap();
    let mut c = p.client().await.unwrap();
    c.put("a", "1", None).await.unwrap();
    c.get("a", None).await.unwrap();
    assert!(c.get("", None).await.is_err());
    let mut ws = c.watch("a", Some(WatchOptions::new())).await.unwrap();
    ws.message().await.unwrap();
    c.put("a", "2", None).await.unwrap();
    ws.message().await.unwrap();

    let text = scrape(port).await;
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    for want in [
        "etcdsql_grpc_request_duration_seconds_count{code=\"0\",method=\"etcdserverpb.KV/Put\"} 2",
        "etcdsql_grpc_request_duration_seconds_count{code=\"0\",method=\"etcdserverpb.KV/Range\"}",
        "etcdsql_grpc_request_duration_seconds_count{code=\"3\",method=\"etcdserverpb.KV/Range\"} 1",
        "etcdsql_write_batch_requests_count",
        "etcdsql_watchers 1",
        "etcdsql_watch_events_sent_total 1",
        "etcdsql_watch_hub_revision 3",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // The client URL serves /metrics and /health too (HTTP/1.0 here), with
    // go-grpc-prometheus's counter, as etcd.
    let client_port: u16 = p.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let text = scrape(client_port).await;
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    for want in [
        "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2",
        "grpc_server_handled_total{grpc_code=\"InvalidArgument\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1",
        "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 1",
        // What `etcdctl check datascale` reads.
        "process_resident_memory_bytes ",
    ] {
        assert!(
            text.contains(want),
            "missing {want:?} on the client port in\n{text}"
        );
    }
}

/// `etcdsql_write_batches_total{path}` on the metrics port.
async fn batches(port: u16, path: &str) -> u64 {
    let want = format!("etcdsql_write_batches_total{{path=\"{path}\"}} ");
    scrape(port)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(want.as_str()).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// etcdsql on `db`, and the port of its metrics endpoint.
async fn with_metrics(db: &TestDb) -> (Process, u16) {
    let pm = free_port();
    let p = Process::etcdsql_with(
        bin(),
        &db.dsn,
        &["--listen-metrics-urls", &format!("http://127.0.0.1:{pm}")],
    )
    .await
    .unwrap();
    (p, pm)
}

/// A create: the key must be absent.
async fn create(c: &mut Client, key: &str, value: &str) -> bool {
    let t = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key, value, None)])
        .or_else([TxnOp::get(key, None)]);
    c.txn(t).await.unwrap().succeeded()
}

/// Puts `value` at `key` if its mod revision is `rev`: the revision it
/// took, or `None` where the compare failed.
async fn cas(c: &mut Client, key: &str, rev: i64, value: &str) -> Option<i64> {
    let t = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
        .and_then([TxnOp::put(key, value, None)]);
    let r = c.txn(t).await.unwrap();
    r.succeeded().then(|| r.header().unwrap().revision())
}

/// A batch that assumes what its process last wrote (one round trip) gives
/// etcd's answers, and falls back to reading first whenever another process
/// wrote in between or a key it took as absent exists.
async fn assumed_batches(target: Target) {
    let db = TestDb::create(target).await.unwrap();
    let (pm, qm) = (free_port(), free_port());
    let url = |port| format!("http://127.0.0.1:{port}");
    let p = Process::etcdsql_with(bin(), &db.dsn, &["--listen-metrics-urls", &url(pm)])
        .await
        .unwrap();
    let q = Process::etcdsql_with(bin(), &db.dsn, &["--listen-metrics-urls", &url(qm)])
        .await
        .unwrap();
    let (mut a, mut b) = (p.client().await.unwrap(), q.client().await.unwrap());
    // Keys the first process never sees until it writes them.
    b.put("y", "q", None).await.unwrap();
    let z = put(&mut b, "z", "q").await;

    // One writer: compare-and-swaps and creates in sequence.
    let mut rev = put(&mut a, "k", "0").await;
    for i in 1..=20 {
        rev = cas(&mut a, "k", rev, &i.to_string())
            .await
            .unwrap_or_else(|| panic!("CAS {i} at {rev}"));
    }
    for i in 0..10 {
        assert!(create(&mut a, &format!("x{i}"), "p").await, "create x{i}");
    }
    let assumed = batches(pm, "assumed").await;
    assert!(assumed >= 25, "{assumed} of 31 batches assumed");
    // Batches with long texts (on MariaDB past the compound statements'
    // 64 KiB): a create, and a CAS, each assumed and as answered.
    let big = "b".repeat(200 << 10);
    assert!(create(&mut a, "big", &big).await, "create big");
    rev = cas(&mut a, "k", rev, &big)
        .await
        .expect("CAS with a long value");
    let got = b.get("big", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), big.as_bytes());
    let got = b.get("k", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), big.as_bytes());
    assert_eq!(got.kvs()[0].mod_revision(), rev);
    assert_eq!(batches(pm, "assumed").await, assumed + 2, "both assumed");
    // A plain put of a new key: guessed absent (one batch, assumed).
    let r = put(&mut a, "n", "r").await;
    let got = b.get("n", None).await.unwrap();
    assert_eq!(got.kvs()[0].version(), 1);
    assert_eq!(got.kvs()[0].create_revision(), r);
    assert_eq!(
        batches(pm, "assumed").await,
        assumed + 3,
        "n guessed absent"
    );
    // So is a put in a Txn without compares.
    let r = a
        .txn(Txn::new().and_then([TxnOp::put("t", "v", None)]))
        .await
        .unwrap();
    assert!(r.succeeded());
    let got = b.get("t", None).await.unwrap();
    assert_eq!(got.kvs()[0].version(), 1);
    assert_eq!(
        batches(pm, "assumed").await,
        assumed + 4,
        "t guessed absent"
    );
    // Up to date, but a key it took as absent exists: no create, and the
    // batch is not stale ("existed").
    let failed = |pm| async move { batches(pm, "stale").await + batches(pm, "existed").await };
    assert_eq!(failed(pm).await, 0);
    assert!(!create(&mut a, "y", "p").await, "y exists");
    assert_eq!(
        batches(pm, "existed").await,
        1,
        "the create assumed y absent"
    );
    let got = a.get("y", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"q");
    // A plain put of a key it does not know, which exists: a new version
    // of it, as etcd answers, whether or not the batch guessed it absent.
    let r = put(&mut a, "z", "r").await;
    let got = b.get("z", None).await.unwrap();
    let kv = &got.kvs()[0];
    assert_eq!((kv.value(), kv.version()), (&b"r"[..], 2));
    assert_eq!((kv.create_revision(), kv.mod_revision()), (z, r));
    let mut ws = b
        .watch(
            "z",
            Some(WatchOptions::new().with_start_revision(r).with_prev_key()),
        )
        .await
        .unwrap();
    let event = loop {
        let m = tokio::time::timeout(std::time::Duration::from_secs(5), ws.message())
            .await
            .expect("z's event within 5 s")
            .unwrap()
            .unwrap();
        if !m.events().is_empty() {
            break m;
        }
    };
    let prev = event.events()[0]
        .prev_kv()
        .expect("the version it replaced");
    assert_eq!((prev.value(), prev.mod_revision()), (&b"q"[..], z));

    // Another process writes: the first's next batches must see it.
    b.put("k", "q", None).await.unwrap();
    assert_eq!(
        cas(&mut a, "k", rev, "stale").await,
        None,
        "CAS on an old revision"
    );
    let r = a
        .put(
            "k",
            "p",
            Some(etcd_client::PutOptions::new().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(r.prev_key().unwrap().value(), b"q");
    b.delete("x0", None).await.unwrap();
    assert!(
        create(&mut a, "x0", "again").await,
        "x0 was deleted elsewhere"
    );
    let got = b.get("x0", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"again");
    // y, and x0's create (what the first process knew of x0 had changed).
    assert!(failed(pm).await >= 2);
    eprintln!(
        "assumed batches on {}: {assumed} of 31 alone; stale {}",
        target.name(),
        batches(pm, "stale").await
    );
}

/// Single-key reads that wait for a free statement are answered together
/// (`etcdsql_gathered_read_keys`), each as a read of its own: the key's
/// latest version when the read was sent or a later one, absent keys
/// absent, and no reader seeing the revision go back.
async fn gathered_reads(target: Target) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

    const FIXED: usize = 40;
    const HOT: usize = 8;
    let db = TestDb::create(target).await.unwrap();
    let (p, pm) = with_metrics(&db).await;
    let mut c = p.client().await.unwrap();
    let mut fixed = Vec::new();
    for i in 0..FIXED {
        let r = c
            .put(format!("/g/fixed/{i}"), format!("v{i}"), None)
            .await
            .unwrap();
        fixed.push(r.header().unwrap().revision());
    }
    let fixed = Arc::new(fixed);
    // The highest value acknowledged for each hot key.
    let acked: Arc<Vec<AtomicI64>> = Arc::new((0..HOT).map(|_| AtomicI64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (mut c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
        async move {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                for (j, a) in acked.iter().enumerate() {
                    c.put(format!("/g/hot/{j}"), n.to_string(), None)
                        .await
                        .unwrap();
                    a.store(n, Ordering::Release);
                }
            }
            n
        }
    });
    let readers: Vec<_> = (0..64)
        .map(|r| {
            let (mut c, fixed, acked) = (c.clone(), fixed.clone(), acked.clone());
            tokio::spawn(async move {
                let mut last = 0;
                for step in 0..100usize {
                    let pick = (r * 7 + step * 13) % (FIXED + HOT + 8);
                    let (key, before) = if pick < FIXED {
                        (format!("/g/fixed/{pick}"), 0)
                    } else if pick < FIXED + HOT {
                        let j = pick - FIXED;
                        (format!("/g/hot/{j}"), acked[j].load(Ordering::Acquire))
                    } else {
                        (format!("/g/absent/{pick}"), 0)
                    };
                    let keys_only = step % 5 == 0;
                    let opts = keys_only.then(|| etcd_client::GetOptions::new().with_keys_only());
                    let got = c.get(key.as_str(), opts).await.unwrap();
                    let rev = got.header().unwrap().revision();
                    assert!(rev >= last, "{key}: revision {rev} after {last}");
                    last = rev;
                    let kv = got.kvs().first();
                    if pick < FIXED {
                        let kv = kv.unwrap_or_else(|| panic!("{key} missing"));
                        assert_eq!(got.count(), 1);
                        assert_eq!(kv.mod_revision(), fixed[pick], "{key}");
                        let want = if keys_only {
                            String::new()
                        } else {
                            format!("v{pick}")
                        };
                        assert_eq!(kv.value_str().unwrap(), want, "{key}");
                        assert!(rev >= kv.mod_revision());
                    } else if pick < FIXED + HOT {
                        if before > 0 {
                            let kv = kv.unwrap_or_else(|| panic!("{key} missing"));
                            assert!(rev >= kv.mod_revision());
                            if !keys_only {
                                let n: i64 = kv.value_str().unwrap().parse().unwrap();
                                assert!(
                                    n >= before,
                                    "{key}: read {n} after {before} was acknowledged"
                                );
                            }
                        }
                    } else {
                        assert!(kv.is_none(), "{key} exists");
                        assert_eq!(got.count(), 0);
                    }
                }
            })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
    stop.store(true, Ordering::Release);
    let rounds = writer.await.unwrap();
    let gathered =
        etcdsql_integration::metric_sum(&scrape(pm).await, "etcdsql_gathered_read_keys_count");
    eprintln!(
        "gathered reads on {}: {gathered} statements for waiting reads; {rounds} write rounds",
        target.name()
    );
    assert!(gathered > 0.0, "no reads were gathered");
    c.put("/g/done", "1", None).await.unwrap();
}

/// Puts of keys the committer does not know, sent while a batch commits,
/// have their keys read meanwhile (`etcdsql_read_ahead_keys_total`) and
/// the next batch assumes them. Every put still sees its key's previous
/// version, also while another process writes the same keys: for each
/// key, the previous versions the puts answered are 1, 2, … n, with no
/// gap and no repeat, and the key ends at version n + 1.
async fn read_ahead(target: Target) {
    use std::collections::BTreeMap;

    const KEYS: usize = 200;
    const CLIENTS: usize = 48;
    const PUTS: usize = 40;
    let db = TestDb::create(target).await.unwrap();
    let (p, pm) = with_metrics(&db).await;
    let q = Process::etcdsql(bin(), &db.dsn).await.unwrap();
    let (a, mut b) = (p.client().await.unwrap(), q.client().await.unwrap());
    // Written by the other process, so that the first knows none of them.
    let mut created = Vec::new();
    for i in 0..KEYS {
        let r = b.put(format!("/ra/{i}"), "0", None).await.unwrap();
        created.push(r.header().unwrap().revision());
    }
    let run = |c: Client, client: usize| async move {
        let mut c = c;
        let mut seen = Vec::new();
        for step in 0..PUTS {
            let k = (client * 37 + step * 101 + step * step) % KEYS;
            let r = c
                .put(
                    format!("/ra/{k}"),
                    format!("{client}.{step}"),
                    Some(etcd_client::PutOptions::new().with_prev_key()),
                )
                .await
                .unwrap();
            let prev = r
                .prev_key()
                .unwrap_or_else(|| panic!("/ra/{k}: no prev_kv"));
            assert!(prev.mod_revision() < r.header().unwrap().revision());
            seen.push((k, prev.version(), prev.create_revision()));
        }
        seen
    };
    // First the one process alone, then both at once.
    let mut seen = Vec::new();
    for round in 0..2 {
        let mut tasks: Vec<_> = (0..CLIENTS)
            .map(|i| tokio::spawn(run(a.clone(), round * CLIENTS + i)))
            .collect();
        if round == 1 {
            tasks.extend((0..8).map(|i| tokio::spawn(run(b.clone(), 1000 + i))));
        }
        for t in tasks {
            seen.extend(t.await.unwrap());
        }
        if round == 0 {
            let used = etcdsql_integration::metric_sum(
                &scrape(pm).await,
                "etcdsql_read_ahead_keys_total{result=\"used\"}",
            );
            assert!(used > 0.0, "no keys were read ahead");
            assert!(batches(pm, "assumed").await > 0, "no batch assumed");
        }
    }
    let mut versions: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    for (k, version, create) in seen {
        assert_eq!(create, created[k], "/ra/{k}: create_revision");
        versions.entry(k).or_default().push(version);
    }
    for (k, mut v) in versions {
        v.sort_unstable();
        let n = i64::try_from(v.len()).unwrap();
        assert_eq!(v, (1..=n).collect::<Vec<_>>(), "/ra/{k}: previous versions");
        let got = b.get(format!("/ra/{k}"), None).await.unwrap();
        assert_eq!(got.kvs()[0].version(), n + 1, "/ra/{k}: version");
        assert_eq!(got.kvs()[0].create_revision(), created[k]);
    }
    let text = scrape(pm).await;
    eprintln!(
        "read ahead on {}: {} keys used, {} dropped; {} batches assumed, {} read first",
        target.name(),
        etcdsql_integration::metric_sum(&text, "etcdsql_read_ahead_keys_total{result=\"used\"}"),
        etcdsql_integration::metric_sum(&text, "etcdsql_read_ahead_keys_total{result=\"dropped\"}"),
        batches(pm, "assumed").await,
        batches(pm, "read").await,
    );
}

/// Puts and keep-alives with a lease the committer has seen to exist
/// assume it (one round trip), and the database checks it at the commit: a
/// lease revoked by another process, with keys or without (no new
/// revision), fails the put with etcd's error and the put writes nothing;
/// a keep-alive answers the lease's TTL now, and 0 once it has expired.
async fn lease_puts(target: Target) {
    use etcd_client::PutOptions;

    let db = TestDb::create(target).await.unwrap();
    let (p, pm) = with_metrics(&db).await;
    let q = Process::etcdsql(bin(), &db.dsn).await.unwrap();
    let (mut a, mut b) = (p.client().await.unwrap(), q.client().await.unwrap());
    let held = a.lease_grant(600, None).await.unwrap().id();
    // Keys the committer then knows, first without the lease.
    for i in 0..5 {
        a.put(format!("/lp/{i}"), "v", None).await.unwrap();
    }
    let before = batches(pm, "assumed").await;
    for i in 0..20 {
        let key = format!("/lp/{}", i % 5);
        a.put(key, i.to_string(), Some(PutOptions::new().with_lease(held)))
            .await
            .unwrap();
    }
    let assumed = batches(pm, "assumed").await - before;
    assert!(assumed >= 15, "{assumed} of 20 puts with a lease assumed");
    let ttl = a
        .lease_time_to_live(
            held,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert_eq!(ttl.keys().len(), 5, "keys attached to the lease");

    let not_found = |e: etcd_client::Error, what: &str| match e {
        etcd_client::Error::GRpcStatus(s) => {
            assert_eq!(s.code(), tonic::Code::NotFound, "{what}: {s:?}");
            assert_eq!(
                s.message(),
                "etcdserver: requested lease not found",
                "{what}"
            );
        }
        e => panic!("{what}: {e:?}"),
    };
    // Revoked elsewhere while it holds no key: the revision stays.
    let empty = a.lease_grant(600, None).await.unwrap().id();
    a.put("/lp/seen", "v", None).await.unwrap();
    let rev = b
        .get("/lp/seen", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    b.lease_revoke(empty).await.unwrap();
    let stale = batches(pm, "stale").await;
    // A key it knows, so that the put assumes.
    let e = a
        .put("/lp/seen", "x", Some(PutOptions::new().with_lease(empty)))
        .await
        .unwrap_err();
    not_found(e, "a put with a lease revoked elsewhere");
    let seen = a.get("/lp/seen", None).await.unwrap();
    assert_eq!(seen.kvs()[0].value(), b"v", "the failed put wrote /lp/seen");
    assert_eq!(seen.kvs()[0].lease(), 0);
    assert_eq!(
        seen.header().unwrap().revision(),
        rev,
        "a failed put changed the revision"
    );
    assert!(
        batches(pm, "stale").await > stale,
        "the put did not assume the lease"
    );
    eprintln!("lease puts on {}: {assumed} of 20 assumed", target.name());
    // Revoked elsewhere with its keys: they are gone, and a put fails.
    b.lease_revoke(held).await.unwrap();
    let e = a
        .put("/lp/y", "v", Some(PutOptions::new().with_lease(held)))
        .await
        .unwrap_err();
    not_found(e, "a put with a lease revoked with its keys");
    let left = a
        .get("/lp/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let names: Vec<&[u8]> = left.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(names, [b"/lp/seen".as_slice()], "keys left under /lp/");
    // A lease granted elsewhere is read once, then assumed.
    let other = b.lease_grant(600, None).await.unwrap().id();
    let before = batches(pm, "assumed").await;
    for i in 0..5 {
        a.put(
            "/lp/seen",
            i.to_string(),
            Some(PutOptions::new().with_lease(other)),
        )
        .await
        .unwrap();
    }
    let assumed = batches(pm, "assumed").await - before;
    assert!(
        assumed >= 3,
        "{assumed} of 5 puts with another's lease assumed"
    );
    let ttl = b
        .lease_time_to_live(
            other,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert_eq!(ttl.keys(), [b"/lp/seen".to_vec()]);

    // Keep-alives assume the lease and its TTL too, and answer the TTL the
    // lease has: revoked elsewhere and granted again under its id with
    // another TTL (no key, so no new revision), then revoked for good.
    let kept = a.lease_grant(60, None).await.unwrap().id();
    let mut renewals = Renewals::start(&mut a, kept).await;
    let before = batches(pm, "assumed").await;
    for _ in 0..10 {
        assert_eq!(renewals.ttl().await, 60);
    }
    let assumed = batches(pm, "assumed").await - before;
    assert!(assumed >= 8, "{assumed} of 10 keep-alives assumed");
    b.lease_revoke(kept).await.unwrap();
    b.lease_grant(
        30,
        Some(etcd_client::LeaseGrantOptions::new().with_id(kept)),
    )
    .await
    .unwrap();
    assert_eq!(
        renewals.ttl().await,
        30,
        "the TTL of the lease granted again"
    );
    assert_eq!(renewals.ttl().await, 30);
    b.lease_revoke(kept).await.unwrap();
    assert_eq!(renewals.ttl().await, 0, "a revoked lease's keep-alive");

    // As etcd: an expired lease is not renewed, even before it is revoked
    // (each process looks for expired leases every 500 ms). Its expiry set
    // in the past behind the processes' backs, no new revision: the
    // keep-alive that follows answers TTL 0, and the lease and its key go.
    let late = a.lease_grant(60, None).await.unwrap().id();
    a.put("/lp/late", "v", Some(PutOptions::new().with_lease(late)))
        .await
        .unwrap();
    let mut renewals = Renewals::start(&mut a, late).await;
    assert_eq!(renewals.ttl().await, 60);
    etcdsql_integration::admin_sql(
        target,
        &db.dsn,
        &format!("UPDATE etcdsql_lease SET expires_at_ms = 1 WHERE id = {late}"),
    )
    .await
    .unwrap();
    assert_eq!(renewals.ttl().await, 0, "an expired lease's keep-alive");
    crate::wait_gone(&mut a, "/lp/late", std::time::Duration::from_secs(10)).await;
    assert_eq!(renewals.ttl().await, 0, "the revoked lease's keep-alive");
}

/// Reads all of /rc/ (keys only), checks its count is the keys it
/// answered, and answers its revision.
async fn counted_exactly(c: &mut Client) -> i64 {
    let whole = c
        .get(
            "/rc/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .unwrap();
    let n = i64::try_from(whole.kvs().len()).unwrap();
    assert_eq!(whole.count(), n, "count against the keys it answered");
    whole.header().unwrap().revision()
}

/// A whole range's count at the latest revision comes from an earlier
/// count and the watch hub's events since (`etcdsql_range_counts_total`),
/// and is exact: while two processes create, update and delete keys in it
/// (puts, multi-key transactions, a DeleteRange, a lease revoked), every
/// keys-only Range over it answers as many keys as it counts.
async fn range_counts(target: Target) {
    use etcd_client::{DeleteOptions, GetOptions, PutOptions};

    let db = TestDb::create(target).await.unwrap();
    let (p, pm) = with_metrics(&db).await;
    // SQLite serves one process.
    let q = if target == Target::Sqlite {
        None
    } else {
        Some(Process::etcdsql(bin(), &db.dsn).await.unwrap())
    };
    let mut a = p.client().await.unwrap();
    let mut b = match &q {
        Some(q) => q.client().await.unwrap(),
        None => a.clone(),
    };
    for i in 0..100 {
        a.put(format!("/rc/{i:03}"), "x", None).await.unwrap();
    }
    let writer = |mut c: Client, seed: usize| async move {
        for step in 0..60usize {
            let i = (seed * 31 + step * 17) % 150;
            let key = format!("/rc/{i:03}");
            match step % 6 {
                0 | 1 => {
                    c.put(key, step.to_string(), None).await.unwrap();
                }
                2 => {
                    c.delete(key, None).await.unwrap();
                }
                3 => {
                    let ops: Vec<TxnOp> = (0..3)
                        .map(|j| TxnOp::put(format!("/rc/t{seed}-{step}-{j}"), "t", None))
                        .collect();
                    c.txn(Txn::new().and_then(ops)).await.unwrap();
                }
                4 => {
                    let from = format!("/rc/t{seed}-{}", step.saturating_sub(1));
                    c.delete(from.as_str(), Some(DeleteOptions::new().with_prefix()))
                        .await
                        .unwrap();
                }
                _ => {
                    let lease = c.lease_grant(60, None).await.unwrap().id();
                    for j in 0..2 {
                        c.put(
                            format!("/rc/l{seed}-{step}-{j}"),
                            "l",
                            Some(PutOptions::new().with_lease(lease)),
                        )
                        .await
                        .unwrap();
                    }
                    c.lease_revoke(lease).await.unwrap();
                }
            }
        }
    };
    let check = |mut c: Client| async move {
        for _ in 0..80 {
            counted_exactly(&mut c).await;
            // kube-apiserver's read of the current revision.
            let one = c
                .get("/rc/", Some(GetOptions::new().with_prefix().with_limit(1)))
                .await
                .unwrap();
            assert!(one.count() >= 1);
            assert_eq!(one.more(), one.count() > 1);
        }
    };
    let tasks = vec![
        tokio::spawn(writer(a.clone(), 1)),
        tokio::spawn(writer(b.clone(), 2)),
        tokio::spawn(check(a.clone())),
        tokio::spawn(check(b.clone())),
    ];
    for t in tasks {
        t.await.unwrap();
    }
    // Settled: both processes count what the database holds.
    let end = a.put("/rc/end", "1", None).await.unwrap();
    let rev = end.header().unwrap().revision();
    for c in [&mut a, &mut b] {
        assert!(counted_exactly(c).await >= rev);
    }
    let text = scrape(pm).await;
    let kept =
        etcdsql_integration::metric_sum(&text, "etcdsql_range_counts_total{source=\"kept\"}");
    let counted =
        etcdsql_integration::metric_sum(&text, "etcdsql_range_counts_total{source=\"counted\"}");
    eprintln!(
        "range counts on {}: {kept} kept from the hub's events, {} counted again",
        target.name(),
        counted + 0.0
    );
    assert!(kept > 0.0, "no count was kept");
}

/// Every backend, and those a second process can share.
const EVERY: &[Target] = &[
    Target::Sqlite,
    Target::Postgres,
    Target::Mariadb,
    Target::Galera,
    Target::Tidb,
    Target::Cockroach,
];
const SERVERS: &[Target] = &[
    Target::Postgres,
    Target::Mariadb,
    Target::Galera,
    Target::Tidb,
    Target::Cockroach,
];

pub fn cases() -> Vec<Case> {
    vec![
        case!("endpoint", &[Target::Sqlite], metrics_endpoint),
        case!("gathered_reads", EVERY, gathered_reads),
        case!("assumed_batches", SERVERS, assumed_batches),
        case!("read_ahead", SERVERS, read_ahead),
        case!("lease_puts", SERVERS, lease_puts),
        case!("range_counts", EVERY, range_counts),
    ]
}
