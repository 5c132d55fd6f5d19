//! The owner of a server's background tasks: the committer, the watch
//! hub's tail and LISTEN, the lease expirer, backfills, purges, the
//! replicas' fence and health checks, partition creation, `/metrics`, the
//! alarm and auth-store polls, the planner-statistics refresh.
//!
//! Every task is spawned here. [`Tasks::stop`] tells them to end; a task
//! spawned with [`Tasks::spawn`] is cancelled at its next await point, one
//! spawned with [`Tasks::spawn_graceful`] watches [`Stop`] itself and ends
//! at a safe point (the committer finishes its batch). [`Tasks::join`]
//! waits for all of them, and aborts what is left after a time limit.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

/// Tells a graceful task that the server is stopping.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Resolves once stopping (at once if already).
    pub async fn stopped(&mut self) {
        let _ = self.0.wait_for(|s| *s).await;
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }
}

/// A cheap handle; clones share the same tasks.
#[derive(Clone)]
pub struct Tasks(Arc<Inner>);

struct Inner {
    set: Mutex<JoinSet<()>>,
    stop: watch::Sender<bool>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks::new()
    }
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks(Arc::new(Inner {
            set: Mutex::new(JoinSet::new()),
            stop: watch::channel(false).0,
        }))
    }

    /// Runs `task` until it ends or the server stops, whichever is first.
    /// Once stopping, nothing new is started.
    pub fn spawn(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.spawn_graceful(name, |mut stop| async move {
            tokio::select! {
                () = task => {}
                () = stop.stopped() => {}
            }
        });
    }

    /// Runs the task that `f` makes from the stop signal; it ends itself.
    pub fn spawn_graceful<F, T>(&self, name: &'static str, f: F)
    where
        F: FnOnce(Stop) -> T,
        T: Future<Output = ()> + Send + 'static,
    {
        let stop = self.signal();
        if stop.is_stopped() {
            tracing::debug!(task = name, "not started: stopping");
            return;
        }
        let task = f(stop);
        let mut set = self.0.set.lock().unwrap_or_else(|e| e.into_inner());
        // Reap what has ended, so that a long-lived server's set stays small.
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            task.await;
            tracing::trace!(task = name, "ended");
        });
    }

    pub fn signal(&self) -> Stop {
        Stop(self.0.stop.subscribe())
    }

    pub fn stop(&self) {
        self.0.stop.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.0.stop.borrow()
    }

    /// Tasks not yet ended.
    pub fn running(&self) -> usize {
        let mut set = self.0.set.lock().unwrap_or_else(|e| e.into_inner());
        while set.try_join_next().is_some() {}
        set.len()
    }

    /// Stops every task and waits up to `limit` for them to end; aborts the
    /// rest. Returns how many had to be aborted.
    pub async fn join(&self, limit: Duration) -> usize {
        self.stop();
        let mut set = std::mem::take(&mut *self.0.set.lock().unwrap_or_else(|e| e.into_inner()));
        let all = async {
            while let Some(r) = set.join_next().await {
                if let Err(e) = r
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "a background task panicked");
                }
            }
        };
        if tokio::time::timeout(limit, all).await.is_ok() {
            return 0;
        }
        let left = set.len();
        set.abort_all();
        while set.join_next().await.is_some() {}
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_cancels_plain_tasks_and_waits_for_graceful_ones() {
        let tasks = Tasks::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tasks.spawn("forever", std::future::pending());
        let done = tx.clone();
        tasks.spawn_graceful("graceful", |mut stop| async move {
            stop.stopped().await;
            // Work after the signal still runs to its end.
            tokio::time::sleep(Duration::from_millis(50)).await;
            done.send("graceful").unwrap();
        });
        assert_eq!(tasks.running(), 2);
        assert_eq!(tasks.join(Duration::from_secs(5)).await, 0);
        assert_eq!(rx.recv().await, Some("graceful"));
        assert_eq!(tasks.running(), 0);
        // Nothing starts once stopped.
        tasks.spawn("late", async move {
            tx.send("late").unwrap();
        });
        assert_eq!(tasks.running(), 0);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn join_aborts_what_ignores_the_signal() {
        let tasks = Tasks::new();
        tasks.spawn_graceful("stubborn", |_| std::future::pending());
        assert_eq!(tasks.join(Duration::from_millis(100)).await, 1);
        assert_eq!(tasks.running(), 0);
    }
}
