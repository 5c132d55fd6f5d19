//! The `etcdsql` binary: parses flags, sets up logging, serves until Ctrl-C
//! or SIGTERM; or runs one of the `schema` and `partitions` subcommands.

use clap::{Parser, Subcommand};
use etcdsql::admin;
use etcdsql::server::{self, Config};

#[derive(Parser, Debug)]
#[command(
    name = "etcdsql",
    version,
    about = "An etcd v3 API server on SQL databases"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    config: Config,

    /// Log level or tracing filter (e.g. info, debug, etcdsql=trace).
    /// rustls logs only errors unless the filter names it.
    #[arg(long, default_value = "info")]
    log_level: String,

    /// `text` (coloured only on a terminal) or `json` (one object a line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Schema migrations: status, migrate (with --dry-run).
    Schema {
        #[command(subcommand)]
        action: admin::SchemaAction,
    },
    /// Native partitions by resource: list, plan, add.
    Partitions {
        #[command(subcommand)]
        action: admin::PartitionsAction,
    },
    /// Loads an etcd snapshot, or a live etcd's data, into the database.
    Import(etcdsql::transfer::ImportArgs),
    /// Writes the database's data as an etcd snapshot file.
    Export(etcdsql::transfer::ExportArgs),
}

async fn terminated() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// mysql_async keeps up to 128 spent packet buffers for reuse, each up to
/// 4 MiB by default. A batch's multi-row statements are megabytes, so the
/// pool held about 70 MiB of the 235 MiB etcdsql on MariaDB reached at
/// 1,000,000 keys. Unless the operator set them, keep at most 32 buffers
/// of 64 KiB.
fn cap_mysql_buffers() {
    for (name, value) in [
        ("MYSQL_ASYNC_BUFFER_SIZE_CAP", "65536"),
        ("MYSQL_ASYNC_BUFFER_POOL_CAP", "32"),
    ] {
        if std::env::var_os(name).is_none() {
            // SAFETY: called first thing in `main`, before the runtime or
            // any other thread exists, so nothing reads the environment
            // concurrently.
            #[allow(unsafe_code)]
            unsafe {
                std::env::set_var(name, value);
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    cap_mysql_buffers();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

/// The `--log-level` filter. rustls warns of each client that sends an IP
/// address as its TLS server name (Node's does), which etcd accepts
/// silently; unless `spec` names rustls, only its errors are logged.
fn log_filter(spec: &str) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    let filter = tracing_subscriber::EnvFilter::try_new(spec)?;
    Ok(if spec.contains("rustls") {
        filter
    } else {
        filter.add_directive("rustls=error".parse()?)
    })
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(log_filter(&cli.log_level)?)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        None => server::run(cli.config, terminated()).await,
        Some(Command::Schema { action }) => admin::schema(action).await,
        Some(Command::Partitions { action }) => admin::partitions(action).await,
        Some(Command::Import(args)) => etcdsql::transfer::import(args).await,
        Some(Command::Export(args)) => etcdsql::transfer::export(args).await,
    }
}

/// jemalloc returns freed memory to the system; glibc's malloc kept the heap
/// that the batches' large statement texts had grown (MariaDB at 1,000,000
/// keys: 152 MiB with glibc, 117 MiB with jemalloc configured as below;
/// docs/benchmarks.md). It also took 9% of the instructions off a put on
/// PostgreSQL.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options unless `_RJEM_MALLOC_CONF` overrides them: a
/// background thread purges unused pages, one second after they were freed
/// (ten by default).
// SAFETY: jemalloc reads this symbol as a NUL-terminated C string; a
// reference to a byte array is a plain pointer to its first byte.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 43] = b"background_thread:true,dirty_decay_ms:1000\0";

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn rustls_logs_errors_unless_named() {
        let quiet = log_filter("info").unwrap().to_string();
        assert!(quiet.contains("rustls=error"), "{quiet}");
        let named = log_filter("info,rustls=debug").unwrap().to_string();
        assert!(named.contains("rustls=debug"), "{named}");
        assert!(!named.contains("rustls=error"), "{named}");
        assert!(log_filter("etcdsql=nonsense").is_err());
    }
}
