//! etcdsql: an etcd v3 API server that keeps its data in SQL databases.
//!
//! # Layout
//! - [`authority`]: `:authority` values h2 refuses, made acceptable
//!   (etcd serves them);
//! - [`server`]: flags, listeners, and [`server::serve`], the testable entry
//!   point (the binary only parses flags and passes Ctrl-C);
//! - [`service`]: the gRPC services (KV, Watch, Lease, Maintenance,
//!   Cluster), one module each;
//! - [`watch`]: the watch hub that tails the history table for watchers;
//! - [`tasks`]: the owner of every background task, and their stop;
//! - [`store`]: etcd's semantics as a revision log: validation, the write
//!   batch, the group committer, read-only views;
//! - [`backend`]: the SQL side: one module per dialect (SQLite, PostgreSQL,
//!   MySQL) behind the `Backend`/`Writer` traits, and the shared statements;
//! - [`admin`]: the `schema` and `partitions` subcommands;
//! - [`autopart`]: partitions the server creates (`--partitions-file`,
//!   `--auto-partition`);
//! - [`replicas`]: read replicas (`--read-endpoint`), linearizable reads
//!   on them, their health;
//! - [`selector`]: label and field selectors: parsing, extraction from
//!   stored objects, evaluation (the SQL side is in `backend::sql`);
//! - [`error`]: etcd's error codes and messages;
//! - [`metrics`]: Prometheus metrics, `/metrics`, per-RPC timing and spans;
//! - [`proto`]: the generated wire types.

pub mod admin;
pub mod auth;
pub mod authority;
pub mod autopart;
pub mod backend;
pub mod bbolt;
pub mod codec;
pub mod cork;
pub mod error;
pub mod metrics;
pub mod proto;
pub mod replicas;
pub mod selector;
pub mod server;
pub mod service;
pub mod store;
pub mod tasks;
pub mod transfer;
pub mod watch;
