//! etcd's wire contract, generated from `proto/` (packages etcdserverpb,
//! mvccpb, authpb, v3lockpb, v3electionpb; the same names and field numbers as etcd's, plus the
//! selector fields RangeRequest 14/15 and WatchCreateRequest 9/10).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
