//! Prometheus metrics and the `/metrics` endpoint (`--listen-metrics-urls`).
//! Names carry the `etcdsql_` prefix and unit suffixes. A tower layer on
//! the gRPC server times every RPC and opens a (debug) tracing span for it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    TextEncoder, exponential_buckets,
};
use tokio::net::TcpListener;
use tracing::Instrument;

fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("metric definitions are constant and valid")
}

fn plain_histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("metric definitions are constant and valid")
}

fn plain_counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("metric definitions are constant and valid")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .expect("metric definitions are constant and valid")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("metric definitions are constant and valid")
}

/// 0.1 ms to ~26 s.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0001, 2.0, 19).unwrap_or_default()
}

pub static GRPC_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "etcdsql_grpc_request_duration_seconds",
        "Time to answer a gRPC call (to open the stream, for streaming calls).",
        &["method", "code"],
        latency_buckets(),
    )
});

/// go-grpc-prometheus's counter, as etcd exports it (dashboards and
/// clients read it).
pub static GRPC_HANDLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.",
        &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
    )
});

pub static BATCH_SIZE: LazyLock<Histogram> = LazyLock::new(|| {
    plain_histogram(
        "etcdsql_write_batch_requests",
        "Write requests group-committed in one database transaction.",
        exponential_buckets(1.0, 2.0, 11).unwrap_or_default(),
    )
});

pub static BATCH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    plain_histogram(
        "etcdsql_write_batch_duration_seconds",
        "Time from a batch's first statement to its commit, retries included.",
        latency_buckets(),
    )
});

pub static DB_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "etcdsql_db_errors_total",
        "Database errors by kind (retry, unavailable, rejected, other).",
        &["kind"],
    )
});

pub static DB_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "etcdsql_db_retries_total",
        "Write batches run again after a transient error, by kind.",
        &["kind"],
    )
});

pub static BATCH_PATH: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "etcdsql_write_batches_total",
        "Write batch attempts by path: read (the batch's keys read first), \
         assumed (from what this process last wrote, in one round trip), \
         stale (assumed, and another writer had been first).",
        &["path"],
    )
});

pub static READ_AHEAD: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "etcdsql_read_ahead_keys_total",
        "Keys of queued writes read while the batch before them committed: \
         used (the next batch assumed them) or dropped (another write came \
         between).",
        &["result"],
    )
});

pub static DURABLE_WAITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "etcdsql_durable_waits_total",
        "Reads that saw a commit not yet durable (MySQL without binary log) and \
         waited: for this process's COMMIT in flight (commit), or for a commit \
         of their own (sync).",
        &["how"],
    )
});

pub static RANGE_COUNTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "etcdsql_range_counts_total",
        "Range counts of a whole range at the latest revision taken from an \
         earlier count and the watch hub's events since (kept), or counted \
         again by the database because the hub lacked some (counted).",
        &["source"],
    )
});

pub static WATCHERS: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("etcdsql_watchers", "Watches open on this process."));

pub static WATCH_RESYNCS: LazyLock<IntCounter> = LazyLock::new(|| {
    plain_counter(
        "etcdsql_watch_resync_reads_total",
        "History reads for watches that fell behind the in-memory buffer.",
    )
});

pub static WATCH_DELIVER_TIMEOUTS: LazyLock<IntCounter> = LazyLock::new(|| {
    plain_counter(
        "etcdsql_watch_deliver_timeouts_total",
        "Write answers sent before every watch stream of this process had queued their events.",
    )
});

pub static WATCH_BACKLOG: LazyLock<Histogram> = LazyLock::new(|| {
    plain_histogram(
        "etcdsql_watch_backlog_revisions",
        "How many revisions a watch was behind when its stream was woken.",
        exponential_buckets(1.0, 4.0, 10).unwrap_or_default(),
    )
});

pub static WATCH_EVENTS: LazyLock<IntCounter> = LazyLock::new(|| {
    plain_counter(
        "etcdsql_watch_events_sent_total",
        "Events sent to watchers.",
    )
});

pub static HUB_REVISION: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "etcdsql_watch_hub_revision",
        "Revision up to which this process has read the history for its watchers.",
    )
});

fn gauges(name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    prometheus::GaugeVec::new(Opts::new(name, help), labels)
        .expect("metric definitions are constant and valid")
}

pub static REPLICA_LAG_SECONDS: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    gauges(
        "etcdsql_replica_lag_seconds",
        "How long ago the primary reached a revision this replica has not applied yet (0: caught up).",
        &["replica"],
    )
});

pub static REPLICA_LAG_REVISIONS: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    gauges(
        "etcdsql_replica_lag_revisions",
        "Primary revision minus the replica's, at the last health check.",
        &["replica"],
    )
});

pub static REPLICA_HEALTHY: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    gauges(
        "etcdsql_replica_healthy",
        "1 while the replica is in rotation, 0 while it is out (failing or lagging).",
        &["replica"],
    )
});

pub static READS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "etcdsql_reads_total",
        "Reads by the server that answered them (primary or a replica) and kind (range, watch).",
        &["server", "kind"],
    )
});

pub static FENCES: LazyLock<IntCounter> = LazyLock::new(|| {
    plain_counter(
        "etcdsql_primary_fence_reads_total",
        "Reads of the primary's revision for linearizable replica reads (coalesced).",
    )
});

pub static GATHERED_READS: LazyLock<Histogram> = LazyLock::new(|| {
    plain_histogram(
        "etcdsql_gathered_read_keys",
        "Single-key reads answered together by one statement, per statement, where they had waited for one.",
        exponential_buckets(1.0, 2.0, 9).unwrap_or_default(),
    )
});

/// Registers every metric with the default registry (once, at start).
pub fn register() -> prometheus::Result<()> {
    let r = prometheus::default_registry();
    r.register(Box::new(GRPC_SECONDS.clone()))?;
    r.register(Box::new(GRPC_HANDLED.clone()))?;
    r.register(Box::new(BATCH_SIZE.clone()))?;
    r.register(Box::new(BATCH_SECONDS.clone()))?;
    r.register(Box::new(DB_ERRORS.clone()))?;
    r.register(Box::new(DB_RETRIES.clone()))?;
    r.register(Box::new(BATCH_PATH.clone()))?;
    r.register(Box::new(READ_AHEAD.clone()))?;
    r.register(Box::new(DURABLE_WAITS.clone()))?;
    r.register(Box::new(RANGE_COUNTS.clone()))?;
    r.register(Box::new(WATCHERS.clone()))?;
    r.register(Box::new(WATCH_RESYNCS.clone()))?;
    r.register(Box::new(WATCH_BACKLOG.clone()))?;
    r.register(Box::new(WATCH_DELIVER_TIMEOUTS.clone()))?;
    r.register(Box::new(WATCH_EVENTS.clone()))?;
    r.register(Box::new(HUB_REVISION.clone()))?;
    r.register(Box::new(REPLICA_LAG_SECONDS.clone()))?;
    r.register(Box::new(REPLICA_LAG_REVISIONS.clone()))?;
    r.register(Box::new(REPLICA_HEALTHY.clone()))?;
    r.register(Box::new(READS.clone()))?;
    r.register(Box::new(FENCES.clone()))?;
    r.register(Box::new(GATHERED_READS.clone()))?;
    // process_resident_memory_bytes and the rest, as etcd's Go client
    // library exports them (`etcdctl check datascale` reads that one), come
    // with the default registry (the crate's `process` feature).
    Ok(())
}

/// The kind label of a database error.
pub fn kind(e: &crate::backend::DbError) -> &'static str {
    use crate::backend::DbError;
    match e {
        DbError::Retry(_) => "retry",
        DbError::Unavailable(_) => "unavailable",
        DbError::Rejected(_) => "rejected",
        DbError::Stale => "stale",
        DbError::Existed => "existed",
        DbError::NeedsRead => "needs_read",
        DbError::Other(_) => "other",
    }
}

fn render() -> Vec<u8> {
    let mut out = Vec::new();
    // Encoding to a Vec cannot fail for the text format.
    let _ = TextEncoder::new().encode(&prometheus::gather(), &mut out);
    out
}

/// Serves `GET /metrics` (and `/health`, `/version`) until `stop` resolves.
pub async fn serve(listener: TcpListener, health: Health, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener");
                    continue;
                }
            },
        };
        let health = health.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| {
                let health = health.clone();
                async move {
                    let (path, query) = (req.uri().path(), req.uri().query());
                    let (status, kind, body) = if http_path(path) {
                        http_answer(path, query, &health).await
                    } else {
                        (
                            http::StatusCode::NOT_FOUND,
                            "text/plain",
                            b"not found\n".to_vec(),
                        )
                    };
                    Ok::<_, Infallible>(http_response(status, kind, Full::new(Bytes::from(body))))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}

/// Times every gRPC call and runs it in a `rpc` tracing span. It also
/// gives an oversized request etcd's status (the layer sees every
/// response; see `error::oversized_as_grpc_go`).
#[derive(Clone)]
pub struct RpcLayer {
    pub health: Health,
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            health: self.health.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    health: Health,
}

/// Answers /health: whether the server is healthy, given the alarm names
/// the request excludes (`?exclude=NOSPACE`).
pub type Health = Arc<dyn Fn(Vec<String>) -> BoxFuture<'static, bool> + Send + Sync>;

/// The paths etcd serves over HTTP beside gRPC, on its client URLs and on
/// its metrics URLs.
fn http_path(path: &str) -> bool {
    matches!(path, "/metrics" | "/health" | "/version")
}

/// The answer to a GET of an [`http_path`]: status, content type, body.
/// /health is etcd's: `{"health":"true"}`, or `"false"` with 503; /version
/// names the version Status reports.
async fn http_answer(
    path: &str,
    query: Option<&str>,
    health: &Health,
) -> (http::StatusCode, &'static str, Vec<u8>) {
    const JSON: &str = "application/json";
    match path {
        "/metrics" => (http::StatusCode::OK, "text/plain; version=0.0.4", render()),
        "/health" => {
            let excluded = query
                .unwrap_or_default()
                .split('&')
                .filter_map(|kv| kv.strip_prefix("exclude="))
                .map(str::to_string)
                .collect();
            if health(excluded).await {
                (
                    http::StatusCode::OK,
                    JSON,
                    b"{\"health\":\"true\"}".to_vec(),
                )
            } else {
                let body = b"{\"health\":\"false\"}".to_vec();
                (http::StatusCode::SERVICE_UNAVAILABLE, JSON, body)
            }
        }
        _ => {
            let body = format!(
                "{{\"etcdserver\":\"{}\",\"etcdcluster\":\"{}\"}}",
                crate::service::maintenance::ETCD_VERSION,
                crate::service::maintenance::ETCD_CLUSTER_VERSION
            );
            (http::StatusCode::OK, JSON, body.into_bytes())
        }
    }
}

/// A response of `status` with `body` of content type `kind`.
fn http_response<B>(status: http::StatusCode, kind: &'static str, body: B) -> http::Response<B> {
    let mut resp = http::Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(kind),
    );
    resp
}

/// The method label: etcd's own paths, anything else as "other" so that
/// clients cannot create label values.
fn method_label(path: &str) -> String {
    let known = ["/etcdserverpb.", "/v3lockpb.", "/v3electionpb."]
        .iter()
        .any(|p| path.starts_with(p))
        && path.len() < 64
        && path[1..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '/');
    if known {
        path[1..].to_string()
    } else {
        "other".to_string()
    }
}

/// grpc-go's name of a status code.
fn code_name(code: &str) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    code.parse::<usize>()
        .ok()
        .and_then(|i| NAMES.get(i).copied())
        .unwrap_or("Unknown")
}

/// go-grpc-prometheus's labels of a method path: (type, service, method).
fn grpc_labels(path: &str) -> Option<(&'static str, &str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let kind = match method {
        "Watch" | "LeaseKeepAlive" => "bidi_stream",
        "Snapshot" | "Observe" => "server_stream",
        _ => "unary",
    };
    Some((kind, service, method))
}

/// `GET /metrics`, `/health` and `/version` on the client URLs, as etcd
/// serves them there (over HTTP/1 and HTTP/2).
fn http_endpoint(
    uri: &http::Uri,
    health: &Health,
) -> Option<BoxFuture<'static, http::Response<tonic::body::Body>>> {
    if !http_path(uri.path()) {
        return None;
    }
    let (path, query, health) = (
        uri.path().to_string(),
        uri.query().map(str::to_string),
        health.clone(),
    );
    Some(Box::pin(async move {
        let (status, kind, body) = http_answer(&path, query.as_deref(), &health).await;
        http_response(
            status,
            kind,
            tonic::body::Body::new(Full::new(Bytes::from(body))),
        )
    }))
}

impl<S, B> tower::Service<http::Request<B>> for RpcService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.method() == http::Method::GET
            && let Some(resp) = http_endpoint(req.uri(), &self.health)
        {
            return Box::pin(async move { Ok(resp.await) });
        }
        let m = method(req.uri().path());
        // At debug level: a span per request at info cost several percent
        // of a put's CPU (formatted and stored by the log layer), and a
        // failed request's log line names its method anyway.
        let span = tracing::debug_span!("rpc", method = %m.label);
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let mut resp = fut.await;
                if let Ok(r) = &mut resp {
                    crate::error::oversized_as_grpc_go(r.headers_mut());
                }
                // Errors travel as a trailers-only response: the status is a
                // header; a response without one carries it in its trailers.
                let code = match &resp {
                    Ok(r) => r
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("0"),
                    Err(_) => "transport",
                };
                let seconds = started.elapsed().as_secs_f64();
                if code == "0" {
                    m.ok_seconds.observe(seconds);
                    if let Some(c) = &m.ok_handled {
                        c.inc();
                    }
                } else {
                    GRPC_SECONDS
                        .with_label_values(&[&*m.label, code])
                        .observe(seconds);
                    if let Some((kind, service, name)) = &m.grpc {
                        GRPC_HANDLED
                            .with_label_values(&[kind, &**service, &**name, code_name(code)])
                            .inc();
                    }
                    log_error(
                        &m.label,
                        code,
                        resp.as_ref().ok().map(http::Response::headers),
                    );
                }
                resp
            }
            .instrument(span),
        )
    }
}

/// A method's labels, and its metrics for requests that succeed, looked up
/// once per method rather than on every request.
struct Method {
    label: Arc<str>,
    /// grpc-go's labels (type, service, method); `None` for "other".
    grpc: Option<(&'static str, Box<str>, Box<str>)>,
    ok_seconds: Histogram,
    ok_handled: Option<IntCounter>,
}

static METHODS: LazyLock<RwLock<HashMap<Box<str>, Arc<Method>>>> = LazyLock::new(Default::default);

/// The request path's [`Method`]. Paths labelled "other" are not kept.
fn method(path: &str) -> Arc<Method> {
    if let Some(m) = METHODS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(path)
    {
        return m.clone();
    }
    let label = method_label(path);
    let grpc = grpc_labels(path)
        .filter(|_| label != "other")
        .map(|(k, s, m)| (k, Box::<str>::from(s), Box::<str>::from(m)));
    let m = Arc::new(Method {
        ok_seconds: GRPC_SECONDS.with_label_values(&[label.as_str(), "0"]),
        ok_handled: grpc.as_ref().map(|(kind, service, name)| {
            GRPC_HANDLED.with_label_values(&[kind, &**service, &**name, code_name("0")])
        }),
        grpc,
        label: Arc::from(label),
    });
    if &*m.label != "other" {
        METHODS
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(Box::from(path), m.clone());
    }
    m
}

/// Each failed request once, with its gRPC code and message: server-side
/// failures as warnings, the client's mistakes (refused as etcd refuses
/// them) at info.
fn log_error(method: &str, code: &str, headers: Option<&http::HeaderMap>) {
    let message = headers
        .and_then(|h| h.get("grpc-message"))
        .map(|v| crate::error::percent_decode(v.as_bytes()))
        .unwrap_or_default();
    let name = match code.parse::<i32>() {
        Ok(n) => format!("{:?}", tonic::Code::from_i32(n)),
        Err(_) => code.to_string(),
    };
    match name.as_str() {
        "Unknown" | "DeadlineExceeded" | "Internal" | "Unavailable" | "DataLoss" | "transport" => {
            tracing::warn!(method, code = %name, message, "request failed");
        }
        _ => tracing::info!(method, code = %name, message, "request refused"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_looked_up_once() {
        let first = method("/etcdserverpb.KV/Txn");
        let again = method("/etcdserverpb.KV/Txn");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(&*first.label, "etcdserverpb.KV/Txn");
        let (kind, service, name) = first.grpc.as_ref().expect("grpc-go labels");
        assert_eq!(
            (*kind, &**service, &**name),
            ("unary", "etcdserverpb.KV", "Txn")
        );
        first.ok_seconds.observe(0.001);
        assert!(
            GRPC_SECONDS
                .with_label_values(&["etcdserverpb.KV/Txn", "0"])
                .get_sample_count()
                >= 1
        );
        let other = method("/evil/x");
        assert_eq!(&*other.label, "other");
        assert!(other.grpc.is_none());
        assert!(
            !METHODS
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key("/evil/x")
        );
    }

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(
            method_label("/etcdserverpb.KV/Range"),
            "etcdserverpb.KV/Range"
        );
        assert_eq!(method_label("/evil/x?y"), "other");
        assert_eq!(
            method_label(&format!("/etcdserverpb.{}", "a".repeat(100))),
            "other"
        );
    }
}
