//! Log lines that peers can cause, at most one per kind (and key, such as a
//! client address) per minute: a client or an upstream that repeats a fault
//! costs the journal one line a minute, and that line says how many like it
//! were held back. The journal is where operators look for renewal failures;
//! no peer may flood it.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One line per kind and key per this long.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Keys remembered at once; past this (a flood from many addresses), the
/// kind's keys share one slot, so memory stays bounded.
const MAX_KEYS: usize = 4096;

struct Slot {
    since: Instant,
    held: u64,
}

/// The held-back counts, by kind and key.
#[derive(Default)]
pub struct LogLimit {
    slots: Mutex<HashMap<(&'static str, String), Slot>>,
}

impl LogLimit {
    /// `Some(n)`: write the line now, saying `n` more like it were held
    /// back since the last one; `None`: counted, stay quiet.
    pub fn admit(&self, kind: &'static str, key: &str) -> Option<u64> {
        let now = Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() >= MAX_KEYS {
            slots.retain(|_, s| now.duration_since(s.since) < WINDOW);
        }
        let key = if slots.len() >= MAX_KEYS {
            String::new()
        } else {
            key.to_string()
        };
        let fresh = Slot {
            since: now,
            held: 0,
        };
        match slots.entry((kind, key)) {
            Entry::Occupied(mut o) => {
                let s = o.get_mut();
                if now.duration_since(s.since) < WINDOW {
                    s.held += 1;
                    None
                } else {
                    Some(std::mem::replace(s, fresh).held)
                }
            }
            Entry::Vacant(v) => {
                v.insert(fresh);
                Some(0)
            }
        }
    }
}

/// The one table for the process.
pub static LIMIT: std::sync::LazyLock<LogLimit> = std::sync::LazyLock::new(LogLimit::default);

/// The suffix a line carries for what it stands for.
pub fn held(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more like this in the last minute, not logged)")
    }
}

/// The protocol libraries edge is built on log a peer's misbehaviour at
/// WARN (h2: "recv PING ack that we never sent"; rustls: "Sending fatal
/// alert"), once per occurrence: a client could write to the journal at
/// will. At `error`, `warn` and `info` they are held to ERROR; an operator
/// who asks for `debug` or `trace` gets all of it. Edge itself says what
/// matters of those faults, at debug, and counts them in the metrics.
const PEER_FACING: [&str; 8] = [
    "h2",
    "hyper",
    "rustls",
    "tokio_rustls",
    "quinn",
    "quinn_proto",
    "h3",
    "h3_quinn",
];

/// The log filter for `[log] level` (an EnvFilter directive string).
pub fn filter(level: &str) -> String {
    let quiet = ["error", "warn", "info"].contains(&level.trim().to_ascii_lowercase().as_str());
    let mut f = level.to_string();
    if quiet {
        for c in PEER_FACING {
            f.push_str(&format!(",{c}=error"));
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_facing_libraries_are_held_to_error_unless_debugging() {
        assert!(filter("info").contains(",h2=error,"));
        assert!(filter("warn").ends_with(",h3_quinn=error"));
        assert_eq!(filter("debug"), "debug");
        assert_eq!(filter("edge=trace,h2=debug"), "edge=trace,h2=debug");
    }

    #[tokio::test(start_paused = true)]
    async fn one_line_per_minute_per_key_and_the_next_says_how_many_were_held() {
        let l = LogLimit::default();
        assert_eq!(l.admit("refused", "1.2.3.4"), Some(0));
        for _ in 0..999 {
            assert_eq!(l.admit("refused", "1.2.3.4"), None);
        }
        assert_eq!(l.admit("refused", "5.6.7.8"), Some(0), "another key");
        assert_eq!(l.admit("other", "1.2.3.4"), Some(0), "another kind");
        tokio::time::advance(WINDOW).await;
        assert_eq!(l.admit("refused", "1.2.3.4"), Some(999));
        assert_eq!(l.admit("refused", "1.2.3.4"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_from_many_keys_stays_bounded() {
        let l = LogLimit::default();
        let mut lines = 0;
        for i in 0..100_000u32 {
            if l.admit("refused", &i.to_string()).is_some() {
                lines += 1;
            }
        }
        assert!(l.slots.lock().unwrap().len() <= MAX_KEYS + 1);
        assert!(lines <= MAX_KEYS + 1, "{lines} lines");
    }
}
