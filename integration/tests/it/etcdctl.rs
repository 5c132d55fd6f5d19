//! etcdctl 3.4 (Debian's etcd-client) against etcdsql: the same commands
//! against etcd and etcdsql must print the same thing. etcdctl 3.4 has no
//! `--count-only` (3.5 added it); count-only ranges are in the kv table.

use std::process::{Command, Stdio};

use etcdsql_integration::{Started, Target};

use crate::{Case, bin, case};

/// (arguments, standard input)
const COMMANDS: &[(&[&str], &str)] = &[
    (&["put", "k1", "v1"], ""),
    (&["put", "k2", "v2"], ""),
    (&["put", "k3", "v3"], ""),
    (&["put", "k1", "v11", "--prev-kv"], ""),
    (&["get", "k", "--prefix"], ""),
    (&["get", "k1", "--rev=2"], ""),
    (&["get", "k", "--prefix", "--limit=2"], ""),
    (
        &[
            "get",
            "k",
            "--prefix",
            "--sort-by=MODIFY",
            "--order=DESCEND",
        ],
        "",
    ),
    (
        &[
            "get",
            "k",
            "--prefix",
            "--sort-by=VERSION",
            "--order=ASCEND",
        ],
        "",
    ),
    (&["get", "k", "--prefix", "--keys-only"], ""),
    (&["get", "k2", "--from-key"], ""),
    (&["get", "k", "--prefix", "-w", "json"], ""),
    (&["del", "k2", "--prev-kv"], ""),
    (
        &["txn", "-i"],
        "mod(\"k1\") > \"0\"\n\nput k1 v12\nget k3\n\nput k9 no\n\n",
    ),
    (
        &["txn", "-i"],
        "value(\"k1\") = \"nope\"\n\nput k9 no\n\nget k1\n\n",
    ),
    (&["compaction", "3"], ""),
    (&["get", "k1", "--rev=2"], ""),
    (&["compaction", "3"], ""),
    (&["get", "k1", "--rev=3"], ""),
    (&["del", "k", "--prefix", "--prev-kv"], ""),
    (&["get", "", "--from-key"], ""),
    (&["put", "", "x"], ""),
    (&["alarm", "list"], ""),
    (&["alarm", "disarm"], ""),
    (&["move-leader", "1"], ""),
];

pub(crate) fn etcdctl(endpoint: &str, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running etcdctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("writing stdin");
    let out = child.wait_with_output().expect("etcdctl output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // etcdctl logs retries as JSON lines with timestamps; keep its verdict.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let verdict = stderr
        .lines()
        .filter(|l| l.starts_with("Error"))
        .collect::<Vec<_>>();
    let stdout = etcdsql_integration::normalize(
        &stdout
            .replace("\"cluster_id\":", "cluster_id: ")
            .replace("\"member_id\":", "member_id: ")
            .replace("\"raft_term\":", "raft_term: "),
    );
    format!(
        "exit {:?}\n{stdout}{}",
        out.status.code(),
        verdict.join("\n")
    )
}

fn transcript(endpoint: &str) -> Vec<String> {
    COMMANDS
        .iter()
        .map(|(args, stdin)| etcdctl(endpoint, args, stdin))
        .collect()
}

async fn check(target: Target) {
    if !Target::Etcd.available() {
        return;
    }
    let etcd = Started::new(Target::Etcd, bin()).await.expect("etcd");
    let ours = Started::new(target, bin()).await.expect("etcdsql");
    let want = transcript(&etcd.server.endpoint);
    let got = transcript(&ours.server.endpoint);
    for ((cmd, want), got) in COMMANDS.iter().zip(&want).zip(&got) {
        assert_eq!(got, want, "etcdctl {:?} on {}", cmd.0, target.name());
    }
    assert!(want[4].contains("k1\nv11\nk2\nv2\nk3\nv3"), "{}", want[4]);

    let status = etcdctl(&ours.server.endpoint, &["endpoint", "status"], "");
    assert!(
        status.starts_with("exit Some(0)") && status.contains("3.5."),
        "{status}"
    );
    // After the same commands, `endpoint hashkv` prints etcd's hash.
    let hashkv = |endpoint: &str| {
        etcdctl(endpoint, &["endpoint", "hashkv"], "").replace(endpoint, "ENDPOINT")
    };
    let want_hash = hashkv(&etcd.server.endpoint);
    assert!(want_hash.starts_with("exit Some(0)"), "{want_hash}");
    assert_eq!(
        hashkv(&ours.server.endpoint),
        want_hash,
        "etcdctl endpoint hashkv"
    );
    // Defragment answers without a header, as etcd does.
    for server in [&etcd, &ours] {
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{}", server.server.endpoint))
                .unwrap()
                .connect()
                .await
                .expect("connect");
        let r = etcdsql::proto::etcdserverpb::maintenance_client::MaintenanceClient::new(channel)
            .defragment(etcdsql::proto::etcdserverpb::DefragmentRequest {})
            .await
            .expect("defragment")
            .into_inner();
        assert_eq!(r.header, None, "{}", server.target.name());
    }
    // With a scheme in the endpoint, etcdctl 3.4 sends it in `:authority`
    // (`http://127.0.0.1:…`), which etcd serves.
    for server in [&etcd, &ours] {
        let url = format!("http://{}", server.server.endpoint);
        let status = etcdctl(&url, &["endpoint", "status"], "");
        assert!(status.starts_with("exit Some(0)"), "{url}: {status}");
    }
    eprintln!(
        "etcdctl on {}: {} commands identical to etcd 3.4, endpoint status ok",
        target.name(),
        COMMANDS.len()
    );
}

/// `etcdctl watch` until it is stopped after `secs`.
fn etcdctl_watch(endpoint: &str, args: &[&str], secs: u64) -> String {
    let out = Command::new("timeout")
        .arg(secs.to_string())
        .arg("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("watch")
        .args(args)
        .output()
        .expect("running etcdctl watch");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Watch replays and leases through etcdctl; lease ids are the server's
/// choice, so those answers are checked by shape rather than compared.
async fn watch_and_leases(target: Target) {
    if !Target::Etcd.available() {
        return;
    }
    let etcd = Started::new(Target::Etcd, bin()).await.expect("etcd");
    let ours = Started::new(target, bin()).await.expect("etcdsql");
    let mut watches = Vec::new();
    for s in [&etcd, &ours] {
        let e = &s.server.endpoint;
        for (args, stdin) in &COMMANDS[..14] {
            etcdctl(e, args, stdin);
        }
        watches.push((
            etcdctl_watch(e, &["k", "--prefix", "--rev=2", "--prev-kv"], 2),
            etcdctl_watch(e, &["k1", "--rev=3"], 2),
        ));
    }
    assert_eq!(watches[1], watches[0], "etcdctl watch on {}", target.name());
    assert!(
        watches[0].0.contains("PUT\nk1\nv1\nk1\nv11"),
        "{}",
        watches[0].0
    );

    let e = &ours.server.endpoint;
    let grant = etcdctl(e, &["lease", "grant", "60"], "");
    let id = grant
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("lease id in {grant:?}"))
        .to_string();
    assert!(grant.contains("granted with TTL(60s)"), "{grant}");
    assert!(etcdctl(e, &["put", "lk", "v", &format!("--lease={id}")], "").contains("OK"));
    let ttl = etcdctl(e, &["lease", "timetolive", &id, "--keys"], "");
    assert!(ttl.contains("attached keys([lk])"), "{ttl}");
    // Whole seconds left, truncated as etcd does: 59 just after the grant.
    let left: i64 = ttl
        .split("remaining(")
        .nth(1)
        .and_then(|r| r.split("s)").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("remaining TTL in {ttl:?}"));
    assert!((50..60).contains(&left), "{ttl}");
    let list = etcdctl(e, &["lease", "list"], "");
    assert!(
        list.contains("found 1 leases") && list.contains(&id),
        "{list}"
    );
    let keep = etcdctl(e, &["lease", "keep-alive", "--once", &id], "");
    assert!(keep.contains("keepalived with TTL(60)"), "{keep}");
    let revoke = etcdctl(e, &["lease", "revoke", &id], "");
    assert!(revoke.contains("revoked"), "{revoke}");
    assert!(etcdctl(e, &["get", "lk"], "").ends_with("exit Some(0)\n"));
    let members = etcdctl(e, &["member", "list"], "");
    assert!(
        members.contains(&format!("http://{e}")) && members.contains("started"),
        "{members}"
    );
    // etcdctl 3.4 reports health on standard error.
    let health = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            format!("--endpoints={e}"),
            "endpoint".into(),
            "health".into(),
        ])
        .output()
        .expect("etcdctl endpoint health");
    let health = String::from_utf8_lossy(&health.stderr);
    assert!(health.contains(&format!("{e} is healthy")), "{health}");
    eprintln!(
        "etcdctl watch, lease, member list, endpoint health on {}: ok",
        target.name()
    );
}

/// `etcdctl lock` and `etcdctl elect` with two contenders, each on its own
/// etcdsql process of one database.
async fn lock_and_elect(target: Target) {
    use std::time::Instant;
    let db = etcdsql_integration::TestDb::create(target)
        .await
        .expect("database");
    let a = etcdsql_integration::Process::etcdsql(bin(), &db.dsn)
        .await
        .expect("etcdsql a");
    let b = etcdsql_integration::Process::etcdsql(bin(), &db.dsn)
        .await
        .expect("etcdsql b");
    let run = |endpoint: &str, args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcdctl")
    };
    // The first holds the lock for 2 s (through a); the second (through
    // b) gets it only after.
    let started = Instant::now();
    let mut c = a.client().await.expect("client");
    // Until the named prefix holds `n` keys (a holder, contenders).
    let held = async |c: &mut etcd_client::Client, prefix: &str, n: usize| {
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let r = c
                .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
                .await
                .expect("get");
            if r.kvs().len() >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{prefix}: never {n} keys");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let first = run(&a.endpoint, &["lock", "shared-lock", "sleep", "2"]);
    held(&mut c, "shared-lock/", 1).await;
    let second = run(
        &b.endpoint,
        &["lock", "shared-lock", "echo", "second holds it"],
    );
    let second = second.wait_with_output().expect("second lock");
    let waited = started.elapsed();
    let first = first.wait_with_output().expect("first lock");
    assert!(first.status.success(), "{first:?}");
    assert!(
        second.status.success() && String::from_utf8_lossy(&second.stdout) == "second holds it\n",
        "{second:?}"
    );
    assert!(
        waited >= std::time::Duration::from_secs(2),
        "the second contender got the lock after {waited:?}, while the first held it for 2 s"
    );
    // Elections: p1 campaigns through a and leads; p2 campaigns through b
    // and waits; an observer on b sees p1.
    let leader = Command::new("timeout")
        .args(["4", "etcdctl", &format!("--endpoints={}", a.endpoint)])
        .args(["elect", "shared-election", "p1"])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .spawn()
        .expect("etcdctl elect p1");
    held(&mut c, "shared-election/", 1).await;
    let waiting = Command::new("timeout")
        .args(["2", "etcdctl", &format!("--endpoints={}", b.endpoint)])
        .args(["elect", "shared-election", "p2"])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl elect p2");
    let observed = Command::new("timeout")
        .args(["1", "etcdctl", &format!("--endpoints={}", b.endpoint)])
        .args(["elect", "-l", "shared-election"])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl elect -l");
    let leader = leader.wait_with_output().expect("p1");
    let leader = String::from_utf8_lossy(&leader.stdout).into_owned();
    let observed = String::from_utf8_lossy(&observed.stdout).into_owned();
    assert!(
        leader.starts_with("shared-election/") && leader.ends_with("\np1\n"),
        "p1 leads: {leader:?}"
    );
    assert!(
        String::from_utf8_lossy(&waiting.stdout).is_empty(),
        "p2 must wait while p1 leads: {waiting:?}"
    );
    assert_eq!(observed, leader, "the observer on the other process");
    eprintln!(
        "etcdctl lock and elect with two contenders on two etcdsql processes ({}): ok",
        target.name()
    );
}

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "lock_and_elect",
            &[Target::Sqlite, Target::Postgres, Target::Mariadb],
            lock_and_elect
        ),
        case!("commands", &Target::ETCDSQL, check),
        case!("watch_and_leases", &Target::ETCDSQL, watch_and_leases),
    ]
}
