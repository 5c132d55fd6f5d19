//! Maintenance.Snapshot: the store as an etcd backend file (bbolt), which
//! `etcdctl snapshot restore` turns into an etcd data directory.
//!
//! Buckets as etcd's mvcc and lessor keep them:
//! - `key`: each version etcd would still hold after the same history and
//!   compactions (every version after the compaction, the latest one of
//!   each key at or below it), keyed by revision (`main` and `sub`
//!   big-endian around `_`, `t` after a deletion), the value a marshalled
//!   mvccpb.KeyValue;
//! - `meta`: `consistent_index` (the revision), and after a compaction
//!   `finishedCompactRev` and `scheduledCompactRev`;
//! - `lease`: each lease by id (big-endian), a marshalled leasepb.Lease;
//! - `auth` (`authEnabled`, `authRevision`), `authUsers`, `authRoles`
//!   (authpb records by name) and `alarm` (marshalled AlarmMembers).

use std::io::{Read, Seek, SeekFrom, Write};

use prost::Message;

use super::{Error, Store, hash_entry};
use crate::bbolt::Bolt;

/// etcd's leasepb.Lease (the lease bucket's values).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Lease {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// A revision as etcd's key bucket and meta bucket write it.
fn revision_key(main: i64) -> Vec<u8> {
    let mut k = main.to_be_bytes().to_vec();
    k.push(b'_');
    k.extend_from_slice(&0i64.to_be_bytes());
    k
}

/// A revision key of etcd's key bucket: (main, sub, deletion).
pub fn revision_of(k: &[u8]) -> Option<(i64, i32, bool)> {
    if k.len() < 17 || k[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(k[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((
        main,
        i32::try_from(sub).ok()?,
        k.len() == 18 && k[17] == b't',
    ))
}

/// SHA-256 of the first `len` bytes of `f` (etcd's snapshot trailer),
/// read from its start.
pub fn sha256_prefix(f: &mut (impl Read + Seek), len: u64) -> std::io::Result<[u8; 32]> {
    use sha2::Digest;
    f.seek(SeekFrom::Start(0))?;
    let mut sha = sha2::Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = usize::try_from(left.min(1 << 20)).unwrap_or(1 << 20);
        f.read_exact(&mut buf[..n])?;
        sha.update(&buf[..n]);
        left -= u64::try_from(n).unwrap_or(0);
    }
    Ok(sha.finalize().into())
}

fn io(e: std::io::Error) -> Error {
    Error::Internal(format!("writing the snapshot: {e}"))
}

impl Store {
    /// [`Store::snapshot`] into `file` from a blocking thread (`handle`:
    /// the runtime it reads the database on); answers the file, the
    /// revision, the keys written and the file's length.
    pub fn snapshot_file(
        &self,
        handle: &tokio::runtime::Handle,
        file: std::fs::File,
    ) -> Result<(std::fs::File, i64, u64, u64), Error> {
        let (out, revision, keys) =
            handle.block_on(self.snapshot(std::io::BufWriter::new(file)))?;
        let mut file = out.into_inner().map_err(|e| io(e.into_error()))?;
        let len = file.seek(SeekFrom::End(0)).map_err(io)?;
        Ok((file, revision, keys, len))
    }

    /// Writes the snapshot to `out` (blocking writes: call it where
    /// blocking is allowed); answers (the revision it is at, keys written).
    pub async fn snapshot<W: Write + Seek>(&self, out: W) -> Result<(W, i64, u64), Error> {
        let _purge = self.purge.lock().await;
        let meta = self.backend.meta().await?;
        let (rev, compact) = (meta.revision, meta.compact_revision.max(0));
        let mut bolt = Bolt::new(out).map_err(io)?;
        let mut keys = bolt.bucket();
        let mut failed = None;
        let mut written = 0u64;
        // At or below the compaction: what compacting kept, the latest
        // version of each key (no deletions, as etcd's compaction drops
        // them); above it, every change.
        for (from, to, keep_deletions) in [(0, compact, false), (compact, rev, true)] {
            self.history_rows(from, to, true, |r| {
                if failed.is_some() || (r.deleted && !keep_deletions) {
                    return;
                }
                let (k, v) = hash_entry(r);
                written += 1;
                if let Err(e) = bolt.push(&mut keys, k, v) {
                    failed = Some(e);
                }
            })
            .await?;
        }
        if let Some(e) = failed {
            return Err(io(e));
        }
        let key_root = bolt.close(keys).map_err(io)?;

        let mut m = bolt.bucket();
        let rev_u64 = u64::try_from(rev).unwrap_or_default();
        bolt.push(
            &mut m,
            b"consistent_index".to_vec(),
            rev_u64.to_be_bytes().to_vec(),
        )
        .map_err(io)?;
        if meta.compact_revision > 0 {
            for name in ["finishedCompactRev", "scheduledCompactRev"] {
                bolt.push(
                    &mut m,
                    name.as_bytes().to_vec(),
                    revision_key(meta.compact_revision),
                )
                .map_err(io)?;
            }
        }
        let meta_root = bolt.close(m).map_err(io)?;

        let mut leases = self.backend.leases().await?;
        leases.sort_by_key(|l| l.id.cast_unsigned());
        let now = crate::store::now_ms();
        let mut l = bolt.bucket();
        for lease in leases {
            let remaining = (lease.expires_at_ms - now).max(0) / 1000;
            let v = Lease {
                id: lease.id,
                ttl: lease.ttl,
                remaining_ttl: remaining,
            }
            .encode_to_vec();
            bolt.push(&mut l, lease.id.to_be_bytes().to_vec(), v)
                .map_err(io)?;
        }
        let lease_root = bolt.close(l).map_err(io)?;

        // Auth and alarms, as etcd's auth store and alarm store keep them.
        let (enabled, auth_revision, users, roles) = self.auth.export();
        let mut a = bolt.bucket();
        bolt.push(&mut a, b"authEnabled".to_vec(), vec![u8::from(enabled)])
            .map_err(io)?;
        bolt.push(
            &mut a,
            b"authRevision".to_vec(),
            auth_revision.to_be_bytes().to_vec(),
        )
        .map_err(io)?;
        let auth_root = bolt.close(a).map_err(io)?;
        let mut u = bolt.bucket();
        for user in users {
            bolt.push(&mut u, user.name.clone(), user.encode_to_vec())
                .map_err(io)?;
        }
        let users_root = bolt.close(u).map_err(io)?;
        let mut r = bolt.bucket();
        for role in roles {
            bolt.push(&mut r, role.name.clone(), role.encode_to_vec())
                .map_err(io)?;
        }
        let roles_root = bolt.close(r).map_err(io)?;
        let mut alarms: Vec<Vec<u8>> = self
            .alarms
            .get(0)
            .await?
            .iter()
            .map(Message::encode_to_vec)
            .collect();
        alarms.sort();
        let mut al = bolt.bucket();
        for a in alarms {
            bolt.push(&mut al, a, Vec::new()).map_err(io)?;
        }
        let alarm_root = bolt.close(al).map_err(io)?;

        let out = bolt
            .finish(vec![
                (b"key".to_vec(), key_root),
                (b"meta".to_vec(), meta_root),
                (b"lease".to_vec(), lease_root),
                (b"auth".to_vec(), auth_root),
                (b"authUsers".to_vec(), users_root),
                (b"authRoles".to_vec(), roles_root),
                (b"alarm".to_vec(), alarm_root),
            ])
            .map_err(io)?;
        Ok((out, rev, written))
    }
}
