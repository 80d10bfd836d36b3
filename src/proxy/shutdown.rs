//! The listeners' shutdown signal as a connection sees it: asked at every
//! request, waited on between requests.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

/// The shutdown signal, cheap to ask per request. The wake-up is registered
/// once per connection: a connection is one task, whose waker does not
/// change, so the registration made at the first idle wait stays good; after
/// that, asking costs one atomic load of the channel's version. (Polling
/// `changed()` at every wait took the channel's lock each time, and
/// `borrow()` takes it too.)
pub struct Stop {
    rx: watch::Receiver<bool>,
    /// Completes when the value changes; polled once per arming.
    wake: Pin<Box<dyn Future<Output = ()> + Send>>,
    armed: bool,
    set: bool,
}

/// A future that completes at the next change after what `rx` has seen.
fn waiter(rx: &watch::Receiver<bool>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let mut rx = rx.clone();
    Box::pin(async move {
        let _ = rx.changed().await;
    })
}

impl Stop {
    pub fn new(mut rx: watch::Receiver<bool>) -> Stop {
        let set = *rx.borrow_and_update();
        Stop {
            wake: waiter(&rx),
            rx,
            armed: false,
            set,
        }
    }

    /// Whether shutdown has begun.
    pub fn is_set(&mut self) -> bool {
        if !self.set {
            match self.rx.has_changed() {
                Ok(false) => {}
                Ok(true) => self.set = *self.rx.borrow_and_update(),
                // The sender is gone: so is the listener.
                Err(_) => self.set = true,
            }
        }
        self.set
    }

    /// Ready once shutdown has begun; otherwise makes sure this task is woken then.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_set() {
            return Poll::Ready(());
        }
        while !self.armed {
            self.armed = true;
            if self.wake.as_mut().poll(cx).is_ready() {
                // Changed since the check above: look again, and if it was not
                // to shutdown, wait for the next change.
                if self.is_set() {
                    return Poll::Ready(());
                }
                self.wake = waiter(&self.rx);
                self.armed = false;
            }
        }
        Poll::Pending
    }

    /// Reads into `buf` on a connection idle between requests; `None` when
    /// shutdown began first. A request already in the socket is read first,
    /// so it is answered (with `Connection: close`) rather than dropped.
    pub async fn read_or_stop<T: AsyncRead + Unpin>(
        &mut self,
        io: &mut T,
        buf: &mut BytesMut,
    ) -> Option<io::Result<usize>> {
        let mut read = std::pin::pin!(io.read_buf(buf));
        self.or_stop(|cx| read.as_mut().poll(cx)).await
    }

    /// The same for any read: `read` is polled first, then the signal.
    pub async fn or_stop<T>(
        &mut self,
        mut read: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Option<T> {
        poll_fn(|cx| match read(cx) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending => self.poll(cx).map(|()| None),
        })
        .await
    }
}
