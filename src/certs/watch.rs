//! Notices certificates written into `live/` by another process (an older edge,
//! certbot with the same layout, a person with `cp`) and publishes them.
//!
//! A half-second poll of the store's fingerprint (a few `stat` calls on the
//! filesystem) rather than inotify: it works the same on every filesystem
//! (bind mounts, NFS, Docker volumes) and needs no extra dependency. A change
//! is acted on once it has held still for one poll, so a pair caught
//! half-written (by `cp`) is not reported as a mismatch; pickup stays within a
//! second. The manager's own writes are published by the manager as it makes
//! them, which records their fingerprint, so they are not picked up twice.
//! Publishing validates each pair; a bad one is refused and the old one stays.
//!
//! A backend that pushes (the fleet's etcd) says what another node stored:
//! those lineages are published at once, with no wait for a poll, and when a
//! lock was let go the schedule looks again (a renewal another node left
//! unfinished). Its `live/` is the fleet's copy and is not polled: a file put
//! there by hand is not the fleet's, so certificates enter a fleet through
//! edge (`edge obtain`, or a node that ran alone seeding its copy).

use std::time::Duration;

use tokio::sync::watch;

use super::Manager;

pub const POLL: Duration = Duration::from_millis(500);

pub(super) async fn run(m: Manager, stop: watch::Receiver<bool>) {
    match m.store().backend().changes() {
        Some(pushed) => follow(m, pushed, stop).await,
        None => poll(m, stop).await,
    }
}

/// A backend that pushes: each change is published as it comes, reading
/// only the lineages it touched. Its mirror of `live/` is the fleet's copy,
/// rewritten from the store, so it is not polled.
async fn follow(m: Manager, mut pushed: watch::Receiver<u64>, mut stop: watch::Receiver<bool>) {
    loop {
        // Asked before waiting: a change pushed before this subscribed (while
        // the daemon started) bumped a value the receiver counts as seen.
        pushed.borrow_and_update();
        let what = m.store().backend().take_pushed();
        if what.all {
            m.publish().await;
        } else if !what.lineages.is_empty() {
            m.publish_only(&what.lineages).await;
        }
        if what.wake {
            m.inner.wake.notify_one();
        }
        tokio::select! {
            r = pushed.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

async fn poll(m: Manager, mut stop: watch::Receiver<bool>) {
    let mut pending: Option<u64> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => return,
        }
        let now = match m.store().live_fingerprint().await {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!("cannot read live/: {e}");
                continue;
            }
        };
        if Some(now) == m.published() {
            pending = None;
        } else if pending == Some(now) {
            pending = None;
            tracing::info!("certificates in live/ changed; reloading");
            m.publish().await;
        } else {
            pending = Some(now);
        }
    }
}
