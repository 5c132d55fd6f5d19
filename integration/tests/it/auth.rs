//! Auth: users, roles, permissions and tokens as etcd 3.4 answers them,
//! through etcdctl and raw gRPC; tokens and changes shared by two etcdsql
//! processes on one database; JWT tokens.

use std::time::{Duration, Instant};

use etcdsql::proto::etcdserverpb::auth_client::AuthClient;
use etcdsql::proto::etcdserverpb::kv_client::KvClient;
use etcdsql::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use etcdsql::proto::etcdserverpb::watch_client::WatchClient;
use etcdsql::proto::etcdserverpb::{
    AuthenticateRequest, DefragmentRequest, HashKvRequest, HashRequest, PutRequest, RangeRequest,
    SnapshotRequest, WatchCreateRequest, WatchRequest, watch_request::RequestUnion,
};
use etcdsql_integration::{Process, Started, Target, TestDb};
use tonic::transport::Channel;

use crate::{Case, bin, case};

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "etcdctl_as_etcd",
            &[Target::Sqlite, Target::Postgres, Target::Mariadb],
            etcdctl_as_etcd
        ),
        case!(
            "grpc_as_etcd",
            &[Target::Sqlite, Target::Postgres, Target::Mariadb],
            grpc_as_etcd
        ),
        case!("shared", &Target::ETCDSQL, shared),
        case!("jwt", &[Target::Sqlite, Target::Postgres], jwt),
    ]
}

/// (etcdctl arguments, stdin).
const COMMANDS: &[&[&str]] = &[
    &["auth", "enable"],
    &["user", "add", "root", "--new-user-password=rootpw"],
    &["user", "grant-role", "root", "root"],
    &["role", "add", "app"],
    &["role", "add", "app"],
    &["role", "add", ""],
    &[
        "role",
        "grant-permission",
        "app",
        "readwrite",
        "/app/",
        "--prefix",
    ],
    &["role", "grant-permission", "app", "read", "/ro"],
    &["role", "grant-permission", "app", "write", "/wo/a", "/wo/m"],
    &[
        "role",
        "grant-permission",
        "app",
        "read",
        "/from/",
        "--from-key",
    ],
    &["role", "grant-permission", "nope", "read", "/x"],
    &["role", "get", "app"],
    &["role", "get", "nope"],
    &["user", "add", "alice", "--new-user-password=alicepw"],
    &["user", "add", "alice", "--new-user-password=x"],
    &["user", "grant-role", "alice", "app"],
    &["user", "grant-role", "alice", "nope"],
    &["user", "grant-role", "nobody", "app"],
    &["user", "get", "alice"],
    &["user", "get", "nobody"],
    &["user", "list"],
    &["role", "list"],
    &["put", "/app/x", "before"],
    &["auth", "enable"],
    &["auth", "enable"],
    &["--user=alice:alicepw", "put", "/app/x", "1"],
    &["--user=alice:alicepw", "get", "/app/", "--prefix"],
    &["--user=alice:alicepw", "put", "/other", "1"],
    &["--user=alice:alicepw", "get", "/other"],
    &["--user=alice:alicepw", "get", "/ro"],
    &["--user=alice:alicepw", "put", "/ro", "v"],
    &["--user=alice:alicepw", "put", "/wo/b", "v"],
    &["--user=alice:alicepw", "get", "/wo/b"],
    &["--user=alice:alicepw", "get", "/from/zzz"],
    &["--user=alice:alicepw", "get", "/from/", "--from-key"],
    &["--user=alice:alicepw", "get", "/app/", "--from-key"],
    &["--user=alice:alicepw", "del", "/app/x"],
    &["--user=alice:alicepw", "txn", "-i"],
    &["--user=alice:alicepw", "user", "list"],
    &["--user=alice:alicepw", "user", "get", "alice"],
    &["--user=alice:alicepw", "role", "get", "app"],
    &["--user=alice:wrong", "get", "/app/x"],
    &["--user=nobody:x", "get", "/app/x"],
    &["get", "/app/x"],
    &["--user=root:rootpw", "get", "/other"],
    &["--user=root:rootpw", "user", "delete", "root"],
    &["--user=root:rootpw", "role", "delete", "root"],
    &["--user=root:rootpw", "user", "revoke-role", "root", "root"],
    &[
        "--user=root:rootpw",
        "role",
        "revoke-permission",
        "app",
        "/ro",
    ],
    &[
        "--user=root:rootpw",
        "role",
        "revoke-permission",
        "app",
        "/ro",
    ],
    &[
        "--user=root:rootpw",
        "role",
        "revoke-permission",
        "app",
        "/wo/a",
        "/wo/m",
    ],
    &["--user=alice:alicepw", "get", "/ro"],
    &[
        "--user=root:rootpw",
        "user",
        "passwd",
        "alice",
        "--interactive=false",
    ],
    &["--user=alice:alicepw", "get", "/app/x"],
    &["--user=alice:alice2", "get", "/app/x"],
    &["--user=root:rootpw", "user", "revoke-role", "alice", "app"],
    &["--user=root:rootpw", "user", "revoke-role", "alice", "app"],
    &["--user=alice:alice2", "get", "/app/x"],
    &["--user=root:rootpw", "role", "delete", "app"],
    &["--user=root:rootpw", "user", "delete", "alice"],
    &["--user=root:rootpw", "user", "list"],
    &["--user=root:rootpw", "auth", "disable"],
    &["auth", "disable"],
    &["get", "/app/x"],
    &["user", "list"],
];

/// What `txn -i` and `user passwd` read from stdin.
fn stdin_of(args: &[&str]) -> &'static str {
    if args.contains(&"txn") {
        "value(\"/app/x\") = \"1\"\n\nput /app/y 2\n\nget /app/x\n\n"
    } else if args.contains(&"passwd") {
        "alice2\n"
    } else {
        ""
    }
}

fn transcript(endpoint: &str) -> Vec<String> {
    COMMANDS
        .iter()
        .map(|args| crate::etcdctl::etcdctl(endpoint, args, stdin_of(args)))
        .collect()
}

async fn etcdctl_as_etcd(target: Target) {
    if !Target::Etcd.available() {
        return;
    }
    let etcd = Started::new(Target::Etcd, bin()).await.expect("etcd");
    let ours = Started::new(target, bin()).await.expect("etcdsql");
    let want = transcript(&etcd.server.endpoint);
    let got = transcript(&ours.server.endpoint);
    for ((cmd, want), got) in COMMANDS.iter().zip(&want).zip(&got) {
        assert_eq!(got, want, "etcdctl {cmd:?} on {}", target.name());
    }
    // Checked on etcd's side as well, so that a change of both goes seen.
    let at = |cmd: &[&str]| {
        let i = COMMANDS.iter().position(|c| *c == cmd).unwrap();
        want[i].as_str()
    };
    assert!(
        at(&["--user=alice:alicepw", "put", "/other", "1"])
            .contains("etcdserver: permission denied"),
        "{want:#?}"
    );
    assert!(at(&["--user=alice:alicepw", "put", "/app/x", "1"]).starts_with("exit Some(0)\nOK"));
    assert!(at(&["get", "/app/x"]).contains("etcdserver: user name is empty"));
    assert!(
        at(&["--user=alice:wrong", "get", "/app/x"])
            .contains("authentication failed, invalid user ID or password")
    );
    // etcd 3.5 (whose version etcdsql reports) compacts for root only;
    // 3.4 let any user.
    let compact = |user: &str| {
        crate::etcdctl::etcdctl(
            &ours.server.endpoint,
            &[&format!("--user={user}"), "compaction", "2"],
            "",
        )
    };
    for args in [
        &["--user=root:rootpw", "auth", "enable"][..],
        &[
            "--user=root:rootpw",
            "user",
            "add",
            "carol",
            "--new-user-password=c",
        ],
    ] {
        let out = crate::etcdctl::etcdctl(&ours.server.endpoint, args, "");
        assert!(out.starts_with("exit Some(0)"), "{args:?}: {out}");
    }
    assert!(
        compact("carol:c").contains("Error: etcdserver: permission denied"),
        "{}",
        compact("carol:c")
    );
    assert!(compact("root:rootpw").starts_with("exit Some(0)\ncompacted revision 2"));
    eprintln!(
        "auth through etcdctl on {}: {} commands identical to etcd 3.4",
        target.name(),
        COMMANDS.len()
    );
}

async fn channel(p: &Process) -> Channel {
    Channel::from_shared(format!("http://{}", p.endpoint))
        .unwrap()
        .connect()
        .await
        .expect("gRPC connection")
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("token", token.parse().unwrap());
    r
}

/// Sets up root and a user `bob` with read on /w/ (etcdctl), enables auth.
fn setup(endpoint: &str) {
    for args in [
        &["user", "add", "root", "--new-user-password=rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "w"],
        &["role", "grant-permission", "w", "read", "/w/", "--prefix"],
        &["user", "add", "bob", "--new-user-password=bobpw"],
        &["user", "grant-role", "bob", "w"],
        &["auth", "enable"],
    ] {
        let out = crate::etcdctl::etcdctl(endpoint, args, "");
        assert!(out.starts_with("exit Some(0)"), "etcdctl {args:?}: {out}");
    }
}

fn maybe_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    match token {
        Some(t) => with_token(msg, t),
        None => tonic::Request::new(msg),
    }
}

async fn token(ch: &Channel, user: &str, password: &str) -> Result<String, tonic::Status> {
    Ok(AuthClient::new(ch.clone())
        .authenticate(AuthenticateRequest {
            name: user.into(),
            password: password.into(),
        })
        .await?
        .into_inner()
        .token)
}

/// Raw answers: forged token, watch refusals, a watch that outlives its
/// permission (etcd checks on create only).
async fn grpc_script(p: &Process) -> Vec<String> {
    setup(&p.endpoint);
    let ch = channel(p).await;
    let mut out = Vec::new();
    let status = |s: tonic::Status| format!("{:?} {}", s.code(), s.message());
    let bob = token(&ch, "bob", "bobpw").await.expect("bob's token");
    let root = token(&ch, "root", "rootpw").await.expect("root's token");
    let parts: Vec<&str> = bob.split('.').collect();
    out.push(format!(
        "simple token shape: {} parts, {} letters, numeric tail {}",
        parts.len(),
        parts[0].len(),
        parts.get(1).is_some_and(|n| n.parse::<u64>().is_ok())
    ));
    let mut kv = KvClient::new(ch.clone());
    let get = |key: &str| RangeRequest {
        key: key.into(),
        ..Default::default()
    };
    out.push(match kv.range(with_token(get("/w/a"), "forged.1")).await {
        Ok(_) => "forged token: ok".into(),
        Err(s) => format!("forged token: {}", status(s)),
    });
    out.push(match kv.range(with_token(get("/w/a"), &bob)).await {
        Ok(r) => format!("bob reads /w/a: {}", r.into_inner().count),
        Err(s) => format!("bob reads /w/a: {}", status(s)),
    });
    // Watches: refused on create with etcd's reason and watch id -1.
    let watch = async |token: Option<&str>, key: &str| -> Vec<String> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: key.into(),
                range_end: format!("{key}\u{7f}").into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(t) = token {
            req.metadata_mut().insert("token", t.parse().unwrap());
        }
        let mut stream = WatchClient::new(ch.clone())
            .watch(req)
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        let mut lines = vec![format!(
            "watch {key} as {}: id {} created {} canceled {} reason {:?}",
            token.map_or("nobody", |t| if t == bob { "bob" } else { "root" }),
            first.watch_id,
            first.created,
            first.canceled,
            first.cancel_reason
        )];
        if !first.canceled {
            // Permission revoked meanwhile: etcd keeps delivering.
            let revoke = crate::etcdctl::etcdctl(
                &p.endpoint,
                &["--user=root:rootpw", "user", "revoke-role", "bob", "w"],
                "",
            );
            lines.push(format!("revoke: {}", revoke.trim()));
            KvClient::new(ch.clone())
                .put(with_token(
                    PutRequest {
                        key: format!("{key}k").into(),
                        value: "v".into(),
                        ..Default::default()
                    },
                    &root,
                ))
                .await
                .unwrap();
            let next = tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .map(|m| m.ok().flatten());
            lines.push(match next {
                Ok(Some(m)) => format!(
                    "after revoke: {} events, canceled {}",
                    m.events.len(),
                    m.canceled
                ),
                Ok(None) => "after revoke: stream ended".into(),
                Err(_) => "after revoke: nothing in 5 s".into(),
            });
        }
        drop(tx);
        lines
    };
    // Maintenance calls are root's; etcd answers the others with its auth
    // store's own errors.
    let mut m = MaintenanceClient::new(ch.clone());
    for (who, t) in [
        ("nobody", None),
        ("forged", Some("forged.1")),
        ("bob", Some(bob.as_str())),
        ("root", Some(root.as_str())),
    ] {
        let answer = |r: Result<(), tonic::Status>| r.map_or_else(status, |()| "ok".into());
        let r = m.defragment(maybe_token(DefragmentRequest {}, t)).await;
        out.push(format!("defragment as {who}: {}", answer(r.map(drop))));
        let r = m
            .hash_kv(maybe_token(HashKvRequest { revision: 0 }, t))
            .await;
        out.push(format!("hashkv as {who}: {}", answer(r.map(drop))));
        let r = m.hash(maybe_token(HashRequest {}, t)).await;
        out.push(format!("hash as {who}: {}", answer(r.map(drop))));
        if who != "root" {
            let r = m.snapshot(maybe_token(SnapshotRequest {}, t)).await;
            out.push(format!("snapshot as {who}: {}", answer(r.map(drop))));
        }
    }
    out.extend(watch(None, "/w/").await);
    out.extend(watch(Some("forged.1"), "/w/").await);
    out.extend(watch(Some(&bob), "/x/").await);
    out.extend(watch(Some(&bob), "/w/").await);
    out
}

/// etcd 3.5 also takes the token from `authorization: Bearer …` (3.4 does
/// not).
async fn bearer(p: &Process) {
    let ch = channel(p).await;
    let root = token(&ch, "root", "rootpw").await.expect("root's token");
    let mut r = tonic::Request::new(RangeRequest {
        key: "/w/a".into(),
        ..Default::default()
    });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {root}").parse().unwrap());
    KvClient::new(ch).range(r).await.expect("a bearer token");
}

async fn grpc_as_etcd(target: Target) {
    if !Target::Etcd.available() {
        return;
    }
    let etcd = Started::new(Target::Etcd, bin()).await.expect("etcd");
    let ours = Started::new(target, bin()).await.expect("etcdsql");
    let want = grpc_script(&etcd.server).await;
    let got = grpc_script(&ours.server).await;
    assert!(
        want.iter()
            .any(|l| l == "forged token: Unauthenticated etcdserver: invalid auth token"),
        "{want:#?}"
    );
    assert!(
        want.iter()
            .any(|l| l == "defragment as bob: Unknown auth: permission denied"),
        "{want:#?}"
    );
    assert_eq!(got, want, "auth over gRPC on {}", target.name());
    bearer(&ours.server).await;
    eprintln!(
        "auth over gRPC on {}: {} answers identical to etcd 3.4",
        target.name(),
        want.len()
    );
}

/// Two processes on one database: a token from one works on the other, and
/// a change made through one holds on the other within its poll.
async fn shared(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let a = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql a");
    let b = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql b");
    setup(&a.endpoint);
    let (cha, chb) = (channel(&a).await, channel(&b).await);
    let bob = token(&cha, "bob", "bobpw").await.expect("bob's token on a");
    let mut kvb = KvClient::new(chb.clone());
    let read = RangeRequest {
        key: "/w/x".into(),
        ..Default::default()
    };
    // b learns that auth is on within its poll (until then it serves
    // anyone, as a process that has not heard of the change); from then a
    // write outside bob's roles is refused there.
    let put = PutRequest {
        key: "/w/x".into(),
        value: "v".into(),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let denied = loop {
        match kvb.put(with_token(put.clone(), &bob)).await {
            Err(s) if s.code() == tonic::Code::PermissionDenied => break s,
            r => assert!(
                Instant::now() < deadline,
                "b never enforced the auth enabled through a: {r:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(denied.message(), "etcdserver: permission denied");
    // bob's token from a works on b.
    kvb.range(with_token(read.clone(), &bob))
        .await
        .expect("a's token on b");
    let none = kvb.range(read.clone()).await.unwrap_err();
    assert_eq!(none.message(), "etcdserver: user name is empty");
    // Deleting bob on a ends his token on b.
    let root = token(&cha, "root", "rootpw").await.unwrap();
    AuthClient::new(cha.clone())
        .user_delete(with_token(
            etcdsql::proto::etcdserverpb::AuthUserDeleteRequest { name: "bob".into() },
            &root,
        ))
        .await
        .expect("deleting bob");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match kvb.range(with_token(read.clone(), &bob)).await {
            Err(s) if s.code() == tonic::Code::Unauthenticated => break,
            r => assert!(
                Instant::now() < deadline,
                "b still accepts a deleted user's token: {r:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wrong = token(&chb, "root", "nope").await.unwrap_err();
    assert_eq!(
        wrong.message(),
        "etcdserver: authentication failed, invalid user ID or password"
    );
    eprintln!("auth shared by two etcdsql processes on {}", target.name());
}

/// `--auth-token jwt,…`: tokens signed by one process verify on another
/// with the same keys; a forged or tampered one is refused; an auth change
/// makes earlier tokens old, as in etcd.
async fn jwt(target: Target) {
    let dir = std::env::temp_dir().join(etcdsql_integration::unique_name("jwt"));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, public) = (dir.join("key.pem"), dir.join("pub.pem"));
    let genrsa = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .expect("openssl");
    assert!(genrsa.status.success(), "{genrsa:?}");
    let pubout = std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .output()
        .expect("openssl");
    assert!(pubout.status.success(), "{pubout:?}");
    let flag = format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256,ttl=10m",
        public.display(),
        key.display()
    );
    let db = TestDb::create(target).await.expect("database");
    let args = ["--auth-token", flag.as_str()];
    let a = Process::etcdsql_with(bin(), &db.dsn, &args)
        .await
        .expect("etcdsql a");
    let b = Process::etcdsql_with(bin(), &db.dsn, &args)
        .await
        .expect("etcdsql b");
    setup(&a.endpoint);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cha, chb) = (channel(&a).await, channel(&b).await);
    let bob = token(&cha, "bob", "bobpw").await.expect("bob's token");
    assert_eq!(bob.split('.').count(), 3, "a JWT: {bob}");
    let read = RangeRequest {
        key: "/w/x".into(),
        ..Default::default()
    };
    KvClient::new(chb.clone())
        .range(with_token(read.clone(), &bob))
        .await
        .expect("a's JWT on b");
    let mut tampered = bob.clone();
    tampered.pop();
    tampered.push(if bob.ends_with('A') { 'B' } else { 'A' });
    // b enforces auth once its poll has seen it on.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match KvClient::new(chb.clone())
            .range(with_token(read.clone(), &tampered))
            .await
        {
            Err(e) if e.code() == tonic::Code::Unauthenticated => break,
            r => assert!(
                Instant::now() < deadline,
                "b accepted a tampered token: {r:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Any auth change makes the token's revision old.
    let out = crate::etcdctl::etcdctl(&a.endpoint, &["--user=root:rootpw", "role", "add", "x"], "");
    assert!(out.starts_with("exit Some(0)"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match KvClient::new(chb.clone())
            .range(with_token(read.clone(), &bob))
            .await
        {
            Err(e) if e.message() == "etcdserver: revision of auth store is old" => break,
            r => assert!(
                Instant::now() < deadline,
                "b took a token from before an auth change: {r:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "JWT tokens across two etcdsql processes on {}",
        target.name()
    );
}
