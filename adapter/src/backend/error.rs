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
    /// A batch's assumptions (see [`crate::backend::Writer::begin_assuming`])
    /// no longer held; nothing of it was written. It runs again, reading
    /// first.
    #[error("write batch assumptions did not hold")]
    Stale,
    /// A batch begun assuming found the revision row as assumed, but a key
    /// it took as absent exists; nothing of it was written. What the
    /// committer knows still holds; the batch runs again, reading first.
    #[error("a key a write batch took as absent exists")]
    Existed,
    /// A batch begun assuming needed a read it cannot make (a key it does
    /// not know, a lease, a range); nothing was sent. It runs again,
    /// reading first.
    #[error("write batch needs to read first")]
    NeedsRead,
    /// Anything else: a bug or a schema problem.
    #[error("database error: {0}")]
    Other(String),
}

/// Attempts after an [`DbError::Unavailable`] where trying again is safe
/// (before a COMMIT, a read, the revision fence): enough to ride out a
/// database or proxy failing over (about 2.5 s in all).
pub const RECONNECTS: u32 = 5;

/// The pause before reconnect attempt `attempt` (from 1): 100 ms doubling,
/// at most 1 s.
pub fn reconnect_delay(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis((100u64 << attempt.saturating_sub(1).min(4)).min(1000))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reconnect_delays() {
        let ms: Vec<u128> = (1..=super::RECONNECTS)
            .map(|a| super::reconnect_delay(a).as_millis())
            .collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000]);
        assert_eq!(super::reconnect_delay(40).as_millis(), 1000);
    }
}
