//! HTTP/2 streams polled inside their connection's own task.
//!
//! hyper's HTTP/2 server hands each new stream to an executor, which with
//! `TokioExecutor` is a runtime task per request: an allocation, a place in
//! the scheduler's run queue and in its task list, and a trip through the
//! queue for every wake. Under load a connection has up to
//! `h2_max_concurrent_streams` of them, and the single-threaded scheduler
//! runs a woken task only after everything queued before it, by which time
//! the stream's frames have left the cache. Here the executor only collects
//! the stream futures, and the connection's task polls those that were woken
//! right after the connection itself: one task per connection, as nginx and
//! HAProxy have one event handler per connection.
//!
//! A slow stream cannot stall the others: each is polled only when woken and
//! returns `Pending` as soon as it waits, as any task would.
//!
//! A stream the client resets at once must not reach an upstream (HTTP/2 rapid
//! reset: opening and cancelling streams costs the attacker nothing and would
//! cost the backends a request each). hyper checks for `RST_STREAM` only after
//! the request's future returns `Pending`, and edge's request future writes to
//! the upstream on its first poll, so an HTTP/2 request first waits once
//! ([`reset_check`]) and every new stream is polled twice in its first turn
//! (`Stream`): between the two, hyper has looked for a reset that came in
//! the same read.
//!
//! A stream whose client takes none of its answer for `send_timeout` is reset
//! (nginx's send_timeout, per stream). An HTTP/2 client can keep reading the
//! connection and yet never open a stream's flow-control window; that stream
//! is then never polled, so nothing inside it can notice, and the upstream
//! connection its answer comes from stays taken. The connection's future
//! sweeps its streams instead (see [`waiting_on_client`] and `WithStreams`).

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::{Instant, Sleep};

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    /// Set during one stream's poll: whether what it waits on next is the
    /// client taking data. A thread-local, because the stream's future is
    /// hyper's, and the request path and the answer's body inside it are
    /// edge's: they say what they wait on (`super::Sending`), the wrapper
    /// reads it afterwards. Nothing outside this HTTP/2 session code touches it.
    static OWED: Cell<bool> = const { Cell::new(false) };
}

/// Said by the stream's own code (`super::Sending` and the service): `true`
/// when the answer is ready to go to the client, and after each poll of the
/// answer's body (`true` when it gave a frame: hyper now needs flow-control
/// room to send it; `false` when it waits on the upstream, which has its own
/// timeout). Costs a thread-local store.
pub(super) fn waiting_on_client(yes: bool) {
    OWED.with(|o| o.set(yes));
}

/// Sweeps a stream must stay unpolled, waiting on its client, to be reset:
/// with a sweep every half `send_timeout`, between one and one and a half.
const QUIET_SWEEPS: u8 = 3;

/// The executor given to one connection's HTTP/2 builder. hyper calls it from
/// within the connection's (or a stream's) `poll`, and [`WithStreams`] picks
/// the futures up in the same poll; the mutex is never contended, and never
/// held while a stream runs.
#[derive(Clone, Default)]
pub struct StreamExec(Arc<Mutex<Vec<Stream>>>);

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Stream {
                fut: Box::pin(fut),
                started: false,
                owed: false,
                quiet: 0,
                waker: None,
                expired: false,
            });
    }
}

/// One stream's future, as the connection's task runs it.
///
/// Its first turn is two polls: the first with a waker that does nothing, the
/// second at once with the real one. A future that waits once on its first
/// poll ([`reset_check`]) thus goes on in the same turn, instead of waking
/// itself, which `FuturesUnordered` answers by handing the whole connection
/// back to the scheduler every two streams. The second poll registers the real
/// waker wherever the first registered the no-op one, as the `Future` contract
/// allows.
struct Stream {
    fut: StreamFuture,
    started: bool,
    /// Its last poll left it waiting for the client to take data.
    owed: bool,
    /// Sweeps since its last poll, counted while `owed`.
    quiet: u8,
    /// To be polled once more when it is cut (only kept while `owed`).
    waker: Option<Waker>,
    /// Cut by the sweep: ends at its next poll, dropping hyper's stream
    /// (which resets it) and the answer's body (which closes its upstream
    /// connection).
    expired: bool,
}

impl Future for Stream {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(());
        }
        if !this.started {
            this.started = true;
            let mut first = Context::from_waker(Waker::noop());
            if poll_owing(&mut this.fut, &mut this.owed, &mut first).is_ready() {
                return Poll::Ready(());
            }
        }
        if poll_owing(&mut this.fut, &mut this.owed, cx).is_ready() {
            return Poll::Ready(());
        }
        this.quiet = 0;
        if this.owed && !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            this.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Polls a stream's future; `owed` is what it said it waits on, updated when
/// it waits again. What it last said holds until something says otherwise: a
/// poll in which hyper only finds no flow-control room runs no code of edge's.
fn poll_owing(fut: &mut StreamFuture, owed: &mut bool, cx: &mut Context<'_>) -> Poll<()> {
    OWED.with(|o| o.set(*owed));
    let r = fut.as_mut().poll(cx);
    if r.is_pending() {
        *owed = OWED.with(Cell::get);
    }
    r
}

fn log_reset(peer: SocketAddr, streams: usize) {
    let limit = &crate::log_limit::LIMIT;
    if let Some(n) = limit.admit("send_timeout", &peer.ip().to_string()) {
        tracing::info!(
            client = %peer.ip(),
            "resetting {streams} HTTP/2 stream(s): the client took none of the answer within send_timeout{}",
            crate::log_limit::held(n)
        );
    }
}

/// Waits once, so that hyper looks for a reset of this stream before the
/// request goes upstream (see the module doc).
pub fn reset_check() -> impl Future<Output = ()> {
    let mut waited = false;
    std::future::poll_fn(move |cx| {
        if waited {
            Poll::Ready(())
        } else {
            waited = true;
            // For an executor that polls again only when woken.
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
}

/// A connection future and the streams its executor collected, polled together.
/// Finishes when the connection has finished and so have its streams.
pub struct WithStreams<C: Future> {
    conn: Pin<Box<C>>,
    done: Option<C::Output>,
    exec: StreamExec,
    streams: FuturesUnordered<Stream>,
    send_timeout: Duration,
    /// Made when the first stream waits, then every half `send_timeout` while
    /// there are streams.
    sweep: Option<Pin<Box<Sleep>>>,
    peer: SocketAddr,
}

impl<C: Future> WithStreams<C> {
    pub fn new(conn: C, exec: StreamExec, send_timeout: Duration, peer: SocketAddr) -> Self {
        WithStreams {
            conn: Box::pin(conn),
            done: None,
            exec,
            streams: FuturesUnordered::new(),
            send_timeout,
            sweep: None,
            peer,
        }
    }

    /// Counts, for each stream waiting on its client, the sweeps it has not
    /// been polled in, and cuts those that reach `QUIET_SWEEPS`.
    fn watch(&mut self, cx: &mut Context<'_>) {
        let period = self.send_timeout / 2;
        let sweep = self
            .sweep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(period)));
        while sweep.as_mut().poll(cx).is_ready() {
            let mut cut = 0;
            for s in self.streams.iter_mut() {
                if !s.owed || s.expired {
                    continue;
                }
                s.quiet = s.quiet.saturating_add(1);
                if s.quiet >= QUIET_SWEEPS {
                    s.expired = true;
                    if let Some(w) = s.waker.take() {
                        w.wake();
                    }
                    cut += 1;
                }
            }
            if cut > 0 {
                log_reset(self.peer, cut);
            }
            sweep.as_mut().reset(Instant::now() + period);
        }
    }

    /// Moves what the executor collected into the set; whether there was any.
    fn adopt(&mut self) -> bool {
        let mut new = self.exec.0.lock().unwrap_or_else(|p| p.into_inner());
        let any = !new.is_empty();
        for fut in new.drain(..) {
            self.streams.push(fut);
        }
        any
    }
}

impl<C: Future> Future for WithStreams<C>
where
    C::Output: Unpin,
{
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = &mut *self;
        if this.done.is_none() {
            if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
                this.done = Some(out);
            }
        }
        // A stream may hand over a task of its own (hyper's CONNECT tunnel),
        // so new futures are collected again after the streams ran.
        this.adopt();
        loop {
            // Runs every woken stream until each waits again (FuturesUnordered
            // yields to the scheduler on its own after a batch, so one busy
            // connection cannot starve the others).
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
            if !this.adopt() {
                break;
            }
        }
        if this.streams.is_empty() {
            if let Some(out) = this.done.take() {
                return Poll::Ready(out);
            }
        } else {
            this.watch(cx);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;

    /// Streams handed to the executor run to completion, and the whole future
    /// waits for them even after the connection future is done.
    #[tokio::test]
    async fn streams_run_and_are_awaited_after_the_connection_ends() {
        let exec = StreamExec::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let e2 = exec.clone();
        let r2 = ran.clone();
        let conn = async move {
            let r3 = r2.clone();
            e2.execute(async move {
                r3.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                rx.await.unwrap();
                r3.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
            "conn done"
        };
        let all = tokio::spawn(WithStreams::new(
            conn,
            exec,
            std::time::Duration::from_secs(60),
            ([127, 0, 0, 1], 1).into(),
        ));
        tokio::task::yield_now().await;
        // The stream has started and waits; the connection is done, the whole not.
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(!all.is_finished(), "finished before its stream");
        tx.send(()).unwrap();
        assert_eq!(all.await.unwrap(), "conn done");
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// A new stream that waits once in `reset_check` goes on in its first turn,
    /// without waking the connection's task for a second one.
    #[test]
    fn a_new_stream_gets_past_the_reset_check_in_its_first_turn() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let exec = StreamExec::default();
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (e2, r2) = (exec.clone(), ran.clone());
        let conn = async move {
            e2.execute(async move {
                reset_check().await;
                r2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
            std::future::pending::<()>().await;
        };
        let mut all = Box::pin(WithStreams::new(
            conn,
            exec,
            std::time::Duration::from_secs(60),
            ([127, 0, 0, 1], 1).into(),
        ));
        let wakes = Arc::new(Count(Default::default()));
        let waker = Waker::from(wakes.clone());
        assert!(all
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        assert_eq!(
            ran.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "not run in one turn"
        );
        assert_eq!(
            wakes.0.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "rescheduled"
        );
    }

    /// A stream that hands over a task while it runs (as hyper does for a
    /// CONNECT tunnel) neither deadlocks nor loses that task.
    #[tokio::test]
    async fn a_task_handed_over_by_a_stream_runs() {
        let exec = StreamExec::default();
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (e2, r2) = (exec.clone(), ran.clone());
        let conn = async move {
            let (e3, r3) = (e2.clone(), r2.clone());
            e2.execute(async move {
                e3.execute(async move {
                    r3.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            });
        };
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            WithStreams::new(
                conn,
                exec,
                std::time::Duration::from_secs(60),
                ([127, 0, 0, 1], 1).into(),
            ),
        )
        .await
        .expect("the connection's future did not finish");
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
