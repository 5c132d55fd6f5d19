//! The container image of examples/deploy/Dockerfile, built here from the
//! etcdsql under test and run against PostgreSQL, with etcdctl and (where
//! `KUBE_APISERVER` names one) a kube-apiserver talking to it.

use std::process::Command;
use std::time::{Duration, Instant};

use std::path::Path;

use etcdsql_integration::kube::Apiserver;
use etcdsql_integration::{Target, TestDb, free_port};

use crate::{Case, bin, case};

pub fn cases() -> Vec<Case> {
    vec![case!(
        "image",
        &[Target::Postgres],
        image,
        requires = base_image
    )]
}

/// The Dockerfile's base: the official image, or the one
/// integration/images/build.sh makes where no registry is reachable.
fn base_image() -> Result<(), String> {
    let ok = Command::new("docker")
        .args(["image", "inspect", "debian:bookworm-slim"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(())
        .ok_or_else(|| "no debian:bookworm-slim image (integration/images/build.sh)".into())
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes the container and the image when dropped.
struct Cleanup(String, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
        let _ = Command::new("docker").args(["rmi", "-f", &self.1]).output();
    }
}

async fn image(target: Target) {
    let dir = std::env::temp_dir().join(etcdsql_integration::unique_name("image"));
    std::fs::create_dir_all(&dir).unwrap();
    let dockerfile = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/deploy/Dockerfile");
    std::fs::copy(dockerfile, dir.join("Dockerfile")).unwrap();
    std::fs::copy(bin(), dir.join("etcdsql")).unwrap();
    let tag = format!("etcdsql-it:{}", std::process::id());
    let name = etcdsql_integration::unique_name("etcdsql_image");
    let _cleanup = Cleanup(name.clone(), tag.clone());
    docker(&["build", "-q", "-t", &tag, dir.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);

    let db = TestDb::create(target).await.expect("database");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // The DSN from the environment, as a Secret gives it.
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "-e",
        &format!("ETCDSQL_ENDPOINT={}", db.dsn),
        &tag,
        "--listen-client-urls",
        &url,
        "--auto-migrate",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut c = loop {
        if let Ok(mut c) = etcd_client::Client::connect([url.as_str()], None).await
            && c.put("/image/a", "1", None).await.is_ok()
        {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the image did not serve: {}",
            docker(&["logs", &name])
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let r = c.get("/image/a", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"1");
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([&format!("--endpoints={url}"), "endpoint", "status"])
        .output()
        .expect("etcdctl");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(docker(&["exec", &name, "id", "-u"]), "10001", "not root");
    // The probes' endpoint, over HTTP/1.1 on the client port.
    let health = crate::deploy::http_get(port, "/health").await;
    assert!(
        health.contains("200 OK") && health.contains("\"health\":\"true\""),
        "{health}"
    );
    let kube = match std::env::var("KUBE_APISERVER") {
        Ok(apiserver) => apiserver_on(Path::new(&apiserver), &url).await,
        Err(_) => String::new(),
    };
    eprintln!("image: built from examples/deploy/Dockerfile, served PostgreSQL as uid 10001{kube}");
}

/// kube-apiserver on the etcd API at `url`: creates and reads a configmap.
async fn apiserver_on(bin: &Path, url: &str) -> String {
    let api = Apiserver::start(bin, url).await.expect("kube-apiserver");
    let mut c = api.connect().await.unwrap();
    let (status, body) = c
        .request(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(
                br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"from-image"},"data":{"a":"b"}}"#
                    .to_vec(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let (status, body) = c
        .request(
            "GET",
            "/api/v1/namespaces/default/configmaps/from-image",
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&body).contains(r#""data":{"a":"b"}"#),
        "{}",
        String::from_utf8_lossy(&body)
    );
    format!(
        "; {} on it created and read a configmap",
        Apiserver::version(bin)
    )
}

pub async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
