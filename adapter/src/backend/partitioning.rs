//! The partition engine: gives a resource native partitions of its own and
//! moves its rows there while etcdsql serves (`etcdsql partitions add`,
//! `--partitions-file`, `--auto-partition`). What differs by database (the
//! DDL, how an UPDATE picks a batch of rows) comes from the [`Backend`].

use anyhow::{Context, bail};
use etcdsql_partitions::{self as plan, State};

use super::sql::{Param, Statement};
use super::{Backend, DbError, first_ints};

/// How far a move is, for whoever shows it.
pub enum Progress {
    /// Rows to move in all.
    ToMove(u64),
    /// Rows just moved.
    Moved(u64),
}

/// What [`add`] did.
pub struct Added {
    /// The resource's partition name.
    pub part: String,
    pub moved: u64,
}

/// Lists `resource` (creating its partitions) and moves its rows out of the
/// default partitions, `batch` rows per transaction. Idempotent.
pub async fn add(
    b: &dyn Backend,
    resource: &str,
    batch: i64,
    progress: &(dyn Fn(Progress) + Sync),
) -> anyhow::Result<Added> {
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
    b.create_resource_partitions(&part)
        .await
        .with_context(|| format!("creating the partitions of {resource}"))?;
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
        todo += first_ints(&b.fetch(&s).await?)?
            .first()
            .copied()
            .unwrap_or(0);
    }
    progress(Progress::ToMove(u64::try_from(todo).unwrap_or(0)));
    let mut moved = 0u64;
    let mut w = b.writer().await?;
    for &table in tables {
        loop {
            let mut s = Statement::new(b.sql());
            if !b.sql().update_limit {
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
                Ok::<_, DbError>(n)
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
            progress(Progress::Moved(n));
            if n == 0 {
                break;
            }
        }
    }
    // 4. Everything is in place: reads of the resource skip the default.
    set_state(b, resource, &part, State::Ready, true).await?;
    Ok(Added { part, moved })
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
        // Its partition in every epoch, read under the revision-row lock:
        // a compaction starting an epoch holds it too, so either it sees
        // this resource or this sees its epoch.
        let epochs = first_ints(
            &w.rows(&Statement::with_params(
                b.sql(),
                "SELECT epoch FROM etcdsql_epoch ORDER BY epoch",
                &[],
            ))
            .await?,
        )?;
        for text in b.resource_ddl(part, &epochs) {
            w.execute(&Statement::with_params(b.sql(), &text, &[]))
                .await?;
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
