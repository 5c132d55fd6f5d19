//! The rows the store and the databases exchange: queries, range
//! answers, events, the changes a write batch flushes.

use std::sync::Arc;

use crate::proto::mvccpb::KeyValue;

/// One native partition, as `etcdsql partitions list` shows it.
#[derive(Clone, Debug)]
pub struct PartitionInfo {
    pub table: String,
    pub name: String,
    pub holds: Holds,
    pub rows: i64,
    pub bytes: i64,
}

/// What a partition holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holds {
    /// A resource's rows (its `part`; empty: the default partition).
    Part(String),
    /// History rows of an epoch.
    Epoch(i64),
}

/// The revision counter row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub revision: i64,
    /// Reads below this revision fail with "compacted"; -1 until the first
    /// compaction (as etcd), so that Compact(0) is accepted once.
    pub compact_revision: i64,
}

/// Which keys a range covers; `end` follows etcd's range_end conventions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyEnd {
    /// Exactly `key`.
    Single,
    /// `[key, end)`.
    Before(Vec<u8>),
    /// Every key `>= key` (range_end "\0").
    Unbounded,
}

impl KeyEnd {
    /// etcd's interpretation of a request's `range_end`.
    pub fn from_range_end(range_end: &[u8]) -> Self {
        match range_end {
            [] => KeyEnd::Single,
            [0] => KeyEnd::Unbounded,
            end => KeyEnd::Before(end.to_vec()),
        }
    }

    pub fn contains(&self, start: &[u8], key: &[u8]) -> bool {
        match self {
            KeyEnd::Single => key == start,
            KeyEnd::Before(end) => key >= start && key < end.as_slice(),
            KeyEnd::Unbounded => key >= start,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortTarget {
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// One Range, already validated, in the terms SQL needs.
#[derive(Clone, Debug)]
pub struct RangeQuery {
    pub key: Vec<u8>,
    pub end: KeyEnd,
    /// `None` reads the latest state; `Some(r)` the state as of revision r.
    pub at: Option<i64>,
    /// Rows to fetch (0 = all). The caller asks for one more than the
    /// client's limit to learn `more`.
    pub fetch_limit: i64,
    pub sort: SortTarget,
    pub descending: bool,
    pub keys_only: bool,
    pub count_only: bool,
    /// Whether to count the range (`count` is 0 otherwise).
    pub count: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
    /// Only objects matching this (see [`crate::selector`]).
    pub selector: Option<Arc<crate::selector::Selector>>,
}

impl RangeQuery {
    /// The latest version of every key in `[key, end)`, in key order.
    pub fn all(key: Vec<u8>, end: KeyEnd, at: Option<i64>) -> Self {
        RangeQuery {
            key,
            end,
            at,
            fetch_limit: 0,
            sort: SortTarget::Key,
            descending: false,
            keys_only: false,
            count_only: false,
            count: true,
            min_mod_revision: 0,
            max_mod_revision: 0,
            min_create_revision: 0,
            max_create_revision: 0,
            selector: None,
        }
    }
}

/// A range's answer, read in one snapshot.
#[derive(Clone, Debug, Default)]
pub struct RangeRows {
    pub meta: Option<Meta>,
    /// Keys in the range at the read revision, before min/max filters.
    pub count: i64,
    pub kvs: Vec<KeyValue>,
}

/// One change, as a watcher sees it.
#[derive(Clone, Debug)]
pub struct EventRow {
    pub revision: i64,
    pub deleted: bool,
    /// For a delete: only the key and the deletion's revision, as etcd sends.
    pub kv: KeyValue,
    /// The version this change replaced; `None` for a create.
    pub prev: Option<KeyValue>,
}

impl EventRow {
    /// Approximate memory held, for the watch buffer's bound.
    pub fn size(&self) -> usize {
        64 + self.kv.key.len()
            + self.kv.value.len()
            + self
                .prev
                .as_ref()
                .map_or(0, |p| p.key.len() + p.value.len() + 48)
    }
}

/// One row of `etcdsql_history`.
#[derive(Clone, Debug)]
pub struct HistoryRow {
    pub revision: i64,
    /// Position of the change within its revision (a Txn changes several keys).
    pub sub: i32,
    pub key: Vec<u8>,
    /// Empty for deletes.
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub deleted: bool,
    /// Revision of the version this change replaced; 0 for a create.
    pub prev_revision: i64,
    /// A put's selector columns; `None` for deletes and values that are
    /// not readable Kubernetes objects (stored as NULL).
    pub index: Option<Arc<Indexed>>,
}

impl HistoryRow {
    /// The row of a put: `kv` as written at `revision`/`sub`.
    pub fn put(kv: &KeyValue, revision: i64, sub: i32, prev_revision: i64) -> Self {
        HistoryRow {
            revision,
            sub,
            key: kv.key.clone(),
            value: kv.value.clone(),
            create_revision: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
            deleted: false,
            prev_revision,
            index: None,
        }
    }

    /// The row of a delete at `revision`/`sub` of `prev`, the version it
    /// removes; it keeps `prev`'s create revision, version and lease.
    pub fn delete(prev: &KeyValue, revision: i64, sub: i32) -> Self {
        HistoryRow {
            revision,
            sub,
            key: prev.key.clone(),
            value: Vec::new(),
            create_revision: prev.create_revision,
            version: prev.version,
            lease: prev.lease,
            deleted: true,
            prev_revision: prev.mod_revision,
            index: None,
        }
    }
}

/// The `labels` and `fields` columns of a stored version: JSON objects of
/// strings (see [`crate::selector`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indexed {
    pub labels: String,
    pub fields: String,
    /// Rows of `etcdsql_label` (see [`crate::selector::hash`]).
    pub hashes: Vec<i64>,
}

impl Indexed {
    /// The columns of a value as `catalog` reads it; `None` when it is not
    /// a readable Kubernetes object.
    pub fn of(
        catalog: &crate::selector::Catalog,
        key: &[u8],
        value: &[u8],
    ) -> Option<Arc<Indexed>> {
        catalog.extract(key, value).map(|o| {
            let (labels, fields) = o.to_columns();
            Arc::new(Indexed {
                labels,
                fields,
                hashes: crate::selector::hash::of(Some(&o)),
            })
        })
    }
}

/// A live row to write, with its selector columns.
#[derive(Debug)]
pub struct Upsert {
    pub kv: KeyValue,
    pub index: Option<Arc<Indexed>>,
    /// The `etcdsql_label` hashes the table already holds for the key
    /// (none when it holds no row), where known: rows equal to the
    /// upsert's are neither deleted nor written again.
    pub rows_held: Option<Vec<i64>>,
    /// The key has no live row (as its batch began, or after the batch's
    /// last flush), known for certain: a plain INSERT may write it.
    pub absent: bool,
}

impl std::ops::Deref for Upsert {
    type Target = KeyValue;

    fn deref(&self) -> &KeyValue {
        &self.kv
    }
}

/// A row to write with selector columns (live or history): what the
/// dialects bind for them.
pub trait Selectable {
    fn index(&self) -> Option<&Indexed>;

    /// The `labels` column (NULL when `None`).
    fn labels(&self) -> Option<&str> {
        self.index().map(|i| i.labels.as_str())
    }

    /// The `fields` column (NULL when `None`).
    fn fields(&self) -> Option<&str> {
        self.index().map(|i| i.fields.as_str())
    }
}

impl Upsert {
    /// Its rows of `etcdsql_label`.
    pub fn hashes(&self) -> &[i64] {
        crate::selector::hash::rows(&self.key, self.index().map(|i| i.hashes.as_slice()))
    }
}

impl Selectable for Upsert {
    fn index(&self) -> Option<&Indexed> {
        self.index.as_deref()
    }
}

impl Selectable for HistoryRow {
    fn index(&self) -> Option<&Indexed> {
        self.index.as_deref()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub id: i64,
    pub ttl: i64,
    /// Unix milliseconds at which the lease expires.
    pub expires_at_ms: i64,
}

/// Writes buffered by a batch, applied to the database in bulk.
#[derive(Debug, Default)]
pub struct Flush {
    pub upserts: Vec<Upsert>,
    pub deletes: Vec<Vec<u8>>,
    pub history: Vec<HistoryRow>,
    pub lease_upserts: Vec<LeaseRow>,
    pub lease_deletes: Vec<i64>,
    /// The batch's nonce, stored in `etcdsql_history.batch`.
    pub batch: i64,
}

impl Flush {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty()
            && self.deletes.is_empty()
            && self.history.is_empty()
            && self.lease_upserts.is_empty()
            && self.lease_deletes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_end_contains() {
        assert!(KeyEnd::Single.contains(b"a", b"a"));
        assert!(!KeyEnd::Single.contains(b"a", b"ab"));
        assert!(KeyEnd::Before(b"b".to_vec()).contains(b"a", b"az"));
        assert!(!KeyEnd::Before(b"b".to_vec()).contains(b"a", b"b"));
        assert!(KeyEnd::Unbounded.contains(b"a", b"zzz"));
        assert_eq!(KeyEnd::from_range_end(&[0]), KeyEnd::Unbounded);
    }
}

/// Leases a batch took for granted (see `Writer::check_assumed`): each of
/// `ttls` exists with that TTL, and none of `unexpired` had expired at
/// `now_ms`.
#[derive(Debug, Default)]
pub struct AssumedLeases {
    pub ttls: Vec<(i64, i64)>,
    pub unexpired: Vec<i64>,
    pub now_ms: i64,
}
