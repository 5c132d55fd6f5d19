//! etcdserverpb.Watch: one task per stream serves all of the stream's
//! watches. It delivers each watch's events in revision order from the
//! hub's buffer, or from the history table when the watch is behind the
//! buffer; it waits (backpressure) rather than drop when the client reads
//! slowly. Progress requests are answered once every watch on the stream
//! has caught up, with watch_id -1, as etcd does.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Identity;
use crate::backend::{EventRow, KeyEnd};
use crate::error::Error;
use crate::metrics;
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::proto::etcdserverpb::watch_server::Watch;
use crate::proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use crate::proto::mvccpb::{Event, event::EventType};
use crate::selector::{Catalog, Selector};
use crate::watch::{Hub, Mark, Slice};

/// Events per response; a revision is never split unless it alone is larger.
const MAX_EVENTS: usize = 1000;
/// Revisions per history read for a watch behind the buffer.
const RESYNC_WINDOW: i64 = 1000;
/// etcd's mvcc error for a reused watch id.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// etcd's mvcc error for a range without keys (key at or after range_end).
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";

pub struct WatchService {
    pub hub: Arc<Hub>,
    /// Reads labels and fields of events for watches with selectors.
    pub catalog: Arc<Catalog>,
    /// Watches start only on keys their sender may read.
    pub auth: Arc<crate::auth::Auth>,
    pub id: Identity,
    /// etcd's --experimental-watch-progress-notify-interval (see
    /// [`progress_interval`]).
    pub progress_interval: Duration,
    /// Set when the server stops: every stream ends.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// The interval etcd uses for a configured one: 0 keeps the default (10
/// minutes), and nothing is shorter than 100 ms.
pub fn progress_interval(configured: Duration) -> Duration {
    const DEFAULT: Duration = Duration::from_secs(600);
    const MIN: Duration = Duration::from_millis(100);
    if configured.is_zero() {
        DEFAULT
    } else {
        configured.max(MIN)
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ResponseStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let cert_name = self
            .auth
            .enabled()
            .then(|| req.peer_certs())
            .flatten()
            .and_then(|certs| {
                certs
                    .first()
                    .and_then(|c| super::auth::common_name(c.as_ref()))
            });
        let stream = WatchStream {
            hub: self.hub.clone(),
            catalog: self.catalog.clone(),
            auth: self.auth.clone(),
            metadata: req.metadata().clone(),
            cert_name,
            id: self.id,
            tx,
            watchers: BTreeMap::new(),
            compacted_ids: Default::default(),
            next_id: 0,
            progress_pending: false,
            mark: self.hub.stream_mark(),
        };
        let mut stop = self.stop.clone();
        let interval = progress_interval(self.progress_interval);
        tokio::spawn(async move {
            let tx = stream.tx.clone();
            tokio::select! {
                () = stream.run(req.into_inner(), interval) => {}
                _ = stop.wait_for(|s| *s) => {
                    // Ends the response stream, as a stopping etcd member
                    // does: the client moves to another endpoint.
                    let _ = tx.try_send(Err(Status::unavailable("etcdserver: server stopped")));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Watcher {
    key: Vec<u8>,
    end: KeyEnd,
    /// The next revision to deliver.
    next: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// Nothing was sent to it since the last progress tick (etcd's
    /// `progress` flag): the next tick notifies it.
    quiet: bool,
    /// Events whose new or old object matches (WatchCreateRequest 9/10).
    selector: Option<Selector>,
    /// The compacted revision as last read. An event at or below it gets
    /// no prev_kv: etcd reads the previous version at the revision before
    /// the event's, which is compacted then.
    compacted: i64,
}

impl Watcher {
    fn wants(&self, e: &EventRow, catalog: &Catalog) -> bool {
        self.end.contains(&self.key, &e.kv.key)
            && !(e.deleted && self.no_delete)
            && (e.deleted || !self.no_put)
            && self.selector.as_ref().is_none_or(|s| {
                s.matches_event((!e.deleted).then_some(&e.kv), e.prev.as_ref(), catalog)
            })
    }

    fn event(&self, e: &EventRow) -> Event {
        Event {
            r#type: if e.deleted {
                EventType::Delete as i32
            } else {
                EventType::Put as i32
            },
            kv: Some(e.kv.clone()),
            prev_kv: if self.prev_kv && e.revision > self.compacted {
                e.prev.clone()
            } else {
                None
            },
        }
    }
}

/// The client has gone away.
struct Gone;

impl Drop for WatchStream {
    fn drop(&mut self) {
        metrics::WATCHERS.sub(i64::try_from(self.watchers.len()).unwrap_or(0));
    }
}

struct WatchStream {
    hub: Arc<Hub>,
    catalog: Arc<Catalog>,
    auth: Arc<crate::auth::Auth>,
    /// The stream's metadata and client certificate's name: who creates
    /// its watches.
    metadata: tonic::metadata::MetadataMap,
    cert_name: Option<String>,
    id: Identity,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    /// Watches ended by a compaction that the client has not cancelled:
    /// etcd keeps their ids taken until it does.
    compacted_ids: std::collections::BTreeSet<i64>,
    next_id: i64,
    progress_pending: bool,
    /// How far this stream has queued events, for writes' answers to wait on.
    mark: Arc<Mark>,
}

impl WatchStream {
    async fn run(mut self, mut input: Streaming<WatchRequest>, progress_interval: Duration) {
        let mut revision = self.hub.subscribe();
        let mut ticker = tokio::time::interval(progress_interval);
        ticker.tick().await;
        loop {
            match self.deliver().await {
                Ok(_) if self.watchers.is_empty() => self.mark.exempt(),
                Ok(latest) => self.mark.set(latest),
                Err(Gone) => return,
            }
            tokio::select! {
                msg = input.next() => match msg {
                    Some(Ok(req)) => {
                        if self.handle(req).await.is_err() {
                            return;
                        }
                    }
                    // The client closed the stream or broke it.
                    _ => return,
                },
                changed = revision.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = ticker.tick() => {
                    if self.progress_notify().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// A watch id in use: a live watch's, or one ended by compaction and
    /// not cancelled yet.
    fn taken(&self, id: i64) -> bool {
        self.watchers.contains_key(&id) || self.compacted_ids.contains(&id)
    }

    /// As etcd refuses a watch: created, then canceled with the reason.
    async fn not_created(&self, id: i64, revision: i64, reason: String) -> Result<(), Gone> {
        let mut r = self.response(id, revision);
        r.created = true;
        r.canceled = true;
        r.cancel_reason = reason;
        self.send(r).await
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), Gone> {
        if self.tx.capacity() == 0 {
            // The client reads slowly: writes do not wait for this stream.
            self.mark.exempt();
        }
        self.tx.send(Ok(resp)).await.map_err(|_| Gone)
    }

    fn response(&self, watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse {
            header: self.id.header(revision),
            watch_id,
            ..Default::default()
        }
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Gone> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => {
                // It reads the database; writes meanwhile do not wait.
                self.mark.exempt();
                self.create(c).await
            }
            Some(RequestUnion::CancelRequest(c)) => {
                let live = self.watchers.remove(&c.watch_id).is_some();
                if live {
                    metrics::WATCHERS.dec();
                }
                if live || self.compacted_ids.remove(&c.watch_id) {
                    let mut r = self.response(c.watch_id, self.hub.revision());
                    r.canceled = true;
                    self.send(r).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_pending = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// etcd's isWatchPermitted: the sender may read the watched range. Its
    /// refusal as etcd words it, else `None`.
    async fn refused(&self, c: &WatchCreateRequest) -> Option<String> {
        if !self.auth.enabled() {
            return None;
        }
        let checked = match self
            .auth
            .info(&self.metadata, self.cert_name.as_deref())
            .await
        {
            Ok(ai) => self.auth.check(ai.as_ref(), &c.key, &c.range_end, false),
            Err(e) => Err(e),
        };
        let e = match checked {
            Ok(()) => return None,
            Err(e @ (Error::InvalidAuthToken | Error::AuthOldRevision | Error::UserEmpty)) => e,
            Err(_) => Error::PermissionDenied,
        };
        let status = Status::from(e);
        // grpc-go's text of a status error.
        Some(format!(
            "rpc error: code = {:?} desc = {}",
            status.code(),
            status.message()
        ))
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), Gone> {
        let meta = match self.hub.backend().meta().await {
            Ok(m) => m,
            Err(e) => {
                // Without the database no watch can start: end the stream
                // with the error, as a broken etcd member would.
                let _ = self.tx.send(Err(Error::from(e).into())).await;
                return Err(Gone);
            }
        };
        if let Some(reason) = self.refused(&c).await {
            return self.not_created(-1, meta.revision, reason).await;
        }
        // An empty key is "\0" and a range_end of "\0" means every key
        // from it on, as in etcd.
        let key: &[u8] = if c.key.is_empty() { &[0] } else { &c.key };
        if !c.range_end.is_empty() && c.range_end != [0] && key >= c.range_end.as_slice() {
            return self
                .not_created(-1, meta.revision, EMPTY_RANGE.to_string())
                .await;
        }
        let id = if c.watch_id != 0 {
            if self.taken(c.watch_id) {
                return self
                    .not_created(-1, meta.revision, DUPLICATE_ID.to_string())
                    .await;
            }
            c.watch_id
        } else {
            while self.taken(self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        // 0 (and -1 while nothing is compacted: the compacted revision is
        // then -1) is "from now"; etcd takes any other start below the
        // compacted revision as compacted.
        let compacted = meta.compact_revision;
        let start = match c.start_revision {
            r if r > 0 || (r < 0 && r < compacted) => r,
            _ => meta.revision + 1,
        };
        let filters: Vec<FilterType> = c
            .filters
            .iter()
            .filter_map(|f| FilterType::try_from(*f).ok())
            .collect();
        let selector = match Selector::parse(
            &c.label_selector,
            &c.field_selector,
            &c.key,
            &c.range_end,
            &self.catalog,
        ) {
            Ok(s) => s,
            Err(reason) => {
                return self.not_created(id, meta.revision, reason).await;
            }
        };
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let watcher = Watcher {
            end: KeyEnd::from_range_end(&c.range_end),
            key,
            next: start,
            prev_kv: c.prev_kv,
            no_put: filters.contains(&FilterType::Noput),
            no_delete: filters.contains(&FilterType::Nodelete),
            progress_notify: c.progress_notify,
            quiet: true,
            selector,
            compacted,
        };
        let mut r = self.response(id, meta.revision);
        r.created = true;
        self.send(r).await?;
        if start < compacted {
            return self.compacted(id, compacted).await;
        }
        self.watchers.insert(id, watcher);
        metrics::WATCHERS.inc();
        Ok(())
    }

    /// etcd's answer to a watch below the compacted revision: canceled,
    /// with the compacted revision and (as etcd sends it) header revision 0.
    async fn compacted(&mut self, id: i64, compact: i64) -> Result<(), Gone> {
        if self.watchers.remove(&id).is_some() {
            metrics::WATCHERS.dec();
        }
        self.compacted_ids.insert(id);
        let mut r = self.response(id, 0);
        r.compact_revision = compact;
        r.canceled = true;
        self.send(r).await
    }

    /// Brings every watch up to the hub's revision, then answers a pending
    /// progress request. Returns the revision delivered through.
    async fn deliver(&mut self) -> Result<i64, Gone> {
        let latest = self.hub.revision();
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            if let Some(w) = self.watchers.get(&id).filter(|w| w.next <= latest) {
                metrics::WATCH_BACKLOG.observe((latest - w.next + 1) as f64);
            }
            while let Some(w) = self.watchers.get(&id).filter(|w| w.next <= latest) {
                let (events, covered) = match self.hub.slice(w.next, latest, MAX_EVENTS) {
                    Slice::Events(events) => {
                        let covered = if events.len() >= MAX_EVENTS {
                            events.last().map_or(latest, |e| e.revision)
                        } else {
                            latest
                        };
                        let picked: Vec<Event> = events
                            .iter()
                            .filter(|e| w.wants(e, &self.catalog))
                            .map(|e| w.event(e))
                            .collect();
                        (picked, covered)
                    }
                    Slice::Evicted => match self.resync(id, latest).await? {
                        Some(step) => step,
                        None => break,
                    },
                };
                let Some(w) = self.watchers.get_mut(&id) else {
                    break;
                };
                w.next = covered + 1;
                if !events.is_empty() {
                    metrics::WATCH_EVENTS.inc_by(events.len() as u64);
                    w.quiet = false;
                    let mut r = self.response(id, covered);
                    r.events = events;
                    self.send(r).await?;
                }
            }
        }
        if self.progress_pending && self.watchers.values().all(|w| w.next > latest) {
            self.progress_pending = false;
            self.send(self.response(-1, latest)).await?;
        }
        Ok(latest)
    }

    /// One window of a lagging watch's events from the database. `None`
    /// when the watch ended (compacted) or the database failed (retried on
    /// the next wake-up).
    async fn resync(&mut self, id: i64, latest: i64) -> Result<Option<(Vec<Event>, i64)>, Gone> {
        let Some(w) = self.watchers.get(&id) else {
            return Ok(None);
        };
        let upto = latest.min(w.next - 1 + RESYNC_WINDOW);
        metrics::WATCH_RESYNCS.inc();
        self.mark.exempt();
        let meta = self.hub.backend().meta().await;
        let rows = self.hub.read(w.next - 1, upto, &w.key, &w.end).await;
        if let (Ok(meta), Some(w)) = (&meta, self.watchers.get_mut(&id)) {
            w.compacted = w.compacted.max(meta.compact_revision);
        }
        let Some(w) = self.watchers.get(&id) else {
            return Ok(None);
        };
        match (meta, rows) {
            (Ok(meta), _) if w.next < meta.compact_revision => {
                self.compacted(id, meta.compact_revision).await?;
                Ok(None)
            }
            (Ok(_), Ok(rows)) => {
                let events = rows
                    .iter()
                    .filter(|e| w.wants(e, &self.catalog))
                    .map(|e| w.event(e))
                    .collect();
                Ok(Some((events, upto)))
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, watch = id, "resyncing a watch from history failed; will retry");
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(None)
            }
        }
    }

    /// At each progress tick: empty responses to synced watches that asked
    /// for progress and were sent nothing since the tick before, as etcd.
    async fn progress_notify(&mut self) -> Result<(), Gone> {
        let latest = self.hub.revision();
        let due: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && w.next > latest && w.quiet)
            .map(|(id, _)| *id)
            .collect();
        for w in self.watchers.values_mut() {
            w.quiet = true;
        }
        for id in due {
            self.send(self.response(id, latest)).await?;
        }
        Ok(())
    }
}
