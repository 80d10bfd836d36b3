//! An upstream's last minute, for the status page: answers per second and
//! time to the answer's head (p50, p99), in one slot per second of a
//! 60-slot ring. Recording is three relaxed atomic adds; a slot whose second
//! has passed is cleared by the first request of its new second (a request
//! racing that clear may be lost: a status page, not an invoice).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

const SLOTS: usize = 60;
/// Latency buckets: upper bounds, in microseconds, about x2 apart from
/// 100 µs to 100 s; the last catches everything above.
const BOUNDS_US: [u64; 21] = [
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    u64::MAX - 1,
    u64::MAX,
];

struct Slot {
    /// Which second (since the window's clock started, +1) this slot holds.
    second: AtomicU64,
    count: AtomicU32,
    buckets: [AtomicU32; BOUNDS_US.len()],
}

pub struct Window {
    slots: Box<[Slot; SLOTS]>,
}

/// What the window says about the last minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Minute {
    pub per_second: f64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

fn second_at(at: tokio::time::Instant) -> u64 {
    crate::clock::since_anchor_at(at).as_secs() + 1
}

fn second_now() -> u64 {
    second_at(tokio::time::Instant::now())
}

impl Default for Window {
    fn default() -> Self {
        Window {
            slots: Box::new(std::array::from_fn(|_| Slot {
                second: AtomicU64::new(0),
                count: AtomicU32::new(0),
                buckets: std::array::from_fn(|_| AtomicU32::new(0)),
            })),
        }
    }
}

impl Window {
    /// One answer, its head `took` after the request came, sent `at`.
    pub fn record(&self, at: tokio::time::Instant, took: Duration) {
        let now = second_at(at);
        let slot = &self.slots[(now % SLOTS as u64) as usize];
        if slot.second.load(Ordering::Relaxed) != now {
            slot.second.store(now, Ordering::Relaxed);
            slot.count.store(0, Ordering::Relaxed);
            for b in &slot.buckets {
                b.store(0, Ordering::Relaxed);
            }
        }
        slot.count.fetch_add(1, Ordering::Relaxed);
        let us = took.as_micros() as u64;
        let i = BOUNDS_US.iter().position(|&b| us <= b).unwrap_or(0);
        slot.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The last full minute (the current second left out: it is partial).
    pub fn minute(&self) -> Minute {
        let now = second_now();
        let mut count = 0u64;
        let mut buckets = [0u64; BOUNDS_US.len()];
        for slot in self.slots.iter() {
            let s = slot.second.load(Ordering::Relaxed);
            if s == 0 || s >= now || now - s > SLOTS as u64 {
                continue;
            }
            count += u64::from(slot.count.load(Ordering::Relaxed));
            for (sum, b) in buckets.iter_mut().zip(&slot.buckets) {
                *sum += u64::from(b.load(Ordering::Relaxed));
            }
        }
        // Over the seconds the window has existed, up to a minute.
        let span = (now - 1).clamp(1, SLOTS as u64 - 1);
        let quantile = |q: f64| {
            if count == 0 {
                return None;
            }
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, n) in buckets.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    let bound = BOUNDS_US[i].min(100_000_000);
                    return Some(Duration::from_micros(bound));
                }
            }
            None
        };
        Minute {
            per_second: count as f64 / span as f64,
            p50: quantile(0.5),
            p99: quantile(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_last_minute_counts_and_ranks_what_came() {
        let w = Window::default();
        second_now();
        tokio::time::advance(Duration::from_secs(1)).await;
        for i in 0..100u64 {
            // 99 fast answers and one slow.
            w.record(
                tokio::time::Instant::now(),
                Duration::from_micros(if i == 99 { 3_000_000 } else { 800 }),
            );
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let m = w.minute();
        assert!(m.per_second > 0.0);
        assert_eq!(m.p50, Some(Duration::from_micros(1_000)), "bucket bound");
        assert_eq!(m.p99, Some(Duration::from_micros(1_000)));
        tokio::time::advance(Duration::from_secs(61)).await;
        let m = w.minute();
        assert_eq!(m.per_second, 0.0, "a minute later it is gone");
        assert_eq!(m.p50, None);
    }
}
