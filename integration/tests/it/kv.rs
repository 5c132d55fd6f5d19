//! The KV contract as one table of steps, run on a fresh etcd 3.4 and on
//! a fresh etcdsql per backend; every response (values, revisions, counts,
//! `more`, errors) must equal etcd's. Each step also names fragments its
//! answer must contain, so the table checks semantics even where etcd is
//! not installed.

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use etcdsql_integration::{
    Reference, Started, Target, free_port, metric_sum, normalize, scrape_metrics,
};

use crate::{Case, bin, case};

#[derive(Clone)]
pub(crate) enum Op {
    Put(&'static str, Vec<u8>, Option<PutOptions>),
    Get(&'static str, Option<GetOptions>),
    Del(&'static str, Option<DeleteOptions>),
    Txn(Txn),
    Compact(i64, bool),
    Grant(i64, i64),
    Revoke(i64),
    TimeToLive(i64),
}

struct Step {
    name: &'static str,
    op: Op,
    /// Fragments the normalized answer must contain.
    expect: &'static [&'static str],
}

fn step(name: &'static str, op: Op, expect: &'static [&'static str]) -> Step {
    Step { name, op, expect }
}

fn put(k: &'static str, v: &str) -> Op {
    Op::Put(k, v.as_bytes().to_vec(), None)
}

fn get(k: &'static str, o: GetOptions) -> Op {
    Op::Get(k, Some(o))
}

fn txn(t: Txn) -> Op {
    Op::Txn(t)
}

fn prefix() -> GetOptions {
    GetOptions::new().with_prefix()
}

/// The table. Revisions in comments are what etcd assigns.
fn script() -> Vec<Step> {
    use CompareOp::{Equal, Greater, Less, NotEqual};
    vec![
        // -- Put and single-key Range
        step(
            "compact at 0 on a new store",
            Op::Compact(0, false),
            &["revision: 1"],
        ),
        step(
            "compact at 0 again",
            Op::Compact(0, false),
            &["required revision has been compacted"],
        ),
        step("put a", put("k/a", "1"), &["revision: 2"]), // rev 2
        step("put b", put("k/b", "2"), &["revision: 3"]), // rev 3
        step("put c", put("k/c", "3"), &["revision: 4"]), // rev 4
        step(
            "put a again with prev_kv",
            Op::Put(
                "k/a",
                b"11".to_vec(),
                Some(PutOptions::new().with_prev_key()),
            ), // rev 5
            &[
                "revision: 5",
                "prev_kv: Some(KeyValue { key: [107, 47, 97], create_revision: 2, mod_revision: 2, version: 1, value: [49]",
            ],
        ),
        step(
            "get a",
            Op::Get("k/a", None),
            &[
                "create_revision: 2, mod_revision: 5, version: 2",
                "count: 1",
            ],
        ),
        step(
            "get missing",
            Op::Get("k/zzz", None),
            &["kvs: [], more: false, count: 0"],
        ),
        step(
            "get a at rev 2",
            get("k/a", GetOptions::new().with_revision(2)),
            &["value: [49]"],
        ),
        step(
            "get a at rev 1 (before it existed)",
            get("k/a", GetOptions::new().with_revision(1)),
            &["count: 0"],
        ),
        step(
            "get a at a future rev",
            get("k/a", GetOptions::new().with_revision(99)),
            &["OutOfRange", "required revision is a future revision"],
        ),
        step(
            "get serializable",
            get("k/b", GetOptions::new().with_serializable()),
            &["value: [50]"],
        ),
        // -- ranges
        step("get prefix", get("k/", prefix()), &["count: 3"]),
        step(
            "get range [k/a, k/c)",
            get("k/a", GetOptions::new().with_range("k/c")),
            &["count: 2"],
        ),
        step(
            "get inverted range",
            get("k/c", GetOptions::new().with_range("k/a")),
            &["count: 0"],
        ),
        step(
            "get from key",
            get("k/b", GetOptions::new().with_from_key()),
            &["count: 2"],
        ),
        step(
            "get all keys",
            get("", GetOptions::new().with_all_keys()),
            &["count: 3"],
        ),
        step(
            "get prefix limit 2",
            get("k/", prefix().with_limit(2)),
            &["more: true, count: 3"],
        ),
        step(
            "get prefix limit 3",
            get("k/", prefix().with_limit(3)),
            &["more: false, count: 3"],
        ),
        step(
            "get prefix limit 1 at rev 3",
            get("k/", prefix().with_limit(1).with_revision(3)),
            &["more: true, count: 2"],
        ),
        step(
            "get prefix at rev 4",
            get("k/", prefix().with_revision(4)),
            &["count: 3", "value: [49]"],
        ),
        step(
            "keys only",
            get("k/", prefix().with_keys_only()),
            &["value: []"],
        ),
        step(
            "count only",
            get("k/", prefix().with_count_only()),
            &["kvs: [], more: false, count: 3"],
        ),
        step(
            "count only with limit",
            get("k/", prefix().with_count_only().with_limit(1)),
            &["count: 3"],
        ),
        // -- sorting
        step(
            "sort key descend",
            get(
                "k/",
                prefix().with_sort(SortTarget::Key, SortOrder::Descend),
            ),
            &[],
        ),
        step(
            "sort version ascend",
            get(
                "k/",
                prefix().with_sort(SortTarget::Version, SortOrder::Ascend),
            ),
            &[],
        ),
        step(
            "sort version, no order",
            get(
                "k/",
                prefix().with_sort(SortTarget::Version, SortOrder::None),
            ),
            &[],
        ),
        step(
            "sort create descend",
            get(
                "k/",
                prefix().with_sort(SortTarget::Create, SortOrder::Descend),
            ),
            &[],
        ),
        step(
            "sort mod ascend limit 2",
            get(
                "k/",
                prefix()
                    .with_sort(SortTarget::Mod, SortOrder::Ascend)
                    .with_limit(2),
            ),
            &["more: true"],
        ),
        step(
            "sort value descend",
            get(
                "k/",
                prefix().with_sort(SortTarget::Value, SortOrder::Descend),
            ),
            &[],
        ),
        step(
            "sort mod descend at rev 4",
            get(
                "k/",
                prefix()
                    .with_sort(SortTarget::Mod, SortOrder::Descend)
                    .with_revision(4),
            ),
            &[],
        ),
        // -- revision filters (count stays unfiltered)
        step(
            "min mod revision",
            get("k/", prefix().with_min_mod_revision(4)),
            &["count: 3"],
        ),
        step(
            "max mod revision",
            get("k/", prefix().with_max_mod_revision(3)),
            &["count: 3"],
        ),
        step(
            "min create revision",
            get("k/", prefix().with_min_create_revision(3)),
            &[],
        ),
        step(
            "max create revision limit 1",
            get("k/", prefix().with_max_create_revision(3).with_limit(1)),
            &["more: true"],
        ),
        step(
            "min and max mod, key-only",
            get(
                "k/",
                prefix()
                    .with_min_mod_revision(3)
                    .with_max_mod_revision(4)
                    .with_keys_only(),
            ),
            &[],
        ),
        // -- Put options and their errors
        step(
            "ignore value",
            Op::Put(
                "k/a",
                vec![],
                Some(PutOptions::new().with_ignore_value().with_prev_key()),
            ),
            &["revision: 6"],
        ), // rev 6
        step(
            "get after ignore value",
            Op::Get("k/a", None),
            &["value: [49, 49]", "version: 3"],
        ),
        step(
            "ignore value on a missing key",
            Op::Put(
                "k/none",
                vec![],
                Some(PutOptions::new().with_ignore_value()),
            ),
            &["InvalidArgument", "etcdserver: key not found"],
        ),
        step(
            "ignore value with a value",
            Op::Put(
                "k/a",
                b"x".to_vec(),
                Some(PutOptions::new().with_ignore_value()),
            ),
            &["InvalidArgument", "etcdserver: value is provided"],
        ),
        step(
            "ignore lease with a lease",
            Op::Put(
                "k/a",
                b"x".to_vec(),
                Some(PutOptions::new().with_ignore_lease().with_lease(5)),
            ),
            &["InvalidArgument", "etcdserver: lease is provided"],
        ),
        step(
            "put with an unknown lease",
            Op::Put(
                "k/a",
                b"x".to_vec(),
                Some(PutOptions::new().with_lease(999)),
            ),
            &["NotFound", "etcdserver: requested lease not found"],
        ),
        step(
            "empty key put",
            put("", "x"),
            &["InvalidArgument", "etcdserver: key is not provided"],
        ),
        step(
            "empty key get",
            Op::Get("", None),
            &["InvalidArgument", "etcdserver: key is not provided"],
        ),
        step(
            "empty key delete",
            Op::Del("", None),
            &["InvalidArgument", "etcdserver: key is not provided"],
        ),
        step(
            "request too large",
            Op::Put("k/big", vec![b'x'; 1_600_000], None),
            &["InvalidArgument", "etcdserver: request is too large"],
        ),
        // -- leases
        step("grant lease 100", Op::Grant(100, 60), &["id: 100, ttl: 60"]),
        step(
            "grant lease 100 again",
            Op::Grant(100, 60),
            &["FailedPrecondition", "lease already exists"],
        ),
        step(
            "grant a short lease",
            Op::Grant(101, 1),
            &["id: 101, ttl: 2"],
        ),
        step(
            "put with lease",
            Op::Put(
                "k/l1",
                b"L".to_vec(),
                Some(PutOptions::new().with_lease(100)),
            ),
            &["revision: 7"],
        ), // rev 7
        step(
            "put with lease again",
            Op::Put(
                "k/l2",
                b"L".to_vec(),
                Some(PutOptions::new().with_lease(100)),
            ),
            &[],
        ), // rev 8
        step(
            "ignore lease keeps it",
            Op::Put(
                "k/l1",
                b"M".to_vec(),
                Some(PutOptions::new().with_ignore_lease()),
            ),
            &[],
        ), // rev 9
        step("get lease key", Op::Get("k/l1", None), &["lease: 100"]),
        step(
            "time to live",
            Op::TimeToLive(100),
            &[
                "ttl sign: 1, granted_ttl: 60",
                "keys: [[107, 47, 108, 49], [107, 47, 108, 50]]",
            ],
        ),
        step("revoke lease", Op::Revoke(100), &["revision: 10"]), // rev 10: both keys deleted
        step(
            "keys of revoked lease are gone",
            get("k/l", prefix()),
            &["count: 0"],
        ),
        step(
            "revoke it again",
            Op::Revoke(100),
            &["NotFound", "requested lease not found"],
        ),
        step(
            "time to live of revoked",
            Op::TimeToLive(100),
            &["ttl sign: -1, granted_ttl: 0, keys: []"],
        ),
        // -- DeleteRange
        step("put d1", put("k/d1", "x"), &[]), // rev 11
        step("put d2", put("k/d2", "y"), &[]), // rev 12
        step("put d3", put("k/d3", "z"), &[]), // rev 13
        step(
            "delete one with prev_kv",
            Op::Del("k/d1", Some(DeleteOptions::new().with_prev_key())),
            &["deleted: 1", "revision: 14"],
        ), // rev 14
        step(
            "delete missing",
            Op::Del("k/d1", None),
            &["deleted: 0", "revision: 14"],
        ),
        step(
            "delete range",
            Op::Del("k/d2", Some(DeleteOptions::new().with_range("k/d3"))),
            &["deleted: 1"],
        ), // rev 15
        step(
            "delete prefix with prev_kv",
            Op::Del(
                "k/d",
                Some(DeleteOptions::new().with_prefix().with_prev_key()),
            ),
            &["deleted: 1", "value: [122]"],
        ), // rev 16
        step(
            "deleted key at an old revision",
            get("k/d1", GetOptions::new().with_revision(13)),
            &["value: [120]"],
        ),
        // -- Txn: the apiserver's shapes
        step(
            "create if absent",
            txn(Txn::new()
                .when([Compare::mod_revision("k/new", Equal, 0)])
                .and_then([TxnOp::put("k/new", "v1", None)])
                .or_else([TxnOp::get("k/new", None)])),
            &["succeeded: true", "revision: 17"],
        ), // rev 17
        step(
            "create if absent, again",
            txn(Txn::new()
                .when([Compare::mod_revision("k/new", Equal, 0)])
                .and_then([TxnOp::put("k/new", "v1", None)])
                .or_else([TxnOp::get("k/new", None)])),
            &["succeeded: false", "revision: 17"],
        ),
        step(
            "update at revision",
            txn(Txn::new()
                .when([Compare::mod_revision("k/new", Equal, 17)])
                .and_then([TxnOp::put(
                    "k/new",
                    "v2",
                    Some(PutOptions::new().with_prev_key()),
                )])
                .or_else([TxnOp::get("k/new", None)])),
            &["succeeded: true"],
        ), // rev 18
        step(
            "delete at a stale revision",
            txn(Txn::new()
                .when([Compare::mod_revision("k/new", Equal, 17)])
                .and_then([TxnOp::delete("k/new", None)])
                .or_else([TxnOp::get("k/new", None)])),
            &["succeeded: false"],
        ),
        // -- every compare target and result
        step(
            "version equal",
            txn(Txn::new()
                .when([Compare::version("k/new", Equal, 2)])
                .and_then([TxnOp::get("k/new", None)])),
            &["succeeded: true"],
        ),
        step(
            "version greater",
            txn(Txn::new().when([Compare::version("k/new", Greater, 2)])),
            &["succeeded: false"],
        ),
        step(
            "create less",
            txn(Txn::new().when([Compare::create_revision("k/new", Less, 18)])),
            &["succeeded: true"],
        ),
        step(
            "mod not equal",
            txn(Txn::new().when([Compare::mod_revision("k/new", NotEqual, 18)])),
            &["succeeded: false"],
        ),
        step(
            "value equal",
            txn(Txn::new().when([Compare::value("k/new", Equal, "v2")])),
            &["succeeded: true"],
        ),
        step(
            "value greater",
            txn(Txn::new().when([Compare::value("k/new", Greater, "v1")])),
            &["succeeded: true"],
        ),
        step(
            "value less",
            txn(Txn::new().when([Compare::value("k/new", Less, "v1")])),
            &["succeeded: false"],
        ),
        step(
            "value on a missing key",
            txn(Txn::new().when([Compare::value("k/missing", NotEqual, "x")])),
            &["succeeded: false"],
        ),
        step(
            "version of a missing key",
            txn(Txn::new().when([Compare::version("k/missing", Equal, 0)])),
            &["succeeded: true"],
        ),
        step(
            "lease equal",
            txn(Txn::new().when([Compare::lease("k/new", Equal, 0)])),
            &["succeeded: true"],
        ),
        step(
            "lease greater",
            txn(Txn::new().when([Compare::lease("k/new", Greater, 0)])),
            &["succeeded: false"],
        ),
        step(
            "compare over a prefix",
            txn(Txn::new().when([Compare::version("k/", Greater, 0).with_prefix()])),
            &["succeeded: true"],
        ),
        step(
            "compare over a range, one fails",
            txn(Txn::new().when([Compare::mod_revision("k/a", Less, 5).with_range("k/d")])),
            &["succeeded: false"],
        ),
        step(
            "several compares",
            txn(Txn::new()
                .when([
                    Compare::version("k/a", Equal, 3),
                    Compare::value("k/b", Equal, "2"),
                ])
                .and_then([TxnOp::get("k/b", None)])),
            &["succeeded: true"],
        ),
        // -- mixed ops, nesting, and the response revisions inside
        step(
            "mixed ops",
            txn(Txn::new()
                .when([Compare::version("k/a", Greater, 0)])
                .and_then([
                    TxnOp::get("k/", Some(prefix().with_count_only())),
                    TxnOp::put("k/t1", "x", None),
                    TxnOp::get("k/t", Some(prefix())),
                    TxnOp::delete("k/b", Some(DeleteOptions::new().with_prev_key())),
                    TxnOp::get("k/b", None),
                ])),
            &["succeeded: true", "deleted: 1"],
        ), // rev 19
        step(
            "nested txn",
            txn(Txn::new()
                .when([Compare::version("k/t1", Equal, 1)])
                .and_then([
                    TxnOp::put("k/t2", "y", None),
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::value("k/t1", Equal, "x")])
                            .and_then([TxnOp::put("k/t3", "z", None), TxnOp::get("k/t2", None)])
                            .or_else([TxnOp::put("k/t4", "w", None)]),
                    ),
                ])),
            &["succeeded: true"],
        ), // rev 20
        step("nested txn result", get("k/t", prefix()), &["count: 3"]),
        step(
            "delete range and put elsewhere",
            txn(Txn::new().and_then([
                TxnOp::delete("k/t", Some(DeleteOptions::new().with_prefix())),
                TxnOp::put("k/u", "u", None),
            ])),
            &["deleted: 3"],
        ), // rev 21
        step(
            "read-only txn",
            txn(Txn::new()
                .when([Compare::version("k/u", Equal, 1)])
                .and_then([TxnOp::get("k/", Some(prefix()))])
                .or_else([TxnOp::get("k/a", None)])),
            &["succeeded: true"],
        ),
        step(
            "txn range at a past revision",
            txn(Txn::new().and_then([
                TxnOp::put("k/v", "v", None),
                TxnOp::get("k/t", Some(prefix().with_revision(20))),
            ])),
            &["count: 3"],
        ), // rev 22
        step(
            "txn range at a future revision",
            txn(Txn::new().and_then([
                TxnOp::put("k/v", "w", None),
                TxnOp::get("k/a", Some(GetOptions::new().with_revision(500))),
            ])),
            &["OutOfRange"],
        ),
        step(
            "txn put with an unknown lease",
            txn(Txn::new().and_then([TxnOp::put(
                "k/v",
                "w",
                Some(PutOptions::new().with_lease(4242)),
            )])),
            &["NotFound"],
        ),
        step(
            "txn ignore value on a missing key",
            txn(Txn::new().and_then([TxnOp::put(
                "k/nope",
                "",
                Some(PutOptions::new().with_ignore_value()),
            )])),
            &["key not found"],
        ),
        step(
            "nothing of the failed txns was written",
            get("k/v", GetOptions::new()),
            &["value: [118]", "revision: 22"],
        ),
        step(
            "duplicate key",
            txn(Txn::new().and_then([TxnOp::put("k/x", "1", None), TxnOp::put("k/x", "2", None)])),
            &["InvalidArgument", "duplicate key given in txn request"],
        ),
        step(
            "put inside a deleted range",
            txn(Txn::new().and_then([
                TxnOp::delete("k/", Some(DeleteOptions::new().with_prefix())),
                TxnOp::put("k/x", "2", None),
            ])),
            &["duplicate key"],
        ),
        step(
            "same key in both branches of a nested txn",
            txn(Txn::new().and_then([TxnOp::txn(
                Txn::new()
                    .when([Compare::version("k/x", Equal, 0)])
                    .and_then([TxnOp::put("k/x", "1", None)])
                    .or_else([TxnOp::put("k/x", "2", None)]),
            )])),
            &["succeeded: true"],
        ), // rev 23
        step(
            "129 ops",
            txn(Txn::new().and_then(
                (0..129)
                    .map(|_| TxnOp::get("k/a", None))
                    .collect::<Vec<_>>(),
            )),
            &["InvalidArgument", "too many operations in txn request"],
        ),
        step(
            "128 ops",
            txn(Txn::new().and_then(
                (0..128)
                    .map(|_| TxnOp::get("k/a", None))
                    .collect::<Vec<_>>(),
            )),
            &["succeeded: true"],
        ),
        step(
            "empty compare key",
            txn(Txn::new().when([Compare::version("", Equal, 0)])),
            &["key is not provided"],
        ),
        step(
            "txn that writes nothing",
            txn(Txn::new()
                .when([Compare::version("k/a", Equal, 100)])
                .and_then([TxnOp::put("k/y", "1", None)])
                .or_else([TxnOp::delete("k/none", None)])),
            &["succeeded: false", "revision: 23"],
        ),
        // -- compaction
        step("put before compaction", put("k/a", "12"), &["revision: 24"]), // rev 24
        step("compact at 20", Op::Compact(20, false), &["revision: 24"]),
        step(
            "read below compaction",
            get("k/", prefix().with_revision(19)),
            &["OutOfRange", "required revision has been compacted"],
        ),
        step(
            "read at compaction",
            get("k/", prefix().with_revision(20)),
            &[],
        ),
        step(
            "read after compaction",
            get("k/", prefix().with_revision(21)),
            &[],
        ),
        step(
            "sorted read at compaction",
            get(
                "k/",
                prefix()
                    .with_revision(20)
                    .with_sort(SortTarget::Version, SortOrder::Descend),
            ),
            &[],
        ),
        step(
            "compact again at 20",
            Op::Compact(20, false),
            &["required revision has been compacted"],
        ),
        step(
            "compact in the future",
            Op::Compact(100, false),
            &["required revision is a future revision"],
        ),
        step(
            "physical compaction",
            Op::Compact(23, true),
            &["revision: 24"],
        ),
        step(
            "read at physical compaction",
            get("", GetOptions::new().with_all_keys().with_revision(23)),
            &[],
        ),
        step(
            "latest read after compactions",
            get("", GetOptions::new().with_all_keys()),
            &[],
        ),
        step(
            "delete from key",
            Op::Del("k/u", Some(DeleteOptions::new().with_from_key())),
            &[],
        ),
        step(
            "what remains",
            get("", GetOptions::new().with_all_keys()),
            &[],
        ),
    ]
}

/// The answer of one step as normalized text.
pub(crate) async fn run(c: &mut Client, op: Op) -> String {
    let r = match op {
        Op::Put(k, v, o) => c.put(k, v, o).await.map(|r| format!("{r:?}")),
        Op::Get(k, o) => c.get(k, o).await.map(|r| format!("{r:?}")),
        Op::Del(k, o) => c.delete(k, o).await.map(|r| format!("{r:?}")),
        Op::Txn(t) => c.txn(t).await.map(|r| format!("{r:?}")),
        Op::Compact(rev, physical) => {
            let o = physical.then(|| CompactionOptions::new().with_physical());
            c.compact(rev, o).await.map(|r| format!("{r:?}"))
        }
        Op::Grant(id, ttl) => c
            .lease_grant(ttl, Some(LeaseGrantOptions::new().with_id(id)))
            .await
            .map(|r| format!("{r:?}")),
        Op::Revoke(id) => c.lease_revoke(id).await.map(|r| format!("{r:?}")),
        // The remaining TTL depends on timing, so only its sign is compared;
        // etcd lists the keys in no particular order.
        Op::TimeToLive(id) => c
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .map(|r| {
                let mut keys = r.keys().to_vec();
                keys.sort();
                format!(
                    "id: {}, ttl sign: {}, granted_ttl: {}, keys: {keys:?}, revision: {:?}",
                    r.id(),
                    r.ttl().signum(),
                    r.granted_ttl(),
                    r.header().map(|h| h.revision())
                )
            }),
    };
    match r {
        Ok(s) => normalize(&s),
        Err(etcd_client::Error::GRpcStatus(s)) => format!("error: {:?} {}", s.code(), s.message()),
        Err(e) => format!("error: {e}"),
    }
}

/// Runs the whole table on a fresh target.
async fn transcript(target: Target) -> Vec<String> {
    let started = Started::new(target, bin())
        .await
        .unwrap_or_else(|e| panic!("starting {}: {e:#}", target.name()));
    let mut c = started.server.client().await.expect("client");
    let mut out = Vec::new();
    for s in script() {
        out.push(run(&mut c, s.op).await);
    }
    out
}

/// etcd's transcript, computed once per test run.
static REFERENCE: Reference = Reference::new();

async fn reference() -> Option<&'static Vec<String>> {
    REFERENCE.get(transcript).await
}

async fn check(target: Target) {
    let got = transcript(target).await;
    let steps = script();
    let mut failures = Vec::new();
    for (i, (s, answer)) in steps.iter().zip(&got).enumerate() {
        for want in s.expect {
            if !answer.contains(want) {
                failures.push(format!(
                    "#{i} {}: expected {want:?} in\n    {answer}",
                    s.name
                ));
            }
        }
    }
    let reference = reference().await;
    if let Some(etcd) = reference {
        for (i, ((s, answer), want)) in steps.iter().zip(&got).zip(etcd).enumerate() {
            if answer != want {
                failures.push(format!(
                    "#{i} {}: differs from etcd\n    etcd:    {want}\n    etcdsql: {answer}",
                    s.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} on {}: {} of {} steps failed (etcd reference: {}):\n{}",
        "kv table",
        target.name(),
        failures.len(),
        steps.len(),
        if reference.is_some() {
            "compared"
        } else {
            "absent"
        },
        failures.join("\n")
    );
    eprintln!(
        "kv table on {}: {} steps passed{}",
        target.name(),
        steps.len(),
        if reference.is_some() {
            ", identical to etcd 3.4"
        } else {
            ""
        }
    );
}

async fn etcd_reference_meets_the_table(_target: Target) {
    // The expectations themselves are checked against etcd, so that a wrong
    // expectation cannot pass silently.
    let Some(etcd) = reference().await else {
        return;
    };
    let steps = script();
    for (s, answer) in steps.iter().zip(etcd) {
        for want in s.expect {
            assert!(
                answer.contains(want),
                "etcd: {}: expected {want:?} in {answer}",
                s.name
            );
        }
    }
}

/// Random puts, deletes and re-creations of 40 keys, some in one Txn, then
/// ranges at past revisions (with limits, keys only, count only, over
/// subranges): the keys and the count of each equal a model of every
/// revision's state.
async fn counts_at_past_revisions(target: Target) {
    use std::collections::{BTreeMap, BTreeSet};
    let started = Started::new(target, bin())
        .await
        .unwrap_or_else(|e| panic!("starting {}: {e:#}", target.name()));
    let mut c = started.server.client().await.expect("client");
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let key = |i: u64| format!("c/{i:02}");
    let mut live: BTreeSet<String> = BTreeSet::new();
    // The keys that stand after each revision.
    let mut states: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for step in 0..400u64 {
        let (k1, mut k2) = (key(next(40)), key(next(40)));
        if k2 == k1 {
            // A Txn may not name a key twice.
            k2.push('x');
        }
        let rev = match next(10) {
            0..=5 => {
                live.insert(k1.clone());
                let r = c.put(k1, format!("v{step}"), None).await.expect("put");
                r.header().expect("header").revision()
            }
            6..=7 => {
                let r = c.delete(k1.clone(), None).await.expect("delete");
                live.remove(&k1);
                r.header().expect("header").revision()
            }
            _ => {
                // Both in one revision: a delete and a put of another key
                // (or a re-creation of the same one).
                let t = Txn::new().and_then([
                    TxnOp::delete(k1.clone(), None),
                    TxnOp::put(k2.clone(), format!("t{step}"), None),
                ]);
                live.remove(&k1);
                live.insert(k2);
                let r = c.txn(t).await.expect("txn");
                r.header().expect("header").revision()
            }
        };
        states.insert(rev, live.iter().cloned().collect());
    }
    let revs: Vec<i64> = states.keys().copied().collect();
    let mut checked = 0;
    for _ in 0..120 {
        let at = revs[usize::try_from(next(revs.len() as u64)).expect("index")];
        let (a, b) = (next(40), next(40));
        let (from, to) = (key(a.min(b)), key(a.max(b) + 1));
        let want: Vec<&String> = states[&at]
            .iter()
            .filter(|k| **k >= from && **k < to)
            .collect();
        let opts = || GetOptions::new().with_range(to.clone()).with_revision(at);
        let limit = usize::try_from(next(4)).expect("limit") + 1;
        let lim = |n: usize| i64::try_from(n).expect("limit");
        // Each read and how many of the keys it shows.
        let variants = [
            ("all", opts(), want.len()),
            ("limit", opts().with_limit(lim(limit)), limit),
            (
                "keys only",
                opts().with_keys_only().with_limit(lim(limit + 1)),
                limit + 1,
            ),
            ("count only", opts().with_count_only(), 0),
        ];
        for (what, o, most) in variants {
            let r = c.get(from.clone(), Some(o)).await.expect("get");
            let ctx = format!("{what} [{from}, {to}) at {at} on {}", target.name());
            assert_eq!(
                r.count(),
                i64::try_from(want.len()).unwrap(),
                "count, {ctx}"
            );
            let got: Vec<String> = r
                .kvs()
                .iter()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                .collect();
            let shown = most.min(want.len());
            let expect: Vec<String> = want.iter().take(shown).map(|k| (*k).clone()).collect();
            assert_eq!(got, expect, "keys, {ctx}");
            assert_eq!(
                r.more(),
                what != "count only" && shown < want.len(),
                "more, {ctx}"
            );
            checked += 1;
        }
    }
    println!(
        "counts at past revisions on {}: {checked} ranges over {} revisions equal to the model",
        target.name(),
        revs.len()
    );
}

/// Deletes and re-creations of a few keys from many clients at once, so
/// that one batch holds a key's delete and its next put (or a put, a
/// delete and a put): no request fails, and the keys as read at the end,
/// versions and create revisions included, equal a replay of the events a
/// watch from the first revision reports.
async fn recreated_in_one_batch(target: Target) {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use etcd_client::{EventType, WatchOptions};
    const KEYS: u64 = 4;
    let metrics = free_port();
    let url = format!("http://127.0.0.1:{metrics}");
    let started = Started::with_args(target, bin(), &["--listen-metrics-urls", &url])
        .await
        .unwrap_or_else(|e| panic!("starting {}: {e:#}", target.name()));
    let c = started.server.client().await.expect("client");
    let put_at = |key: &'static str| {
        let mut c = c.clone();
        async move {
            let r = c.put(key, "", None).await.expect("put");
            r.header().expect("header").revision()
        }
    };
    let first = put_at("r/start").await;
    let mut tasks = Vec::new();
    for client in 0..16u64 {
        let mut c = started.server.client().await.expect("client");
        tasks.push(tokio::spawn(async move {
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ (client + 1);
            let mut puts = 0;
            for step in 0..40u64 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let key = format!("r/{}", seed % KEYS);
                if (seed >> 8).is_multiple_of(3) {
                    c.delete(key, None).await.expect("delete");
                } else {
                    c.put(key, format!("{client}.{step}"), None)
                        .await
                        .expect("put");
                    puts += 1;
                }
            }
            puts
        }));
    }
    let mut puts = 0;
    for t in tasks {
        puts += t.await.expect("client task");
    }
    let end = put_at("r/end").await;
    // (value, create revision, mod revision, version) by key.
    let mut model: BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64)> = BTreeMap::new();
    let mut events = c
        .clone()
        .watch(
            "r/",
            Some(WatchOptions::new().with_prefix().with_start_revision(first)),
        )
        .await
        .expect("watch");
    let mut seen = 0;
    'events: while let Some(r) = tokio::time::timeout(Duration::from_secs(30), events.message())
        .await
        .expect("events in time")
        .expect("watch stream")
    {
        for e in r.events() {
            let kv = e.kv().expect("kv");
            seen += 1;
            match e.event_type() {
                EventType::Put => {
                    let version = model.get(kv.key()).map_or(1, |m| m.3 + 1);
                    let create = model.get(kv.key()).map_or(kv.mod_revision(), |m| m.1);
                    assert_eq!(
                        (kv.version(), kv.create_revision()),
                        (version, create),
                        "event of {:?} at {} on {}",
                        kv.key_str(),
                        kv.mod_revision(),
                        target.name()
                    );
                    model.insert(
                        kv.key().to_vec(),
                        (kv.value().to_vec(), create, kv.mod_revision(), version),
                    );
                }
                EventType::Delete => {
                    model.remove(kv.key());
                }
            }
            if kv.mod_revision() == end {
                break 'events;
            }
        }
    }
    let got: BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64)> = c
        .clone()
        .get("r/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get")
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                (
                    kv.value().to_vec(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                ),
            )
        })
        .collect();
    assert_eq!(got, model, "keys at the end on {}", target.name());
    // Every put has its event, and so has each delete that found its key.
    assert!(
        seen >= puts + 2,
        "{seen} events for {puts} puts on {}",
        target.name()
    );
    if target != Target::Etcd {
        // No batch failed: one that did would have run again request by
        // request, hiding the failure from the clients.
        let scrape = scrape_metrics(metrics).await;
        let batches = metric_sum(&scrape, "etcdsql_write_batch_requests_count");
        let errors = metric_sum(&scrape, "etcdsql_db_errors_total") + 0.0;
        println!(
            "{}: {seen} events, {batches} batches, {errors} database errors",
            target.name()
        );
        assert_eq!(errors, 0.0, "database errors on {}", target.name());
    }
}

pub fn cases() -> Vec<Case> {
    vec![
        case!("table", &Target::ETCDSQL, check),
        case!(
            "recreated_in_one_batch",
            &Target::ALL,
            recreated_in_one_batch
        ),
        case!(
            "counts_at_past_revisions",
            &Target::ALL,
            counts_at_past_revisions
        ),
        case!(
            "etcd_reference_meets_the_table",
            &[Target::Etcd],
            etcd_reference_meets_the_table
        ),
    ]
}
