//! A store that pushes what changed, as the fleet's etcd does: the
//! certificate manager serves a pushed lineage at once, reading only that
//! lineage's files, and a change pushed while the daemon was starting (after
//! its first publish, before its watcher listened) is not lost.
//!
//! The pushing store here is a stand-in for etcd's watch (which the e2e tier
//! runs for real): the real file backend, plus a counter of reads and a
//! channel the test bumps.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use edge::store::files::Files;
use edge::store::{BoxFuture, Entry, Lock, Pushed, Storage, Store, StoreError};
use tokio::sync::watch;

use crate::harness::*;

#[derive(Debug)]
struct Pushing {
    files: Files,
    tx: watch::Sender<u64>,
    pushed: Mutex<Pushed>,
    /// Lineage -> reads of its `live/` files.
    reads: Mutex<BTreeMap<String, usize>>,
}

impl Pushing {
    fn push(&self, lineage: &str) {
        let mut p = self.pushed.lock().unwrap();
        p.lineages.insert(lineage.to_string());
        drop(p);
        self.tx.send_modify(|n| *n += 1);
    }

    fn reads(&self, lineage: &str) -> usize {
        self.reads
            .lock()
            .unwrap()
            .get(lineage)
            .copied()
            .unwrap_or(0)
    }
}

impl Storage for Pushing {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        if let Some((name, _)) = key.strip_prefix("live/").and_then(|r| r.split_once('/')) {
            *self
                .reads
                .lock()
                .unwrap()
                .entry(name.to_string())
                .or_default() += 1;
        }
        self.files.load(key)
    }
    fn store<'a>(
        &'a self,
        entries: &'a [Entry],
        fence: Option<&'a Lock>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.files.store(entries, fence)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.files.delete(key)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.files.list(prefix)
    }
    fn lock<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Lock, StoreError>> {
        self.files.lock(name)
    }
    fn fingerprint<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.files.fingerprint(prefix)
    }
    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.files.local_path(key)
    }
    fn try_lock<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Lock>, StoreError>> {
        self.files.try_lock(name)
    }
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.tx.subscribe())
    }
    fn take_pushed(&self) -> Pushed {
        std::mem::take(&mut *self.pushed.lock().unwrap())
    }
}

fn serial(m: &edge::certs::Manager, host: &str) -> String {
    m.certs().current().lookup(host).unwrap().serial.clone()
}

/// Waits (on the paused clock, at most 5 s of it) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    within(secs(5), what, async {
        while !cond() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_pushed_lineage_is_served_at_once_and_only_it_is_read_again() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let hosts = ["a.test", "b.test", "c.test"];
    let body: String = hosts
        .iter()
        .map(|h| site(&[h], &["127.0.0.1:9"], ""))
        .collect();
    let cfg = parse(dir.path(), &body);
    for h in hosts {
        let (chain, key) = self_signed(&[h]);
        put_live(&cfg.state_dir, h, &chain, &key);
    }
    let backend = Arc::new(Pushing {
        files: Files::open(&cfg.state_dir).await.unwrap(),
        tx: watch::channel(0).0,
        pushed: Mutex::new(Pushed::default()),
        reads: Mutex::new(BTreeMap::new()),
    });
    let store = Store::new(backend.clone());
    let m = edge::certs::Manager::start(cfg.clone(), store, Default::default()).await;
    let first: Vec<String> = hosts.iter().map(|h| serial(&m, h)).collect();

    // Another node's certificate for c lands after the first publish and
    // before the watcher listens (a daemon starting while the fleet writes).
    let (chain, key) = self_signed(&["c.test"]);
    put_live(&cfg.state_dir, "c.test", &chain, &key);
    backend.push("c.test");
    let control = edge::certs::bind_control(&cfg.state_dir).await.unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let run = tokio::spawn(m.clone().run(control, stop));
    until("c's pushed certificate served", || {
        serial(&m, "c.test") != first[2]
    })
    .await;
    // The schedule's first look at every lineage is done (it reads them all).
    until("the schedule's first pass", || m.next_renewal().is_some()).await;

    // A push for b: b is read again and swapped; a and c are not read.
    let (a, c) = (backend.reads("a.test"), backend.reads("c.test"));
    let (chain, key) = self_signed(&["b.test"]);
    put_live(&cfg.state_dir, "b.test", &chain, &key);
    backend.push("b.test");
    until("b's pushed certificate served", || {
        serial(&m, "b.test") != first[1]
    })
    .await;
    assert_eq!(serial(&m, "a.test"), first[0]);
    assert_eq!(
        (backend.reads("a.test"), backend.reads("c.test")),
        (a, c),
        "a push for b read other lineages again"
    );

    // A pushed pair that does not match is refused; what was served stays.
    let served = serial(&m, "a.test");
    let (_, other_key) = self_signed(&["a.test"]);
    let (chain, _) = self_signed(&["a.test"]);
    put_live(&cfg.state_dir, "a.test", &chain, &other_key);
    let before = backend.reads("a.test");
    backend.push("a.test");
    until("the pushed pair read", || backend.reads("a.test") != before).await;
    tokio::time::sleep(secs(1)).await;
    assert_eq!(serial(&m, "a.test"), served);

    stop_tx.send(true).unwrap();
    within(secs(5), "the manager stops", run).await.unwrap();
}
