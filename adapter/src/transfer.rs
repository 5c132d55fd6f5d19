//! `etcdsql import` and `etcdsql export`: moving a cluster's data from etcd
//! and back.
//!
//! Import reads an etcd backend file (`etcdctl snapshot save`, or a
//! snapshot taken from a live etcd over its Snapshot RPC) and loads it into
//! any backend in one database transaction: keys with every version etcd
//! kept (create and mod revisions, versions, leases), the revision and the
//! compaction, leases (with their remaining TTL where etcd recorded one,
//! else their whole TTL, as etcd does on restore), users, roles and whether
//! auth is on. An import that fails or is interrupted leaves the target as
//! it was. A target that holds data is refused unless `--overwrite`.
//! Selector columns are filled in by the first server that starts on it
//! (the backfill).
//!
//! Export writes the same file etcdsql's Snapshot RPC streams
//! (`store::snapshot`), which `etcdctl snapshot restore` turns into an
//! etcd data directory.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use prost::Message;

use crate::backend::sql::Param;
use crate::backend::{self, Backend, Writer};
use crate::backend::{Flush, HistoryRow, LeaseRow, Upsert};
use crate::bbolt::Reader;
use crate::proto::mvccpb::KeyValue;
use crate::store::snapshot::{Lease, revision_of, sha256_prefix};

#[derive(clap::Args, Clone, Debug)]
pub struct ImportArgs {
    #[command(flatten)]
    pub target: crate::admin::Target,
    /// An etcd snapshot file (`etcdctl snapshot save`), or with
    /// --skip-hash-check a backend file (`member/snap/db`).
    #[arg(long, conflicts_with = "from", required_unless_present = "from")]
    pub snapshot: Option<PathBuf>,
    /// A live etcd to copy (host:port or http://host:port), through its
    /// Snapshot RPC.
    #[arg(long)]
    pub from: Option<String>,
    /// CA (PEM) that the --from etcd's certificate chains to (https://).
    #[arg(long)]
    pub from_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for the --from etcd.
    #[arg(long, requires = "from_key")]
    pub from_cert: Option<PathBuf>,
    /// Key of --from-cert (PEM).
    #[arg(long, requires = "from_cert")]
    pub from_key: Option<PathBuf>,
    /// user:password for a --from etcd with auth on (root: Snapshot needs it).
    #[arg(long)]
    pub from_user: Option<String>,
    /// Replace what the target holds.
    #[arg(long)]
    pub overwrite: bool,
    /// Accept a file without etcd's SHA-256 trailer (a backend file), or
    /// whose trailer does not match.
    #[arg(long)]
    pub skip_hash_check: bool,
}

#[derive(clap::Args, Clone, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub target: crate::admin::Target,
    /// Where to write the snapshot.
    #[arg(long)]
    pub output: PathBuf,
}

/// Key-bucket entries per transaction statement group.
const CHUNK: usize = 1000;

/// Checks the SHA-256 that etcd appends to a snapshot (a file 32 bytes
/// over a multiple of 512), as `etcdctl snapshot restore` does: a file
/// without one (truncated, or a backend file copied from a data directory)
/// needs --skip-hash-check.
fn check_hash(path: &Path) -> anyhow::Result<()> {
    let mut f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let len = f.metadata()?.len();
    if len % 512 != 32 {
        bail!(
            "{}: {len} bytes, with no SHA-256 after the last page: truncated, or not a `snapshot save` file (--skip-hash-check imports a backend file such as member/snap/db)",
            path.display()
        );
    }
    let sum =
        sha256_prefix(&mut f, len - 32).with_context(|| format!("{}: reading", path.display()))?;
    let mut trailer = [0u8; 32];
    f.read_exact(&mut trailer)?;
    if sum != trailer {
        bail!(
            "{}: the SHA-256 at offset {} does not match the {} bytes before it: the snapshot is corrupt or truncated (--skip-hash-check imports it anyway)",
            path.display(),
            len - 32,
            len - 32
        );
    }
    Ok(())
}

/// Downloads a live etcd's snapshot to `path`, checking its SHA-256.
async fn download(args: &ImportArgs, endpoint: &str, path: &Path) -> anyhow::Result<()> {
    use crate::proto::etcdserverpb::auth_client::AuthClient;
    use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use crate::proto::etcdserverpb::{AuthenticateRequest, SnapshotRequest};
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let mut ep = Endpoint::from_shared(url.clone()).with_context(|| format!("--from {url}"))?;
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &args.from_cacert {
            let pem = std::fs::read(ca).with_context(|| ca.display().to_string())?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&args.from_cert, &args.from_key) {
            let c = std::fs::read(cert).with_context(|| cert.display().to_string())?;
            let k = std::fs::read(key).with_context(|| key.display().to_string())?;
            tls = tls.identity(Identity::from_pem(c, k));
        }
        ep = ep.tls_config(tls).context("--from TLS settings")?;
    }
    let channel = ep
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let mut request = tonic::Request::new(SnapshotRequest {});
    if let Some(user) = &args.from_user {
        let (name, password) = user.split_once(':').unwrap_or((user.as_str(), ""));
        let token = AuthClient::new(channel.clone())
            .authenticate(AuthenticateRequest {
                name: name.to_string(),
                password: password.to_string(),
            })
            .await
            .with_context(|| format!("{url}: authenticating as {name}"))?
            .into_inner()
            .token;
        request
            .metadata_mut()
            .insert("token", token.parse().context("the token")?);
    }
    let mut client = MaintenanceClient::new(channel).max_decoding_message_size(64 << 20);
    let mut stream = client
        .snapshot(request)
        .await
        .with_context(|| format!("{url}: Snapshot"))?
        .into_inner();
    let mut f = std::fs::File::create(path).with_context(|| path.display().to_string())?;
    let mut all = 0u64;
    let started = Instant::now();
    while let Some(m) = stream.message().await.context("receiving the snapshot")? {
        f.write_all(&m.blob)?;
        all += u64::try_from(m.blob.len()).unwrap_or(0);
        eprint!(
            "\rdownloading from {url}: {} MiB, {} MiB to go   ",
            all >> 20,
            m.remaining_bytes >> 20
        );
    }
    f.sync_all()?;
    eprintln!(
        "\rdownloaded {} bytes from {url} in {:.1} s            ",
        all,
        started.elapsed().as_secs_f64()
    );
    check_hash(path)
}

pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let dsn = args.target.dsn()?;
    let temp;
    let path: &Path = match (&args.snapshot, &args.from) {
        (Some(p), _) => p,
        (None, Some(from)) => {
            temp = std::env::temp_dir().join(format!("etcdsql-import-{}.db", std::process::id()));
            let r = download(&args, from, &temp).await;
            if let Err(e) = r {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
            &temp
        }
        (None, None) => bail!("--snapshot FILE or --from ENDPOINT"),
    };
    let result = import_file(&args, &dsn, path).await;
    if args.from.is_some() {
        let _ = std::fs::remove_file(path);
    }
    result
}

async fn import_file(args: &ImportArgs, dsn: &backend::Dsn, path: &Path) -> anyhow::Result<()> {
    if !args.skip_hash_check {
        check_hash(path)?;
    }
    let reader = Arc::new(Reader::open(path).map_err(anyhow::Error::msg)?);
    let size = std::fs::metadata(path)?.len();
    // What etcd's meta bucket says of compaction.
    let mut compact = 0i64;
    if let Some(meta) = reader.bucket(b"meta").map_err(anyhow::Error::msg)? {
        reader
            .for_each(&meta, &mut |k, v| {
                if k == b"finishedCompactRev"
                    && let Some((main, _, _)) = revision_of(v)
                {
                    compact = main;
                }
                Ok(())
            })
            .map_err(anyhow::Error::msg)?;
    }
    if reader.bucket(b"key").map_err(anyhow::Error::msg)?.is_none() {
        bail!(
            "{}: no `key` bucket: not an etcd v3 backend",
            path.display()
        );
    }

    let backend = crate::server::open_backend(dsn, true, false).await?;
    let mut w = backend.writer().await?;
    let r = load(args, &backend, w.as_mut(), &reader, compact, size).await;
    match r {
        Ok((keys, revision)) => {
            eprintln!(
                "imported {keys} versions into {}: revision {revision}, compacted at {}",
                dsn.redacted(),
                if compact > 0 {
                    compact.to_string()
                } else {
                    "none".into()
                }
            );
            Ok(())
        }
        Err(e) => {
            w.rollback().await;
            Err(e.context("the import was rolled back; the target is as it was"))
        }
    }
}

async fn count(b: &dyn Backend, w: &mut dyn Writer, table: &str) -> anyhow::Result<i64> {
    let rows = w
        .rows(&b.statement(&format!("SELECT COUNT(*) FROM {table}"), &[]))
        .await?;
    Ok(rows.first().map(|r| r.int(0)).transpose()?.unwrap_or(0))
}

/// One transaction: checks or clears the target, loads, commits.
async fn load(
    args: &ImportArgs,
    backend: &Arc<dyn Backend>,
    w: &mut dyn Writer,
    reader: &Arc<Reader>,
    compact: i64,
    size: u64,
) -> anyhow::Result<(u64, i64)> {
    let b = backend.as_ref();
    let mut meta = w.begin().await?;
    let mut tables = vec![
        "etcdsql_live",
        "etcdsql_history",
        "etcdsql_lease",
        "etcdsql_auth_user",
        "etcdsql_auth_role",
        "etcdsql_auth_token",
        "etcdsql_alarm",
    ];
    if b.sql().label_table() {
        tables.push("etcdsql_label");
    }
    let held = count(b, w, "etcdsql_history").await? + count(b, w, "etcdsql_live").await?;
    if held > 0 || meta.revision > 1 {
        if !args.overwrite {
            bail!(
                "the target is not empty (revision {}, {held} rows of keys): import refuses to mix data; --overwrite replaces it",
                meta.revision
            );
        }
        for t in &tables {
            w.execute(&b.statement(&format!("DELETE FROM {t}"), &[]))
                .await?;
        }
    }

    // The key bucket, read on a blocking thread, in chunks.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<(Vec<u8>, Vec<u8>)>, String>>(4);
    let r2 = reader.clone();
    let walker = tokio::task::spawn_blocking(move || {
        let Ok(Some(bucket)) = r2.bucket(b"key") else {
            return;
        };
        let mut chunk = Vec::with_capacity(CHUNK);
        let r = r2.for_each(&bucket, &mut |k, v| {
            chunk.push((k.to_vec(), v.to_vec()));
            if chunk.len() == CHUNK {
                tx.blocking_send(Ok(std::mem::take(&mut chunk)))
                    .map_err(|_| "stopped".to_string())?;
            }
            Ok(())
        });
        let _ = match r {
            Ok(()) => tx.blocking_send(Ok(chunk)),
            Err(e) => tx.blocking_send(Err(e)),
        };
    });

    // Each key's latest version so far: (mod, create, version, lease).
    let mut last: HashMap<Vec<u8>, (i64, i64, i64, i64)> = HashMap::new();
    let (mut versions, mut bytes, mut top) = (0u64, 0u64, 0i64);
    let started = Instant::now();
    let batch = rand::random::<i64>();
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk.map_err(anyhow::Error::msg)?;
        let mut flush = Flush {
            batch,
            ..Default::default()
        };
        let mut live: HashMap<Vec<u8>, Option<KeyValue>> = HashMap::new();
        for (k, v) in chunk {
            bytes += u64::try_from(k.len() + v.len()).unwrap_or(0);
            let (main, sub, deleted) =
                revision_of(&k).with_context(|| format!("key bucket: {k:?} is not a revision"))?;
            let kv = KeyValue::decode(v.as_slice())
                .with_context(|| format!("key bucket: revision {main}/{sub} does not decode"))?;
            top = top.max(main);
            let prev = last.get(&kv.key).copied();
            let prev_revision = prev.map_or(0, |p| p.0);
            let row = if deleted {
                let (_, create_revision, version, lease) = prev.unwrap_or_default();
                last.remove(&kv.key);
                live.insert(kv.key.clone(), None);
                let removed = KeyValue {
                    key: kv.key,
                    create_revision,
                    mod_revision: prev_revision,
                    version,
                    lease,
                    ..Default::default()
                };
                HistoryRow::delete(&removed, main, sub)
            } else {
                last.insert(
                    kv.key.clone(),
                    (main, kv.create_revision, kv.version, kv.lease),
                );
                let row = HistoryRow::put(&kv, main, sub, prev_revision);
                let mut kv = kv;
                kv.mod_revision = main;
                live.insert(kv.key.clone(), Some(kv));
                row
            };
            flush.history.push(row);
            versions += 1;
        }
        for (key, kv) in live {
            match kv {
                Some(kv) => flush.upserts.push(Upsert {
                    kv,
                    index: None,
                    rows_held: None,
                    absent: false,
                }),
                None => flush.deletes.push(key),
            }
        }
        backend::flush(w, &flush).await?;
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let rate = versions as f64 / secs;
        let eta = (size.saturating_sub(bytes)) as f64 / (bytes as f64 / secs).max(1.0);
        eprint!("\rimporting: {versions} versions, {rate:.0}/s, about {eta:.0} s to go   ");
    }
    walker.await?;
    eprintln!();

    // Leases.
    let mut leases = Vec::new();
    if let Some(bucket) = reader.bucket(b"lease").map_err(anyhow::Error::msg)? {
        reader
            .for_each(&bucket, &mut |_, v| {
                let l = Lease::decode(v).map_err(|e| format!("lease bucket: {e}"))?;
                leases.push(l);
                Ok(())
            })
            .map_err(anyhow::Error::msg)?;
    }
    let now = crate::store::now_ms();
    let rows: Vec<LeaseRow> = leases
        .iter()
        .map(|l| {
            let left = if l.remaining_ttl > 0 {
                l.remaining_ttl
            } else {
                l.ttl
            };
            LeaseRow {
                id: l.id,
                ttl: l.ttl,
                expires_at_ms: now + left * 1000,
            }
        })
        .collect();
    if !rows.is_empty() {
        w.upsert_leases(&rows).await?;
    }

    // The auth store.
    let mut enabled = false;
    let mut auth_revision = 1u64;
    if let Some(bucket) = reader.bucket(b"auth").map_err(anyhow::Error::msg)? {
        reader
            .for_each(&bucket, &mut |k, v| {
                match k {
                    b"authEnabled" => enabled = v == [1],
                    b"authRevision" if v.len() == 8 => {
                        auth_revision = u64::from_be_bytes(v.try_into().unwrap_or_default());
                    }
                    _ => {}
                }
                Ok(())
            })
            .map_err(anyhow::Error::msg)?;
    }
    for (bucket, table) in [
        (&b"authUsers"[..], "etcdsql_auth_user"),
        (&b"authRoles"[..], "etcdsql_auth_role"),
    ] {
        let mut entries = Vec::new();
        if let Some(bk) = reader.bucket(bucket).map_err(anyhow::Error::msg)? {
            reader
                .for_each(&bk, &mut |k, v| {
                    entries.push((k.to_vec(), v.to_vec()));
                    Ok(())
                })
                .map_err(anyhow::Error::msg)?;
        }
        for (k, v) in entries {
            w.execute(&b.statement(
                &format!("INSERT INTO {table} (name, data) VALUES (?, ?)"),
                &[Param::Bytes(k), Param::Bytes(v)],
            ))
            .await?;
        }
    }
    // Selector columns: filled in by the first server to start.
    w.execute(&b.statement(
        "UPDATE etcdsql_meta SET auth_enabled = ?, auth_revision = ?, selectors_indexed = 0 WHERE id = 1",
        &[
            Param::Int(i64::from(enabled)),
            Param::Int(auth_revision.cast_signed()),
        ],
    ))
    .await?;

    // etcd's revision: the newest in the key bucket, at least the compaction.
    meta.revision = top.max(compact).max(1);
    meta.compact_revision = if compact > 0 { compact } else { -1 };
    w.commit(meta).await?;
    Ok((versions, meta.revision))
}

pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let config =
        crate::server::Config::for_tool(args.target.endpoint.clone(), &args.target.data_dir);
    let app = crate::server::App::open(&config).await?;
    let store = app.store.clone();
    let output = args.output.clone();
    let handle = tokio::runtime::Handle::current();
    let started = Instant::now();
    let r = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, i64, u64)> {
        let part = output.with_extension("part");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&part)
            .with_context(|| part.display().to_string())?;
        let (mut file, revision, keys, len) = store.snapshot_file(&handle, file)?;
        // etcd's trailer: the SHA-256 of everything before it.
        let sum = sha256_prefix(&mut file, len)?;
        file.write_all(&sum)?;
        file.sync_all()?;
        std::fs::rename(&part, &output)?;
        Ok((keys, revision, len + 32))
    })
    .await?;
    app.stop().await;
    let (keys, revision, bytes) = r?;
    eprintln!(
        "exported {keys} versions at revision {revision} to {} ({bytes} bytes, {:.1} s)",
        args.output.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
