//! ACME Renewal Information (RFC 9773) without an account. The directory and
//! the renewal-info resource are plain GETs, so asking when a stored
//! certificate should be renewed never loads or registers an ACME account.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::http::{ca_client, parse_retry_after};
use super::{error_chain, AcmeError};
use crate::config::Acme;

const TIMEOUT: Duration = Duration::from_secs(30);
/// When the CA's answer names no time to ask again (RFC 9773 §4.3.3 says it
/// must; six hours is what Let's Encrypt sends).
const DEFAULT_RETRY: Duration = Duration::from_secs(6 * 3600);

/// The window the CA suggests, and when to ask again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: SystemTime,
    pub end: SystemTime,
    pub ask_again: SystemTime,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Directory {
    renewal_info: Option<String>,
}

/// The CA's suggested window for the certificate `id` (`AKI.serial`), or
/// `None` when the CA does not offer ARI.
pub async fn window(acme: &Acme, id: &str) -> Result<Option<Window>, AcmeError> {
    let http = ca_client(acme.ca_bundle.as_deref(), TIMEOUT).await?;
    let unreachable = |detail: String| AcmeError::Unreachable {
        url: acme.directory.clone(),
        detail,
    };
    let dir: Directory = http
        .get(&acme.directory)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| unreachable(error_chain(&e)))?
        .json()
        .await
        .map_err(|e| unreachable(format!("the directory is not ACME JSON: {e}")))?;
    let Some(base) = dir.renewal_info else {
        return Ok(None);
    };
    let resp = http
        .get(format!("{}/{id}", base.trim_end_matches('/')))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| unreachable(error_chain(&e)))?;
    let ask_again = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v.trim()))
        .unwrap_or_else(|| crate::clock::now() + DEFAULT_RETRY);
    let info: instant_acme::RenewalInfo = resp
        .json()
        .await
        .map_err(|e| unreachable(format!("the renewal information is not ARI JSON: {e}")))?;
    let at = |t: ::time::OffsetDateTime| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.unix_timestamp().max(0) as u64)
    };
    Ok(Some(Window {
        start: at(info.suggested_window.start),
        end: at(info.suggested_window.end),
        ask_again,
    }))
}
