//! The filesystem backend: keys are paths under the state directory.
//!
//! Every write goes to a temporary file in the same directory, is fsynced,
//! renamed over the target and the directory fsynced, so a crash or a full
//! disk at any moment leaves the previous file intact. Secrets are 0600 and
//! directories 0700 from the moment they exist (never chmod after the fact);
//! other files 0644, as certbot leaves `cert.pem`. A lock is an OS lock on
//! `locks/<name>.lock`, held by the open file, so it also keeps `edge renew`
//! from a timer and the daemon apart, and dies with the process.
//!
//! Each call runs on tokio's blocking pool: a file call, and above all an
//! fsync, never runs on a thread that serves connections.

use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{BoxFuture, Entry, Lock, Storage, StoreError};

/// How often a waiter looks at a lock another process holds.
const LOCK_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct Files {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs a blocking file operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

impl Files {
    /// Opens (creating with 0700 if needed) the state directory.
    pub async fn open(root: &Path) -> Result<Files, StoreError> {
        let root = root.to_path_buf();
        blocking(move || {
            for sub in ["", "live", "archive", "accounts", "renewal", "locks"] {
                ensure_dir(&root.join(sub))?;
            }
            // A state_dir made by someone else (a checkout, mkdir) may be world-readable.
            let mode = fs::metadata(&root).map_err(io(&root))?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).map_err(io(&root))?;
            }
            Ok(Files { root })
        })
        .await
    }

    /// The open file whose OS lock is the lock called `name`.
    async fn lock_file(&self, name: &str) -> Result<File, StoreError> {
        let path = self.path(&format!("locks/{name}.lock"))?;
        blocking(move || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(io(&path))
        })
        .await
    }

    /// The path of `key`, refusing keys that would leave the state directory.
    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let bad = key.is_empty()
            || key.starts_with('/')
            || key
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == ".." || c.starts_with('.'));
        if bad {
            return Err(StoreError::Invalid {
                path: self.root.join(key),
                message: "not a valid storage key".into(),
            });
        }
        Ok(self.root.join(key))
    }
}

fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    Ok(())
}

/// Writes `data` to `path` so that readers see either the old or the new file.
pub(super) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StoreError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_dir(dir)?;
    let file_name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        // The mode above only applies to new files; enforce it for a leftover.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io(&tmp))?;
        f.write_all(data).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Every file under `dir`, as keys relative to `root`; dot-files (temporary
/// files, hidden state) left out.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        // Follows symlinks, as certbot's live/ is made of them.
        if path.is_dir() {
            walk(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            if let Some(k) = rel.to_str() {
                out.push(k.to_string());
            }
        }
    }
}

impl Storage for Files {
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            blocking(move || match fs::read(&path) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io(&path)(e)),
            })
            .await
        })
    }

    fn store<'a>(
        &'a self,
        entries: &'a [Entry],
        _fence: Option<&'a Lock>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        // An OS lock is held until dropped: the fence always holds here.
        Box::pin(async move {
            let mut writes = Vec::with_capacity(entries.len());
            for e in entries {
                let mode = if e.secret { 0o600 } else { 0o644 };
                writes.push((self.path(&e.key)?, e.value.clone(), mode));
            }
            blocking(move || {
                for (path, data, mode) in writes {
                    write_atomic(&path, &data, mode)?;
                }
                Ok(())
            })
            .await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let path = self.path(key)?;
            blocking(move || match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(&path)(e)),
            })
            .await
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let dir = self.path(prefix.trim_end_matches('/'))?;
            let root = self.root.clone();
            blocking(move || {
                let mut out = Vec::new();
                walk(&root, &dir, &mut out);
                out.sort();
                Ok(out)
            })
            .await
        })
    }

    fn lock<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Lock, StoreError>> {
        Box::pin(async move {
            let file = self.lock_file(name).await?;
            let mut announced = false;
            loop {
                match file.try_lock() {
                    Ok(()) => return Ok(Lock::held(name, Box::new(file))),
                    Err(fs::TryLockError::WouldBlock) => {
                        if !announced {
                            tracing::info!(lineage = name, "another edge process is working on this certificate; waiting for its lock");
                            announced = true;
                        }
                        tokio::time::sleep(LOCK_POLL).await;
                    }
                    Err(fs::TryLockError::Error(e)) => {
                        return Err(io(&self.root.join("locks"))(e));
                    }
                }
            }
        })
    }

    fn fingerprint<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let dir = self.path(prefix.trim_end_matches('/'))?;
            let root = self.root.clone();
            blocking(move || {
                let mut keys = Vec::new();
                walk(&root, &dir, &mut keys);
                keys.sort();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                for k in keys {
                    let m = fs::metadata(root.join(&k)).ok();
                    (
                        k,
                        m.as_ref().and_then(|m| m.modified().ok()),
                        m.map(|m| m.len()),
                    )
                        .hash(&mut h);
                }
                Ok(h.finish())
            })
            .await
        })
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path(key).ok()
    }

    fn try_lock<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Lock>, StoreError>> {
        Box::pin(async move {
            let file = self.lock_file(name).await?;
            match file.try_lock() {
                Ok(()) => Ok(Some(Lock::held(name, Box::new(file)))),
                Err(fs::TryLockError::WouldBlock) => Ok(None),
                Err(fs::TryLockError::Error(e)) => Err(io(&self.root.join("locks"))(e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_stay_inside_the_state_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let f = Files::open(tmp.path()).await.unwrap();
        for key in [
            "",
            "/etc/passwd",
            "../x",
            "live/../../x",
            "live/./x",
            "live//x",
            "live/.x.tmp",
        ] {
            assert!(f.load(key).await.is_err(), "{key:?} was accepted");
        }
        assert_eq!(f.load("live/none/fullchain.pem").await.unwrap(), None);
    }

    #[tokio::test]
    async fn store_list_delete_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let f = Files::open(&tmp.path().join("s")).await.unwrap();
        let before = f.fingerprint("live/").await.unwrap();
        let entries = [
            Entry {
                key: "live/a/privkey.pem".into(),
                value: b"k".to_vec(),
                secret: true,
            },
            Entry {
                key: "live/a/fullchain.pem".into(),
                value: b"c".to_vec(),
                secret: false,
            },
        ];
        f.store(&entries, None).await.unwrap();
        assert_ne!(f.fingerprint("live/").await.unwrap(), before);
        assert_eq!(
            f.list("live/").await.unwrap(),
            ["live/a/fullchain.pem", "live/a/privkey.pem"]
        );
        let mode = |k: &str| {
            fs::metadata(f.local_path(k).unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("live/a/privkey.pem"), 0o600);
        assert_eq!(mode("live/a/fullchain.pem"), 0o644);
        assert_eq!(mode("live/a"), 0o700);
        f.delete("live/a/fullchain.pem").await.unwrap();
        f.delete("live/a/fullchain.pem").await.unwrap();
        assert_eq!(f.list("live/").await.unwrap(), ["live/a/privkey.pem"]);
    }

    #[tokio::test]
    async fn a_lock_is_exclusive_until_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let f = Files::open(tmp.path()).await.unwrap();
        let held = f.lock("a.example.org").await.unwrap();
        assert!(!held.is_lost());
        let f2 = f.clone();
        let waiter = tokio::spawn(async move { f2.lock("a.example.org").await.unwrap() });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "two holders at once");
        drop(held);
        let again = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the lock was not passed on")
            .unwrap();
        assert_eq!(again.name(), "a.example.org");
    }

    #[test]
    fn leftover_temp_file_does_not_break_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("x.pem");
        fs::write(
            tmp.path()
                .join(format!(".x.pem.tmp.{}.0", std::process::id())),
            "junk",
        )
        .unwrap();
        write_atomic(&target, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
    }
}
