//! Counts for the pages of a paginated LIST. kube-apiserver reads page k+1
//! of a range at the revision page k was read at, starting right after
//! page k's last key. The state at a revision never changes, so the count
//! of page k+1 is page k's count minus the keys page k returned; remembering
//! it spares each page a count over the rest of the range, which would make
//! a LIST quadratic in its length.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

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

#[derive(Default)]
pub struct PageCounts {
    inner: Mutex<(HashMap<Key, i64>, VecDeque<Key>)>,
}

impl PageCounts {
    /// The count for a page starting at `key`, if a previous page left it.
    pub fn take(&self, scope: &[u8], revision: i64, key: &[u8]) -> Option<i64> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0.remove(&(scope.to_vec(), revision, key.to_vec()))
    }

    /// Records the count of the page that will start at `next_key`.
    pub fn put(&self, scope: &[u8], revision: i64, next_key: Vec<u8>, count: i64) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let k = (scope.to_vec(), revision, next_key);
        if g.0.insert(k.clone(), count).is_none() {
            g.1.push_back(k);
        }
        while g.1.len() > CAPACITY {
            if let Some(old) = g.1.pop_front() {
                g.0.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
