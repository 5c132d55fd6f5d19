//! `:authority` as etcd accepts it.
//!
//! etcd's HTTP/2 server (Go's) serves requests whose `:authority` is not an
//! RFC 3986 authority; the h2 crate under tonic resets them with
//! PROTOCOL_ERROR before a service sees them (h2 issues #525, #612, #619).
//! Clients send such values: etcdctl 3.4 (`http://127.0.0.1:2379` on
//! `endpoint status`), etcd's Go client 3.5.0 (`#initially=[http://…]`, so
//! every request of kube-apiserver 1.22 and 1.23), service-mesh sidecars
//! (`outbound|2379||etcd.ns.svc.cluster.local`).
//!
//! [`Lenient`] wraps a client connection's read side. It follows the HTTP/2
//! frames the client sends and decodes each header block's HPACK far enough
//! to find `:authority` fields. A value h2 would refuse is replaced by one
//! of the same length made of `[A-Za-z0-9.-]`: HPACK's dynamic table counts
//! entries by length, so the client's and h2's tables stay in step and a
//! later reference to the entry reads the replacement. Blocks without such
//! a value pass through byte for byte, and so does everything else. Nothing
//! reads `:authority` after h2, so the replacement changes no answer.
//!
//! Anything it cannot follow (not HTTP/2, a malformed block, a block over
//! [`MAX_BLOCK`]) turns it into a plain pass-through for the rest of the
//! connection; h2 then judges the bytes itself.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use loona_hpack::huffman::HuffmanDecoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE: every server accepts frames this big.
const MAX_FRAME: usize = 16_384;
/// A header block bigger than this is passed through unexamined.
const MAX_BLOCK: usize = 1 << 20;
/// h2's SETTINGS_HEADER_TABLE_SIZE (the HPACK default; tonic keeps it).
const TABLE_SIZE: usize = 4096;

/// Lengths of the names in HPACK's static table (RFC 7541, Appendix A),
/// index 1 first; index 1 is `:authority`.
const STATIC_NAMES: [usize; 61] = [
    10, 7, 7, 5, 5, 7, 7, 7, 7, 7, 7, 7, 7, 7, 14, 15, 15, 13, 6, 27, 3, 5, 13, 13, 19, 16, 16, 14,
    16, 13, 12, 6, 4, 4, 6, 7, 4, 4, 8, 17, 13, 8, 19, 13, 4, 8, 12, 18, 19, 5, 7, 7, 11, 6, 10,
    25, 17, 10, 4, 3, 16,
];

/// A client connection whose `:authority` values h2 accepts.
pub struct Lenient<T> {
    inner: T,
    /// Bytes read from the client, not yet examined.
    input: BytesMut,
    /// Examined bytes for the reader.
    output: BytesMut,
    state: State,
    hpack: Hpack,
    /// What a read from the client lands in (zeroed once, not per read).
    scratch: Box<[u8]>,
}

enum State {
    Preface,
    /// At a frame header.
    Frame,
    /// Passing `n` more payload bytes of a frame through.
    Payload(usize),
    /// Collecting a header block: the original frames and the fragments.
    Block {
        frames: BytesMut,
        block: BytesMut,
        first: FrameHead,
        priority: Option<[u8; 5]>,
    },
    PassThrough,
}

#[derive(Clone, Copy)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHead {
    fn parse(b: &[u8]) -> FrameHead {
        FrameHead {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    fn write(self, out: &mut BytesMut) {
        let len = u32::try_from(self.len).unwrap_or(u32::MAX).to_be_bytes();
        out.put_slice(&len[1..]);
        out.put_u8(self.kind);
        out.put_u8(self.flags);
        out.put_u32(self.stream);
    }
}

impl<T> Lenient<T> {
    pub fn new(inner: T) -> Lenient<T> {
        Lenient {
            inner,
            input: BytesMut::new(),
            output: BytesMut::new(),
            state: State::Preface,
            hpack: Hpack::new(),
            scratch: vec![0; 8192].into_boxed_slice(),
        }
    }

    /// Moves what can be examined from `input` to `output`.
    fn examine(&mut self) {
        loop {
            match &mut self.state {
                State::PassThrough => {
                    let all = self.input.split();
                    self.output.unsplit(all);
                    return;
                }
                State::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.state = State::PassThrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return;
                    }
                    let preface = self.input.split_to(n);
                    self.output.unsplit(preface);
                    self.state = State::Frame;
                }
                State::Frame => {
                    if self.input.len() < 9 {
                        return;
                    }
                    let head = FrameHead::parse(&self.input[..9]);
                    if head.kind != HEADERS {
                        let frame_head = self.input.split_to(9);
                        self.output.unsplit(frame_head);
                        self.state = State::Payload(head.len);
                        continue;
                    }
                    if self.input.len() < 9 + head.len {
                        if head.len > MAX_BLOCK {
                            self.state = State::PassThrough;
                            continue;
                        }
                        return;
                    }
                    let frame = self.input.split_to(9 + head.len);
                    let Some((fragment, priority)) = headers_fragment(head, &frame[9..]) else {
                        self.output.unsplit(frame);
                        self.state = State::PassThrough;
                        continue;
                    };
                    let block = BytesMut::from(fragment);
                    let frames = frame;
                    if head.flags & END_HEADERS != 0 {
                        self.finish(frames, block, head, priority);
                    } else {
                        self.state = State::Block {
                            frames,
                            block,
                            first: head,
                            priority,
                        };
                    }
                }
                State::Payload(n) => {
                    if *n == 0 {
                        self.state = State::Frame;
                        continue;
                    }
                    if self.input.is_empty() {
                        return;
                    }
                    let take = (*n).min(self.input.len());
                    *n -= take;
                    let part = self.input.split_to(take);
                    self.output.unsplit(part);
                }
                State::Block { .. } => {
                    if self.input.len() < 9 {
                        return;
                    }
                    let head = FrameHead::parse(&self.input[..9]);
                    if head.kind != CONTINUATION {
                        // A protocol error h2 will report: hand it over as is.
                        self.pass_through_block();
                        continue;
                    }
                    if self.input.len() < 9 + head.len {
                        if head.len <= MAX_BLOCK {
                            return;
                        }
                        self.pass_through_block();
                        continue;
                    }
                    let frame = self.input.split_to(9 + head.len);
                    let State::Block {
                        mut frames,
                        mut block,
                        first,
                        priority,
                    } = std::mem::replace(&mut self.state, State::Frame)
                    else {
                        continue;
                    };
                    block.extend_from_slice(&frame[9..]);
                    frames.unsplit(frame);
                    if block.len() > MAX_BLOCK {
                        self.output.unsplit(frames);
                        self.state = State::PassThrough;
                    } else if head.flags & END_HEADERS != 0 {
                        self.finish(frames, block, first, priority);
                    } else {
                        self.state = State::Block {
                            frames,
                            block,
                            first,
                            priority,
                        };
                    }
                }
            }
        }
    }

    fn pass_through_block(&mut self) {
        if let State::Block { frames, .. } = std::mem::replace(&mut self.state, State::PassThrough)
        {
            self.output.unsplit(frames);
        }
    }

    /// A whole header block: passed on as it came, or rewritten.
    fn finish(
        &mut self,
        frames: BytesMut,
        block: BytesMut,
        first: FrameHead,
        priority: Option<[u8; 5]>,
    ) {
        self.state = State::Frame;
        match self.hpack.examine(&block) {
            Ok(None) => self.output.unsplit(frames),
            Ok(Some(rewritten)) => {
                write_headers(&mut self.output, first, priority, &rewritten);
            }
            Err(why) => {
                tracing::debug!(
                    why,
                    "header block not understood; passing the connection through"
                );
                self.output.unsplit(frames);
                self.state = State::PassThrough;
            }
        }
    }
}

/// The header block fragment of a HEADERS frame, and its priority fields.
fn headers_fragment(head: FrameHead, payload: &[u8]) -> Option<(&[u8], Option<[u8; 5]>)> {
    let mut p = payload;
    let mut pad = 0;
    if head.flags & PADDED != 0 {
        pad = usize::from(*p.first()?);
        p = &p[1..];
    }
    let mut priority = None;
    if head.flags & PRIORITY != 0 {
        priority = Some(<[u8; 5]>::try_from(p.get(..5)?).ok()?);
        p = &p[5..];
    }
    let end = p.len().checked_sub(pad)?;
    Some((&p[..end], priority))
}

/// One HEADERS frame (plus CONTINUATIONs past [`MAX_FRAME`]) carrying `block`,
/// with the first frame's END_STREAM and priority, unpadded.
fn write_headers(out: &mut BytesMut, first: FrameHead, priority: Option<[u8; 5]>, block: &[u8]) {
    let mut rest = block;
    let prio_len = if priority.is_some() { 5 } else { 0 };
    let room = MAX_FRAME - prio_len;
    let (now, later) = rest.split_at(rest.len().min(room));
    rest = later;
    let flags = (first.flags & !(PADDED | END_HEADERS | PRIORITY))
        | if priority.is_some() { PRIORITY } else { 0 }
        | if rest.is_empty() { END_HEADERS } else { 0 };
    FrameHead {
        len: prio_len + now.len(),
        kind: HEADERS,
        flags,
        stream: first.stream,
    }
    .write(out);
    if let Some(p) = priority {
        out.put_slice(&p);
    }
    out.put_slice(now);
    while !rest.is_empty() {
        let (now, later) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = later;
        FrameHead {
            len: now.len(),
            kind: CONTINUATION,
            flags: if rest.is_empty() { END_HEADERS } else { 0 },
            stream: first.stream,
        }
        .write(out);
        out.put_slice(now);
    }
}

/// The decoder side of the client's HPACK context, as far as needed: each
/// dynamic entry's size, its name's length, whether the name is `:authority`.
struct Hpack {
    entries: VecDeque<Entry>,
    size: usize,
    max: usize,
    huffman: HuffmanDecoder,
}

#[derive(Clone, Copy)]
struct Entry {
    size: usize,
    name_len: usize,
    authority: bool,
}

/// A string literal in a block: where it is and what it decodes to.
struct Literal {
    start: usize,
    end: usize,
    value: Vec<u8>,
}

impl Hpack {
    fn new() -> Hpack {
        Hpack {
            entries: VecDeque::new(),
            size: 0,
            max: TABLE_SIZE,
            huffman: HuffmanDecoder::new(),
        }
    }

    /// Follows one header block. Returns it rewritten if an `:authority`
    /// value in it needs replacing.
    fn examine(&mut self, block: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
        let mut at = 0;
        // (start, end, replacement) of each string literal to replace.
        let mut fixes: Vec<(usize, usize, Vec<u8>)> = Vec::new();
        while at < block.len() {
            let b = block[at];
            if b & 0x80 != 0 {
                let (index, next) = integer(block, at, 7)?;
                if index == 0 {
                    return Err("indexed field 0");
                }
                self.name(index)?;
                at = next;
                continue;
            }
            if b & 0xe0 == 0x20 {
                let (max, next) = integer(block, at, 5)?;
                if max > TABLE_SIZE {
                    return Err("table size above the setting");
                }
                self.max = max;
                self.evict();
                at = next;
                continue;
            }
            let (indexing, prefix) = if b & 0xc0 == 0x40 {
                (true, 6)
            } else {
                (false, 4)
            };
            let (index, next) = integer(block, at, prefix)?;
            at = next;
            let (name_len, authority) = if index == 0 {
                let name = self.literal(block, at, true)?;
                at = name.end;
                (name.value.len(), name.value == b":authority")
            } else {
                self.name(index)?
            };
            // Other values are decoded only for their length, and only
            // when they enter the table (Huffman decoding is the cost here).
            let value = self.literal(block, at, authority || indexing)?;
            at = value.end;
            if authority && !value.value.is_empty() && !valid(&value.value) {
                fixes.push((value.start, value.end, replacement(&value.value)));
            }
            if indexing {
                self.insert(Entry {
                    size: name_len + value.value.len() + 32,
                    name_len,
                    authority,
                });
            }
        }
        if fixes.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(block.len() + 16);
        let mut from = 0;
        for (start, end, value) in fixes {
            out.extend_from_slice(&block[from..start]);
            // A raw (not Huffman) string of the same decoded length.
            string(&mut out, &value);
            from = end;
        }
        out.extend_from_slice(&block[from..]);
        Ok(Some(out))
    }

    /// The name length of a table entry and whether it is `:authority`.
    fn name(&self, index: usize) -> Result<(usize, bool), &'static str> {
        if let Some(len) = STATIC_NAMES.get(index.wrapping_sub(1)) {
            return Ok((*len, index == 1));
        }
        index
            .checked_sub(STATIC_NAMES.len() + 1)
            .and_then(|i| self.entries.get(i))
            .map(|e| (e.name_len, e.authority))
            .ok_or("index beyond the table")
    }

    /// The string literal at `at`; its value only if `decode` (else empty).
    fn literal(&mut self, block: &[u8], at: usize, decode: bool) -> Result<Literal, &'static str> {
        let first = *block.get(at).ok_or("truncated string")?;
        let (len, start) = integer(block, at, 7)?;
        let end = start.checked_add(len).ok_or("string length")?;
        let raw = block.get(start..end).ok_or("truncated string")?;
        let value = if !decode {
            Vec::new()
        } else if first & 0x80 != 0 {
            self.huffman.decode(raw).map_err(|_| "bad Huffman string")?
        } else {
            raw.to_vec()
        };
        Ok(Literal {
            start: at,
            end,
            value,
        })
    }

    fn insert(&mut self, e: Entry) {
        // An entry bigger than the table empties it (RFC 7541, 4.4).
        if e.size > self.max {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.size += e.size;
        self.entries.push_front(e);
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size,
                None => break,
            }
        }
    }
}

/// An HPACK integer with an `n`-bit prefix at `at`: (value, next offset).
fn integer(block: &[u8], at: usize, n: u32) -> Result<(usize, usize), &'static str> {
    let mask = u8::MAX >> (8 - n);
    let mut value = usize::from(*block.get(at).ok_or("truncated integer")? & mask);
    let mut at = at + 1;
    if value < usize::from(mask) {
        return Ok((value, at));
    }
    let mut shift = 0;
    loop {
        let b = *block.get(at).ok_or("truncated integer")?;
        at += 1;
        value = value
            .checked_add(usize::from(b & 0x7f) << shift)
            .ok_or("integer overflow")?;
        if b & 0x80 == 0 {
            return Ok((value, at));
        }
        shift += 7;
        if shift > 28 {
            return Err("integer overflow");
        }
    }
}

/// A raw string literal (H = 0) with its 7-bit-prefix length.
fn string(out: &mut Vec<u8>, value: &[u8]) {
    let low7 = |n: usize| u8::try_from(n & 0x7f).unwrap_or(0);
    let mut len = value.len();
    if len < 0x7f {
        out.push(low7(len));
    } else {
        out.push(0x7f);
        len -= 0x7f;
        while len >= 0x80 {
            out.push(low7(len) | 0x80);
            len >>= 7;
        }
        out.push(low7(len));
    }
    out.extend_from_slice(value);
}

/// Whether h2 accepts this `:authority` (its own check).
fn valid(value: &[u8]) -> bool {
    http::uri::Authority::from_maybe_shared(Bytes::copy_from_slice(value)).is_ok()
}

/// The same length, of characters every authority may hold.
fn replacement(value: &[u8]) -> Vec<u8> {
    value
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
                b
            } else {
                b'-'
            }
        })
        .collect()
}

impl<T: AsyncRead + Unpin> AsyncRead for Lenient<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.input.is_empty() {
                // Pass-through and frame payloads go straight to the reader.
                let direct = match this.state {
                    State::PassThrough => Some(usize::MAX),
                    State::Payload(n) if n > 0 => Some(n),
                    _ => None,
                };
                if let Some(n) = direct {
                    let before = buf.filled().len();
                    if let Err(e) = ready!(Pin::new(&mut this.inner).poll_read(cx, buf)) {
                        return Poll::Ready(Err(e));
                    }
                    let got = buf.filled().len() - before;
                    if got > n {
                        // The next frame began: examine it first.
                        this.input.extend_from_slice(&buf.filled()[before + n..]);
                        buf.set_filled(before + n);
                        this.state = State::Frame;
                        this.examine();
                    } else if let State::Payload(left) = &mut this.state {
                        *left -= got;
                        if got == 0 {
                            this.state = State::PassThrough;
                        }
                    }
                    return Poll::Ready(Ok(()));
                }
            }
            let mut chunk = ReadBuf::new(&mut this.scratch[..]);
            if let Err(e) = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk)) {
                return Poll::Ready(Err(e));
            }
            if chunk.filled().is_empty() {
                // End of stream: hand over whatever is left.
                let rest = this.input.split();
                this.output.unsplit(rest);
                this.state = State::PassThrough;
                if this.output.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.input.extend_from_slice(chunk.filled());
            this.examine();
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Lenient<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Lenient<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Decoder;
    use tokio::io::AsyncReadExt;

    /// A HEADERS frame (END_HEADERS unless `continued`).
    fn headers(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        FrameHead {
            len: payload.len(),
            kind: HEADERS,
            flags,
            stream,
        }
        .write(&mut out);
        out.put_slice(payload);
        out.to_vec()
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        FrameHead {
            len: payload.len(),
            kind,
            flags,
            stream,
        }
        .write(&mut out);
        out.put_slice(payload);
        out.to_vec()
    }

    /// A raw string literal.
    fn lit(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        string(&mut out, s);
        out
    }

    /// Feeds `input` through [`Lenient`] `chunk` bytes at a time.
    async fn through(input: &[u8], chunk: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(64);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for c in input.chunks(chunk) {
                client.write_all(c).await.unwrap();
            }
        });
        let mut out = Vec::new();
        Lenient::new(server).read_to_end(&mut out).await.unwrap();
        writer.await.unwrap();
        out
    }

    /// The header lists of the HEADERS (+CONTINUATION) blocks in `bytes`,
    /// decoded as h2 would, and every other frame's (type, payload).
    type Headers = Vec<(String, String)>;

    fn decode(bytes: &[u8]) -> (Vec<Headers>, Vec<(u8, Vec<u8>)>) {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut rest = &bytes[PREFACE.len()..];
        let mut decoder = Decoder::new();
        let (mut lists, mut others, mut block) = (Vec::new(), Vec::new(), Vec::new());
        while !rest.is_empty() {
            let head = FrameHead::parse(rest);
            let payload = &rest[9..9 + head.len];
            rest = &rest[9 + head.len..];
            match head.kind {
                HEADERS => {
                    let (fragment, _) = headers_fragment(head, payload).unwrap();
                    block.extend_from_slice(fragment);
                }
                CONTINUATION => block.extend_from_slice(payload),
                _ => {
                    others.push((head.kind, payload.to_vec()));
                    continue;
                }
            }
            if head.flags & END_HEADERS != 0 {
                let list = decoder.decode(&block).unwrap();
                lists.push(
                    list.into_iter()
                        .map(|(n, v)| {
                            (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                        })
                        .collect(),
                );
                block.clear();
            }
        }
        (lists, others)
    }

    fn authority(list: &[(String, String)]) -> &str {
        &list.iter().find(|(n, _)| n == ":authority").unwrap().1
    }

    #[tokio::test]
    async fn bad_authorities_become_valid_ones_of_the_same_length() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        // 1: `:authority` with incremental indexing (static name 1), raw.
        let mut b1 = vec![0x83, 0x86, 0x41];
        b1.extend(lit(b"http://127.0.0.1:2379"));
        b1.push(0x40); // a new name, indexed too
        b1.extend(lit(b"x-mesh"));
        b1.extend(lit(b"outbound|2379||etcd.ns.svc.cluster.local"));
        input.extend(headers(1, END_HEADERS, &b1));
        input.extend(frame(0x0, 0x1, 1, b"\0\0\0\0\0")); // DATA, END_STREAM
        // 3: the dynamic entry by index (62 + 1: one entry came after it),
        // then a Huffman-coded value (RFC 7541 C.6.1's "https://www.example.com").
        input.extend(headers(3, END_HEADERS, &[0x83, 0x80 | 63]));
        let mut b5 = vec![0x82, 0x01]; // without indexing, name 1
        b5.push(0x80 | 17);
        b5.extend([
            0x9d, 0x29, 0xad, 0x17, 0x18, 0x63, 0xc7, 0x8f, 0x0b, 0x97, 0xc8, 0xe9, 0xae, 0x82,
            0xae, 0x43, 0xd3,
        ]);
        // Padded, with priority, and continued.
        let mut p5 = vec![3]; // pad length
        p5.extend([0, 0, 0, 0, 16]); // priority
        p5.extend(&b5[..4]);
        p5.extend([0, 0, 0]);
        input.extend(headers(5, PADDED | PRIORITY | 0x1, &p5));
        input.extend(frame(CONTINUATION, END_HEADERS, 5, &b5[4..]));
        // 7: a valid authority, literal with a new name: left as it is.
        let mut b7 = vec![0x82, 0x00];
        b7.extend(lit(b":authority"));
        b7.extend(lit(b"etcd.example:2379"));
        input.extend(headers(7, END_HEADERS, &b7));

        for chunk in [1, 7, 4096] {
            let out = through(&input, chunk).await;
            let (lists, others) = decode(&out);
            assert_eq!(lists.len(), 4);
            assert_eq!(authority(&lists[0]), "http---127.0.0.1-2379");
            assert!(lists[0].contains(&(
                "x-mesh".into(),
                "outbound|2379||etcd.ns.svc.cluster.local".into()
            )));
            assert_eq!(authority(&lists[1]), "http---127.0.0.1-2379");
            assert_eq!(authority(&lists[2]), "https---www.example.com");
            assert_eq!(authority(&lists[3]), "etcd.example:2379");
            for list in &lists {
                assert!(valid(authority(list).as_bytes()));
            }
            assert_eq!(others, vec![(0x4, vec![]), (0x0, b"\0\0\0\0\0".to_vec())]);
            // The unchanged blocks are byte for byte what was sent.
            let tail = headers(7, END_HEADERS, &b7);
            assert_eq!(&out[out.len() - tail.len()..], &tail[..]);
        }
    }

    #[tokio::test]
    async fn eviction_is_followed() {
        let mut input = PREFACE.to_vec();
        // A table of 100 bytes: the authority (10 + 21 + 32 = 63) and x: y
        // (34) fit; z: w evicts the authority, so 64 names nothing after it.
        let mut b = vec![0x20 | 0x1f, 100 - 31, 0x41];
        b.extend(lit(b"http://127.0.0.1:2379"));
        b.push(0x40);
        b.extend(lit(b"x"));
        b.extend(lit(b"y"));
        input.extend(headers(1, END_HEADERS, &b));
        let mut b2 = vec![0x80 | 63, 0x80 | 62, 0x40];
        b2.extend(lit(b"z"));
        b2.extend(lit(b"w"));
        b2.extend([0x80 | 63]);
        input.extend(headers(3, END_HEADERS, &b2));
        let mut hpack = Hpack::new();
        assert!(hpack.examine(&b).unwrap().is_some());
        assert!(hpack.examine(&b2).unwrap().is_none());
        assert_eq!(hpack.entries.len(), 2);
        assert!(
            hpack.examine(&[0x80 | 64]).is_err(),
            "the authority was evicted"
        );
        let (lists, _) = decode(&through(&input, 3).await);
        assert_eq!(authority(&lists[0]), "http---127.0.0.1-2379");
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            lists[1],
            pairs(&[
                (":authority", "http---127.0.0.1-2379"),
                ("x", "y"),
                ("z", "w"),
                ("x", "y"),
            ])
        );
    }

    /// Random header blocks: never a panic; a block is passed on unchanged
    /// unless it was rewritten, and a rewritten one needs no more rewriting.
    #[test]
    fn random_blocks() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut rewritten = 0;
        for i in 0..5_000 {
            let len = usize::try_from(next() % 48).unwrap();
            let mut block: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
            if i % 2 == 0 {
                // Often an authority literal, to reach the rewrite.
                block.splice(0..0, [0x41, 3, b'a', b'/', b'b']);
            }
            let mut input = PREFACE.to_vec();
            input.extend(headers(1, END_HEADERS, &block));
            let mut conn = Lenient::new(tokio::io::empty());
            conn.input.extend_from_slice(&input);
            conn.examine();
            match Hpack::new().examine(&block) {
                Ok(Some(fixed)) => {
                    rewritten += 1;
                    assert_eq!(Hpack::new().examine(&fixed), Ok(None));
                    let mut want = PREFACE.to_vec();
                    want.extend(headers(1, END_HEADERS, &fixed));
                    assert_eq!(&conn.output[..], &want[..]);
                }
                _ => assert_eq!(&conn.output[..], &input[..]),
            }
        }
        assert!(rewritten > 100, "{rewritten}");
    }

    #[tokio::test]
    async fn other_protocols_pass_through() {
        let input = b"GET / HTTP/1.1\r\nHost: http://x\r\n\r\n".to_vec();
        assert_eq!(through(&input, 5).await, input);
        let mut garbage = PREFACE.to_vec();
        garbage.extend(headers(1, END_HEADERS, &[0x80]));
        garbage.extend(b"more");
        assert_eq!(through(&garbage, 2).await, garbage);
    }
}
