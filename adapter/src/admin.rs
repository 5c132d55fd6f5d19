//! The `schema` and `partitions` subcommands: what an operator runs against
//! a database, with or without etcdsql servers running on it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use etcdsql_partitions::{self as plan, State};

use crate::backend::sql::{Param, Statement};
use crate::backend::{self, Backend, Dsn};

/// Where the database is: a DSN, or the embedded SQLite under --data-dir.
#[derive(clap::Args, Clone, Debug)]
pub struct Target {
    /// postgres://…, mysql://… (also mariadb://), sqlite:///path.
    #[arg(long)]
    pub endpoint: Option<String>,

    /// The embedded SQLite's directory when no --endpoint is given.
    #[arg(long, default_value = "default.etcd")]
    pub data_dir: PathBuf,
}

impl Target {
    fn dsn(&self) -> anyhow::Result<Dsn> {
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

fn text(r: &dyn backend::Columns, i: usize) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&r.bytes(i)?.unwrap_or_default()).into_owned())
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
    match b.dialect_name() {
        "postgres" => {
            for table in ["etcdsql_live", "etcdsql_history"] {
                let counts: BTreeMap<String, i64> = rows(
                    b,
                    &format!("SELECT tableoid::regclass::text, COUNT(*) FROM {table} GROUP BY 1"),
                )
                .await?
                .iter()
                .map(|r| Ok((text(&**r, 0)?, r.int(1)?)))
                .collect::<anyhow::Result<_>>()?;
                let leaves = rows(
                    b,
                    &format!(
                        "SELECT t.relid::regclass::text, pg_total_relation_size(t.relid), \
                         pg_get_expr(c.relpartbound, c.oid) \
                         FROM pg_partition_tree('{table}') t JOIN pg_class c ON c.oid = t.relid \
                         WHERE t.isleaf ORDER BY 1"
                    ),
                )
                .await?;
                for r in &leaves {
                    let name = text(&**r, 0)?;
                    let bound = text(&**r, 2)?;
                    let part = bound
                        .split('\'')
                        .nth(1)
                        .map_or(String::new(), str::to_string);
                    println!(
                        "{table:<16} {name:<40} {:<32} {:>10} {:>12}",
                        describe(&part),
                        counts.get(&name).copied().unwrap_or(0),
                        r.int(1)?
                    );
                }
            }
        }
        "mysql" => {
            let sizes = rows(
                b,
                "SELECT TABLE_NAME, PARTITION_NAME, CAST(DATA_LENGTH + INDEX_LENGTH AS SIGNED), \
                 PARTITION_DESCRIPTION FROM information_schema.PARTITIONS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ('etcdsql_live', 'etcdsql_history') \
                 ORDER BY TABLE_NAME DESC, PARTITION_ORDINAL_POSITION",
            )
            .await?;
            let live: BTreeMap<String, i64> =
                rows(b, "SELECT part, COUNT(*) FROM etcdsql_live GROUP BY part")
                    .await?
                    .iter()
                    .map(|r| Ok((text(&**r, 0)?, r.int(1)?)))
                    .collect::<anyhow::Result<_>>()?;
            let history: BTreeMap<i64, i64> = rows(
                b,
                "SELECT epoch, COUNT(*) FROM etcdsql_history GROUP BY epoch",
            )
            .await?
            .iter()
            .map(|r| Ok((r.int(0)?, r.int(1)?)))
            .collect::<anyhow::Result<_>>()?;
            for r in &sizes {
                let table = text(&**r, 0)?;
                let name = text(&**r, 1)?;
                let desc = text(&**r, 3)?;
                let (holds, n) = if table == "etcdsql_live" {
                    let part = desc.trim_matches('\'').to_string();
                    (describe(&part), live.get(&part).copied().unwrap_or(0))
                } else {
                    let epoch = name.trim_start_matches('e').parse::<i64>().unwrap_or(-1);
                    (
                        format!("epoch {epoch}"),
                        history.get(&epoch).copied().unwrap_or(0),
                    )
                };
                println!(
                    "{table:<16} {name:<40} {holds:<32} {n:>10} {:>12}",
                    r.int(2)?
                );
            }
        }
        _ => {
            println!(
                "SQLite has no native partitions: etcdsql_live and etcdsql_history are single tables ({} bytes in all)",
                b.db_size().await?
            );
        }
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

/// Lists `resource` (creating its partitions) and moves its rows out of the
/// default partitions. Idempotent; returns the rows moved.
pub async fn add(
    b: &dyn Backend,
    resource: &str,
    batch: i64,
    progress: bool,
) -> anyhow::Result<u64> {
    if b.partitions().is_none() {
        bail!("SQLite has no native partitions; `partitions add` applies to PostgreSQL and MySQL");
    }
    if !plan::valid_resource(resource) {
        bail!(
            "{resource:?} is not a resource: expected <resource> or <group>/<resource> (the group contains a dot), as in /registry/<resource>/…"
        );
    }
    b.reload_partitions().await?;
    let reg = b.partitions().map(|p| p.get()).unwrap_or_default();
    let part = match reg.resources.get(resource) {
        Some((p, _)) => p.clone(),
        None => {
            let taken: Vec<String> = reg.resources.values().map(|(p, _)| p.clone()).collect();
            plan::part_ident(resource, &|c| {
                c == "default" || taken.iter().any(|t| t == c)
            })
        }
    };
    // 1. The partitions (empty; the default partitions are not scanned).
    match b.dialect_name() {
        "postgres" => {
            let epochs: Vec<i64> = backend::first_ints(
                &rows(b, "SELECT epoch FROM etcdsql_epoch ORDER BY epoch").await?,
            )?;
            for s in plan::ddl::postgres_add(&part, &epochs) {
                b.batch(&s).await.with_context(|| s.clone())?;
            }
        }
        _ => {
            if !backend::has_mysql_partition(b, "etcdsql_live", &format!("p_{part}")).await? {
                let s = plan::ddl::mysql_add(&part);
                b.batch(&s).await.with_context(|| s.clone())?;
            }
        }
    }
    // 2. Listed as moving: from the next transaction on, every etcdsql
    //    writes the resource's new rows to its partition.
    set_state(
        b,
        resource,
        &part,
        State::Moving,
        reg.resources.contains_key(resource),
    )
    .await?;
    // 3. Move what is still in the default partitions.
    let prefix = plan::prefix_of(resource);
    let end = plan::prefix_end(&prefix).context("resource prefix has no end")?;
    let range = |s: &mut Statement| {
        s.bind(Param::Bytes(prefix.clone()));
        s.push(" AND name < ");
        s.bind(Param::Bytes(end.clone()));
    };
    // MySQL keeps history by epoch only: its history rows have no part.
    let tables: &[&str] = if b.sql().history_parts {
        &["etcdsql_live", "etcdsql_history"]
    } else {
        &["etcdsql_live"]
    };
    let mut todo = 0;
    for table in tables {
        let mut s = Statement::new(b.sql());
        s.push(&format!(
            "SELECT COUNT(*) FROM {table} WHERE part = '' AND name >= "
        ));
        range(&mut s);
        todo += backend::first_ints(&b.fetch(&s).await?)?
            .first()
            .copied()
            .unwrap_or(0);
    }
    let bar = indicatif::ProgressBar::new(u64::try_from(todo).unwrap_or(0));
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
    let mut moved = 0u64;
    let mut w = b.writer().await?;
    for &table in tables {
        loop {
            let mut s = Statement::new(b.sql());
            if b.dialect_name() == "postgres" {
                let key = if table == "etcdsql_live" {
                    "name, part"
                } else {
                    "revision, sub, epoch, part"
                };
                s.push(&format!(
                    "UPDATE {table} SET part = '{part}' WHERE ({key}) IN (SELECT {key} FROM {table} \
                     WHERE part = '' AND name >= "
                ));
                range(&mut s);
                s.push(" LIMIT ").bind(Param::Int(batch)).push(")");
            } else {
                s.push(&format!(
                    "UPDATE {table} SET part = '{part}' WHERE part = '' AND name >= "
                ));
                range(&mut s);
                s.push(" ORDER BY name LIMIT ").bind(Param::Int(batch));
            }
            // Under the revision-row lock: no write of the resource runs
            // between reading where a row is and moving it.
            let n = match async {
                let meta = w.begin().await?;
                let n = w.execute(&s).await?;
                w.commit(meta).await?;
                Ok::<_, backend::DbError>(n)
            }
            .await
            {
                Ok(n) => n,
                Err(e) => {
                    w.rollback().await;
                    return Err(e.into());
                }
            };
            moved += n;
            bar.inc(n);
            if n == 0 {
                break;
            }
        }
    }
    bar.finish_and_clear();
    // 4. Everything is in place: reads of the resource skip the default.
    set_state(b, resource, &part, State::Ready, true).await?;
    if progress {
        println!("{resource}: partition {part}, {moved} rows moved");
    }
    Ok(moved)
}

/// Records a resource's state and bumps `partitions_version`, under the
/// revision-row lock.
async fn set_state(
    b: &dyn Backend,
    resource: &str,
    part: &str,
    state: State,
    exists: bool,
) -> anyhow::Result<()> {
    let mut s = Statement::new(b.sql());
    if exists {
        s.push(&format!(
            "UPDATE etcdsql_partition SET state = {}",
            state.code()
        ))
        .push(" WHERE resource = ")
        .bind(Param::Text(resource.to_string()));
    } else {
        s.push("INSERT INTO etcdsql_partition (resource, part, state) VALUES (")
            .bind(Param::Text(resource.to_string()))
            .push(", ")
            .bind(Param::Text(part.to_string()))
            .push(&format!(", {})", state.code()));
    }
    let bump = Statement::with_params(
        b.sql(),
        "UPDATE etcdsql_meta SET partitions_version = partitions_version + 1 WHERE id = 1",
        &[],
    );
    let mut w = b.writer().await?;
    let r = async {
        let meta = w.begin().await?;
        if b.dialect_name() == "postgres" {
            // Its partition in every epoch, read under the revision-row
            // lock: a compaction starting an epoch holds it too, so either
            // it sees this resource or this sees its epoch.
            let epochs = backend::first_ints(
                &w.rows(&Statement::with_params(
                    b.sql(),
                    "SELECT epoch FROM etcdsql_epoch ORDER BY epoch",
                    &[],
                ))
                .await?,
            )?;
            for text in plan::ddl::postgres_add(part, &epochs) {
                w.execute(&Statement::with_params(b.sql(), &text, &[]))
                    .await?;
            }
        }
        w.execute(&s).await?;
        w.execute(&bump).await?;
        w.commit(meta).await
    }
    .await;
    if r.is_err() {
        w.rollback().await;
    }
    r?;
    b.reload_partitions().await?;
    Ok(())
}
