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
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// etcd has no gRPC error for it: Unknown, with the auth store's text.
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// A request etcd would accept but this backend cannot store.
    #[error("etcdserver: {0}")]
    Invalid(String),
    /// An option etcdsql does not implement, named.
    #[error("etcdserver: {0} is not supported")]
    Unimplemented(&'static str),
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
            Error::NoSpace => Code::ResourceExhausted,
            Error::RootUserNotExist
            | Error::RootRoleNotExist
            | Error::UserAlreadyExist
            | Error::UserNotFound
            | Error::RoleAlreadyExist
            | Error::RoleNotFound
            | Error::RoleNotGranted
            | Error::PermissionNotGranted
            | Error::AuthNotEnabled => Code::FailedPrecondition,
            Error::UserEmpty
            | Error::RoleEmpty
            | Error::AuthFailed
            | Error::PermissionNotGiven
            | Error::InvalidAuthMgmt
            | Error::AuthOldRevision => Code::InvalidArgument,
            Error::NoPasswordUser => Code::Unknown,
            Error::PermissionDenied => Code::PermissionDenied,
            Error::InvalidAuthToken => Code::Unauthenticated,
            Error::Corrupt => Code::DataLoss,
            Error::Stopping => Code::Unavailable,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Db(
                DbError::Retry(_)
                | DbError::Unavailable(_)
                | DbError::Stale
                | DbError::Existed
                | DbError::NeedsRead,
            ) => Code::Unavailable,
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

/// tonic answers a request over the decoding limit with OutOfRange and its
/// own text; etcd (grpc-go) answers ResourceExhausted, "grpc: received
/// message larger than max (N vs. M)". Rewrites such a trailers-only
/// response's status to etcd's.
pub fn oversized_as_grpc_go(headers: &mut http::HeaderMap) {
    if headers.get("grpc-status").map(http::HeaderValue::as_bytes) != Some(b"11") {
        return;
    }
    let Some(msg) = headers
        .get("grpc-message")
        .map(|v| percent_decode(v.as_bytes()))
    else {
        return;
    };
    let Some(rest) = msg.strip_prefix("Error, decoded message length too large: found ") else {
        return;
    };
    let nums: Vec<&str> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect();
    if let [found, limit] = nums[..] {
        let text = format!("grpc: received message larger than max ({found} vs. {limit})");
        if let Ok(v) = http::HeaderValue::from_str(&text) {
            headers.insert("grpc-status", http::HeaderValue::from_static("8"));
            headers.insert("grpc-message", v);
        }
    }
}

/// The text of a percent-encoded `grpc-message`.
pub fn percent_decode(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            )
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

    #[test]
    fn oversized_requests_answer_as_grpc_go() {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "Error,%20decoded%20message%20length%20too%20large:%20found%203145740%20bytes,%20the%20limit%20is:%202097152%20bytes",
            ),
        );
        oversized_as_grpc_go(&mut h);
        assert_eq!(h["grpc-status"], "8");
        assert_eq!(
            h["grpc-message"],
            "grpc: received message larger than max (3145740 vs. 2097152)"
        );
        // Other OutOfRange answers are left alone.
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("11"));
        h.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "etcdserver: mvcc: required revision is a future revision",
            ),
        );
        oversized_as_grpc_go(&mut h);
        assert_eq!(h["grpc-status"], "11");
    }
}
