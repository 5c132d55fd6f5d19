//! The primary behind a proxy tier (Pgpool-II, pgcat, ProxySQL).

use std::sync::Arc;

use async_trait::async_trait;

use super::{Backend, DbError, Kind, PartitionInfo, Partitions, Promoted, Rows, Writer, sql};

/// Pgpool-II sends a statement that starts with a comment to the primary.
pub(crate) const NO_LOAD_BALANCE: &str = "/*NO LOAD BALANCE*/ ";

/// The primary behind a proxy tier: every read through
/// [`Backend::fetch_primary`], everything else as the wrapped backend.
pub struct Primary(pub Arc<dyn Backend>);

#[async_trait]
impl Backend for Primary {
    fn kind(&self) -> Kind {
        self.0.kind()
    }

    fn max_key_bytes(&self) -> Option<usize> {
        self.0.max_key_bytes()
    }

    fn sql(&self) -> sql::Dialect {
        self.0.sql()
    }

    async fn fetch(&self, s: &sql::Statement) -> Result<Rows, DbError> {
        self.0.fetch_primary(s).await
    }

    async fn durable(&self, revision: i64) -> Result<(), DbError> {
        self.0.durable(revision).await
    }

    async fn writer(&self) -> Result<Box<dyn Writer>, DbError> {
        self.0.writer().await
    }

    async fn db_size(&self) -> Result<i64, DbError> {
        self.0.db_size().await
    }

    async fn refresh_statistics(&self) -> Result<(), DbError> {
        self.0.refresh_statistics().await
    }

    async fn checkpoint(&self) -> Result<(), DbError> {
        self.0.checkpoint().await
    }

    fn partitions(&self) -> Option<&Partitions> {
        self.0.partitions()
    }

    async fn batch(&self, text: &str) -> Result<(), DbError> {
        self.0.batch(text).await
    }

    async fn execute(&self, s: &sql::Statement) -> Result<u64, DbError> {
        self.0.execute(s).await
    }

    async fn promote_leases(&self, from_ms: i64) -> Result<Promoted, DbError> {
        self.0.promote_leases(from_ms).await
    }

    fn poll_interval(&self) -> std::time::Duration {
        self.0.poll_interval()
    }

    fn subscribe(
        &self,
        wake: Arc<tokio::sync::Notify>,
        known: crate::watch::Known,
    ) -> Option<futures::future::BoxFuture<'static, ()>> {
        self.0.subscribe(wake, known)
    }

    async fn create_epoch_partition(&self, epoch: i64) -> Result<(), DbError> {
        self.0.create_epoch_partition(epoch).await
    }

    fn epoch_ddl(&self, epoch: i64, parts: &[String]) -> Vec<String> {
        self.0.epoch_ddl(epoch, parts)
    }

    async fn drop_epoch_partition(&self, epoch: i64) -> Result<(), DbError> {
        self.0.drop_epoch_partition(epoch).await
    }

    async fn create_resource_partitions(&self, part: &str) -> Result<(), DbError> {
        self.0.create_resource_partitions(part).await
    }

    fn resource_ddl(&self, part: &str, epochs: &[i64]) -> Vec<String> {
        self.0.resource_ddl(part, epochs)
    }

    async fn partition_list(&self) -> Result<Vec<PartitionInfo>, DbError> {
        self.0.partition_list().await
    }
}
