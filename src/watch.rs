//! Notices certificates written into `live/` by another process (an older edge,
//! certbot with the same layout, a person with `cp`) and reloads them.
//!
//! A half-second poll of a few `stat` calls rather than inotify: it works the
//! same on every filesystem (bind mounts, NFS, Docker volumes) and needs no extra
//! dependency. A change is acted on once it has held still for one poll, so a
//! pair caught half-written (by `cp`, or by edge's own renewal) is not reported
//! as a mismatch; pickup stays within a second. The reload validates each pair
//! before it is served; a bad one is refused and the old one stays.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::store::Store;

pub const POLL: Duration = Duration::from_millis(500);

/// A fingerprint of what is in `live/`: per lineage, the mtime and size of the pair.
pub type Snapshot = BTreeMap<String, [(Option<SystemTime>, u64); 2]>;

fn stat(p: &Path) -> (Option<SystemTime>, u64) {
    match std::fs::metadata(p) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    }
}

pub fn snapshot(store: &Store) -> Snapshot {
    store
        .lineages()
        .into_iter()
        .map(|l| {
            let dir = store.live_dir(&l);
            let v = [
                stat(&dir.join("fullchain.pem")),
                stat(&dir.join("privkey.pem")),
            ];
            (l, v)
        })
        .collect()
}

/// Calls `on_change` whenever `live/` differs from `baseline` (taken before the
/// certificates were first loaded, so nothing written in between is missed),
/// until `stop` fires.
pub async fn run(
    store: Store,
    baseline: Snapshot,
    mut stop: watch::Receiver<bool>,
    on_change: impl Fn(),
) {
    let mut applied = baseline;
    let mut pending: Option<Snapshot> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => return,
        }
        let now = snapshot(&store);
        if now == applied {
            pending = None;
        } else if pending.as_ref() == Some(&now) {
            applied = now;
            pending = None;
            on_change();
        } else {
            pending = Some(now);
        }
    }
}
