//! The key-encryption key and the sealing of secrets that go to the shared
//! store: AES-256-GCM, a random 96-bit nonce per value, and the value's
//! storage key as associated data, so a sealed value moved to another key
//! (someone else's `privkey.pem`) does not open.
//!
//! Sealed value: `edge-sealed-v1:` + nonce (12 bytes) + ciphertext + tag.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

const MAGIC: &[u8] = b"edge-sealed-v1:";

/// What the fleet stores under `kek-check` so a node with the wrong key
/// finds out at start, before any key is stored or needed.
pub(crate) const CHECK_PLAINTEXT: &[u8] = b"edge key-encryption key check";

pub(crate) struct Kek {
    key: LessSafeKey,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

/// Reads `key_encryption_key_file`: exactly 32 bytes, readable by its owner only.
pub(crate) fn load(path: &Path) -> Result<Kek, String> {
    let show = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        format!("cluster.key_encryption_key_file {show}: {e}; make it with `head -c 32 /dev/urandom > {show} && chmod 600 {show}` and copy the same file to every node")
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "cluster.key_encryption_key_file {show} is readable by others (mode {mode:o}); run `chmod 600 {show}`"
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{show}: {e}"))?;
    if bytes.len() != 32 {
        return Err(format!(
            "cluster.key_encryption_key_file {show} holds {} bytes; expected exactly 32 raw random bytes (`head -c 32 /dev/urandom`, no newline, not hex)",
            bytes.len()
        ));
    }
    Kek::new(&bytes)
}

impl Kek {
    pub(crate) fn new(bytes: &[u8]) -> Result<Kek, String> {
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| "the key-encryption key is not a 32-byte AES-256 key".to_string())?;
        Ok(Kek {
            key: LessSafeKey::new(key),
        })
    }

    /// `value` sealed for storage under `key`.
    pub(crate) fn seal(&self, key: &str, value: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::Rng::fill(&mut rand::rng(), &mut nonce[..]);
        let mut in_out = value.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut in_out,
            )
            .expect("AES-GCM seals any length edge stores");
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + in_out.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&in_out);
        out
    }

    /// The value stored under `key`, opened.
    pub(crate) fn open(&self, key: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
        let body = sealed
            .strip_prefix(MAGIC)
            .ok_or_else(|| format!("{key}: stored unsealed; edge stores secrets only sealed"))?;
        if body.len() < NONCE_LEN {
            return Err(format!("{key}: the sealed value is cut short"));
        }
        let (nonce, ct) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| format!("{key}: the sealed value is cut short"))?;
        let mut in_out = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut in_out)
            .map_err(|_| {
                format!("{key}: the key-encryption key does not open it (cluster.key_encryption_key_file differs from the one the fleet sealed it with)")
            })?;
        Ok(plain.to_vec())
    }
}

/// Whether a stored value is a sealed one.
pub(crate) fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_the_same_key_under_the_same_name_only() {
        let kek = Kek::new(&[7u8; 32]).unwrap();
        let pem = b"-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n";
        let sealed = kek.seal("live/a/privkey.pem", pem);
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(11).any(|w| w == b"PRIVATE KEY"));
        assert_ne!(sealed, kek.seal("live/a/privkey.pem", pem), "nonce reused");
        assert_eq!(kek.open("live/a/privkey.pem", &sealed).unwrap(), pem);
        let moved = kek.open("live/b/privkey.pem", &sealed).unwrap_err();
        assert!(moved.contains("does not open"), "{moved}");
        let other = Kek::new(&[8u8; 32]).unwrap();
        let wrong = other.open("live/a/privkey.pem", &sealed).unwrap_err();
        assert!(wrong.contains("key_encryption_key_file"), "{wrong}");
        assert!(kek.open("live/a/privkey.pem", pem).is_err());
        assert!(kek.open("live/a/privkey.pem", &sealed[..20]).is_err());
    }

    #[test]
    fn the_key_file_must_be_32_bytes_and_private() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("kek");
        std::fs::write(&p, [1u8; 32]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&p).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        load(&p).unwrap();
        std::fs::write(&p, [1u8; 33]).unwrap();
        assert!(load(&p).unwrap_err().contains("holds 33 bytes"));
        assert!(load(&tmp.path().join("none"))
            .unwrap_err()
            .contains("head -c 32 /dev/urandom"));
    }
}
