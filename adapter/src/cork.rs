//! Client connections' writes gathered until the runtime has run what is
//! ready. The HTTP/2 connection task writes its queued frames and flushes
//! each time it is polled, and it is polled as soon as one response stream
//! hands it a frame: a commit's answers, or one event fanned out to
//! thousands of watch streams, left in hundreds of small writes. [`Corked`]
//! keeps written bytes and, on a flush, yields the task (it goes to the
//! back of the run queue) so that the streams woken with it queue their
//! frames first, again while each yield brought more, at most
//! [`MAX_YIELDS`] times or [`CAP`] bytes; then it sends everything in one
//! write. Under no load a yield costs one trip through an empty queue.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes at least this long go straight through when nothing is kept
/// (a LIST page is not copied).
const PASS: usize = 16 << 10;

/// Most bytes kept before they are written anyway.
const CAP: usize = 64 << 10;

/// Most yields of one flush.
const MAX_YIELDS: u8 = 8;

/// A kept buffer larger than this is freed once written, so idle
/// connections hold little.
const KEEP: usize = 8 << 10;

pub struct Corked<T> {
    inner: T,
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken.
    sent: usize,
    /// Times this flush yielded, and how much was kept at the last one.
    yields: u8,
    kept_at_yield: usize,
}

impl<T> Corked<T> {
    pub fn new(inner: T) -> Self {
        Corked {
            inner,
            buf: Vec::new(),
            sent: 0,
            yields: 0,
            kept_at_yield: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> Corked<T> {
    /// Writes out what is kept.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: `Ready(true)` when they are to be
    /// kept, `Ready(false)` when they go straight to the socket.
    fn room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if !self.buf.is_empty() && self.buf.len() + len > CAP {
            ready!(self.drain(cx))?;
        }
        Poll::Ready(Ok(!(self.buf.is_empty() && len >= PASS)))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Corked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Corked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if ready!(this.room(cx, data.len()))? {
            this.buf.extend_from_slice(data);
            Poll::Ready(Ok(data.len()))
        } else {
            Pin::new(&mut this.inner).poll_write(cx, data)
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let len = bufs.iter().map(|b| b.len()).sum();
        if ready!(this.room(cx, len))? {
            for b in bufs {
                this.buf.extend_from_slice(b);
            }
            Poll::Ready(Ok(len))
        } else {
            Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.buf.is_empty() {
            // Yields again while each yield brought more to send: the
            // streams woken together do not all run before the first
            // comes back (tokio runs its local queue before the global).
            if this.yields < MAX_YIELDS && this.buf.len() > this.kept_at_yield {
                // Woken while running, a tokio task is queued behind the
                // tasks already ready, not run next.
                this.yields += 1;
                this.kept_at_yield = this.buf.len();
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(this.drain(cx))?;
        }
        this.yields = 0;
        this.kept_at_yield = 0;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Corked<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes are kept until a flush, which sends them after one yield; a
    /// large one passes when nothing is kept; the bytes arrive in order.
    #[tokio::test]
    async fn keeps_until_flush() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut c = Corked::new(a);
        c.write_all(b"one ").await.unwrap();
        c.write_all(b"two ").await.unwrap();
        let mut probe = [0u8; 1];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(20), b.read(&mut probe)).await;
        assert!(early.is_err(), "bytes left before the flush");
        let big = vec![b'x'; PASS + 1];
        c.write_all(&big).await.unwrap();
        c.write_all(b" three").await.unwrap();
        c.flush().await.unwrap();
        let mut got = vec![0u8; 8 + big.len() + 6];
        b.read_exact(&mut got).await.unwrap();
        let mut want = b"one two ".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b" three");
        assert_eq!(got, want);
        assert!(c.buf.is_empty() && c.yields == 0);
        // Nothing kept: a large write is not copied.
        c.write_all(&big).await.unwrap();
        assert!(c.buf.is_empty());
        let mut got = vec![0u8; big.len()];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
    }

    /// More than CAP bytes kept are written before the next ones.
    #[tokio::test]
    async fn writes_at_cap() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut c = Corked::new(a);
        let chunk = vec![b'y'; PASS - 1];
        for _ in 0..(CAP / chunk.len() + 1) {
            c.write_all(&chunk).await.unwrap();
        }
        let mut got = vec![0u8; chunk.len()];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, chunk);
        assert!(c.buf.len() <= CAP);
    }
}
