//! The state edge keeps, over a storage interface.
//!
//! [`Storage`] is the seam, after certmagic's `Storage` + `Locker`: load,
//! store, delete, list, a fingerprint that changes with the stored values, and
//! a lock whose holder is told when it has lost it. Every call is async and
//! may fail, so a backend on a network (a slow or failing write) fits without
//! changing its callers. The filesystem backend ([`files::Files`]) is the
//! first; it never runs a file call on the caller's thread.
//!
//! [`Store`] is what edge keeps in it: certificates in certbot's layout
//! (`live/<name>/{cert,chain,fullchain,privkey}.pem`, numbered copies under
//! `archive/<name>/`), the ACME account under `accounts/<directory host>/`,
//! and the renewal state under `renewal/<name>.json`.

pub mod cluster;
pub mod files;
mod layout;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

pub use layout::{
    certified_key, from_unix, is_secret_key, unix, LoadedCert, RenewalState, Requested, Store,
};

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A storage operation that failed, naming what it was about.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("certificate {name:?}: {message}")]
    Mismatch { name: String, message: String },
    #[error("{key}: not stored")]
    NotFound { key: String },
    /// A write fenced by a lock whose lease ran out: someone else may hold it now.
    #[error("the lock on {name:?} was lost before the write; nothing was written")]
    LockLost { name: String },
    /// The shared store cannot be reached or refuses this node now; the
    /// operation may be tried again later.
    #[error("{message}")]
    Unavailable { message: String },
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        match self {
            StoreError::NotFound { .. } => true,
            StoreError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// One value to store.
#[derive(Clone)]
pub struct Entry {
    /// `/`-separated, relative: `live/example.org/privkey.pem`.
    pub key: String,
    pub value: Vec<u8>,
    /// A private key or the account: readable by the owner only, and never
    /// stored unencrypted where it leaves the host.
    pub secret: bool,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key)
            .field("bytes", &self.value.len())
            .field("secret", &self.secret)
            .finish()
    }
}

/// Where edge's state lives.
pub trait Storage: Send + Sync + fmt::Debug {
    /// The value at `key`, or `None` when there is none.
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;

    /// Writes `entries` in order, each one atomically: a reader sees the old
    /// value or the new one, never a part, and a crash at any moment leaves
    /// every key readable. With `fence`, the write happens only while that
    /// lock is held; a backend whose locks can be lost refuses it with
    /// [`StoreError::LockLost`] once it has been.
    fn store<'a>(
        &'a self,
        entries: &'a [Entry],
        fence: Option<&'a Lock>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Removes `key`; nothing to remove is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Every key under `prefix` (which ends in `/`), sorted.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Takes the lock called `name`, waiting while another holder (this
    /// process or another) has it. The lock is held until the [`Lock`] is
    /// dropped, or until the backend loses it (a lease that could not be
    /// renewed), which the holder learns from [`Lock::lost`].
    fn lock<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Lock, StoreError>>;

    /// A value that changes when any key under `prefix` does, whoever wrote
    /// it; cheap enough to ask twice a second.
    fn fingerprint<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Where `key` is on this host's filesystem, when it is there (for the
    /// paths edge prints and hands to hooks).
    fn local_path(&self, key: &str) -> Option<PathBuf>;

    /// Takes the lock called `name` if nobody holds it; `None` if someone does.
    fn try_lock<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Lock>, StoreError>>;

    /// A backend that pushes changes (another node stored a certificate, a
    /// lock was let go) bumps this; `None` for one the caller must poll.
    /// What changed is then asked with [`Storage::take_pushed`].
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// What changed since this was last asked, for a backend that pushes:
    /// the caller then reads only those lineages again.
    fn take_pushed(&self) -> Pushed {
        Pushed {
            all: true,
            wake: true,
            ..Pushed::default()
        }
    }

    /// The fleet store, when this is one.
    fn cluster(&self) -> Option<&cluster::Cluster> {
        None
    }

    /// Lets go of what the process holds in the backend (a lease), before
    /// the process ends.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// What a pushing backend says changed since it was last asked.
#[derive(Debug, Default)]
pub struct Pushed {
    /// Anything under `live/` may have changed (the store was read anew):
    /// every lineage is read again.
    pub all: bool,
    /// The lineages whose `live/` files changed.
    pub lineages: std::collections::BTreeSet<String>,
    /// A lock was let go or the store came back: due renewals that waited
    /// look again.
    pub wake: bool,
}

/// What a fenced write compares: the lock's key and the revision that
/// created it (a lock taken again by someone else has another).
#[derive(Debug, Clone)]
pub struct Fence {
    pub key: String,
    pub revision: i64,
}

/// A held lock. Dropping it releases it.
pub struct Lock {
    name: String,
    lost: watch::Receiver<bool>,
    fence: Option<Fence>,
    _held: Box<dyn Send + Sync>,
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("name", &self.name)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Lock {
    /// A lock held through `held` until this is dropped; `lost` turns true
    /// when the backend can no longer vouch for it.
    pub fn new(name: &str, lost: watch::Receiver<bool>, held: Box<dyn Send + Sync>) -> Lock {
        Lock {
            name: name.to_string(),
            lost,
            fence: None,
            _held: held,
        }
    }

    /// A lock a write can be fenced by (`fence` is compared at the store).
    pub fn fenced(
        name: &str,
        lost: watch::Receiver<bool>,
        held: Box<dyn Send + Sync>,
        fence: Fence,
    ) -> Lock {
        Lock {
            fence: Some(fence),
            ..Lock::new(name, lost, held)
        }
    }

    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// A lock that is never lost while held (an OS lock on this host).
    pub fn held(name: &str, held: Box<dyn Send + Sync>) -> Lock {
        let (tx, rx) = watch::channel(false);
        // The sender lives as long as the lock, so `lost` never fires.
        Lock::new(name, rx, Box::new((held, tx)))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Completes when the lock has been lost; pending for as long as it is held.
    pub async fn lost(&mut self) {
        if self.lost.wait_for(|lost| *lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The storage behind a [`Store`], shared.
pub type Backend = Arc<dyn Storage>;
