//! A kube-apiserver on an etcd API endpoint, and a small HTTPS client for
//! its REST API: one HTTP/1.1 connection per client, kept alive.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

use crate::free_port;
use crate::servers::Child;

/// The bearer token of the apiserver's static admin user.
pub const TOKEN: &str = "etcdsql-kube-token";

pub struct Apiserver {
    child: Child,
    pub port: u16,
    tls: Arc<rustls::ClientConfig>,
}

impl Apiserver {
    /// Starts `bin` on the etcd API at `etcd` (`host:port` or a URL) and
    /// waits until `/readyz` answers 200 and the `default` namespace exists.
    pub async fn start(bin: &Path, etcd: &str) -> anyhow::Result<Apiserver> {
        let dir = std::env::temp_dir().join(crate::unique_name("kube_apiserver"));
        std::fs::create_dir_all(&dir)?;
        let key = dir.join("sa.key");
        let ok = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!("openssl genrsa failed");
        }
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{TOKEN},admin,admin,system:masters\n"),
        )?;
        let etcd = if etcd.contains("://") {
            etcd.to_string()
        } else {
            format!("http://{etcd}")
        };
        let port = free_port();
        let child = Child::spawn(
            dir.clone(),
            "apiserver.log",
            "-TERM",
            Command::new(bin)
                .args(["--etcd-servers", &etcd, "--bind-address", "127.0.0.1"])
                .args(["--advertise-address", "127.0.0.1", "--secure-port"])
                .arg(port.to_string())
                .arg("--cert-dir")
                .arg(dir.join("certs"))
                .arg("--token-auth-file")
                .arg(dir.join("tokens.csv"))
                .args(["--authorization-mode", "AlwaysAllow"])
                .args(["--service-account-issuer", "https://kubernetes.default.svc"])
                .arg("--service-account-key-file")
                .arg(&key)
                .arg("--service-account-signing-key-file")
                .arg(&key)
                .args(["--service-cluster-ip-range", "10.96.0.0/24"]),
        )?;
        let mut this = Apiserver {
            child,
            port,
            tls: Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = this.child.exited()? {
                bail!("kube-apiserver exited ({status}): {}", this.log_tail());
            }
            if Instant::now() > deadline {
                bail!("kube-apiserver not ready in 120 s: {}", this.log_tail());
            }
            if let Ok(tls) = this.trust() {
                this.tls = tls;
                // Ready, and the bootstrap controller has made the
                // `default` namespace (it does so after /readyz is 200).
                if let Ok(mut c) = this.connect().await
                    && let Ok((200, _)) = c.request("GET", "/readyz", None).await
                    && let Ok((200, _)) = c.request("GET", "/api/v1/namespaces/default", None).await
                {
                    return Ok(this);
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Trusts the CA of the self-signed certificate it wrote (its chain's
    /// last certificate).
    fn trust(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(self.child.dir.join("certs/apiserver.crt"))?
                .collect::<Result<_, _>>()?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(chain.last().context("no certificate")?.clone())?;
        Ok(Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
        ))
    }

    pub async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
            .await?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(Conn { send })
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let log = self.child.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `bin --version`, e.g. "Kubernetes v1.20.2".
    pub fn version(bin: &Path) -> String {
        Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}

/// One kept-alive connection to the apiserver, as the admin user.
pub struct Conn {
    send: SendRequest<Full<Bytes>>,
}

impl Conn {
    /// Sends one request (JSON body, or a merge patch for PATCH); answers
    /// the status and the body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let content_type = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("accept", "application/json")
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}
