//! The errors clients see: etcd's codes and messages, one `From` into
//! `tonic::Status`.

use tonic::{Code, Status};

use crate::backend::DbError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A request etcd would accept but this backend cannot store.
    #[error("etcdserver: {0}")]
    Invalid(String),
    #[error("etcdserver: shutting down")]
    Stopping,
    #[error(transparent)]
    Db(#[from] DbError),
    /// A broken invariant inside etcdsql; never the client's fault.
    #[error("etcdserver: internal error: {0}")]
    Internal(String),
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::EmptyKey
            | Error::KeyNotFound
            | Error::ValueProvided
            | Error::LeaseProvided
            | Error::TooManyOps
            | Error::DuplicateKey
            | Error::RequestTooLarge
            | Error::Invalid(_) => Code::InvalidArgument,
            Error::Compacted | Error::FutureRev | Error::LeaseTtlTooLarge => Code::OutOfRange,
            Error::LeaseNotFound => Code::NotFound,
            Error::LeaseExists => Code::FailedPrecondition,
            Error::Stopping => Code::Unavailable,
            Error::Db(DbError::Retry(_) | DbError::Unavailable(_)) => Code::Unavailable,
            Error::Db(DbError::Rejected(_)) => Code::InvalidArgument,
            Error::Db(DbError::Other(_)) | Error::Internal(_) => Code::Internal,
        };
        let message = match &e {
            Error::Db(db) => format!("etcdserver: {db}"),
            other => other.to_string(),
        };
        Status::new(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_are_etcds() {
        let s = Status::from(Error::Compacted);
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = Status::from(Error::LeaseNotFound);
        assert_eq!(s.code(), Code::NotFound);
        let s = Status::from(Error::Db(DbError::Unavailable("connection refused".into())));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("connection refused"));
    }
}
