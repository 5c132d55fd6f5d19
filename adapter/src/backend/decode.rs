//! Columns of driver rows, decoded into the model.

use super::{DbError, EventRow, LeaseRow, Meta, RangeQuery, RangeRows};
use crate::proto::mvccpb::KeyValue;

/// Column access the shared row decoders need; each driver implements it
/// for its row type.
pub trait Columns {
    fn int(&self, i: usize) -> Result<i64, DbError>;
    /// A bytes column that may be NULL.
    fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, DbError>;
    /// An integer column that may be NULL.
    fn int_opt(&self, i: usize) -> Result<Option<i64>, DbError>;
}

/// Rows of one statement, whatever the driver.
pub type Rows = Vec<Box<dyn Columns + Send + Sync>>;

/// A driver's rows as [`Rows`].
pub(crate) fn boxed<R: Columns + Send + Sync + 'static>(rows: Vec<R>) -> Rows {
    rows.into_iter()
        .map(|r| Box::new(r) as Box<dyn Columns + Send + Sync>)
        .collect()
}

impl Columns for Box<dyn Columns + Send + Sync> {
    fn int(&self, i: usize) -> Result<i64, DbError> {
        (**self).int(i)
    }

    fn bytes(&self, i: usize) -> Result<Option<Vec<u8>>, DbError> {
        (**self).bytes(i)
    }

    fn int_opt(&self, i: usize) -> Result<Option<i64>, DbError> {
        (**self).int_opt(i)
    }
}

/// Rows of [`sql::history`].
pub(crate) fn decode_events<R: Columns>(rows: &[R]) -> Result<Vec<EventRow>, DbError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let revision = r.int(0)?;
        let deleted = r.int(2)? != 0;
        let key = r.bytes(3)?.unwrap_or_default();
        let prev = match r.int_opt(12)? {
            Some(prev_rev) => Some(KeyValue {
                key: key.clone(),
                value: r.bytes(8)?.unwrap_or_default(),
                create_revision: r.int(9)?,
                mod_revision: prev_rev,
                version: r.int(10)?,
                lease: r.int(11)?,
            }),
            None => None,
        };
        let kv = if deleted {
            KeyValue {
                key,
                mod_revision: revision,
                ..Default::default()
            }
        } else {
            KeyValue {
                key,
                value: r.bytes(4)?.unwrap_or_default(),
                create_revision: r.int(5)?,
                mod_revision: revision,
                version: r.int(6)?,
                lease: r.int(7)?,
            }
        };
        out.push(EventRow {
            revision,
            deleted,
            kv,
            prev,
        });
    }
    Ok(out)
}

/// A key's version from columns `at..at + 6` (name, value, create_revision,
/// mod_revision, version, lease); `None` when the name is NULL.
pub(crate) fn decode_kv(r: &impl Columns, at: usize) -> Result<Option<KeyValue>, DbError> {
    let Some(key) = r.bytes(at)? else {
        return Ok(None);
    };
    Ok(Some(KeyValue {
        key,
        value: r.bytes(at + 1)?.unwrap_or_default(),
        create_revision: r.int(at + 2)?,
        mod_revision: r.int(at + 3)?,
        version: r.int(at + 4)?,
        lease: r.int(at + 5)?,
    }))
}

/// Folds the rows of `q`'s range statement (see [`sql::range`]) into one
/// answer, in `q`'s order and cut at its limit (a statement may leave both
/// to this, see [`sql::Dialect::meta_apart`]).
pub(crate) fn decode_range<R: Columns>(q: &RangeQuery, rows: &[R]) -> Result<RangeRows, DbError> {
    Ok(RangeFold::of(rows)?.finish(q))
}

/// [`decode_range`] one row at a time, for a driver that reads rows in
/// place rather than as a list.
#[derive(Default)]
pub struct RangeFold {
    out: RangeRows,
    /// The first row's partitions_version (see [`sql::range`]).
    pub parts_version: Option<i64>,
}

impl RangeFold {
    /// A list of rows, folded.
    pub fn of<R: Columns>(rows: &[R]) -> Result<Self, DbError> {
        let mut fold = RangeFold::default();
        for r in rows {
            fold.add(r)?;
        }
        Ok(fold)
    }

    pub fn add(&mut self, r: &impl Columns) -> Result<(), DbError> {
        if self.parts_version.is_none() {
            self.parts_version = Some(r.int(9)?);
        }
        let out = &mut self.out;
        out.meta = Some(Meta {
            revision: r.int(0)?,
            compact_revision: r.int(1)?,
        });
        // A statement may return the count on one row and -1 on the others.
        out.count = out.count.max(r.int(2)?);
        out.kvs.extend(decode_kv(r, 3)?);
        Ok(())
    }

    /// The rows as read, neither ordered nor cut.
    pub fn into_rows(self) -> RangeRows {
        self.out
    }

    pub fn finish(self, q: &RangeQuery) -> RangeRows {
        let mut out = self.out;
        let order = |a: &KeyValue, b: &KeyValue| super::sql::range_order(q, a, b);
        if super::sql::orderable(q) && !out.kvs.is_sorted_by(|a, b| order(a, b).is_le()) {
            out.kvs.sort_by(order);
        }
        if super::sql::counted_by_rows(q) {
            // One key: at most one row, and the fetch limit (0, or the
            // client's limit + 1) keeps it.
            out.count = i64::try_from(out.kvs.len()).unwrap_or(i64::MAX);
        }
        // Live and history parts are each cut at the limit.
        if q.count_only {
            out.kvs.clear();
        } else if q.fetch_limit > 0 {
            out.kvs
                .truncate(usize::try_from(q.fetch_limit).unwrap_or(usize::MAX));
        }
        out
    }
}

/// Columns id, ttl, expires_at_ms.
pub(crate) fn decode_lease(r: &impl Columns) -> Result<LeaseRow, DbError> {
    Ok(LeaseRow {
        id: r.int(0)?,
        ttl: r.int(1)?,
        expires_at_ms: r.int(2)?,
    })
}

/// Columns revision, compact_revision.
pub(crate) fn decode_meta(rows: &[impl Columns]) -> Result<Meta, DbError> {
    let r = rows
        .first()
        .ok_or_else(|| DbError::Other("etcdsql_meta has no row".into()))?;
    Ok(Meta {
        revision: r.int(0)?,
        compact_revision: r.int(1)?,
    })
}

/// The first column of every row.
pub fn first_ints(rows: &[impl Columns]) -> Result<Vec<i64>, DbError> {
    rows.iter().map(|r| r.int(0)).collect()
}

/// The first column of every row, as bytes (NULLs skipped).
pub(crate) fn first_bytes(rows: &[impl Columns]) -> Result<Vec<Vec<u8>>, DbError> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.extend(r.bytes(0)?);
    }
    Ok(out)
}
