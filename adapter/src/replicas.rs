//! Read replicas (`--read-endpoint`): Range and watch reads go to a healthy
//! replica, writes stay on the primary, and reads stay linearizable:
//!
//! - a default (linearizable) Range first learns the primary's revision
//!   ([`Replicas::fence`], one query shared by every request that arrived
//!   before it started), then reads a replica whose snapshot has reached it;
//!   a replica that has not within `--replica-wait` is passed over for the
//!   primary, and so is it by later reads, without waiting, until its
//!   health check sees it there;
//! - a Range at an explicit revision needs a replica at that revision;
//! - a serializable Range takes any healthy replica as it is;
//! - the watch hub reads history from a replica up to the revision the
//!   primary reported (history is gapless and replicas apply commits in
//!   order, so a prefix read from any replica is the same prefix).
//!
//! Behind a proxy tier (`--proxy-tier`: Pgpool-II, pgcat, ProxySQL) the
//! one endpoint is both: fences, writes and primary reads run inside
//! transactions behind `/*NO LOAD BALANCE*/` ([`backend::Primary`]), which
//! the proxies send to the primary, and plain reads outside them, which
//! they balance; the same checks keep those reads linearizable.
//!
//! A health task per replica measures its lag; a replica that fails or lags
//! past `--max-replica-lag` is out of rotation until it is back. With no
//! replica in rotation everything reads the primary.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::backend::{self, Backend, DbError, Dsn};
use crate::metrics;
use crate::tasks::Tasks;

/// How often each replica's health and lag are measured.
const HEALTH_INTERVAL: Duration = Duration::from_millis(250);
/// A health check slower than this counts as a failure.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Settings {
    /// How long a read waits for a replica to reach the revision it needs.
    pub wait: Duration,
    /// Out of rotation past this lag.
    pub max_lag: Duration,
    /// A replica read that takes longer is abandoned and read elsewhere (a
    /// black-holed replica's connections answer nothing, for minutes).
    pub read_timeout: Duration,
}

pub struct Replica {
    /// The DSN without its password (metric label, logs).
    pub name: String,
    dsn: Dsn,
    backend: RwLock<Option<Arc<dyn Backend>>>,
    healthy: AtomicBool,
    /// A revision this replica did not reach within `--replica-wait` (0:
    /// none). Until a health check sees it there, reads that need it or a
    /// later one go elsewhere at once instead of each waiting in vain (a
    /// replica whose replay is paused, under `--max-replica-lag`).
    stalled: AtomicI64,
}

impl Replica {
    fn backend(&self) -> Option<Arc<dyn Backend>> {
        self.backend
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_healthy(&self, healthy: bool, why: &str) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            if healthy {
                tracing::info!(replica = self.name, "replica back in rotation");
            } else {
                tracing::warn!(replica = self.name, why, "replica out of rotation");
            }
        }
        metrics::REPLICA_HEALTHY
            .with_label_values(&[&self.name])
            .set(if healthy { 1.0 } else { 0.0 });
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Known not to have reached revision `min` yet.
    fn stalled_before(&self, min: Option<i64>) -> bool {
        let s = self.stalled.load(Ordering::Relaxed);
        s != 0 && min.is_some_and(|m| m >= s)
    }
}

/// The primary's revision, read once for every request waiting when the
/// read starts.
struct Fence {
    /// Tickets handed out; a read started after ticket t was taken answers t.
    issued: AtomicU64,
    /// (last ticket answered, its revision or error).
    answered: watch::Sender<(u64, Result<i64, String>)>,
    kick: Notify,
}

pub struct Replicas {
    primary: Arc<dyn Backend>,
    replicas: Vec<Arc<Replica>>,
    next: AtomicUsize,
    settings: Settings,
    fence: Fence,
}

impl Replicas {
    /// Starts the fence reader and a health task per replica. Replicas are
    /// connected by their health task, so one that is down at start only
    /// starts out of rotation.
    /// `replicas`: each one's DSN, and its backend where it is already open
    /// (the balanced side of a proxy tier).
    pub fn start(
        tasks: &Tasks,
        primary: Arc<dyn Backend>,
        replicas: Vec<(Dsn, Option<Arc<dyn Backend>>)>,
        settings: Settings,
    ) -> Arc<Replicas> {
        let replicas: Vec<Arc<Replica>> = replicas
            .into_iter()
            .map(|(d, backend)| {
                let r = Arc::new(Replica {
                    name: d.redacted(),
                    dsn: d,
                    backend: RwLock::new(backend),
                    healthy: AtomicBool::new(false),
                    stalled: AtomicI64::new(0),
                });
                metrics::REPLICA_HEALTHY
                    .with_label_values(&[&r.name])
                    .set(0.0);
                r
            })
            .collect();
        let this = Arc::new(Replicas {
            primary,
            replicas,
            next: AtomicUsize::new(0),
            settings,
            fence: Fence {
                issued: AtomicU64::new(0),
                answered: watch::channel((0, Ok(0))).0,
                kick: Notify::new(),
            },
        });
        tasks.spawn("revision fence", fence_reader(Arc::downgrade(&this)));
        tasks.spawn("replica health", primary_sampler(Arc::downgrade(&this)));
        this
    }

    pub fn primary(&self) -> &Arc<dyn Backend> {
        &self.primary
    }

    /// The primary's current revision, as of some moment after this call.
    pub async fn fence(&self) -> Result<i64, DbError> {
        let ticket = self.fence.issued.fetch_add(1, Ordering::SeqCst) + 1;
        self.fence.kick.notify_one();
        let mut rx = self.fence.answered.subscribe();
        loop {
            {
                let (done, r) = &*rx.borrow_and_update();
                if *done >= ticket {
                    return r.clone().map_err(DbError::Unavailable);
                }
            }
            rx.changed()
                .await
                .map_err(|_| DbError::Unavailable("fence reader stopped".into()))?;
        }
    }

    /// Healthy replicas, starting from the next in turn.
    fn rotation(&self) -> Vec<(Arc<Replica>, Arc<dyn Backend>)> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .filter_map(|i| {
                let r = &self.replicas[(start + i) % n];
                if !r.is_healthy() {
                    return None;
                }
                Some((r.clone(), r.backend()?))
            })
            .collect()
    }

    /// Runs `read` on a replica whose snapshot is at revision `min` or
    /// later (any healthy one with `None`), waiting up to `--replica-wait`
    /// for one to get there; otherwise, or on a replica's error, on the
    /// primary. `read` returns its value and the revision of its snapshot.
    pub async fn read<T, F, Fut>(&self, kind: &str, min: Option<i64>, read: F) -> Result<T, DbError>
    where
        F: Fn(Arc<dyn Backend>) -> Fut,
        Fut: Future<Output = Result<(T, i64), DbError>>,
    {
        let deadline = Instant::now() + self.settings.wait;
        let mut pause = Duration::from_millis(1);
        // Replicas read and found behind `min`.
        let mut behind: Vec<Arc<Replica>> = Vec::new();
        loop {
            let rotation: Vec<_> = self
                .rotation()
                .into_iter()
                .filter(|(r, _)| !r.stalled_before(min))
                .collect();
            if rotation.is_empty() {
                break;
            }
            for (replica, b) in rotation {
                let Ok(r) = tokio::time::timeout(self.settings.read_timeout, read(b)).await else {
                    // The health check takes it out of rotation if it stays so.
                    tracing::warn!(replica = replica.name, timeout = ?self.settings.read_timeout,
                        "replica read timed out; trying elsewhere");
                    continue;
                };
                match r {
                    Ok((value, at)) if min.is_none_or(|m| at >= m) => {
                        metrics::READS
                            .with_label_values(&[&replica.name, kind])
                            .inc();
                        return Ok(value);
                    }
                    Ok(_) => {
                        if !behind.iter().any(|r| Arc::ptr_eq(r, &replica)) {
                            behind.push(replica);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(replica = replica.name, error = %e, "replica read failed; trying elsewhere");
                        if matches!(e, DbError::Unavailable(_)) {
                            replica.set_healthy(false, "a read could not reach it");
                        }
                    }
                }
            }
            if Instant::now() + pause > deadline {
                if let Some(m) = min {
                    for r in &behind {
                        if r.stalled
                            .compare_exchange(0, m, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                        {
                            tracing::info!(
                                replica = r.name,
                                revision = m,
                                "replica did not reach a read's revision in time; reads that need it go elsewhere until it does"
                            );
                        }
                    }
                }
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        metrics::READS.with_label_values(&["primary", kind]).inc();
        Ok(read(self.primary.clone()).await?.0)
    }
}

async fn fence_reader(this: std::sync::Weak<Replicas>) {
    let mut answered = 0;
    loop {
        let Some(r) = this.upgrade() else { return };
        if r.fence.issued.load(Ordering::SeqCst) == answered {
            // Timeout only so that a dropped `Replicas` ends this task.
            let _ = tokio::time::timeout(Duration::from_secs(1), r.fence.kick.notified()).await;
            continue;
        }
        // Every ticket up to here was taken before this read starts.
        let ticket = r.fence.issued.load(Ordering::SeqCst);
        metrics::FENCES.inc();
        let mut rev = r.primary.meta().await;
        // A broken pooled connection (a proxy restarting its sessions):
        // reconnect rather than fail every waiting read.
        for attempt in 1..=backend::RECONNECTS {
            if !matches!(rev, Err(DbError::Unavailable(_))) {
                break;
            }
            tokio::time::sleep(backend::reconnect_delay(attempt)).await;
            rev = r.primary.meta().await;
        }
        let rev = rev.map(|m| m.revision).map_err(|e| match e {
            DbError::Unavailable(why) => why,
            e => e.to_string(),
        });
        let _previous = r.fence.answered.send_replace((ticket, rev));
        answered = ticket;
    }
}

/// Samples the primary's revision and checks every replica against it.
async fn primary_sampler(this: std::sync::Weak<Replicas>) {
    // (when the primary was seen at, its revision), oldest first.
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    loop {
        let Some(r) = this.upgrade() else { return };
        let now = Instant::now();
        if let Ok(Ok(m)) = tokio::time::timeout(HEALTH_TIMEOUT, r.primary.meta()).await
            && samples.back().is_none_or(|(_, rev)| *rev != m.revision)
        {
            samples.push_back((now, m.revision));
        }
        // Keep what the lag bound can need, plus the latest.
        while samples.len() > 1
            && samples.front().is_some_and(|(t, _)| {
                now.duration_since(*t) > r.settings.max_lag * 4 + HEALTH_INTERVAL * 4
            })
        {
            samples.pop_front();
        }
        let checks = r
            .replicas
            .iter()
            .map(|rep| check(rep.clone(), &samples, r.settings.max_lag));
        futures::future::join_all(checks).await;
        drop(r);
        tokio::time::sleep(HEALTH_INTERVAL).await;
    }
}

/// One health check: connect if needed, read the replica's revision, and
/// compare it with the primary's samples.
async fn check(rep: Arc<Replica>, samples: &VecDeque<(Instant, i64)>, max_lag: Duration) {
    let b = match rep.backend() {
        Some(b) => b,
        None => match tokio::time::timeout(HEALTH_TIMEOUT, backend::open(&rep.dsn)).await {
            Ok(Ok(b)) => {
                *rep.backend.write().unwrap_or_else(|e| e.into_inner()) = Some(b.clone());
                b
            }
            Ok(Err(e)) => return rep.set_healthy(false, &format!("cannot connect: {e}")),
            Err(_) => return rep.set_healthy(false, "connecting timed out"),
        },
    };
    let rev = match tokio::time::timeout(HEALTH_TIMEOUT, b.meta()).await {
        Ok(Ok(m)) => m.revision,
        Ok(Err(e)) => return rep.set_healthy(false, &format!("health check failed: {e}")),
        Err(_) => return rep.set_healthy(false, "health check timed out"),
    };
    let primary = samples.back().map_or(rev, |(_, p)| *p);
    // Lag in time: since the primary first passed the replica's revision.
    let lag = samples
        .iter()
        .find(|(_, p)| *p > rev)
        .map_or(Duration::ZERO, |(t, _)| t.elapsed());
    metrics::REPLICA_LAG_SECONDS
        .with_label_values(&[&rep.name])
        .set(lag.as_secs_f64());
    metrics::REPLICA_LAG_REVISIONS
        .with_label_values(&[&rep.name])
        .set((primary - rev).max(0) as f64);
    let stalled = rep.stalled.load(Ordering::Relaxed);
    if stalled != 0 && rev >= stalled {
        rep.stalled.store(0, Ordering::Relaxed);
    }
    if lag > max_lag {
        rep.set_healthy(
            false,
            &format!("{:.1} s behind the primary", lag.as_secs_f64()),
        );
    } else {
        rep.set_healthy(true, "");
    }
}
