//! Bad input: each request gets etcd's own answer (compared with etcd 3.4,
//! code and message), the server keeps serving, and nothing is written:
//! after every bad request the store's revision and keys are unchanged.

use etcd_client::{DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};
use etcdsql_integration::{Reference, Started, Target};

use crate::kv::{Op, run};
use crate::{Case, bin, case};

const UNKNOWN_LEASE: i64 = 0x7777;

/// (name, request, fragments etcd's answer contains).
fn requests() -> Vec<(&'static str, Op, &'static [&'static str])> {
    let puts = |n: usize| {
        Txn::new().and_then(
            (0..n)
                .map(|i| TxnOp::put(format!("/t/{i}"), "v", None))
                .collect::<Vec<_>>(),
        )
    };
    vec![
        (
            "put with an empty key",
            Op::Put("", b"v".to_vec(), None),
            &["InvalidArgument", "etcdserver: key is not provided"],
        ),
        (
            "value over --max-request-bytes (1.5 MiB)",
            Op::Put("/big", vec![b'x'; 1_600_000], None),
            &["InvalidArgument", "etcdserver: request is too large"],
        ),
        (
            "value over the gRPC message limit",
            Op::Put("/huge", vec![b'x'; 3 << 20], None),
            &["ResourceExhausted"],
        ),
        (
            "range whose end is before its start",
            Op::Get("/b", Some(GetOptions::new().with_range("/a"))),
            &["count: 0"],
        ),
        (
            "delete whose end is before its start",
            Op::Del("/b", Some(DeleteOptions::new().with_range("/a"))),
            &["deleted: 0"],
        ),
        (
            "range at a future revision",
            Op::Get("/a", Some(GetOptions::new().with_revision(1000))),
            &[
                "OutOfRange",
                "etcdserver: mvcc: required revision is a future revision",
            ],
        ),
        (
            "range below the compaction",
            Op::Get("/a", Some(GetOptions::new().with_revision(2))),
            &[
                "OutOfRange",
                "etcdserver: mvcc: required revision has been compacted",
            ],
        ),
        (
            "put with an unknown lease",
            Op::Put(
                "/l",
                b"v".to_vec(),
                Some(PutOptions::new().with_lease(UNKNOWN_LEASE)),
            ),
            &["NotFound", "etcdserver: requested lease not found"],
        ),
        (
            "revoke of an unknown lease",
            Op::Revoke(UNKNOWN_LEASE),
            &["NotFound", "etcdserver: requested lease not found"],
        ),
        (
            "txn with 129 operations",
            Op::Txn(puts(129)),
            &[
                "InvalidArgument",
                "etcdserver: too many operations in txn request",
            ],
        ),
        (
            "txn putting one key twice",
            Op::Txn(
                Txn::new().and_then([TxnOp::put("/d", "1", None), TxnOp::put("/d", "2", None)]),
            ),
            &[
                "InvalidArgument",
                "etcdserver: duplicate key given in txn request",
            ],
        ),
        (
            "compaction at a future revision",
            Op::Compact(1000, false),
            &[
                "OutOfRange",
                "etcdserver: mvcc: required revision is a future revision",
            ],
        ),
        (
            "compaction below the last one",
            Op::Compact(2, false),
            &[
                "OutOfRange",
                "etcdserver: mvcc: required revision has been compacted",
            ],
        ),
    ]
}

/// After each request: the whole store (revision, count, keys, values).
fn everything() -> Op {
    Op::Get("\0", Some(GetOptions::new().with_from_key()))
}

async fn transcript(target: Target) -> Vec<String> {
    let started = Started::new(target, bin())
        .await
        .unwrap_or_else(|e| panic!("starting {}: {e:#}", target.name()));
    let mut c = started.server.client().await.expect("client");
    for (k, v) in [("/a", "1"), ("/b", "2"), ("/a", "3")] {
        c.put(k, v, None).await.expect("seed put");
    }
    c.compact(3, None).await.expect("seed compaction");
    let mut out = vec![run(&mut c, everything()).await];
    for (_, op, _) in requests() {
        out.push(run(&mut c, op).await);
        out.push(run(&mut c, everything()).await);
    }
    out
}

static REFERENCE: Reference = Reference::new();

async fn check(target: Target) {
    let reference = REFERENCE.get(transcript).await;
    // On etcd itself the reference is the answer (the trial runs only where
    // etcd is available).
    let got = match (target, reference) {
        (Target::Etcd, Some(etcd)) => etcd.clone(),
        _ => transcript(target).await,
    };
    let before = &got[0];
    let requests = requests();
    let mut failures = Vec::new();
    for (i, (name, _, expect)) in requests.iter().enumerate() {
        let (answer, after) = (&got[1 + 2 * i], &got[2 + 2 * i]);
        for want in *expect {
            if !answer.contains(want) {
                failures.push(format!("{name}: expected {want:?} in\n    {answer}"));
            }
        }
        if after != before {
            failures.push(format!(
                "{name}: the store changed\n    before: {before}\n    after:  {after}"
            ));
        }
        if let Some(etcd) = reference
            && etcd[1 + 2 * i] != *answer
        {
            failures.push(format!(
                "{name}: differs from etcd\n    etcd:    {}\n    etcdsql: {answer}",
                etcd[1 + 2 * i]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "bad input on {}:\n{}",
        target.name(),
        failures.join("\n")
    );
    eprintln!(
        "bad input on {}: {} requests answered as expected{}, nothing written",
        target.name(),
        requests.len(),
        if reference.is_some() {
            " and as etcd 3.4 does"
        } else {
            ""
        }
    );
}

pub fn cases() -> Vec<Case> {
    vec![
        case!("errors", &Target::ETCDSQL, check),
        case!("etcd_itself", &[Target::Etcd], check),
    ]
}
