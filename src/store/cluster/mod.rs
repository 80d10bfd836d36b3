//! The fleet backend: etcd holds the certificates, keys, account, renewal
//! state and pending challenge records of every node under `cluster.prefix`;
//! each node keeps a mirror of them in its own `state_dir` (certbot's
//! layout, so other tools keep working) and serves from it.
//!
//! The rules, after certmagic's storage + locker, with push instead of polls:
//! - Reads come from the mirror: no etcd request at rest. The mirror is kept
//!   current by one watch on the prefix (`sync`), which also tells the
//!   certificate manager to publish what another node stored.
//! - A lock is a key under `locks/` bound to this node's lease (`lease`); it
//!   is only handed out once the mirror has caught up with the revision that
//!   took it, so what the previous holder wrote is seen.
//! - A write fenced by a lock is one transaction that compares the lock key's
//!   create revision: a node whose lease ran out (killed, paused, cut off)
//!   cannot overwrite what the next holder wrote.
//! - Secrets are sealed with the key-encryption key before they leave the
//!   host (`seal`); the value in etcd never holds a PEM private key.
//! - `archive/` (numbered old copies) stays with the node that wrote it.

mod lease;
mod seal;
mod sync;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::files::Files;
use super::{BoxFuture, Entry, Fence, Lock, Storage, StoreError};
use crate::config;

/// How long one request to etcd may take before the store counts as down.
const REQUEST: Duration = Duration::from_secs(5);
/// How long one try of a request waits before it is sent again.
const ATTEMPT: Duration = Duration::from_millis(1500);
/// How long a request is sent again while no member can take it: longer
/// than a leader election on a loaded host, short enough that a command
/// facing an etcd without quorum says so within seconds.
const RETRY_FOR: Duration = Duration::from_secs(10);
/// How long opening waits for the first read of the fleet's state before
/// going on with the local copy (a node must serve at once when etcd is down).
const FIRST_SYNC: Duration = Duration::from_secs(2);

/// Who wrote a certificate last, and when by their clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Written {
    pub node: String,
    pub at_ms: u64,
}

impl Written {
    /// `edge-1 at <RFC 3339 time>`.
    pub fn describe(&self) -> String {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(self.at_ms);
        format!("{} at {}", self.node, crate::certinfo::rfc3339(at))
    }
}

/// Who stored a certificate (a [`Written::describe`]), as `edge certs`,
/// `edge status` and the status page say it.
pub fn stored_by_text(described: Option<&str>) -> &str {
    described.unwrap_or("unknown (stored before the fleet)")
}

/// A certificate's lock, as they say it.
pub fn lock_text(holder: Option<&str>) -> String {
    holder.map_or("free".into(), |h| format!("held by {h} (renewing now)"))
}

/// What `edge certs` shows per certificate in a fleet.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub written: Option<Written>,
    pub lock_holder: Option<String>,
}

/// The etcd-backed storage. Cloning shares it.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.inner.cfg.node)
            .field("prefix", &self.inner.cfg.prefix)
            .finish()
    }
}

struct Inner {
    /// `[cluster]` as configured: endpoints, prefix, this node's name.
    cfg: config::Cluster,
    kek: seal::Kek,
    mirror: Files,
    client: tokio::sync::Mutex<Option<Client>>,
    /// The etcd revision the mirror reflects.
    applied: watch::Sender<i64>,
    /// Whether the watch is following etcd now; the reason when not.
    up: watch::Sender<Result<(), String>>,
    /// Bumped when `Shared::pushed` gained something (a lineage's `live/`
    /// files changed in the mirror, a lock was let go, the store came back):
    /// the manager asks what (`take_pushed`), publishes and looks again.
    changes: watch::Sender<u64>,
    state: Mutex<Shared>,
    lease: tokio::sync::Mutex<Option<lease::NodeLease>>,
}

/// A certificate another node wrote, timed from its write to its use here.
#[derive(Debug)]
pub(crate) struct Swap {
    lineage: String,
    written: Written,
}

/// What the watch keeps in memory besides the mirror.
#[derive(Default)]
struct Shared {
    /// Lock name -> the node holding it.
    holders: BTreeMap<String, String>,
    /// Lineage -> who wrote its certificate last.
    written: BTreeMap<String, Written>,
    /// Challenge name -> storage key -> TXT value.
    txt: BTreeMap<String, BTreeMap<String, String>>,
    /// Stored keys whose value the key-encryption key does not open, so each
    /// is logged once.
    unopened: BTreeSet<String>,
    /// Certificates written by another node, in the mirror and not yet
    /// published here.
    swaps: Vec<Swap>,
    /// What changed since the manager last asked.
    pushed: crate::store::Pushed,
    /// The key-encryption key opens `kek-check`: `None` before it is known.
    kek_ok: Option<bool>,
}

/// Whether a storage key goes to etcd: everything but `archive/`, which
/// stays with the node that wrote it.
fn shared(key: &str) -> bool {
    !key.starts_with("archive/")
}

/// The compare of a put-if-absent: `key` does not exist.
fn absent(key: &str) -> Compare {
    Compare::create_revision(key.as_bytes(), CompareOp::Equal, 0)
}

/// The compare of a write fenced by a lock: its key still exists with the
/// create revision it was taken at (taken again by anyone, it has another).
fn still_held(fence: &Fence) -> Compare {
    Compare::create_revision(fence.key.as_bytes(), CompareOp::Equal, fence.revision)
}

/// The process's fleet store, for the built-in DNS responder's shared records.
static CURRENT: std::sync::OnceLock<Cluster> = std::sync::OnceLock::new();

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        message: format!("{what}: {e}"),
    }
}

impl Cluster {
    /// Opens the fleet store over the mirror in `state_dir`. Reading the
    /// key-encryption key is the one thing that must work now; when etcd cannot
    /// be reached the mirror serves and the watch catches up later.
    pub async fn open(cfg: &config::Cluster, state_dir: &Path) -> Result<Cluster, StoreError> {
        let kek =
            seal::load(&cfg.key_encryption_key_file).map_err(|message| StoreError::Invalid {
                path: cfg.key_encryption_key_file.clone(),
                message,
            })?;
        let mirror = Files::open(state_dir).await?;
        let c = Cluster {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                kek,
                mirror,
                client: tokio::sync::Mutex::new(None),
                applied: watch::channel(0).0,
                up: watch::channel(Err("not connected yet".to_string())).0,
                changes: watch::channel(0).0,
                state: Mutex::new(Shared::default()),
                lease: tokio::sync::Mutex::new(None),
            }),
        };
        crate::metrics::METRICS.cluster_store_up.set(0);
        // The first sync is waited for briefly, so a command sees the fleet's
        // state; past that the node goes on with its mirror.
        let first = sync::start(c.inner.clone());
        if tokio::time::timeout(FIRST_SYNC, first).await.is_err() {
            let why = format!("no member answered within {}s", FIRST_SYNC.as_secs());
            let _ = c.inner.up.send_replace(Err(why));
        }
        if let Err(why) = c.health() {
            tracing::warn!(
                endpoints = ?cfg.endpoints,
                "etcd cannot be reached ({why}); serving the local copy in {} and catching up when it is back",
                state_dir.display()
            );
        }
        let _ = CURRENT.set(c.clone());
        Ok(c)
    }

    /// The fleet store this process opened, if any.
    pub fn current() -> Option<&'static Cluster> {
        CURRENT.get()
    }

    pub fn node(&self) -> &str {
        &self.inner.cfg.node
    }

    /// Why the store is not followed now, or `Ok`.
    pub fn health(&self) -> Result<(), String> {
        self.inner.up.borrow().clone()
    }

    /// The last writer and the lock holder of one certificate.
    pub fn facts(&self, lineage: &str) -> Facts {
        let s = self.inner.shared();
        Facts {
            written: s.written.get(lineage).cloned(),
            lock_holder: s.holders.get(lineage).cloned(),
        }
    }

    /// The TXT values the fleet has published for `fqdn` (lower case, no dot).
    pub fn shared_txt(&self, fqdn: &str) -> Vec<String> {
        self.inner
            .shared()
            .txt
            .get(fqdn)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Publishes TXT records for the whole fleet (bound to this node's lease,
    /// so they go when it does): every node's built-in responder answers them.
    pub async fn share_txt(&self, records: &[(String, String)]) -> Result<(), StoreError> {
        let (lease, _) = self.inner.lease().await?;
        self.put_txt(records, Some(lease)).await
    }

    /// Publishes TXT records for the whole fleet that stay when this node
    /// goes (dns-persist-01's, which are set once and kept for every later
    /// order, whichever node makes it).
    pub async fn keep_txt(&self, records: &[(String, String)]) -> Result<(), StoreError> {
        self.put_txt(records, None).await
    }

    async fn put_txt(
        &self,
        records: &[(String, String)],
        lease: Option<i64>,
    ) -> Result<(), StoreError> {
        let ops: Vec<TxnOp> = records
            .iter()
            .map(|(fqdn, value)| {
                let opts = lease.map(|l| etcd_client::PutOptions::new().with_lease(l));
                TxnOp::put(self.inner.txt_key(fqdn, value), value.as_bytes(), opts)
            })
            .collect();
        self.inner
            .txn(
                "publishing challenge records in etcd",
                Txn::new().and_then(ops),
            )
            .await?;
        Ok(())
    }

    /// Removes TXT records this node shared.
    pub async fn unshare_txt(&self, records: &[(String, String)]) -> Result<(), StoreError> {
        let ops: Vec<TxnOp> = records
            .iter()
            .map(|(fqdn, value)| TxnOp::delete(self.inner.txt_key(fqdn, value), None))
            .collect();
        self.inner
            .txn(
                "removing challenge records from etcd",
                Txn::new().and_then(ops),
            )
            .await?;
        Ok(())
    }

    /// The certificates other nodes wrote that a publish about to read
    /// `only` (every lineage when `None`) will serve; handed back to
    /// [`Cluster::note_published`] once it has.
    pub(crate) fn take_swaps(&self, only: Option<&BTreeSet<String>>) -> Vec<Swap> {
        let mut s = self.inner.shared();
        let (taken, kept) = std::mem::take(&mut s.swaps)
            .into_iter()
            .partition(|w| only.is_none_or(|o| o.contains(&w.lineage)));
        s.swaps = kept;
        taken
    }

    /// Records in the metrics how long certificates other nodes wrote took to
    /// be served here.
    pub(crate) fn note_published(&self, swaps: Vec<Swap>) {
        let now = sync::unix_ms(SystemTime::now());
        for Swap { lineage, written } in swaps {
            let ms = now.saturating_sub(written.at_ms);
            crate::metrics::METRICS
                .cluster_swap_seconds
                .observe(ms as f64 / 1000.0);
            tracing::info!(
                lineage,
                stored_by = written.node,
                swap_ms = ms,
                "serving the certificate another node stored"
            );
        }
    }

    /// Asks etcd itself, for `edge check`: every endpoint's answer, whether
    /// the cluster has a leader (a quorum), and whether the key-encryption
    /// key opens every sealed value stored.
    pub async fn probe(&self) -> Probe {
        let mut out = Probe::default();
        for ep in &self.inner.cfg.endpoints {
            let one = config::Cluster {
                endpoints: vec![ep.clone()],
                ..self.inner.cfg.clone()
            };
            let r = async {
                let mut c = connect(&one).await?;
                let s = tokio::time::timeout(REQUEST, c.status())
                    .await
                    .map_err(|_| "no answer within 5 s".to_string())?
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(format!(
                    "etcd {} (member {:x}, leader {:x})",
                    s.version(),
                    s.header().map_or(0, |h| h.member_id()),
                    s.leader()
                ))
            }
            .await;
            out.endpoints.push((ep.clone(), r));
        }
        let prefix = self.inner.cfg.prefix.clone();
        let all = self
            .inner
            .call("reading the prefix", |mut c| {
                let prefix = prefix.clone();
                async move {
                    c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await
            .map_err(|e| e.to_string());
        match all {
            Err(e) => out.quorum = Err(e),
            Ok(resp) => {
                out.quorum = Ok(resp.kvs().len());
                for kv in resp.kvs() {
                    let Some(rel) = self.inner.rel(kv) else {
                        continue;
                    };
                    if seal::is_sealed(kv.value()) {
                        out.sealed += 1;
                        if let Err(e) = self.inner.kek.open(rel, kv.value()) {
                            out.unopened.push(e);
                        }
                    }
                    if looks_like_pem_key(kv.value()) {
                        out.plain_keys.push(rel.to_string());
                    }
                }
            }
        }
        out
    }
}

/// What `edge check` learned from etcd.
#[derive(Debug)]
pub struct Probe {
    pub endpoints: Vec<(String, Result<String, String>)>,
    /// How many values are stored under the prefix, read through a quorum.
    pub quorum: Result<usize, String>,
    pub sealed: usize,
    pub unopened: Vec<String>,
    /// Keys whose value is a PEM private key (there should be none).
    pub plain_keys: Vec<String>,
}

impl Default for Probe {
    fn default() -> Probe {
        Probe {
            endpoints: Vec::new(),
            quorum: Err("not asked".into()),
            sealed: 0,
            unopened: Vec::new(),
            plain_keys: Vec::new(),
        }
    }
}

/// Whether a value holds a PEM private key in the clear.
pub fn looks_like_pem_key(value: &[u8]) -> bool {
    value.windows(11).any(|w| w == b"PRIVATE KEY")
}

/// Whether a request failed before etcd applied it (a connection that
/// could not be made, or a member with no leader, which refuses before
/// proposing), so sending it again cannot apply it twice.
fn not_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            format!("{:?}", s.code()) == "Unavailable"
                && (s.message().contains("connect") || s.message().contains("no leader"))
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// A client for `cfg`'s endpoints (TLS and auth as configured).
async fn connect(cfg: &config::Cluster) -> Result<Client, String> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        // HTTP/2 pings find a member that went away without a word; etcd
        // closes connections that ping more often than every 5 s.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true)
        // A member cut off from its leader refuses rather than answers from a
        // stale copy, and ends the watch: the node learns it lost quorum.
        .with_require_leader(true);
    if let Some((user, file)) = &cfg.auth {
        let pw = std::fs::read_to_string(file)
            .map_err(|e| format!("cluster.password_file {}: {e}", file.display()))?;
        let pw = pw.lines().next().unwrap_or("").to_string();
        opts = opts.with_user(user.clone(), pw);
    }
    if cfg.endpoints.iter().any(|e| e.starts_with("https://")) {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &cfg.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| format!("cluster.ca_file {}: {e}", ca.display()))?;
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &cfg.client_cert {
            let c = std::fs::read(cert)
                .map_err(|e| format!("cluster.cert_file {}: {e}", cert.display()))?;
            let k = std::fs::read(key)
                .map_err(|e| format!("cluster.key_file {}: {e}", key.display()))?;
            tls = tls.identity(etcd_client::Identity::from_pem(c, k));
        }
        opts = opts.with_tls(tls);
    }
    tokio::time::timeout(REQUEST, Client::connect(&cfg.endpoints, Some(opts)))
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
        .map_err(|e| e.to_string())
}

impl Inner {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.cfg.prefix)
    }

    /// A stored key relative to the prefix (`live/a/cert.pem`).
    fn rel<'k>(&self, kv: &'k etcd_client::KeyValue) -> Option<&'k str> {
        kv.key_str().ok()?.strip_prefix(self.cfg.prefix.as_str())
    }

    fn lock_key(&self, name: &str) -> String {
        self.key(&format!("locks/{name}"))
    }

    fn txt_key(&self, fqdn: &str, value: &str) -> String {
        use sha2::Digest;
        let h = sha2::Sha256::digest(value.as_bytes());
        let id: String = h.iter().take(8).map(|b| format!("{b:02x}")).collect();
        self.key(&format!("challenges/{fqdn}/{id}"))
    }

    /// The etcd client, connected at first use.
    async fn client(&self) -> Result<Client, StoreError> {
        let mut c = self.client.lock().await;
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let client = connect(&self.cfg)
            .await
            .map_err(|e| unavailable(&format!("etcd at {:?}", self.cfg.endpoints), e))?;
        *c = Some(client.clone());
        Ok(client)
    }

    /// One request to etcd, given a client; sent again, for up to
    /// `RETRY_FOR`, while it could not reach a member, found no leader, or
    /// got no answer in time, so a member that is down or a leader election
    /// costs a wait, not a failure. Every request edge makes may be applied
    /// twice without harm: puts of the same value, deletes, and a lock take
    /// that knows its own key.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let mut tries = 0u32;
        loop {
            let client = self.client().await?;
            let why = match tokio::time::timeout(ATTEMPT, f(client)).await {
                Ok(Ok(t)) => return Ok(t),
                Ok(Err(e)) if not_sent(&e) => e.to_string(),
                Ok(Err(e)) => return Err(unavailable(what, e)),
                Err(_) => {
                    // A fresh channel, in case this one waits on a gone member.
                    *self.client.lock().await = None;
                    "no answer (etcd has no quorum, or cannot be reached)".to_string()
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(unavailable(what, why));
            }
            tries += 1;
            tokio::time::sleep(Duration::from_millis(50 * u64::from(tries.min(10)))).await;
        }
    }

    /// One transaction, sent as [`Inner::call`] sends every request.
    async fn txn(&self, what: &str, txn: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        self.call(what, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// Waits (briefly) until the mirror reflects revision `rev`.
    async fn wait_applied(&self, rev: i64) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(REQUEST, rx.wait_for(|a| *a >= rev))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn refuse_if_wrong_kek(&self) -> Result<(), StoreError> {
        if self.shared().kek_ok == Some(false) {
            return Err(StoreError::Unavailable {
                message: format!(
                    "this node's key-encryption key ({}) does not open the fleet's keys; it reads and serves its local copy but writes nothing to the fleet until the same key as the other nodes' is in place",
                    self.cfg.key_encryption_key_file.display()
                ),
            });
        }
        Ok(())
    }
}

impl Storage for Cluster {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        self.inner.mirror.load(key)
    }

    fn store<'a>(
        &'a self,
        entries: &'a [Entry],
        fence: Option<&'a Lock>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.refuse_if_wrong_kek()?;
            let mut ops = Vec::new();
            for e in entries.iter().filter(|e| shared(&e.key)) {
                let value = if e.secret {
                    inner.kek.seal(&e.key, &e.value)
                } else {
                    e.value.clone()
                };
                ops.push(TxnOp::put(inner.key(&e.key), value, None));
                if let Some(name) = e
                    .key
                    .strip_prefix("live/")
                    .and_then(|r| r.strip_suffix("/fullchain.pem"))
                {
                    let w = Written {
                        node: inner.cfg.node.clone(),
                        at_ms: sync::unix_ms(SystemTime::now()),
                    };
                    let v = serde_json::to_vec(&w).expect("serializes");
                    ops.push(TxnOp::put(inner.key(&format!("written/{name}")), v, None));
                }
            }
            if !ops.is_empty() {
                let mut txn = Txn::new();
                if let Some(f) = fence.and_then(Lock::fence) {
                    txn = txn.when([still_held(f)]);
                }
                let resp = inner.txn("writing to etcd", txn.and_then(ops)).await?;
                if !resp.succeeded() {
                    let name = fence.map(|l| l.name().to_string()).unwrap_or_default();
                    tracing::error!(lineage = %name, "the lock's lease ran out before the write (this node was paused or cut off); the fleet refused the write and another node's certificate stands");
                    return Err(StoreError::LockLost { name });
                }
            }
            // What etcd took goes to the mirror now (the watch will bring
            // the same values again and find nothing to change).
            inner.mirror.store(entries, None).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if shared(key) {
                let k = self.inner.key(key);
                self.inner
                    .call("deleting from etcd", |mut c| {
                        let k = k.clone();
                        async move { c.delete(k, None).await }
                    })
                    .await?;
            }
            self.inner.mirror.delete(key).await
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.inner.mirror.list(prefix)
    }

    fn lock<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Lock, StoreError>> {
        Box::pin(async move {
            self.inner.refuse_if_wrong_kek()?;
            lease::acquire(&self.inner, name, true)
                .await
                .map(|l| l.expect("a waiting lock is always taken"))
        })
    }

    fn try_lock<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Lock>, StoreError>> {
        Box::pin(async move {
            self.inner.refuse_if_wrong_kek()?;
            lease::acquire(&self.inner, name, false).await
        })
    }

    fn fingerprint<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.inner.mirror.fingerprint(prefix)
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.inner.mirror.local_path(key)
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.inner.changes.subscribe())
    }

    fn take_pushed(&self) -> crate::store::Pushed {
        std::mem::take(&mut self.inner.shared().pushed)
    }

    fn cluster(&self) -> Option<&Cluster> {
        Some(self)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(lease::revoke(&self.inner))
    }
}
