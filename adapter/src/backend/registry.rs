//! The partition registry and the revision-row lock that guards it.

use std::sync::{Arc, RwLock};

use etcdsql_partitions::{Registry, State};

use super::{Columns, DbError, KeyEnd, Meta, decode_meta};

/// The partition registry as this process last read it, shared by the
/// read pool and the committer. Every statement that limits itself to some
/// partitions checks the `partitions_version` its snapshot saw against the
/// one the registry was read at, and reads again after a reload if they
/// differ; the committer reloads under the revision-row lock.
#[derive(Default)]
pub struct Partitions(RwLock<Arc<Registry>>);

impl Partitions {
    pub fn get(&self) -> Arc<Registry> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set(&self, r: Registry) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(r);
    }
}

/// Reads `etcdsql_partition` with the version, in one snapshot.
pub const REGISTRY_SQL: &str = "SELECT m.partitions_version, p.resource, p.part, p.state \
    FROM etcdsql_meta m LEFT JOIN etcdsql_partition p ON 1 = 1 WHERE m.id = 1";

/// The write transaction's first statement (PostgreSQL, MySQL): locks the
/// revision row and reads what the transaction's writes depend on.
pub(crate) const LOCK_META: &str = "SELECT revision, compact_revision, partitions_version, epoch \
    FROM etcdsql_meta WHERE id = 1 FOR UPDATE";

/// Rows of [`LOCK_META`].
pub(crate) struct Locked {
    pub meta: Meta,
    /// History rows of the transaction belong to this epoch.
    pub epoch: i64,
    /// The registry is older than the locked row says: reload it inside
    /// the transaction, before writing.
    pub stale: bool,
}

pub(crate) fn decode_locked(rows: &[impl Columns], p: &Partitions) -> Result<Locked, DbError> {
    let meta = decode_meta(rows)?;
    let r = &rows[0];
    Ok(Locked {
        meta,
        epoch: r.int(3)?,
        stale: r.int(2)? != p.get().version,
    })
}

/// Rows of [`REGISTRY_SQL`].
pub(crate) fn decode_registry(rows: &[impl Columns]) -> Result<Registry, DbError> {
    let mut reg = Registry::default();
    for r in rows {
        reg.version = r.int(0)?;
        if let (Some(resource), Some(part)) = (r.bytes(1)?, r.bytes(2)?) {
            let text = |b: Vec<u8>| {
                String::from_utf8(b).map_err(|e| DbError::Other(format!("etcdsql_partition: {e}")))
            };
            reg.resources
                .insert(text(resource)?, (text(part)?, State::from_code(r.int(3)?)));
        }
    }
    Ok(reg)
}

/// etcd's range end as `parts_for` takes it.
fn end_bytes(end: &KeyEnd) -> Option<&[u8]> {
    match end {
        KeyEnd::Single => None,
        KeyEnd::Before(e) => Some(e),
        KeyEnd::Unbounded => Some(&[]),
    }
}

/// The parts a range may read, by `reg`.
pub fn parts_of(reg: &Registry, q_key: &[u8], end: &KeyEnd) -> Option<Vec<String>> {
    reg.parts_for(q_key, end_bytes(end))
}
