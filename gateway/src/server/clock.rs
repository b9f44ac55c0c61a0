//! A connection's two deadlines, kept apart (hyper has one timer for both):
//!
//! - **header**: from the connection's opening, or from the first byte of a later request,
//!   until that request's headers are complete (the service is called);
//! - **idle**: from the end of a response (its body dropped by hyper once written) until
//!   the first byte of the next request.
//!
//! While a request is being served neither runs: its body and its answer have their own
//! deadline (`--request-timeout`, in the routes). The deadlines are enforced on reads: a
//! read that would wait past the deadline fails with `TimedOut`, and hyper closes the
//! connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request's headers to complete, since then.
    Head(Instant),
    /// This many requests being served.
    Busy(u32),
    /// Between requests, since then.
    Idle(Instant),
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// The read waiting without a deadline while busy: woken when the request ends, so that
    /// it starts the idle deadline.
    reader: Option<Waker>,
}

/// One connection's phase, shared by its reads and its service.
#[derive(Debug, Clone)]
pub struct Clock {
    state: Arc<Mutex<State>>,
    header: Duration,
    idle: Duration,
}

impl Clock {
    /// A clock for a connection opened now: its first request's headers are due.
    pub fn new(header: Duration, idle: Duration) -> Clock {
        Clock {
            state: Arc::new(Mutex::new(State {
                phase: Phase::Head(Instant::now()),
                reader: None,
            })),
            header,
            idle,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A request's headers are complete: until the returned guard is dropped (with the
    /// response body), no deadline runs.
    pub fn request_started(&self) -> Busy {
        let mut state = self.state();
        state.phase = match state.phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Head(_) | Phase::Idle(_) => Phase::Busy(1),
        };
        Busy { clock: self.clone() }
    }

    fn bytes_arrived(&self) {
        let mut state = self.state();
        if let Phase::Idle(_) = state.phase {
            state.phase = Phase::Head(Instant::now());
        }
    }

    /// When the current wait of a read ends, and what it waits for; None while busy (then
    /// `reader` is woken when that changes).
    fn deadline(&self, reader: &Waker) -> Option<(Instant, &'static str)> {
        let mut state = self.state();
        match state.phase {
            Phase::Head(since) => Some((
                since + self.header,
                "request headers not complete within the header timeout",
            )),
            Phase::Idle(since) => Some((since + self.idle, "connection idle past the idle timeout")),
            Phase::Busy(_) => {
                state.reader = Some(reader.clone());
                None
            }
        }
    }
}

/// A request being served; dropping it (with its response body) ends it.
#[derive(Debug)]
pub struct Busy {
    clock: Clock,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.clock.state();
        state.phase = match state.phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        };
        if let (Phase::Idle(_), Some(reader)) = (state.phase, state.reader.take()) {
            reader.wake();
        }
    }
}

/// A connection's stream whose reads honour its [`Clock`].
pub struct TimedIo<S> {
    stream: S,
    clock: Clock,
    sleep: Pin<Box<Sleep>>,
}

impl<S> TimedIo<S> {
    pub fn new(stream: S, clock: Clock) -> TimedIo<S> {
        TimedIo {
            stream,
            clock,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.clock.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => {
                let Some((deadline, what)) = this.clock.deadline(cx.waker()) else {
                    return Poll::Pending;
                };
                if this.sleep.deadline() != deadline {
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
