//! Label and field selectors (RangeRequest 14/15, WatchCreateRequest 9/10)
//! answered by the database, checked against this file's own model of
//! Kubernetes' semantics (written from the Kubernetes docs and
//! apimachinery's `Requirement.Matches`, not from etcdsql's code):
//! random label sets, random selectors, latest and past revisions, pages,
//! counts; a watch with a selector; protobuf objects as kube-apiserver
//! stores them.

use std::collections::BTreeMap;

use etcdsql::proto::etcdserverpb::kv_client::KvClient;
use etcdsql::proto::etcdserverpb::watch_client::WatchClient;
use etcdsql::proto::etcdserverpb::{
    PutRequest, RangeRequest, RangeResponse, WatchCreateRequest, WatchRequest,
    watch_request::RequestUnion,
};
use etcdsql_integration::{Process, Target, TestDb};
use tonic::transport::Channel;

use crate::{Case, bin, case};

pub fn cases() -> Vec<Case> {
    vec![
        case!("property", &Target::ETCDSQL, property),
        case!("watch", &Target::ETCDSQL, watch),
        case!("protobuf", &Target::ETCDSQL, protobuf),
        case!("backfill", &Target::ETCDSQL, backfill),
        case!("crd_change", &Target::ETCDSQL, crd_change),
        case!("two_writers", &Target::ETCDSQL, two_writers),
        case!(
            "rehash",
            &[
                Target::Sqlite,
                Target::Mariadb,
                Target::Galera,
                Target::Tidb
            ],
            rehash
        ),
        case!("statistics", &[Target::Postgres], statistics),
    ]
}

const PREFIX: &str = "/registry/example.com/widgets/";
const CRD_KEY: &str =
    "/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com";

/// A deterministic xorshift generator: failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const LABELS: &[(&str, &[&str])] = &[
    ("app", &["web", "db", "cache"]),
    ("tier", &["front", "back"]),
    ("env", &["prod", "dev", ""]),
    ("example.com/team", &["a", "b"]),
    ("n", &["1", "5", "10", "07", "x"]),
];
const COLORS: &[&str] = &["red", "blue"];

/// One object of the model; `None` labels: stored encrypted (unreadable).
#[derive(Clone, Debug)]
struct Obj {
    ns: String,
    name: String,
    labels: Option<BTreeMap<String, String>>,
    color: Option<String>,
    /// Changes the stored value, not what selectors see.
    note: u32,
}

impl Obj {
    fn key(&self) -> String {
        format!("{PREFIX}{}/{}", self.ns, self.name)
    }

    fn value(&self) -> Vec<u8> {
        let Some(labels) = &self.labels else {
            return b"k8s:enc:aescbc:v1:key1:\x01\x02opaque".to_vec();
        };
        let mut spec = serde_json::Map::new();
        if let Some(c) = &self.color {
            spec.insert("color".into(), c.clone().into());
        }
        if self.note > 0 {
            spec.insert("note".into(), self.note.into());
        }
        serde_json::json!({
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {"name": self.name, "namespace": self.ns, "labels": labels},
            "spec": spec,
        })
        .to_string()
        .into_bytes()
    }
}

fn random_obj(rng: &mut Rng, ns: &str, name: &str) -> Obj {
    let labels = (!rng.chance(3)).then(|| {
        let mut m = BTreeMap::new();
        for (k, vals) in LABELS {
            if rng.chance(50) {
                m.insert(k.to_string(), rng.pick(vals).to_string());
            }
        }
        m
    });
    Obj {
        ns: ns.into(),
        name: name.into(),
        labels,
        color: rng.chance(70).then(|| rng.pick(COLORS).to_string()),
        note: 0,
    }
}

/// A requirement of the model: key, operator, values.
#[derive(Clone, Debug)]
enum Req {
    Label(String, &'static str, Vec<String>),
    Field(String, bool, String),
}

impl Req {
    fn render(&self) -> String {
        match self {
            Req::Label(k, "exists", _) => k.clone(),
            Req::Label(k, "!", _) => format!("!{k}"),
            Req::Label(k, op @ ("in" | "notin"), vals) => format!("{k} {op} ({})", vals.join(",")),
            Req::Label(k, op, vals) => format!("{k}{op}{}", vals[0]),
            Req::Field(f, neg, v) => format!("{f}{}{v}", if *neg { "!=" } else { "=" }),
        }
    }

    /// Kubernetes' semantics, written out independently.
    fn matches(&self, o: &Obj) -> bool {
        let Some(labels) = &o.labels else {
            // Unreadable objects are returned for the apiserver to filter.
            return true;
        };
        match self {
            Req::Label(k, op, vals) => {
                let v = labels.get(k);
                match *op {
                    "=" | "==" | "in" => v.is_some_and(|v| vals.contains(v)),
                    "!=" | "notin" => v.is_none_or(|v| !vals.contains(v)),
                    "exists" => v.is_some(),
                    "!" => v.is_none(),
                    "gt" | "lt" => {
                        let Some(v) = v.and_then(|v| v.parse::<i64>().ok()) else {
                            return false;
                        };
                        let n: i64 = vals[0].parse().expect("integer");
                        if *op == "gt" { v > n } else { v < n }
                    }
                    other => panic!("operator {other}"),
                }
            }
            Req::Field(f, neg, want) => {
                let have = match f.as_str() {
                    "spec.color" => o.color.clone().unwrap_or_default(),
                    "metadata.namespace" => o.ns.clone(),
                    "metadata.name" => o.name.clone(),
                    other => panic!("field {other}"),
                };
                (have == *want) != *neg
            }
        }
    }
}

fn random_selector(rng: &mut Rng) -> Vec<Req> {
    let mut reqs = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let (key, vals): (&str, &[&str]) = if rng.chance(10) {
            ("missing", &["v"])
        } else {
            LABELS[rng.below(LABELS.len())]
        };
        let op = rng.pick(&["=", "==", "!=", "in", "notin", "exists", "!", "gt", "lt"]);
        let values: Vec<String> = match op {
            "in" | "notin" => {
                let mut v: Vec<String> = (0..1 + rng.below(2))
                    .map(|_| rng.pick(vals).to_string())
                    .collect();
                v.sort();
                v.dedup();
                v
            }
            "gt" | "lt" => vec![rng.pick(&["0", "4", "7", "10"]).to_string()],
            _ => vec![rng.pick(vals).to_string()],
        };
        let op = match op {
            "gt" => ">",
            "lt" => "<",
            o => o,
        };
        reqs.push(Req::Label(key.to_string(), op_name(op), values));
    }
    if rng.chance(40) {
        let (f, v) = match rng.below(4) {
            0 => ("spec.color", rng.pick(COLORS)),
            1 => ("spec.color", ""),
            2 => ("metadata.namespace", rng.pick(&["ns0", "ns1"])),
            _ => ("metadata.name", rng.pick(&["w1", "w2", "w30"])),
        };
        reqs.push(Req::Field(f.into(), rng.chance(30), v.into()));
    }
    reqs
}

/// `>`/`<` are rendered as such but evaluated as gt/lt.
fn op_name(op: &str) -> &'static str {
    match op {
        "=" => "=",
        "==" => "==",
        "!=" => "!=",
        "in" => "in",
        "notin" => "notin",
        "exists" => "exists",
        "!" => "!",
        ">" => "gt",
        _ => "lt",
    }
}

fn selector_strings(reqs: &[Req]) -> (String, String) {
    let render = |r: &Req| match r {
        Req::Label(k, "gt", v) => format!("{k}>{}", v[0]),
        Req::Label(k, "lt", v) => format!("{k}<{}", v[0]),
        other => other.render(),
    };
    let labels: Vec<String> = reqs
        .iter()
        .filter(|r| matches!(r, Req::Label(..)))
        .map(render)
        .collect();
    let fields: Vec<String> = reqs
        .iter()
        .filter(|r| matches!(r, Req::Field(..)))
        .map(render)
        .collect();
    (labels.join(","), fields.join(","))
}

pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut e = prefix.as_bytes().to_vec();
    if let Some(last) = e.last_mut() {
        *last += 1;
    }
    e
}

fn url(p: &Process) -> String {
    if p.endpoint.contains("://") {
        p.endpoint.clone()
    } else {
        format!("http://{}", p.endpoint)
    }
}

/// etcdsql's own KV client (it sends selectors) on `p`.
pub(crate) async fn kv(p: &Process) -> KvClient<Channel> {
    KvClient::connect(url(p)).await.expect("gRPC connection")
}

async fn put(c: &mut KvClient<Channel>, key: &str, value: Vec<u8>) -> i64 {
    c.put(PutRequest {
        key: key.as_bytes().to_vec(),
        value,
        ..Default::default()
    })
    .await
    .expect("put")
    .into_inner()
    .header
    .map_or(0, |h| h.revision)
}

fn crd() -> Vec<u8> {
    // As kube-apiserver stores CRDs: v1beta1 JSON; the storage version's
    // selectableFields.
    serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1beta1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "names": {"plural": "widgets", "kind": "Widget"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true,
                          "selectableFields": [{"jsonPath": ".spec.color"}]}]
        }
    })
    .to_string()
    .into_bytes()
}

struct Query<'a> {
    prefix: &'a str,
    labels: &'a str,
    fields: &'a str,
    revision: i64,
    limit: i64,
    count_only: bool,
}

async fn range(c: &mut KvClient<Channel>, q: &Query<'_>, from: &[u8]) -> RangeResponse {
    c.range(RangeRequest {
        key: if from.is_empty() {
            q.prefix.as_bytes().to_vec()
        } else {
            from.to_vec()
        },
        range_end: prefix_end(q.prefix),
        revision: q.revision,
        limit: q.limit,
        count_only: q.count_only,
        label_selector: q.labels.to_string(),
        field_selector: q.fields.to_string(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("range {:?} {:?}: {e}", q.labels, q.fields))
    .into_inner()
}

fn count(n: usize) -> i64 {
    i64::try_from(n).expect("a count")
}

fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

async fn property(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
    let mut c = kv(&p).await;
    let mut rng = Rng(0x5eed_0000_0000_0001 ^ target.name().len() as u64);
    put(&mut c, CRD_KEY, crd()).await;
    let mut model: BTreeMap<String, Obj> = BTreeMap::new();
    for i in 0..240 {
        let o = random_obj(&mut rng, &format!("ns{}", i % 3), &format!("w{i}"));
        put(&mut c, &o.key(), o.value()).await;
        model.insert(o.key(), o);
    }
    // Objects outside the range must never show up.
    put(
        &mut c,
        "/registry/example.com/widgetz/ns0/x",
        b"{}".to_vec(),
    )
    .await;
    let (past_model, past_rev) = (model.clone(), put(&mut c, "/other", b"x".to_vec()).await);
    // Change a quarter of them and delete some, so that a read at the past
    // revision needs history.
    let names: Vec<String> = model.keys().cloned().collect();
    for k in names.iter().step_by(4) {
        let old = &model[k];
        let o = random_obj(&mut rng, &old.ns.clone(), &old.name.clone());
        put(&mut c, k, o.value()).await;
        model.insert(k.clone(), o);
    }
    for k in names.iter().skip(1).step_by(12) {
        c.delete_range(etcdsql::proto::etcdserverpb::DeleteRangeRequest {
            key: k.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .expect("delete");
        model.remove(k);
    }
    // Rewrites that keep labels and fields (the selector rows stay as they
    // are), some changed again after that; then deletes racing puts of the
    // same keys from another connection (one batch may hold both): the
    // selectors follow whichever version stands.
    for (j, k) in names.iter().enumerate().filter(|(j, _)| j % 5 == 2) {
        let Some(o) = model.get_mut(k) else { continue };
        o.note += 1;
        let value = o.value();
        put(&mut c, k, value).await;
        if j % 10 == 2 {
            let o = random_obj(&mut rng, &o.ns.clone(), &o.name.clone());
            put(&mut c, k, o.value()).await;
            model.insert(k.clone(), o);
        }
    }
    let mut other = kv(&p).await;
    for k in names.iter().skip(3).step_by(16) {
        let (ns, name) = k[PREFIX.len()..].split_once('/').expect("ns/name");
        let o = random_obj(&mut rng, ns, name);
        let delete = c.delete_range(etcdsql::proto::etcdserverpb::DeleteRangeRequest {
            key: k.as_bytes().to_vec(),
            ..Default::default()
        });
        let (deleted, _) = tokio::join!(delete, put(&mut other, k, o.value()));
        deleted.expect("delete");
        let stands = c
            .range(RangeRequest {
                key: k.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .expect("get")
            .into_inner();
        if stands.kvs.is_empty() {
            model.remove(k);
        } else {
            model.insert(k.clone(), o);
        }
    }

    let (mut checked, mut matched) = (0, 0);
    for i in 0..150 {
        let reqs = random_selector(&mut rng);
        let (labels, fields) = selector_strings(&reqs);
        let (m, rev, prefix) = match i % 5 {
            0 => (&past_model, past_rev, PREFIX.to_string()),
            1 => (&model, 0, format!("{PREFIX}ns1/")),
            _ => (&model, 0, PREFIX.to_string()),
        };
        let want: Vec<String> = m
            .values()
            .filter(|o| o.key().starts_with(&prefix) && reqs.iter().all(|r| r.matches(o)))
            .map(Obj::key)
            .collect();
        let q = Query {
            prefix: &prefix,
            labels: &labels,
            fields: &fields,
            revision: rev,
            limit: 0,
            count_only: false,
        };
        let all = range(&mut c, &q, b"").await;
        let ctx = format!("selector {labels:?} / {fields:?} at revision {rev} under {prefix}");
        assert_eq!(keys(&all), want, "{ctx}");
        assert_eq!(all.count, count(want.len()), "count, {ctx}");
        // The first page: count of every match, `more` when cut.
        let page = range(&mut c, &Query { limit: 5, ..q }, b"").await;
        assert_eq!(
            keys(&page),
            want.iter().take(5).cloned().collect::<Vec<_>>(),
            "page, {ctx}"
        );
        assert_eq!(page.count, count(want.len()), "page count, {ctx}");
        assert_eq!(page.more, want.len() > 5, "more, {ctx}");
        let n = range(
            &mut c,
            &Query {
                count_only: true,
                ..q
            },
            b"",
        )
        .await;
        assert_eq!(
            (n.count, n.kvs.len()),
            (count(want.len()), 0),
            "count only, {ctx}"
        );
        if i % 10 == 3 {
            // A paginated LIST at one revision, as kube-apiserver reads it.
            let at = all.header.as_ref().map_or(0, |h| h.revision);
            let (mut got, mut from) = (Vec::new(), Vec::new());
            loop {
                let q = Query {
                    limit: 7,
                    revision: if rev > 0 { rev } else { at },
                    ..q
                };
                let r = range(&mut c, &q, &from).await;
                assert_eq!(
                    r.count,
                    count(want.len() - got.len()),
                    "remaining count, {ctx}"
                );
                got.extend(keys(&r));
                let Some(last) = r.kvs.last().filter(|_| r.more) else {
                    break;
                };
                from = last.key.clone();
                from.push(0);
            }
            assert_eq!(got, want, "pages, {ctx}");
        }
        checked += 1;
        matched += want.len();
    }

    // Refusals name the problem and change nothing.
    for (labels, fields, want) in [
        ("a in b", "", "found 'b' expected: '('"),
        (
            "app=",
            "spec.colour=red",
            "field label not supported: spec.colour",
        ),
        ("", "spec.color=a=b", "unescaped character in value"),
        ("-x", "", "name part must consist of"),
    ] {
        let err = c
            .range(RangeRequest {
                key: PREFIX.as_bytes().to_vec(),
                range_end: prefix_end(PREFIX),
                label_selector: labels.into(),
                field_selector: fields.into(),
                ..Default::default()
            })
            .await
            .expect_err(labels);
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{labels} {fields}"
        );
        assert!(
            err.message().contains(want),
            "{labels} {fields}: {}",
            err.message()
        );
    }
    println!(
        "selectors on {}: {checked} random selectors over {} objects (latest, past revision, \
         namespace, pages, counts) equal to the model; {matched} matches in all",
        target.name(),
        model.len()
    );
}

/// A watch stream that sent `create`; the sender keeps the stream open.
async fn open_watch(
    p: &Process,
    create: WatchCreateRequest,
) -> (
    tokio::sync::mpsc::Sender<WatchRequest>,
    tonic::Streaming<etcdsql::proto::etcdserverpb::WatchResponse>,
) {
    let mut w = WatchClient::connect(url(p)).await.expect("watch client");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    })
    .await
    .expect("create");
    let stream = w
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    (tx, stream)
}

/// A watch with a label selector gets an event when the old or the new
/// object matches (with prev_kv), and nothing else.
async fn watch(target: Target) {
    use tokio_stream::StreamExt;
    let db = TestDb::create(target).await.expect("database");
    let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
    let mut c = kv(&p).await;
    let obj = |name: &str, app: &str| Obj {
        ns: "ns0".into(),
        name: name.into(),
        labels: Some(BTreeMap::from([("app".to_string(), app.to_string())])),
        color: None,
        note: 0,
    };
    for (n, app) in [
        ("stays", "web"),
        ("leaves", "web"),
        ("joins", "db"),
        ("never", "db"),
    ] {
        put(&mut c, &obj(n, app).key(), obj(n, app).value()).await;
    }
    let (_requests, mut events) = open_watch(
        &p,
        WatchCreateRequest {
            key: PREFIX.as_bytes().to_vec(),
            range_end: prefix_end(PREFIX),
            prev_kv: true,
            label_selector: "app=web".into(),
            ..Default::default()
        },
    )
    .await;
    let created = events.next().await.expect("created").expect("created");
    assert!(created.created && !created.canceled);
    for (n, app) in [
        ("stays", "web"),
        ("leaves", "db"),
        ("joins", "web"),
        ("never", "cache"),
    ] {
        put(&mut c, &obj(n, app).key(), obj(n, app).value()).await;
    }
    c.delete_range(etcdsql::proto::etcdserverpb::DeleteRangeRequest {
        key: obj("joins", "").key().into_bytes(),
        ..Default::default()
    })
    .await
    .expect("delete");
    let last = put(
        &mut c,
        &obj("never", "db").key(),
        obj("never", "db").value(),
    )
    .await;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.len() < 4 {
        let r = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("events in time")
            .expect("stream open")
            .expect("response");
        for e in r.events {
            let kv = e.kv.expect("kv");
            let name = String::from_utf8_lossy(&kv.key)
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string();
            got.push(format!("{} {name} prev={}", e.r#type, e.prev_kv.is_some()));
        }
    }
    // Put is 0, Delete 1: the stayer, the leaver (old matched), the joiner
    // (new matches), its delete (old matched); "never" never.
    assert_eq!(
        got,
        vec![
            "0 stays prev=true",
            "0 leaves prev=true",
            "0 joins prev=true",
            "1 joins prev=true"
        ]
    );
    // Nothing more arrives up to the last write.
    let more = tokio::time::timeout(std::time::Duration::from_millis(500), events.next()).await;
    assert!(
        more.is_err(),
        "unexpected event: {more:?} (last revision {last})"
    );
    // A bad selector cancels the watch with the reason.
    let (_requests2, mut s2) = open_watch(
        &p,
        WatchCreateRequest {
            key: PREFIX.as_bytes().to_vec(),
            range_end: prefix_end(PREFIX),
            field_selector: "spec.nodeName=n1".into(),
            ..Default::default()
        },
    )
    .await;
    let r = s2.next().await.expect("response").expect("response");
    assert!(r.created && r.canceled, "{r:?}");
    assert!(
        r.cancel_reason
            .contains("field label not supported: spec.nodeName"),
        "{r:?}"
    );
    println!(
        "selector watch on {}: joined, left, stayed and deleted delivered with prev_kv, others not; \
         a bad selector cancels",
        target.name()
    );
}

// --- protobuf, as kube-apiserver stores built-in objects ----------------

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(u8::try_from(v & 0x7f).unwrap_or(0) | 0x80);
        v >>= 7;
    }
    out.push(u8::try_from(v).unwrap_or(0));
}

fn bytes_field(num: u64, payload: &[u8], out: &mut Vec<u8>) {
    varint(num << 3 | 2, out);
    varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

fn bool_field(num: u64, v: bool, out: &mut Vec<u8>) {
    varint(num << 3, out);
    varint(u64::from(v), out);
}

/// A v1 Pod as kube-apiserver writes it: `k8s\0`, runtime.Unknown
/// {typeMeta 1 {apiVersion 1, kind 2}, raw 2, contentType 4}, the Pod
/// {metadata 1 {name 1, namespace 3, labels 11}, spec 2 {nodeName 10,
/// hostNetwork 11}, status 3 {phase 1, podIPs 12 {ip 1}}}.
fn pod(
    name: &str,
    labels: &[(&str, &str)],
    node: &str,
    phase: &str,
    host_network: bool,
) -> Vec<u8> {
    let mut meta = Vec::new();
    bytes_field(1, name.as_bytes(), &mut meta);
    bytes_field(3, b"default", &mut meta);
    for (k, v) in labels {
        let mut entry = Vec::new();
        bytes_field(1, k.as_bytes(), &mut entry);
        bytes_field(2, v.as_bytes(), &mut entry);
        bytes_field(11, &entry, &mut meta);
    }
    let mut spec = Vec::new();
    bytes_field(3, b"Always", &mut spec);
    if !node.is_empty() {
        bytes_field(10, node.as_bytes(), &mut spec);
    }
    bool_field(11, host_network, &mut spec);
    let mut status = Vec::new();
    bytes_field(1, phase.as_bytes(), &mut status);
    let mut ip = Vec::new();
    bytes_field(1, b"10.0.0.7", &mut ip);
    bytes_field(12, &ip, &mut status);
    let mut obj = Vec::new();
    bytes_field(1, &meta, &mut obj);
    bytes_field(2, &spec, &mut obj);
    bytes_field(3, &status, &mut obj);
    let mut type_meta = Vec::new();
    bytes_field(1, b"v1", &mut type_meta);
    bytes_field(2, b"Pod", &mut type_meta);
    let mut unknown = Vec::new();
    bytes_field(1, &type_meta, &mut unknown);
    bytes_field(2, &obj, &mut unknown);
    bytes_field(4, b"application/vnd.kubernetes.protobuf", &mut unknown);
    let mut out = b"k8s\0".to_vec();
    out.extend(unknown);
    out
}

async fn protobuf(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
    let mut c = kv(&p).await;
    let pods = [
        (
            "a",
            &[("app", "web"), ("app.kubernetes.io/name", "x")][..],
            "n1",
            "Running",
            false,
        ),
        ("b", &[("app", "web")][..], "n2", "Pending", true),
        ("c", &[("app", "db")][..], "n1", "Running", false),
        ("d", &[][..], "", "Pending", false),
    ];
    for (name, labels, node, phase, hn) in pods {
        put(
            &mut c,
            &format!("/registry/pods/default/{name}"),
            pod(name, labels, node, phase, hn),
        )
        .await;
    }
    let prefix = "/registry/pods/";
    let mut check = async |labels: &str, fields: &str, want: &[&str]| {
        let q = Query {
            prefix,
            labels,
            fields,
            revision: 0,
            limit: 0,
            count_only: false,
        };
        let got: Vec<String> = keys(&range(&mut c, &q, b"").await)
            .into_iter()
            .map(|k| k.rsplit('/').next().unwrap_or("").to_string())
            .collect();
        assert_eq!(got, want, "{labels:?} {fields:?}");
    };
    check("app=web", "", &["a", "b"]).await;
    check("app!=web", "", &["c", "d"]).await;
    check("app.kubernetes.io/name", "", &["a"]).await;
    check("", "spec.nodeName=n1", &["a", "c"]).await;
    check("", "spec.nodeName=", &["d"]).await;
    check("", "status.phase=Running,spec.nodeName!=n1", &[]).await;
    check("app=web", "status.phase=Pending", &["b"]).await;
    check("", "spec.hostNetwork=true", &["b"]).await;
    check("", "spec.hostNetwork=false", &["a", "c", "d"]).await;
    check("", "status.podIP=10.0.0.7", &["a", "b", "c", "d"]).await;
    check("", "metadata.name=c", &["c"]).await;
    check(
        "",
        "spec.restartPolicy=Always,metadata.namespace=default",
        &["a", "b", "c", "d"],
    )
    .await;
    println!(
        "protobuf pods on {}: labels and pod fields read from Kubernetes protobuf",
        target.name()
    );
}

/// Rows without selector columns (as written before schema version 3) are
/// indexed by the next server start, and answer selectors again.
async fn backfill(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let mut objs = Vec::new();
    {
        let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
        let mut c = kv(&p).await;
        put(&mut c, CRD_KEY, crd()).await;
        let mut rng = Rng(7);
        for i in 0..60 {
            let o = random_obj(&mut rng, "ns0", &format!("w{i:02}"));
            put(&mut c, &o.key(), o.value()).await;
            objs.push(o);
        }
    }
    // What an older etcdsql left: no columns, no label rows, not done.
    db.execute("UPDATE etcdsql_live SET labels = NULL, fields = NULL")
        .await
        .expect("clearing columns");
    if !target.is_postgres() {
        db.execute("DELETE FROM etcdsql_label")
            .await
            .expect("clearing labels");
    }
    db.execute("UPDATE etcdsql_meta SET selectors_indexed = 0")
        .await
        .expect("flag");
    let p = Process::etcdsql(bin(), &db.dsn)
        .await
        .expect("etcdsql again");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while db
        .count("SELECT COUNT(*) FROM etcdsql_meta WHERE selectors_indexed = 1")
        .await
        .expect("flag")
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "backfill did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut c = kv(&p).await;
    for sel in ["app=web", "tier in (front),env!=prod", "!app", "n>4"] {
        let reqs = match labels_of(sel) {
            Some(r) => r,
            None => continue,
        };
        let want: Vec<String> = objs
            .iter()
            .filter(|o| reqs.iter().all(|r| r.matches(o)))
            .map(Obj::key)
            .collect();
        let q = Query {
            prefix: PREFIX,
            labels: sel,
            fields: "spec.color!=nope",
            revision: 0,
            limit: 0,
            count_only: false,
        };
        assert_eq!(keys(&range(&mut c, &q, b"").await), want, "{sel}");
    }
    println!(
        "selector backfill on {}: {} earlier rows indexed at start, selectors exact again",
        target.name(),
        objs.len()
    );
}

/// How etcdsql before schema version 8 stored a label row's hash: FNV-1a
/// 64 over a tag, the name and the value (separated by 0xff), as a signed
/// integer, and 1 for every negative one.
fn legacy_hash(parts: &[&str]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        let sep: &[u8] = if i > 0 { &[0xff] } else { &[] };
        for b in sep.iter().chain(p.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    i64::from_ne_bytes(h.to_ne_bytes()).max(1)
}

/// The keys under `PREFIX` the selectors select, at the latest revision.
async fn selected(c: &mut KvClient<Channel>, labels: &str, fields: &str) -> Vec<String> {
    let q = Query {
        prefix: PREFIX,
        labels,
        fields,
        revision: 0,
        limit: 0,
        count_only: false,
    };
    keys(&range(c, &q, b"").await)
}

async fn answers(c: &mut KvClient<Channel>, objs: &[Obj], reqs: &[Req], when: &str) {
    let (labels, fields) = selector_strings(reqs);
    let want: Vec<String> = objs
        .iter()
        .filter(|o| reqs.iter().all(|r| r.matches(o)))
        .map(Obj::key)
        .collect();
    assert_eq!(
        selected(c, &labels, &fields).await,
        want,
        "{when}: {labels:?} {fields:?}"
    );
}

/// A database whose label rows an etcdsql before schema version 8 wrote
/// (half of all hashes stored as 1): selectors stay exact while the next
/// server hashes them again, and after; the rows of value 1 are gone.
async fn rehash(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let mut rng = Rng(23);
    let objs: Vec<Obj> = (0..80)
        .map(|i| random_obj(&mut rng, "ns0", &format!("w{i:02}")))
        .collect();
    {
        let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
        let mut c = kv(&p).await;
        put(&mut c, CRD_KEY, crd()).await;
        for o in &objs {
            put(&mut c, &o.key(), o.value()).await;
        }
    }
    // The label rows as the older etcdsql wrote them (label terms; no
    // field rows, so no positive field term is asked before the pass).
    db.execute("DELETE FROM etcdsql_label")
        .await
        .expect("clearing labels");
    let ignore = if target == Target::Sqlite {
        "INSERT OR IGNORE"
    } else {
        "INSERT IGNORE"
    };
    let mut legacy_bucket = 0;
    for o in &objs {
        let hashes: Vec<i64> = match &o.labels {
            None => vec![0],
            Some(labels) => labels
                .iter()
                .flat_map(|(k, v)| [legacy_hash(&["l", k, v]), legacy_hash(&["e", k])])
                .collect(),
        };
        legacy_bucket += usize::from(hashes.contains(&1));
        let name: String = o.key().bytes().map(|b| format!("{b:02x}")).collect();
        for h in hashes {
            db.execute(&format!(
                "{ignore} INTO etcdsql_label (h, name) VALUES ({h}, X'{name}')"
            ))
            .await
            .expect("legacy row");
        }
    }
    assert!(
        legacy_bucket > 20,
        "{legacy_bucket} objects with a row of 1"
    );
    db.execute("UPDATE etcdsql_meta SET label_hashes = 1")
        .await
        .expect("flag");
    let p = Process::etcdsql(bin(), &db.dsn)
        .await
        .expect("etcdsql again");
    let mut c = kv(&p).await;
    let selectors: Vec<Vec<Req>> = (0..40).map(|_| random_selector(&mut rng)).collect();
    // Right away: whichever of the two states the server is in.
    for reqs in &selectors {
        let labels_only: Vec<Req> = reqs
            .iter()
            .filter(|r| matches!(r, Req::Label(..)))
            .cloned()
            .collect();
        answers(&mut c, &objs, &labels_only, "during the pass").await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while db
        .count("SELECT COUNT(*) FROM etcdsql_meta WHERE label_hashes = 2")
        .await
        .expect("flag")
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "hashing again did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        db.count("SELECT COUNT(*) FROM etcdsql_label WHERE h = 1")
            .await
            .expect("count"),
        0
    );
    // A server started now looks for the new hashes only.
    drop(p);
    let p = Process::etcdsql(bin(), &db.dsn)
        .await
        .expect("etcdsql a third time");
    let mut c = kv(&p).await;
    for reqs in &selectors {
        answers(&mut c, &objs, reqs, "after the pass").await;
    }
    println!(
        "label rows of {} objects hashed again on {} ({legacy_bucket} had a row of 1); {} selectors exact",
        objs.len(),
        target.name(),
        selectors.len()
    );
}

/// The model's requirements for the few selectors `backfill` uses.
fn labels_of(sel: &str) -> Option<Vec<Req>> {
    let req = |k: &str, op: &'static str, v: &[&str]| {
        Req::Label(k.into(), op, v.iter().map(|s| s.to_string()).collect())
    };
    Some(match sel {
        "app=web" => vec![req("app", "=", &["web"])],
        "tier in (front),env!=prod" => {
            vec![req("tier", "in", &["front"]), req("env", "!=", &["prod"])]
        }
        "!app" => vec![req("app", "!", &[])],
        "n>4" => vec![req("n", "gt", &["4"])],
        _ => return None,
    })
}

/// A CRD that gains a selectable field: its objects written before are
/// indexed again, and the field selects exactly.
async fn crd_change(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
    let mut c = kv(&p).await;
    let without: Vec<u8> = String::from_utf8(crd())
        .unwrap()
        .replace(r#","selectableFields":[{"jsonPath":".spec.color"}]"#, "")
        .into_bytes();
    assert_ne!(without, crd());
    put(&mut c, CRD_KEY, without).await;
    let mut rng = Rng(11);
    let objs: Vec<Obj> = (0..40)
        .map(|i| random_obj(&mut rng, "ns0", &format!("w{i:02}")))
        .collect();
    for o in &objs {
        put(&mut c, &o.key(), o.value()).await;
    }
    let req = RangeRequest {
        key: PREFIX.as_bytes().to_vec(),
        range_end: prefix_end(PREFIX),
        field_selector: "spec.color=red".into(),
        ..Default::default()
    };
    let err = c.range(req.clone()).await.expect_err("not selectable yet");
    assert!(
        err.message()
            .contains("field label not supported: spec.color"),
        "{err}"
    );
    put(&mut c, CRD_KEY, crd()).await;
    let want: Vec<String> = objs
        .iter()
        .filter(|o| Req::Field("spec.color".into(), false, "red".into()).matches(o))
        .map(Obj::key)
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let got = keys(&c.range(req.clone()).await.expect("range").into_inner());
        if got == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after the CRD change: {got:?}, want {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    println!(
        "CRD change on {}: {} earlier objects selectable by the new field ({} red)",
        target.name(),
        objs.len(),
        want.len()
    );
}

/// Two processes write one object in turns, its label changing and coming
/// back: each answers a label selector by the latest version, whichever
/// process wrote it. (A process that skipped a write of the label rows it
/// wrote for an earlier version would still find the other's label.)
async fn two_writers(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let a = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql a");
    let b = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql b");
    let (mut ca, mut cb) = (kv(&a).await, kv(&b).await);
    // Objects, each with its own pair of label values (a pair whose two
    // hashes fell together could not show a stale row).
    let objects = 8;
    let key = |i: usize| format!("{PREFIX}ns0/w{i}");
    let value = |i: usize, app: &str, n: usize| {
        format!(
            r#"{{"apiVersion":"example.com/v1","kind":"Widget","metadata":{{"name":"w{i}","namespace":"ns0","labels":{{"app":"{app}-{i}"}}}},"spec":{{"n":{n}}}}}"#
        )
        .into_bytes()
    };
    // Writers in turn (a writes twice running now and then, so that it
    // updates a version of its own too) and the label each writes.
    let turns = [
        ("a", "x"),
        ("b", "y"),
        ("a", "x"),
        ("a", "x"),
        ("b", "x"),
        ("a", "y"),
        ("b", "y"),
        ("a", "y"),
        ("b", "x"),
        ("a", "x"),
    ];
    for (n, (writer, app)) in turns.into_iter().enumerate() {
        let c = if writer == "a" { &mut ca } else { &mut cb };
        for i in 0..objects {
            put(c, &key(i), value(i, app, n)).await;
        }
        let other = if app == "x" { "y" } else { "x" };
        for (reader, c) in [("a", &mut ca), ("b", &mut cb)] {
            for i in 0..objects {
                for (sel, want) in [(app, vec![key(i)]), (other, Vec::new())] {
                    assert_eq!(
                        selected(c, &format!("app={sel}-{i}"), "").await,
                        want,
                        "write {n} by {writer} (app={app}-{i}), read by {reader} with app={sel}-{i}"
                    );
                }
            }
        }
    }
}

/// PostgreSQL: a freshly loaded partition is analysed by etcdsql within
/// seconds (autovacuum may take a minute, and until then a selector LIST
/// is planned without statistics). `last_analyze` is set by ANALYZE only,
/// never by autovacuum.
async fn statistics(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
    let analysed = "SELECT COUNT(*) FROM pg_stat_user_tables \
                    WHERE relname LIKE 'etcdsql\\_live%' AND last_analyze IS NOT NULL";
    assert_eq!(db.count(analysed).await.expect("statistics"), 0);
    // Autovacuum would analyse the partition too (it counts in
    // `last_autoanalyze`, and etcdsql then finds nothing to do): only
    // etcdsql may, so that the check measures it.
    db.execute("ALTER TABLE etcdsql_live_default SET (autovacuum_enabled = false)")
        .await
        .expect("autovacuum off");
    let mut c = kv(&p).await;
    let mut rng = Rng(11);
    for i in 0..1500 {
        let o = random_obj(&mut rng, "ns0", &format!("s{i:04}"));
        put(&mut c, &o.key(), o.value()).await;
    }
    // PostgreSQL publishes a busy backend's counts up to 10 s late.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(45);
    while db.count(analysed).await.expect("statistics") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no live partition was analysed 45 s after 1,500 writes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
