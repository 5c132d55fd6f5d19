//! The Lock and Election services (v3lockpb, v3electionpb) through their
//! gRPC clients, against etcd and etcdsql with the same script: who holds,
//! who waits, what a cancelled waiter leaves, etcd's errors.

use std::time::Duration;

use etcdsql::proto::etcdserverpb::kv_client::KvClient;
use etcdsql::proto::etcdserverpb::lease_client::LeaseClient;
use etcdsql::proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest, RangeRequest};
use etcdsql::proto::v3electionpb::election_client::ElectionClient;
use etcdsql::proto::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};
use etcdsql::proto::v3lockpb::lock_client::LockClient;
use etcdsql::proto::v3lockpb::{LockRequest, UnlockRequest};
use etcdsql_integration::{Started, Target};
use tonic::transport::Channel;

use crate::{Case, bin, case};

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

async fn grant(c: &Channel, ttl: i64) -> i64 {
    LeaseClient::new(c.clone())
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .expect("lease grant")
        .into_inner()
        .id
}

async fn exists(c: &Channel, key: &[u8]) -> bool {
    let r = KvClient::new(c.clone())
        .range(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    r.count == 1
}

/// Whether `f` is still pending after `d`.
async fn pending<F: std::future::Future>(f: &mut std::pin::Pin<Box<F>>, d: Duration) -> bool {
    tokio::time::timeout(d, f.as_mut()).await.is_err()
}

async fn lock(target: Target) {
    let s = Started::new(target, bin()).await.expect("server");
    let c = channel(&s.server.endpoint).await;
    let mut locks = LockClient::new(c.clone());
    let name = b"locks/one".to_vec();
    let l1 = grant(&c, 60).await;
    let first = locks
        .lock(LockRequest {
            name: name.clone(),
            lease: l1,
        })
        .await
        .expect("first lock")
        .into_inner();
    assert_eq!(first.key, format!("locks/one/{l1:x}").into_bytes());
    assert!(first.header.as_ref().is_some_and(|h| h.revision > 1));
    // Locking again with the same lease is the same hold.
    let again = locks
        .lock(LockRequest {
            name: name.clone(),
            lease: l1,
        })
        .await
        .expect("relock")
        .into_inner();
    assert_eq!(again.key, first.key);

    let l2 = grant(&c, 60).await;
    let mut l2_client = locks.clone();
    let mut second = Box::pin(l2_client.lock(LockRequest {
        name: name.clone(),
        lease: l2,
    }));
    assert!(
        pending(&mut second, Duration::from_millis(500)).await,
        "a second holder got in"
    );

    // A waiter that gives up leaves no key behind.
    let l3 = grant(&c, 60).await;
    let mut l3_client = locks.clone();
    let mut third = Box::pin(l3_client.lock(LockRequest {
        name: name.clone(),
        lease: l3,
    }));
    assert!(pending(&mut third, Duration::from_millis(300)).await);
    let third_key = format!("locks/one/{l3:x}").into_bytes();
    assert!(exists(&c, &third_key).await);
    drop(third);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while exists(&c, &third_key).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a cancelled waiter's key stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let unlocked = locks
        .unlock(UnlockRequest {
            key: first.key.clone(),
        })
        .await
        .expect("unlock")
        .into_inner();
    let got = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the waiter got the lock after the unlock")
        .expect("second lock")
        .into_inner();
    assert_eq!(got.key, format!("locks/one/{l2:x}").into_bytes());
    assert!(got.header.unwrap().revision >= unlocked.header.unwrap().revision);

    // The holder's lease ends: the next waiter gets it.
    let l4 = grant(&c, 60).await;
    let mut l4_client = locks.clone();
    let mut fourth = Box::pin(l4_client.lock(LockRequest {
        name: name.clone(),
        lease: l4,
    }));
    assert!(pending(&mut fourth, Duration::from_millis(300)).await);
    LeaseClient::new(c.clone())
        .lease_revoke(LeaseRevokeRequest { id: l2 })
        .await
        .expect("revoke");
    tokio::time::timeout(Duration::from_secs(5), fourth)
        .await
        .expect("the waiter got the lock after the holder's lease ended")
        .expect("fourth lock");

    // etcd's errors.
    let e = locks
        .lock(LockRequest {
            name: name.clone(),
            lease: 0x7eadbeef,
        })
        .await
        .expect_err("a lock with an unknown lease");
    assert_eq!(
        e.message(),
        "etcdserver: requested lease not found",
        "{e:?}"
    );
    let e = locks
        .unlock(UnlockRequest { key: vec![] })
        .await
        .expect_err("an unlock without a key");
    assert_eq!(e.message(), "etcdserver: key is not provided", "{e:?}");
    eprintln!(
        "lock on {}: hold, wait, cancel, unlock, lease end, errors as etcd",
        target.name()
    );
}

async fn election(target: Target) {
    let s = Started::new(target, bin()).await.expect("server");
    let c = channel(&s.server.endpoint).await;
    let mut el = ElectionClient::new(c.clone());
    let name = b"elections/one".to_vec();
    let e = el
        .leader(LeaderRequest { name: name.clone() })
        .await
        .expect_err("no leader yet");
    assert_eq!(e.message(), "election: no leader", "{e:?}");

    // Observe before there is a leader: etcd answers its headers with the
    // first observation, so the call runs on its own task.
    let mut observer = el.clone();
    let (tx, mut observed) = tokio::sync::mpsc::unbounded_channel();
    let observe_name = name.clone();
    let observing = tokio::spawn(async move {
        let mut stream = observer
            .observe(LeaderRequest { name: observe_name })
            .await
            .expect("observe")
            .into_inner();
        while let Ok(Some(r)) = stream.message().await {
            if tx.send(r.kv.expect("kv").value).is_err() {
                return;
            }
        }
    });
    let l1 = grant(&c, 60).await;
    let leader1 = el
        .campaign(CampaignRequest {
            name: name.clone(),
            lease: l1,
            value: b"a".to_vec(),
        })
        .await
        .expect("campaign")
        .into_inner()
        .leader
        .expect("leader key");
    assert_eq!(
        (leader1.name.clone(), leader1.key.clone(), leader1.lease),
        (
            name.clone(),
            format!("elections/one/{l1:x}").into_bytes(),
            l1
        )
    );
    assert_eq!(next(&mut observed).await, b"a");
    el.proclaim(ProclaimRequest {
        leader: Some(leader1.clone()),
        value: b"b".to_vec(),
    })
    .await
    .expect("proclaim");
    assert_eq!(next(&mut observed).await, b"b");
    let now = el
        .leader(LeaderRequest { name: name.clone() })
        .await
        .expect("leader")
        .into_inner()
        .kv
        .expect("kv");
    assert_eq!(
        (now.key.clone(), now.value.clone()),
        (leader1.key.clone(), b"b".to_vec())
    );
    assert_eq!(now.create_revision, leader1.rev);

    let l2 = grant(&c, 60).await;
    let mut el2 = el.clone();
    let mut second = Box::pin(el2.campaign(CampaignRequest {
        name: name.clone(),
        lease: l2,
        value: b"c".to_vec(),
    }));
    assert!(
        pending(&mut second, Duration::from_millis(500)).await,
        "two leaders"
    );
    el.resign(ResignRequest {
        leader: Some(leader1.clone()),
    })
    .await
    .expect("resign");
    let leader2 = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the second candidate leads after the resignation")
        .expect("campaign")
        .into_inner()
        .leader
        .expect("leader key");
    assert_eq!(leader2.lease, l2);
    assert_eq!(next(&mut observed).await, b"c");

    // The old leader can no longer proclaim; resigning again is harmless.
    let e = el
        .proclaim(ProclaimRequest {
            leader: Some(leader1.clone()),
            value: b"x".to_vec(),
        })
        .await
        .expect_err("a former leader proclaims");
    assert_eq!(e.message(), "election: not leader", "{e:?}");
    el.resign(ResignRequest {
        leader: Some(leader1),
    })
    .await
    .expect("resign twice");
    let e = el
        .proclaim(ProclaimRequest {
            leader: None,
            value: b"x".to_vec(),
        })
        .await
        .expect_err("no leader key");
    assert_eq!(e.message(), "\"leader\" field must be provided", "{e:?}");
    let stale = LeaderKey {
        rev: leader2.rev + 1000,
        ..leader2.clone()
    };
    assert!(
        el.proclaim(ProclaimRequest {
            leader: Some(stale),
            value: b"x".to_vec(),
        })
        .await
        .is_err()
    );
    observing.abort();
    eprintln!(
        "election on {}: campaign, observe, proclaim, resign, succession, errors as etcd",
        target.name()
    );
}

/// The value of the next Observe answer.
async fn next(observed: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(5), observed.recv())
        .await
        .expect("an observation in time")
        .expect("observe stream open")
}

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "lock",
            &[
                Target::Etcd,
                Target::Sqlite,
                Target::Postgres,
                Target::Mariadb
            ],
            lock
        ),
        case!(
            "election",
            &[
                Target::Etcd,
                Target::Sqlite,
                Target::Postgres,
                Target::Mariadb
            ],
            election
        ),
    ]
}
