//! etcdserverpb.Cluster: MemberList names this member and its client URLs.
//! Membership belongs to the database, so the changing RPCs are refused,
//! after etcd's own checks of the request (unknown member, bad URLs).

use tonic::{Request, Response, Status};

use super::Identity;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
pub struct ClusterService {
    pub id: Identity,
    pub name: String,
    pub client_urls: Vec<String>,
}

fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!(
        "etcdsql: {what} is not supported: etcdsql members share the database and have no Raft membership"
    ))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        if !peer_urls_valid(&req.get_ref().peer_ur_ls) {
            return Err(Status::invalid_argument(
                "etcdserver: given member URLs are invalid",
            ));
        }
        Err(unsupported("MemberAdd"))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.known(req.get_ref().id)?;
        Err(unsupported("MemberRemove"))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.known(req.get_ref().id)?;
        Err(unsupported("MemberUpdate"))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        // As etcd's: no auth check, and a header without a revision.
        Ok(Response::new(MemberListResponse {
            header: self.id.header(0),
            members: vec![Member {
                id: self.id.member_id,
                name: self.name.clone(),
                peer_ur_ls: Vec::new(),
                client_ur_ls: self.client_urls.clone(),
                is_learner: false,
            }],
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.known(req.get_ref().id)?;
        // This member is a voting member, never a learner.
        Err(Status::failed_precondition(
            "etcdserver: can only promote a learner member",
        ))
    }
}

impl ClusterService {
    /// etcd's answer to a member id it does not have.
    fn known(&self, id: u64) -> Result<(), Status> {
        if id == self.id.member_id {
            Ok(())
        } else {
            Err(Status::not_found("etcdserver: member not found"))
        }
    }
}

/// As etcd's `types.NewURLs`: at least one, each `http`, `https`, `unix`
/// or `unixs`, its address `host:port` (Go's `net.SplitHostPort`), no path.
fn peer_urls_valid(urls: &[String]) -> bool {
    !urls.is_empty()
        && urls.iter().all(|u| {
            let Some((scheme, rest)) = u.trim().split_once("://") else {
                return false;
            };
            let (address, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
            let host_port = match address.strip_prefix('[') {
                Some(v6) => v6
                    .split_once("]:")
                    .is_some_and(|(_, port)| !port.contains(':')),
                None => address.matches(':').count() == 1,
            };
            matches!(scheme, "http" | "https" | "unix" | "unixs")
                && host_port
                && !tail.starts_with('/')
        })
}

#[cfg(test)]
mod tests {
    use super::peer_urls_valid;

    #[test]
    fn peer_urls_as_etcd_checks_them() {
        let ok = |u: &[&str]| peer_urls_valid(&u.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(ok(&["http://127.0.0.1:2380"]));
        assert!(ok(&["https://node-1:2380", "http://[::1]:2380"]));
        assert!(!ok(&[]));
        assert!(!ok(&["127.0.0.1:2380"]));
        assert!(!ok(&["http://127.0.0.1"]));
        assert!(!ok(&["ftp://127.0.0.1:2380"]));
        assert!(ok(&[" http://:2380 "]));
        assert!(!ok(&["http://127.0.0.1:2380/path"]));
        assert!(!ok(&["http://127.0.0.1:2380/"]));
        assert!(!ok(&["http://::1:2380"]));
    }
}
