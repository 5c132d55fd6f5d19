//! Selector columns read from stored objects: the catalog at start
//! ([`load_catalog`]), and, in the background:
//! - [`run`]: rows written before schema version 3, once, by the first
//!   server to start (`etcdsql_meta.selectors_indexed` records that it is
//!   done; a database created at version 3 starts with it set);
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

/// Indexes the live rows that have no selector columns yet. Returns the
/// rows indexed.
pub async fn run(backend: &dyn Backend, catalog: &Catalog) -> Result<u64, DbError> {
    let done = backend
        .fetch(&backend.statement(
            "SELECT selectors_indexed FROM etcdsql_meta WHERE id = 1",
            &[],
        ))
        .await?;
    if first_ints(&done)?.first() == Some(&1) {
        catalog.set_label_rows_complete();
        return Ok(0);
    }
    let indexed = pass(backend, catalog, None).await?;
    backend
        .execute(&backend.statement(
            "UPDATE etcdsql_meta SET selectors_indexed = 1 WHERE id = 1",
            &[],
        ))
        .await?;
    catalog.set_label_rows_complete();
    Ok(indexed)
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
    pass(backend, catalog, Some((start, end))).await
}

/// One pass over the live rows in `range`, or over those without columns.
/// Concurrent writes win: a row is updated only at the version that was
/// read, and an `etcdsql_label` row too many only adds a candidate.
async fn pass(
    backend: &dyn Backend,
    catalog: &Catalog,
    range: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<u64, DbError> {
    let d = backend.sql();
    let jsonb = d.json_param;
    // Where the label table exists (not with PostgreSQL's GIN index).
    let insert_label = format!(
        "{} INTO etcdsql_label (h, name) VALUES (?, ?){}",
        d.insert_or_ignore, d.insert_or_ignore_tail
    );
    let only_null = if range.is_none() {
        " AND labels IS NULL"
    } else {
        ""
    };
    let update = format!(
        "UPDATE etcdsql_live SET labels = ?{jsonb}, fields = ?{jsonb} \
         WHERE name = ? AND mod_revision = ?{only_null}"
    );
    // Each step reads the rows after the last one it read (`after`).
    let (select, bounds) = match range {
        None => (
            "SELECT name, value, mod_revision FROM etcdsql_live \
             WHERE labels IS NULL AND name > ? ORDER BY name LIMIT ?",
            Vec::new(),
        ),
        Some((lo, hi)) => (
            "SELECT name, value, mod_revision FROM etcdsql_live \
             WHERE name > ? AND name >= ? AND name < ? ORDER BY name LIMIT ?",
            vec![Param::Bytes(lo), Param::Bytes(hi)],
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
        for r in &rows {
            let name = r.bytes(0)?.unwrap_or_default();
            let value = r.bytes(1)?.unwrap_or_default();
            let index = Indexed::of(catalog, &name, &value);
            if d.label_table() {
                // Before the columns: a crash in between leaves the row to
                // the next pass.
                let hashes = index
                    .as_deref()
                    .map_or(vec![hash::OPAQUE], |i| i.hashes.clone());
                for h in hashes {
                    backend
                        .execute(
                            &backend.statement(
                                &insert_label,
                                &[Param::Int(h), Param::Bytes(name.clone())],
                            ),
                        )
                        .await?;
                }
            }
            if let Some(i) = index {
                updated += backend
                    .execute(&backend.statement(
                        &update,
                        &[
                            Param::Text(i.labels.clone()),
                            Param::Text(i.fields.clone()),
                            Param::Bytes(name.clone()),
                            Param::Int(r.int(2)?),
                        ],
                    ))
                    .await?;
            }
            after = name;
        }
    }
    Ok(updated)
}
