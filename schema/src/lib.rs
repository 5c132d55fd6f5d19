//! etcdsql's schema: the table definitions per SQL dialect, embedded in the
//! binary. Every statement is idempotent (`IF NOT EXISTS`, insert-or-ignore),
//! so applying the whole list to an existing database changes nothing.
//!
//! Version 1 is applied by the server on start; the versioned `schema`
//! subcommand with status and dry-run builds on these files.

/// The schema version these files create.
pub const VERSION: i32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

fn source(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => include_str!("../sql/sqlite/0001_init.sql"),
        Dialect::Postgres => include_str!("../sql/postgres/0001_init.sql"),
        Dialect::Mysql => include_str!("../sql/mysql/0001_init.sql"),
    }
}

/// The statements that create schema version 1, in order, comments removed.
pub fn init_statements(d: Dialect) -> Vec<String> {
    let text: String = source(d)
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dialect_creates_the_same_tables() {
        for d in [Dialect::Sqlite, Dialect::Postgres, Dialect::Mysql] {
            let stmts = init_statements(d);
            for table in [
                "etcdsql_meta",
                "etcdsql_live",
                "etcdsql_history",
                "etcdsql_lease",
            ] {
                let create = format!("CREATE TABLE IF NOT EXISTS {table} (");
                assert!(
                    stmts.iter().any(|s| s.starts_with(&create)),
                    "{d:?} lacks {table}"
                );
            }
            assert!(stmts.iter().all(|s| !s.contains("--")), "{d:?}");
        }
    }
}
