//! etcd's alarms (Maintenance.Alarm) and space quota
//! (`--quota-backend-bytes`). Alarms live in `etcdsql_alarm`, so every
//! etcdsql on the database raises, lists and disarms the same ones; each
//! process re-reads them every [`REFRESH`] and at once after its own
//! changes. As in etcd:
//! - a write that would take the database to the quota or past it raises
//!   NOSPACE for this member and fails with "database space exceeded";
//! - while NOSPACE is raised, Puts, Txns with a put and lease grants fail
//!   the same way (deletes, reads and compaction still work) until it is
//!   disarmed;
//! - while CORRUPT is raised, KV requests and lease grants and revokes fail
//!   with "corrupt cluster".

use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::backend::sql::Param;
use crate::backend::{Backend, DbError};
use crate::error::Error;
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::proto::etcdserverpb::{AlarmMember, AlarmType, PutRequest, RequestOp, TxnRequest};
use crate::tasks::Tasks;

/// How often a process re-reads the alarms (and the database size, with a
/// quota).
pub const REFRESH: Duration = Duration::from_secs(1);

/// etcd's cost estimates (server/etcdserver/quota.go).
const KV_OVERHEAD: usize = 256;
const LEASE_OVERHEAD: usize = 64;

pub struct Alarms {
    backend: Arc<dyn Backend>,
    /// This process's member id: the member a quota alarm names.
    member: u64,
    /// `--quota-backend-bytes`; 0 or less: no quota.
    quota: i64,
    /// (alarm, member) as last read, sorted.
    active: RwLock<Vec<(i32, u64)>>,
    /// The etcdsql tables' size as last read (with a quota only).
    size: AtomicI64,
}

impl Alarms {
    /// Reads the alarms (and the size) and keeps re-reading them.
    pub async fn start(
        tasks: &Tasks,
        backend: Arc<dyn Backend>,
        member: u64,
        quota: i64,
    ) -> Result<Arc<Alarms>, DbError> {
        let alarms = Arc::new(Alarms {
            backend,
            member,
            quota,
            active: RwLock::default(),
            size: AtomicI64::new(0),
        });
        alarms.refresh().await?;
        let weak = Arc::downgrade(&alarms);
        tasks.spawn("alarms", async move {
            loop {
                tokio::time::sleep(REFRESH).await;
                let Some(a) = weak.upgrade() else { return };
                if let Err(e) = a.refresh().await {
                    tracing::debug!(error = %e, "reading alarms failed");
                }
            }
        });
        Ok(alarms)
    }

    async fn refresh(&self) -> Result<(), DbError> {
        self.read(AlarmType::None as i32).await?;
        if self.quota > 0 {
            self.size
                .store(self.backend.db_size().await?, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The alarms of type `alarm` (every alarm for NONE), read now.
    async fn read(&self, alarm: i32) -> Result<Vec<AlarmMember>, DbError> {
        let rows = self
            .backend
            .fetch(&self.backend.statement(
                "SELECT alarm, member_id FROM etcdsql_alarm ORDER BY alarm, member_id",
                &[],
            ))
            .await?;
        let mut all = Vec::with_capacity(rows.len());
        for r in rows.iter() {
            let a = i32::try_from(r.int(0)?).unwrap_or_default();
            all.push((a, r.int(1)?.cast_unsigned()));
        }
        let listed = all
            .iter()
            .filter(|(a, _)| alarm == AlarmType::None as i32 || *a == alarm)
            .map(|&(a, member)| AlarmMember {
                member_id: member,
                alarm: a,
            })
            .collect();
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = all;
        Ok(listed)
    }

    /// Alarm GET: the alarms of that type, every alarm for NONE.
    pub async fn get(&self, alarm: i32) -> Result<Vec<AlarmMember>, Error> {
        Ok(self.read(alarm).await?)
    }

    /// Alarm ACTIVATE: the member's alarm, raised now or before; none for
    /// NONE (as etcd 3.5). A type etcd does not know is kept and listed, as
    /// etcd keeps it, and does nothing else but make /health fail.
    pub async fn activate(&self, member: u64, alarm: i32) -> Result<Vec<AlarmMember>, Error> {
        if alarm == AlarmType::None as i32 {
            return Ok(Vec::new());
        }
        let d = self.backend.sql();
        let insert = format!(
            "{} INTO etcdsql_alarm (member_id, alarm) VALUES (?, ?){}",
            d.insert_or_ignore, d.insert_or_ignore_tail
        );
        self.backend
            .execute(&self.backend.statement(
                &insert,
                &[Param::Int(member.cast_signed()), Param::Int(alarm.into())],
            ))
            .await?;
        let member_hex = format!("{member:x}");
        match AlarmType::try_from(alarm) {
            Ok(AlarmType::Corrupt) => tracing::error!(member = member_hex, "alarm raised: CORRUPT"),
            Ok(AlarmType::Nospace) => tracing::warn!(member = member_hex, "alarm raised: NOSPACE"),
            _ => tracing::warn!(
                member = member_hex,
                alarm,
                "alarm raised of a type that does nothing"
            ),
        }
        self.read(AlarmType::None as i32).await?;
        Ok(vec![AlarmMember {
            member_id: member,
            alarm,
        }])
    }

    /// Alarm DEACTIVATE: the alarm disarmed, none if it was not raised.
    pub async fn deactivate(&self, member: u64, alarm: i32) -> Result<Vec<AlarmMember>, Error> {
        let deleted = self
            .backend
            .execute(&self.backend.statement(
                "DELETE FROM etcdsql_alarm WHERE member_id = ? AND alarm = ?",
                &[Param::Int(member.cast_signed()), Param::Int(alarm.into())],
            ))
            .await?;
        self.read(AlarmType::None as i32).await?;
        Ok(if deleted > 0 {
            tracing::info!(member = format!("{member:x}"), alarm, "alarm disarmed");
            vec![AlarmMember {
                member_id: member,
                alarm,
            }]
        } else {
            Vec::new()
        })
    }

    /// Every raised alarm as etcd's Status lists it.
    pub fn status_errors(&self) -> Vec<String> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|&(a, member)| format!("memberID:{member} alarm:{} ", alarm_name(a)))
            .collect()
    }

    /// Names of the raised alarms (`NOSPACE`, `CORRUPT`, a number for a
    /// type etcd does not know), as /health matches them against its
    /// `exclude` parameters.
    pub fn raised_names(&self) -> Vec<Cow<'static, str>> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|&(a, _)| alarm_name(a))
            .collect()
    }

    fn raised(&self, alarm: AlarmType) -> bool {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(a, _)| *a == alarm as i32)
    }

    /// Before a write (Put, DeleteRange, a Txn that writes, Compact, a
    /// lease grant or revoke): fails while CORRUPT is raised. Reads go on,
    /// as in etcd.
    pub fn check_corrupt(&self) -> Result<(), Error> {
        if self.raised(AlarmType::Corrupt) {
            return Err(Error::Corrupt);
        }
        Ok(())
    }

    /// Before a Put, a Txn or a lease grant whose writes cost `cost` bytes
    /// (etcd's estimate: [`put_cost`], [`txn_cost`], [`LEASE_COST`]).
    pub async fn check_space(&self, cost: usize) -> Result<(), Error> {
        self.check_corrupt()?;
        self.check_quota(cost).await
    }

    /// [`Self::check_space`] without the CORRUPT check (a read-only Txn).
    pub async fn check_quota(&self, cost: usize) -> Result<(), Error> {
        if self.quota > 0 {
            let cost = i64::try_from(cost).unwrap_or(i64::MAX);
            if self.size.load(Ordering::Relaxed).saturating_add(cost) >= self.quota {
                if !self.raised(AlarmType::Nospace) {
                    self.activate(self.member, AlarmType::Nospace as i32)
                        .await?;
                }
                return Err(Error::NoSpace);
            }
        }
        if cost > 0 && self.raised(AlarmType::Nospace) {
            return Err(Error::NoSpace);
        }
        Ok(())
    }
}

/// An alarm type's name as etcd prints it (`NOSPACE`, `CORRUPT`; Go's
/// protobuf enums print an unknown value as its number).
fn alarm_name(alarm: i32) -> Cow<'static, str> {
    AlarmType::try_from(alarm).map_or_else(
        |_| Cow::Owned(alarm.to_string()),
        |t| Cow::Borrowed(t.as_str_name()),
    )
}

/// What a lease grant costs.
pub const LEASE_COST: usize = LEASE_OVERHEAD;

pub fn put_cost(p: &PutRequest) -> usize {
    KV_OVERHEAD + p.key.len() + p.value.len()
}

/// The costlier branch's puts (etcd counts the puts of nested Txns as 0).
pub fn txn_cost(t: &TxnRequest) -> usize {
    let ops = |ops: &[RequestOp]| -> usize {
        ops.iter()
            .map(|op| match &op.request {
                Some(Op::RequestPut(p)) => put_cost(p),
                _ => 0,
            })
            .sum()
    };
    ops(&t.success).max(ops(&t.failure))
}
