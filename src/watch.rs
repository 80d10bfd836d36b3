//! Notices certificates written into `live/` by another process (an older edge,
//! certbot with the same layout, a person with `cp`) and reloads them.
//!
//! A one-second poll of a few `stat` calls rather than inotify: it works the
//! same on every filesystem (bind mounts, NFS, Docker volumes), needs no extra
//! dependency, and meets the two-second pickup target. The reload validates
//! each pair before it is served; a bad one is refused and the old one stays.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::store::Store;

pub const POLL: Duration = Duration::from_secs(1);

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
            let v = [stat(&dir.join("fullchain.pem")), stat(&dir.join("privkey.pem"))];
            (l, v)
        })
        .collect()
}

/// Calls `on_change` whenever `live/` changes, until `stop` fires.
pub async fn run(store: Store, mut stop: watch::Receiver<bool>, on_change: impl Fn()) {
    let mut last = snapshot(&store);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => return,
        }
        let now = snapshot(&store);
        if now == last {
            continue;
        }
        // A lineage being written under its lock is looked at again next round.
        if now.keys().any(|l| last.get(l) != now.get(l) && store.is_locked(l)) {
            continue;
        }
        last = now;
        on_change();
    }
}
