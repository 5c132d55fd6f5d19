//! etcd's wire contract, generated from `proto/` (packages etcdserverpb,
//! mvccpb, authpb; the same names and field numbers as etcd's, plus the
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
