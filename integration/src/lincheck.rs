//! A history checker for etcd's single-key operations and watch streams.
//!
//! [`check_linearizable`] searches, key by key, for an order of the
//! recorded operations that respects real time (an operation that returned
//! before another was invoked comes first) and a register's semantics
//! (Wing & Gong's search with Lowe's memoization of (linearized set,
//! state), as porcupine does). Linearizability is local, so a history is
//! linearizable iff each key's sub-history is. An operation whose outcome
//! is unknown (an error, a timeout) returns "never": it may take effect at
//! any point after its invocation, or not at all.
//!
//! [`check_watches`] holds each stream to etcd's watch rules: events in
//! revision order, no duplicates, no gaps (every revision from the start to
//! the end, when every write falls under the watched prefix), every
//! acknowledged write delivered at the revision it was acknowledged with,
//! nothing that nobody wrote, and every value a read returned present in
//! the streams at its mod_revision.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// Nanoseconds since the start of the run.
pub type Time = u64;

/// What an operation did, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A linearizable Range of one key: the value and mod_revision seen
    /// (None: absent), at the header's revision `at`.
    Get {
        value: Option<(String, i64)>,
        at: i64,
    },
    /// `ok`: the revision it was acknowledged with; None: outcome unknown.
    Put { value: String, ok: Option<i64> },
    /// Txn: if the key's value is `expect` (None: absent), put `value`.
    /// `outcome`: (succeeded, revision), or None when unknown.
    Cas {
        expect: Option<String>,
        value: String,
        outcome: Option<(bool, i64)>,
    },
    /// `outcome`: (keys deleted, revision), or None when unknown.
    Delete { outcome: Option<(i64, i64)> },
}

/// One operation on one key.
#[derive(Clone, Debug)]
pub struct Record {
    pub client: usize,
    pub key: String,
    pub op: Op,
    pub invoke: Time,
    /// `None` when the outcome is unknown: it may have taken effect at any
    /// time after `invoke`, or never.
    pub ret: Option<Time>,
}

impl Record {
    fn unknown(&self) -> bool {
        matches!(
            self.op,
            Op::Put { ok: None, .. } | Op::Cas { outcome: None, .. } | Op::Delete { outcome: None }
        )
    }
}

/// A register's step: the state after `op`, or None if `op`'s observed
/// outcome is impossible in state `s`.
fn step(s: &Option<String>, op: &Op) -> Option<Option<String>> {
    match op {
        Op::Get { value, .. } => (value.as_ref().map(|(v, _)| v) == s.as_ref()).then(|| s.clone()),
        Op::Put { value, .. } => Some(Some(value.clone())),
        Op::Cas {
            expect,
            value,
            outcome,
        } => {
            let matches = expect == s;
            match outcome {
                Some((succeeded, _)) if *succeeded != matches => None,
                _ if matches => Some(Some(value.clone())),
                _ => Some(s.clone()),
            }
        }
        Op::Delete { outcome } => match outcome {
            Some((deleted, _)) if (*deleted > 0) != s.is_some() => None,
            _ => Some(None),
        },
    }
}

/// Why a history is not linearizable.
#[derive(Debug)]
pub struct Violation {
    pub key: String,
    /// The operations of the key, in invocation order, around the place the
    /// search could not pass: what a person reads to see the anomaly.
    pub context: Vec<Record>,
    pub linearized: usize,
    pub total: usize,
    /// The search ran out of its memory budget before deciding.
    pub undecided: bool,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.undecided {
            "search budget exhausted"
        } else {
            "no linearization"
        };
        writeln!(
            f,
            "key {}: {verdict} ({} of {} operations ordered at most); around the failure:",
            self.key, self.linearized, self.total
        )?;
        for r in &self.context {
            let ret = r
                .ret
                .map_or("?".to_string(), |t| format!("{:.3}", t as f64 / 1e6));
            writeln!(
                f,
                "  client {} [{:.3} ms, {ret} ms] {:?}",
                r.client,
                r.invoke as f64 / 1e6,
                r.op
            )?;
        }
        Ok(())
    }
}

/// Checks each key's operations; the keys that fail, each with the
/// operations around the point where every order got stuck.
pub fn check_linearizable(history: &[Record]) -> Vec<Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in history {
        by_key.entry(&r.key).or_default().push(r);
    }
    by_key
        .into_iter()
        .filter_map(|(key, ops)| check_key(key, &ops).err())
        .collect()
}

/// Linked list of call and return entries (porcupine's shape).
struct Entries {
    /// (op index, is_call, time)
    kind: Vec<(usize, bool)>,
    prev: Vec<usize>,
    next: Vec<usize>,
    /// For a call entry: its return entry.
    partner: Vec<usize>,
}

const NIL: usize = usize::MAX;
/// Memory the search's memo may use per key.
const CACHE_BYTES: usize = 256 << 20;

fn check_key(key: &str, ops: &[&Record]) -> Result<(), Violation> {
    let n = ops.len();
    // Entries sorted by time; a call before a return at the same instant
    // (the two overlap: the weaker claim).
    let mut events: Vec<(Time, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, r) in ops.iter().enumerate() {
        events.push((r.invoke, true, i));
        events.push((
            r.ret.filter(|_| !r.unknown()).unwrap_or(Time::MAX),
            false,
            i,
        ));
    }
    events.sort_by_key(|&(t, call, i)| (t, !call, i));
    // Index 0 is the head sentinel.
    let len = events.len() + 1;
    let mut e = Entries {
        kind: vec![(NIL, false); len],
        prev: vec![NIL; len],
        next: vec![NIL; len],
        partner: vec![NIL; len],
    };
    let mut call_at = vec![NIL; n];
    for (pos, &(_, call, i)) in events.iter().enumerate() {
        let idx = pos + 1;
        e.kind[idx] = (i, call);
        e.prev[idx] = pos;
        e.next[pos] = idx;
        if call {
            call_at[i] = idx;
        } else {
            e.partner[call_at[i]] = idx;
        }
    }
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Option<String> = None;
    let mut cache: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    // A history that is not linearizable makes the search try every
    // order: bound its memory (an exhausted budget is a failure too).
    let budget = (CACHE_BYTES / (words * 8 + 64)).max(1024);
    let mut best = (0usize, 0usize); // (depth, op index where it got stuck)
    let mut entry = e.next[0];
    while e.next[0] != NIL {
        if entry == NIL {
            // Every call has a return entry after it: not reached.
            return Err(violation(key, ops, best));
        }
        let (i, call) = e.kind[entry];
        if call {
            let next_state = step(&state, &ops[i].op);
            let mut advanced = false;
            if let Some(s) = next_state {
                let mut lin = linearized.clone();
                lin[i / 64] |= 1 << (i % 64);
                if cache.len() >= budget {
                    let mut v = violation(key, ops, best);
                    v.undecided = true;
                    return Err(v);
                }
                if cache.insert((lin.clone(), s.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, s)));
                    linearized = lin;
                    lift(&mut e, entry);
                    entry = e.next[0];
                    advanced = true;
                }
            }
            if !advanced {
                entry = e.next[entry];
            }
        } else {
            if stack.len() >= best.0 {
                best = (stack.len(), i);
            }
            let Some((top, old)) = stack.pop() else {
                return Err(violation(key, ops, best));
            };
            state = old;
            let (ti, _) = e.kind[top];
            linearized[ti / 64] &= !(1 << (ti % 64));
            unlift(&mut e, top);
            entry = e.next[top];
        }
    }
    Ok(())
}

fn lift(e: &mut Entries, call: usize) {
    for idx in [call, e.partner[call]] {
        let (p, n) = (e.prev[idx], e.next[idx]);
        e.next[p] = n;
        if n != NIL {
            e.prev[n] = p;
        }
    }
}

fn unlift(e: &mut Entries, call: usize) {
    for idx in [e.partner[call], call] {
        let (p, n) = (e.prev[idx], e.next[idx]);
        e.next[p] = idx;
        if n != NIL {
            e.prev[n] = idx;
        }
    }
}

fn violation(key: &str, ops: &[&Record], (depth, stuck): (usize, usize)) -> Violation {
    let mut sorted: Vec<&Record> = ops.to_vec();
    sorted.sort_by_key(|r| r.invoke);
    let at = sorted
        .iter()
        .position(|r| std::ptr::eq(*r, ops[stuck]))
        .unwrap_or(0);
    let from = at.saturating_sub(8);
    let to = (at + 4).min(sorted.len());
    Violation {
        key: key.to_string(),
        context: sorted[from..to].iter().map(|r| (*r).clone()).collect(),
        linearized: depth,
        total: ops.len(),
        undecided: false,
    }
}

/// One event of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub revision: i64,
    pub key: String,
    /// None for a delete.
    pub value: Option<String>,
}

/// Checks watch streams that each cover every revision in `(start, end]`
/// (all writes of the run fall under the watched prefix), against the
/// operations of the run. Returns the problems found (empty: all rules hold).
pub fn check_watches(
    streams: &[(String, Vec<Event>)],
    history: &[Record],
    start: i64,
    end: i64,
) -> Vec<String> {
    let mut problems = Vec::new();
    // The one sequence every stream must show: built from the first
    // stream, compared with the others.
    let mut canonical: BTreeMap<i64, Event> = BTreeMap::new();
    for (name, events) in streams {
        let mut last = start;
        for ev in events {
            if ev.revision <= last {
                problems.push(format!(
                    "{name}: revision {} after {last} (out of order or duplicated)",
                    ev.revision
                ));
            } else if ev.revision != last + 1 {
                problems.push(format!(
                    "{name}: revisions {}..{} missing",
                    last + 1,
                    ev.revision - 1
                ));
            }
            last = last.max(ev.revision);
            match canonical.get(&ev.revision) {
                Some(c) if c != ev => problems.push(format!(
                    "{name}: revision {} is {ev:?}, another stream has {c:?}",
                    ev.revision
                )),
                Some(_) => {}
                None => {
                    canonical.insert(ev.revision, ev.clone());
                }
            }
        }
        if last < end {
            problems.push(format!(
                "{name}: ends at revision {last}, the store at {end}"
            ));
        }
    }
    // Values somebody tried to write (acknowledged or not).
    let written: HashMap<&str, &Record> = history
        .iter()
        .filter_map(|r| match &r.op {
            Op::Put { value, .. } | Op::Cas { value, .. } => Some((value.as_str(), r)),
            _ => None,
        })
        .collect();
    for ev in canonical.values() {
        match &ev.value {
            Some(v) => match written.get(v.as_str()) {
                None => problems.push(format!("event {ev:?}: nobody wrote this value")),
                Some(r) if r.key != ev.key => {
                    problems.push(format!("event {ev:?}: the value was written to {}", r.key))
                }
                Some(Record {
                    op:
                        Op::Cas {
                            outcome: Some((false, _)),
                            ..
                        },
                    ..
                }) => problems.push(format!(
                    "event {ev:?}: written by a compare-and-swap that answered it failed"
                )),
                Some(_) => {}
            },
            None => {
                if !history.iter().any(|r| {
                    r.key == ev.key
                        && matches!(
                            r.op,
                            Op::Delete {
                                outcome: None | Some((1.., _))
                            }
                        )
                }) {
                    problems.push(format!("event {ev:?}: nobody deleted this key"));
                }
            }
        }
    }
    // Acknowledged writes, and what reads returned, against the events.
    let expect = |problems: &mut Vec<String>, r: &Record, rev: i64, value: Option<&String>| {
        let want = Event {
            revision: rev,
            key: r.key.clone(),
            value: value.cloned(),
        };
        match canonical.get(&rev) {
            Some(ev) if *ev == want => {}
            Some(ev) => problems.push(format!(
                "client {} was answered {want:?}, the watch streams have {ev:?}",
                r.client
            )),
            None if streams.is_empty() || rev <= start => {}
            None => problems.push(format!(
                "client {} was answered {want:?}, no stream delivered revision {rev}",
                r.client
            )),
        }
    };
    for r in history {
        match &r.op {
            Op::Put {
                value,
                ok: Some(rev),
            } => expect(&mut problems, r, *rev, Some(value)),
            Op::Cas {
                value,
                outcome: Some((true, rev)),
                ..
            } => expect(&mut problems, r, *rev, Some(value)),
            Op::Delete {
                outcome: Some((1.., rev)),
            } => expect(&mut problems, r, *rev, None),
            Op::Get {
                value: Some((v, rev)),
                ..
            } => expect(&mut problems, r, *rev, Some(v)),
            _ => {}
        }
    }
    problems
}

/// etcd's stronger promise, checked from revisions: every answer names the
/// revision it was served at (a write's revision, a read's header), so
/// each operation has a point in the revision order, and the run is
/// linearizable with those points iff (1) an operation that returned
/// before another was invoked has a point no later than the other's, and
/// (2) what each operation observed is the key's state at its point, as
/// the watch streams (`events`, one per revision) tell it. An operation of
/// unknown outcome took effect iff its value is in the streams. Exact and
/// fast; the problems found, each naming the operations involved.
pub fn check_revisions(history: &[Record], events: &[Event]) -> Vec<String> {
    let mut problems = Vec::new();
    // Each key's changes in revision order.
    let mut timeline: HashMap<&str, Vec<(i64, Option<&str>)>> = HashMap::new();
    let mut by_value: HashMap<&str, i64> = HashMap::new();
    for ev in events {
        timeline
            .entry(ev.key.as_str())
            .or_default()
            .push((ev.revision, ev.value.as_deref()));
        if let Some(v) = &ev.value {
            by_value.insert(v.as_str(), ev.revision);
        }
    }
    for t in timeline.values_mut() {
        t.sort_by_key(|(r, _)| *r);
    }
    let state = |key: &str, at: i64| -> Option<&str> {
        let t = timeline.get(key)?;
        let i = t.partition_point(|(r, _)| *r <= at);
        if i == 0 { None } else { t[i - 1].1 }
    };
    // Points: 2r for a write at revision r, 2r + 1 for a read of the
    // state at r (after the write at r, before the one at r + 1).
    let mut points: Vec<(usize, i64)> = Vec::new();
    for (i, r) in history.iter().enumerate() {
        let key = r.key.as_str();
        let mut observe = |what: String| problems.push(format!("client {}: {what}", r.client));
        let point = match &r.op {
            Op::Get { value, at } => {
                let seen = value.as_ref().map(|(v, _)| v.as_str());
                if seen != state(key, *at) {
                    observe(format!(
                        "get {key} at revision {at} saw {seen:?}; the key was {:?} then",
                        state(key, *at)
                    ));
                }
                Some(2 * at + 1)
            }
            Op::Put { ok: Some(rev), .. } => Some(2 * rev),
            Op::Put { value, ok: None } => by_value.get(value.as_str()).map(|rev| 2 * rev),
            Op::Cas {
                expect,
                outcome: Some((true, rev)),
                ..
            } => {
                if state(key, rev - 1) != expect.as_deref() {
                    observe(format!(
                        "compare-and-swap of {key} expecting {expect:?} succeeded at revision {rev}; \
                         the key was {:?} before",
                        state(key, rev - 1)
                    ));
                }
                Some(2 * rev)
            }
            Op::Cas {
                expect,
                outcome: Some((false, rev)),
                ..
            } => {
                if state(key, *rev) == expect.as_deref() {
                    observe(format!(
                        "compare-and-swap of {key} expecting {expect:?} failed at revision {rev}, \
                         where the key had that value"
                    ));
                }
                Some(2 * rev + 1)
            }
            Op::Cas {
                value,
                outcome: None,
                ..
            } => by_value.get(value.as_str()).map(|rev| 2 * rev),
            Op::Delete {
                outcome: Some((deleted, rev)),
            } => {
                let before = if *deleted > 0 {
                    state(key, rev - 1)
                } else {
                    state(key, *rev)
                };
                if (*deleted > 0) != before.is_some() {
                    observe(format!(
                        "delete of {key} at revision {rev} deleted {deleted}; the key was {before:?}"
                    ));
                }
                Some(if *deleted > 0 { 2 * rev } else { 2 * rev + 1 })
            }
            // Which delete event it was cannot be told: no constraint.
            Op::Delete { outcome: None } => None,
        };
        if let Some(p) = point {
            points.push((i, p));
        }
    }
    // Real time: walk invocations in order, with the latest point among
    // the operations that had returned before each.
    let mut by_invoke = points.clone();
    by_invoke.sort_by_key(|&(i, _)| history[i].invoke);
    let mut by_return: Vec<(Time, usize, i64)> = points
        .iter()
        .filter_map(|&(i, p)| history[i].ret.map(|t| (t, i, p)))
        .collect();
    by_return.sort_unstable();
    let (mut next, mut floor) = (0, None::<(i64, usize)>);
    for (i, p) in by_invoke {
        while next < by_return.len() && by_return[next].0 < history[i].invoke {
            let (_, j, q) = by_return[next];
            if floor.is_none_or(|(f, _)| q > f) {
                floor = Some((q, j));
            }
            next += 1;
        }
        if let Some((f, j)) = floor
            && p < f
        {
            let (a, b) = (&history[j], &history[i]);
            problems.push(format!(
                "client {} {:?} on {} was served at revision {} though client {}'s {:?} on {} had \
                 returned at revision {} before it began ({:.3} ms < {:.3} ms)",
                b.client,
                b.op,
                b.key,
                p / 2,
                a.client,
                a.op,
                a.key,
                f / 2,
                a.ret.unwrap_or_default() as f64 / 1e6,
                b.invoke as f64 / 1e6
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(client: usize, op: Op, invoke: Time, ret: Option<Time>) -> Record {
        Record {
            client,
            key: "k".into(),
            op,
            invoke,
            ret,
        }
    }

    fn put(client: usize, v: &str, rev: i64, t: (Time, Time)) -> Record {
        rec(
            client,
            Op::Put {
                value: v.into(),
                ok: Some(rev),
            },
            t.0,
            Some(t.1),
        )
    }

    /// A get served at the revision of what it saw (its mod_revision).
    fn get(client: usize, v: Option<(&str, i64)>, t: (Time, Time)) -> Record {
        get_at(client, v, v.map_or(1, |(_, r)| r), t)
    }

    fn get_at(client: usize, v: Option<(&str, i64)>, at: i64, t: (Time, Time)) -> Record {
        rec(
            client,
            Op::Get {
                value: v.map(|(v, r)| (v.to_string(), r)),
                at,
            },
            t.0,
            Some(t.1),
        )
    }

    fn events(h: &[Record]) -> Vec<Event> {
        let mut out: Vec<Event> = h
            .iter()
            .filter_map(|r| match &r.op {
                Op::Put {
                    value,
                    ok: Some(rev),
                } => Some(Event {
                    revision: *rev,
                    key: r.key.clone(),
                    value: Some(value.clone()),
                }),
                _ => None,
            })
            .collect();
        out.sort_by_key(|e| e.revision);
        out
    }

    #[test]
    fn concurrent_orders_are_found() {
        // Two overlapping puts; reads that see them in either order.
        let h = vec![
            put(0, "a", 2, (0, 10)),
            put(1, "b", 3, (1, 11)),
            get(2, Some(("a", 2)), (2, 5)),
            get(3, Some(("b", 3)), (12, 13)),
        ];
        assert!(check_linearizable(&h).is_empty());
        let cas = rec(
            1,
            Op::Cas {
                expect: Some("b".into()),
                value: "c".into(),
                outcome: Some((true, 4)),
            },
            14,
            Some(15),
        );
        let mut h2 = h.clone();
        h2.push(cas);
        h2.push(get(0, Some(("c", 4)), (16, 17)));
        assert!(check_linearizable(&h2).is_empty());
    }

    #[test]
    fn a_stale_read_is_caught() {
        // The put returned before the get began, and the get missed it.
        let h = vec![
            put(0, "a", 2, (0, 10)),
            put(1, "b", 3, (20, 30)),
            get(2, Some(("a", 2)), (33, 40)),
        ];
        let v = check_linearizable(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].to_string().contains("key k"));
        // By revisions: served at 2 after a write at 3 had returned.
        let p = check_revisions(&h, &events(&h));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("served at revision 2"), "{p:?}");
        // A read that claims a later revision but shows the old value.
        let lying = vec![
            h[0].clone(),
            h[1].clone(),
            get_at(2, Some(("a", 2)), 3, (33, 40)),
        ];
        let p = check_revisions(&lying, &events(&lying));
        assert!(p.iter().any(|p| p.contains("the key was")), "{p:?}");
    }

    #[test]
    fn revisions_of_a_good_history() {
        let h = vec![
            put(0, "a", 2, (0, 10)),
            put(1, "b", 3, (1, 11)),
            get_at(2, Some(("a", 2)), 2, (2, 5)),
            get_at(3, Some(("b", 3)), 3, (12, 13)),
            get_at(3, None, 1, (0, 1)),
        ];
        assert_eq!(check_revisions(&h, &events(&h)), Vec::<String>::new());
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let h = vec![
            put(0, "a", 2, (0, 10)),
            put(1, "b", 3, (20, 30)),
            get(2, Some(("a", 2)), (40, 50)),
        ];
        assert_eq!(check_linearizable(&h).len(), 1);
        // The watch streams never delivered revision 3: caught there too.
        let stream = vec![Event {
            revision: 2,
            key: "k".into(),
            value: Some("a".into()),
        }];
        let p = check_watches(&[("w".into(), stream)], &h[..2], 1, 3);
        assert!(
            p.iter()
                .any(|p| p.contains("no stream delivered revision 3")),
            "{p:?}"
        );
    }

    #[test]
    fn unknown_outcomes_may_apply_or_not() {
        let unknown = rec(
            1,
            Op::Put {
                value: "b".into(),
                ok: None,
            },
            5,
            None,
        );
        let seen = vec![
            put(0, "a", 2, (0, 1)),
            unknown.clone(),
            get(2, Some(("b", 3)), (100, 101)),
        ];
        assert!(check_linearizable(&seen).is_empty());
        let unseen = vec![
            put(0, "a", 2, (0, 1)),
            unknown,
            get(2, Some(("a", 2)), (100, 101)),
        ];
        assert!(check_linearizable(&unseen).is_empty());
        // But a read before its invocation cannot see it.
        let early = vec![
            put(0, "a", 2, (0, 1)),
            get(2, Some(("b", 3)), (2, 3)),
            rec(
                1,
                Op::Put {
                    value: "b".into(),
                    ok: None,
                },
                5,
                None,
            ),
        ];
        assert_eq!(check_linearizable(&early).len(), 1);
    }

    #[test]
    fn failed_cas_and_deletes() {
        let h = vec![
            put(0, "a", 2, (0, 1)),
            rec(
                1,
                Op::Cas {
                    expect: Some("x".into()),
                    value: "c".into(),
                    outcome: Some((false, 2)),
                },
                2,
                Some(3),
            ),
            rec(
                2,
                Op::Delete {
                    outcome: Some((1, 3)),
                },
                4,
                Some(5),
            ),
            get(0, None, (6, 7)),
        ];
        assert!(check_linearizable(&h).is_empty());
        // A CAS that says it failed although its comparison held.
        let mut bad = h.clone();
        bad[1].op = Op::Cas {
            expect: Some("a".into()),
            value: "c".into(),
            outcome: Some((false, 2)),
        };
        assert_eq!(check_linearizable(&bad).len(), 1);
    }

    #[test]
    fn watch_rules() {
        let h = vec![put(0, "a", 2, (0, 1)), put(0, "b", 3, (2, 3))];
        let ev = |revision, v: &str| Event {
            revision,
            key: "k".into(),
            value: Some(v.into()),
        };
        let good = vec![ev(2, "a"), ev(3, "b")];
        assert!(check_watches(&[("w".into(), good.clone())], &h, 1, 3).is_empty());
        let reordered = vec![ev(3, "b"), ev(2, "a")];
        assert!(!check_watches(&[("w".into(), reordered)], &h, 1, 3).is_empty());
        let dup = vec![ev(2, "a"), ev(2, "a"), ev(3, "b")];
        assert!(!check_watches(&[("w".into(), dup)], &h, 1, 3).is_empty());
        let foreign = vec![ev(2, "a"), ev(3, "zzz")];
        let p = check_watches(&[("w".into(), foreign)], &h, 1, 3);
        assert!(p.iter().any(|p| p.contains("nobody wrote")), "{p:?}");
        let other = vec![ev(2, "a"), ev(3, "a")];
        assert!(!check_watches(&[("w".into(), good), ("v".into(), other)], &h, 1, 3).is_empty());
    }
}
