//! The clock of a connection's header read timeout, started by the request's first byte.
//!
//! hyper starts its header read timeout as soon as a connection waits for its next request, so
//! an idle kept-alive connection would be closed after it. Clients that keep one connection for
//! a VM's life (Cloud Hypervisor's `ch-remote` client, Kata's runtime) then lose it between
//! calls. Each connection gets a [`RequestClock`] as hyper's timer and its stream wrapped in a
//! [`CountedIo`]: the timeout of a connection's first request counts from the connection's
//! start (a client that connects and says nothing is still cut off), that of every later one
//! from the first byte read after the wait began. A request that has begun to arrive must
//! still arrive whole in time.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How many reads of a connection brought bytes.
#[derive(Debug, Default)]
struct Reads(AtomicU64);

impl Reads {
    fn count(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// A connection's stream, counting the reads that bring bytes for its [`RequestClock`].
pub(crate) struct CountedIo<S> {
    inner: S,
    reads: Arc<Reads>,
}

/// A stream and the timer hyper must use for it, tied together.
pub(crate) fn counted<S>(stream: S) -> (CountedIo<S>, RequestClock) {
    let reads = Arc::new(Reads::default());
    let clock = RequestClock {
        reads: reads.clone(),
    };
    (
        CountedIo {
            inner: stream,
            reads,
        },
        clock,
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for CountedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.reads.0.fetch_add(1, Ordering::AcqRel);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// hyper's timer for one connection (it times only the request head on an HTTP/1 server).
#[derive(Debug, Clone)]
pub(crate) struct RequestClock {
    reads: Arc<Reads>,
}

impl Timer for RequestClock {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadDeadline {
            reads: self.reads.clone(),
            reads_at_start: self.reads.count(),
            duration,
            sleep: None,
        })
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

/// A header read timeout that starts counting at the first byte of a request (at once for a
/// connection that has read nothing yet).
struct HeadDeadline {
    reads: Arc<Reads>,
    reads_at_start: u64,
    duration: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for HeadDeadline {
    type Output = ();

    /// Not started, it registers no waker of its own: hyper polls it on the connection's task
    /// right after a read, so the read that brings the first byte wakes that task, and this
    /// poll that follows starts the clock.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.sleep.is_none() {
            if self.reads_at_start > 0 && self.reads.count() == self.reads_at_start {
                return Poll::Pending;
            }
            self.sleep = Some(Box::pin(tokio::time::sleep(self.duration)));
        }
        match self.sleep.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl Sleep for HeadDeadline {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn waits_for_a_later_requests_first_byte() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut io, clock) = counted(server);
        let mut byte = [0u8; 1];
        tokio::io::AsyncWriteExt::write_all(&mut client, b"x")
            .await
            .unwrap();
        io.read_exact(&mut byte).await.unwrap();
        // An earlier request was read: an idle wait does not time out.
        let mut deadline = clock.sleep(Duration::from_secs(10));
        let idle = tokio::time::timeout(Duration::from_secs(60), deadline.as_mut()).await;
        assert!(idle.is_err(), "the clock ran while the connection was idle");
        tokio::io::AsyncWriteExt::write_all(&mut client, b"y")
            .await
            .unwrap();
        io.read_exact(&mut byte).await.unwrap();
        let started = tokio::time::Instant::now();
        deadline.await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_spoke_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let (_io, clock) = counted(server);
        let started = tokio::time::Instant::now();
        clock.sleep(Duration::from_secs(10)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
