//! Compaction by epochs (PostgreSQL, MySQL family). History rows carry the
//! epoch that was current when they were written (`etcdsql_meta.epoch`);
//! each epoch is a partition of `etcdsql_history`. Compacting at `to`:
//!
//! 1. *roll*: when the current epoch holds rows at or below `to`, create
//!    the next epoch's partition and make it current under the revision-row
//!    lock, recording the current epoch's last revision;
//! 2. for every epoch whose last revision is at or below `to`, move its
//!    *survivors* (the last version of a key at `to`, unless a tombstone)
//!    into epoch 0, found from the live table and the history after `to`.
//!    A write after `to` cannot change that set, so no lock is needed;
//! 3. delete the rows of epoch 0 that are superseded at or below `to`
//!    (before step 4: the superseding tombstone may be in a dropped epoch);
//! 4. drop those epochs' partitions: one DDL statement instead of one
//!    deleted row per obsolete version.
//!
//! Rows at or below `to` in epochs that stay (written after the roll's
//! revision) are left to the row purge, [`Backend::purge_history`], which
//! the caller runs on the revisions above the dropped epochs.

use super::sql::Param;
use super::{Backend, DbError, first_ints};

/// Rows per statement when moving survivors and purging epoch 0.
const BATCH: usize = 5_000;

/// What [`compact`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// The epoch that became current, if this compaction started one.
    pub rolled: Option<i64>,
    /// Epochs dropped.
    pub dropped: Vec<i64>,
    /// Rows moved into epoch 0.
    pub moved: u64,
    /// Rows deleted from epoch 0.
    pub deleted: u64,
    /// The highest revision that dropped epochs covered (0 if none): the
    /// row purge needs only the revisions above it.
    pub covered: i64,
    /// Time spent per step: roll, move, purge of epoch 0, drop.
    pub took: [std::time::Duration; 4],
}

/// The first column of a query's rows. Values are bound, not inlined:
/// the read pool caches statements by their text.
async fn ints(b: &dyn Backend, text: &str, params: &[i64]) -> Result<Vec<i64>, DbError> {
    let params: Vec<Param> = params.iter().map(|p| Param::Int(*p)).collect();
    first_ints(&b.fetch(&b.statement(text, &params)).await?)
}

/// Steps 1 to 4 of the module doc for a compaction at `to`.
pub async fn compact(b: &dyn Backend, to: i64) -> Result<Compacted, DbError> {
    let mut step = std::time::Instant::now();
    let mut lap = || {
        let now = std::time::Instant::now();
        let d = now - step;
        step = now;
        d
    };
    let mut out = Compacted {
        rolled: roll(b, to).await?,
        ..Compacted::default()
    };
    out.took[0] = lap();
    let done = b
        .fetch(&b.statement(
            "SELECT epoch, last_revision FROM etcdsql_epoch \
             WHERE epoch > 0 AND last_revision IS NOT NULL AND last_revision <= ? ORDER BY epoch",
            &[Param::Int(to)],
        ))
        .await?;
    let mut epochs = Vec::with_capacity(done.len());
    for r in &done {
        let (e, last) = (r.int(0)?, r.int(1)?);
        epochs.push(e);
        out.covered = out.covered.max(last);
        out.moved += move_survivors(b, e, last, to).await?;
    }
    out.took[1] = lap();
    out.deleted = purge_epoch0(b, to).await?;
    out.took[2] = lap();
    for &e in &epochs {
        drop_epoch(b, e).await?;
        out.dropped.push(e);
    }
    out.took[3] = lap();
    Ok(out)
}

/// Starts a new epoch when the current one holds rows at or below `to`.
async fn roll(b: &dyn Backend, to: i64) -> Result<Option<i64>, DbError> {
    let current = *ints(b, "SELECT epoch FROM etcdsql_meta WHERE id = 1", &[])
        .await?
        .first()
        .ok_or_else(|| DbError::Other("etcdsql_meta has no row".into()))?;
    let below = ints(
        b,
        "SELECT revision FROM etcdsql_history WHERE epoch = ? AND revision <= ? \
         ORDER BY revision LIMIT 1",
        &[current, to],
    )
    .await?;
    if below.is_empty() {
        return Ok(None);
    }
    let next = current + 1;
    // Where DDL commits implicitly (MySQL) the partition comes first,
    // outside the transaction; elsewhere it is created inside it, below.
    b.create_epoch_partition(next).await?;
    let mut w = b.writer().await?;
    let r = async {
        let meta = w.begin().await?;
        let locked = first_ints(
            &w.rows(&b.statement("SELECT epoch FROM etcdsql_meta WHERE id = 1", &[]))
                .await?,
        )?;
        if locked.first() != Some(&current) {
            // Another process rolled first.
            w.rollback().await;
            return Ok(None);
        }
        // Under the lock, so that `partitions add` (which creates its
        // partition in every epoch under the same lock) cannot miss it.
        let parts = w
            .rows(&b.statement("SELECT part FROM etcdsql_partition ORDER BY part", &[]))
            .await?;
        let mut names = Vec::with_capacity(parts.len());
        for p in &parts {
            let part = p.bytes(0)?.unwrap_or_default();
            names.push(String::from_utf8(part).map_err(|e| DbError::Other(e.to_string()))?);
        }
        for text in b.epoch_ddl(next, &names) {
            w.execute(&b.statement(&text, &[])).await?;
        }
        for text in [
            format!(
                "UPDATE etcdsql_epoch SET last_revision = {} WHERE epoch = {current}",
                meta.revision
            ),
            format!("INSERT INTO etcdsql_epoch (epoch, last_revision) VALUES ({next}, NULL)"),
            format!("UPDATE etcdsql_meta SET epoch = {next} WHERE id = 1"),
        ] {
            w.execute(&b.statement(&text, &[])).await?;
        }
        w.commit(meta).await?;
        Ok(Some(next))
    }
    .await;
    if r.is_err() {
        w.rollback().await;
    }
    r
}

/// Moves epoch `e`'s survivors at `to` into epoch 0. Epoch `e` holds
/// revisions up to `last`; a key's last version at `to` is its live row's
/// revision when it has not changed since `to`, and otherwise the previous
/// revision of its first change after `to`. Both come from small sets (the
/// live rows, through MySQL's revision index or PostgreSQL's heap, and the
/// history after `to`), not from probing every row of the epoch. Moves
/// whole revisions (the primary key's prefix): a superseded row moved along
/// with a survivor of the same revision is deleted by [`purge_epoch0`].
async fn move_survivors(b: &dyn Backend, e: i64, last: i64, to: i64) -> Result<u64, DbError> {
    let first = ints(
        b,
        "SELECT revision FROM etcdsql_history WHERE epoch = ? ORDER BY revision LIMIT 1",
        &[e],
    )
    .await?;
    let Some(&first) = first.first() else {
        return Ok(0);
    };
    let (lo, hi) = (first - 1, last.min(to));
    let mut revs = ints(
        b,
        "SELECT mod_revision FROM etcdsql_live WHERE mod_revision > ? AND mod_revision <= ? \
         UNION SELECT prev_revision FROM etcdsql_history WHERE revision > ? \
         AND prev_revision > ? AND prev_revision <= ?",
        &[lo, hi, to, lo, hi],
    )
    .await?;
    revs.sort_unstable();
    revs.dedup();
    let mut moved = 0;
    for chunk in revs.chunks(BATCH) {
        moved += b
            .execute(&b.statement(
                &format!(
                    "UPDATE etcdsql_history SET epoch = 0 WHERE epoch = {e} AND revision IN ({})",
                    join(chunk.iter())
                ),
                &[],
            ))
            .await?;
    }
    Ok(moved)
}

/// Deletes epoch 0's rows that no read at or above `to` needs.
async fn purge_epoch0(b: &dyn Backend, to: i64) -> Result<u64, DbError> {
    let mut deleted = 0;
    // Rows found are deleted, so the cursor may include its own revision.
    let mut from = 0;
    loop {
        let rows = b
            .fetch(&b.statement(
                &format!(
                    "SELECT h.revision, h.sub FROM etcdsql_history h WHERE h.epoch = 0 \
                     AND h.revision >= ? AND h.revision <= ? \
                     AND (h.deleted = 1 OR EXISTS (SELECT 1 FROM etcdsql_history n \
                     WHERE n.name = h.name AND n.revision > h.revision AND n.revision <= ?)) \
                     ORDER BY h.revision, h.sub LIMIT {BATCH}"
                ),
                &[from, to, to].map(Param::Int),
            ))
            .await?;
        let mut keys = Vec::with_capacity(rows.len());
        for r in &rows {
            keys.push((r.int(0)?, r.int(1)?));
        }
        let Some(&(last, _)) = keys.last() else {
            return Ok(deleted);
        };
        let list = join(keys.iter().map(|(r, s)| format!("({r}, {s})")));
        let n = b
            .execute(&b.statement(
                &format!(
                    "DELETE FROM etcdsql_history WHERE epoch = 0 AND (revision, sub) IN ({list})"
                ),
                &[],
            ))
            .await?;
        if n == 0 {
            // Gone meanwhile (another process purging): nothing left here.
            return Ok(deleted);
        }
        deleted += n;
        from = last;
    }
}

/// Drops epoch `e`'s partition (and, on PostgreSQL, its partitions by
/// resource), then forgets the epoch.
async fn drop_epoch(b: &dyn Backend, e: i64) -> Result<(), DbError> {
    b.drop_epoch_partition(e).await?;
    b.execute(&b.statement(&format!("DELETE FROM etcdsql_epoch WHERE epoch = {e}"), &[]))
        .await?;
    Ok(())
}

fn join(items: impl Iterator<Item = impl ToString>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}
