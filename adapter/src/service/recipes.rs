//! What the Lock and Election services share, as etcd's concurrency
//! recipes do it: each holder owns the key `<name>/<lease in hex>`, attached
//! to its lease; holders queue in create-revision order, and the first one
//! holds the lock or leads.

use std::sync::Arc;

use crate::backend::KeyEnd;
use crate::error::Error;
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
    compare, request_op,
};
use crate::proto::mvccpb::KeyValue;
use crate::store::Store;
use crate::tasks::Tasks;
use crate::watch::{Hub, Slice};

/// The lease a request names; for none, a new one of etcd's session TTL
/// (60 s) that nobody renews, as etcd's server does.
pub async fn session_lease(store: &Store, lease: i64) -> Result<i64, Error> {
    if lease != 0 {
        return Ok(lease);
    }
    Ok(store.lease_grant(0, SESSION_TTL).await?.0)
}

/// etcd's default session TTL, in seconds.
const SESSION_TTL: i64 = 60;

/// `name/` and the holder's key under it.
pub fn keys(name: &[u8], lease: i64) -> (Vec<u8>, Vec<u8>) {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let mut key = prefix.clone();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    (prefix, key)
}

/// The keys starting with `prefix`.
pub fn prefix_range(prefix: &[u8]) -> KeyEnd {
    etcdsql_partitions::prefix_end(prefix).map_or(KeyEnd::Unbounded, KeyEnd::Before)
}

fn create_revision_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        target: compare::CompareTarget::Create as i32,
        result: compare::CompareResult::Equal as i32,
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

fn put_op(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

/// Puts `key` (with `value` and `lease`) unless it exists. Answers its
/// version.
pub async fn claim(store: &Store, key: &[u8], value: &[u8], lease: i64) -> Result<KeyValue, Error> {
    let r = store
        .txn(TxnRequest {
            compare: vec![create_revision_is(key, 0)],
            success: vec![put_op(key, value, lease)],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                })),
            }],
        })
        .await?;
    if r.succeeded {
        let rev = revision(&r);
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease,
        };
        return Ok(kv);
    }
    let kv = r
        .responses
        .into_iter()
        .find_map(|r| match r.response {
            Some(crate::proto::etcdserverpb::response_op::Response::ResponseRange(mut g)) => {
                g.kvs.pop()
            }
            _ => None,
        })
        // The compare found it, so the same Txn's range does too.
        .ok_or_else(|| Error::Internal("claimed key not read".into()))?;
    Ok(kv)
}

/// Puts `value` on `key` if its create revision is still `rev`. Answers
/// whether it did, and the revision.
pub async fn put_if_held(
    store: &Store,
    key: &[u8],
    rev: i64,
    value: &[u8],
    lease: i64,
) -> Result<(bool, i64), Error> {
    let r = store
        .txn(TxnRequest {
            compare: vec![create_revision_is(key, rev)],
            success: vec![put_op(key, value, lease)],
            failure: vec![],
        })
        .await?;
    Ok((r.succeeded, revision(&r)))
}

/// Deletes `key` if its create revision is still `rev`; answers the revision.
pub async fn delete_if_held(store: &Store, key: &[u8], rev: i64) -> Result<i64, Error> {
    let r = store
        .txn(TxnRequest {
            compare: vec![create_revision_is(key, rev)],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: key.to_vec(),
                        ..Default::default()
                    },
                )),
            }],
            failure: vec![],
        })
        .await?;
    Ok(revision(&r))
}

fn revision(r: &TxnResponse) -> i64 {
    r.header.as_ref().map_or(0, |h| h.revision)
}

/// The key under `prefix` created first (`first`) or last below
/// `max_create`, and the revision of the answer.
pub async fn edge(
    store: &Store,
    prefix: &[u8],
    first: bool,
    max_create: i64,
) -> Result<(Option<KeyValue>, i64), Error> {
    let mut r = store
        .range(&RangeRequest {
            key: prefix.to_vec(),
            range_end: match prefix_range(prefix) {
                KeyEnd::Before(end) => end,
                _ => vec![0],
            },
            limit: 1,
            sort_order: if first {
                SortOrder::Ascend
            } else {
                SortOrder::Descend
            } as i32,
            sort_target: SortTarget::Create as i32,
            max_create_revision: max_create,
            ..Default::default()
        })
        .await?;
    let rev = r.header.as_ref().map_or(0, |h| h.revision);
    Ok((r.kvs.pop(), rev))
}

/// Waits until no key under `prefix` was created at or below `max_create`
/// (the holders ahead). Answers the revision at which that was so.
pub async fn wait_deletes(
    store: &Store,
    hub: &Hub,
    prefix: &[u8],
    max_create: i64,
) -> Result<i64, Error> {
    loop {
        let (ahead, rev) = edge(store, prefix, false, max_create).await?;
        let Some(ahead) = ahead else {
            return Ok(rev);
        };
        let mut after = rev;
        loop {
            let events = next_events(hub, &mut after, &ahead.key, &KeyEnd::Single).await?;
            if events.iter().any(|e| e.deleted) {
                break;
            }
        }
    }
}

/// Changes of keys in `[key, end)` after `*after`, waiting for the hub to
/// get past it; advances `*after` to the revision they complete.
pub async fn next_events(
    hub: &Hub,
    after: &mut i64,
    key: &[u8],
    end: &KeyEnd,
) -> Result<Vec<crate::backend::EventRow>, Error> {
    let mut seen = hub.subscribe();
    let since = *after;
    let now = *seen
        .wait_for(|r| *r > since)
        .await
        .map_err(|_| Error::Stopping)?;
    let events = match hub.slice(since + 1, now, usize::MAX) {
        Slice::Events(events) => events
            .into_iter()
            .filter(|e| end.contains(key, &e.kv.key))
            .map(|e| (*e).clone())
            .collect(),
        Slice::Evicted => hub.read(since, now, key, end).await?,
    };
    *after = now;
    Ok(events)
}

/// Deletes a holder's key if the request that put it goes away before it
/// is answered (a client that stops waiting leaves no key behind).
pub struct Abandon {
    pub store: Arc<Store>,
    pub tasks: Tasks,
    pub key: Vec<u8>,
    pub rev: i64,
    pub armed: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, key, rev) = (self.store.clone(), std::mem::take(&mut self.key), self.rev);
        self.tasks.spawn("abandoned lock key", async move {
            if let Err(e) = delete_if_held(&store, &key, rev).await {
                tracing::warn!(error = %e, "deleting an abandoned lock or election key failed");
            }
        });
    }
}
