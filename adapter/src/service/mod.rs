//! The gRPC surface: one module per etcd service. Each handler validates
//! the request the way etcd does, calls the store, and fills the response
//! header.

pub mod auth;
pub mod cluster;
pub mod election;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
mod recipes;
pub mod watch;

use crate::proto::etcdserverpb::ResponseHeader;

/// What every top-level response header carries besides the revision.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
    /// etcdsql has no Raft; the term never changes.
    pub raft_term: u64,
}

impl Identity {
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let h = header.get_or_insert_with(ResponseHeader::default);
        h.cluster_id = self.cluster_id;
        h.member_id = self.member_id;
        h.raft_term = self.raft_term;
    }

    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        let mut h = Some(ResponseHeader {
            revision,
            ..Default::default()
        });
        self.fill(&mut h);
        h
    }
}

/// A member id that stays the same across restarts of one member: FNV-1a of
/// its name and advertised URLs.
pub fn member_id(name: &str, urls: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain(urls.iter().flat_map(|u| u.bytes())) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
