//! Validation etcd does before a request reaches its store: empty keys,
//! conflicting options, the op limit, and overlapping writes in one Txn.

use std::collections::HashSet;

use crate::backend::KeyEnd;
use crate::error::Error;
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

pub fn range(r: &RangeRequest) -> Result<(), Error> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

pub fn put(r: &PutRequest) -> Result<(), Error> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

pub fn delete(r: &DeleteRangeRequest) -> Result<(), Error> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// The op limit, empty keys, and no key written twice (etcd's order of checks).
pub fn txn(r: &TxnRequest, max_ops: usize) -> Result<(), Error> {
    txn_ops(r, max_ops)?;
    intervals(&r.success)?;
    intervals(&r.failure)?;
    Ok(())
}

fn txn_ops(r: &TxnRequest, max_ops: usize) -> Result<(), Error> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_ops {
        return Err(Error::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        request_op(op, max_ops - opc)?;
    }
    Ok(())
}

fn request_op(op: &RequestOp, max_ops: usize) -> Result<(), Error> {
    match &op.request {
        Some(Request::RequestRange(r))
            if !r.label_selector.is_empty() || !r.field_selector.is_empty() =>
        {
            Err(Error::Unimplemented(
                "a label or field selector in a Txn range",
            ))
        }
        Some(Request::RequestRange(r)) => range(r),
        Some(Request::RequestPut(r)) => put(r),
        Some(Request::RequestDeleteRange(r)) => delete(r),
        Some(Request::RequestTxn(r)) => txn_ops(r, max_ops),
        // etcd answers an empty op this way
        None => Err(Error::KeyNotFound),
    }
}

/// A deleted interval; `KeyEnd::Single` is a point.
type Deletes = Vec<(Vec<u8>, KeyEnd)>;

fn deletes_contain(dels: &Deletes, key: &[u8]) -> bool {
    dels.iter().any(|(start, end)| end.contains(start, key))
}

/// etcd's `checkIntervals`: a key may not be put twice, nor put and deleted,
/// in one Txn, counting nested Txns; puts in the two branches of one nested
/// Txn may overlap since only one branch runs. Unlike etcd, a delete with
/// range_end "\0" covers every key from its start.
fn intervals(reqs: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Deletes), Error> {
    let mut dels: Deletes = reqs
        .iter()
        .filter_map(|r| match &r.request {
            Some(Request::RequestDeleteRange(d)) => {
                Some((d.key.clone(), KeyEnd::from_range_end(&d.range_end)))
            }
            _ => None,
        })
        .collect();

    let mut puts = HashSet::new();
    for r in reqs {
        let Some(Request::RequestTxn(t)) = &r.request else {
            continue;
        };
        let (puts_then, dels_then) = intervals(&t.success)?;
        let (puts_else, dels_else) = intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deletes_contain(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in puts_else {
            if (puts.contains(&k) && !puts_then.contains(&k)) || deletes_contain(&dels, &k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }

    for r in reqs {
        let Some(Request::RequestPut(p)) = &r.request else {
            continue;
        };
        if puts.contains(&p.key) || deletes_contain(&dels, &p.key) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// No Put or DeleteRange anywhere in the Txn, nested Txns included.
pub fn txn_is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(Request::RequestPut(_) | Request::RequestDeleteRange(_)) => false,
            Some(Request::RequestTxn(n)) => txn_is_read_only(n),
            Some(Request::RequestRange(_)) | None => true,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    fn check(success: Vec<RequestOp>) -> Result<(), Error> {
        txn(
            &TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            },
            MAX_TXN_OPS,
        )
    }

    #[test]
    fn duplicate_keys() {
        assert!(check(vec![put_op("a"), put_op("b")]).is_ok());
        assert!(matches!(
            check(vec![put_op("a"), put_op("a")]),
            Err(Error::DuplicateKey)
        ));
        assert!(matches!(
            check(vec![put_op("b"), del_op("a", "c")]),
            Err(Error::DuplicateKey)
        ));
        assert!(check(vec![put_op("c"), del_op("a", "c")]).is_ok());
        assert!(matches!(
            check(vec![put_op("zz"), del_op("a", "\0")]),
            Err(Error::DuplicateKey)
        ));
        // overlapping deletes are fine
        assert!(check(vec![del_op("a", "c"), del_op("b", "d")]).is_ok());
        // the two branches of a nested txn may put the same key
        assert!(check(vec![txn_op(vec![put_op("a")], vec![put_op("a")])]).is_ok());
        assert!(matches!(
            check(vec![put_op("a"), txn_op(vec![put_op("a")], vec![])]),
            Err(Error::DuplicateKey)
        ));
        assert!(matches!(
            check(vec![del_op("a", ""), txn_op(vec![], vec![put_op("a")])]),
            Err(Error::DuplicateKey)
        ));
    }

    #[test]
    fn op_limits_and_empty_ops() {
        let many: Vec<_> = (0..129).map(|i| put_op(&format!("k{i}"))).collect();
        assert!(matches!(check(many), Err(Error::TooManyOps)));
        let ok: Vec<_> = (0..128).map(|i| put_op(&format!("k{i}"))).collect();
        assert!(check(ok).is_ok());
        assert!(matches!(
            check(vec![RequestOp { request: None }]),
            Err(Error::KeyNotFound)
        ));
        assert!(matches!(check(vec![put_op("")]), Err(Error::EmptyKey)));
    }

    #[test]
    fn read_only_detection() {
        let ro = TxnRequest {
            compare: vec![],
            success: vec![txn_op(vec![], vec![])],
            failure: vec![],
        };
        assert!(txn_is_read_only(&ro));
        let rw = TxnRequest {
            compare: vec![],
            success: vec![],
            failure: vec![txn_op(vec![], vec![put_op("x")])],
        };
        assert!(!txn_is_read_only(&rw));
    }
}
