//! Faults: an etcdsql process killed with SIGKILL during concurrent writes
//! loses nothing it acknowledged, and revisions stay gapless; garbage on
//! the gRPC port leaves the server serving.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::GetOptions;
use etcdsql_integration::{Process, Target, TestDb};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::{Case, bin, case};

const CLIENTS: usize = 64;
const WRITES: usize = 10_000;

async fn kill_during_writes(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let mut p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut client = p.client().await.unwrap();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..WRITES / CLIENTS {
                let key = format!("/f/{c:02}/{n:05}");
                match client.put(key.clone(), n.to_string(), None).await {
                    Ok(r) => acked
                        .lock()
                        .await
                        .push((key, r.header().unwrap().revision())),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once a good part of the writes is acknowledged.
    while acked.lock().await.len() < WRITES / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    p.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().await.clone();

    let p2 = Process::etcdsql(bin(), &db.dsn)
        .await
        .expect("restarted etcdsql");
    let mut c = p2.client().await.unwrap();
    for (key, rev) in &acked {
        let r = c.get(key.as_str(), None).await.unwrap();
        let kv = r
            .kvs()
            .first()
            .unwrap_or_else(|| panic!("acknowledged {key} lost"));
        assert_eq!(
            kv.mod_revision(),
            *rev,
            "{key} has the revision it was acknowledged with"
        );
    }
    let all = c
        .get(
            "/f/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    // Every applied write created one key in one revision: no gaps.
    assert_eq!(
        all.header().unwrap().revision(),
        1 + all.count(),
        "revisions are gapless"
    );
    let mut revs: Vec<i64> = all.kvs().iter().map(|kv| kv.mod_revision()).collect();
    revs.sort();
    assert!(
        revs.iter().zip(2i64..).all(|(r, want)| *r == want),
        "revisions 2..=n, each once"
    );
    c.put("/f/after", "restart", None)
        .await
        .expect("writes after the restart");
    eprintln!(
        "kill -9 on {}: {} acknowledged before the kill, all present with their revisions; {} applied in all, gapless",
        target.name(),
        acked.len(),
        all.count()
    );
}

async fn garbage_on_the_grpc_port(target: Target) {
    let db = TestDb::create(target).await.unwrap();
    let p = Process::etcdsql(bin(), &db.dsn).await.unwrap();
    let noise: Vec<u8> = (0..16_384u32)
        .map(|i| u8::try_from(i.wrapping_mul(2_654_435_761) >> 24).unwrap_or(0))
        .collect();
    let payloads: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &noise,
        // HTTP/2 preface, then a frame header announcing 16 MiB of nothing
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\x00\x00\x00\x00\x00\x01",
        b"",
    ];
    for bytes in payloads {
        let mut s = tokio::net::TcpStream::connect(p.endpoint.as_str())
            .await
            .unwrap();
        let _ = s.write_all(bytes).await;
        let _ = s.shutdown().await;
    }
    let mut c = p.client().await.unwrap();
    c.put("still", "serving", None)
        .await
        .expect("put after garbage");
    let r = c.get("still", None).await.unwrap();
    assert_eq!(r.kvs()[0].value_str().unwrap(), "serving");
    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(all.count(), 1, "garbage wrote nothing");
}

pub fn cases() -> Vec<Case> {
    vec![
        case!("kill_during_writes", &Target::ETCDSQL, kill_during_writes),
        case!(
            "garbage_on_the_grpc_port",
            &[Target::Sqlite],
            garbage_on_the_grpc_port
        ),
    ]
}
