//! The proxy's one error type and the pages it turns into.
//!
//! Every failure on the request path is a [`ProxyError`]; which status it becomes
//! and whose fault it was are decided here and nowhere else (Pingora's idea).

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use http::StatusCode;

/// Who caused a failure: useful in logs and for deciding retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client,
    Upstream,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("no site serves host {0:?}")]
    UnknownHost(String),
    #[error("host {0:?} is not covered by the certificate this connection was given")]
    Misdirected(String),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(&'static str),
    #[error("request body larger than limits.max_body_bytes ({0} bytes)")]
    BodyTooLarge(u64),
    #[error("request body stalled longer than limits.body_idle_timeout")]
    BodyTimeout,
    #[error("no upstream answered: {0}")]
    UpstreamUnavailable(String),
    #[error("upstream timed out: {0}")]
    UpstreamTimeout(String),
    #[error("upstreams busy: {0}")]
    UpstreamBusy(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UnknownHost(_) => StatusCode::NOT_FOUND,
            ProxyError::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamBusy(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whose fault it was. (Not `source`: that is `std::error::Error::source`.)
    pub fn fault(&self) -> Source {
        match self {
            ProxyError::UpstreamUnavailable(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::UpstreamBusy(_) => Source::Upstream,
            _ => Source::Client,
        }
    }
}

/// The body for an error status: a site's own page when configured, else a
/// small built-in one. Pages are read once at start so a missing file is found
/// by `edge check`, not by the first unlucky visitor.
#[derive(Debug, Clone, Default)]
pub struct ErrorPages {
    custom: BTreeMap<u16, Bytes>,
}

impl ErrorPages {
    pub fn load(files: &BTreeMap<u16, PathBuf>) -> Result<ErrorPages, String> {
        let mut custom = BTreeMap::new();
        for (status, path) in files {
            let body = std::fs::read(path)
                .map_err(|e| format!("error page for {status}: {}: {e}", path.display()))?;
            custom.insert(*status, Bytes::from(body));
        }
        Ok(ErrorPages { custom })
    }

    pub fn body(&self, status: StatusCode) -> Bytes {
        if let Some(b) = self.custom.get(&status.as_u16()) {
            return b.clone();
        }
        builtin(status)
    }
}

pub fn builtin(status: StatusCode) -> Bytes {
    let reason = status.canonical_reason().unwrap_or("Error");
    Bytes::from(format!(
        "<!DOCTYPE html>\n<html><head><title>{code} {reason}</title></head>\n<body><center><h1>{code} {reason}</h1></center><hr><center>edge</center></body></html>\n",
        code = status.as_u16()
    ))
}
