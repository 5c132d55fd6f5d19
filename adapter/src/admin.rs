//! The `schema` and `partitions` subcommands: what an operator runs against
//! a database, with or without etcdsql servers running on it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use etcdsql_partitions::{self as plan, State};

use crate::backend::{self, Backend, Dsn, partitioning};

/// Where the database is: a DSN, or the embedded SQLite under --data-dir.
#[derive(clap::Args, Clone, Debug)]
pub struct Target {
    /// postgres://…, mysql://… (also mariadb://), sqlite:///path (also
    /// from ETCDSQL_ENDPOINT).
    #[arg(long, env = "ETCDSQL_ENDPOINT", hide_env_values = true)]
    pub endpoint: Option<String>,

    /// The embedded SQLite's directory when no --endpoint is given.
    #[arg(long, default_value = "default.etcd")]
    pub data_dir: PathBuf,
}

impl Target {
    pub fn dsn(&self) -> anyhow::Result<Dsn> {
        Dsn::from_flags(self.endpoint.as_deref(), &self.data_dir).map_err(anyhow::Error::msg)
    }
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum SchemaAction {
    /// Applied and pending migrations, checksum drift, unknown versions.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Applies pending migrations (under a database lock; safe to run from
    /// several places at once; a no-op when there is nothing to do).
    Migrate {
        #[command(flatten)]
        target: Target,
        /// Print the exact SQL that would run, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn schema(action: SchemaAction) -> anyhow::Result<()> {
    match action {
        SchemaAction::Status { target } => {
            let dsn = target.dsn()?;
            let (d, endpoint) = dsn.schema();
            let st = etcdsql_schema::status(d, &endpoint).await?;
            println!(
                "{}: schema version {} (this etcdsql: {})",
                dsn.redacted(),
                st.current(),
                etcdsql_schema::latest(d)
            );
            if st.unversioned {
                println!("unversioned: etcdsql tables from before schema versions (version 1)");
            }
            for a in &st.applied {
                let flag = if a.unknown {
                    "  UNKNOWN (newer than this etcdsql)"
                } else if a.dirty {
                    "  DIRTY (did not finish)"
                } else if a.drifted {
                    "  CHECKSUM DRIFT"
                } else {
                    ""
                };
                println!(
                    "applied  {:04} {:<10} {}{flag}",
                    a.version, a.description, a.installed_on
                );
            }
            for (v, desc) in &st.pending {
                println!("pending  {v:04} {desc}");
            }
            match st.refusal(&dsn.redacted()) {
                None => println!("up to date"),
                Some(why) => bail!("{why}"),
            }
        }
        SchemaAction::Migrate { target, dry_run } => {
            let dsn = target.dsn()?;
            let (d, endpoint) = dsn.schema();
            if dry_run {
                let st = etcdsql_schema::status(d, &endpoint).await?;
                if !st.pending_only() {
                    bail!("{}", st.refusal(&dsn.redacted()).unwrap_or_default());
                }
                if st.pending.is_empty() {
                    println!("-- {}: up to date, nothing to run", dsn.redacted());
                } else {
                    print!("{}", st.pending_sql());
                }
                return Ok(());
            }
            let pending = etcdsql_schema::migrate(d, &endpoint).await?;
            if pending.is_empty() {
                println!("{}: up to date, nothing to run", dsn.redacted());
            } else {
                // Another process may have applied some of them meanwhile.
                let list: Vec<String> = pending.iter().map(|v| format!("{v:04}")).collect();
                println!(
                    "{}: migrated to schema version {} (pending were {})",
                    dsn.redacted(),
                    etcdsql_schema::latest(d),
                    list.join(", ")
                );
            }
        }
    }
    Ok(())
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum PartitionsAction {
    /// Every partition of etcdsql_live and etcdsql_history: rows and bytes.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// The resources in the default partition, largest first, and the
    /// `partitions add` each would take.
    Plan {
        #[command(flatten)]
        target: Target,
    },
    /// Gives RESOURCE (e.g. pods, example.com/widgets) its own partitions
    /// and moves its rows out of the default ones, in small transactions,
    /// while etcdsql keeps serving. Resumes an interrupted move.
    Add {
        #[command(flatten)]
        target: Target,
        resource: String,
        /// Rows moved per transaction.
        #[arg(long, default_value_t = 1000)]
        batch: i64,
    },
}

async fn open(target: &Target) -> anyhow::Result<Arc<dyn Backend>> {
    let dsn = target.dsn()?;
    let (d, endpoint) = dsn.schema();
    let st = etcdsql_schema::status(d, &endpoint).await?;
    if let Some(why) = st.refusal(&dsn.redacted()) {
        bail!("{why}");
    }
    Ok(backend::open(&dsn).await?)
}

pub async fn partitions(action: PartitionsAction) -> anyhow::Result<()> {
    match action {
        PartitionsAction::List { target } => list(&*open(&target).await?).await,
        PartitionsAction::Plan { target } => print_plan(&*open(&target).await?).await,
        PartitionsAction::Add {
            target,
            resource,
            batch,
        } => {
            let b = open(&target).await?;
            add(&*b, &resource, batch, true).await?;
            Ok(())
        }
    }
}

async fn rows(b: &dyn Backend, text: &str) -> anyhow::Result<backend::Rows> {
    Ok(b.fetch(&b.statement(text, &[])).await?)
}

async fn list(b: &dyn Backend) -> anyhow::Result<()> {
    b.reload_partitions().await?;
    let reg = b.partitions().map(|p| p.get()).unwrap_or_default();
    let owner: BTreeMap<String, (String, State)> = reg
        .resources
        .iter()
        .map(|(r, (p, s))| (p.clone(), (r.clone(), *s)))
        .collect();
    let describe = |part: &str| match owner.get(part) {
        Some((r, State::Ready)) => r.clone(),
        Some((r, State::Moving)) => format!("{r} (moving)"),
        None if part.is_empty() => "(default)".to_string(),
        None => "(unlisted)".to_string(),
    };
    println!(
        "{:<16} {:<40} {:<32} {:>10} {:>12}",
        "table", "partition", "holds", "rows", "bytes"
    );
    if b.partitions().is_none() {
        println!(
            "SQLite has no native partitions: etcdsql_live and etcdsql_history are single tables ({} bytes in all)",
            b.db_size().await?
        );
    }
    for p in b.partition_list().await? {
        let holds = match &p.holds {
            backend::Holds::Part(part) => describe(part),
            backend::Holds::Epoch(e) => format!("epoch {e}"),
        };
        println!(
            "{:<16} {:<40} {holds:<32} {:>10} {:>12}",
            p.table, p.name, p.rows, p.bytes
        );
    }
    Ok(())
}

/// Rows per resource in the default live partition, largest first.
async fn resources_in_default(b: &dyn Backend) -> anyhow::Result<Vec<(String, i64)>> {
    let text = if b.partitions().is_some() {
        "SELECT name FROM etcdsql_live WHERE part = ''"
    } else {
        "SELECT name FROM etcdsql_live"
    };
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for r in rows(b, text).await? {
        if let Some(res) = r.bytes(0)?.as_deref().and_then(plan::resource_of) {
            *counts
                .entry(String::from_utf8_lossy(res).into_owned())
                .or_default() += 1;
        }
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(v)
}

async fn print_plan(b: &dyn Backend) -> anyhow::Result<()> {
    b.reload_partitions().await?;
    let reg = b.partitions().map(|p| p.get()).unwrap_or_default();
    if b.partitions().is_none() {
        println!("SQLite has no native partitions; nothing would be created.");
    }
    for (r, (p, s)) in &reg.resources {
        println!("listed   {r:<48} partition {p} ({s:?})");
    }
    for (r, n) in resources_in_default(b).await? {
        if b.partitions().is_some() && !reg.resources.contains_key(&r) {
            println!("default  {r:<48} {n:>10} rows   etcdsql partitions add {r}");
        } else {
            println!("default  {r:<48} {n:>10} rows");
        }
    }
    Ok(())
}

/// `partitions add`: the engine's move, with a progress bar.
pub async fn add(
    b: &dyn Backend,
    resource: &str,
    batch: i64,
    progress: bool,
) -> anyhow::Result<u64> {
    let bar = indicatif::ProgressBar::new(0);
    if progress {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "moving {msg} {bar:40} {pos}/{len} rows {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(resource.to_string());
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let added = partitioning::add(b, resource, batch, &|p| match p {
        partitioning::Progress::ToMove(n) => bar.set_length(n),
        partitioning::Progress::Moved(n) => bar.inc(n),
    })
    .await?;
    bar.finish_and_clear();
    if progress {
        println!(
            "{resource}: partition {}, {} rows moved",
            added.part, added.moved
        );
    }
    Ok(added.moved)
}
