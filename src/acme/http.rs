//! The HTTP client edge uses to talk to the CA (and to DNS provider APIs).
//!
//! Built on reqwest with an explicit rustls config so that: the aws-lc-rs
//! provider is used everywhere (one crypto library in the binary), `ca_bundle`
//! roots are added for the ACME server only, and every request has a timeout
//! (instant-acme's default client has none).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::AcmeError;

/// A client for the CA: the public web PKI plus the certificates in
/// `acme.ca_bundle`, which is read on the blocking pool.
pub async fn ca_client(
    bundle: Option<&Path>,
    timeout: Duration,
) -> Result<reqwest::Client, AcmeError> {
    let pem = match bundle {
        None => None,
        Some(path) => Some((
            path,
            tokio::fs::read(path)
                .await
                .map_err(|e| AcmeError::CaBundle {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })?,
        )),
    };
    build(pem, timeout)
}

/// A client for DNS providers' APIs: the public web PKI.
pub fn client(timeout: Duration) -> Result<reqwest::Client, AcmeError> {
    build(None, timeout)
}

fn build(extra: Option<(&Path, Vec<u8>)>, timeout: Duration) -> Result<reqwest::Client, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some((path, pem)) = extra {
        let bad = |detail: String| AcmeError::CaBundle {
            path: path.to_path_buf(),
            detail,
        };
        let mut n = 0;
        for c in CertificateDer::pem_slice_iter(&pem) {
            let c = c.map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
            roots
                .add(c)
                .map_err(|e| bad(format!("unusable certificate: {e}")))?;
            n += 1;
        }
        if n == 0 {
            return Err(bad(
                "holds no PEM certificate; expected the CA's root certificate".into(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Other(format!("TLS client setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("edge/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AcmeError::Other(format!("HTTP client setup: {}", super::error_chain(&e))))
}

/// The `Retry-After` of the CA's last refusal: instant-acme reads the problem
/// document but not this header, which is when a rate limit ends.
#[derive(Debug, Clone, Default)]
pub struct RetryAfter(Arc<Mutex<Option<SystemTime>>>);

impl RetryAfter {
    /// The time last named, taken (so it is not applied to a later error).
    pub fn take(&self) -> Option<SystemTime> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn note(&self, headers: &http::HeaderMap) {
        let at = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v.trim()));
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }
}

/// `Retry-After`: seconds, or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(v: &str) -> Option<SystemTime> {
    match v.parse::<u64>() {
        Ok(secs) => Some(crate::clock::now() + Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(v).ok(),
    }
}

/// The transport failed: no answer came from the CA. Boxed into
/// instant-acme's `Error::Other`, where `from_acme` finds it again, so that
/// this, and only this, counts as the CA being unreachable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Transport(pub String);

/// instant-acme's transport, over reqwest.
pub struct AcmeHttp {
    pub client: reqwest::Client,
    pub retry_after: RetryAfter,
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.client.clone();
        let retry_after = self.retry_after.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(never) => match never {},
            };
            let resp = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    instant_acme::Error::Other(Box::new(Transport(super::error_chain(&e))))
                })?;
            let status = resp.status();
            let headers = resp.headers().clone();
            if status.is_client_error() || status.is_server_error() {
                retry_after.note(&headers);
            }
            let bytes = resp.bytes().await.map_err(|e| {
                instant_acme::Error::Other(Box::new(Transport(super::error_chain(&e))))
            })?;
            let mut out = http::Response::new(Full::new(bytes));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok(BytesResponse::from(out))
        })
    }
}
