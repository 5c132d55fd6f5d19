//! Database errors, in the few kinds the store acts on.

/// What the store needs to tell database failures apart.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DbError {
    /// Serialization failure, deadlock, lock timeout, Galera certification
    /// failure, busy database: the whole transaction can be run again.
    #[error("transient database conflict: {0}")]
    Retry(String),
    /// The database cannot be reached or the connection broke.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused the data itself (for example a key longer than
    /// the dialect's key column).
    #[error("{0}")]
    Rejected(String),
    /// Anything else: a bug or a schema problem.
    #[error("database error: {0}")]
    Other(String),
}
