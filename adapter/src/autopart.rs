//! Partitions created by the server: the resources a `--partitions-file`
//! lists, at start, and with `--auto-partition` each custom resource when
//! its CustomResourceDefinition is written. Both run `partitions add`
//! ([`crate::backend::partitioning`]) in the background: rows move online.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use etcdsql_partitions::{self as plan, State};

use crate::backend::Backend;
use crate::proto::etcdserverpb::{PutRequest, RequestOp, request_op};
use crate::tasks::Tasks;

/// Where kube-apiserver keeps CustomResourceDefinitions; the name of each
/// is `<plural>.<group>`, its objects live under `/registry/<group>/<plural>/`.
pub const CRD_PREFIX: &[u8] = b"/registry/apiextensions.k8s.io/customresourcedefinitions/";

/// Rows per transaction when the server moves a resource.
const BATCH: i64 = 1000;

/// The `--partitions-file`:
///
/// ```toml
/// resources = ["events", "leases", "coordination.k8s.io/leases"]
/// auto_partition = true
/// ```
#[derive(serde::Deserialize, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PartitionsFile {
    /// Resources to give partitions of their own at start.
    #[serde(default)]
    pub resources: Vec<String>,
    /// As `--auto-partition`.
    #[serde(default)]
    pub auto_partition: bool,
}

impl PartitionsFile {
    pub fn read(path: &Path) -> anyhow::Result<PartitionsFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --partitions-file {}", path.display()))?;
        let f: PartitionsFile =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        for r in &f.resources {
            anyhow::ensure!(
                plan::valid_resource(r),
                "{}: {r:?} is not a resource: expected <resource> or <group>/<resource>",
                path.display()
            );
        }
        Ok(f)
    }
}

/// The CRD's resource (`<group>/<plural>`) for a key under [`CRD_PREFIX`].
pub fn crd_resource(key: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(key.strip_prefix(CRD_PREFIX)?).ok()?;
    let (plural, group) = name.split_once('.')?;
    let resource = format!("{group}/{plural}");
    plan::valid_resource(&resource).then_some(resource)
}

/// Starts `partitions add` for resources not yet ready, once each.
pub struct Partitioner {
    tasks: Tasks,
    backend: Arc<dyn Backend>,
    running: Mutex<HashSet<String>>,
    /// Watch CRD writes.
    auto: bool,
}

impl Partitioner {
    pub fn new(tasks: &Tasks, backend: Arc<dyn Backend>, auto: bool) -> Arc<Partitioner> {
        Arc::new(Partitioner {
            tasks: tasks.clone(),
            backend,
            running: Mutex::default(),
            auto,
        })
    }

    /// Partitions `resource` in the background unless it has its partition
    /// or a move is already running here.
    pub fn ensure(self: &Arc<Self>, resource: String) {
        let Some(p) = self.backend.partitions() else {
            return;
        };
        if matches!(p.get().resources.get(&resource), Some((_, State::Ready))) {
            return;
        }
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        if !running.insert(resource.clone()) {
            return;
        }
        drop(running);
        let this = self.clone();
        self.tasks.spawn("partition", async move {
            let started = std::time::Instant::now();
            match crate::backend::partitioning::add(&*this.backend, &resource, BATCH, &|_| {}).await
            {
                Ok(added) => {
                    tracing::info!(resource, part = added.part, moved = added.moved, elapsed = ?started.elapsed(), "partition created")
                }
                // Another etcdsql may be adding it at the same time; a
                // later write or restart tries again.
                Err(e) => {
                    tracing::warn!(resource, error = %format!("{e:#}"), "creating a partition failed")
                }
            }
            if let Ok(mut running) = this.running.lock() {
                running.remove(&resource);
            }
        });
    }

    /// The custom resources whose CRDs these keys are (none without
    /// `--auto-partition`). Found before a write is submitted, so that the
    /// request need not be kept; [`Partitioner::ensure`] each once it
    /// committed.
    pub fn crds<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) -> Vec<String> {
        if !self.auto {
            return Vec::new();
        }
        keys.into_iter().filter_map(crd_resource).collect()
    }
}

/// The keys a Txn branch puts. Of a nested Txn both branches: which one ran
/// is not worth finding out, and partitioning a resource early is harmless.
pub fn put_keys(ops: &[RequestOp]) -> Vec<&[u8]> {
    puts(ops).into_iter().map(|p| p.key.as_slice()).collect()
}

/// The puts of a Txn branch, of a nested Txn both branches.
pub fn puts(ops: &[RequestOp]) -> Vec<&PutRequest> {
    let mut out = Vec::new();
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => out.push(p),
            Some(request_op::Request::RequestTxn(t)) => {
                out.extend(puts(&t.success));
                out.extend(puts(&t.failure));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_keys_name_their_resource() {
        assert_eq!(
            crd_resource(
                b"/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com"
            )
            .as_deref(),
            Some("example.com/widgets")
        );
        assert_eq!(
            crd_resource(b"/registry/apiextensions.k8s.io/customresourcedefinitions/nodot"),
            None
        );
        assert_eq!(crd_resource(b"/registry/pods/ns/p"), None);
    }

    #[test]
    fn partitions_file_parses_and_rejects() {
        let f: PartitionsFile = toml::from_str(
            "resources = [\"events\", \"coordination.k8s.io/leases\"]\nauto_partition = true\n",
        )
        .unwrap();
        assert_eq!(f.resources.len(), 2);
        assert!(f.auto_partition);
        assert!(toml::from_str::<PartitionsFile>("resource = []").is_err());
        let dir = std::env::temp_dir().join(format!("etcdsql-pf-{}", std::process::id()));
        std::fs::write(&dir, "resources = [\"/registry/pods\"]").unwrap();
        let e = PartitionsFile::read(&dir).unwrap_err().to_string();
        std::fs::remove_file(&dir).unwrap();
        assert!(e.contains("is not a resource"), "{e}");
    }
}
