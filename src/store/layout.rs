//! What edge keeps in its storage, and under which keys: certbot's layout for
//! certificates, the ACME account, the renewal state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use serde::{Deserialize, Serialize};

use super::files::Files;
use super::{Backend, Entry, Lock, StoreError};
use crate::certinfo::{self, CertInfo};
use crate::names;

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
    /// The ACME profile the certificate was ordered with (none: the CA's
    /// default), ordered again on renewal unless the config names another.
    #[serde(default)]
    pub profile: Option<String>,
    /// A forced renewal under way: who started it and the serial it
    /// replaces. Cleared when it ends either way; left set only by a process
    /// that died mid-order, so another (another node) finishes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<Requested>,
}

/// A forced renewal that has begun.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Requested {
    pub by: String,
    pub serial: String,
}

/// Edge's state, over whichever storage backs it. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

fn live_key(name: &str, file: &str) -> String {
    format!("live/{name}/{file}")
}

impl Store {
    /// The state directory as the storage (created 0700 if needed).
    pub async fn open(root: &Path) -> Result<Store, StoreError> {
        Ok(Store::new(Arc::new(Files::open(root).await?)))
    }

    /// The storage a config names: the fleet's etcd (mirrored in
    /// `state_dir`) with `[cluster]`, else `state_dir` alone.
    pub async fn open_for(cfg: &crate::config::Config) -> Result<Store, StoreError> {
        match &cfg.cluster {
            Some(c) => Ok(Store::new(Arc::new(
                super::cluster::Cluster::open(c, &cfg.state_dir).await?,
            ))),
            None => Store::open(&cfg.state_dir).await,
        }
    }

    /// Takes the lock for one lineage if nobody holds it.
    pub async fn try_lock(&self, name: &str) -> Result<Option<Lock>, StoreError> {
        self.backend.try_lock(name).await
    }

    pub fn new(backend: Backend) -> Store {
        Store { backend }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Where `live/<name>/<file>` is on this host, for messages and hooks.
    pub fn live_path(&self, name: &str, file: &str) -> PathBuf {
        let key = live_key(name, file);
        self.backend
            .local_path(&key)
            .unwrap_or_else(|| PathBuf::from(key))
    }

    /// Where `live/<name>/` is on this host (certbot's `RENEWED_LINEAGE`).
    pub fn live_dir(&self, name: &str) -> PathBuf {
        let key = format!("live/{name}");
        self.backend
            .local_path(&key)
            .unwrap_or_else(|| PathBuf::from(key))
    }

    /// Where `live/` is on this host.
    pub fn live_root(&self) -> PathBuf {
        self.backend
            .local_path("live")
            .unwrap_or_else(|| PathBuf::from("live"))
    }

    /// Takes the lock for one lineage, waiting for another holder to finish.
    pub async fn lock(&self, name: &str) -> Result<Lock, StoreError> {
        self.backend.lock(name).await
    }

    /// Stores a newly issued certificate: checks it against its key, keeps a
    /// numbered copy under `archive/` and replaces `live/`, only while `lock`
    /// is held. Returns the facts of the new leaf.
    pub async fn save_certificate(
        &self,
        name: &str,
        fullchain_pem: &str,
        key_pem: &str,
        lock: &Lock,
    ) -> Result<CertInfo, StoreError> {
        let loaded = certified_key(name, fullchain_pem.as_bytes(), key_pem.as_bytes())?;
        let (cert_pem, chain_pem) = split_leaf(fullchain_pem);
        let archived = self.backend.list(&format!("archive/{name}/")).await?;
        let n = next_archive_number(&archived);
        let files = [
            ("cert", cert_pem.into_bytes()),
            ("chain", chain_pem.into_bytes()),
            ("fullchain", fullchain_pem.as_bytes().to_vec()),
            ("privkey", key_pem.as_bytes().to_vec()),
        ];
        let entry = |key: String, data: &Vec<u8>| Entry {
            secret: is_secret_key(&key),
            key,
            value: data.clone(),
        };
        let mut entries: Vec<Entry> = files
            .iter()
            .map(|(stem, data)| entry(format!("archive/{name}/{stem}{n}.pem"), data))
            .collect();
        // The key goes first: a reader that sees a new key with the old chain
        // finds them mismatched and keeps what it has until fullchain lands.
        for i in [3, 0, 1, 2] {
            let (stem, data) = &files[i];
            entries.push(entry(live_key(name, &format!("{stem}.pem")), data));
        }
        self.backend.store(&entries, Some(lock)).await?;
        Ok(loaded.info)
    }

    /// Loads `live/<name>/` and checks that the pair belongs together.
    pub async fn load_live(&self, name: &str) -> Result<LoadedCert, StoreError> {
        let (chain, key) = self.live_pair(name).await?;
        certified_key(name, &chain, &key)
    }

    /// The bytes of `live/<name>/fullchain.pem` and `privkey.pem`, unchecked.
    pub async fn live_pair(&self, name: &str) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let chain = self.required(&live_key(name, "fullchain.pem")).await?;
        let key = self.required(&live_key(name, "privkey.pem")).await?;
        Ok((chain, key))
    }

    /// Whether `live/<name>/` still holds either file of its pair (a
    /// lineage removed from the store holds neither).
    pub async fn has_live(&self, name: &str) -> bool {
        let pair = [
            live_key(name, "fullchain.pem"),
            live_key(name, "privkey.pem"),
        ];
        self.backend
            .list(&format!("live/{name}/"))
            .await
            .is_ok_and(|keys| keys.iter().any(|k| pair.contains(k)))
    }

    async fn required(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        self.backend
            .load(key)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                key: self
                    .backend
                    .local_path(key)
                    .map_or_else(|| key.to_string(), |p| p.display().to_string()),
            })
    }

    /// Every lineage under `live/`, in name order.
    pub async fn lineages(&self) -> Result<Vec<String>, StoreError> {
        let keys = self.backend.list("live/").await?;
        let mut out: Vec<String> = keys
            .iter()
            .filter_map(|k| {
                let rest = k.strip_prefix("live/")?;
                let (name, file) = rest.split_once('/')?;
                (file == "fullchain.pem" || file == "privkey.pem").then_some(name)
            })
            .filter(|n| names::validate_name(n).is_ok())
            .map(str::to_string)
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// A value that changes whenever anything under `live/` does.
    pub async fn live_fingerprint(&self) -> Result<u64, StoreError> {
        self.backend.fingerprint("live/").await
    }

    fn renewal_key(name: &str) -> String {
        format!("renewal/{name}.json")
    }

    /// The lineage's renewal state; a missing or unreadable one is a fresh start.
    pub async fn renewal_state(&self, name: &str) -> RenewalState {
        match self.backend.load(&Self::renewal_key(name)).await {
            Ok(Some(b)) => serde_json::from_slice(&b).unwrap_or_default(),
            Ok(None) => RenewalState::default(),
            Err(e) => {
                tracing::warn!(lineage = name, "cannot read the renewal state: {e}");
                RenewalState::default()
            }
        }
    }

    pub async fn save_renewal_state(
        &self,
        name: &str,
        state: &RenewalState,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_vec_pretty(state).expect("renewal state serializes");
        let entry = Entry {
            key: Self::renewal_key(name),
            value,
            secret: false,
        };
        self.backend.store(std::slice::from_ref(&entry), None).await
    }

    /// The key of the account registered at `directory_url`: one per CA host.
    fn account_key(directory_url: &str) -> String {
        let host = directory_url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.authority().map(|a| a.as_str().replace([':', '/'], "_")))
            .unwrap_or_else(|| "default".into());
        format!("accounts/{host}/account.json")
    }

    /// Where the account for `directory_url` is, for messages.
    pub fn account_location(&self, directory_url: &str) -> String {
        let key = Self::account_key(directory_url);
        self.backend
            .local_path(&key)
            .map_or(key, |p| p.display().to_string())
    }

    /// The stored account credentials for `directory_url`, if any.
    pub async fn account(&self, directory_url: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.backend.load(&Self::account_key(directory_url)).await
    }

    pub async fn save_account(&self, directory_url: &str, json: Vec<u8>) -> Result<(), StoreError> {
        let key = Self::account_key(directory_url);
        let entry = Entry {
            secret: is_secret_key(&key),
            key,
            value: json,
        };
        self.backend.store(std::slice::from_ref(&entry), None).await
    }
}

/// Whether the value under `key` is a secret: a private key (live or
/// archived) or an ACME account.
pub fn is_secret_key(key: &str) -> bool {
    key.starts_with("accounts/")
        || key
            .rsplit('/')
            .next()
            .is_some_and(|file| file.starts_with("privkey"))
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

/// One more than the highest `fullchainN.pem` among the archive's keys.
fn next_archive_number(keys: &[String]) -> u32 {
    keys.iter()
        .filter_map(|k| {
            k.rsplit('/')
                .next()?
                .strip_prefix("fullchain")?
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
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    #[tokio::test]
    async fn save_lays_out_like_certbot_with_safe_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state");
        let store = Store::open(&root).await.unwrap();
        let lock = store.lock("a.example.org").await.unwrap();
        let (c, k) = self_signed(&["a.example.org"]);
        store
            .save_certificate("a.example.org", &c, &k, &lock)
            .await
            .unwrap();
        let (c2, k2) = self_signed(&["a.example.org"]);
        store
            .save_certificate("a.example.org", &c2, &k2, &lock)
            .await
            .unwrap();
        let live = root.join("live/a.example.org");
        for f in ["cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"] {
            assert!(live.join(f).exists(), "{f}");
        }
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&live.join("privkey.pem")), 0o600);
        assert_eq!(mode(&root), 0o700);
        assert_eq!(
            mode(&root.join("archive/a.example.org/privkey2.pem")),
            0o600
        );
        assert_eq!(fs::read_to_string(live.join("fullchain.pem")).unwrap(), c2);
        assert!(root.join("archive/a.example.org/fullchain1.pem").exists());
        assert_eq!(store.lineages().await.unwrap(), vec!["a.example.org"]);
        assert_eq!(
            store.live_path("a.example.org", "privkey.pem"),
            live.join("privkey.pem")
        );
    }

    #[tokio::test]
    async fn mismatched_pair_is_refused_and_old_files_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).await.unwrap();
        let lock = store.lock("a.example.org").await.unwrap();
        let (c, k) = self_signed(&["a.example.org"]);
        store
            .save_certificate("a.example.org", &c, &k, &lock)
            .await
            .unwrap();
        let (c2, _) = self_signed(&["a.example.org"]);
        let (_, k3) = self_signed(&["a.example.org"]);
        let err = store
            .save_certificate("a.example.org", &c2, &k3, &lock)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("do not belong together"), "{err}");
        assert_eq!(
            fs::read_to_string(tmp.path().join("live/a.example.org/fullchain.pem")).unwrap(),
            c
        );
        store.load_live("a.example.org").await.unwrap();
        let missing = store.load_live("b.example.org").await.unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
    }

    #[tokio::test]
    async fn renewal_state_and_account_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).await.unwrap();
        assert_eq!(store.renewal_state("a").await.failures, 0);
        let s = RenewalState {
            failures: 3,
            ..Default::default()
        };
        store.save_renewal_state("a", &s).await.unwrap();
        assert_eq!(store.renewal_state("a").await.failures, 3);
        let dir = "https://127.0.0.1:14000/dir";
        assert_eq!(store.account(dir).await.unwrap(), None);
        store.save_account(dir, b"{}".to_vec()).await.unwrap();
        let path = tmp.path().join("accounts/127.0.0.1_14000/account.json");
        assert_eq!(fs::read(&path).unwrap(), b"{}");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
