//! The group committer: one task per process owns the write connection,
//! drains every write request waiting in its queue into one batch, runs the
//! batch as one database transaction and answers each request after the
//! commit. While a batch commits, the next one gathers, so the batch size
//! grows with the load (batch size × commit rate is the write throughput).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use super::batch::{Batch, CommitError, Probe, WriteOp, WriteResult};
use crate::backend::sql::Param;
use crate::backend::{Backend, DbError, Writer};
use crate::error::Error;
use crate::metrics;
use crate::selector::Catalog;

/// Requests and bytes per batch: bound the transaction and the memory.
const MAX_BATCH_OPS: usize = 1024;
const MAX_BATCH_BYTES: usize = 32 << 20;
/// Attempts for a batch that hit a serialization failure or deadlock.
const MAX_CONFLICT_RETRIES: u32 = 40;
/// Attempts for a batch whose connection failed before it committed.
const MAX_CONNECT_RETRIES: u32 = 3;

struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteResult, Error>>,
}

/// Handle to the committer task; the task ends when every handle is dropped.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

impl Committer {
    /// `committed` is notified after every batch, for the watch hub.
    /// `catalog` turns written objects into selector columns.
    pub fn spawn(
        backend: Arc<dyn Backend>,
        committed: Arc<Notify>,
        catalog: Arc<Catalog>,
    ) -> Committer {
        // Bounded: a full queue makes callers wait (backpressure).
        let (tx, rx) = mpsc::channel(16 * MAX_BATCH_OPS);
        tokio::spawn(run(backend, rx, committed, catalog));
        Committer { tx }
    }

    pub async fn submit(&self, op: WriteOp) -> Result<WriteResult, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { op, reply })
            .await
            .map_err(|_| Error::Stopping)?;
        rx.await.map_err(|_| Error::Stopping)?
    }
}

async fn run(
    backend: Arc<dyn Backend>,
    mut rx: mpsc::Receiver<Job>,
    committed: Arc<Notify>,
    catalog: Arc<Catalog>,
) {
    let mut writer: Option<Box<dyn Writer>> = None;
    while let Some(first) = rx.recv().await {
        let mut bytes = first.op.size();
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(job) => {
                    bytes += job.op.size();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let (ops, replies): (Vec<WriteOp>, Vec<_>) =
            jobs.into_iter().map(|j| (j.op, j.reply)).unzip();
        let started = std::time::Instant::now();
        let results = execute(backend.as_ref(), &catalog, &mut writer, &ops).await;
        committed.notify_one();
        metrics::BATCH_SIZE.observe(ops.len() as f64);
        metrics::BATCH_SECONDS.observe(started.elapsed().as_secs_f64());
        tracing::trace!(batch = ops.len(), "committed batch");
        for (reply, result) in replies.into_iter().zip(results) {
            // The caller may have gone away; its write stands regardless.
            let _ = reply.send(result);
        }
    }
}

/// A failed attempt; `after_commit_sent` marks failures whose outcome is
/// unknown (the COMMIT may have reached the database).
struct Failure {
    error: DbError,
    after_commit_sent: bool,
    /// With `after_commit_sent`: how to find out, and the answers if it did.
    unknown: Option<(Probe, Vec<Result<WriteResult, Error>>)>,
}

/// Runs `ops` as one transaction, retrying conflicts; one result per op.
async fn execute(
    backend: &dyn Backend,
    catalog: &Catalog,
    writer: &mut Option<Box<dyn Writer>>,
    ops: &[WriteOp],
) -> Vec<Result<WriteResult, Error>> {
    let mut conflicts = 0;
    let mut broken = 0;
    loop {
        let failure = match attempt(backend, catalog, writer, ops).await {
            Ok(results) => return results,
            Err(f) => f,
        };
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
                    && failure.unknown.is_some()
                    && broken < MAX_CONNECT_RETRIES =>
            {
                // The COMMIT went out and the connection broke: find out.
                let Some((probe, results)) = failure.unknown else {
                    continue;
                };
                let mut outcome = Err(DbError::Unavailable(why.clone()));
                while broken < MAX_CONNECT_RETRIES {
                    broken += 1;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(broken))).await;
                    outcome = committed(backend, writer, &probe).await;
                    if !matches!(outcome, Err(DbError::Unavailable(_))) {
                        break;
                    }
                }
                match outcome {
                    Ok(true) => {
                        tracing::warn!(%why, "the connection broke during COMMIT; the batch had committed");
                        return results;
                    }
                    Ok(false) => {
                        tracing::warn!(%why, "the connection broke during COMMIT; the batch had not committed, retrying");
                        metrics::DB_RETRIES.with_label_values(&[kind]).inc();
                    }
                    Err(e) => {
                        let error = DbError::Unavailable(format!(
                            "{why}; the write may or may not have been applied ({e})"
                        ));
                        tracing::error!(%error, batch = ops.len(), "write batch failed");
                        return ops.iter().map(|_| Err(Error::Db(error.clone()))).collect();
                    }
                }
            }
            DbError::Unavailable(ref why)
                if !failure.after_commit_sent && broken < MAX_CONNECT_RETRIES =>
            {
                broken += 1;
                metrics::DB_RETRIES.with_label_values(&[kind]).inc();
                tracing::warn!(attempt = broken, %why, "database unavailable, retrying batch");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(broken))).await;
            }
            DbError::Rejected(_) | DbError::Other(_) if ops.len() > 1 => {
                // Something in the batch is refused by the database: run each
                // request alone so that only the culprit fails.
                let mut out = Vec::with_capacity(ops.len());
                for op in ops {
                    out.extend(
                        Box::pin(execute(backend, catalog, writer, std::slice::from_ref(op))).await,
                    );
                }
                return out;
            }
            error => {
                let error = match error {
                    DbError::Unavailable(why) if failure.after_commit_sent => DbError::Unavailable(
                        format!("{why}; the write may or may not have been applied"),
                    ),
                    e => e,
                };
                tracing::error!(%error, batch = ops.len(), "write batch failed");
                return ops.iter().map(|_| Err(Error::Db(error.clone()))).collect();
            }
        }
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
    ops: &[WriteOp],
) -> Result<Vec<Result<WriteResult, Error>>, Failure> {
    let w = match writer {
        Some(w) => w,
        None => writer.insert(backend.writer().await.map_err(|error| Failure {
            error,
            after_commit_sent: false,
            unknown: None,
        })?),
    };
    let outcome = run_batch(w.as_mut(), catalog, ops).await;
    if outcome.is_err() {
        w.rollback().await;
    }
    outcome
}

async fn run_batch(
    w: &mut dyn Writer,
    catalog: &Catalog,
    ops: &[WriteOp],
) -> Result<Vec<Result<WriteResult, Error>>, Failure> {
    let before = |error| Failure {
        error,
        after_commit_sent: false,
        unknown: None,
    };
    let mut batch = Batch::begin(w, catalog, ops).await.map_err(before)?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        match batch.apply(op).await {
            Err(Error::Db(e)) => return Err(before(e)),
            r => results.push(r),
        }
    }
    match batch.commit().await {
        Ok(_) => Ok(results),
        Err(CommitError {
            error,
            after_commit_sent,
            probe,
        }) => Err(Failure {
            error,
            after_commit_sent,
            unknown: probe.map(|p| (p, results)),
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
    r
}
