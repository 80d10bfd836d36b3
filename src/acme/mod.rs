//! The ACME side: account, orders, renewal policy, and the challenge solvers
//! behind one interface (`solver`).
//!
//! Everything that talks to the CA returns [`AcmeError`], whose messages are meant
//! for the person at the terminal (a rate limit says until when, a failed
//! validation says which name and what the CA's resolver saw) and whose kind
//! decides when the next attempt may be made ([`AcmeError::retry`]).

pub mod account;
pub mod ari;
pub mod challenges;
pub mod http;
pub mod listen_solver;
pub mod order;
pub mod renew;
pub mod solver;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::certinfo::rfc3339;
use crate::dns::DnsError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("invalid certificate name: {0}")]
    InvalidName(String),
    /// The CA could not be reached or did not answer properly (connection,
    /// TLS, timeout, a 5xx): a passing fault, tried again soon.
    #[error("cannot reach the ACME directory {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("acme.ca_bundle {path}: {detail}")]
    CaBundle { path: PathBuf, detail: String },
    #[error("the CA refused the request: {0}")]
    Problem(String),
    /// The CA's rate limit; `until` is when the CA says to try again.
    #[error("rate limited by the CA{}: {detail}", until.map(|t| format!(" until {}", rfc3339(t))).unwrap_or_default())]
    RateLimited {
        detail: String,
        until: Option<SystemTime>,
    },
    /// The CA looked and did not find the answer: which name, what it saw.
    #[error("validation failed: {0}")]
    Validation(String),
    #[error("publishing the TXT record failed: {0}")]
    Dns(#[from] DnsError),
    #[error("storing the certificate failed: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

/// When a failed attempt may be made again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Not before this time: the CA said so.
    At(SystemTime),
    /// Exponential backoff from this base.
    Backoff(Duration),
}

/// The backoff's first step after a fault that may pass by itself (the CA
/// unreachable), and after one that needs something to change (validation,
/// a refusal, DNS): Let's Encrypt asks clients not to retry failed
/// validations quickly.
const PASSING_BASE: Duration = Duration::from_secs(60);
const DEFAULT_BASE: Duration = Duration::from_secs(300);

impl AcmeError {
    /// What this failure means for the next attempt.
    pub fn retry(&self) -> Retry {
        match self {
            AcmeError::RateLimited { until: Some(t), .. } => Retry::At(*t),
            AcmeError::Unreachable { .. } => Retry::Backoff(PASSING_BASE),
            // The fleet's store is down or another node took over: soon again.
            AcmeError::Store(StoreError::Unavailable { .. } | StoreError::LockLost { .. }) => {
                Retry::Backoff(PASSING_BASE)
            }
            _ => Retry::Backoff(DEFAULT_BASE),
        }
    }

    /// Attaches the time the CA named in a `Retry-After` header to a rate limit.
    pub fn with_retry_after(self, at: Option<SystemTime>) -> AcmeError {
        match self {
            AcmeError::RateLimited { detail, until } => AcmeError::RateLimited {
                until: at.or(until),
                detail,
            },
            other => other,
        }
    }
}

/// How many times an ACME call is made while the CA refuses its nonce. Each
/// call is itself up to three tries (instant-acme's own), so a CA refusing
/// nonces at random 5% of the time (Pebble's default) fails a request about
/// once in 8,000 with one round, and practically never with eight.
pub const NONCE_ROUNDS: u32 = 8;

/// Whether the CA refused a request only for its anti-replay nonce.
pub fn is_bad_nonce(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Api(p)
        if p.r#type.as_deref().is_some_and(|t| t.ends_with(":badNonce")))
}

/// Evaluates an ACME call (an expression that awaits one) again while the CA
/// refuses it for its nonce, up to [`NONCE_ROUNDS`] times.
///
/// RFC 8555 §6.5: a `badNonce` refusal means the CA did nothing with the
/// request, so sending it again is always safe, and clients should. A CA may
/// refuse a valid nonce at any time (an expired one, a request that reached
/// another of its nodes); one such refusal must not fail a renewal.
///
/// A macro rather than a function taking an async closure: the calls borrow
/// the order mutably, and a future built from an `AsyncFnMut` is not `Send`
/// for every lifetime, which the daemon's spawned renewals need.
macro_rules! again_on_bad_nonce {
    ($call:expr) => {{
        let mut round = 1;
        loop {
            match $call {
                Err(e) if $crate::acme::is_bad_nonce(&e) && round < $crate::acme::NONCE_ROUNDS => {
                    tracing::debug!(
                        round,
                        "the CA refused the request's nonce; sending it again"
                    );
                    round += 1;
                }
                result => break result,
            }
        }
    }};
}
pub(crate) use again_on_bad_nonce;

/// A readable error from instant-acme's, with the CA's problem document in
/// words. `directory` names the CA in the error when it could not be reached.
pub fn from_acme(e: instant_acme::Error, directory: &str) -> AcmeError {
    match e {
        instant_acme::Error::Api(p) => from_problem(&p, directory),
        instant_acme::Error::Timeout(_) => {
            AcmeError::Other("the CA did not finish the order in time; try again later".into())
        }
        // The transport (`http::AcmeHttp`) got no answer at all.
        instant_acme::Error::Other(e) if e.is::<http::Transport>() => AcmeError::Unreachable {
            url: directory.to_string(),
            detail: error_chain(e.as_ref()),
        },
        other => AcmeError::Other(error_chain(&other)),
    }
}

pub fn from_problem(p: &instant_acme::Problem, directory: &str) -> AcmeError {
    let kind = p
        .r#type
        .as_deref()
        .and_then(|t| t.rsplit(':').next())
        .unwrap_or("unknown");
    let mut detail = p.detail.clone().unwrap_or_else(|| kind.to_string());
    for s in &p.subproblems {
        let who = s
            .identifier
            .as_ref()
            .map(|i| i.authorized(false).to_string())
            .unwrap_or_default();
        detail.push_str(&format!("; {who}: {}", s.detail.as_deref().unwrap_or("")));
    }
    match kind {
        "rateLimited" => AcmeError::RateLimited {
            until: retry_after_in(&detail),
            detail,
        },
        "unauthorized" | "dns" | "incorrectResponse" | "connection" | "caa" => {
            AcmeError::Validation(detail)
        }
        "externalAccountRequired" => AcmeError::Problem(format!(
            "this CA requires External Account Binding: set [acme] eab = {{ kid = \"...\", hmac = \"...\" }} from your account at the CA ({detail})"
        )),
        "serverInternal" => AcmeError::Unreachable {
            url: directory.to_string(),
            detail: format!("the CA failed internally: {detail}"),
        },
        _ if p.status.is_some_and(|s| s >= 500) => AcmeError::Unreachable {
            url: directory.to_string(),
            detail: format!("{detail} ({kind})"),
        },
        _ => AcmeError::Problem(format!("{detail} ({kind})")),
    }
}

/// Let's Encrypt's rate-limit text names the time: "... retry after
/// 2025-01-08 18:53:01 UTC: see ...". Used when no `Retry-After` came.
fn retry_after_in(detail: &str) -> Option<SystemTime> {
    let at = detail.find("retry after ")? + "retry after ".len();
    let text = detail.get(at..at + 23)?;
    let fmt =
        ::time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    let t = ::time::PrimitiveDateTime::parse(text, &fmt)
        .ok()?
        .assume_utc();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(t.unix_timestamp().max(0) as u64))
}

/// An error and its sources on one line: reqwest and rustls put the useful part
/// (e.g. "invalid peer certificate: UnknownIssuer") in the source chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_says_when_to_try_again() {
        let problem = |kind: &str, detail: &str, status: u16| {
            let p = serde_json::json!({ "type": format!("urn:ietf:params:acme:error:{kind}"), "detail": detail, "status": status });
            from_problem(&serde_json::from_value(p).unwrap(), "https://ca.test/dir")
        };
        let limited = problem(
            "rateLimited",
            "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2025-01-08 18:53:01 UTC: see https://letsencrypt.org/docs/rate-limits/",
            429,
        );
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_736_362_381);
        assert_eq!(limited.retry(), Retry::At(at));
        assert!(
            limited
                .to_string()
                .starts_with("rate limited by the CA until 2025-01-08T18:53:01Z: too many"),
            "{limited}"
        );
        // A Retry-After header wins over the text.
        let header = at + Duration::from_secs(60);
        assert_eq!(
            limited.with_retry_after(Some(header)).retry(),
            Retry::At(header)
        );
        // Without a time: the usual backoff.
        assert_eq!(
            problem("rateLimited", "slow down", 429).retry(),
            Retry::Backoff(DEFAULT_BASE)
        );
        let v = problem("dns", "No TXT records found", 400);
        assert!(matches!(v, AcmeError::Validation(_)));
        assert_eq!(v.retry(), Retry::Backoff(DEFAULT_BASE));
        let down = problem("serverInternal", "oops", 500);
        assert!(matches!(down, AcmeError::Unreachable { .. }), "{down:?}");
        assert_eq!(down.retry(), Retry::Backoff(PASSING_BASE));
        let gone = from_acme(
            instant_acme::Error::Other(Box::new(http::Transport("connection refused".into()))),
            "https://ca.test/dir",
        );
        assert!(
            gone.to_string().starts_with(
                "cannot reach the ACME directory https://ca.test/dir: connection refused"
            ),
            "{gone}"
        );
        // A client-side error is not the CA being unreachable.
        let other = from_acme(
            instant_acme::Error::Other("replaces field mismatch".into()),
            "https://ca.test/dir",
        );
        assert!(matches!(other, AcmeError::Other(_)), "{other:?}");
    }

    fn refused(kind: &str) -> instant_acme::Error {
        let problem = serde_json::json!({ "type": kind, "detail": "refused", "status": 400 });
        instant_acme::Error::Api(serde_json::from_value(problem).unwrap())
    }

    #[test]
    fn only_a_refused_nonce_is_sent_again_and_not_forever() {
        const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";
        // Refused twice, then answered: three calls, and the answer.
        let mut calls = 0;
        let r = again_on_bad_nonce!({
            calls += 1;
            if calls < 3 {
                Err(refused(BAD_NONCE))
            } else {
                Ok(calls)
            }
        });
        assert_eq!((r.unwrap(), calls), (3, 3));
        // Refused every time: the refusal, after NONCE_ROUNDS calls.
        let mut calls = 0;
        let r: Result<(), _> = again_on_bad_nonce!({
            calls += 1;
            Err(refused(BAD_NONCE))
        });
        assert!(is_bad_nonce(&r.unwrap_err()));
        assert_eq!(calls, NONCE_ROUNDS);
        // Any other refusal is the answer at once.
        let mut calls = 0;
        let r: Result<(), _> = again_on_bad_nonce!({
            calls += 1;
            Err(refused("urn:ietf:params:acme:error:malformed"))
        });
        assert!(!is_bad_nonce(&r.unwrap_err()));
        assert_eq!(calls, 1);
    }
}
