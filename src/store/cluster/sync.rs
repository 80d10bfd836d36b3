//! Keeps the mirror current: one read of the whole prefix, then one watch
//! from the revision after it. Every event is applied to the mirror (secrets
//! opened with the key-encryption key first; a certificate whose key does not
//! open is not applied at all, so the mirror never pairs a new chain with an
//! old key) or to the in-memory maps (locks, challenge records, last writers).
//! When the watch ends (etcd down, no quorum, compaction), the store counts
//! as down and the loop reads everything again once etcd answers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{EventType, GetOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::oneshot;

use super::{absent, seal, Inner, Shared, Written, REQUEST};
use crate::store::{Entry, Storage};

const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts following etcd; the future completes once the first attempt to
/// read it has succeeded or failed.
pub(super) fn start(inner: Arc<Inner>) -> impl std::future::Future<Output = ()> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(run(inner, tx));
    async move {
        let _ = rx.await;
    }
}

async fn run(inner: Arc<Inner>, first: oneshot::Sender<()>) {
    let mut first = Some(first);
    let mut backoff = BACKOFF_MIN;
    loop {
        match resync(&inner).await {
            Ok(rev) => {
                if let Some(f) = first.take() {
                    let _ = f.send(());
                }
                backoff = BACKOFF_MIN;
                let why = follow(&inner, rev).await;
                set_down(&inner, why);
            }
            Err(why) => {
                if let Some(f) = first.take() {
                    let _ = f.send(());
                }
                set_down(&inner, why);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn set_up(inner: &Inner) {
    let was_down = inner.up.borrow().is_err();
    let _ = inner.up.send_replace(Ok(()));
    crate::metrics::METRICS.cluster_store_up.set(1);
    if was_down {
        tracing::info!(endpoints = ?inner.cfg.endpoints, "following the fleet's store in etcd");
        // Renewals that waited for the store look again.
        inner.shared().pushed.wake = true;
        inner.changes.send_modify(|n| *n += 1);
    }
}

fn set_down(inner: &Inner, why: String) {
    let was_up = inner.up.borrow().is_ok();
    let changed = inner.up.borrow().as_ref().err() != Some(&why);
    let _ = inner.up.send_replace(Err(why.clone()));
    crate::metrics::METRICS.cluster_store_up.set(0);
    if was_up {
        tracing::error!(endpoints = ?inner.cfg.endpoints, "lost the fleet's store: {why}; serving the local copy, renewals wait until it is back");
    } else if changed {
        tracing::debug!("etcd still unreachable: {why}");
    }
}

/// One stored change: a value, or `None` for a deletion.
struct Change {
    rel: String,
    value: Option<Vec<u8>>,
}

/// Reads everything under the prefix and applies it; returns its revision.
async fn resync(inner: &Arc<Inner>) -> Result<i64, String> {
    let prefix = inner.cfg.prefix.clone();
    let resp = inner
        .call("reading the fleet's state", |mut c| {
            let prefix = prefix.clone();
            async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })
        .await
        .map_err(|e| e.to_string())?;
    let rev = resp.header().map_or(0, |h| h.revision());
    let mut changes = Vec::new();
    let mut check = None;
    for kv in resp.kvs() {
        let Some(rel) = inner.rel(kv) else { continue };
        if rel == "kek-check" {
            check = Some(kv.value().to_vec());
            continue;
        }
        changes.push(Change {
            rel: rel.to_string(),
            value: Some(kv.value().to_vec()),
        });
    }
    check_kek(inner, check).await?;
    {
        // A full read replaces what the watch kept in memory: deletions
        // missed while it was down are gone here too.
        let mut s = inner.shared();
        s.holders.clear();
        s.txt.clear();
        s.written.clear();
    }
    apply(inner, changes, true).await;
    seed(inner).await;
    inner.applied.send_modify(|a| *a = (*a).max(rev));
    set_up(inner);
    Ok(rev)
}

/// The first node stores the check value; every node after opens it, so a
/// node with another key-encryption key knows before it writes anything.
async fn check_kek(inner: &Inner, stored: Option<Vec<u8>>) -> Result<(), String> {
    let ok = match stored {
        Some(v) => inner
            .kek
            .open("kek-check", &v)
            .is_ok_and(|p| p == seal::CHECK_PLAINTEXT),
        None => {
            let key = inner.key("kek-check");
            let txn = Txn::new().when([absent(&key)]).and_then([TxnOp::put(
                key.as_bytes(),
                inner.kek.seal("kek-check", seal::CHECK_PLAINTEXT),
                None,
            )]);
            inner
                .txn("storing the key check", txn)
                .await
                .map_err(|e| e.to_string())?;
            true
        }
    };
    let before = inner.shared().kek_ok.replace(ok);
    if !ok && before != Some(false) {
        tracing::error!(
            file = %inner.cfg.key_encryption_key_file.display(),
            "cluster.key_encryption_key_file does not open the keys the fleet stored (it differs from the other nodes'); this node keeps serving its local copy, loads no key from the fleet and writes nothing to it until the right file is in place"
        );
    }
    Ok(())
}

/// Follows the prefix from `rev + 1` until the watch ends; returns why.
async fn follow(inner: &Arc<Inner>, rev: i64) -> String {
    let mut client = match inner.client().await {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(rev + 1);
    let mut stream = match tokio::time::timeout(
        REQUEST,
        client.watch(inner.cfg.prefix.as_bytes(), Some(opts)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return format!("cannot watch {}: {e}", inner.cfg.prefix),
        Err(_) => return "etcd did not answer the watch within 5 s".into(),
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return "etcd ended the watch".into(),
            Err(e) => return format!("the watch broke: {e}"),
        };
        if resp.canceled() {
            return format!("etcd cancelled the watch: {}", resp.cancel_reason());
        }
        let mut changes = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Some(rel) = inner.rel(kv).filter(|r| *r != "kek-check") else {
                continue;
            };
            changes.push(Change {
                rel: rel.to_string(),
                value: (ev.event_type() == EventType::Put).then(|| kv.value().to_vec()),
            });
        }
        if !changes.is_empty() {
            apply(inner, changes, false).await;
        }
        let rev = resp.header().map_or(0, |h| h.revision());
        inner.applied.send_modify(|a| *a = (*a).max(rev));
    }
}

/// The lineage a `live/<name>/<file>` key belongs to.
fn lineage_of(rel: &str) -> Option<&str> {
    rel.strip_prefix("live/")?.split_once('/').map(|(n, _)| n)
}

/// The prefixes the mirror holds (the rest of the store lives in memory).
const MIRRORED: [&str; 3] = ["live/", "accounts/", "renewal/"];

/// Applies stored changes to the in-memory maps and the mirror; tells the
/// manager what it acts on changed (a lineage's files, a lock let go), once
/// the mirror holds it.
async fn apply(inner: &Arc<Inner>, changes: Vec<Change>, full: bool) {
    let mut wake = false;
    let mut swaps = Vec::new();
    let mut mirrored = Vec::new();
    {
        let mut s = inner.shared();
        for c in changes {
            match remember(&mut s, &inner.cfg.node, &c, full, &mut swaps) {
                Some(w) => wake |= w,
                None if MIRRORED.iter().any(|p| c.rel.starts_with(p)) => mirrored.push(c),
                None => {}
            }
        }
    }
    let touched = mirror(inner, mirrored).await;
    if !(full || wake || !touched.is_empty()) {
        return;
    }
    {
        let mut s = inner.shared();
        s.pushed.all |= full;
        s.pushed.wake |= wake || full;
        s.pushed.lineages.extend(touched);
        // A swap counts from here: its files are in the mirror.
        s.swaps.extend(swaps);
    }
    inner.changes.send_modify(|n| *n += 1);
}

/// Applies a change to a key kept in memory (a lock, a challenge record, a
/// certificate's last writer): `None` when the key is not one of those,
/// else whether the schedule should look again (a lock was let go). A
/// certificate another node wrote goes to `swaps`, to be timed.
fn remember(
    s: &mut Shared,
    me: &str,
    c: &Change,
    full: bool,
    swaps: &mut Vec<super::Swap>,
) -> Option<bool> {
    let rel = c.rel.as_str();
    if let Some(name) = rel.strip_prefix("locks/") {
        match &c.value {
            Some(v) => {
                s.holders
                    .insert(name.to_string(), super::lease::holder_of(v));
                Some(false)
            }
            None => {
                s.holders.remove(name);
                Some(true)
            }
        }
    } else if let Some(rest) = rel.strip_prefix("challenges/") {
        let (fqdn, _) = rest.rsplit_once('/')?;
        let set = s.txt.entry(fqdn.to_string()).or_default();
        match &c.value {
            Some(v) => set.insert(rel.to_string(), String::from_utf8_lossy(v).into_owned()),
            None => set.remove(rel),
        };
        if set.is_empty() {
            s.txt.remove(fqdn);
        }
        Some(false)
    } else if let Some(name) = rel.strip_prefix("written/") {
        let w = c
            .value
            .as_deref()
            .and_then(|v| serde_json::from_slice::<Written>(v).ok());
        if let Some(w) = w {
            if !full && w.node != me {
                swaps.push(super::Swap {
                    lineage: name.to_string(),
                    written: w.clone(),
                });
            }
            s.written.insert(name.to_string(), w);
        }
        Some(false)
    } else {
        None
    }
}

/// Applies changes of mirrored keys to the mirror, secrets opened first;
/// returns the lineages whose `live/` files changed.
async fn mirror(inner: &Arc<Inner>, changes: Vec<Change>) -> BTreeSet<String> {
    let mut writes: Vec<Entry> = Vec::new();
    let mut deletes: Vec<String> = Vec::new();
    let mut refused: BTreeSet<String> = BTreeSet::new();
    for c in changes {
        let Some(v) = c.value else {
            deletes.push(c.rel);
            continue;
        };
        match open(inner, &c.rel, v) {
            Ok(entry) => writes.push(entry),
            Err(()) => {
                if let Some(n) = lineage_of(&c.rel) {
                    refused.insert(n.to_string());
                }
            }
        }
    }
    // A certificate whose key did not open is left as it was, whole.
    writes.retain(|e| lineage_of(&e.key).is_none_or(|n| !refused.contains(n)));
    // The key first, as `save_certificate` writes it.
    writes.sort_by_key(|e| !e.key.ends_with("privkey.pem"));
    let mut changed = Vec::new();
    for e in writes {
        let old = inner.mirror.load(&e.key).await.ok().flatten();
        if old.as_deref() != Some(e.value.as_slice()) {
            changed.push(e);
        }
    }
    let touched: BTreeSet<String> = changed
        .iter()
        .map(|e| e.key.as_str())
        .chain(deletes.iter().map(String::as_str))
        .filter_map(lineage_of)
        .map(str::to_string)
        .collect();
    if !changed.is_empty() {
        if let Err(e) = inner.mirror.store(&changed, None).await {
            tracing::error!("cannot write the fleet's state to the local copy: {e}");
        }
    }
    for key in deletes {
        if let Err(e) = inner.mirror.delete(&key).await {
            tracing::error!("cannot update the local copy: {e}");
        }
    }
    touched
}

/// A stored value as the mirror takes it: a sealed one opened (and marked
/// secret). `Err` for one this node must not use: a sealed value its key
/// does not open, or a private key stored unsealed.
fn open(inner: &Inner, rel: &str, v: Vec<u8>) -> Result<Entry, ()> {
    if !seal::is_sealed(&v) {
        if super::looks_like_pem_key(&v) {
            // Never taken from the store: keys there are sealed.
            tracing::error!(
                key = rel,
                "a private key is stored in etcd unsealed; not used"
            );
            return Err(());
        }
        return Ok(Entry {
            key: rel.to_string(),
            value: v,
            secret: false,
        });
    }
    let mut s = inner.shared();
    match inner.kek.open(rel, &v) {
        Ok(plain) => {
            s.unopened.remove(rel);
            Ok(Entry {
                key: rel.to_string(),
                value: plain,
                secret: true,
            })
        }
        Err(e) => {
            if s.unopened.insert(rel.to_string()) {
                tracing::error!("{e}; keeping what this node has");
            }
            Err(())
        }
    }
}

/// Uploads what this node has and the fleet does not (a node that ran
/// alone before joining): certificates, accounts and renewal state, each
/// only where etcd has nothing under that key.
async fn seed(inner: &Arc<Inner>) {
    if inner.shared().kek_ok != Some(true) {
        return;
    }
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for top in MIRRORED {
        for k in inner.mirror.list(top).await.unwrap_or_default() {
            let group = match lineage_of(&k) {
                Some(n) => format!("live/{n}/"),
                None => k.clone(),
            };
            groups.entry(group).or_default().push(k);
        }
    }
    for (group, keys) in groups {
        let first = inner.key(&keys[0]);
        let mut ops = Vec::new();
        for k in &keys {
            let Ok(Some(v)) = inner.mirror.load(k).await else {
                continue;
            };
            let secret = crate::store::is_secret_key(k);
            let v = if secret { inner.kek.seal(k, &v) } else { v };
            ops.push(TxnOp::put(inner.key(k), v, None));
        }
        let txn = Txn::new().when([absent(&first)]).and_then(ops);
        let r = inner.txn("storing this node's copy", txn).await;
        match r {
            Ok(r) if r.succeeded() => {
                tracing::info!(what = %group, "stored this node's copy in the fleet's store (etcd had none)")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(what = %group, "cannot store this node's copy in etcd: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;

    async fn inner(dir: &std::path::Path) -> Arc<Inner> {
        Arc::new(Inner {
            cfg: crate::config::Cluster {
                endpoints: vec!["http://127.0.0.1:9".into()],
                prefix: "/edge/".into(),
                node: "edge-0".into(),
                lease: Duration::from_secs(15),
                key_encryption_key_file: dir.join("kek"),
                ca_file: None,
                client_cert: None,
                auth: None,
            },
            kek: seal::Kek::new(&[7u8; 32]).unwrap(),
            mirror: crate::store::files::Files::open(dir).await.unwrap(),
            client: tokio::sync::Mutex::new(None),
            applied: watch::channel(0).0,
            up: watch::channel(Ok(())).0,
            changes: watch::channel(0).0,
            state: std::sync::Mutex::new(Shared::default()),
            lease: tokio::sync::Mutex::new(None),
        })
    }

    fn put(rel: &str, value: &[u8]) -> Change {
        Change {
            rel: rel.into(),
            value: Some(value.to_vec()),
        }
    }

    fn written(node: &str) -> Vec<u8> {
        serde_json::to_vec(&Written {
            node: node.into(),
            at_ms: 1,
        })
        .unwrap()
    }

    /// What a watch event tells the manager: the lineages whose files it
    /// changed in the mirror, a lock let go, another node's write to time;
    /// and nothing (no wake-up at all) for what the manager does not act on.
    #[tokio::test]
    async fn a_watch_event_names_what_it_changed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let inner = inner(dir.path()).await;
        let mut rx = inner.changes.subscribe();
        let key = b"-----BEGIN PRIVATE KEY-----\nk1\n-----END PRIVATE KEY-----\n";
        let sealed = inner.kek.seal("live/a.test/privkey.pem", key);
        let event = vec![
            put("live/a.test/privkey.pem", &sealed),
            put("live/a.test/fullchain.pem", b"chain 1"),
            put("written/a.test", &written("edge-1")),
            put("locks/b.test", b"edge-1 t1"),
        ];
        apply(&inner, event, false).await;
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        let opened = inner.mirror.load("live/a.test/privkey.pem").await.unwrap();
        assert_eq!(
            opened.as_deref(),
            Some(&key[..]),
            "the key is opened into the mirror"
        );
        {
            let mut s = inner.shared();
            let p = std::mem::take(&mut s.pushed);
            assert_eq!(p.lineages, BTreeSet::from(["a.test".to_string()]));
            assert!(!p.all && !p.wake, "{p:?}");
            assert_eq!(s.swaps.len(), 1);
            assert_eq!(s.swaps[0].lineage, "a.test");
            assert_eq!(s.holders.get("b.test").map(String::as_str), Some("edge-1"));
        }

        // The same bytes again (this node's own write coming back), a
        // renewal state, a challenge record: nothing for the manager.
        let event = vec![
            put("live/a.test/fullchain.pem", b"chain 1"),
            put("renewal/a.test.json", b"{}"),
            put("challenges/_acme-challenge.a.test/0011", b"v"),
        ];
        apply(&inner, event, false).await;
        assert!(!rx.has_changed().unwrap(), "woke the manager for nothing");

        // A lock let go wakes the schedule; it touches no lineage.
        let gone = Change {
            rel: "locks/b.test".into(),
            value: None,
        };
        apply(&inner, vec![gone], false).await;
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        let p = std::mem::take(&mut inner.shared().pushed);
        assert!(p.wake && p.lineages.is_empty(), "{p:?}");

        // A key sealed with another key-encryption key, or stored unsealed,
        // is not taken: the certificate is left whole, nothing is published.
        let other = seal::Kek::new(&[8u8; 32]).unwrap();
        let event = vec![
            put(
                "live/a.test/privkey.pem",
                &other.seal("live/a.test/privkey.pem", b"k2"),
            ),
            put("live/a.test/fullchain.pem", b"chain 2"),
        ];
        apply(&inner, event, false).await;
        let event = vec![
            put("live/a.test/privkey.pem", key),
            put("live/a.test/fullchain.pem", b"chain 3"),
        ];
        apply(&inner, event, false).await;
        assert!(!rx.has_changed().unwrap());
        let chain = inner
            .mirror
            .load("live/a.test/fullchain.pem")
            .await
            .unwrap();
        assert_eq!(chain.as_deref(), Some(&b"chain 1"[..]));

        // A full read asks for everything to be read again.
        apply(&inner, vec![], true).await;
        let p = std::mem::take(&mut inner.shared().pushed);
        assert!(p.all && p.wake, "{p:?}");
    }
}
