//! `etcdsql import` from an etcd snapshot and from a live etcd, and
//! `etcdsql export` back to etcd: every key, version, revision, lease and
//! user comes across; bad input changes nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{CompactionOptions, LeaseGrantOptions, PutOptions, Txn, TxnOp};
use etcdsql_integration::{Process, Target, TestDb};

use crate::maintenance::{Killed, view};
use crate::{Case, bin, case};

pub fn cases() -> Vec<Case> {
    vec![case!(
        "from_etcd_and_back",
        &[Target::Sqlite, Target::Postgres, Target::Mariadb],
        from_etcd_and_back
    )]
}

/// A history with versions, deletions, a Txn, a lease with keys, a
/// compaction, users and roles, and enough keys for branch pages.
pub(crate) async fn write_history(c: &mut etcd_client::Client) {
    c.user_add("alice", "pw", None).await.unwrap();
    c.role_add("app").await.unwrap();
    c.role_grant_permission(
        "app",
        etcd_client::Permission::read_write("/app/").with_prefix(),
    )
    .await
    .unwrap();
    c.user_grant_role("alice", "app").await.unwrap();
    for i in 0..40 {
        c.put(format!("k{i:02}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    c.delete("k03", None).await.unwrap();
    c.put("k01", "again", None).await.unwrap();
    c.txn(Txn::new().and_then([TxnOp::put("t/a", "1", None), TxnOp::delete("k05", None)]))
        .await
        .unwrap();
    c.lease_grant(600, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .unwrap();
    c.put("leased", "x", Some(PutOptions::new().with_lease(0x1234)))
        .await
        .unwrap();
    c.compact(20, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    for i in 0..1500 {
        c.put(format!("many/{i:05}"), "y".repeat(200), None)
            .await
            .unwrap();
    }
    c.put("big", "z".repeat(9000), None).await.unwrap();
    c.delete("k07", None).await.unwrap();
}

/// Runs etcdctl, which must succeed; answers its standard output.
pub(crate) fn etcdctl(args: &[&str]) -> String {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .expect("etcdctl");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `etcdsql` with `args`; (success, standard error).
fn etcdsql(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .output()
        .expect("etcdsql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn served(dsn: &str) -> (Process, etcd_client::Client) {
    let p = Process::etcdsql(bin(), dsn).await.expect("etcdsql");
    let c = p.client().await.unwrap();
    (p, c)
}

/// etcd 3.4 on a data directory restored from `file`.
pub(crate) async fn restored(file: &Path, dir: &Path) -> (Killed, etcd_client::Client) {
    let (client, peer) = (
        etcdsql_integration::free_port(),
        etcdsql_integration::free_port(),
    );
    let peer_url = format!("http://127.0.0.1:{peer}");
    let data = dir.join("restored");
    etcdctl(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--name",
        "r",
        "--initial-cluster",
        &format!("r={peer_url}"),
        "--initial-advertise-peer-urls",
        &peer_url,
    ]);
    let client_url = format!("http://127.0.0.1:{client}");
    let child = Killed(
        std::process::Command::new("etcd")
            .args(["--name", "r", "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("r={peer_url}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcd"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut e) = etcd_client::Client::connect([client_url.as_str()], None).await
            && e.get("k00", None).await.is_ok()
        {
            return (child, e);
        }
        assert!(Instant::now() < deadline, "etcd on the restored directory");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn from_etcd_and_back(target: Target) {
    if !Target::Etcd.available() {
        return;
    }
    let etcd = Process::etcd().await.expect("etcd");
    let mut e = etcd.client().await.unwrap();
    write_history(&mut e).await;
    let want = view(&mut e).await;
    let dir = std::env::temp_dir().join(etcdsql_integration::unique_name("transfer"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("etcd.db");
    etcdctl(&[
        &format!("--endpoints={}", etcd.endpoint),
        "snapshot",
        "save",
        file.to_str().unwrap(),
    ]);

    // From the snapshot file.
    let db = TestDb::create(target).await.expect("database");
    let (ok, err) = etcdsql(&[
        "import",
        "--endpoint",
        &db.dsn,
        "--snapshot",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "import: {err}");
    assert!(err.contains("imported"), "{err}");
    {
        let (_p, mut c) = served(&db.dsn).await;
        assert_eq!(
            view(&mut c).await,
            want,
            "imported from a snapshot ({})",
            target.name()
        );
        // Selectors and writes work on the imported store.
        c.put("k00", "after", None).await.unwrap();
    }
    // A second import into the same database is refused; nothing changes.
    let (ok, err) = etcdsql(&[
        "import",
        "--endpoint",
        &db.dsn,
        "--snapshot",
        file.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("the target is not empty"), "{err}");
    let (_p, mut c) = served(&db.dsn).await;
    let r = c.get("k00", None).await.unwrap();
    assert_eq!(
        r.kvs()[0].value(),
        b"after",
        "the refused import changed the target"
    );
    drop(_p);

    // A truncated snapshot: refused by its hash, and read with
    // --skip-hash-check, refused naming where; nothing written.
    let bytes = std::fs::read(&file).unwrap();
    let cut = dir.join("cut.db");
    std::fs::write(&cut, &bytes[..bytes.len() / 2 + 32]).unwrap();
    let empty = TestDb::create(target).await.expect("database");
    let (ok, err) = etcdsql(&[
        "import",
        "--endpoint",
        &empty.dsn,
        "--snapshot",
        cut.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("truncated"), "{err}");
    let (ok, err) = etcdsql(&[
        "import",
        "--endpoint",
        &empty.dsn,
        "--snapshot",
        cut.to_str().unwrap(),
        "--skip-hash-check",
    ]);
    assert!(
        !ok && err.contains("offset") && err.contains("bucket"),
        "{err}"
    );
    let (_p, mut c) = served(&empty.dsn).await;
    let all = c
        .get(
            vec![0u8],
            Some(etcd_client::GetOptions::new().with_from_key()),
        )
        .await
        .unwrap();
    assert_eq!(all.kvs().len(), 0, "a failed import left keys");
    assert_eq!(all.header().unwrap().revision(), 1);
    drop(_p);

    // From the live etcd.
    let live = TestDb::create(target).await.expect("database");
    let from = format!("http://{}", etcd.endpoint);
    let (ok, err) = etcdsql(&["import", "--endpoint", &live.dsn, "--from", &from]);
    assert!(ok, "import --from: {err}");
    let (p, mut c) = served(&live.dsn).await;
    assert_eq!(
        view(&mut c).await,
        want,
        "imported from a live etcd ({})",
        target.name()
    );
    drop(c);
    drop(p);

    // Back: export, restore, etcd answers the same.
    let out = dir.join("export.db");
    let (ok, err) = etcdsql(&[
        "export",
        "--endpoint",
        &live.dsn,
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "export: {err}");
    let (etcd_back, mut r) = restored(&out, &dir).await;
    let back = view(&mut r).await;
    drop(etcd_back);
    assert_eq!(back, want, "etcd → etcdsql → etcd ({})", target.name());
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "import from etcd's snapshot and from the live etcd, export back, on {}: {} lines equal",
        target.name(),
        want.len()
    );
}
