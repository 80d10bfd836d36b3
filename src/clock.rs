//! The wall clock for certificate decisions (due times, backoff, ARI).
//!
//! The wall clock as it is, moved by however far tokio's clock is from the
//! monotonic clock. In a running daemon tokio's clock is the monotonic clock,
//! so this is exactly `SystemTime::now()`; in a test under tokio's paused
//! time, the wall clock moves with the paused clock, so a certificate's due
//! time, a backoff or a rate limit can be reached by advancing time instead of
//! waiting for it. TLS certificate validity and the `Date` header keep the
//! real wall clock.

use std::time::{Instant, SystemTime};

pub fn now() -> SystemTime {
    let real = Instant::now();
    let tokio = tokio::time::Instant::now().into_std();
    let wall = SystemTime::now();
    if tokio >= real {
        wall + (tokio - real)
    } else {
        wall - (real - tokio)
    }
}

/// Time on tokio's clock since an anchor an hour before it was first read:
/// a cheap monotonic count for atomics (health holds, the status window).
/// The anchor lies before any runtime of the process was made, so every
/// runtime's clock, paused ones in tests included (each starts at the real
/// time it was made and only moves ahead), reads at or after it; an anchor
/// taken from the first reader's clock would put a test whose clock ran
/// ahead in the future of every other test's.
pub fn since_anchor() -> std::time::Duration {
    since_anchor_at(tokio::time::Instant::now())
}

/// `since_anchor` for a time the caller has read already.
pub fn since_anchor_at(at: tokio::time::Instant) -> std::time::Duration {
    static ANCHOR: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let anchor = *ANCHOR.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(std::time::Duration::from_secs(3600))
            .unwrap_or(now)
    });
    at.into_std().saturating_duration_since(anchor)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn moves_with_paused_time() {
        let before = now();
        tokio::time::sleep(Duration::from_secs(3 * 86400)).await;
        let moved = now().duration_since(before).unwrap();
        // Real time does not move the paused clock: the two differ by the
        // microseconds the test itself took.
        let days = Duration::from_secs(3 * 86400);
        assert!(moved > days - Duration::from_secs(1), "{moved:?}");
        assert!(moved < days + Duration::from_secs(1), "{moved:?}");
    }

    #[tokio::test]
    async fn is_the_wall_clock_when_time_runs() {
        let d = now()
            .duration_since(SystemTime::now())
            .unwrap_or_else(|e| e.duration());
        assert!(d < Duration::from_millis(100), "{d:?}");
    }
}
