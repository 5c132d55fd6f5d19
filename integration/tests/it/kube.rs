//! An unmodified kube-apiserver on etcdsql, driven with kubectl
//! (integration/kube/run.sh), where `KUBE_APISERVER` names a binary.

use std::process::Command;

use etcdsql_integration::{Target, TestDb};

use crate::{Case, bin, case};

fn kube_apiserver() -> Result<(), String> {
    match std::env::var("KUBE_APISERVER") {
        Ok(p) if std::path::Path::new(&p).is_file() => Ok(()),
        Ok(p) => Err(format!("KUBE_APISERVER={p} is not a file")),
        Err(_) => Err("KUBE_APISERVER is not set (integration/kube/README.md)".to_string()),
    }
}

async fn apiserver(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    let store = if target == Target::Sqlite {
        "sqlite".to_string()
    } else {
        db.dsn.clone()
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../integration/kube/run.sh");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(script)
            .arg(store)
            .env("ETCDSQL_BIN", bin())
            .output()
            .expect("running integration/kube/run.sh")
    })
    .await
    .expect("kube task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kube-apiserver on {}: {}\n{stdout}\n{}",
        target.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.contains(", 0 failed"), "{stdout}");
    eprintln!("{summary}");
}

pub fn cases() -> Vec<Case> {
    vec![case!(
        "kube_apiserver",
        &[Target::Sqlite, Target::Postgres, Target::Mariadb],
        apiserver,
        requires = kube_apiserver
    )]
}
