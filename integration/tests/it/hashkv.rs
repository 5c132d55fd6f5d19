//! HashKV: the same history gives etcd's hash, before and after a
//! compaction, at the latest revision and at past ones.

use etcd_client::{
    Client, CompactionOptions, DeleteOptions, LeaseGrantOptions, PutOptions, Txn, TxnOp,
};
use etcdsql_integration::{Started, Target};

use crate::{Case, bin, case};

/// Writes the same history on any server; answers HashKV's (hash, compact
/// revision) at each revision asked, and the answers of a compacted one.
async fn script(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    let mut hash = |label: &str, r: Result<etcd_client::HashKvResponse, etcd_client::Error>| {
        out.push(match r {
            Ok(h) => format!("{label}: hash={} compact={}", h.hash(), h.compact_version()),
            Err(e) => format!("{label}: error {e}"),
        });
    };
    for i in 0..5 {
        c.put(format!("h/{i}"), format!("v{i}"), None)
            .await
            .unwrap(); // 2..=6
    }
    c.put("h/0", "again", None).await.unwrap(); // 7
    c.delete("h/1", None).await.unwrap(); // 8
    c.txn(Txn::new().and_then([
        TxnOp::put("h/5", "a", None),
        TxnOp::put("h/6", "b", None),
        TxnOp::delete("h/2", None),
    ]))
    .await
    .unwrap(); // 9
    // A fixed id: servers choose different ones, and the id is hashed.
    let lease = c
        .lease_grant(600, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .unwrap()
        .id();
    c.put("h/l", "leased", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap(); // 10
    hash("latest", c.hash_kv(0).await);
    hash("at 7", c.hash_kv(7).await);
    hash("future", c.hash_kv(99).await);
    hash("negative", c.hash_kv(-1).await);
    c.compact(8, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    hash("compacted, latest", c.hash_kv(0).await);
    hash("compacted, at 9", c.hash_kv(9).await);
    hash("compacted, at 8", c.hash_kv(8).await);
    hash("compacted, negative", c.hash_kv(-3).await);
    c.put("h/3", "later", None).await.unwrap(); // 11
    c.delete("h/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap(); // 12
    hash("all deleted", c.hash_kv(0).await);
    hash("all deleted, at 11", c.hash_kv(11).await);
    c.compact(12, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    hash("all deleted and compacted", c.hash_kv(0).await);
    out
}

async fn same_as_etcd(target: Target) {
    if !Target::Etcd.available() {
        return;
    }
    let etcd = Started::new(Target::Etcd, bin()).await.expect("etcd");
    let ours = Started::new(target, bin()).await.expect("etcdsql");
    let want = script(&mut etcd.server.client().await.expect("client")).await;
    let got = script(&mut ours.server.client().await.expect("client")).await;
    assert_eq!(
        got,
        want,
        "HashKV on {} differs from etcd 3.4",
        target.name()
    );
    assert!(want[0].starts_with("latest: hash="), "{want:?}");
    eprintln!(
        "HashKV on {}: {} answers equal to etcd 3.4's",
        target.name(),
        want.len()
    );
}

pub fn cases() -> Vec<Case> {
    vec![case!(
        "same_as_etcd",
        &[Target::Sqlite, Target::Postgres, Target::Mariadb],
        same_as_etcd
    )]
}
