//! The one DSN: which database, and opening its backend.

use std::sync::Arc;

use super::{Backend, DbError, Kind, mysql, postgres, sqlite};

/// Which database a DSN names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dsn {
    Sqlite(std::path::PathBuf),
    Postgres(String),
    Mysql(String),
}

impl Dsn {
    /// `sqlite:///path` (or `sqlite:path`), `postgres://…`/`postgresql://…`,
    /// `mysql://…`/`mariadb://…`.
    pub fn parse(dsn: &str) -> Result<Dsn, String> {
        let (scheme, rest) = dsn.split_once(':').ok_or_else(|| {
            format!("endpoint {dsn:?} has no scheme (sqlite:, postgres:, mysql:)")
        })?;
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => {
                let path = rest.strip_prefix("//").unwrap_or(rest);
                let path = path.split('?').next().unwrap_or(path);
                if path.is_empty() {
                    return Err("sqlite endpoint has no file path".into());
                }
                Ok(Dsn::Sqlite(path.into()))
            }
            "postgres" | "postgresql" => Ok(Dsn::Postgres(dsn.to_string())),
            "mysql" | "mariadb" => Ok(Dsn::Mysql(format!("mysql:{rest}"))),
            other => Err(format!(
                "endpoint scheme {other:?} is not supported (sqlite, postgres, postgresql, mysql, mariadb)"
            )),
        }
    }
}

impl Dsn {
    /// What `--endpoint` names, or without it the embedded SQLite file
    /// under `--data-dir`.
    pub fn from_flags(endpoint: Option<&str>, data_dir: &std::path::Path) -> Result<Dsn, String> {
        match endpoint {
            Some(e) => Dsn::parse(e),
            None => Ok(Dsn::Sqlite(data_dir.join("etcdsql.db"))),
        }
    }

    /// The schema crate's dialect and endpoint for this DSN.
    pub fn schema(&self) -> (Kind, String) {
        match self {
            Dsn::Sqlite(path) => (Kind::Sqlite, format!("sqlite://{}", path.display())),
            Dsn::Postgres(url) => (Kind::Postgres, url.clone()),
            Dsn::Mysql(url) => (Kind::Mysql, url.clone()),
        }
    }

    /// The DSN for messages: a password is replaced by `***`.
    pub fn redacted(&self) -> String {
        let text = self.schema().1;
        match url::Url::parse(&text) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            _ => text,
        }
    }
}

/// Connects to a database whose schema is current (see `server::open_backend`).
pub async fn open(dsn: &Dsn) -> Result<Arc<dyn Backend>, DbError> {
    Ok(match dsn {
        Dsn::Sqlite(path) => Arc::new(sqlite::SqliteBackend::open(path).await?),
        Dsn::Postgres(url) => Arc::new(postgres::Postgres::open(url).await?),
        Dsn::Mysql(url) => Arc::new(mysql::Mysql::open(url).await?),
    })
}

/// The balanced side of a proxy tier at `dsn` (see
/// [`postgres::Postgres::open_balanced`]); MySQL proxies (ProxySQL) route
/// each statement by itself.
pub async fn open_balanced(dsn: &Dsn) -> Result<Arc<dyn Backend>, DbError> {
    Ok(match dsn {
        Dsn::Postgres(url) => Arc::new(postgres::Postgres::open_balanced(url).await?),
        _ => open(dsn).await?,
    })
}

/// The primary's side of a proxy tier at `dsn` (see
/// [`postgres::Postgres::open_primary_side`]); MySQL proxies route each
/// statement by itself.
pub async fn open_primary_side(dsn: &Dsn) -> Result<Arc<dyn Backend>, DbError> {
    Ok(match dsn {
        Dsn::Postgres(url) => Arc::new(postgres::Postgres::open_primary_side(url).await?),
        _ => open(dsn).await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_schemes() {
        assert_eq!(
            Dsn::parse("sqlite:///var/lib/x.db").unwrap(),
            Dsn::Sqlite("/var/lib/x.db".into())
        );
        assert_eq!(
            Dsn::parse("sqlite:x.db").unwrap(),
            Dsn::Sqlite("x.db".into())
        );
        assert!(matches!(
            Dsn::parse("postgresql://u@h/db"),
            Ok(Dsn::Postgres(_))
        ));
        assert_eq!(
            Dsn::parse("mariadb://root@127.0.0.1/db").unwrap(),
            Dsn::Mysql("mysql://root@127.0.0.1/db".into())
        );
        assert!(
            Dsn::parse("redis://x")
                .unwrap_err()
                .contains("not supported")
        );
        assert!(Dsn::parse("nothing").is_err());
    }
}
