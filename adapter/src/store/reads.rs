//! Single-key reads of the latest state, gathered as the committer gathers
//! writes: at most [`RUNNING`] statements run at a time. A read that finds
//! one free runs at once on its own task; reads that arrive while all run
//! wait, and the next free one reads them all in one statement
//! ([`Backend::latest`]). Each is linearizable: its statement starts after
//! the read arrived (with replicas, on one that has reached the primary's
//! revision read after that) and ends before it is answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::backend::{Backend, DbError, Meta};
use crate::proto::mvccpb::KeyValue;
use crate::replicas::Replicas;

/// Statements at a time.
const RUNNING: usize = 4;
/// Keys per statement.
const MAX_KEYS: usize = 256;

/// A key's latest version (`None`: absent) and the revision row it was
/// read with.
pub type Latest = (Meta, Option<KeyValue>);

type Waiting = Vec<(Vec<u8>, oneshot::Sender<Result<Latest, DbError>>)>;

pub struct Reads {
    backend: Arc<dyn Backend>,
    /// With replicas, a statement reads on one that has reached the
    /// primary's revision as of after its reads arrived (the fence).
    replicas: Option<Arc<Replicas>>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: usize,
    waiting: Waiting,
}

/// A running statement's place; when dropped it goes to the reads waiting,
/// or is freed.
struct Slot(Arc<Reads>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        if s.waiting.is_empty() {
            s.running -= 1;
            return;
        }
        let n = s.waiting.len().min(MAX_KEYS);
        let batch: Waiting = s.waiting.drain(..n).collect();
        drop(s);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(serve(Slot(self.0.clone()), batch));
            }
            // The runtime is going away: nobody waits any more.
            Err(_) => self.0.lock().running -= 1,
        }
    }
}

/// Reads `batch` in one statement (the slot held until answered).
async fn serve(slot: Slot, batch: Waiting) {
    // Each distinct key once; `at[i]` is where batch[i]'s key is.
    let mut keys: Vec<Vec<u8>> = Vec::with_capacity(batch.len());
    let mut at = Vec::with_capacity(batch.len());
    {
        let mut index: HashMap<&[u8], usize> = HashMap::with_capacity(batch.len());
        for (k, _) in &batch {
            let next = keys.len();
            let i = *index.entry(k).or_insert(next);
            if i == next {
                keys.push(k.clone());
            }
            at.push(i);
        }
    }
    crate::metrics::GATHERED_READS.observe(batch.len() as f64);
    let read = slot.0.read(&keys).await;
    for ((_, reply), i) in batch.into_iter().zip(at) {
        let answer = match &read {
            Ok(found) => found
                .get(i)
                .cloned()
                .ok_or_else(|| DbError::Other("a gathered read lost its key".into())),
            Err(e) => Err(e.clone()),
        };
        // The reader may have gone away.
        let _ = reply.send(answer);
    }
    drop(slot);
}

impl Reads {
    pub fn new(backend: Arc<dyn Backend>, replicas: Option<Arc<Replicas>>) -> Arc<Reads> {
        Arc::new(Reads {
            backend,
            replicas,
            state: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        super::lock(&self.state)
    }

    async fn read(&self, keys: &[Vec<u8>]) -> Result<Vec<Latest>, DbError> {
        let Some(rs) = &self.replicas else {
            return super::retried(true, || self.backend.latest(keys)).await;
        };
        let fence = rs.fence().await?;
        rs.read("range", Some(fence), |b| async move {
            let primary = Arc::ptr_eq(&b, rs.primary());
            let found = super::retried(primary, || b.latest(keys)).await?;
            // Each partition's statement has its own snapshot.
            let at = found.iter().map(|(m, _)| m.revision).min().unwrap_or(0);
            Ok((found, at))
        })
        .await
    }

    /// `key`'s latest version, read after this call began.
    pub async fn get(self: &Arc<Self>, key: &[u8]) -> Result<Latest, DbError> {
        let waiting = {
            let mut s = self.lock();
            if s.running < RUNNING {
                s.running += 1;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                s.waiting.push((key.to_vec(), tx));
                Some(rx)
            }
        };
        let Some(rx) = waiting else {
            let slot = Slot(self.clone());
            let read = self.read(&[key.to_vec()]).await;
            drop(slot);
            return read?
                .pop()
                .ok_or_else(|| DbError::Other("a read lost its key".into()));
        };
        rx.await
            .unwrap_or_else(|_| Err(DbError::Unavailable("the server is stopping".into())))
    }
}
