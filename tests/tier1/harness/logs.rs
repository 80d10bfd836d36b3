//! Edge's log, captured in the test. One process-wide subscriber (edge's
//! filter at `info`, the text and the JSON format side by side) writes each
//! line to the sink of the thread that logged it, if that thread has one:
//! tier-1 tests run edge on the test's one-thread runtime, so every task of
//! a test logs on its thread. (A thread-local default subscriber would do
//! the same, but tracing caches per call site whether anyone listens, and
//! tests starting and stopping subscribers on other threads race with it.)

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex, Once};

use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

thread_local! {
    /// This thread's sink and whether it takes JSON.
    static SINK: RefCell<Option<(Sink, bool)>> = const { RefCell::new(None) };
}

/// Writes to the current thread's sink when its format is `json`'s.
struct ToThread {
    json: bool,
}

impl Write for ToThread {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        SINK.with_borrow(|s| {
            if let Some((sink, json)) = s {
                if *json == self.json {
                    sink.0.lock().unwrap().extend_from_slice(b);
                }
            }
        });
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static INIT: Once = Once::new();

pub struct Captured {
    sink: Sink,
}

impl Drop for Captured {
    fn drop(&mut self) {
        SINK.with_borrow_mut(|s| *s = None);
    }
}

impl Captured {
    /// Captures this thread's log at `info` through edge's filter
    /// (`log_limit::filter`), as JSON lines when `json`, else as text.
    pub fn start(json: bool) -> Captured {
        INIT.call_once(|| {
            let filter = tracing_subscriber::EnvFilter::new(edge::log_limit::filter("info"));
            let text = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_target(false)
                .with_writer(|| ToThread { json: false });
            let json = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(|| ToThread { json: true });
            let sub = tracing_subscriber::registry()
                .with(filter)
                .with(text)
                .with(json);
            let _ = tracing::subscriber::set_global_default(sub);
        });
        let sink = Sink::default();
        SINK.with_borrow_mut(|s| *s = Some((sink.clone(), json)));
        Captured { sink }
    }

    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.sink.0.lock().unwrap())
            .lines()
            .map(String::from)
            .collect()
    }

    /// The access-log lines (`request` events).
    pub fn access(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.contains(" request ") || l.contains("\"message\":\"request\""))
            .collect()
    }

    /// Every other line: the daemon's own log.
    pub fn daemon(&self) -> Vec<String> {
        let access = self.access();
        self.lines()
            .into_iter()
            .filter(|l| !access.contains(l))
            .collect()
    }
}
