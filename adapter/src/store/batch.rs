//! One group commit: many write requests in one database transaction.
//!
//! The transaction locks the revision row, prefetches every single key and
//! lease the requests name, then evaluates the requests in arrival order
//! against an in-memory overlay of what earlier requests in the batch
//! changed. Each request that changes something gets the next revision.
//! Changes are written in bulk at the end (or before a range read, which
//! the database must answer with the batch's changes in place), then the
//! revision row is stored and the transaction commits.
//!
//! Where the database can check it with the writes (PostgreSQL, MySQL), a
//! batch may instead start from what the committer's last commit left, and
//! what it read ahead while that commit ran ([`Known`]), and read nothing
//! first ([`Batch::begin_assuming`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use foldhash::{HashMap, HashMapExt, HashSet};
use prost::Message;

use super::ops::{self, View};
use crate::backend::{
    AssumedLeases, DbError, EventRow, Flush, HistoryRow, Indexed, LeaseRow, Meta, RangeQuery,
    RangeRows, Upsert, Writer,
};
use crate::error::Error;
use crate::proto::etcdserverpb::request_op::Request;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RequestOp, TxnRequest,
    TxnResponse,
};
use crate::proto::mvccpb::KeyValue;
use crate::selector::{Catalog, hash};

/// A put's selector columns, extracted on the request's task so that the
/// committer's serial loop need not: they stand for `value` at `key` while
/// the catalog's generation is still `generation`.
pub struct Extracted {
    key: Vec<u8>,
    value: Vec<u8>,
    generation: u64,
    index: Option<Arc<Indexed>>,
}

impl Extracted {
    /// The columns of `p`'s value, unless it keeps the stored one.
    pub fn of_put(catalog: &Catalog, p: &PutRequest, out: &mut Vec<Arc<Extracted>>) {
        if p.ignore_value {
            return;
        }
        let generation = catalog.generation();
        out.push(Arc::new(Extracted {
            index: Indexed::of(catalog, &p.key, &p.value),
            key: p.key.clone(),
            value: p.value.clone(),
            generation,
        }));
    }
}

/// The selector columns of `value` written at `key`: as offered, if they
/// were extracted from that value under the current catalog.
fn index_of(
    offered: &HashMap<Vec<u8>, Arc<Extracted>>,
    catalog: &Catalog,
    key: &[u8],
    value: &[u8],
) -> Option<Arc<Indexed>> {
    match offered.get(key) {
        Some(e) if e.value == value && e.generation == catalog.generation() => e.index.clone(),
        _ => Indexed::of(catalog, key, value),
    }
}

/// A request that goes through the committer, with the answer it gets.
#[async_trait]
pub trait Write: Send + Sync + 'static {
    type Out: Send + 'static;
    /// Rough size, to bound a batch's memory.
    fn size(&self) -> usize {
        16
    }
    /// The keys and leases it will certainly read (prefetched per batch).
    fn names(&self, _keys: &mut HashSet<Vec<u8>>, _leases: &mut HashSet<i64>) {}
    /// It reads or changes lease rows, not only whether its leases exist:
    /// its batch reads first.
    fn lease_rows(&self) -> bool {
        false
    }
    /// Keys it expects to be absent (see [`Batch::begin_assuming`]).
    fn expects_absent(&self, _keys: &mut HashSet<Vec<u8>>) {}
    /// Keys a batch may take as absent where it does not know them, the
    /// database telling it when one exists ([`Known::guessing`]).
    fn guessable(&self, _keys: &mut HashSet<Vec<u8>>) {}
    /// Evaluates it in `b`. A returned error is either the request's own
    /// (nothing of it was applied) or a database error that aborts the batch.
    async fn apply(&self, b: &mut Batch<'_>) -> Result<Self::Out, Error>;
    /// The store's revision after it, where its answer says (its header);
    /// its events are at or below it.
    fn revision(_out: &Self::Out) -> Option<i64> {
        None
    }
    /// What it did must outlive the machine once answered: its batch's
    /// commit is durable ([`Writer::durable`](crate::backend::Writer::durable)).
    fn lasting(&self) -> bool {
        true
    }
}

#[async_trait]
impl Write for PutRequest {
    type Out = PutResponse;
    fn revision(out: &PutResponse) -> Option<i64> {
        out.header.as_ref().map(|h| h.revision)
    }
    fn size(&self) -> usize {
        self.encoded_len()
    }
    fn names(&self, keys: &mut HashSet<Vec<u8>>, leases: &mut HashSet<i64>) {
        put_names(self, keys, leases);
    }
    /// A plain put's key is more often new than not; one that keeps the
    /// stored value or lease needs it to exist.
    fn guessable(&self, keys: &mut HashSet<Vec<u8>>) {
        if !self.ignore_value && !self.ignore_lease {
            keys.insert(self.key.clone());
        }
    }
    async fn apply(&self, b: &mut Batch<'_>) -> Result<PutResponse, Error> {
        ops::check_put(b, self).await?;
        ops::put(b, self).await
    }
}

#[async_trait]
impl Write for DeleteRangeRequest {
    type Out = DeleteRangeResponse;
    fn revision(out: &DeleteRangeResponse) -> Option<i64> {
        out.header.as_ref().map(|h| h.revision)
    }
    fn size(&self) -> usize {
        self.encoded_len()
    }
    fn names(&self, keys: &mut HashSet<Vec<u8>>, _: &mut HashSet<i64>) {
        if self.range_end.is_empty() {
            keys.insert(self.key.clone());
        }
    }
    async fn apply(&self, b: &mut Batch<'_>) -> Result<DeleteRangeResponse, Error> {
        ops::delete_range(b, self).await
    }
}

#[async_trait]
impl Write for TxnRequest {
    type Out = TxnResponse;
    fn revision(out: &TxnResponse) -> Option<i64> {
        out.header.as_ref().map(|h| h.revision)
    }
    fn size(&self) -> usize {
        self.encoded_len()
    }
    fn names(&self, keys: &mut HashSet<Vec<u8>>, leases: &mut HashSet<i64>) {
        txn_names(self, keys, leases);
    }
    fn expects_absent(&self, keys: &mut HashSet<Vec<u8>>) {
        for c in self.compare.iter().filter(|c| ops::expects_absent(c)) {
            keys.insert(c.key.clone());
        }
    }
    /// Without compares, the success branch's plain puts are as plain puts.
    fn guessable(&self, keys: &mut HashSet<Vec<u8>>) {
        if self.compare.is_empty() {
            for r in &self.success {
                if let Some(Request::RequestPut(p)) = &r.request {
                    p.guessable(keys);
                }
            }
        }
    }
    async fn apply(&self, b: &mut Batch<'_>) -> Result<TxnResponse, Error> {
        ops::txn(b, self, true).await
    }
}

/// Records a compaction at this revision.
pub struct Compact(pub i64);

/// A recorded compaction; history below `revision` may be purged.
#[derive(Debug, Clone, Copy)]
pub struct Compacted {
    pub previous: i64,
    pub revision: i64,
    /// The store's revision.
    pub current: i64,
}

#[async_trait]
impl Write for Compact {
    type Out = Compacted;
    async fn apply(&self, b: &mut Batch<'_>) -> Result<Compacted, Error> {
        let rev = self.0;
        // etcd's order: at or below the last compaction, then future.
        if rev <= b.meta.compact_revision {
            return Err(Error::Compacted);
        }
        if rev > b.meta.revision {
            return Err(Error::FutureRev);
        }
        let previous = b.meta.compact_revision;
        b.meta.compact_revision = rev;
        Ok(Compacted {
            previous,
            revision: rev,
            current: b.meta.revision,
        })
    }
}

/// Grants a lease; `id` 0 lets the batch choose one. Answers (id, revision).
pub struct LeaseGrant {
    pub id: i64,
    pub ttl: i64,
    pub now_ms: i64,
}

#[async_trait]
impl Write for LeaseGrant {
    type Out = (i64, i64);
    fn lease_rows(&self) -> bool {
        true
    }
    fn names(&self, _: &mut HashSet<Vec<u8>>, leases: &mut HashSet<i64>) {
        if self.id != 0 {
            leases.insert(self.id);
        }
    }
    async fn apply(&self, b: &mut Batch<'_>) -> Result<(i64, i64), Error> {
        let id = if self.id == 0 {
            b.free_lease_id().await?
        } else {
            self.id
        };
        if b.lease_exists(id).await? {
            return Err(Error::LeaseExists);
        }
        b.set_lease(id, Some(lease_row(id, self.ttl, self.now_ms)));
        Ok((id, b.meta.revision))
    }
}

/// Deletes a lease and its keys. Answers the revision.
pub struct LeaseRevoke(pub i64);

#[async_trait]
impl Write for LeaseRevoke {
    type Out = i64;
    fn lease_rows(&self) -> bool {
        true
    }
    fn names(&self, _: &mut HashSet<Vec<u8>>, leases: &mut HashSet<i64>) {
        leases.insert(self.0);
    }
    async fn apply(&self, b: &mut Batch<'_>) -> Result<i64, Error> {
        if !b.lease_exists(self.0).await? {
            return Err(Error::LeaseNotFound);
        }
        b.revoke(self.0).await
    }
}

/// Restarts a lease's TTL. Answers (ttl, revision).
pub struct LeaseRenew {
    pub id: i64,
    pub now_ms: i64,
}

#[async_trait]
impl Write for LeaseRenew {
    type Out = (i64, i64);
    fn names(&self, _: &mut HashSet<Vec<u8>>, leases: &mut HashSet<i64>) {
        leases.insert(self.id);
    }
    /// As etcd, which renews in memory only: a renewal lost with the
    /// machine is made up for at the next start, where every lease gets
    /// its TTL again (`store::promote_leases`).
    fn lasting(&self) -> bool {
        false
    }
    async fn apply(&self, b: &mut Batch<'_>) -> Result<(i64, i64), Error> {
        // As etcd: an expired lease is not renewed, even before it is
        // revoked. The new expiry does not depend on the old.
        let ttl = b
            .unexpired_ttl(self.id, self.now_ms)
            .await?
            .ok_or(Error::LeaseNotFound)?;
        b.set_lease(self.id, Some(lease_row(self.id, ttl, self.now_ms)));
        Ok((ttl, b.meta.revision))
    }
}

/// Revokes the lease only if it is still expired at `now_ms`: a renewal
/// that committed first wins, and of several processes expiring one lease
/// only the first finds it. Only in the database's run (`incarnation`)
/// that leases were last promoted in: another may have lost renewals.
pub struct LeaseExpire {
    pub id: i64,
    pub now_ms: i64,
    /// See [`Writer::incarnation`](crate::backend::Writer::incarnation).
    pub incarnation: Option<i64>,
}

/// What [`LeaseExpire`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Revoked at this revision.
    Revoked(i64),
    /// Renewed or gone meanwhile.
    Kept,
    /// The database runs again since leases were promoted: promote them
    /// again before any expires.
    Restarted,
}

#[async_trait]
impl Write for LeaseExpire {
    type Out = Expiry;
    fn lease_rows(&self) -> bool {
        true
    }
    fn names(&self, _: &mut HashSet<Vec<u8>>, leases: &mut HashSet<i64>) {
        leases.insert(self.id);
    }
    async fn apply(&self, b: &mut Batch<'_>) -> Result<Expiry, Error> {
        if b.incarnation().await? != self.incarnation {
            return Ok(Expiry::Restarted);
        }
        match b.lease_row(self.id).await? {
            Some(row) if row.expires_at_ms <= self.now_ms => {
                b.revoke(self.id).await.map(Expiry::Revoked)
            }
            _ => Ok(Expiry::Kept),
        }
    }
}

/// The last history row a batch wrote: after a COMMIT whose outcome is
/// unknown, finding it (under the revision-row lock, so that the old
/// transaction has ended) tells whether the batch committed. Revisions are
/// unique, so another writer cannot have written this row.
#[derive(Debug)]
pub struct Probe {
    pub revision: i64,
    pub sub: i32,
    /// The batch's nonce, written into each of its history rows: another
    /// process may write an identical row at the same revision (the same
    /// compare-and-swap), so only this tells the rows apart.
    pub batch: i64,
    /// The batch's CRD writes, for the catalog if it did commit.
    pub crd_writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Why a commit failed, and whether its outcome is unknown.
pub struct CommitError {
    pub error: DbError,
    /// The COMMIT may have reached the database.
    pub after_commit_sent: bool,
    pub probe: Option<Probe>,
}

pub struct Batch<'w> {
    w: &'w mut dyn Writer,
    /// Selector columns of written objects; learns CRDs as they are written.
    catalog: &'w Catalog,
    /// See [`Probe::batch`].
    nonce: i64,
    /// See [`Probe`].
    probe: Option<Probe>,
    /// The store before the request being evaluated.
    meta: Meta,
    /// Changes the current request has made (its sub-revision counter).
    sub: i32,
    /// Latest known version of keys (None = absent), overlay included.
    cache: HashMap<Vec<u8>, Option<KeyValue>>,
    /// Live-table changes not yet written.
    dirty: BTreeMap<Vec<u8>, Option<KeyValue>>,
    history: Vec<HistoryRow>,
    /// Leases known to exist, with their TTLs (`None`: known absent), when
    /// they expire where that is known, and rows not yet written.
    leases: HashMap<i64, Option<i64>>,
    expiries: HashMap<i64, i64>,
    dirty_leases: BTreeMap<i64, Option<LeaseRow>>,
    /// CRD writes, for the catalog once the batch committed (a batch
    /// rolled back must not change what selectors may name).
    crd_writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The revision the batch started from.
    start: i64,
    /// Every change as a watcher sees it, for the hub once committed;
    /// `None` if a change's previous version was not at hand.
    events: Option<Vec<EventRow>>,
    /// Set when the batch runs on [`Known`] instead of reading first.
    assumed: Option<Assumed>,
    /// [`Writer::incarnation`] as this transaction read it, once read.
    run: Option<Option<i64>>,
    /// With a selector table (`etcdsql_label`) whose rows are complete: for
    /// keys the batch wrote, the hashes the table holds for them as of the
    /// batch's start or its last flush. A write that keeps them leaves the
    /// rows alone. `None` when not tracked.
    label_rows: Option<HashMap<Vec<u8>, Vec<i64>>>,
    /// Selector columns the requests' tasks extracted, by key (the last
    /// offered for a key).
    extracted: HashMap<Vec<u8>, Arc<Extracted>>,
    /// The catalog's generation when the batch began.
    generation: u64,
    /// From [`Known::held_rows`]: the label rows of keys as this
    /// committer's earlier batches wrote them, with their versions' mod
    /// revisions.
    held: HashMap<Vec<u8>, (i64, Vec<i64>)>,
    /// For keys the batch wrote: whether the database holds a live row for
    /// each, as of the batch's start or its last flush (`true` where the
    /// batch did not know).
    stored: HashMap<Vec<u8>, bool>,
}

/// What a batch begun by [`Batch::begin_assuming`] took for granted.
struct Assumed {
    /// The revision row it started from.
    meta: Meta,
    /// Keys it may take as absent when [`Known`] does not have them.
    may_be_absent: HashSet<Vec<u8>>,
    /// Those it did take as absent.
    absent: Vec<Vec<u8>>,
    /// The leases its requests name, taken as existing with these TTLs,
    /// and those renewals took as not expired.
    leases: AssumedLeases,
}

/// What the committer knows of the store after its last commit: the
/// revision row and the latest versions of keys its batches read or wrote.
/// It holds only while no other writer has committed since, which the
/// database checks when a batch assumes it ([`Batch::begin_assuming`]).
#[derive(Default)]
pub struct Known {
    meta: Option<Meta>,
    keys: HashMap<Vec<u8>, Option<KeyValue>>,
    bytes: usize,
    /// Leases seen to exist, with their TTLs. Only a hint: another process
    /// may revoke a lease (and grant its id again) without a new revision,
    /// so a batch assuming checks them.
    leases: HashMap<i64, i64>,
    /// Every commit after this revision, up to `meta`, was one of the
    /// committer's and left the keys it wrote in `keys`: a key read at a
    /// revision from here on, and not in `keys`, is still as read.
    since: i64,
    /// Batches to run reading first, after an assumption failed, and the
    /// next such pause (doubling while assumptions keep failing).
    pause: u32,
    next_pause: u32,
    /// The writer tells a key that exists from a stale assumption
    /// ([`Writer::tells_existed`](crate::backend::Writer::tells_existed)).
    tells_existed: bool,
    /// Batches to run without guessing, after a key guessed absent existed,
    /// and the next such pause (doubling while guesses keep failing,
    /// halving as batches that took keys as absent commit).
    guess_pause: u32,
    next_guess_pause: u32,
    /// Keys this committer saw exist or wrote (a Bloom filter, allocated
    /// on first use): only a key not in it is guessed absent. It outlives
    /// `keys`, which forgets when full.
    seen: Vec<u64>,
    /// The `etcdsql_label` rows committed batches wrote for versions of
    /// keys (mod revision, rows), under catalog generation
    /// `held_generation`. A committed version's mod revision names it for
    /// good, so these stay true when other writers come between.
    held: HashMap<Vec<u8>, (i64, Vec<i64>)>,
    held_generation: u64,
}

impl Known {
    /// Bits of [`Self::seen`] (1 MiB): at 1,000,000 keys, two bits a key
    /// take about 5% of new keys for seen (those are read, not guessed).
    const SEEN_BITS: u64 = 1 << 23;
    const MAX_KEYS: usize = 16_384;
    const MAX_BYTES: usize = 16 << 20;
    const MAX_LEASES: usize = 16_384;

    /// Whether the next batch may assume; counts a paused batch.
    pub fn usable(&mut self) -> bool {
        self.guess_pause = self.guess_pause.saturating_sub(1);
        if self.pause > 0 {
            self.pause -= 1;
            return false;
        }
        self.meta.is_some()
    }

    /// Forgets everything (a batch failed, or another writer was first).
    pub fn forget(&mut self) {
        self.meta = None;
        self.keys.clear();
        self.bytes = 0;
        self.leases.clear();
    }

    /// An assumption failed: forget, and read first for a while.
    pub fn stale(&mut self) {
        self.forget();
        self.next_pause = (self.next_pause * 2).clamp(1, 64);
        self.pause = self.next_pause;
    }

    /// Whether a batch assuming may take the unknown keys of requests'
    /// [`Write::guessable`] as absent: the database checks them with the
    /// rest, and a failure costs the batch one round trip.
    pub fn guessing(&self) -> bool {
        self.tells_existed && self.guess_pause == 0
    }

    /// The two bits of `key` in [`Self::seen`].
    fn seen_bits(key: &[u8]) -> [u64; 2] {
        use std::hash::BuildHasher;
        // Fixed seed: a key's bits stay where they were set.
        let h = foldhash::quality::FixedState::with_seed(0x6574_6364_7371_6c31).hash_one(key);
        [h % Self::SEEN_BITS, (h >> 32) % Self::SEEN_BITS]
    }

    /// Notes `key` in [`Self::seen`], where guesses are made at all.
    fn mark_seen(&mut self, key: &[u8]) {
        if !self.tells_existed {
            return;
        }
        if self.seen.is_empty() {
            self.seen = vec![0; (Self::SEEN_BITS / 64) as usize];
        }
        for bit in Self::seen_bits(key) {
            self.seen[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    /// Whether `key` may have been seen to exist (never a false "no").
    pub fn maybe_seen(&self, key: &[u8]) -> bool {
        !self.seen.is_empty()
            && Self::seen_bits(key)
                .iter()
                .all(|&bit| self.seen[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    /// What the writer tells apart ([`Self::guessing`]).
    pub fn set_tells_existed(&mut self, tells: bool) {
        self.tells_existed = tells;
    }

    /// A key a batch took as absent existed, the rest held: what is known
    /// stays, and guessing pauses for a while.
    pub fn existed(&mut self) {
        self.next_guess_pause = (self.next_guess_pause * 2).clamp(1, 256);
        self.guess_pause = self.next_guess_pause;
    }

    /// A batch committed: the store is as it left it. What was known
    /// before holds only if nobody wrote between the last commit and this
    /// batch's start.
    pub fn absorb(&mut self, c: &mut Committed) {
        if c.assumed {
            self.next_pause = 0;
        }
        if c.took_absent {
            self.next_guess_pause /= 2;
        }
        if self.meta.map(|m| m.revision) != Some(c.start) {
            self.keys.clear();
            self.bytes = 0;
            self.leases.clear();
            // The batch held the revision lock from `start`.
            self.since = c.start;
        }
        for (id, ttl) in std::mem::take(&mut c.leases) {
            match ttl {
                Some(ttl) => self.leases.insert(id, ttl),
                None => self.leases.remove(&id),
            };
        }
        if self.leases.len() > Self::MAX_LEASES {
            self.leases.clear();
        }
        for (k, v) in std::mem::take(&mut c.keys) {
            if v.is_some() {
                self.mark_seen(&k);
            }
            self.bytes += k.len() + v.as_ref().map_or(0, |kv| kv.value.len());
            self.keys.insert(k, v);
        }
        if self.keys.len() > Self::MAX_KEYS || self.bytes > Self::MAX_BYTES {
            self.keys.clear();
            self.bytes = 0;
            self.since = c.meta.revision;
        }
        self.meta = Some(c.meta);
        if c.generation != self.held_generation {
            self.held.clear();
            self.held_generation = c.generation;
        }
        for (revision, key, rows) in std::mem::take(&mut c.label_rows) {
            self.held.insert(key, (revision, rows));
        }
        if self.held.len() > Self::MAX_KEYS {
            self.held.clear();
        }
    }

    /// What [`Self::held`] has for `keys`, for a batch at catalog
    /// `generation`.
    pub fn held_rows(
        &self,
        keys: &HashSet<Vec<u8>>,
        generation: u64,
    ) -> HashMap<Vec<u8>, (i64, Vec<i64>)> {
        if self.held.is_empty() || generation != self.held_generation {
            return HashMap::new();
        }
        keys.iter()
            .filter_map(|k| self.held.get(k).map(|v| (k.clone(), v.clone())))
            .collect()
    }

    /// Whether all of `leases` were seen to exist.
    pub fn knows_leases(&self, leases: &HashSet<i64>) -> bool {
        leases.iter().all(|id| self.leases.contains_key(id))
    }

    /// The revision row, the known versions of `keys` and `leases`, for a
    /// batch that assumes them.
    pub fn assume(&self, keys: HashSet<Vec<u8>>, leases: &HashSet<i64>) -> Option<Assuming> {
        let meta = self.meta?;
        let cache = keys
            .into_iter()
            .filter_map(|k| self.keys.get(&k).map(|v| (k, v.clone())))
            .collect();
        let leases = leases
            .iter()
            .filter_map(|id| self.leases.get(id).map(|&ttl| (*id, ttl)))
            .collect();
        Some((meta, cache, leases))
    }

    /// What a request lacks for a batch assuming: the keys it names that
    /// are not known and not in `absent` (expected or guessed absent; a
    /// read ahead can fetch the rest), and whether it needs a read
    /// regardless (lease rows, or leases not seen to exist). Nothing while
    /// the next batches cannot assume anyway (nothing known, or paused).
    pub fn unknown(
        &self,
        names: HashSet<Vec<u8>>,
        absent: &HashSet<Vec<u8>>,
        leases: &HashSet<i64>,
        lease_rows: bool,
    ) -> (Vec<Vec<u8>>, bool) {
        if self.meta.is_none() || self.pause > 0 {
            return (Vec::new(), false);
        }
        let keys = names
            .into_iter()
            .filter(|k| !absent.contains(k) && !self.keys.contains_key(k))
            .collect();
        (keys, lease_rows || !self.knows_leases(leases))
    }

    /// Takes keys read outside any transaction, each with the revision row
    /// it was read with, where that read is still current: taken at or
    /// after `since`, not after the last commit, and the key not written
    /// since (known keys are newer). Answers how many it took.
    pub fn read_ahead(&mut self, read: Vec<(Meta, Option<KeyValue>)>, keys: &[Vec<u8>]) -> usize {
        let Some(meta) = self.meta else {
            return 0;
        };
        let mut took = 0;
        for ((at, kv), key) in read.into_iter().zip(keys) {
            if kv.is_some() {
                self.mark_seen(key);
            }
            if at.revision < self.since
                || at.revision > meta.revision
                || self.keys.contains_key(key)
                || self.keys.len() >= Self::MAX_KEYS
                || self.bytes >= Self::MAX_BYTES
            {
                continue;
            }
            self.bytes += key.len() + kv.as_ref().map_or(0, |kv| kv.value.len());
            self.keys.insert(key.clone(), kv);
            took += 1;
        }
        took
    }
}

/// What a batch assumes: the revision row, the versions of keys (`None`:
/// absent), and leases that exist, with their TTLs.
pub type Assuming = (Meta, HashMap<Vec<u8>, Option<KeyValue>>, Vec<(i64, i64)>);

/// A committed batch: it took the store from `start` to `end`.
pub struct Committed {
    pub start: i64,
    pub end: i64,
    /// All its changes, in order (see [`Batch::events`]).
    pub events: Option<Vec<EventRow>>,
    /// The revision row it stored.
    pub meta: Meta,
    /// The latest versions of the keys it read or wrote, as it left them.
    pub keys: HashMap<Vec<u8>, Option<KeyValue>>,
    /// The leases it read or wrote, as it left them: their TTLs, `None`
    /// where absent.
    pub leases: HashMap<i64, Option<i64>>,
    /// It ran on [`Known`] (one round trip).
    pub assumed: bool,
    /// It ran on [`Known`] and took keys it did not know as absent.
    pub took_absent: bool,
    /// The label rows it left for keys it wrote (mod revision, key, rows),
    /// where tracked; computed under catalog `generation`.
    pub label_rows: Vec<(i64, Vec<u8>, Vec<i64>)>,
    pub generation: u64,
}

fn requests_names(reqs: &[RequestOp], keys: &mut HashSet<Vec<u8>>, leases: &mut HashSet<i64>) {
    for r in reqs {
        match &r.request {
            Some(Request::RequestPut(p)) => put_names(p, keys, leases),
            Some(Request::RequestDeleteRange(d)) if d.range_end.is_empty() => {
                keys.insert(d.key.clone());
            }
            Some(Request::RequestRange(g)) if g.range_end.is_empty() => {
                keys.insert(g.key.clone());
            }
            Some(Request::RequestTxn(t)) => txn_names(t, keys, leases),
            _ => {}
        }
    }
}

fn put_names(p: &PutRequest, keys: &mut HashSet<Vec<u8>>, leases: &mut HashSet<i64>) {
    keys.insert(p.key.clone());
    if p.lease != 0 {
        leases.insert(p.lease);
    }
}

fn txn_names(t: &TxnRequest, keys: &mut HashSet<Vec<u8>>, leases: &mut HashSet<i64>) {
    for c in t.compare.iter().filter(|c| c.range_end.is_empty()) {
        keys.insert(c.key.clone());
    }
    requests_names(&t.success, keys, leases);
    requests_names(&t.failure, keys, leases);
}

impl<'w> Batch<'w> {
    pub async fn begin(
        w: &'w mut dyn Writer,
        catalog: &'w Catalog,
        keys: HashSet<Vec<u8>>,
        leases: HashSet<i64>,
    ) -> Result<Batch<'w>, DbError> {
        let keys: Vec<Vec<u8>> = keys.into_iter().collect();
        let ids: Vec<i64> = leases.into_iter().collect();
        let began = w.begin_read(&keys, &ids).await?;
        let mut b = Batch::new(w, catalog, began.meta, HashMap::new(), None);
        for kv in began.kvs {
            b.cache.insert(kv.key.clone(), Some(kv));
        }
        for k in keys {
            b.cache.entry(k).or_insert(None);
        }
        for id in ids {
            b.leases.insert(id, None);
        }
        for row in began.leases {
            b.leases.insert(row.id, Some(row.ttl));
            b.expiries.insert(row.id, row.expires_at_ms);
        }
        Ok(b)
    }

    /// Begins without reading: what [`Known::assume`] gave stands for the
    /// store (its leases exist), and a key it does not have counts as
    /// absent if it is in `may_be_absent`; anything else the batch would
    /// have to read (another key, another lease, a lease row, a range)
    /// ends it with [`DbError::NeedsRead`] before anything is sent. The
    /// database checks these assumptions ahead of the writes, in the
    /// commit's round trip.
    pub async fn begin_assuming(
        w: &'w mut dyn Writer,
        catalog: &'w Catalog,
        (meta, cache, leases): Assuming,
        may_be_absent: HashSet<Vec<u8>>,
    ) -> Result<Batch<'w>, DbError> {
        w.begin_assuming().await?;
        let mut b = Batch::new(w, catalog, meta, cache, None);
        b.leases = leases.iter().map(|&(id, ttl)| (id, Some(ttl))).collect();
        b.assumed = Some(Assumed {
            meta,
            may_be_absent,
            absent: Vec::new(),
            leases: AssumedLeases {
                ttls: leases,
                ..AssumedLeases::default()
            },
        });
        Ok(b)
    }

    fn new(
        w: &'w mut dyn Writer,
        catalog: &'w Catalog,
        meta: Meta,
        cache: HashMap<Vec<u8>, Option<KeyValue>>,
        assumed: Option<Assumed>,
    ) -> Batch<'w> {
        Batch {
            catalog,
            nonce: crate::backend::random_i64(),
            meta,
            sub: 0,
            cache,
            dirty: BTreeMap::new(),
            history: Vec::new(),
            probe: None,
            leases: HashMap::new(),
            expiries: HashMap::new(),
            dirty_leases: BTreeMap::new(),
            crd_writes: Vec::new(),
            start: meta.revision,
            events: Some(Vec::new()),
            label_rows: (w.dialect().label_table() && catalog.label_rows_complete())
                .then(HashMap::new),
            extracted: HashMap::new(),
            generation: catalog.generation(),
            held: HashMap::new(),
            stored: HashMap::new(),
            w,
            assumed,
            run: None,
        }
    }

    /// Label rows the committer knows the table holds (see
    /// [`Known::held_rows`]), as of catalog `generation`.
    pub fn hold(&mut self, held: HashMap<Vec<u8>, (i64, Vec<i64>)>, generation: u64) {
        if generation == self.generation {
            self.held = held;
        }
    }

    /// Selector columns extracted for the next request's puts.
    pub fn offer(&mut self, extracted: &[Arc<Extracted>]) {
        for e in extracted {
            self.extracted.insert(e.key.clone(), e.clone());
        }
    }

    /// Before the batch's first write of `key`: whether it has a live row,
    /// and the label rows its stored version has (none when absent), where
    /// tracked.
    fn note_stored(&mut self, key: &[u8]) {
        if !self.stored.contains_key(key) {
            let absent = matches!(self.cache.get(key), Some(None));
            self.stored.insert(key.to_vec(), !absent);
        }
        let Some(rows) = &mut self.label_rows else {
            return;
        };
        if rows.contains_key(key) {
            return;
        }
        let held = match self.cache.get(key) {
            Some(None) => Vec::new(),
            // A version this committer wrote, under the same catalog: its
            // rows as written, without reading its value again.
            Some(Some(prev)) => match self.held.remove(key) {
                Some((revision, rows))
                    if revision == prev.mod_revision
                        && self.generation == self.catalog.generation() =>
                {
                    rows
                }
                _ => {
                    let index = Indexed::of(self.catalog, key, &prev.value);
                    hash::rows(key, index.as_deref().map(|i| i.hashes.as_slice())).to_vec()
                }
            },
            None => return,
        };
        rows.insert(key.to_vec(), held);
    }

    /// A read the batch cannot make while assuming.
    fn must_read(&self) -> Result<(), Error> {
        match self.assumed {
            Some(_) => Err(Error::Db(DbError::NeedsRead)),
            None => Ok(()),
        }
    }

    /// Writes what the batch changed so far.
    async fn flush(&mut self) -> Result<(), DbError> {
        let mut f = Flush::default();
        // Each put's selector columns, computed once for its history row
        // and, for the key's last put, its live row.
        let mut latest = HashMap::new();
        for h in &mut self.history {
            if !h.deleted {
                h.index = index_of(&self.extracted, self.catalog, &h.key, &h.value);
                latest.insert(h.key.clone(), h.index.clone());
            }
        }
        for (key, kv) in std::mem::take(&mut self.dirty) {
            match kv {
                Some(kv) => {
                    let index = match latest.remove(&key) {
                        Some(index) => index,
                        // Written by an earlier flush of this batch.
                        None => index_of(&self.extracted, self.catalog, &kv.key, &kv.value),
                    };
                    let rows_held = self
                        .label_rows
                        .as_ref()
                        .and_then(|rows| rows.get(&key).cloned());
                    let absent = self.stored.get(&key) == Some(&false);
                    f.upserts.push(Upsert {
                        kv,
                        index,
                        rows_held,
                        absent,
                    });
                }
                None => f.deletes.push(key),
            }
        }
        if let Some(h) = self.history.last() {
            self.probe = Some(Probe {
                revision: h.revision,
                sub: h.sub,
                batch: self.nonce,
                crd_writes: Vec::new(),
            });
        }
        f.history = std::mem::take(&mut self.history);
        f.batch = self.nonce;
        for (id, row) in std::mem::take(&mut self.dirty_leases) {
            match row {
                Some(row) => f.lease_upserts.push(row),
                None => f.lease_deletes.push(id),
            }
        }
        if !f.is_empty() {
            crate::backend::flush(self.w, &f).await?;
        }
        // What the database now holds for each key written.
        for u in &f.upserts {
            self.stored.insert(u.key.clone(), true);
            if let Some(rows) = &mut self.label_rows {
                rows.insert(u.key.clone(), u.hashes().to_vec());
            }
        }
        for key in f.deletes {
            if let Some(rows) = &mut self.label_rows {
                rows.insert(key.clone(), Vec::new());
            }
            self.stored.insert(key, false);
        }
        Ok(())
    }

    /// Flushes and commits. The flag on an error tells whether the COMMIT
    /// itself failed (outcome unknown).
    pub async fn commit(mut self) -> Result<Committed, CommitError> {
        let before = |error| CommitError {
            error,
            after_commit_sent: false,
            probe: None,
        };
        if let Some(a) = &self.assumed {
            self.w
                .check_assumed(a.meta, &a.absent, &a.leases)
                .await
                .map_err(before)?;
        }
        self.flush().await.map_err(before)?;
        let probe = self.probe.take();
        let crd_writes = std::mem::take(&mut self.crd_writes);
        if let Err(error) = self.w.commit(self.meta).await {
            return Err(CommitError {
                error,
                after_commit_sent: true,
                probe: probe.map(|p| Probe { crd_writes, ..p }),
            });
        }
        for (key, value) in &crd_writes {
            self.catalog.observe_write(key, value.as_deref());
        }
        // Label rows of the versions it wrote, while the catalog is the
        // one they were computed under.
        let mut label_rows = Vec::new();
        if self.generation == self.catalog.generation() {
            for (key, rows) in self.label_rows.take().unwrap_or_default() {
                if let Some(Some(kv)) = self.cache.get(&key) {
                    label_rows.push((kv.mod_revision, key, rows));
                }
            }
        }
        Ok(Committed {
            start: self.start,
            end: self.meta.revision,
            events: self.events.take(),
            meta: self.meta,
            keys: std::mem::take(&mut self.cache),
            leases: std::mem::take(&mut self.leases),
            assumed: self.assumed.is_some(),
            took_absent: self.assumed.as_ref().is_some_and(|a| !a.absent.is_empty()),
            label_rows,
            generation: self.generation,
        })
    }

    /// Evaluates one request (see [`Write::apply`]).
    pub async fn apply<W: Write + ?Sized>(&mut self, op: &W) -> Result<W::Out, Error> {
        self.sub = 0;
        let result = op.apply(self).await;
        if self.sub > 0 {
            self.meta.revision += 1;
        }
        result
    }

    /// Deletes the lease's keys (delete events in this request's revision)
    /// and the lease.
    async fn revoke(&mut self, id: i64) -> Result<i64, Error> {
        self.must_read()?;
        self.flush().await?;
        for key in self.w.lease_keys(id).await? {
            if let Some(kv) = self.get(&key).await?.filter(|kv| kv.lease == id) {
                self.delete(&kv).await?;
            }
        }
        self.set_lease(id, None);
        Ok(self.meta.revision + i64::from(self.sub > 0))
    }

    /// See [`Writer::incarnation`]; read once per transaction.
    async fn incarnation(&mut self) -> Result<Option<i64>, Error> {
        if let Some(run) = self.run {
            return Ok(run);
        }
        self.must_read()?;
        let run = self.w.incarnation().await?;
        self.run = Some(run);
        Ok(run)
    }

    /// The lease's current row, the batch's own changes included.
    async fn lease_row(&mut self, id: i64) -> Result<Option<LeaseRow>, Error> {
        if let Some(row) = self.dirty_leases.get(&id) {
            return Ok(*row);
        }
        if self.leases.get(&id) == Some(&None) {
            return Ok(None);
        }
        self.must_read()?;
        let row = self.w.lease_row(id).await?;
        self.leases.insert(id, row.map(|r| r.ttl));
        if let Some(r) = row {
            self.expiries.insert(id, r.expires_at_ms);
        }
        Ok(row)
    }

    /// The lease's TTL if it exists and had not expired at `now_ms`. A
    /// batch assuming takes that for granted and has the database check it.
    async fn unexpired_ttl(&mut self, id: i64, now_ms: i64) -> Result<Option<i64>, Error> {
        let live = |r: LeaseRow| (r.expires_at_ms > now_ms).then_some(r.ttl);
        if let Some(row) = self.dirty_leases.get(&id) {
            return Ok(row.and_then(live));
        }
        match (
            self.leases.get(&id),
            self.expiries.get(&id),
            &mut self.assumed,
        ) {
            (Some(None), _, _) => Ok(None),
            (Some(Some(ttl)), Some(&expires_at_ms), _) => Ok(live(LeaseRow {
                id,
                ttl: *ttl,
                expires_at_ms,
            })),
            (Some(Some(ttl)), None, Some(a)) => {
                a.leases.unexpired.push(id);
                a.leases.now_ms = a.leases.now_ms.max(now_ms);
                Ok(Some(*ttl))
            }
            _ => Ok(self.lease_row(id).await?.and_then(live)),
        }
    }

    /// The lease's TTL, None if it does not exist.
    async fn lease_ttl(&mut self, id: i64) -> Result<Option<i64>, Error> {
        if let Some(ttl) = self.leases.get(&id) {
            return Ok(*ttl);
        }
        Ok(self.lease_row(id).await?.map(|r| r.ttl))
    }

    fn set_lease(&mut self, id: i64, row: Option<LeaseRow>) {
        self.leases.insert(id, row.map(|r| r.ttl));
        match row {
            Some(r) => self.expiries.insert(id, r.expires_at_ms),
            None => self.expiries.remove(&id),
        };
        self.dirty_leases.insert(id, row);
    }

    /// A random positive lease id nobody holds (etcd picks ids the same way).
    async fn free_lease_id(&mut self) -> Result<i64, Error> {
        loop {
            let id = i64::try_from(rand_u64() >> 1).unwrap_or(1).max(1);
            if !self.lease_exists(id).await? {
                return Ok(id);
            }
        }
    }
}

fn lease_row(id: i64, ttl: i64, now_ms: i64) -> LeaseRow {
    LeaseRow {
        id,
        ttl,
        expires_at_ms: now_ms.saturating_add(ttl.saturating_mul(1000)),
    }
}

/// 64 random bits from the standard library's per-process random hasher keys.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

#[async_trait]
impl View for Batch<'_> {
    fn meta(&self) -> Meta {
        self.meta
    }

    fn changed(&self) -> bool {
        self.sub > 0
    }

    async fn get(&mut self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        if let Some(kv) = self.cache.get(key) {
            return Ok(kv.clone());
        }
        if let Some(a) = &mut self.assumed {
            if !a.may_be_absent.contains(key) {
                return Err(Error::Db(DbError::NeedsRead));
            }
            a.absent.push(key.to_vec());
            self.cache.insert(key.to_vec(), None);
            return Ok(None);
        }
        let kv = self.w.get(&[key.to_vec()]).await?.pop();
        self.cache.insert(key.to_vec(), kv.clone());
        Ok(kv)
    }

    async fn range(&mut self, q: &RangeQuery) -> Result<RangeRows, Error> {
        self.must_read()?;
        self.flush().await?;
        Ok(self.w.range(q).await?)
    }

    async fn lease_exists(&mut self, id: i64) -> Result<bool, Error> {
        Ok(self.lease_ttl(id).await?.is_some())
    }

    async fn put(&mut self, kv: KeyValue, prev_revision: i64) -> Result<(), Error> {
        self.note_stored(&kv.key);
        if let Some(events) = &mut self.events {
            let prev = match self.cache.get(&kv.key) {
                _ if prev_revision == 0 => Some(None),
                Some(Some(prev)) if prev.mod_revision == prev_revision => Some(Some(prev.clone())),
                _ => None,
            };
            match prev {
                Some(prev) => events.push(EventRow {
                    revision: kv.mod_revision,
                    deleted: false,
                    kv: kv.clone(),
                    prev,
                }),
                None => self.events = None,
            }
        }
        self.history.push(HistoryRow::put(
            &kv,
            kv.mod_revision,
            self.sub,
            prev_revision,
        ));
        if Catalog::concerns(&kv.key) {
            self.crd_writes
                .push((kv.key.clone(), Some(kv.value.clone())));
        }
        self.sub += 1;
        self.cache.insert(kv.key.clone(), Some(kv.clone()));
        self.dirty.insert(kv.key.clone(), Some(kv));
        Ok(())
    }

    async fn delete(&mut self, prev: &KeyValue) -> Result<(), Error> {
        self.note_stored(&prev.key);
        if let Some(events) = &mut self.events {
            // A range delete reads its victims without values (keys only):
            // the previous version is whole only where the batch read it.
            match self.cache.get(&prev.key) {
                Some(Some(whole)) if whole.mod_revision == prev.mod_revision => {
                    events.push(EventRow {
                        revision: self.meta.revision + 1,
                        deleted: true,
                        kv: KeyValue {
                            key: prev.key.clone(),
                            mod_revision: self.meta.revision + 1,
                            ..Default::default()
                        },
                        prev: Some(whole.clone()),
                    });
                }
                _ => self.events = None,
            }
        }
        self.history
            .push(HistoryRow::delete(prev, self.meta.revision + 1, self.sub));
        if Catalog::concerns(&prev.key) {
            self.crd_writes.push((prev.key.clone(), None));
        }
        self.sub += 1;
        self.cache.insert(prev.key.clone(), None);
        self.dirty.insert(prev.key.clone(), None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set<T: std::hash::Hash + Eq, const N: usize>(items: [T; N]) -> HashSet<T> {
        items.into_iter().collect()
    }

    fn committed(start: i64, end: i64, leases: &[(i64, Option<i64>)]) -> Committed {
        Committed {
            start,
            end,
            events: None,
            meta: Meta {
                revision: end,
                compact_revision: -1,
            },
            keys: HashMap::new(),
            leases: leases.iter().copied().collect(),
            assumed: false,
            took_absent: false,
            label_rows: Vec::new(),
            generation: 0,
        }
    }

    /// Only keys not seen exist are guessed; guessing pauses after a guess
    /// failed, longer each time, and needs a writer that tells it apart.
    #[test]
    fn guesses_keys_not_seen_and_pauses_after_a_failure() {
        let mut k = Known::default();
        assert!(!k.guessing(), "the writer has not said it tells");
        k.set_tells_existed(true);
        assert!(k.guessing());
        let mut c = committed(0, 1, &[]);
        c.keys.insert(b"old".to_vec(), Some(KeyValue::default()));
        c.keys.insert(b"gone".to_vec(), None);
        k.absorb(&mut c);
        assert!(k.maybe_seen(b"old"));
        assert!(!k.maybe_seen(b"gone") && !k.maybe_seen(b"new"));
        // Read ahead, found: seen even where not kept.
        let at = Meta {
            revision: 0,
            compact_revision: -1,
        };
        k.read_ahead(vec![(at, Some(KeyValue::default()))], &[b"far".to_vec()]);
        assert!(k.maybe_seen(b"far"));
        k.existed();
        assert!(!k.guessing());
        assert!(k.usable());
        assert!(k.guessing(), "one batch paused");
        k.existed();
        for _ in 0..2 {
            assert!(!k.guessing());
            k.usable();
        }
        assert!(k.guessing(), "two batches paused");
    }

    #[test]
    fn extractions_offered_stand_for_their_value_and_catalog() {
        let catalog = Catalog::default();
        let key = b"/registry/g.io/xs/ns/a".to_vec();
        let value = br#"{"kind":"X","metadata":{"name":"a","labels":{"l":"1"}},"spec":{"a":"v"}}"#;
        let put = |v: &[u8]| PutRequest {
            key: key.clone(),
            value: v.to_vec(),
            ..Default::default()
        };
        let offer = |catalog: &Catalog, v: &[u8]| {
            let mut out = Vec::new();
            Extracted::of_put(catalog, &put(v), &mut out);
            out.into_iter()
                .map(|e| (e.key.clone(), e))
                .collect::<HashMap<_, _>>()
        };
        let spec_a_selectable = |catalog: &Catalog| {
            catalog.observe(
                b"/registry/apiextensions.k8s.io/customresourcedefinitions/xs.g.io",
                Some(
                    br#"{"spec":{"group":"g.io","names":{"plural":"xs"},"selectableFields":[{"jsonPath":".spec.a"}],
                    "versions":[{"name":"v1","storage":true}]}}"#,
                ),
            );
        };
        let offered = offer(&catalog, value);
        let used = index_of(&offered, &catalog, &key, value).expect("an object");
        assert!(Arc::ptr_eq(&used, offered[&key].index.as_ref().unwrap()));
        // Another value of the key is extracted again.
        let other = br#"{"kind":"X","metadata":{"name":"a","labels":{"l":"2"}}}"#;
        let again = index_of(&offered, &catalog, &key, other).expect("an object");
        assert!(again.labels.contains("\"2\""), "{}", again.labels);
        // A CRD that makes spec.a selectable outdates the extraction.
        spec_a_selectable(&catalog);
        let fresh = index_of(&offered, &catalog, &key, value).expect("an object");
        assert!(
            !offered[&key]
                .index
                .as_ref()
                .unwrap()
                .fields
                .contains("spec.a")
        );
        assert!(fresh.fields.contains(r#""spec.a":"v""#), "{}", fresh.fields);
        // The same CRD again changes nothing: a new extraction holds.
        let offered = offer(&catalog, value);
        spec_a_selectable(&catalog);
        let kept = index_of(&offered, &catalog, &key, value).expect("an object");
        assert!(Arc::ptr_eq(&kept, offered[&key].index.as_ref().unwrap()));
    }

    #[test]
    fn label_rows_held_by_version_and_catalog() {
        let mut k = Known::default();
        let mut c = committed(1, 2, &[]);
        c.label_rows = vec![(2, b"a".to_vec(), vec![5, 9])];
        k.absorb(&mut c);
        let keys = set([b"a".to_vec(), b"b".to_vec()]);
        let held = k.held_rows(&keys, 0);
        assert_eq!(held.len(), 1);
        assert_eq!(held[b"a".as_slice()], (2, vec![5, 9]));
        // Another writer between: still the rows of the version at 2.
        k.stale();
        assert_eq!(k.held_rows(&keys, 0).len(), 1);
        // Another catalog: nothing, and a commit under it starts afresh.
        assert!(k.held_rows(&keys, 1).is_empty());
        let mut c = committed(5, 6, &[]);
        c.generation = 1;
        c.label_rows = vec![(6, b"b".to_vec(), vec![7])];
        k.absorb(&mut c);
        let held = k.held_rows(&keys, 1);
        assert_eq!(held.len(), 1);
        assert_eq!(held[b"b".as_slice()], (6, vec![7]));
    }

    #[test]
    fn leases_seen_to_exist() {
        let mut k = Known::default();
        let (none, absent) = (HashSet::default(), HashSet::default());
        k.absorb(&mut committed(
            1,
            2,
            &[(7, Some(60)), (8, Some(5)), (9, None)],
        ));
        assert!(k.knows_leases(&set([7, 8])));
        assert!(!k.knows_leases(&set([7, 9])));
        assert_eq!(
            k.unknown(none.clone(), &absent, &set([7]), false),
            (vec![], false)
        );
        assert_eq!(
            k.unknown(none.clone(), &absent, &set([9]), false),
            (vec![], true)
        );
        assert_eq!(
            k.unknown(none.clone(), &absent, &set([7]), true),
            (vec![], true)
        );
        // Revoked by its own batch; another renewed with a new TTL.
        k.absorb(&mut committed(2, 3, &[(8, None), (7, Some(30))]));
        assert!(!k.knows_leases(&set([8])));
        let (_, _, leases) = k.assume(none.clone(), &set([7])).unwrap();
        assert_eq!(leases, [(7, 30)]);
        // Another writer came between: nothing seen before holds.
        k.absorb(&mut committed(5, 6, &[]));
        assert!(!k.knows_leases(&set([7])));
        k.absorb(&mut committed(6, 6, &[(7, Some(30))]));
        k.forget();
        assert!(!k.knows_leases(&set([7])));
    }
}
