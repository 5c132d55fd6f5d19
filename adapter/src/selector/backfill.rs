//! Selector columns for rows written before schema version 3: read once,
//! in the background, by the first server to start on such a database.
//! `etcdsql_meta.selectors_indexed` records that it is done (a database
//! created at version 3 starts with it set: every row is indexed as written).

use crate::backend::sql::{Json, Param};
use crate::backend::{Backend, Columns, DbError, Indexed, first_ints};
use crate::selector::{Catalog, hash};

/// Rows read per step.
const STEP: i64 = 500;

/// Indexes the live rows that have no selector columns yet. Concurrent
/// writes win: a row is updated only at the version that was read, and an
/// `etcdsql_label` row too many only adds a candidate. Returns the rows
/// indexed.
pub async fn run(backend: &dyn Backend, catalog: &Catalog) -> Result<u64, DbError> {
    let done = backend
        .fetch(&backend.statement(
            "SELECT selectors_indexed FROM etcdsql_meta WHERE id = 1",
            &[],
        ))
        .await?;
    if first_ints(&done)?.first() == Some(&1) {
        return Ok(0);
    }
    let d = backend.sql();
    let (jsonb, insert_label) = match d.json {
        Json::Postgres => ("::text::jsonb", ""),
        Json::MySql => (
            "",
            "INSERT IGNORE INTO etcdsql_label (h, name) VALUES (?, ?)",
        ),
        Json::Sqlite => (
            "",
            "INSERT OR IGNORE INTO etcdsql_label (h, name) VALUES (?, ?)",
        ),
    };
    let update = format!(
        "UPDATE etcdsql_live SET labels = ?{jsonb}, fields = ?{jsonb} \
         WHERE name = ? AND mod_revision = ? AND labels IS NULL"
    );
    let (mut after, mut indexed) = (Vec::new(), 0u64);
    loop {
        let rows = backend
            .fetch(&backend.statement(
                "SELECT name, value, mod_revision FROM etcdsql_live \
                 WHERE labels IS NULL AND name > ? ORDER BY name LIMIT ?",
                &[Param::Bytes(after.clone()), Param::Int(STEP)],
            ))
            .await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let name = r.bytes(0)?.unwrap_or_default();
            let value = r.bytes(1)?.unwrap_or_default();
            let index = Indexed::of(catalog, &name, &value);
            if d.label_table {
                // Before the columns: a crash in between leaves the row
                // NULL, read again by the next start.
                let hashes = index
                    .as_deref()
                    .map_or(vec![hash::OPAQUE], |i| i.hashes.clone());
                for h in hashes {
                    backend
                        .execute(
                            &backend.statement(
                                insert_label,
                                &[Param::Int(h), Param::Bytes(name.clone())],
                            ),
                        )
                        .await?;
                }
            }
            if let Some(i) = index {
                indexed += backend
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
    backend
        .execute(&backend.statement(
            "UPDATE etcdsql_meta SET selectors_indexed = 1 WHERE id = 1",
            &[],
        ))
        .await?;
    Ok(indexed)
}
