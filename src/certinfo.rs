//! Reading what a PEM certificate says: names, validity, serial, issuer, ARI id.
//!
//! Kept apart from the store so that `edge certs`, the renewal policy and the TLS
//! loader all read certificates the same way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::*;

/// The facts about a leaf certificate that edge acts on.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Upper-case hex, as openssl prints it.
    pub serial: String,
    pub issuer: String,
    /// RFC 9773 certificate identifier (AKI.serial), when the certificate has an AKI.
    pub ari_id: Option<String>,
}

impl CertInfo {
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// Parses every certificate in a PEM bundle, leaf first.
pub fn parse_chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs)
}

/// Reads the leaf's facts from DER.
pub fn inspect(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| format!("cannot parse certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                // An address certificate (RFC 8738): the address in its
                // canonical form, as the config and the Host header have it.
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert.subject().iter_common_name().next() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    let to_time = |t: ASN1Time| UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64);
    let issuer = cert
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| cert.issuer().to_string());
    let ari_id = instant_acme::CertificateIdentifier::try_from(der)
        .ok()
        .map(|id| id.to_string());
    Ok(CertInfo {
        names,
        not_before: to_time(cert.validity().not_before),
        not_after: to_time(cert.validity().not_after),
        serial: cert
            .raw_serial_as_string()
            .replace(':', "")
            .to_ascii_uppercase(),
        issuer,
        ari_id,
    })
}

/// Formats a time as RFC 3339 UTC for logs and `edge certs`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    ::time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|dt| {
            dt.format(&::time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// Parses a stored `AKI.serial` ARI id back into instant-acme's type.
pub fn ari_identifier(id: &str) -> Option<instant_acme::CertificateIdentifier<'static>> {
    let (aki, serial) = id.split_once('.')?;
    Some(instant_acme::CertificateIdentifier {
        authority_key_identifier: aki.to_string().into(),
        serial: serial.to_string().into(),
    })
}
