//! The group committer: one task per process owns the write connection,
//! drains every write request waiting in its queue into one batch, runs the
//! batch as one database transaction and answers each request after the
//! commit. While a batch commits, the next one gathers, so the batch size
//! grows with the load (batch size × commit rate is the write throughput).

use foldhash::{HashSet, HashSetExt};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::batch::{Batch, CommitError, Committed, Extracted, Known, Probe, Write};
use super::lock;
use crate::backend::sql::Param;
use crate::backend::{Backend, DbError, Meta, Writer};
use crate::error::Error;
use crate::metrics;
use crate::proto::mvccpb::KeyValue;
use crate::selector::Catalog;
use crate::tasks::{Stop, Tasks};
use crate::watch::Hub;

/// Requests and bytes per batch: bound the transaction and the memory.
const MAX_BATCH_OPS: usize = 1024;
const MAX_BATCH_BYTES: usize = 32 << 20;
/// Attempts for a batch that hit a serialization failure or deadlock.
const MAX_CONFLICT_RETRIES: u32 = 40;
/// Attempts for a batch whose connection failed before it committed.
const MAX_CONNECT_RETRIES: u32 = crate::backend::RECONNECTS;

/// A submitted request, its answer once evaluated, and where it goes.
struct Job<W: Write> {
    op: W,
    /// Selector columns of its puts, extracted by the caller.
    extracted: Vec<Arc<Extracted>>,
    outcome: Option<Result<W::Out, Error>>,
    reply: Option<oneshot::Sender<Result<W::Out, Error>>>,
}

/// A job with its request type erased, as the batch loop handles it.
#[async_trait]
trait Pending: Send {
    fn size(&self) -> usize;
    fn names(&self, keys: &mut HashSet<Vec<u8>>, leases: &mut HashSet<i64>);
    fn lease_rows(&self) -> bool;
    fn expects_absent(&self, keys: &mut HashSet<Vec<u8>>);
    fn guessable(&self, keys: &mut HashSet<Vec<u8>>);
    fn lasting(&self) -> bool;
    /// Evaluates the request in `b` and keeps its own outcome; a database
    /// error aborts the batch and is returned instead.
    async fn apply(&mut self, b: &mut Batch<'_>) -> Result<(), DbError>;
    /// Answers the kept outcome (the batch committed), or `error`.
    fn answer(&mut self, error: Option<Error>);
}

#[async_trait]
impl<W: Write> Pending for Job<W> {
    fn size(&self) -> usize {
        self.op.size()
    }

    fn names(&self, keys: &mut HashSet<Vec<u8>>, leases: &mut HashSet<i64>) {
        self.op.names(keys, leases);
    }

    fn lease_rows(&self) -> bool {
        self.op.lease_rows()
    }

    fn expects_absent(&self, keys: &mut HashSet<Vec<u8>>) {
        self.op.expects_absent(keys);
    }

    fn guessable(&self, keys: &mut HashSet<Vec<u8>>) {
        self.op.guessable(keys);
    }

    fn lasting(&self) -> bool {
        self.op.lasting()
    }

    async fn apply(&mut self, b: &mut Batch<'_>) -> Result<(), DbError> {
        b.offer(&self.extracted);
        match b.apply(&self.op).await {
            Err(Error::Db(e)) => Err(e),
            r => {
                self.outcome = Some(r);
                Ok(())
            }
        }
    }

    fn answer(&mut self, error: Option<Error>) {
        let outcome = match error {
            Some(e) => Err(e),
            None => self
                .outcome
                .take()
                .unwrap_or_else(|| Err(Error::Internal("answered before evaluated".into()))),
        };
        if let Some(reply) = self.reply.take() {
            // The caller may have gone away; its write stands regardless.
            let _ = reply.send(outcome);
        }
    }
}

type Jobs = [Box<dyn Pending>];

/// Handle to the committer task. The task ends when every handle is
/// dropped, or at the server's stop (after the batch in progress).
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Box<dyn Pending>>,
    hub: Arc<Hub>,
}

impl Committer {
    /// Each committed batch's events go to `hub` before its requests are
    /// answered. `catalog` turns written objects into selector columns.
    pub fn spawn(
        tasks: &Tasks,
        backend: Arc<dyn Backend>,
        hub: Arc<Hub>,
        catalog: Arc<Catalog>,
    ) -> Committer {
        // Bounded: a full queue makes callers wait (backpressure).
        let (tx, rx) = mpsc::channel(16 * MAX_BATCH_OPS);
        tasks.spawn_graceful("committer", {
            let hub = hub.clone();
            |stop| run(backend, rx, hub, catalog, stop)
        });
        Committer { tx, hub }
    }

    /// Commits `op` in the next batch and returns its answer once this
    /// process's watch streams have queued its events (see
    /// [`Hub::delivered`]): through its own revision where its answer
    /// carries one, else through the hub's.
    pub async fn submit<W: Write>(&self, op: W) -> Result<W::Out, Error> {
        self.submit_extracted(op, Vec::new()).await
    }

    /// [`Self::submit`], with the selector columns of `op`'s puts.
    pub async fn submit_extracted<W: Write>(
        &self,
        op: W,
        extracted: Vec<Arc<Extracted>>,
    ) -> Result<W::Out, Error> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            op,
            extracted,
            outcome: None,
            reply: Some(reply),
        };
        self.tx
            .send(Box::new(job))
            .await
            .map_err(|_| Error::Stopping)?;
        let out = rx.await.map_err(|_| Error::Stopping)??;
        let revision = W::revision(&out).unwrap_or_else(|| self.hub.revision());
        self.hub.delivered(revision).await;
        Ok(out)
    }
}

async fn run(
    backend: Arc<dyn Backend>,
    mut rx: mpsc::Receiver<Box<dyn Pending>>,
    hub: Arc<Hub>,
    catalog: Arc<Catalog>,
    mut stop: Stop,
) {
    let mut writer: Option<Box<dyn Writer>> = None;
    // Locked only between awaits: the batch and the read-ahead that runs
    // beside it are polled by this one task.
    let known = Mutex::new(Known::default());
    // Jobs taken while the batch before them ran, their keys read ahead.
    let mut ahead: Vec<Box<dyn Pending>> = Vec::new();
    let mut closed = false;
    loop {
        let mut jobs = std::mem::take(&mut ahead);
        if jobs.is_empty() {
            if closed {
                break;
            }
            let first = tokio::select! {
                biased;
                () = stop.stopped() => break,
                job = rx.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
            };
            jobs.push(first);
        } else if stop.is_stopped() {
            break;
        }
        let assumes = writer.as_ref().is_some_and(|w| w.assumes());
        let mut reads = assumes && jobs.iter().any(|j| needs_read(&known, j.as_ref()));
        let mut bytes: usize = jobs.iter().map(|j| j.size()).sum();
        // Queued behind: while the batch needs no read, a job that would
        // make it read waits for the next one, and so does every job after
        // it (arrival order); its keys are read while this batch runs.
        let mut carried = Vec::new();
        while jobs.len() + carried.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
            let Ok(job) = rx.try_recv() else {
                break;
            };
            bytes += job.size();
            let needs = assumes && needs_read(&known, job.as_ref());
            if !carried.is_empty() || (!reads && needs) {
                carried.push(job);
            } else {
                reads |= needs;
                jobs.push(job);
            }
        }
        let started = std::time::Instant::now();
        let batch = execute(
            backend.as_ref(),
            &catalog,
            &hub,
            &mut writer,
            &known,
            &mut jobs,
        );
        ahead = if assumes {
            read_ahead(
                backend.as_ref(),
                &known,
                &mut rx,
                &mut closed,
                carried,
                batch,
            )
            .await
        } else {
            batch.await;
            carried
        };
        metrics::BATCH_SIZE.observe(jobs.len() as f64);
        metrics::BATCH_SECONDS.observe(started.elapsed().as_secs_f64());
        tracing::trace!(batch = jobs.len(), "committed batch");
    }
    // Requests still queued are answered "stopping" as they are dropped.
    rx.close();
}

/// What `job` lacks for a batch assuming: keys to read first, and whether
/// it needs a read regardless ([`Known::unknown`]).
fn unknown(known: &Mutex<Known>, job: &dyn Pending) -> (Vec<Vec<u8>>, bool) {
    let (mut keys, mut leases) = (HashSet::new(), HashSet::new());
    job.names(&mut keys, &mut leases);
    let k = lock(known);
    let absent = may_be_absent(&k, std::iter::once(job));
    k.unknown(keys, &absent, &leases, job.lease_rows())
}

/// The keys a batch of `jobs` assuming may take as absent where it does
/// not know them: those expected absent, and guesses ([`Known::guessing`]).
fn may_be_absent<'a>(
    known: &Known,
    jobs: impl IntoIterator<Item = &'a dyn Pending>,
) -> HashSet<Vec<u8>> {
    let (mut absent, mut guesses) = (HashSet::new(), HashSet::new());
    let guessing = known.guessing();
    for job in jobs {
        job.expects_absent(&mut absent);
        if guessing {
            job.guessable(&mut guesses);
        }
    }
    absent.extend(guesses.into_iter().filter(|k| !known.maybe_seen(k)));
    absent
}

/// Whether a batch with `job` would read first.
fn needs_read(known: &Mutex<Known>, job: &dyn Pending) -> bool {
    let (keys, regardless) = unknown(known, job);
    regardless || !keys.is_empty()
}

type Read<'a> = BoxFuture<'a, (Vec<Vec<u8>>, Result<Vec<(Meta, Option<KeyValue>)>, DbError>)>;

/// Runs `batch` and meanwhile takes the jobs queued behind it (after
/// `carried`), reading the keys a batch assuming would lack, one statement
/// at a time outside any transaction. What was read goes to `known` where
/// it is still current once the batch is done ([`Known::read_ahead`]), so
/// the next batch needs no read of its own. Answers the jobs taken.
async fn read_ahead<'a>(
    backend: &'a dyn Backend,
    known: &Mutex<Known>,
    rx: &mut mpsc::Receiver<Box<dyn Pending>>,
    closed: &mut bool,
    carried: Vec<Box<dyn Pending>>,
    batch: impl Future<Output = ()>,
) -> Vec<Box<dyn Pending>> {
    let read = |keys: Vec<Vec<u8>>| -> Option<Read<'a>> {
        (!keys.is_empty()).then(|| {
            async move {
                let r = backend.latest_unchecked(&keys).await;
                (keys, r)
            }
            .boxed()
        })
    };
    let keys_of = |jobs: &[Box<dyn Pending>]| -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = jobs
            .iter()
            .flat_map(|j| unknown(known, j.as_ref()).0)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    };
    let mut taken = carried;
    let mut bytes: usize = taken.iter().map(|j| j.size()).sum();
    let mut reading = read(keys_of(&taken));
    let mut done = Vec::new();
    tokio::pin!(batch);
    loop {
        let room = taken.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES && !*closed;
        tokio::select! {
            biased;
            () = &mut batch => break,
            r = async {
                match reading.as_mut() {
                    Some(r) => r.await,
                    None => std::future::pending().await,
                }
            }, if reading.is_some() => {
                done.push(r);
                reading = None;
            }
            job = rx.recv(), if reading.is_none() && room => {
                let Some(job) = job else {
                    *closed = true;
                    continue;
                };
                let from = taken.len();
                bytes += job.size();
                taken.push(job);
                while taken.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
                    let Ok(job) = rx.try_recv() else {
                        break;
                    };
                    bytes += job.size();
                    taken.push(job);
                }
                reading = read(keys_of(&taken[from..]));
            }
        }
    }
    if let Some(r) = reading {
        done.push(r.await);
    }
    let mut k = lock(known);
    for (keys, r) in done {
        match r {
            Ok(read) => {
                let took = k.read_ahead(read, &keys);
                metrics::READ_AHEAD
                    .with_label_values(&["used"])
                    .inc_by(took as u64);
                metrics::READ_AHEAD
                    .with_label_values(&["dropped"])
                    .inc_by((keys.len() - took) as u64);
            }
            // The next batch reads what it lacks itself.
            Err(e) => tracing::debug!(error = %e, "read-ahead failed"),
        }
    }
    taken
}

/// A failed attempt; `after_commit_sent` marks failures whose outcome is
/// unknown (the COMMIT may have reached the database).
struct Failure {
    error: DbError,
    after_commit_sent: bool,
    /// With `after_commit_sent`: how to find out (the jobs keep their
    /// answers for the case it did).
    probe: Option<Probe>,
}

/// Runs `jobs` as one transaction, retrying conflicts, and answers each;
/// the events of what committed reach `hub` first.
async fn execute(
    backend: &dyn Backend,
    catalog: &Catalog,
    hub: &Hub,
    writer: &mut Option<Box<dyn Writer>>,
    known: &Mutex<Known>,
    jobs: &mut Jobs,
) {
    let _committing = hub.committing();
    let mut may_assume = true;
    let mut conflicts = 0;
    let mut broken = 0;
    let fail = |jobs: &mut Jobs, error: DbError| {
        tracing::error!(%error, batch = jobs.len(), "write batch failed");
        for job in jobs.iter_mut() {
            job.answer(Some(Error::Db(error.clone())));
        }
    };
    loop {
        let assume = may_assume && lock(known).usable();
        let failure = match attempt(backend, catalog, writer, known, assume, jobs).await {
            Ok(mut c) => {
                metrics::BATCH_PATH
                    .with_label_values(&[if c.assumed { "assumed" } else { "read" }])
                    .inc();
                lock(known).absorb(&mut c);
                let published = c.end > c.start
                    && c.events
                        .is_some_and(|events| hub.publish(c.start, c.end, events));
                if c.end > c.start && !published {
                    hub.wake();
                }
                return answer(jobs);
            }
            Err(f) => f,
        };
        // Nothing of the batch was written; it runs again, reading first.
        match failure.error {
            DbError::Stale => {
                // Another writer was first.
                metrics::BATCH_PATH.with_label_values(&["stale"]).inc();
                lock(known).stale();
                may_assume = false;
                continue;
            }
            DbError::Existed => {
                // A key taken as absent exists; the rest held.
                metrics::BATCH_PATH.with_label_values(&["existed"]).inc();
                lock(known).existed();
                may_assume = false;
                continue;
            }
            DbError::NeedsRead => {
                may_assume = false;
                continue;
            }
            _ => lock(known).forget(),
        }
        let kind = metrics::kind(&failure.error);
        metrics::DB_ERRORS.with_label_values(&[kind]).inc();
        match failure.error {
            DbError::Retry(ref why) if conflicts < MAX_CONFLICT_RETRIES => {
                conflicts += 1;
                metrics::DB_RETRIES.with_label_values(&[kind]).inc();
                tracing::debug!(attempt = conflicts, %why, "write conflict, retrying batch");
                tokio::time::sleep(backoff(conflicts)).await;
            }
            DbError::Unavailable(ref why)
                if failure.after_commit_sent
                    && failure.probe.is_some()
                    && broken < MAX_CONNECT_RETRIES =>
            {
                // The COMMIT went out and the connection broke: find out.
                let Some(probe) = failure.probe else {
                    continue;
                };
                let mut outcome = Err(DbError::Unavailable(why.clone()));
                while broken < MAX_CONNECT_RETRIES {
                    broken += 1;
                    tokio::time::sleep(crate::backend::reconnect_delay(broken)).await;
                    outcome = committed(backend, writer, &probe).await;
                    if !matches!(outcome, Err(DbError::Unavailable(_))) {
                        break;
                    }
                }
                match outcome {
                    Ok(true) => {
                        tracing::warn!(%why, "the connection broke during COMMIT; the batch had committed");
                        for (key, value) in &probe.crd_writes {
                            catalog.observe_write(key, value.as_deref());
                        }
                        hub.wake();
                        return answer(jobs);
                    }
                    Ok(false) => {
                        tracing::warn!(%why, "the connection broke during COMMIT; the batch had not committed, retrying");
                        metrics::DB_RETRIES.with_label_values(&[kind]).inc();
                    }
                    Err(e) => {
                        return fail(
                            jobs,
                            DbError::Unavailable(format!(
                                "{why}; the write may or may not have been applied ({e})"
                            )),
                        );
                    }
                }
            }
            DbError::Unavailable(ref why)
                if !failure.after_commit_sent && broken < MAX_CONNECT_RETRIES =>
            {
                broken += 1;
                metrics::DB_RETRIES.with_label_values(&[kind]).inc();
                tracing::warn!(attempt = broken, %why, "database unavailable, retrying batch");
                tokio::time::sleep(crate::backend::reconnect_delay(broken)).await;
            }
            DbError::Rejected(_) | DbError::Other(_) if jobs.len() > 1 => {
                // Something in the batch is refused by the database: run each
                // request alone so that only the culprit fails.
                for job in jobs.chunks_mut(1) {
                    Box::pin(execute(backend, catalog, hub, writer, known, job)).await;
                }
                return;
            }
            error => {
                let error = match error {
                    DbError::Unavailable(why) if failure.after_commit_sent => DbError::Unavailable(
                        format!("{why}; the write may or may not have been applied"),
                    ),
                    e => e,
                };
                return fail(jobs, error);
            }
        }
    }
}

/// The batch committed: each job gets its own answer.
fn answer(jobs: &mut Jobs) {
    for job in jobs.iter_mut() {
        job.answer(None);
    }
}

/// Exponential from 1 ms to 64 ms, with jitter so that competing writers
/// (other etcdsql processes, other Galera nodes) do not collide again.
fn backoff(attempt: u32) -> Duration {
    let base = 1u64 << attempt.min(6);
    let jitter = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_micros())
            .unwrap_or_default(),
    ) % (base * 1000);
    Duration::from_micros(base * 1000 / 2 + jitter / 2)
}

async fn attempt(
    backend: &dyn Backend,
    catalog: &Catalog,
    writer: &mut Option<Box<dyn Writer>>,
    known: &Mutex<Known>,
    assume: bool,
    jobs: &mut Jobs,
) -> Result<Committed, Failure> {
    let w = match writer {
        Some(w) => w,
        None => writer.insert(backend.writer().await.map_err(|error| Failure {
            error,
            after_commit_sent: false,
            probe: None,
        })?),
    };
    let outcome = run_batch(w.as_mut(), catalog, known, assume, jobs).await;
    if outcome.is_err() {
        w.rollback().await;
    }
    outcome
}

async fn run_batch(
    w: &mut dyn Writer,
    catalog: &Catalog,
    known: &Mutex<Known>,
    assume: bool,
    jobs: &mut Jobs,
) -> Result<Committed, Failure> {
    let before = |error| Failure {
        error,
        after_commit_sent: false,
        probe: None,
    };
    let (mut keys, mut leases) = (HashSet::new(), HashSet::new());
    for job in jobs.iter() {
        job.names(&mut keys, &mut leases);
    }
    // A batch may run on what this process last wrote, in one round trip,
    // unless it reads lease rows or names a lease not seen to exist.
    let generation = catalog.generation();
    w.durable(jobs.iter().any(|j| j.lasting()));
    lock(known).set_tells_existed(w.tells_existed());
    let held = lock(known).held_rows(&keys, generation);
    let assume = assume
        && w.assumes()
        && !jobs.iter().any(|j| j.lease_rows())
        && lock(known).knows_leases(&leases);
    let mut batch = if assume {
        let absent = may_be_absent(&lock(known), jobs.iter().map(AsRef::as_ref));
        let assumed = lock(known).assume(keys, &leases).ok_or(DbError::Stale);
        match assumed {
            Ok(assumed) => Batch::begin_assuming(w, catalog, assumed, absent).await,
            Err(e) => Err(e),
        }
    } else {
        Batch::begin(w, catalog, keys, leases).await
    }
    .map_err(before)?;
    batch.hold(held, generation);
    for job in jobs.iter_mut() {
        job.apply(&mut batch).await.map_err(before)?;
    }
    match batch.commit().await {
        Ok(c) => Ok(c),
        Err(CommitError {
            error,
            after_commit_sent,
            probe,
        }) => Err(Failure {
            error,
            after_commit_sent,
            probe,
        }),
    }
}

/// Whether the batch that wrote `probe` committed: read under the
/// revision-row lock, which its transaction held until it ended.
async fn committed(
    backend: &dyn Backend,
    writer: &mut Option<Box<dyn Writer>>,
    probe: &Probe,
) -> Result<bool, DbError> {
    let w = match writer {
        Some(w) => w,
        None => writer.insert(backend.writer().await?),
    };
    let r = async {
        w.begin().await?;
        let rows = w
            .rows(&backend.statement(
                "SELECT batch FROM etcdsql_history WHERE revision = ? AND sub = ?",
                &[Param::Int(probe.revision), Param::Int(i64::from(probe.sub))],
            ))
            .await?;
        Ok(match rows.first() {
            None => false,
            Some(r) => r.int_opt(0)? == Some(probe.batch),
        })
    }
    .await;
    w.rollback().await;
    // Found committed, it may not be durable yet (see `Backend::durable`).
    if let Ok(true) = r {
        backend.durable(probe.revision).await?;
    }
    r
}
