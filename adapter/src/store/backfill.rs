//! Selector columns read from stored objects: the catalog at start
//! ([`load_catalog`]), and, in the background:
//! - [`run`]: rows written before schema version 3, once, by the first
//!   server to start (`etcdsql_meta.selectors_indexed` records that it is
//!   done; a database created at version 3 starts with it set); then
//!   `etcdsql_label` rows hashed as before version 8, hashed again
//!   (`etcdsql_meta.label_hashes` is 2 once done);
//! - [`resource`]: a custom resource's objects after a write of its CRD
//!   changed the selectable fields.

use crate::backend::sql::Param;
use crate::backend::{Backend, Columns, DbError, Indexed, first_ints};
use crate::backend::{KeyEnd, RangeQuery};
use crate::selector::extract::CRD_PREFIX;
use crate::selector::{Catalog, hash};

/// A catalog of the CRDs stored in the database.
pub async fn load_catalog(backend: &dyn Backend) -> Result<Catalog, DbError> {
    let c = Catalog::default();
    let end = etcdsql_partitions::prefix_end(CRD_PREFIX).unwrap_or_default();
    let q = RangeQuery::all(CRD_PREFIX.to_vec(), KeyEnd::Before(end), None);
    for kv in backend.range(&q).await?.kvs {
        c.observe(&kv.key, Some(&kv.value));
    }
    Ok(c)
}

/// Rows read per step.
const STEP: i64 = 500;

/// `etcdsql_label` rows per INSERT (2 parameters a row; SQLite allows
/// 32766 in a statement).
const LABEL_ROWS: usize = 4000;

/// Indexes the live rows that have no selector columns yet, then hashes
/// label rows from before schema version 8 again. Returns the rows
/// indexed or hashed again.
pub async fn run(backend: &dyn Backend, catalog: &Catalog) -> Result<u64, DbError> {
    let flag = |column: &str| {
        backend.statement(
            &format!("SELECT {column} FROM etcdsql_meta WHERE id = 1"),
            &[],
        )
    };
    let mut done = 0;
    if first_ints(&backend.fetch(&flag("selectors_indexed")).await?)?.first() != Some(&1) {
        done += pass(backend, catalog, Rows::Unindexed).await?;
        backend
            .execute(&backend.statement(
                "UPDATE etcdsql_meta SET selectors_indexed = 1 WHERE id = 1",
                &[],
            ))
            .await?;
    }
    catalog.set_label_rows_complete();
    if backend.sql().label_table()
        && first_ints(&backend.fetch(&flag("label_hashes")).await?)?.first() != Some(&2)
    {
        done += pass(backend, catalog, Rows::All).await?;
        // Every live row has its rows hashed anew (a write meanwhile wrote
        // its own), and no new hash is 1.
        backend
            .execute(&backend.statement(
                &format!(
                    "DELETE FROM etcdsql_label WHERE h = {}",
                    hash::LEGACY_BUCKET
                ),
                &[],
            ))
            .await?;
        backend
            .execute(
                &backend.statement("UPDATE etcdsql_meta SET label_hashes = 2 WHERE id = 1", &[]),
            )
            .await?;
    }
    catalog.set_hashes_current();
    Ok(done)
}

/// Which live rows a [`pass`] reads.
enum Rows {
    /// Those without selector columns; it writes their columns and rows.
    Unindexed,
    /// Those in `[lo, hi)`; it writes their columns and rows.
    Range(Vec<u8>, Vec<u8>),
    /// All; it writes their label rows only.
    All,
}

/// Reads the labels and fields of every object of `resource` again.
/// Returns the rows updated.
pub async fn resource(
    backend: &dyn Backend,
    catalog: &Catalog,
    resource: &str,
) -> Result<u64, DbError> {
    let start = etcdsql_partitions::prefix_of(resource);
    let end = etcdsql_partitions::prefix_end(&start).unwrap_or_default();
    pass(backend, catalog, Rows::Range(start, end)).await
}

/// One pass over live rows. Concurrent writes win: a row is updated only
/// at the version that was read, and an `etcdsql_label` row too many only
/// adds a candidate.
async fn pass(backend: &dyn Backend, catalog: &Catalog, rows: Rows) -> Result<u64, DbError> {
    let d = backend.sql();
    let jsonb = d.json_param;
    let only_null = if matches!(rows, Rows::Unindexed) {
        " AND labels IS NULL"
    } else {
        ""
    };
    let update = format!(
        "UPDATE etcdsql_live SET labels = ?{jsonb}, fields = ?{jsonb} \
         WHERE name = ? AND mod_revision = ?{only_null}"
    );
    let columns = !matches!(rows, Rows::All);
    // Each step reads the rows after the last one it read (`after`).
    let (select, bounds) = match rows {
        Rows::Unindexed => (
            "SELECT name, value, mod_revision FROM etcdsql_live \
             WHERE labels IS NULL AND name > ? ORDER BY name LIMIT ?",
            Vec::new(),
        ),
        Rows::Range(lo, hi) => (
            "SELECT name, value, mod_revision FROM etcdsql_live \
             WHERE name > ? AND name >= ? AND name < ? ORDER BY name LIMIT ?",
            vec![Param::Bytes(lo), Param::Bytes(hi)],
        ),
        Rows::All => (
            "SELECT name, value, mod_revision FROM etcdsql_live \
             WHERE name > ? ORDER BY name LIMIT ?",
            Vec::new(),
        ),
    };
    let (mut after, mut updated) = (Vec::new(), 0u64);
    loop {
        let mut params = vec![Param::Bytes(after.clone())];
        params.extend(bounds.iter().cloned());
        params.push(Param::Int(STEP));
        let rows = backend.fetch(&backend.statement(select, &params)).await?;
        if rows.is_empty() {
            break;
        }
        let mut read = Vec::with_capacity(rows.len());
        for r in &rows {
            let name = r.bytes(0)?.unwrap_or_default();
            let value = r.bytes(1)?.unwrap_or_default();
            let index = Indexed::of(catalog, &name, &value);
            read.push((name, index, r.int(2)?));
        }
        if d.label_table() {
            // The step's rows, before its columns: a crash in between
            // leaves the rows to the next pass.
            let pairs: Vec<(i64, &Vec<u8>)> = read
                .iter()
                .flat_map(|(name, index, _)| {
                    let hashes =
                        hash::rows(name, index.as_deref().map(|i| i.hashes.as_slice())).to_vec();
                    hashes.into_iter().map(move |h| (h, name))
                })
                .collect();
            for chunk in pairs.chunks(LABEL_ROWS) {
                let text = format!(
                    "{} INTO etcdsql_label (h, name) VALUES {}{}",
                    d.insert_or_ignore,
                    vec!["(?, ?)"; chunk.len()].join(", "),
                    d.insert_or_ignore_tail
                );
                let params: Vec<Param> = chunk
                    .iter()
                    .flat_map(|(h, name)| [Param::Int(*h), Param::Bytes((*name).clone())])
                    .collect();
                backend.execute(&backend.statement(&text, &params)).await?;
            }
        }
        for (name, index, revision) in read {
            match index {
                Some(i) if columns => {
                    updated += backend
                        .execute(&backend.statement(
                            &update,
                            &[
                                Param::Text(i.labels.clone()),
                                Param::Text(i.fields.clone()),
                                Param::Bytes(name.clone()),
                                Param::Int(revision),
                            ],
                        ))
                        .await?;
                }
                _ if !columns => updated += 1,
                _ => {}
            }
            after = name;
        }
    }
    Ok(updated)
}
