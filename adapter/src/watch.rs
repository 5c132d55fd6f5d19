//! The watch hub: one task per process tails `etcdsql_history` in revision
//! order into a bounded buffer of recent events, and tells watchers how far
//! it got. It wakes on this process's commits at once, on any process's
//! commits where the database pushes them (PostgreSQL LISTEN/NOTIFY), and
//! otherwise polls. A write's answer waits (briefly) until this process's
//! watch streams have queued its events, as etcd queues them on its
//! watchers before it answers.
//!
//! Revisions are gapless and commit in order (the revision-row lock), so a
//! read of revisions `(last, last + n]` that returns revision r has every
//! revision below r too: the hub never skips an event. Watchers that fall
//! behind the buffer read history from the database instead (never dropped).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::backend::{Backend, DbError, EventRow, KeyEnd};
use crate::replicas::Replicas;
use crate::selector::Catalog;
use crate::tasks::Tasks;

/// Revisions read per history query.
const WINDOW: i64 = 1000;

/// Longest wait for this process's batch in flight before history is read
/// anyway (see [`Known::has`]).
const SETTLE: Duration = Duration::from_millis(250);

/// Longest wait of a read for this process's batch in flight (see
/// [`Hub::settled`]): a batch of hot-key writes commits in a few
/// milliseconds; one held behind another process's lock is not waited for.
const READ_SETTLE: Duration = Duration::from_millis(20);

/// Longest wait of a write's answer for this process's watch streams to
/// queue its events (see [`Hub::delivered`]).
const DELIVER_WAIT: Duration = Duration::from_millis(5);

/// Bounds of the in-memory buffer; older events are read from the database.
pub struct BufferLimits {
    pub events: usize,
    pub bytes: usize,
}

impl Default for BufferLimits {
    fn default() -> Self {
        BufferLimits {
            events: 100_000,
            bytes: 64 << 20,
        }
    }
}

struct Buffer {
    events: VecDeque<Arc<EventRow>>,
    bytes: usize,
    /// Every event with a revision at or above this is in `events` (up to
    /// the hub's revision).
    first_rev: i64,
}

pub struct Hub {
    backend: Arc<dyn Backend>,
    /// Where history is read when there are read replicas.
    replicas: Option<Arc<Replicas>>,
    buffer: RwLock<Buffer>,
    /// The revision up to which the buffer holds every event.
    revision: watch::Sender<i64>,
    /// Woken by commits.
    wake: Arc<Notify>,
    limits: BufferLimits,
    /// Learns CRDs written by any process, for selectable fields.
    catalog: Arc<Catalog>,
    /// This process's committer: whether a batch is in flight.
    local: watch::Sender<Local>,
    /// This process's watch streams, and how far each has queued events.
    streams: Streams,
}

/// Where each watch stream has queued its events to.
#[derive(Default)]
struct Streams {
    /// Live streams' marks and ended ones', with how many were live when
    /// ended ones were last dropped.
    marks: Mutex<(Vec<Weak<Mark>>, usize)>,
    /// Woken when a stream's mark moves.
    progress: Arc<Notify>,
    /// Every stream had queued this revision's events (or was exempt).
    delivered: AtomicI64,
}

impl Streams {
    fn register(&self) -> Arc<Mark> {
        let mark = Arc::new(Mark {
            through: AtomicI64::new(Mark::EXEMPT),
            progress: self.progress.clone(),
        });
        let mut guard = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        let (marks, live) = &mut *guard;
        // Ended streams' marks are dropped once they may be half of them,
        // so that opening n streams costs O(n), not O(n²).
        if marks.len() >= 2 * *live + 64 {
            marks.retain(|m| m.strong_count() > 0);
            *live = marks.len();
        }
        marks.push(Arc::downgrade(&mark));
        mark
    }

    async fn delivered(&self, revision: i64) {
        if self.delivered.load(Ordering::Acquire) >= revision {
            return;
        }
        let deadline = tokio::time::Instant::now() + DELIVER_WAIT;
        let behind = |m: &Mark| m.through.load(Ordering::Acquire) < revision;
        // Armed before the first look, so no mark's move is missed.
        let notified = self.progress.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let waiting: Vec<Arc<Mark>> = {
            let marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
            marks
                .0
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|m| behind(m))
                .collect()
        };
        // A mark once passed is not looked at again (marks move forward or
        // turn exempt): a wake-up costs one look, not one per stream.
        let mut next = 0;
        loop {
            while waiting.get(next).is_some_and(|m| !behind(m)) {
                next += 1;
            }
            if next == waiting.len() {
                self.delivered.fetch_max(revision, Ordering::AcqRel);
                return;
            }
            if tokio::time::timeout_at(deadline, notified.as_mut())
                .await
                .is_err()
            {
                crate::metrics::WATCH_DELIVER_TIMEOUTS.inc();
                return;
            }
            notified.set(self.progress.notified());
            notified.as_mut().enable();
        }
    }
}

/// A watch stream's mark: the revision through which it has queued every
/// event for its watches, or [`Mark::EXEMPT`] while it has no watches or
/// cannot keep up (its client reads slowly, or a watch reads history).
pub struct Mark {
    through: AtomicI64,
    progress: Arc<Notify>,
}

impl Mark {
    const EXEMPT: i64 = i64::MAX;

    pub fn set(&self, revision: i64) {
        self.through.store(revision, Ordering::Release);
        self.progress.notify_waiters();
    }

    pub fn exempt(&self) {
        self.set(Self::EXEMPT);
    }
}

#[derive(Clone, Copy, Default)]
struct Local {
    busy: bool,
    /// Batches finished.
    done: u64,
}

/// This process's batch in flight, from its start until its events are
/// with the hub (or the tail was woken for them).
pub struct Committing<'h>(&'h Hub);

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        self.0.local.send_modify(|l| {
            l.busy = false;
            l.done += 1;
        });
    }
}

/// How far the hub got, for deciding whether a commit needs reading.
pub struct Known {
    revision: watch::Receiver<i64>,
    local: watch::Receiver<Local>,
}

impl Known {
    /// Whether the hub holds `revision`, once this process's batch in
    /// flight (if any) has handed its events over: a commit notice often
    /// arrives before the committer hears its COMMIT answered, and reading
    /// back what the committer is about to hand over costs a query.
    pub async fn has(&mut self, revision: i64) -> bool {
        self.settle().await;
        revision <= *self.revision.borrow()
    }

    /// Waits (at most [`SETTLE`]) for the batch in flight to finish.
    async fn settle(&mut self) {
        settle(&mut self.local, SETTLE).await;
    }
}

/// Waits (at most `limit`) for this process's batch in flight, if any, to
/// finish.
async fn settle(local: &mut watch::Receiver<Local>, limit: Duration) {
    let now = *local.borrow_and_update();
    if now.busy {
        let _ = tokio::time::timeout(limit, local.wait_for(|l| l.done > now.done)).await;
    }
}

/// Events a watcher may take from the hub, or where it must go instead.
pub enum Slice {
    Events(Vec<Arc<EventRow>>),
    /// The buffer no longer holds the start: read the database.
    Evicted,
}

impl Hub {
    /// Starts tailing after the current revision.
    pub async fn start(
        tasks: &Tasks,
        backend: Arc<dyn Backend>,
        replicas: Option<Arc<Replicas>>,
        wake: Arc<Notify>,
        limits: BufferLimits,
        catalog: Arc<Catalog>,
    ) -> Result<Arc<Hub>, DbError> {
        let current = backend.meta().await?.revision;
        let hub = Arc::new(Hub {
            buffer: RwLock::new(Buffer {
                events: VecDeque::new(),
                bytes: 0,
                first_rev: current + 1,
            }),
            revision: watch::channel(current).0,
            backend,
            replicas,
            wake,
            limits,
            catalog,
            local: watch::channel(Local::default()).0,
            streams: Streams::default(),
        });
        if let Some(listen) = hub.backend.subscribe(hub.wake.clone(), hub.known()) {
            tasks.spawn("commit listener", listen);
        }
        tasks.spawn("watch hub", tail(Arc::downgrade(&hub)));
        Ok(hub)
    }

    /// Makes the tail look for new commits now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The revision up to which events are known; changes wake receivers.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// For a commit listener.
    pub fn known(&self) -> Known {
        Known {
            revision: self.revision.subscribe(),
            local: self.local.subscribe(),
        }
    }

    /// Returns once this process's batch in flight, if any, has finished
    /// (at most [`READ_SETTLE`]): a read made then sees what that batch
    /// wrote.
    pub async fn settled(&self) {
        settle(&mut self.local.subscribe(), READ_SETTLE).await;
    }

    /// Marks a batch of this process's committer in flight until dropped.
    pub fn committing(&self) -> Committing<'_> {
        self.local.send_modify(|l| l.busy = true);
        Committing(self)
    }

    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Registers a watch stream; it starts exempt.
    pub fn stream_mark(&self) -> Arc<Mark> {
        self.streams.register()
    }

    /// Returns once every watch stream of this process has queued the
    /// events up to `revision` (streams that are exempt excepted), or after
    /// [`DELIVER_WAIT`].
    pub async fn delivered(&self, revision: i64) {
        self.streams.delivered(revision).await;
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Buffered events with revisions in `[from, upto]`, at most `max`
    /// (cut at a revision boundary once `max` is passed).
    pub fn slice(&self, from: i64, upto: i64, max: usize) -> Slice {
        let buffer = self.buffer.read().unwrap_or_else(|e| e.into_inner());
        if from < buffer.first_rev {
            return Slice::Evicted;
        }
        let start = buffer.events.partition_point(|e| e.revision < from);
        let mut out = Vec::new();
        for e in buffer.events.range(start..) {
            if e.revision > upto
                || (out.len() >= max
                    && out
                        .last()
                        .is_some_and(|l: &Arc<EventRow>| l.revision != e.revision))
            {
                break;
            }
            out.push(e.clone());
        }
        Slice::Events(out)
    }

    /// Events from the database, for watchers behind the buffer.
    pub async fn read(
        &self,
        after: i64,
        upto: i64,
        key: &[u8],
        end: &KeyEnd,
    ) -> Result<Vec<EventRow>, DbError> {
        match &self.replicas {
            // The hub got to `upto`, so the primary has it.
            Some(rs) => replica_history(rs, after, upto, Some((key, end))).await,
            None => self.backend.history(after, upto, Some((key, end))).await,
        }
    }

    /// The next events after `last`: from the database, or with replicas,
    /// from one that has reached the primary's revision (all of it: history
    /// is gapless and replicas apply commits in order). Returns them and
    /// the revision they complete.
    async fn next_events(&self, last: i64) -> Result<(Vec<EventRow>, i64), DbError> {
        let Some(rs) = &self.replicas else {
            let events = self.backend.history(last, last + WINDOW, None).await?;
            let newest = events.last().map_or(last, |e| e.revision);
            return Ok((events, newest));
        };
        let target = rs.fence().await?;
        if target <= last {
            return Ok((Vec::new(), last));
        }
        let upto = target.min(last + WINDOW);
        Ok((replica_history(rs, last, upto, None).await?, upto))
    }

    /// Reads every revision committed since the last call into the buffer.
    async fn catch_up(&self) -> Result<(), DbError> {
        loop {
            let last = self.revision();
            let (events, newest) = self.next_events(last).await?;
            if newest <= last {
                return Ok(());
            }
            self.publish(last, newest, events);
        }
    }

    /// Buffers the events of revisions `(after, newest]` (all of them),
    /// those the hub does not hold yet; false if it is not at `after` yet.
    /// The tail reads them from history; the committer hands over its own
    /// batches this way, so they need no reading back. The check and the
    /// append are one step under the buffer's lock, so the two never buffer
    /// an event twice.
    pub fn publish(&self, after: i64, newest: i64, events: Vec<EventRow>) -> bool {
        let mut b = self.buffer.write().unwrap_or_else(|e| e.into_inner());
        let current = *self.revision.borrow();
        if current < after {
            return false;
        }
        if newest <= current {
            return true;
        }
        for e in events.into_iter().filter(|e| e.revision > current) {
            self.catalog
                .observe(&e.kv.key, (!e.deleted).then_some(e.kv.value.as_slice()));
            b.bytes += e.size();
            b.events.push_back(Arc::new(e));
        }
        while b.events.len() > self.limits.events || b.bytes > self.limits.bytes {
            let Some(old) = b.events.pop_front() else {
                break;
            };
            b.bytes -= old.size();
            // Only whole revisions count as held.
            b.first_rev = old.revision + 1;
        }
        self.revision.send_replace(newest);
        crate::metrics::HUB_REVISION.set(newest);
        true
    }
}

/// History in `(after, upto]` from a replica whose revision (read first)
/// has reached `upto`, so that it holds all of it; else from the primary.
async fn replica_history(
    rs: &Replicas,
    after: i64,
    upto: i64,
    range: Option<(&[u8], &KeyEnd)>,
) -> Result<Vec<EventRow>, DbError> {
    rs.read("watch", Some(upto), |b| async move {
        let at = b.meta().await?.revision;
        if at < upto {
            return Ok((Vec::new(), at));
        }
        Ok((b.history(after, upto, range).await?, at))
    })
    .await
}

/// The tailing loop; ends when the hub is dropped.
async fn tail(hub: std::sync::Weak<Hub>) {
    let mut failures = 0u32;
    let mut known = match hub.upgrade() {
        Some(h) => h.known(),
        None => return,
    };
    loop {
        // What this process is committing comes from its committer.
        known.settle().await;
        let Some(h) = hub.upgrade() else { return };
        let wake = h.wake.clone();
        let interval = h.backend.poll_interval();
        match h.catch_up().await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(100) {
                    tracing::warn!(error = %e, failures, "watch hub cannot read history; retrying");
                }
            }
        }
        drop(h);
        let backoff = if failures > 0 {
            Duration::from_millis(200)
        } else {
            interval
        };
        let _ = tokio::time::timeout(backoff, wake.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elapsed(start: tokio::time::Instant) -> Duration {
        tokio::time::Instant::now() - start
    }

    #[tokio::test(start_paused = true)]
    async fn answers_wait_for_streams_that_are_behind_and_only_for_them() {
        let s = Arc::new(Streams::default());
        // No streams, or only exempt ones: no wait.
        let start = tokio::time::Instant::now();
        s.delivered(5).await;
        let exempt = s.register();
        s.delivered(6).await;
        assert_eq!(elapsed(start), Duration::ZERO);

        // A stream at 6 holds up an answer for 7 until it queues 7.
        let behind = s.register();
        behind.set(6);
        let waiting = tokio::spawn({
            let s = s.clone();
            async move {
                let start = tokio::time::Instant::now();
                s.delivered(7).await;
                elapsed(start)
            }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(
            !waiting.is_finished(),
            "returned before the stream queued 7"
        );
        behind.set(7);
        assert_eq!(waiting.await.unwrap(), Duration::from_millis(1));
        // Known delivered: no second look at the streams.
        behind.set(0);
        let start = tokio::time::Instant::now();
        s.delivered(7).await;
        assert_eq!(elapsed(start), Duration::ZERO);

        // A stream that never catches up delays an answer by DELIVER_WAIT at most.
        let before = crate::metrics::WATCH_DELIVER_TIMEOUTS.get();
        let start = tokio::time::Instant::now();
        s.delivered(8).await;
        assert_eq!(elapsed(start), DELIVER_WAIT);
        assert!(crate::metrics::WATCH_DELIVER_TIMEOUTS.get() > before);

        // A stream that goes away, or turns exempt, is not waited for.
        drop(behind);
        let start = tokio::time::Instant::now();
        s.delivered(9).await;
        assert_eq!(elapsed(start), Duration::ZERO);
        exempt.set(9);
        exempt.exempt();
        s.delivered(10).await;
        assert_eq!(elapsed(start), Duration::ZERO);
    }

    #[test]
    fn ended_streams_marks_are_dropped_as_streams_come_and_go() {
        let s = Streams::default();
        let kept: Vec<Arc<Mark>> = (0..100).map(|_| s.register()).collect();
        for _ in 0..10_000 {
            drop(s.register());
        }
        let (len, live) = {
            let m = s.marks.lock().unwrap();
            (
                m.0.len(),
                m.0.iter().filter(|m| m.strong_count() > 0).count(),
            )
        };
        assert_eq!(live, kept.len());
        assert!(
            len <= 2 * kept.len() + 64,
            "{len} marks kept for 100 streams"
        );
    }
}
