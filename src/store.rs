//! The state directory: certificates in certbot's layout, the ACME account and the
//! renewal state.
//!
//! Every write goes to a temporary file in the same directory, is fsynced, renamed
//! over the target and the directory fsynced, so a crash or a full disk at any
//! moment leaves the previous file intact. Keys are 0600 and directories 0700
//! from the moment they exist (never chmod after the fact). A per-certificate OS
//! lock keeps `edge renew` from a timer and the daemon off the same lineage.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use serde::{Deserialize, Serialize};

use crate::certinfo::{self, CertInfo};
use crate::names;

/// A state-directory operation that failed, naming the path.
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
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A certificate and key loaded from `live/<name>/`, checked to belong together.
#[derive(Clone, Debug)]
pub struct LoadedCert {
    pub name: String,
    pub info: CertInfo,
    pub key: Arc<CertifiedKey>,
}

/// Renewal bookkeeping that must survive restarts (backoff, ARI window).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RenewalState {
    #[serde(default)]
    pub names: Vec<String>,
    /// Unix seconds of the last attempt, successful or not.
    #[serde(default)]
    pub last_attempt: Option<u64>,
    #[serde(default)]
    pub last_success: Option<u64>,
    /// Consecutive failures since the last success; drives the backoff.
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    /// No attempt before this (backoff or the CA's Retry-After), unix seconds.
    #[serde(default)]
    pub not_before: Option<u64>,
    /// The ARI window the CA last suggested, and the point edge picked in it.
    #[serde(default)]
    pub ari_window: Option<(u64, u64)>,
    #[serde(default)]
    pub ari_chosen: Option<u64>,
    /// The serial the ARI facts above belong to (a new certificate resets them).
    #[serde(default)]
    pub ari_serial: Option<String>,
    #[serde(default)]
    pub ari_retry_after: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Holds the OS lock on one lineage until dropped.
pub struct LineageLock {
    _file: File,
}

impl Store {
    /// Opens (creating with 0700 if needed) the state directory.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store {
            root: root.to_path_buf(),
        };
        for sub in ["", "live", "archive", "accounts", "renewal", "locks"] {
            store.ensure_dir(&root.join(sub))?;
        }
        // A state_dir made by someone else (a checkout, mkdir) may be world-readable.
        let mode = fs::metadata(root).map_err(io(root))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io(root))?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn ensure_dir(&self, dir: &Path) -> Result<(), StoreError> {
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
        }
        Ok(())
    }

    pub fn live_dir(&self, name: &str) -> PathBuf {
        self.root.join("live").join(name)
    }

    pub fn archive_dir(&self, name: &str) -> PathBuf {
        self.root.join("archive").join(name)
    }

    pub fn account_path(&self, directory_url: &str) -> PathBuf {
        let host = directory_url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.as_str().replace([':', '/'], "_")))
            .unwrap_or_else(|| "default".into());
        self.root.join("accounts").join(host).join("account.json")
    }

    /// Takes the OS lock for one lineage, waiting for another process to finish.
    pub async fn lock(&self, name: &str) -> Result<LineageLock, StoreError> {
        let path = self.root.join("locks").join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        let mut announced = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(LineageLock { _file: file }),
                Err(fs::TryLockError::WouldBlock) => {
                    if !announced {
                        tracing::info!(lineage = name, "another edge process is working on this certificate; waiting for its lock");
                        announced = true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
            }
        }
    }

    /// Writes `data` to `path` so that readers see either the old or the new file.
    pub fn write_atomic(&self, path: &Path, data: &[u8], mode: u32) -> Result<(), StoreError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        self.ensure_dir(dir)?;
        let file_name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
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

    /// Stores a newly issued certificate: checks it against its key, keeps a
    /// numbered copy under `archive/` and replaces `live/`. Returns the facts of
    /// the new leaf.
    pub fn save_certificate(
        &self,
        name: &str,
        fullchain_pem: &str,
        key_pem: &str,
    ) -> Result<CertInfo, StoreError> {
        let loaded = certified_key(name, fullchain_pem.as_bytes(), key_pem.as_bytes())?;
        let (cert_pem, chain_pem) = split_leaf(fullchain_pem);
        let archive = self.archive_dir(name);
        self.ensure_dir(&archive)?;
        let n = next_archive_number(&archive);
        let files = [
            ("cert", cert_pem.as_str(), 0o644),
            ("chain", chain_pem.as_str(), 0o644),
            ("fullchain", fullchain_pem, 0o644),
            ("privkey", key_pem, 0o600),
        ];
        for (stem, data, mode) in files {
            self.write_atomic(
                &archive.join(format!("{stem}{n}.pem")),
                data.as_bytes(),
                mode,
            )?;
        }
        // The key goes first: a reader that sees a new key with the old chain
        // finds them mismatched and keeps what it has until fullchain lands.
        let live = self.live_dir(name);
        self.ensure_dir(&live)?;
        for (stem, data, mode) in [files[3], files[0], files[1], files[2]] {
            self.write_atomic(&live.join(format!("{stem}.pem")), data.as_bytes(), mode)?;
        }
        Ok(loaded.info)
    }

    /// Loads `live/<name>/` and checks that the pair belongs together.
    pub fn load_live(&self, name: &str) -> Result<LoadedCert, StoreError> {
        let dir = self.live_dir(name);
        let chain_path = dir.join("fullchain.pem");
        let key_path = dir.join("privkey.pem");
        let chain = fs::read(&chain_path).map_err(io(&chain_path))?;
        let key = fs::read(&key_path).map_err(io(&key_path))?;
        certified_key(name, &chain, &key)
    }

    /// Every lineage under `live/`, in name order.
    pub fn lineages(&self) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(self.root.join("live"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !n.starts_with('.') && names::validate_domain(n).is_ok())
            .collect();
        out.sort();
        out
    }

    fn renewal_path(&self, name: &str) -> PathBuf {
        self.root.join("renewal").join(format!("{name}.json"))
    }

    pub fn renewal_state(&self, name: &str) -> RenewalState {
        fs::read(self.renewal_path(name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save_renewal_state(&self, name: &str, state: &RenewalState) -> Result<(), StoreError> {
        let data = serde_json::to_vec_pretty(state).expect("renewal state serializes");
        self.write_atomic(&self.renewal_path(name), &data, 0o600)
    }
}

/// Builds a rustls key from PEM, refusing a key that does not match the leaf.
pub fn certified_key(
    name: &str,
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<LoadedCert, StoreError> {
    let mismatch = |message: String| StoreError::Mismatch {
        name: name.to_string(),
        message,
    };
    let chain = certinfo::parse_chain(chain_pem).map_err(mismatch)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| mismatch(format!("privkey.pem is not a PEM private key: {e}")))?;
    let info = certinfo::inspect(&chain[0]).map_err(mismatch)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        mismatch(format!(
            "certificate and private key do not belong together ({e})"
        ))
    })?;
    Ok(LoadedCert {
        name: name.to_string(),
        info,
        key: Arc::new(key),
    })
}

/// Splits a full chain into the leaf and the rest, as certbot's cert.pem/chain.pem.
fn split_leaf(fullchain: &str) -> (String, String) {
    const END: &str = "-----END CERTIFICATE-----";
    match fullchain.find(END) {
        Some(i) => {
            let cut = i + END.len();
            let leaf = format!("{}\n", fullchain[..cut].trim());
            let rest = fullchain[cut..].trim();
            let rest = if rest.is_empty() {
                String::new()
            } else {
                format!("{rest}\n")
            };
            (leaf, rest)
        }
        None => (fullchain.to_string(), String::new()),
    }
}

fn next_archive_number(dir: &Path) -> u32 {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("fullchain")?
                .strip_suffix(".pem")?
                .parse::<u32>()
                .ok()
        })
        .max()
        .unwrap_or(0)
        + 1
}

/// Unix seconds, for the renewal state file.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn from_unix(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    #[test]
    fn save_lays_out_like_certbot_with_safe_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("state")).unwrap();
        let (c, k) = self_signed(&["a.example.org"]);
        store.save_certificate("a.example.org", &c, &k).unwrap();
        let (c2, k2) = self_signed(&["a.example.org"]);
        store.save_certificate("a.example.org", &c2, &k2).unwrap();
        let live = store.live_dir("a.example.org");
        for f in ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"] {
            assert!(live.join(f).exists(), "{f}");
        }
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&live.join("privkey.pem")), 0o600);
        assert_eq!(mode(store.root()), 0o700);
        assert_eq!(
            mode(&store.archive_dir("a.example.org").join("privkey2.pem")),
            0o600
        );
        assert_eq!(fs::read_to_string(live.join("fullchain.pem")).unwrap(), c2);
        assert!(store
            .archive_dir("a.example.org")
            .join("fullchain1.pem")
            .exists());
        assert_eq!(store.lineages(), vec!["a.example.org".to_string()]);
    }

    #[test]
    fn mismatched_pair_is_refused_and_old_files_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let (c, k) = self_signed(&["a.example.org"]);
        store.save_certificate("a.example.org", &c, &k).unwrap();
        let (c2, _) = self_signed(&["a.example.org"]);
        let (_, k3) = self_signed(&["a.example.org"]);
        let err = store
            .save_certificate("a.example.org", &c2, &k3)
            .unwrap_err();
        assert!(err.to_string().contains("do not belong together"), "{err}");
        assert_eq!(
            fs::read_to_string(store.live_dir("a.example.org").join("fullchain.pem")).unwrap(),
            c
        );
        store.load_live("a.example.org").unwrap();
    }

    #[test]
    fn leftover_temp_file_does_not_break_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let target = tmp.path().join("x.pem");
        fs::write(
            tmp.path()
                .join(format!(".x.pem.tmp.{}", std::process::id())),
            "junk",
        )
        .unwrap();
        store.write_atomic(&target, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
    }
}
