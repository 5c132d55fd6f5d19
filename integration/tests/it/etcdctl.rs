//! etcdctl 3.4 (Debian's etcd-client) against etcdsql: the same commands
//! against etcd and etcdsql must print the same thing. etcdctl 3.4 has no
//! `--count-only` (3.5 added it); count-only ranges are in the kv table.

use std::process::{Command, Stdio};

use etcdsql_integration::{Started, Target};

use crate::bin;

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
];

fn etcdctl(endpoint: &str, args: &[&str], stdin: &str) -> String {
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
    if !target.available() || !Target::Etcd.available() {
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
    eprintln!(
        "etcdctl on {}: {} commands identical to etcd 3.4, endpoint status ok",
        target.name(),
        COMMANDS.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_sqlite() {
    check(Target::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_postgres() {
    check(Target::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_mariadb() {
    check(Target::Mariadb).await;
}
