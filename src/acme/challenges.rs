//! The answers to HTTP-01 and TLS-ALPN-01 challenges this process serves
//! now, for its own listeners to find: the plain-HTTP listener answers
//! `/.well-known/acme-challenge/<token>` from it, the TLS resolver gives a
//! handshake that offers only `acme-tls/1` the challenge certificate for its
//! name (RFC 8737). Process-wide, as the metrics are: whichever of the
//! daemon's listeners or a command's stand-in listener (`standalone`) is
//! up serves what any order of the process presented.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// ALPN of TLS-ALPN-01 (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Default)]
pub struct Challenges {
    /// HTTP-01: token -> key authorization.
    http01: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: name (lower case) -> its challenge certificate.
    tls_alpn01: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// Listeners of this process that serve the answers: while one of each
    /// kind is up, a solver needs no stand-in.
    http_listeners: AtomicUsize,
    https_listeners: AtomicUsize,
}

pub static CHALLENGES: LazyLock<Challenges> = LazyLock::new(Challenges::default);

/// Counts a listener that serves answers while it lives.
pub struct Serving(&'static AtomicUsize);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Challenges {
    pub fn put_http01(&self, token: &str, key_authorization: &str) {
        self.http01
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove_http01(&self, token: &str) {
        self.http01
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    /// The key authorization for `token`, if an order presented it.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    pub fn put_tls_alpn01(&self, name: &str, cert: Arc<CertifiedKey>) {
        self.tls_alpn01
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_ascii_lowercase(), cert);
    }

    pub fn remove_tls_alpn01(&self, name: &str) {
        self.tls_alpn01
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name.to_ascii_lowercase());
    }

    /// The challenge certificate for `name`, if an order presented one.
    pub fn tls_alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.tls_alpn01
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name.to_ascii_lowercase())
            .cloned()
    }

    /// The plain-HTTP listener serves HTTP-01 answers while this lives.
    pub fn serving_http(&'static self) -> Serving {
        self.http_listeners.fetch_add(1, Ordering::AcqRel);
        Serving(&self.http_listeners)
    }

    /// The HTTPS listener serves TLS-ALPN-01 answers while this lives.
    pub fn serving_https(&'static self) -> Serving {
        self.https_listeners.fetch_add(1, Ordering::AcqRel);
        Serving(&self.https_listeners)
    }

    pub fn http_served(&self) -> bool {
        self.http_listeners.load(Ordering::Acquire) > 0
    }

    pub fn https_served(&self) -> bool {
        self.https_listeners.load(Ordering::Acquire) > 0
    }
}

/// The TLS-ALPN-01 certificate for `name` (RFC 8737 §3): self-signed, the
/// name as its only SAN, and the critical acmeIdentifier extension holding
/// the SHA-256 of the key authorization.
pub fn tls_alpn01_cert(name: &str, key_authorization: &str) -> Result<CertifiedKey, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    let digest = Sha256::digest(key_authorization.as_bytes());
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(&digest));
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(
        rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
    );
    // Not `CertifiedKey::from_der`: its key check parses the certificate
    // with webpki, which refuses the critical acmeIdentifier extension.
    let signer = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![der], signer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_found_by_token_and_by_name() {
        let c = Challenges::default();
        c.put_http01("tok", "tok.thumb");
        assert_eq!(c.http01("tok").as_deref(), Some("tok.thumb"));
        c.remove_http01("tok");
        assert_eq!(c.http01("tok"), None);
        let cert = Arc::new(tls_alpn01_cert("a.test", "tok.thumb").unwrap());
        c.put_tls_alpn01("A.test", cert);
        assert!(c.tls_alpn01("a.TEST").is_some());
        c.remove_tls_alpn01("a.test");
        assert!(c.tls_alpn01("a.test").is_none());
    }

    #[test]
    fn the_challenge_certificate_carries_the_digest_in_a_critical_extension() {
        let ck = tls_alpn01_cert("a.test", "tok.thumb").unwrap();
        let der = ck.cert[0].as_ref();
        let (_, x) = x509_parser::parse_x509_certificate(der).unwrap();
        let ext = x
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier");
        assert!(ext.critical);
        let digest = Sha256::digest(b"tok.thumb");
        // An OCTET STRING of the 32-byte digest.
        assert_eq!(&ext.value[2..], digest.as_slice());
    }
}
