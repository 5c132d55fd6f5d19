//! The Prometheus endpoint: per-RPC latency, batch sizes, watch counts.

use etcd_client::WatchOptions;
use etcdsql_integration::{Process, Target, TestDb, free_port, scrape_metrics as scrape};

use crate::{Case, bin, case};

async fn metrics_endpoint(target: Target) {
    let db = TestDb::create(target).await.unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let p = Process::etcdsql_with(bin(), &db.dsn, &["--listen-metrics-urls", &url])
        .await
        .unwrap();
    let mut c = p.client().await.unwrap();
    c.put("a", "1", None).await.unwrap();
    c.get("a", None).await.unwrap();
    assert!(c.get("", None).await.is_err());
    let mut ws = c.watch("a", Some(WatchOptions::new())).await.unwrap();
    ws.message().await.unwrap();
    c.put("a", "2", None).await.unwrap();
    ws.message().await.unwrap();

    let text = scrape(port).await;
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    for want in [
        "etcdsql_grpc_request_duration_seconds_count{code=\"0\",method=\"etcdserverpb.KV/Put\"} 2",
        "etcdsql_grpc_request_duration_seconds_count{code=\"0\",method=\"etcdserverpb.KV/Range\"}",
        "etcdsql_grpc_request_duration_seconds_count{code=\"3\",method=\"etcdserverpb.KV/Range\"} 1",
        "etcdsql_write_batch_requests_count",
        "etcdsql_watchers 1",
        "etcdsql_watch_events_sent_total 1",
        "etcdsql_watch_hub_revision 3",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // The client URL serves /metrics and /health too (HTTP/1.0 here), with
    // go-grpc-prometheus's counter, as etcd.
    let client_port: u16 = p.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let text = scrape(client_port).await;
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    for want in [
        "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2",
        "grpc_server_handled_total{grpc_code=\"InvalidArgument\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1",
        "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 1",
    ] {
        assert!(
            text.contains(want),
            "missing {want:?} on the client port in\n{text}"
        );
    }
}

pub fn cases() -> Vec<Case> {
    vec![case!("endpoint", &[Target::Sqlite], metrics_endpoint)]
}
