//! DDL per dialect for the partition plan. Identifiers come from
//! [`crate::part_ident`] (letters, digits, `_`), so they are inlined.
//!
//! PostgreSQL: `etcdsql_live` is LIST (part) with a DEFAULT partition whose
//! CHECK (part = '') lets new partitions be created without scanning it;
//! `etcdsql_history` is RANGE (epoch), each epoch LIST (part) alike.
//! MySQL/MariaDB/TiDB: `etcdsql_live` is LIST COLUMNS (part) with
//! `p_default` for ''; `etcdsql_history` is RANGE (epoch) (no subpartitions:
//! TiDB has none).

/// Creates `part`'s live partition and its partition in each epoch. Live
/// pages keep a fifth free, so that updates stay heap-only (as migration 7
/// sets the default partition).
pub fn postgres_add(part: &str, epochs: &[i64]) -> Vec<String> {
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS etcdsql_live_{part} PARTITION OF etcdsql_live FOR VALUES IN ('{part}') \
         WITH (fillfactor = 80)"
    )];
    out.extend(epochs.iter().map(|e| postgres_epoch_part(*e, part)));
    out
}

fn postgres_epoch_part(epoch: i64, part: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS etcdsql_history_e{epoch}_{part} PARTITION OF etcdsql_history_e{epoch} \
         FOR VALUES IN ('{part}')"
    )
}

/// Creates an epoch's history partition with one partition per listed part.
pub fn postgres_epoch(epoch: i64, parts: &[String]) -> Vec<String> {
    let next = epoch + 1;
    let mut out = vec![
        format!(
            "CREATE TABLE IF NOT EXISTS etcdsql_history_e{epoch} PARTITION OF etcdsql_history \
             FOR VALUES FROM ({epoch}) TO ({next}) PARTITION BY LIST (part)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS etcdsql_history_e{epoch}_default PARTITION OF etcdsql_history_e{epoch} \
             (CONSTRAINT etcdsql_history_e{epoch}_default_part CHECK (part = '')) DEFAULT"
        ),
    ];
    out.extend(parts.iter().map(|p| postgres_epoch_part(epoch, p)));
    out
}

/// Drops an epoch's history partition and everything in it.
pub fn postgres_drop_epoch(epoch: i64) -> String {
    format!("DROP TABLE IF EXISTS etcdsql_history_e{epoch}")
}

/// Adds `part`'s live partition (MySQL keeps history by epoch only).
pub fn mysql_add(part: &str) -> String {
    format!("ALTER TABLE etcdsql_live ADD PARTITION (PARTITION p_{part} VALUES IN ('{part}'))")
}

pub fn mysql_epoch(epoch: i64) -> String {
    let next = epoch + 1;
    format!(
        "ALTER TABLE etcdsql_history ADD PARTITION (PARTITION e{epoch} VALUES LESS THAN ({next}))"
    )
}

pub fn mysql_drop_epoch(epoch: i64) -> String {
    format!("ALTER TABLE etcdsql_history DROP PARTITION e{epoch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_name_their_partitions() {
        let pg = postgres_add("pods", &[0, 3]);
        assert_eq!(pg.len(), 3);
        assert!(pg[2].starts_with(
            "CREATE TABLE IF NOT EXISTS etcdsql_history_e3_pods PARTITION OF etcdsql_history_e3"
        ));
        let e = postgres_epoch(4, &["pods".into()]);
        assert!(e[0].contains("FROM (4) TO (5)") && e[2].contains("etcdsql_history_e4_pods"));
        assert_eq!(
            mysql_epoch(4),
            "ALTER TABLE etcdsql_history ADD PARTITION (PARTITION e4 VALUES LESS THAN (5))"
        );
        assert!(mysql_add("pods").contains("PARTITION p_pods VALUES IN ('pods')"));
    }
}
