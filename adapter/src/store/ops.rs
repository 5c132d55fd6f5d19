//! etcd's semantics for Range, Put, DeleteRange and Txn over a [`View`]:
//! the write batch implements it for writes, a fixed-revision read view for
//! read-only Txns. The shapes of responses (which header carries which
//! revision) follow etcd 3.4's applier.

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::backend::{KeyEnd, Meta, RangeQuery, RangeRows, SortTarget};
use crate::error::Error;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget as PbSortTarget};
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::response_op::Response;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::mvccpb::KeyValue;

/// The state one request reads and changes.
#[async_trait]
pub trait View: Send {
    /// The store before the current request.
    fn meta(&self) -> Meta;
    /// Whether the current request has changed anything yet.
    fn changed(&self) -> bool;
    async fn get(&mut self, key: &[u8]) -> Result<Option<KeyValue>, Error>;
    async fn range(&mut self, q: &RangeQuery) -> Result<RangeRows, Error>;
    async fn lease_exists(&mut self, id: i64) -> Result<bool, Error>;
    /// Stores `kv` at the current request's revision; `prev_revision` is
    /// the mod revision of the version it replaces (0 for a create).
    async fn put(&mut self, kv: KeyValue, prev_revision: i64) -> Result<(), Error>;
    async fn delete(&mut self, prev: &KeyValue) -> Result<(), Error>;
}

pub fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Whether etcd cuts `r`'s range before it sorts: a limit, no sort order
/// (NONE) and no revision filters. etcd then reads the first limit + 1
/// keys in key order and sorts only those (ascending, for a target other
/// than the key) before cutting to the limit.
pub fn limit_before_sort(r: &RangeRequest) -> bool {
    r.limit > 0
        && r.sort_order() == SortOrder::None
        && r.min_mod_revision == 0
        && r.max_mod_revision == 0
        && r.min_create_revision == 0
        && r.max_create_revision == 0
}

/// The SQL-level query for a Range request. etcd sorts ascending when a
/// non-key target is given without an order; with a limit too, it sorts
/// only the first keys ([`limit_before_sort`]), so the query reads those
/// and [`range_response`] sorts them.
pub fn range_query(r: &RangeRequest, at: Option<i64>) -> RangeQuery {
    let sort = match r.sort_target() {
        _ if limit_before_sort(r) => SortTarget::Key,
        PbSortTarget::Key => SortTarget::Key,
        PbSortTarget::Version => SortTarget::Version,
        PbSortTarget::Create => SortTarget::Create,
        PbSortTarget::Mod => SortTarget::Mod,
        PbSortTarget::Value => SortTarget::Value,
    };
    RangeQuery {
        key: r.key.clone(),
        end: KeyEnd::from_range_end(&r.range_end),
        at,
        fetch_limit: if r.limit > 0 {
            r.limit.saturating_add(1)
        } else {
            0
        },
        sort,
        descending: r.sort_order() == SortOrder::Descend,
        keys_only: r.keys_only,
        count_only: r.count_only,
        count: true,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
        selector: None,
    }
}

/// Cuts the extra row fetched to learn `more`.
pub fn range_response(r: &RangeRequest, rows: RangeRows, revision: i64) -> RangeResponse {
    let mut kvs = rows.kvs;
    if limit_before_sort(r) {
        // Stable, as Go's sort for up to 12 rows; ties stay in key order.
        match r.sort_target() {
            PbSortTarget::Key => {}
            PbSortTarget::Version => kvs.sort_by_key(|kv| kv.version),
            PbSortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
            PbSortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
            PbSortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        }
    }
    let limit = usize::try_from(r.limit).unwrap_or(0);
    let more = limit > 0 && kvs.len() > limit;
    if more {
        kvs.truncate(limit);
    }
    RangeResponse {
        header: header(revision),
        kvs,
        more,
        count: rows.count,
    }
}

/// A single-key range answered from a known version, as SQL would.
pub(crate) fn single_key_rows(kv: Option<KeyValue>, q: &RangeQuery) -> RangeRows {
    let count = i64::from(kv.is_some());
    let keep = |kv: &KeyValue| {
        (q.min_mod_revision == 0 || kv.mod_revision >= q.min_mod_revision)
            && (q.max_mod_revision == 0 || kv.mod_revision <= q.max_mod_revision)
            && (q.min_create_revision == 0 || kv.create_revision >= q.min_create_revision)
            && (q.max_create_revision == 0 || kv.create_revision <= q.max_create_revision)
    };
    let kvs = kv
        .filter(|kv| !q.count_only && keep(kv))
        .map(|mut kv| {
            if q.keys_only {
                kv.value.clear();
            }
            kv
        })
        .into_iter()
        .collect();
    RangeRows {
        meta: None,
        count,
        kvs,
    }
}

/// The revision a response inside a write shows: etcd's store reports the
/// next revision once the request has changed something.
fn current_revision(v: &dyn View) -> i64 {
    v.meta().revision + i64::from(v.changed())
}

pub async fn range(v: &mut dyn View, r: &RangeRequest) -> Result<RangeResponse, Error> {
    let at = (r.revision > 0).then_some(r.revision);
    let q = range_query(r, at);
    let rows = if q.end == KeyEnd::Single && at.is_none() {
        single_key_rows(v.get(&r.key).await?, &q)
    } else {
        v.range(&q).await?
    };
    Ok(range_response(r, rows, current_revision(v)))
}

/// Checks a Put can be applied: ignore_value/ignore_lease need the key, a
/// lease must exist.
pub async fn check_put(v: &mut dyn View, p: &PutRequest) -> Result<(), Error> {
    if (p.ignore_value || p.ignore_lease) && v.get(&p.key).await?.is_none() {
        return Err(Error::KeyNotFound);
    }
    if p.lease != 0 && !v.lease_exists(p.lease).await? {
        return Err(Error::LeaseNotFound);
    }
    Ok(())
}

/// etcd's check of a Range inside a write: the revision must be readable.
fn check_range(meta: Meta, r: &RangeRequest) -> Result<(), Error> {
    if r.revision > meta.revision {
        return Err(Error::FutureRev);
    }
    if r.revision > 0 && r.revision < meta.compact_revision {
        return Err(Error::Compacted);
    }
    Ok(())
}

pub async fn put(v: &mut dyn View, p: &PutRequest) -> Result<PutResponse, Error> {
    let prev = v.get(&p.key).await?;
    let rev = v.meta().revision + 1;
    let (value, lease) = match (&prev, p.ignore_value, p.ignore_lease) {
        (None, true, _) | (None, _, true) => return Err(Error::KeyNotFound),
        (prev, iv, il) => (
            match prev {
                Some(prev) if iv => prev.value.clone(),
                _ => p.value.clone(),
            },
            match prev {
                Some(prev) if il => prev.lease,
                _ => p.lease,
            },
        ),
    };
    let kv = KeyValue {
        key: p.key.clone(),
        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
        mod_revision: rev,
        version: prev.as_ref().map_or(1, |p| p.version + 1),
        value,
        lease,
    };
    v.put(kv, prev.as_ref().map_or(0, |p| p.mod_revision))
        .await?;
    Ok(PutResponse {
        header: header(rev),
        prev_kv: if p.prev_kv { prev } else { None },
    })
}

pub async fn delete_range(
    v: &mut dyn View,
    d: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse, Error> {
    let end = KeyEnd::from_range_end(&d.range_end);
    let victims: Vec<KeyValue> = if end == KeyEnd::Single {
        v.get(&d.key).await?.into_iter().collect()
    } else {
        // Values are only needed to answer prev_kv.
        let mut q = RangeQuery::all(d.key.clone(), end, None);
        q.keys_only = !d.prev_kv;
        v.range(&q).await?.kvs
    };
    for kv in &victims {
        v.delete(kv).await?;
    }
    Ok(DeleteRangeResponse {
        header: header(current_revision(v)),
        deleted: i64::try_from(victims.len()).unwrap_or(i64::MAX),
        prev_kvs: if d.prev_kv { victims } else { Vec::new() },
    })
}

/// Whether the compare expects its key absent: version, create or mod
/// revision equal to 0 (a create's shape).
pub fn expects_absent(c: &Compare) -> bool {
    c.range_end.is_empty()
        && c.result() == CompareResult::Equal
        && matches!(
            c.target(),
            CompareTarget::Version | CompareTarget::Create | CompareTarget::Mod
        )
        && compare_kv(c, &KeyValue::default())
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let int =
        |want: fn(&TargetUnion) -> Option<i64>| c.target_union.as_ref().and_then(want).unwrap_or(0);
    let ord = match c.target() {
        CompareTarget::Value => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        CompareTarget::Version => kv.version.cmp(&int(|t| match t {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Create => kv.create_revision.cmp(&int(|t| match t {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Mod => kv.mod_revision.cmp(&int(|t| match t {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        CompareTarget::Lease => kv.lease.cmp(&int(|t| match t {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
    };
    match c.result() {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::NotEqual => ord.is_ne(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
    }
}

/// One compare over its key or range. A value compare on no key fails; other
/// targets compare against zero values.
async fn compare(v: &mut dyn View, c: &Compare) -> Result<bool, Error> {
    let end = KeyEnd::from_range_end(&c.range_end);
    let kvs: Vec<KeyValue> = if end == KeyEnd::Single {
        v.get(&c.key).await?.into_iter().collect()
    } else {
        v.range(&RangeQuery::all(c.key.clone(), end, None))
            .await?
            .kvs
    };
    if kvs.is_empty() {
        return Ok(c.target() != CompareTarget::Value && compare_kv(c, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
}

fn chosen(t: &TxnRequest, succeeded: bool) -> &[crate::proto::etcdserverpb::RequestOp] {
    if succeeded { &t.success } else { &t.failure }
}

/// Every compare of the Txn and of the nested Txns on the chosen branches,
/// evaluated before anything is applied: this Txn's outcome first, then each
/// nested Txn's path in order.
pub fn compare_path<'a>(
    v: &'a mut dyn View,
    t: &'a TxnRequest,
) -> BoxFuture<'a, Result<Vec<bool>, Error>> {
    Box::pin(async move {
        let mut ok = true;
        for c in &t.compare {
            if !compare(v, c).await? {
                ok = false;
                break;
            }
        }
        let mut path = vec![ok];
        for op in chosen(t, ok) {
            if let Some(Request::RequestTxn(n)) = &op.request {
                path.extend(compare_path(v, n).await?);
            }
        }
        Ok(path)
    })
}

/// Checks the puts (`puts`) or the ranges (`!puts`) a Txn will run; etcd
/// checks all puts first. Returns how many entries of `path` nested Txns used.
pub fn check_txn<'a>(
    v: &'a mut dyn View,
    t: &'a TxnRequest,
    path: &'a [bool],
    puts: bool,
) -> BoxFuture<'a, Result<usize, Error>> {
    Box::pin(async move {
        let (&ok, mut rest) = path
            .split_first()
            .ok_or_else(|| Error::Internal("txn path too short".into()))?;
        let mut used = 0;
        for op in chosen(t, ok) {
            match &op.request {
                Some(Request::RequestTxn(n)) => {
                    let n_used = check_txn(v, n, rest, puts).await?;
                    rest = rest
                        .get(n_used + 1..)
                        .ok_or_else(|| Error::Internal("txn path too short".into()))?;
                    used += n_used + 1;
                }
                Some(Request::RequestPut(p)) if puts => check_put(v, p).await?,
                Some(Request::RequestRange(r)) if !puts => check_range(v.meta(), r)?,
                _ => {}
            }
        }
        Ok(used)
    })
}

/// Applies the chosen branch. Returns the response (its header is set by the
/// caller for the outermost Txn) and how many path entries nested Txns used.
pub fn apply_txn<'a>(
    v: &'a mut dyn View,
    t: &'a TxnRequest,
    path: &'a [bool],
) -> BoxFuture<'a, Result<(TxnResponse, usize), Error>> {
    Box::pin(async move {
        let (&ok, mut rest) = path
            .split_first()
            .ok_or_else(|| Error::Internal("txn path too short".into()))?;
        let ops = chosen(t, ok);
        let mut responses = Vec::with_capacity(ops.len());
        let mut used = 0;
        for op in ops {
            let response = match &op.request {
                Some(Request::RequestRange(r)) => Some(Response::ResponseRange(range(v, r).await?)),
                Some(Request::RequestPut(p)) => Some(Response::ResponsePut(put(v, p).await?)),
                Some(Request::RequestDeleteRange(d)) => {
                    Some(Response::ResponseDeleteRange(delete_range(v, d).await?))
                }
                Some(Request::RequestTxn(n)) => {
                    let (resp, n_used) = apply_txn(v, n, rest).await?;
                    rest = rest
                        .get(n_used + 1..)
                        .ok_or_else(|| Error::Internal("txn path too short".into()))?;
                    used += n_used + 1;
                    Some(Response::ResponseTxn(resp))
                }
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        Ok((
            TxnResponse {
                header: Some(ResponseHeader::default()),
                succeeded: ok,
                responses,
            },
            used,
        ))
    })
}

/// A whole Txn: compares, checks, then the chosen ops.
pub async fn txn(v: &mut dyn View, t: &TxnRequest, writes: bool) -> Result<TxnResponse, Error> {
    let path = compare_path(v, t).await?;
    if writes {
        check_txn(v, t, &path, true).await?;
    }
    check_txn(v, t, &path, false).await?;
    let (mut resp, _) = apply_txn(v, t, &path).await?;
    resp.header = header(current_revision(v));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(target: CompareTarget, result: CompareResult, u: TargetUnion) -> Compare {
        Compare {
            target: target as i32,
            result: result as i32,
            key: b"k".to_vec(),
            range_end: vec![],
            target_union: Some(u),
        }
    }

    #[test]
    fn compare_targets_and_results() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            value: b"m".to_vec(),
            lease: 7,
        };
        use CompareResult::*;
        use CompareTarget::*;
        assert!(compare_kv(
            &cmp(Version, Equal, TargetUnion::Version(3)),
            &kv
        ));
        assert!(compare_kv(
            &cmp(Create, Less, TargetUnion::CreateRevision(3)),
            &kv
        ));
        assert!(compare_kv(
            &cmp(Mod, Greater, TargetUnion::ModRevision(4)),
            &kv
        ));
        assert!(compare_kv(
            &cmp(Lease, NotEqual, TargetUnion::Lease(8)),
            &kv
        ));
        assert!(compare_kv(
            &cmp(Value, Greater, TargetUnion::Value(b"a".to_vec())),
            &kv
        ));
        assert!(!compare_kv(
            &cmp(Value, Less, TargetUnion::Value(b"a".to_vec())),
            &kv
        ));
        // a mismatched union compares against zero, as etcd does
        assert!(compare_kv(
            &cmp(Mod, Greater, TargetUnion::Version(100)),
            &kv
        ));
    }

    #[test]
    fn single_key_rows_apply_filters_like_sql() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            value: b"v".to_vec(),
            lease: 0,
        };
        let mut q = RangeQuery::all(b"k".to_vec(), KeyEnd::Single, None);
        q.min_mod_revision = 6;
        let rows = single_key_rows(Some(kv.clone()), &q);
        assert_eq!(
            (rows.count, rows.kvs.len()),
            (1, 0),
            "count ignores filters"
        );
        q.min_mod_revision = 0;
        q.keys_only = true;
        let rows = single_key_rows(Some(kv), &q);
        assert!(rows.kvs[0].value.is_empty());
        assert_eq!(single_key_rows(None, &q).count, 0);
    }

    #[test]
    fn range_response_cuts_the_extra_row() {
        let r = RangeRequest {
            key: b"a".to_vec(),
            limit: 2,
            ..Default::default()
        };
        let rows = RangeRows {
            meta: None,
            count: 10,
            kvs: vec![KeyValue::default(); 3],
        };
        let resp = range_response(&r, rows, 9);
        assert!(resp.more);
        assert_eq!((resp.kvs.len(), resp.count), (2, 10));
        assert_eq!(range_query(&r, None).fetch_limit, 3);
    }

    #[test]
    fn a_limit_without_an_order_cuts_before_the_sort_as_etcd() {
        let kv = |k: &[u8], m| KeyValue {
            key: k.to_vec(),
            mod_revision: m,
            ..Default::default()
        };
        let mut r = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            limit: 2,
            sort_target: PbSortTarget::Mod as i32,
            ..Default::default()
        };
        // The first three keys in key order, as the query reads them.
        let q = range_query(&r, None);
        assert_eq!((q.sort, q.fetch_limit), (SortTarget::Key, 3));
        let rows = RangeRows {
            meta: None,
            count: 9,
            kvs: vec![kv(b"a", 51), kv(b"b", 43), kv(b"c", 44)],
        };
        let resp = range_response(&r, rows, 60);
        let keys: Vec<&[u8]> = resp.kvs.iter().map(|kv| kv.key.as_slice()).collect();
        assert_eq!(keys, [b"b", b"c"]);
        assert!(resp.more);
        // An explicit order sorts the whole range in SQL.
        r.sort_order = SortOrder::Ascend as i32;
        assert!(!limit_before_sort(&r));
        assert_eq!(range_query(&r, None).sort, SortTarget::Mod);
        r.sort_order = SortOrder::None as i32;
        r.min_mod_revision = 5;
        assert!(!limit_before_sort(&r));
    }
}
