//! Counts a Range answers without counting in the database.
//!
//! [`PageCounts`]: kube-apiserver reads page k+1 of a range at the
//! revision page k was read at, starting right after page k's last key.
//! The state at a revision never changes, so the count of page k+1 is page
//! k's count minus the keys page k returned; remembering it spares each
//! page a count over the rest of the range, which would make a LIST
//! quadratic in its length.
//!
//! [`RangeCounts`]: kube-apiserver 1.31+ reads the current revision before
//! serving a LIST from its cache, with a Range of limit 1 over the whole
//! resource prefix, whose answer counts every key in it. A range's count
//! at one revision, plus the creates and minus the deletes in it that the
//! watch hub holds since, is its count at a later one.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use super::lock;
use crate::backend::{EventRow, KeyEnd};
use crate::proto::etcdserverpb::RangeRequest;

/// (scope, revision, first key of the next page).
type Key = (Vec<u8>, i64, Vec<u8>);

/// What else a page's count depends on: the range end and the selectors,
/// each length-prefixed so that no two requests share a scope by accident.
pub fn scope(r: &RangeRequest) -> Vec<u8> {
    let mut s = Vec::with_capacity(r.range_end.len() + 24);
    for part in [
        r.range_end.as_slice(),
        r.label_selector.as_bytes(),
        r.field_selector.as_bytes(),
    ] {
        s.extend_from_slice(&(part.len() as u64).to_le_bytes());
        s.extend_from_slice(part);
    }
    s
}

/// Continuations kept at once (the oldest go first).
const CAPACITY: usize = 4096;

/// A map of at most `cap` entries; the oldest inserted go first.
struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    fn new(cap: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    fn insert(&mut self, k: K, v: V) {
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push_back(k);
        }
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

pub struct PageCounts {
    inner: Mutex<Bounded<Key, i64>>,
}

impl Default for PageCounts {
    fn default() -> Self {
        PageCounts {
            inner: Mutex::new(Bounded::new(CAPACITY)),
        }
    }
}

impl PageCounts {
    /// The count for a page starting at `key`, if a previous page left it.
    pub fn take(&self, scope: &[u8], revision: i64, key: &[u8]) -> Option<i64> {
        lock(&self.inner)
            .map
            .remove(&(scope.to_vec(), revision, key.to_vec()))
    }

    /// Records the count of the page that will start at `next_key`.
    pub fn put(&self, scope: &[u8], revision: i64, next_key: Vec<u8>, count: i64) {
        lock(&self.inner).insert((scope.to_vec(), revision, next_key), count);
    }
}

/// Ranges whose latest count is kept.
const RANGES: usize = 256;

/// (key, range_end).
type Range = (Vec<u8>, Vec<u8>);

/// (key, range_end) → (revision, count of keys in the range at it).
pub struct RangeCounts {
    inner: Mutex<Bounded<Range, (i64, i64)>>,
}

impl Default for RangeCounts {
    fn default() -> Self {
        RangeCounts {
            inner: Mutex::new(Bounded::new(RANGES)),
        }
    }
}

impl RangeCounts {
    /// The latest count kept for the range, and its revision.
    pub fn get(&self, key: &[u8], range_end: &[u8]) -> Option<(i64, i64)> {
        lock(&self.inner)
            .map
            .get(&(key.to_vec(), range_end.to_vec()))
            .copied()
    }

    /// Keeps `count` as the range's count at `revision`, unless a later
    /// one is kept.
    pub fn put(&self, key: &[u8], range_end: &[u8], revision: i64, count: i64) {
        let mut g = lock(&self.inner);
        let k = (key.to_vec(), range_end.to_vec());
        if g.map.get(&k).is_none_or(|kept| kept.0 < revision) {
            g.insert(k, (revision, count));
        }
    }
}

/// A range's count after `events` (every event of the revisions after the
/// count's, in order): a create in the range adds one, a delete takes one.
pub fn advance(count: i64, key: &[u8], end: &KeyEnd, events: &[Arc<EventRow>]) -> i64 {
    events
        .iter()
        .filter(|e| end.contains(key, &e.kv.key))
        .fold(count, |n, e| match (e.deleted, e.kv.version) {
            // etcd records a delete only of a key that exists.
            (true, _) => n - 1,
            // A key's version starts at 1 when it is created.
            (false, 1) => n + 1,
            _ => n,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, revision: i64, version: i64, deleted: bool) -> Arc<EventRow> {
        Arc::new(EventRow {
            revision,
            deleted,
            kv: crate::proto::mvccpb::KeyValue {
                key: key.as_bytes().to_vec(),
                version,
                mod_revision: revision,
                ..Default::default()
            },
            prev: None,
        })
    }

    #[test]
    fn a_count_moves_with_creates_and_deletes_in_its_range_only() {
        let events = [
            event("/a/1", 5, 1, false), // create: +1
            event("/a/2", 6, 3, false), // update: 0
            event("/a/3", 7, 0, true),  // delete: -1
            event("/b/1", 8, 1, false), // another range
            event("/a/4", 9, 1, false), // create: +1
            event("/a", 10, 1, false),  // before the range's start
        ];
        let end = KeyEnd::Before(b"/a0".to_vec());
        assert_eq!(advance(10, b"/a/", &end, &events), 11);
        assert_eq!(advance(10, b"/", &KeyEnd::Unbounded, &events), 13);
        assert_eq!(advance(10, b"/a/2", &KeyEnd::Single, &events), 10);
    }

    #[test]
    fn a_range_keeps_its_latest_count_and_capacity_is_bounded() {
        let c = RangeCounts::default();
        c.put(b"/a/", b"/a0", 7, 3);
        c.put(b"/a/", b"/a0", 5, 9);
        assert_eq!(c.get(b"/a/", b"/a0"), Some((7, 3)), "an older count");
        c.put(b"/a/", b"/a0", 8, 4);
        assert_eq!(c.get(b"/a/", b"/a0"), Some((8, 4)));
        assert_eq!(c.get(b"/a/", b"\0"), None, "another range end");
        for i in 0..RANGES + 1 {
            c.put(i.to_string().as_bytes(), b"\0", 1, 1);
        }
        assert_eq!(c.get(b"/a/", b"/a0"), None, "the oldest went first");
    }

    #[test]
    fn a_continuation_is_used_once_and_capacity_is_bounded() {
        let c = PageCounts::default();
        c.put(b"b", 7, b"a1\0".to_vec(), 42);
        assert_eq!(c.take(b"b", 8, b"a1\0"), None, "another revision");
        assert_eq!(c.take(b"b", 7, b"a1\0"), Some(42));
        assert_eq!(c.take(b"b", 7, b"a1\0"), None);
        for i in 0..CAPACITY + 10 {
            c.put(b"b", 1, i.to_string().into_bytes(), 1);
        }
        assert_eq!(c.take(b"b", 1, b"0"), None, "the oldest went first");
        assert_eq!(
            c.take(b"b", 1, (CAPACITY + 9).to_string().as_bytes()),
            Some(1)
        );
    }
}
