//! Locks in etcd: one lease per node, kept alive while the node lives, and
//! one key per lock (`locks/<name>`, the holder's node name as its value)
//! bound to that lease. A node that dies or is cut off longer than the lease
//! loses its locks to etcd's clock, not its own: the keys are deleted and the
//! next node takes them. The holder learns it too ([`Lock::lost`]) once its
//! keep-alives have not been answered for the lease's time.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, PutOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{absent, still_held, Inner, REQUEST};
use crate::store::{Fence, Lock, StoreError};

/// This node's lease, and whether it is still held.
pub(super) struct NodeLease {
    id: i64,
    lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for NodeLease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl Inner {
    /// The node's lease (granted at first use, again after it was lost).
    pub(super) async fn lease(&self) -> Result<(i64, watch::Receiver<bool>), StoreError> {
        let mut held = self.lease.lock().await;
        if let Some(l) = held.as_ref() {
            if !*l.lost.borrow() {
                return Ok((l.id, l.lost.clone()));
            }
        }
        let ttl = self.cfg.lease;
        let granted = self
            .call("taking a lease from etcd", |mut c| async move {
                c.lease_grant(ttl.as_secs() as i64, None).await
            })
            .await?;
        let client = self.client().await?;
        let id = granted.id();
        let (tx, rx) = watch::channel(false);
        let keeper = tokio::spawn(keep_alive(client, id, ttl, tx));
        *held = Some(NodeLease {
            id,
            lost: rx.clone(),
            keeper,
        });
        Ok((id, rx))
    }
}

/// Renews the lease every third of its time; marks it lost once etcd has not
/// confirmed it for its whole time (less a margin, as the two clocks differ).
async fn keep_alive(
    mut client: etcd_client::Client,
    id: i64,
    ttl: Duration,
    lost: watch::Sender<bool>,
) {
    let margin = (ttl / 10).min(Duration::from_secs(1));
    let mut valid_until = Instant::now() + ttl - margin;
    let mut stream = None;
    loop {
        tokio::time::sleep_until((Instant::now() + ttl / 3).min(valid_until)).await;
        if Instant::now() >= valid_until {
            tracing::error!(
                lease = format!("{id:x}"),
                "etcd has not renewed this node's lease in time; its locks are lost and orders under them will not be written"
            );
            let _ = lost.send(true);
            return;
        }
        // A few quick tries: a stream on a member that went away is made
        // again on another at once, not a third of a lease later.
        for _ in 0..3 {
            if stream.is_none() {
                stream = tokio::time::timeout(ttl / 6, client.lease_keep_alive(id))
                    .await
                    .ok()
                    .and_then(Result::ok);
            }
            let Some((keeper, answers)) = stream.as_mut() else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let sent = Instant::now();
            let answer = tokio::time::timeout(ttl / 6, async {
                keeper.keep_alive().await?;
                answers.message().await
            })
            .await;
            match answer {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    valid_until = sent + Duration::from_secs(r.ttl() as u64) - margin;
                    break;
                }
                Ok(Ok(Some(_))) => {
                    tracing::error!(
                        lease = format!("{id:x}"),
                        "etcd says this node's lease has expired; its locks are lost"
                    );
                    let _ = lost.send(true);
                    return;
                }
                _ => stream = None,
            }
        }
    }
}

/// Takes the lock `name`; with `wait`, waits for the holder to let go (or its
/// lease to run out), else returns `None` while someone holds it.
pub(super) async fn acquire(
    inner: &Arc<Inner>,
    name: &str,
    wait: bool,
) -> Result<Option<Lock>, StoreError> {
    let key = inner.lock_key(name);
    // The node's name and a token for this one take: the same node's other
    // tasks hold the same lease, so only the token tells this take's key.
    let value = format!("{} {:016x}", inner.cfg.node, rand::random::<u64>());
    let mut announced = false;
    loop {
        let (lease, lost) = inner.lease().await?;
        let txn = Txn::new()
            .when([absent(&key)])
            .and_then([TxnOp::put(
                key.as_bytes(),
                value.as_bytes(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_bytes(), None)]);
        let resp = inner.txn("taking a lock in etcd", txn).await?;
        let mut client = inner.client().await?;
        let mut rev = resp.header().map_or(0, |h| h.revision());
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        // A take whose answer was lost and was sent again finds its own key.
        let ours = current
            .as_ref()
            .filter(|kv| kv.lease() == lease && kv.value() == value.as_bytes());
        if let Some(kv) = ours {
            rev = kv.create_revision();
        }
        if resp.succeeded() || ours.is_some() {
            // What the previous holder wrote is in the mirror before this
            // holder decides anything.
            if !inner.wait_applied(rev).await {
                let _ = client
                    .txn(release_txn(&key, rev))
                    .await
                    .map_err(|e| tracing::debug!("releasing {key}: {e}"));
                return Err(StoreError::Unavailable {
                    message: "the local copy did not catch up with etcd within 5 s; not deciding on a stale copy".into(),
                });
            }
            crate::metrics::METRICS
                .cluster_locks_held
                .get_or_create(&crate::metrics::NameLabel {
                    name: name.to_string(),
                })
                .set(1);
            let guard = Guard {
                inner: inner.clone(),
                key: key.clone(),
                name: name.to_string(),
                revision: rev,
            };
            let fence = Fence {
                key: key.clone(),
                revision: rev,
            };
            return Ok(Some(Lock::fenced(name, lost, Box::new(guard), fence)));
        }
        if !wait {
            return Ok(None);
        }
        let holder = current
            .map(|kv| holder_of(kv.value()))
            .unwrap_or_else(|| "another node".into());
        if !announced {
            tracing::info!(
                lineage = name,
                holder,
                "another node is working on this certificate; waiting for its lock"
            );
            announced = true;
        }
        // Wait for the key to go (released, or its lease ran out); look
        // again after a lease's time whatever happens.
        let gone = async {
            let opts = WatchOptions::new().with_start_revision(rev + 1);
            let mut w = client.watch(key.as_bytes(), Some(opts)).await.ok()?;
            while let Ok(Some(m)) = w.message().await {
                if m.events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    return Some(());
                }
            }
            None
        };
        let _ = tokio::time::timeout(inner.cfg.lease, gone).await;
    }
}

/// The node named in a lock's value (`<node> <token>`).
pub(super) fn holder_of(value: &[u8]) -> String {
    let v = String::from_utf8_lossy(value);
    v.split(' ').next().unwrap_or_default().to_string()
}

fn release_txn(key: &str, revision: i64) -> Txn {
    let fence = Fence {
        key: key.to_string(),
        revision,
    };
    Txn::new()
        .when([still_held(&fence)])
        .and_then([TxnOp::delete(key.as_bytes(), None)])
}

/// Releases the lock when dropped: deletes its key if it is still this
/// holder's (a key re-taken by another node after a lost lease is left alone).
struct Guard {
    inner: Arc<Inner>,
    key: String,
    name: String,
    revision: i64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        crate::metrics::METRICS
            .cluster_locks_held
            .get_or_create(&crate::metrics::NameLabel {
                name: self.name.clone(),
            })
            .set(0);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.inner.clone();
        let txn = release_txn(&self.key, self.revision);
        rt.spawn(async move {
            if let Ok(mut c) = inner.client().await {
                let _ = tokio::time::timeout(REQUEST, c.txn(txn)).await;
            }
        });
    }
}

/// Gives the node's lease back (its locks and shared records go with it), so
/// a command that ends does not keep others waiting for the lease's time.
pub(super) async fn revoke(inner: &Inner) {
    let Some(l) = inner.lease.lock().await.take() else {
        return;
    };
    if let Ok(mut c) = inner.client().await {
        let _ = tokio::time::timeout(REQUEST, c.lease_revoke(l.id)).await;
    }
}
