//! `:authority` values that are not RFC 3986 authorities, as real clients
//! send them, on a raw HTTP/2 connection: etcd serves them, so must etcdsql.

use std::collections::HashMap;
use std::time::Duration;

use etcdsql::proto::etcdserverpb::{PutRequest, RangeRequest, RangeResponse};
use etcdsql_integration::{Started, Target};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Case, bin, case};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK string literal, not Huffman-coded (all ours are < 127 bytes).
fn lit(out: &mut Vec<u8>, s: &[u8]) {
    out.push(u8::try_from(s.len()).unwrap());
    out.extend_from_slice(s);
}

/// A gRPC unary request: HEADERS then DATA with END_STREAM. `authority`
/// is a new literal (incrementally indexed) or an index into the table.
fn request(out: &mut Vec<u8>, stream: u32, path: &str, authority: Result<&str, u8>, body: &[u8]) {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.push(0x04); // :path, name 4, not indexed
    lit(&mut block, path.as_bytes());
    match authority {
        Ok(a) => {
            block.push(0x41); // :authority, name 1, indexed
            lit(&mut block, a.as_bytes());
        }
        Err(index) => block.push(0x80 | index),
    }
    for (n, v) in [("content-type", "application/grpc"), ("te", "trailers")] {
        block.push(0x00);
        lit(&mut block, n.as_bytes());
        lit(&mut block, v.as_bytes());
    }
    frame(out, 0x1, 0x4, stream, &block);
    let mut msg = vec![0];
    msg.extend(u32::try_from(body.len()).unwrap().to_be_bytes());
    msg.extend_from_slice(body);
    frame(out, 0x0, 0x1, stream, &msg);
}

/// What came back on one stream.
#[derive(Default, Debug, Clone)]
struct Answer {
    headers: Vec<(String, String)>,
    data: Vec<u8>,
    reset: Option<u32>,
    done: bool,
}

/// Sends `requests` on a new connection and reads every stream's answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    requests: &[u8],
    streams: &[u32],
) -> HashMap<u32, Answer> {
    let mut out = PREFACE.to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    out.extend_from_slice(requests);
    s.write_all(&out).await.unwrap();
    let mut decoder = loona_hpack::Decoder::new();
    let mut answers: HashMap<u32, Answer> = HashMap::new();
    let mut buf = Vec::new();
    let read = async {
        loop {
            if streams
                .iter()
                .all(|id| answers.get(id).is_some_and(|a| a.done))
            {
                return;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed: {answers:?}");
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 9 {
                let len =
                    usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                let payload = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                match kind {
                    // SETTINGS: acknowledge.
                    0x4 if flags & 1 == 0 => {
                        let mut ack = Vec::new();
                        frame(&mut ack, 0x4, 1, 0, &[]);
                        s.write_all(&ack).await.unwrap();
                    }
                    0x1 => {
                        assert!(flags & 0x4 != 0, "CONTINUATION not expected here");
                        let a = answers.entry(id).or_default();
                        for (n, v) in decoder.decode(&payload).expect("hpack") {
                            a.headers.push((
                                String::from_utf8_lossy(&n).into(),
                                String::from_utf8_lossy(&v).into(),
                            ));
                        }
                        a.done |= flags & 0x1 != 0;
                    }
                    0x0 => {
                        let a = answers.entry(id).or_default();
                        a.data.extend_from_slice(&payload);
                        a.done |= flags & 0x1 != 0;
                    }
                    0x3 => {
                        let a = answers.entry(id).or_default();
                        a.reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                        a.done = true;
                    }
                    0x7 => panic!("GOAWAY: {payload:?}"),
                    _ => {}
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("no answer in 10 s: {answers:?}"));
    answers
}

async fn odd_authorities(target: Target) {
    let started = Started::new(target, bin()).await.expect("server");
    let addr = started.server.endpoint.clone();
    let connect = || async { TcpStream::connect(&addr).await.expect("connect") };
    check(target.name(), &addr, connect).await;
}

/// Puts a key with one odd authority, gets it with each and with an
/// indexed repeat, on connections from `connect`; every request must be
/// served.
pub async fn check<S, F, C>(name: &str, addr: &str, connect: F)
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn() -> C,
    C: std::future::Future<Output = S>,
{
    let port = addr.rsplit(':').next().unwrap();
    let authorities = [
        format!("http://127.0.0.1:{port}"),
        format!("#initially=[http://127.0.0.1:{port}]"),
        "outbound|2379||etcd.ns.svc.cluster.local".to_string(),
    ];
    let put = PutRequest {
        key: b"a".to_vec(),
        value: b"1".to_vec(),
        ..Default::default()
    }
    .encode_to_vec();
    let get = RangeRequest {
        key: b"a".to_vec(),
        ..Default::default()
    }
    .encode_to_vec();
    // The put first and alone: streams of one connection run concurrently.
    let mut requests = Vec::new();
    request(
        &mut requests,
        1,
        "/etcdserverpb.KV/Put",
        Ok(&authorities[0]),
        &put,
    );
    let mut answers = exchange(connect().await, &requests, &[1]).await;
    let mut requests = Vec::new();
    for (stream, a) in [(1, 1), (3, 2), (5, 0)] {
        request(
            &mut requests,
            stream,
            "/etcdserverpb.KV/Range",
            Ok(&authorities[a]),
            &get,
        );
    }
    // The first of them again, by its index in the dynamic table (the
    // newest entry is 62; three were added, it came first).
    request(&mut requests, 7, "/etcdserverpb.KV/Range", Err(64), &get);
    let gets = exchange(connect().await, &requests, &[1, 3, 5, 7]).await;
    let mut all = vec![("put", answers.remove(&1).expect("put answered"))];
    for (id, what) in [(1, "get"), (3, "get"), (5, "get"), (7, "get (indexed)")] {
        all.push((what, gets.get(&id).cloned().expect("answered")));
    }
    for (what, a) in &all {
        assert_eq!(a.reset, None, "{what} on {} was reset: {a:?}", name);
        let grpc_status = a.headers.iter().find(|(n, _)| n == "grpc-status");
        assert_eq!(
            grpc_status.map(|(_, v)| v.as_str()),
            Some("0"),
            "{what} on {}: {a:?}",
            name
        );
        if *what != "put" {
            let r = RangeResponse::decode(&a.data[5..]).expect("RangeResponse");
            assert_eq!(r.kvs.len(), 1, "{what} on {}", name);
            assert_eq!(r.kvs[0].value, b"1");
        }
    }
    eprintln!(
        "odd :authority values on {name}: {authorities:?} and an indexed repeat all answered"
    );
}

pub fn cases() -> Vec<Case> {
    vec![case!(
        "odd_authorities",
        &[Target::Etcd, Target::Sqlite, Target::Postgres],
        odd_authorities
    )]
}
