//! An unmodified kube-apiserver on etcdsql, driven with kubectl
//! (integration/kube/run.sh), where `KUBE_APISERVER` names a binary.

use std::process::Command;

use etcdsql::proto::etcdserverpb::RangeRequest;
use etcdsql_integration::{Process, Target, TestDb};

use crate::selectors::{kv, prefix_end};
use crate::{Case, bin, case};

fn kube_apiserver() -> Result<(), String> {
    match std::env::var("KUBE_APISERVER") {
        Ok(p) if std::path::Path::new(&p).is_file() => Ok(()),
        Ok(p) => Err(format!("KUBE_APISERVER={p} is not a file")),
        Err(_) => Err("KUBE_APISERVER is not set (integration/kube/README.md)".to_string()),
    }
}

/// Runs one of integration/kube's scripts on the target's store; answers
/// its last line (`…: N passed, 0 failed`).
async fn script(name: &'static str, target: Target, db: &TestDb) -> String {
    let store = if target == Target::Sqlite {
        "sqlite".to_string()
    } else {
        db.dsn.clone()
    };
    let path = format!("{}/../integration/kube/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&path)
            .arg(store)
            .env("ETCDSQL_BIN", bin())
            .output()
            .unwrap_or_else(|e| panic!("running {path}: {e}"))
    })
    .await
    .expect("kube task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name} on {}: {}\n{stdout}\n{}",
        target.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout.lines().last().unwrap_or_default().to_string();
    assert!(summary.contains(", 0 failed"), "{stdout}");
    summary
}

async fn apiserver(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    eprintln!("{}", script("run.sh", target, &db).await);
    if target != Target::Sqlite {
        selectors_on_what_it_stored(target, &db).await;
    }
}

/// A kube-apiserver's cluster moved from etcd 3.4 to etcdsql and back
/// (integration/kube/migrate.sh).
async fn migrate(target: Target) {
    let db = TestDb::create(target).await.expect("database");
    eprintln!("{}", script("migrate.sh", target, &db).await);
}

fn kube_apiserver_and_etcd() -> Result<(), String> {
    kube_apiserver()?;
    Target::Etcd.unavailable().map_or(Ok(()), Err)
}

/// Selectors over the objects kube-apiserver wrote (protobuf for built-in
/// types, JSON for custom resources), read by a new etcdsql on the same
/// database.
async fn selectors_on_what_it_stored(target: Target, db: &TestDb) {
    let p = Process::etcdsql(bin(), &db.dsn).await.expect("etcdsql");
    let mut c = kv(&p).await;
    let mut names = async |prefix: &str, labels: &str, fields: &str| -> Vec<String> {
        let r = c
            .range(RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix),
                label_selector: labels.into(),
                field_selector: fields.into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{prefix} {labels:?} {fields:?}: {e}"))
            .into_inner();
        if labels.is_empty() && fields.is_empty() && prefix.contains("configmaps") {
            assert!(
                r.kvs.iter().all(|kv| kv.value.starts_with(b"k8s\0")),
                "kube-apiserver stores configmaps as protobuf"
            );
        }
        r.kvs
            .iter()
            .map(|kv| {
                String::from_utf8_lossy(&kv.key)
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    let cms = "/registry/configmaps/etcdsql-test/";
    assert_eq!(names(cms, "", "").await.len(), 30);
    let mut even: Vec<String> = (1..=15).map(|i| format!("bulk-{}", 2 * i)).collect();
    even.sort();
    assert_eq!(names(cms, "parity=even", "").await, even);
    assert_eq!(names(cms, "parity notin (even)", "").await.len(), 15);
    assert_eq!(names(cms, "!parity", "").await, Vec::<String>::new());
    assert_eq!(names(cms, "", "metadata.name=bulk-7").await, ["bulk-7"]);
    assert_eq!(
        names(
            cms,
            "parity=odd",
            "metadata.namespace=etcdsql-test,metadata.name!=bulk-1"
        )
        .await
        .len(),
        14
    );
    let ns = "/registry/namespaces/";
    assert_eq!(
        names(ns, "", "status.phase=Terminating").await,
        ["etcdsql-test"]
    );
    let active = names(ns, "", "status.phase=Active").await;
    assert!(
        active.contains(&"default".to_string()) && !active.contains(&"etcdsql-test".to_string()),
        "{active:?}"
    );
    let widgets = "/registry/etcdsql.example.com/widgets/etcdsql-test/";
    assert_eq!(names(widgets, "tier=t3", "").await, ["w3"]);
    assert_eq!(names(widgets, "tier!=t3", "").await, ["w2"]);
    eprintln!(
        "selectors on {}: labels and fields of the protobuf and JSON objects kube-apiserver stored",
        target.name()
    );
}

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "kube_apiserver",
            &[Target::Sqlite, Target::Postgres, Target::Mariadb],
            apiserver,
            requires = kube_apiserver
        ),
        case!(
            "migrate",
            &[Target::Sqlite, Target::Postgres, Target::Mariadb],
            migrate,
            requires = kube_apiserver_and_etcd
        ),
    ]
}
