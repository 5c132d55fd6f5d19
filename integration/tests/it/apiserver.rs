//! The request shapes kube-apiserver's etcd3 storage sends, replayed
//! against etcd 3.4 and etcdsql; the transcripts must be identical.
//! LIST pages are pinned to the first page's revision while objects are
//! created, updated and deleted between pages.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};
use etcdsql_integration::{Reference, Started, Target, normalize};

use crate::{Case, bin, case};

const PREFIX: &str = "/registry/configmaps/";
const OBJECTS: usize = 1200;
const PAGE: i64 = 500;

fn key(i: usize) -> String {
    format!("{PREFIX}ns{}/cm-{i:05}", i % 3)
}

/// The end of a prefix range, as clientv3.GetPrefixRangeEnd computes it.
fn prefix_end(p: &str) -> Vec<u8> {
    let mut end = p.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

async fn create(c: &mut Client, k: &str, v: &str) -> String {
    let t = Txn::new()
        .when([Compare::mod_revision(k, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(k, v, None)]);
    normalize(&format!("{:?}", c.txn(t).await.unwrap()))
}

async fn update(c: &mut Client, k: &str, rev: i64, v: &str) -> String {
    let t = Txn::new()
        .when([Compare::mod_revision(k, CompareOp::Equal, rev)])
        .and_then([TxnOp::put(k, v, None)])
        .or_else([TxnOp::get(k, None)]);
    normalize(&format!("{:?}", c.txn(t).await.unwrap()))
}

async fn delete(c: &mut Client, k: &str, rev: i64) -> String {
    let t = Txn::new()
        .when([Compare::mod_revision(k, CompareOp::Equal, rev)])
        .and_then([TxnOp::delete(k, None)])
        .or_else([TxnOp::get(k, None)]);
    normalize(&format!("{:?}", c.txn(t).await.unwrap()))
}

/// Keys and mod revisions of one LIST page, and where the next starts.
fn page_digest(r: &etcd_client::GetResponse) -> String {
    let kvs: Vec<String> = r
        .kvs()
        .iter()
        .map(|kv| {
            format!(
                "{}@{}",
                String::from_utf8_lossy(kv.key()),
                kv.mod_revision()
            )
        })
        .collect();
    format!(
        "page rev={} count={} more={} n={} first={:?} last={:?} digest={:x}",
        r.header().unwrap().revision(),
        r.count(),
        r.more(),
        kvs.len(),
        kvs.first(),
        kvs.last(),
        kvs.iter().fold(0u64, |h, s| s
            .bytes()
            .fold(h, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))))
    )
}

async fn script(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    // health check
    out.push(normalize(&format!(
        "{:?}",
        c.get("/registry/health", None).await.unwrap()
    )));
    // creates, and a create that finds the key
    for i in 0..OBJECTS {
        let r = create(c, &key(i), &format!("v{i}")).await;
        if i < 3 {
            out.push(r);
        }
    }
    out.push(create(c, &key(0), "again").await);
    // GET = range limit 1
    let got = c
        .get(key(7), Some(GetOptions::new().with_limit(1)))
        .await
        .unwrap();
    out.push(normalize(&format!("{got:?}")));
    let rev7 = got.kvs()[0].mod_revision();
    // update at the right and at a stale revision; delete likewise
    out.push(update(c, &key(7), rev7, "v7b").await);
    out.push(update(c, &key(7), rev7, "v7c").await);
    let rev8 = c.get(key(8), None).await.unwrap().kvs()[0].mod_revision();
    out.push(delete(c, &key(8), rev8 + 100).await);
    out.push(delete(c, &key(8), rev8).await);
    // count-only, as for the object-count metric
    let count = c
        .get(
            PREFIX,
            Some(
                GetOptions::new()
                    .with_range(prefix_end(PREFIX))
                    .with_count_only(),
            ),
        )
        .await
        .unwrap();
    out.push(normalize(&format!("{count:?}")));

    // LIST in pages pinned to the first page's revision, with writes between pages
    let first = c
        .get(
            PREFIX,
            Some(
                GetOptions::new()
                    .with_range(prefix_end(PREFIX))
                    .with_limit(PAGE),
            ),
        )
        .await
        .unwrap();
    out.push(page_digest(&first));
    let pinned = first.header().unwrap().revision();
    let mut last = first.kvs().last().unwrap().key().to_vec();
    let mut more = first.more();
    let mut changes = 0;
    while more {
        // Between pages: an update, a delete and a create, all after `pinned`.
        let i = 600 + changes * 7;
        let r = c.get(key(i), None).await.unwrap().kvs()[0].mod_revision();
        update(c, &key(i), r, "changed").await;
        let r = c.get(key(i + 1), None).await.unwrap().kvs()[0].mod_revision();
        delete(c, &key(i + 1), r).await;
        create(c, &format!("{PREFIX}ns1/new-{changes}"), "new").await;
        changes += 1;
        let mut from = last.clone();
        from.push(0);
        let page = c
            .get(
                from,
                Some(
                    GetOptions::new()
                        .with_range(prefix_end(PREFIX))
                        .with_limit(PAGE)
                        .with_revision(pinned),
                ),
            )
            .await
            .unwrap();
        out.push(page_digest(&page));
        last = page.kvs().last().unwrap().key().to_vec();
        more = page.more();
    }

    // watch from rv+1 with prev_kv and progress_notify, then RequestProgress
    let mut ws = c
        .watch(
            PREFIX,
            Some(
                WatchOptions::new()
                    .with_range(prefix_end(PREFIX))
                    .with_start_revision(pinned + 1)
                    .with_prev_key()
                    .with_progress_notify(),
            ),
        )
        .await
        .unwrap();
    let mut events = Vec::new();
    let mut progress = None;
    ws.request_progress().await.unwrap();
    while let Ok(Ok(Some(r))) = tokio::time::timeout(Duration::from_millis(500), ws.message()).await
    {
        for e in r.events() {
            let kv = e.kv().unwrap();
            events.push(format!(
                "{:?} {} {} prev={:?}",
                e.event_type(),
                String::from_utf8_lossy(kv.key()),
                kv.mod_revision(),
                e.prev_kv().map(|p| p.mod_revision())
            ));
        }
        if r.watch_id() == -1 {
            progress = r.header().map(|h| h.revision());
        }
    }
    out.push(format!("watch events: {}", events.join("; ")));
    out.push(format!("progress at {progress:?}"));

    // the compaction loop: CAS on compact_rev_key, then Compact
    let current = c.get("compact_rev_key", None).await.unwrap();
    out.push(normalize(&format!("{current:?}")));
    let t = Txn::new()
        .when([Compare::version("compact_rev_key", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("compact_rev_key", pinned.to_string(), None)])
        .or_else([TxnOp::get("compact_rev_key", None)]);
    out.push(normalize(&format!("{:?}", c.txn(t).await.unwrap())));
    out.push(normalize(&format!(
        "{:?}",
        c.compact(pinned, None).await.unwrap()
    )));
    let below = c
        .get(
            PREFIX,
            Some(
                GetOptions::new()
                    .with_range(prefix_end(PREFIX))
                    .with_limit(1)
                    .with_revision(pinned - 1),
            ),
        )
        .await;
    out.push(format!("{:?}", below.err().map(|e| e.to_string())));
    out
}

async fn transcript(target: Target) -> Vec<String> {
    let s = Started::new(target, bin()).await.expect("start");
    let mut c = s.server.client().await.expect("client");
    script(&mut c).await
}

static REFERENCE: Reference = Reference::new();

async fn check(target: Target) {
    let got = transcript(target).await;
    let pages = got.iter().filter(|l| l.starts_with("page rev=")).count();
    assert_eq!(pages, 3, "{OBJECTS} objects in pages of {PAGE}: {got:#?}");
    // 1200 creates (revisions 2..=1201), an update (1202), a delete (1203):
    // 1199 objects at revision 1203, each page counting the rest of the range
    // at that revision; two rounds of three writes between pages move the
    // current revision to 1209.
    assert!(
        got.iter()
            .any(|l| l.starts_with("page rev=1203 count=1199 more=true n=500")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|l| l.starts_with("page rev=1206 count=699 more=true n=500")),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .any(|l| l.starts_with("page rev=1209 count=199 more=false n=199")),
        "{got:#?}"
    );
    assert!(
        got.iter().any(|l| l == "progress at Some(1209)"),
        "{got:#?}"
    );
    let want = REFERENCE.get(transcript).await;
    if let Some(want) = want {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g, w, "step {i} on {} differs from etcd 3.4", target.name());
        }
        assert_eq!(got.len(), want.len());
    }
    eprintln!(
        "apiserver shapes on {}: {} steps{}",
        target.name(),
        got.len(),
        if want.is_some() {
            ", identical to etcd 3.4"
        } else {
            ""
        }
    );
}

pub fn cases() -> Vec<Case> {
    vec![case!("shapes", &Target::ETCDSQL, check)]
}
