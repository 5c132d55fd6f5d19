//! TLS with etcd's flags: etcdctl over https with a client certificate
//! works; without one, or with one from another CA, it is refused under
//! --client-cert-auth. Certificates are made with openssl for the test.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcdsql_integration::{Target, TempDir, free_port};

use crate::{Case, bin, case};

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("running openssl")
        .success();
    assert!(ok, "openssl {args:?}");
}

/// A CA and a certificate it signs for `name` with the given extensions.
fn make_certs(dir: &Path, ca: &str, name: &str, ext: &str) {
    if !dir.join(format!("{ca}.crt")).exists() {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                &format!("/CN={ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ],
        );
    }
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn etcdctl(dir: &Path, endpoint: &str, cert: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=https://{endpoint}"))
        .arg(format!("--cacert={}", dir.join("ca.crt").display()))
        .arg("--command-timeout=3s")
        .arg("--dial-timeout=2s");
    if let Some(c) = cert {
        cmd.arg(format!("--cert={}", dir.join(format!("{c}.crt")).display()))
            .arg(format!("--key={}", dir.join(format!("{c}.key")).display()));
    }
    let out = cmd.args(args).output().expect("etcdctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn mutual_tls(_target: Target) {
    if Command::new("openssl").arg("version").output().is_err() {
        panic!("openssl is needed to make the test certificates");
    }
    let dir = TempDir::new(&format!("etcdsql_tls_{}", std::process::id())).unwrap();
    let d = dir.path();
    make_certs(
        d,
        "ca",
        "server",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    make_certs(d, "ca", "client", "extendedKeyUsage=clientAuth\n");
    make_certs(d, "otherca", "stranger", "extendedKeyUsage=clientAuth\n");

    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let _server = Killed(
        Command::new(bin())
            .arg("--data-dir")
            .arg(d.join("data"))
            .args(["--listen-client-urls", &format!("https://{endpoint}")])
            .arg("--cert-file")
            .arg(d.join("server.crt"))
            .arg("--key-file")
            .arg(d.join("server.key"))
            .arg("--trusted-ca-file")
            .arg(d.join("ca.crt"))
            .arg("--client-cert-auth")
            .stderr(Stdio::null())
            .spawn()
            .expect("etcdsql"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !etcdctl(d, &endpoint, Some("client"), &["get", "x"]).0 {
        assert!(Instant::now() < deadline, "etcdsql over TLS not ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, out) = etcdctl(d, &endpoint, Some("client"), &["put", "k", "v"]);
    assert!(ok && out.contains("OK"), "{out}");
    let (ok, out) = etcdctl(d, &endpoint, Some("client"), &["get", "k"]);
    assert!(ok && out.contains("k\nv"), "{out}");
    let (ok, out) = etcdctl(d, &endpoint, Some("client"), &["endpoint", "status"]);
    assert!(ok && out.contains("3.5."), "{out}");
    let (ok, out) = etcdctl(d, &endpoint, Some("client"), &["member", "list"]);
    assert!(ok && out.contains("https://127.0.0.1"), "{out}");
    let (ok, out) = etcdctl(d, &endpoint, Some("client"), &["lease", "grant", "60"]);
    assert!(ok && out.contains("granted with TTL(60s)"), "{out}");
    let (ok, out) = etcdctl(d, &endpoint, Some("client"), &["lease", "list"]);
    assert!(ok && out.contains("found 1 leases"), "{out}");
    // etcdctl watch runs until stopped; replay from revision 2 and stop it.
    let watched = Command::new("timeout")
        .args(["2", "etcdctl", "--endpoints"])
        .arg(format!("https://{endpoint}"))
        .arg(format!("--cacert={}", d.join("ca.crt").display()))
        .arg(format!("--cert={}", d.join("client.crt").display()))
        .arg(format!("--key={}", d.join("client.key").display()))
        .args(["watch", "k", "--rev=2", "--prev-kv"])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl watch");
    assert_eq!(String::from_utf8_lossy(&watched.stdout), "PUT\nk\nv\n");
    // Odd `:authority` values inside TLS are served too.
    let tls = tls_client(d);
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(&endpoint)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        tls.connect(name, tcp).await.expect("TLS handshake")
    };
    crate::authority::check("sqlite over TLS", &endpoint, connect).await;
    // With auth on, the certificate's common name is the user.
    make_certs(d, "ca", "root", "extendedKeyUsage=clientAuth\n");
    make_certs(d, "ca", "alice", "extendedKeyUsage=clientAuth\n");
    for args in [
        &["user", "add", "root", "--new-user-password=rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice", "--new-user-password=alicepw"],
        &["role", "add", "cn"],
        &[
            "role",
            "grant-permission",
            "cn",
            "readwrite",
            "/cn/",
            "--prefix",
        ],
        &["user", "grant-role", "alice", "cn"],
        &["auth", "enable"],
    ] {
        let (ok, out) = etcdctl(d, &endpoint, Some("client"), args);
        assert!(ok, "etcdctl {args:?}: {out}");
    }
    let (ok, out) = etcdctl(d, &endpoint, Some("alice"), &["put", "/cn/a", "v"]);
    assert!(ok && out.contains("OK"), "CN alice writes /cn/a: {out}");
    let (ok, out) = etcdctl(d, &endpoint, Some("alice"), &["put", "/x", "v"]);
    assert!(
        !ok && out.contains("permission denied"),
        "CN alice writes /x: {out}"
    );
    let (ok, out) = etcdctl(d, &endpoint, Some("alice"), &["user", "list"]);
    assert!(
        !ok && out.contains("permission denied"),
        "CN alice lists users: {out}"
    );
    let (ok, out) = etcdctl(d, &endpoint, Some("root"), &["user", "list"]);
    assert!(
        ok && out.contains("alice\nroot"),
        "CN root lists users: {out}"
    );
    let (ok, out) = etcdctl(d, &endpoint, Some("client"), &["get", "/cn/a"]);
    assert!(
        !ok && out.contains("permission denied"),
        "CN of no user: {out}"
    );
    // `etcdsql import --from` a live server over TLS with auth on (its
    // Snapshot needs root), into an SQLite file.
    let imported = d.join("imported.db");
    let from = |user: &str| {
        Command::new(bin())
            .args([
                "import",
                "--endpoint",
                &format!("sqlite://{}", imported.display()),
            ])
            .args(["--from", &format!("https://{endpoint}")])
            .arg("--from-cacert")
            .arg(d.join("ca.crt"))
            .arg("--from-cert")
            .arg(d.join("client.crt"))
            .arg("--from-key")
            .arg(d.join("client.key"))
            .args(["--from-user", user])
            .output()
            .expect("etcdsql import")
    };
    let denied = from("alice:alicepw");
    assert!(
        !denied.status.success()
            && String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "{denied:?}"
    );
    let out = from("root:rootpw");
    assert!(out.status.success(), "{out:?}");
    // The copy holds the source's revision (auth came across on, so it is
    // read back through `etcdsql export` and etcdctl's snapshot status).
    let exported = d.join("exported.db");
    let back = Command::new(bin())
        .args([
            "export",
            "--endpoint",
            &format!("sqlite://{}", imported.display()),
        ])
        .arg("--output")
        .arg(&exported)
        .output()
        .expect("etcdsql export");
    assert!(back.status.success(), "{back:?}");
    let status = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&exported)
        .output()
        .expect("etcdctl snapshot status");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    let (ok, source) = etcdctl(d, &endpoint, Some("root"), &["get", "k", "-w", "json"]);
    assert!(ok, "{source}");
    let revision = source
        .split("\"revision\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap_or_default()
        .to_string();
    assert!(
        !revision.is_empty() && status.contains(&format!("\"revision\":{revision}")),
        "source {source}, copy {status}"
    );
    let (ok, out) = etcdctl(d, &endpoint, Some("root"), &["auth", "disable"]);
    assert!(ok, "{out}");
    let (ok, out) = etcdctl(d, &endpoint, None, &["get", "k"]);
    assert!(!ok, "a client without a certificate must be refused: {out}");
    let (ok, out) = etcdctl(d, &endpoint, Some("stranger"), &["get", "k"]);
    assert!(!ok, "a certificate from another CA must be refused: {out}");
    eprintln!(
        "tls: etcdctl with a client certificate served, its CN the user with auth on; without one, or from another CA, refused"
    );
}

/// A TLS client trusting `ca.crt`, with the `client` certificate, speaking h2.
fn tls_client(dir: &Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.crt")).unwrap())
        .unwrap();
    let certs = vec![CertificateDer::from_pem_file(dir.join("client.crt")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(dir.join("client.key")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

pub fn cases() -> Vec<Case> {
    vec![case!("mutual_tls", &[Target::Sqlite], mutual_tls)]
}
