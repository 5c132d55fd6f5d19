//! Maintenance: alarms (raised, listed, enforced, disarmed), Hash and
//! MoveLeader answer as etcd 3.4 answers; the space quota raises NOSPACE;
//! alarms are shared by every etcdsql on one database.

use std::time::{Duration, Instant};

use etcdsql::proto::etcdserverpb::alarm_request::AlarmAction;
use etcdsql::proto::etcdserverpb::cluster_client::ClusterClient;
use etcdsql::proto::etcdserverpb::kv_client::KvClient;
use etcdsql::proto::etcdserverpb::lease_client::LeaseClient;
use etcdsql::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcdsql::proto::etcdserverpb::request_op::Request as Op;
use etcdsql::proto::etcdserverpb::{
    AlarmRequest, AlarmType, CompactionRequest, DeleteRangeRequest, HashRequest, LeaseGrantRequest,
    MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    MemberUpdateRequest, MoveLeaderRequest, PutRequest, RangeRequest, RequestOp, StatusRequest,
    TxnRequest,
};
use etcdsql_integration::{Process, Started, Target, TestDb};
use tonic::transport::Channel;

use crate::{Case, bin, case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "alarms_as_etcd",
            &[Target::Sqlite, Target::Postgres, Target::Mariadb],
            alarms_as_etcd
        ),
        case!(
            "health_reports_alarms",
            &[Target::Etcd, Target::Sqlite, Target::Postgres],
            health_reports_alarms
        ),
        case!("quota", &Target::ETCDSQL, quota),
        case!(
            "snapshot_restore",
            &[Target::Sqlite, Target::Postgres, Target::Mariadb],
            snapshot_restore
        ),
    ]
}

struct Clients {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    m: MaintenanceClient<Channel>,
    cluster: ClusterClient<Channel>,
}

async fn clients(p: &Process) -> Clients {
    let url = format!("http://{}", p.endpoint);
    let ch = Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .expect("gRPC connection");
    Clients {
        kv: KvClient::new(ch.clone()),
        lease: LeaseClient::new(ch.clone()),
        cluster: ClusterClient::new(ch.clone()),
        m: MaintenanceClient::new(ch),
    }
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn outcome<T>(
    r: Result<tonic::Response<T>, tonic::Status>,
    ok: impl FnOnce(T) -> String,
) -> String {
    match r {
        Ok(r) => format!("ok {}", ok(r.into_inner())),
        Err(s) => format!("error {:?} {}", s.code(), s.message()),
    }
}

/// The same requests on any server; each answer as text, this member's id
/// written as "self".
async fn script(c: &mut Clients) -> Vec<String> {
    let me =
        c.m.status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .member_id;
    let mut out = Vec::new();
    let alarm = |action: AlarmAction, member: u64, alarm: AlarmType| AlarmRequest {
        action: action as i32,
        member_id: member,
        alarm: alarm as i32,
    };
    let listed = |r: etcdsql::proto::etcdserverpb::AlarmResponse| {
        let v: Vec<String> = r
            .alarms
            .iter()
            .map(|a| {
                let who = if a.member_id == me {
                    "self".to_string()
                } else {
                    a.member_id.to_string()
                };
                let kind = AlarmType::try_from(a.alarm)
                    .map_or_else(|_| a.alarm.to_string(), |t| format!("{t:?}"));
                format!("{who}:{kind}")
            })
            .collect();
        format!("{v:?}")
    };
    macro_rules! step {
        ($label:literal, $call:expr, $ok:expr) => {
            out.push(format!("{}: {}", $label, outcome($call.await, $ok)));
        };
    }
    step!("put before", c.kv.put(put("a/1", "v")), |_| String::new());
    step!(
        "list none",
        c.m.alarm(alarm(AlarmAction::Get, 0, AlarmType::None)),
        listed
    );
    step!(
        "activate NOSPACE",
        c.m.alarm(alarm(AlarmAction::Activate, me, AlarmType::Nospace)),
        listed
    );
    step!(
        "activate NOSPACE again",
        c.m.alarm(alarm(AlarmAction::Activate, me, AlarmType::Nospace)),
        listed
    );
    step!(
        "list all",
        c.m.alarm(alarm(AlarmAction::Get, 0, AlarmType::None)),
        listed
    );
    step!(
        "list NOSPACE",
        c.m.alarm(alarm(AlarmAction::Get, 0, AlarmType::Nospace)),
        listed
    );
    step!(
        "list CORRUPT",
        c.m.alarm(alarm(AlarmAction::Get, 0, AlarmType::Corrupt)),
        listed
    );
    let errors = |s: etcdsql::proto::etcdserverpb::StatusResponse| {
        format!("{:?}", s.errors).replace(&me.to_string(), "self")
    };
    step!("status", c.m.status(StatusRequest {}), errors);
    step!("put", c.kv.put(put("a/2", "v")), |_| String::new());
    let txn = |success: Vec<Op>| TxnRequest {
        success: success
            .into_iter()
            .map(|r| RequestOp { request: Some(r) })
            .collect(),
        ..Default::default()
    };
    let get = |key: &str| RangeRequest {
        key: key.into(),
        ..Default::default()
    };
    // The keys under a/.
    let range = |serializable: bool| RangeRequest {
        key: "a/".into(),
        range_end: "a0".into(),
        serializable,
        ..Default::default()
    };
    let delete = |key: &str| DeleteRangeRequest {
        key: key.into(),
        ..Default::default()
    };
    step!(
        "txn put",
        c.kv.txn(txn(vec![Op::RequestPut(put("a/3", "v"))])),
        |t| t.succeeded.to_string()
    );
    step!(
        "txn delete",
        c.kv.txn(txn(vec![Op::RequestDeleteRange(delete("a/9"))])),
        |t| t.succeeded.to_string()
    );
    step!(
        "txn read",
        c.kv.txn(txn(vec![Op::RequestRange(get("a/1"))])),
        |t| t.succeeded.to_string()
    );
    step!("range", c.kv.range(range(false)), |r| r.count.to_string());
    step!("delete", c.kv.delete_range(delete("a/1")), |d| d
        .deleted
        .to_string());
    step!(
        "lease grant",
        c.lease.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }),
        |_| String::new()
    );
    step!(
        "compact",
        c.kv.compact(CompactionRequest {
            revision: 2,
            physical: true
        }),
        |_| String::new()
    );
    step!(
        "deactivate another member's",
        c.m.alarm(alarm(AlarmAction::Deactivate, me ^ 1, AlarmType::Nospace)),
        listed
    );
    step!(
        "deactivate",
        c.m.alarm(alarm(AlarmAction::Deactivate, me, AlarmType::Nospace)),
        listed
    );
    step!(
        "deactivate again",
        c.m.alarm(alarm(AlarmAction::Deactivate, me, AlarmType::Nospace)),
        listed
    );
    step!(
        "list after",
        c.m.alarm(alarm(AlarmAction::Get, 0, AlarmType::None)),
        listed
    );
    step!("put after", c.kv.put(put("a/4", "v")), |_| String::new());
    step!("status after", c.m.status(StatusRequest {}), errors);
    // CORRUPT refuses writes; reads go on.
    step!(
        "activate CORRUPT",
        c.m.alarm(alarm(AlarmAction::Activate, me, AlarmType::Corrupt)),
        listed
    );
    step!("corrupt: range", c.kv.range(range(false)), |r| r
        .count
        .to_string());
    step!(
        "corrupt: serializable range",
        c.kv.range(range(true)),
        |r| r.count.to_string()
    );
    step!(
        "corrupt: txn read",
        c.kv.txn(txn(vec![Op::RequestRange(get("a/2"))])),
        |t| t.succeeded.to_string()
    );
    step!(
        "corrupt: txn put",
        c.kv.txn(txn(vec![Op::RequestPut(put("a/7", "v"))])),
        |t| t.succeeded.to_string()
    );
    step!("corrupt: put", c.kv.put(put("a/7", "v")), |_| String::new());
    step!("corrupt: delete", c.kv.delete_range(delete("a/4")), |d| d
        .deleted
        .to_string());
    step!(
        "corrupt: lease grant",
        c.lease.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 }),
        |_| String::new()
    );
    step!(
        "deactivate CORRUPT",
        c.m.alarm(alarm(AlarmAction::Deactivate, me, AlarmType::Corrupt)),
        listed
    );
    // Membership requests etcd refuses before it would change anything.
    step!(
        "member list",
        c.cluster.member_list(MemberListRequest::default()),
        |r| format!(
            "{} member(s), header revision {}",
            r.members.len(),
            r.header.map_or(-1, |h| h.revision)
        )
    );
    step!(
        "member remove unknown",
        c.cluster.member_remove(MemberRemoveRequest { id: me ^ 1 }),
        |_| String::new()
    );
    step!(
        "member update unknown",
        c.cluster.member_update(MemberUpdateRequest {
            id: me ^ 1,
            peer_ur_ls: vec!["http://127.0.0.1:1".into()],
        }),
        |_| String::new()
    );
    step!(
        "member promote self",
        c.cluster.member_promote(MemberPromoteRequest { id: me }),
        |_| String::new()
    );
    step!(
        "member add without a port",
        c.cluster.member_add(MemberAddRequest {
            peer_ur_ls: vec!["http://127.0.0.1".into()],
            is_learner: false,
        }),
        |_| String::new()
    );
    step!(
        "member add with a path",
        c.cluster.member_add(MemberAddRequest {
            peer_ur_ls: vec!["http://127.0.0.1:1/p".into()],
            is_learner: true,
        }),
        |_| String::new()
    );
    step!(
        "move leader to self",
        c.m.move_leader(MoveLeaderRequest { target_id: me }),
        |r| format!("header {}", r.header.is_some())
    );
    step!(
        "move leader elsewhere",
        c.m.move_leader(MoveLeaderRequest { target_id: me ^ 1 }),
        |_| String::new()
    );
    // A type etcd does not know: kept, listed, named by its number in
    // Status; writes go on.
    let unknown = |action: AlarmAction| AlarmRequest {
        action: action as i32,
        member_id: me,
        alarm: 7,
    };
    step!(
        "activate type 7",
        c.m.alarm(unknown(AlarmAction::Activate)),
        listed
    );
    step!(
        "list all with type 7",
        c.m.alarm(alarm(AlarmAction::Get, 0, AlarmType::None)),
        listed
    );
    step!("list type 7", c.m.alarm(unknown(AlarmAction::Get)), listed);
    step!("status with type 7", c.m.status(StatusRequest {}), errors);
    step!("put with type 7", c.kv.put(put("a/7", "v")), |_| {
        String::new()
    });
    step!(
        "deactivate type 7",
        c.m.alarm(unknown(AlarmAction::Deactivate)),
        listed
    );
    step!(
        "list all after type 7",
        c.m.alarm(alarm(AlarmAction::Get, 0, AlarmType::None)),
        listed
    );
    // etcd 3.4 keeps an alarm of type NONE (listed, and in Status as
    // "memberID:N "); 3.5 ignores it, and so does etcdsql, which reports
    // 3.5. Compared only as far as both agree: nothing new in force.
    let none =
        c.m.alarm(alarm(AlarmAction::Activate, me, AlarmType::None))
            .await
            .unwrap()
            .into_inner();
    out.push(format!(
        "activate NONE: puts {}",
        outcome(c.kv.put(put("a/6", "v")).await, |_| String::new())
    ));
    if none.alarms.is_empty() {
        let all =
            c.m.alarm(alarm(AlarmAction::Get, 0, AlarmType::None))
                .await
                .unwrap()
                .into_inner();
        assert!(all.alarms.is_empty(), "{all:?}");
    }
    let h1 = c.m.hash(HashRequest {}).await.unwrap().into_inner().hash;
    let h2 = c.m.hash(HashRequest {}).await.unwrap().into_inner().hash;
    c.kv.put(put("a/5", "v")).await.unwrap();
    let h3 = c.m.hash(HashRequest {}).await.unwrap().into_inner().hash;
    out.push(format!(
        "hash: stable {}, changed by a put {}",
        h1 == h2,
        h2 != h3
    ));
    out
}

/// /health on the client URL answers as etcd's: unhealthy (503) while an
/// alarm is raised, unless `exclude` names it; /version is JSON.
async fn health_reports_alarms(target: Target) {
    let s = Started::new(target, bin()).await.expect("start");
    let port: u16 = s
        .server
        .endpoint
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let get = |path: &'static str| crate::deploy::http_get(port, path);
    let status = |answer: &str| answer.split_whitespace().nth(1).map(str::to_string);
    let mut c = clients(&s.server).await;
    let me =
        c.m.status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .member_id;
    let healthy = get("/health").await;
    assert_eq!(status(&healthy).as_deref(), Some("200"), "{healthy}");
    assert!(healthy.contains(r#"{"health":"true"}"#), "{healthy}");
    let alarm = |action: AlarmAction| AlarmRequest {
        action: action as i32,
        member_id: me,
        alarm: AlarmType::Nospace as i32,
    };
    c.m.alarm(alarm(AlarmAction::Activate)).await.unwrap();
    let raised = get("/health").await;
    assert_eq!(status(&raised).as_deref(), Some("503"), "{raised}");
    assert!(raised.contains(r#"{"health":"false"}"#), "{raised}");
    let excluded = get("/health?exclude=NOSPACE").await;
    assert_eq!(status(&excluded).as_deref(), Some("200"), "{excluded}");
    c.m.alarm(alarm(AlarmAction::Deactivate)).await.unwrap();
    let cleared = get("/health").await;
    assert_eq!(status(&cleared).as_deref(), Some("200"), "{cleared}");
    // A type etcd does not know is named by its number, as etcd names it.
    let unknown = |action: AlarmAction| AlarmRequest {
        alarm: 7,
        ..alarm(action)
    };
    c.m.alarm(unknown(AlarmAction::Activate)).await.unwrap();
    let raised = get("/health").await;
    assert_eq!(status(&raised).as_deref(), Some("503"), "{raised}");
    let excluded = get("/health?exclude=7").await;
    assert_eq!(status(&excluded).as_deref(), Some("200"), "{excluded}");
    c.m.alarm(unknown(AlarmAction::Deactivate)).await.unwrap();
    let cleared = get("/health").await;
    assert_eq!(status(&cleared).as_deref(), Some("200"), "{cleared}");
    let version = get("/version").await;
    assert!(
        version.contains(r#"{"etcdserver":"3."#) && version.contains(r#""etcdcluster":"3."#),
        "{version}"
    );
}

/// Alarms, Hash and MoveLeader: the same answers as etcd 3.4's.
async fn alarms_as_etcd(target: Target) {
    if !Target::Etcd.available() {
        return;
    }
    let etcd = Started::new(Target::Etcd, bin()).await.expect("etcd");
    let ours = Started::new(target, bin()).await.expect("etcdsql");
    let want = script(&mut clients(&etcd.server).await).await;
    let got = script(&mut clients(&ours.server).await).await;
    // What etcd answers, checked here too, so that a change on both sides
    // does not go unnoticed.
    for line in [
        "activate NOSPACE: ok [\"self:Nospace\"]",
        "status: ok [\"memberID:self alarm:NOSPACE \"]",
        "put: error ResourceExhausted etcdserver: mvcc: database space exceeded",
        "txn put: error ResourceExhausted etcdserver: mvcc: database space exceeded",
        "txn delete: ok true",
        "delete: ok 1",
        "deactivate: ok [\"self:Nospace\"]",
        "deactivate again: ok []",
        "put after: ok ",
        "move leader elsewhere: error FailedPrecondition etcdserver: bad leader transferee",
        "hash: stable true, changed by a put true",
        "activate NONE: puts ok ",
        "activate type 7: ok [\"self:7\"]",
        "status with type 7: ok [\"memberID:self alarm:7 \"]",
        "put with type 7: ok ",
        "member list: ok 1 member(s), header revision 0",
        "member remove unknown: error NotFound etcdserver: member not found",
        "member promote self: error FailedPrecondition etcdserver: can only promote a learner member",
        "member add without a port: error InvalidArgument etcdserver: given member URLs are invalid",
        "corrupt: range: ok 1",
        "corrupt: txn read: ok true",
        "corrupt: put: error DataLoss etcdserver: corrupt cluster",
        "corrupt: delete: error DataLoss etcdserver: corrupt cluster",
    ] {
        assert!(
            want.iter().any(|l| l == line),
            "etcd: no {line:?} in {want:#?}"
        );
    }
    assert_eq!(
        got,
        want,
        "alarms on {} differ from etcd 3.4",
        target.name()
    );
    eprintln!(
        "alarms on {}: {} answers equal to etcd 3.4's",
        target.name(),
        want.len()
    );
}

/// `--quota-backend-bytes`: writes past the quota fail and raise NOSPACE,
/// which another etcdsql on the same database enforces too; disarmed, the
/// alarm comes back while the database is still over the quota.
async fn quota(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    // The schema's own size first: the quota is 256 KiB above it.
    let size = {
        let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
        let mut c = clients(&p).await;
        c.m.status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .db_size
    };
    let quota = (size + (256 << 10)).to_string();
    let a = Process::etcdsql_with(bin(), &db.dsn, &["--quota-backend-bytes", &quota])
        .await
        .expect("etcdsql with a quota");
    let b = Process::etcdsql(bin(), &db.dsn)
        .await
        .expect("a second etcdsql");
    let (mut ca, mut cb) = (clients(&a).await, clients(&b).await);
    let value = "x".repeat(4096);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut written = 0;
    let refused = loop {
        match ca.kv.put(put(&format!("q/{written:05}"), &value)).await {
            Ok(_) => written += 1,
            Err(s) => break s,
        }
        assert!(
            Instant::now() < deadline,
            "{written} puts of 4 KiB and the quota of {quota} bytes never refused one"
        );
    };
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert_eq!(
        refused.message(),
        "etcdserver: mvcc: database space exceeded"
    );
    assert!(written > 0, "the first put was refused");
    let alarms =
        ca.m.alarm(AlarmRequest::default())
            .await
            .unwrap()
            .into_inner()
            .alarms;
    let me =
        ca.m.status(StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .member_id;
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!(
        (alarms[0].member_id, alarms[0].alarm),
        (me, AlarmType::Nospace as i32)
    );
    // Nothing refused was written.
    let r = ca
        .kv
        .range(RangeRequest {
            key: format!("q/{written:05}").into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.count, 0, "a refused put was stored");
    // The other process (no quota of its own) sees the alarm within its
    // refresh and refuses writes too; it still reads and deletes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cb.kv.put(put("q/b", "v")).await {
            Err(s) if s.code() == tonic::Code::ResourceExhausted => break,
            r => assert!(
                Instant::now() < deadline,
                "the other etcdsql never enforced the alarm: {r:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = cb.m.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(
        status.errors,
        vec![format!("memberID:{me} alarm:NOSPACE ")],
        "the other etcdsql's status"
    );
    cb.kv
        .delete_range(DeleteRangeRequest {
            key: "q/00000".into(),
            ..Default::default()
        })
        .await
        .expect("a delete under NOSPACE");
    // Disarmed (from the other process) while still over the quota: the
    // next write on the quota's process refuses again and re-raises it.
    let gone =
        cb.m.alarm(AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id: me,
            alarm: AlarmType::Nospace as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .alarms;
    assert_eq!(gone.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = ca.kv.put(put("q/again", "v")).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::ResourceExhausted, "{again:?}");
    let alarms =
        cb.m.alarm(AlarmRequest::default())
            .await
            .unwrap()
            .into_inner()
            .alarms;
    assert_eq!(alarms.len(), 1, "the alarm was raised again: {alarms:?}");
    eprintln!(
        "quota on {}: {written} puts of 4 KiB, then NOSPACE on both processes",
        target.name()
    );
}

/// Kills a started process when dropped.
pub(crate) struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Everything a client sees of a store: each key's version with its
/// revisions and lease, at the head and at a past revision; the header
/// revision; HashKV; the lease's keys.
pub(crate) async fn view(c: &mut etcd_client::Client) -> Vec<String> {
    use etcd_client::{GetOptions, LeaseTimeToLiveOptions};
    let mut out = Vec::new();
    for rev in [0, 30, 300] {
        let r = c
            .get(
                vec![0u8],
                Some(GetOptions::new().with_from_key().with_revision(rev)),
            )
            .await
            .unwrap();
        out.push(format!(
            "at {rev}: header {}",
            r.header().unwrap().revision()
        ));
        for kv in r.kvs() {
            out.push(format!(
                "{:?} {} create {} mod {} version {} lease {:x}",
                String::from_utf8_lossy(kv.key()),
                kv.value().len(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease()
            ));
        }
    }
    let users = c.user_list().await.unwrap();
    let roles = c.role_list().await.unwrap();
    out.push(format!(
        "users {:?} roles {:?}",
        users.users(),
        roles.roles()
    ));
    let perms = c.role_get("app").await.unwrap().permissions();
    out.push(format!("role app {perms:?}"));
    let h = c.hash_kv(0).await.unwrap();
    out.push(format!(
        "hashkv {} compact {}",
        h.hash(),
        h.compact_version()
    ));
    let t = c
        .lease_time_to_live(0x1234, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    out.push(format!(
        "lease 1234 granted {} keys {:?}",
        t.granted_ttl(),
        t.keys()
    ));
    out
}

/// Snapshot: `etcdctl snapshot save` from etcdsql, `snapshot restore`, and
/// etcd 3.4 started on the restored directory answers as etcdsql did.
async fn snapshot_restore(target: Target) {
    use crate::transfer::{etcdctl, restored, write_history};
    if !Target::Etcd.available() {
        return;
    }
    let ours = Started::new(target, bin()).await.expect("etcdsql");
    let mut c = ours.server.client().await.unwrap();
    write_history(&mut c).await;
    let want = view(&mut c).await;

    let dir = std::env::temp_dir().join(etcdsql_integration::unique_name("snapshot"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("s.db");
    let endpoint = format!("--endpoints={}", ours.server.endpoint);
    etcdctl(&[&endpoint, "snapshot", "save", file.to_str().unwrap()]);
    let status = etcdctl(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    let revision = want[0].trim_start_matches("at 0: header ");
    assert!(
        status.contains(&format!("\"revision\":{revision}")),
        "snapshot status {status} for revision {revision}"
    );
    let (etcd, mut e) = restored(&file, &dir).await;
    let got = view(&mut e).await;
    drop(etcd);
    assert_eq!(
        got,
        want,
        "etcd restored from etcdsql's snapshot ({})",
        target.name()
    );
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "snapshot of {}: restored by etcdctl 3.4, etcd answers the same {} lines",
        target.name(),
        want.len()
    );
}
