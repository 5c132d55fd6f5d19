//! etcdsql's integration suite: real databases, the real `etcdsql` binary,
//! real clients (the etcd-client crate, etcdctl), and etcd 3.4 itself as the
//! reference. The harness is `etcdsql-integration` (integration/src).
//!
//! Every case runs once per target it names, as the trial
//! `module::case::target`. Database servers come from DSN variables or from
//! containers this binary starts and removes (see `servers`); a target that
//! is unavailable is reported as ignored with the reason ("skipped: no image
//! for cockroachdb"), and fails instead when `ETCDSQL_REQUIRE` lists it.

mod apiserver;
mod auth;
mod authority;
mod bad_input;
mod compaction;
mod deploy;
mod etcdctl;
mod faults;
mod hashkv;
mod inprocess;
mod kube;
mod kv;
mod lease;
mod linearizable;
mod maintenance;
mod metrics;
mod recipes;
mod replicas;
mod schema;
mod selectors;
mod tls;
mod transfer;
mod txn;
mod watch;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use etcdsql_integration::{Target, required, servers};
use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// The etcdsql binary Cargo built for this test, or `ETCDSQL_IT_BIN` (to
/// run the suite against another build, e.g. an older one).
pub fn bin() -> &'static Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var_os("ETCDSQL_IT_BIN")
            .map_or_else(|| env!("CARGO_BIN_EXE_etcdsql").into(), Into::into)
    })
}

type CaseFn = fn(Target) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// A lease kept alive over its LeaseKeepAlive stream, one renewal at a time.
pub struct Renewals(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);

impl Renewals {
    pub async fn start(c: &mut etcd_client::Client, lease: i64) -> Renewals {
        let (keeper, acks) = c.lease_keep_alive(lease).await.unwrap();
        Renewals(keeper, acks)
    }

    /// Renews the lease; answers the TTL the server answered (0: no lease).
    pub async fn ttl(&mut self) -> i64 {
        self.0.keep_alive().await.unwrap();
        self.1
            .message()
            .await
            .unwrap()
            .expect("keep-alive answer")
            .ttl()
    }
}

/// A PostgreSQL session of the test's, whose notifications are counted.
pub struct Listener {
    pub client: tokio_postgres::Client,
    pub heard: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Listener {
    /// Runs `LISTEN` as `statement` (its last one, as PostgreSQL shows it).
    pub async fn new(db: &etcdsql_integration::TestDb, statement: &str) -> Listener {
        let (client, mut conn) = tokio_postgres::connect(&db.dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        let (tx, heard) = tokio::sync::mpsc::unbounded_channel();
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        tokio::spawn(async move {
            use futures::StreamExt;
            while let Some(Ok(m)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = m {
                    let _ = tx.send(n.payload().to_string());
                }
            }
        });
        client.batch_execute(statement).await.unwrap();
        Listener { client, heard }
    }

    /// Whether a commit's notification arrives within 500 ms of a put.
    pub async fn hears_put(&mut self, c: &mut etcd_client::Client, key: &str) -> bool {
        while self.heard.try_recv().is_ok() {}
        let rev = put(c, key, "v").await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, self.heard.recv()).await {
            if p == rev.to_string() {
                return true;
            }
        }
        false
    }
}

/// A plain put: the revision it took.
pub async fn put(c: &mut etcd_client::Client, key: &str, value: &str) -> i64 {
    c.put(key, value, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

/// Waits until `key` is gone (its lease expired), polling; panics after
/// `within`.
pub async fn wait_gone(c: &mut etcd_client::Client, key: &str, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    while !c.get(key, None).await.unwrap().kvs().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{key} was not expired within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// One test case and the targets it runs against.
pub struct Case {
    name: &'static str,
    targets: &'static [Target],
    run: CaseFn,
    /// What else the case needs (`Err`: why it cannot run here); the case
    /// is named `name` in `ETCDSQL_REQUIRE` to make that a failure.
    requires: fn() -> Result<(), String>,
}

/// `case!("name", &targets, async_fn_taking_target [, requires = fn])`.
#[macro_export]
macro_rules! case {
    ($name:literal, $targets:expr, $f:path) => {
        $crate::case!($name, $targets, $f, requires = || Ok(()))
    };
    ($name:literal, $targets:expr, $f:path, requires = $req:expr) => {
        $crate::Case {
            name: $name,
            targets: $targets,
            run: |t| Box::pin($f(t)),
            requires: $req,
        }
    };
}

fn main() {
    let args = Arguments::from_args();
    let modules = [
        ("kv", kv::cases()),
        ("watch", watch::cases()),
        ("lease", lease::cases()),
        ("compaction", compaction::cases()),
        ("bad_input", bad_input::cases()),
        ("txn", txn::cases()),
        ("linearizable", linearizable::cases()),
        ("maintenance", maintenance::cases()),
        ("auth", auth::cases()),
        ("transfer", transfer::cases()),
        ("deploy", deploy::cases()),
        ("faults", faults::cases()),
        ("inprocess", inprocess::cases()),
        ("etcdctl", etcdctl::cases()),
        ("authority", authority::cases()),
        ("recipes", recipes::cases()),
        ("hashkv", hashkv::cases()),
        ("apiserver", apiserver::cases()),
        ("tls", tls::cases()),
        ("kube", kube::cases()),
        ("metrics", metrics::cases()),
        ("schema", schema::cases()),
        ("replicas", replicas::cases()),
        ("selectors", selectors::cases()),
    ];
    let mut trials = Vec::new();
    for (module, cases) in modules {
        for case in cases {
            for &target in case.targets {
                let name = format!("{module}::{}::{}", case.name, target.name());
                let (run, requires, case_name) = (case.run, case.requires, case.name);
                trials.push(Trial::ignorable_test(name, move || {
                    if let Err(why) = requires() {
                        return skip_or_fail(case_name, why);
                    }
                    trial(run, target)
                }));
            }
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    servers::shutdown();
    conclusion.exit();
}

/// A skip, or a failure where `ETCDSQL_REQUIRE` names what is missing.
fn skip_or_fail(name: &str, why: String) -> Result<Completion, Failed> {
    if required(name) {
        return Err(format!("{name} is required (ETCDSQL_REQUIRE) but unavailable: {why}").into());
    }
    Ok(Completion::ignored_with(format!("skipped: {why}")))
}

fn trial(run: CaseFn, target: Target) -> Result<Completion, Failed> {
    if let Some(why) = target.unavailable() {
        return skip_or_fail(target.name(), why);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
    rt.block_on(run(target));
    Ok(Completion::Completed)
}
