//! etcdsql's integration suite: real databases, the real `etcdsql` binary,
//! real clients (the etcd-client crate, etcdctl), and etcd 3.4 itself as the
//! reference. The harness is `etcdsql-integration` (integration/src).
//!
//! Databases come from `ETCDSQL_TEST_POSTGRES_URL` and
//! `ETCDSQL_TEST_MYSQL_URL`; a target that is missing is skipped with a
//! plain message, unless `ETCDSQL_REQUIRE` lists it.

mod apiserver;
mod concurrency;
mod etcdctl;
mod faults;
mod kv;
mod lease;
mod metrics;
mod tls;
mod watch;

use std::path::Path;

/// The etcdsql binary Cargo built for this test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_etcdsql"))
}
