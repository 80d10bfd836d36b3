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
//! A backend that pushes (the fleet's etcd) says when another node stored
//! something: that is published at once, with no wait for a poll, and the
//! schedule looks again (a lock let go, a renewal another node left unfinished).

use std::time::Duration;

use tokio::sync::watch;

use super::Manager;

pub const POLL: Duration = Duration::from_millis(500);

pub(super) async fn run(m: Manager, mut stop: watch::Receiver<bool>) {
    let mut pending: Option<u64> = None;
    let mut pushed = m.store().backend().changes();
    loop {
        let push = async {
            match pushed.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            true = push => {
                m.publish().await;
                m.inner.wake.notify_one();
                pending = None;
                continue;
            }
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
