//! Domain-name rules shared by the config, the CLI and the certificate store.
//!
//! Certificate names become directory names under `state_dir/live/`, so they are
//! checked before anything is sent to a CA or written to disk: no path
//! separators, no `..`, only valid DNS labels, or an IP address (RFC 8738) in
//! its canonical form.

/// Checks one certificate name: a DNS name (`validate_domain`) or an IP
/// address, which comes back in its canonical form (`::1`, not `0::1`).
pub fn validate_name(name: &str) -> Result<String, String> {
    match name.trim().parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(ip.to_string()),
        Err(_) => validate_domain(name),
    }
}

/// Whether a certificate name is an IP address.
pub fn is_ip(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_ok()
}

/// The name a TLS-ALPN-01 validation of an IP address sends as SNI (RFC 8738
/// §6: the reverse-DNS name), back to the address; `None` for other names.
pub fn ip_of_reverse_name(sni: &str) -> Option<std::net::IpAddr> {
    let lower = sni.trim_end_matches('.').to_ascii_lowercase();
    if let Some(v4) = lower.strip_suffix(".in-addr.arpa") {
        let mut parts: Vec<&str> = v4.split('.').collect();
        parts.reverse();
        return parts.join(".").parse().ok();
    }
    let v6 = lower.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<&str> = v6.split('.').collect();
    if nibbles.len() != 32 || nibbles.iter().any(|n| n.len() != 1) {
        return None;
    }
    let hex: String = nibbles.iter().rev().copied().collect();
    let groups: Vec<&str> = (0..8).map(|i| &hex[i * 4..i * 4 + 4]).collect();
    groups.join(":").parse().ok()
}

/// Checks one DNS certificate name (`example.org` or `*.example.org`) and
/// returns it lower-cased. The error says what is wrong in words a user can
/// act on.
pub fn validate_domain(name: &str) -> Result<String, String> {
    let lower = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if lower.is_empty() {
        return Err("empty name; expected a DNS name such as \"example.org\"".into());
    }
    if lower.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    if lower.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{name:?} is an IP address; a DNS name is needed here"
        ));
    }
    if lower.contains('/') || lower.contains('\\') || lower.contains("..") {
        return Err(format!(
            "{name:?} contains a path separator or \"..\"; expected a DNS name"
        ));
    }
    let rest = match lower.strip_prefix("*.") {
        Some(rest) => rest,
        None => lower.as_str(),
    };
    if !rest.contains('.') {
        return Err(format!(
            "{name:?} has a single label; expected a fully qualified name such as \"app.example.org\""
        ));
    }
    for label in rest.split('.') {
        check_label(name, label)?;
    }
    Ok(lower)
}

fn check_label(name: &str, label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > 63 {
        return Err(format!(
            "{name:?} has an empty label or one longer than 63 characters"
        ));
    }
    if label.contains('*') {
        return Err(format!(
            "{name:?}: a wildcard is only allowed as the whole first label (\"*.example.org\")"
        ));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!(
            "{name:?}: label {label:?} may only hold letters, digits and '-'"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!(
            "{name:?}: label {label:?} may not start or end with '-'"
        ));
    }
    Ok(())
}

/// Whether certificate name `pattern` (possibly `*.x`) covers host `host`.
/// A wildcard covers exactly one extra label, as browsers and RFC 6125 do.
pub fn covers(pattern: &str, host: &str) -> bool {
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => match host.split_once('.') {
            Some((first, rest)) => !first.is_empty() && rest.eq_ignore_ascii_case(suffix),
            None => false,
        },
        None => false,
    }
}

/// The directory name a certificate for `names` is stored under: the first name,
/// with a leading `*.` removed, as certbot does.
pub fn lineage_name(names: &[String]) -> String {
    let first = names.first().map(String::as_str).unwrap_or("default");
    first.strip_prefix("*.").unwrap_or(first).to_string()
}

/// The name the `_acme-challenge` TXT record for `domain` lives at (no trailing dot).
/// Apex and wildcard share one name, so an order for both puts two values there.
pub fn challenge_name(domain: &str) -> String {
    let base = domain.strip_prefix("*.").unwrap_or(domain);
    format!("_acme-challenge.{base}")
}

/// Strips an optional port from a Host header value, handling `[v6]:port`.
pub fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.find(']') {
            Some(end) => &rest[..end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_are_names_in_canonical_form() {
        assert_eq!(validate_name("127.0.0.1").unwrap(), "127.0.0.1");
        assert_eq!(validate_name("0:0::1").unwrap(), "::1");
        assert!(validate_domain("127.0.0.1").is_err());
        assert!(is_ip("2001:db8::7") && !is_ip("a.test"));
        assert_eq!(
            ip_of_reverse_name("1.0.0.127.in-addr.arpa."),
            Some("127.0.0.1".parse().unwrap())
        );
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa";
        assert_eq!(ip_of_reverse_name(v6), Some("::1".parse().unwrap()));
        assert_eq!(ip_of_reverse_name("a.test"), None);
    }

    #[test]
    fn accepts_names_and_wildcards() {
        assert_eq!(
            validate_domain("Flask.Ashna.Online.").unwrap(),
            "flask.ashna.online"
        );
        assert_eq!(validate_domain("*.example.org").unwrap(), "*.example.org");
    }

    #[test]
    fn rejects_what_would_be_unsafe_on_disk() {
        for bad in [
            "",
            "127.0.0.1",
            "::1",
            "a/b.example.org",
            "..example.org",
            "x..y.org",
            "*.*.example.org",
            "a*.example.org",
            "-a.example.org",
            "localhost",
            "exa mple.org",
        ] {
            assert!(validate_domain(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn wildcard_covers_one_label() {
        assert!(covers("*.example.org", "a.example.org"));
        assert!(!covers("*.example.org", "example.org"));
        assert!(!covers("*.example.org", "a.b.example.org"));
        assert!(covers("Example.org", "example.ORG"));
    }

    #[test]
    fn host_port_split() {
        assert_eq!(host_without_port("a.example:8443"), "a.example");
        assert_eq!(host_without_port("[::1]:443"), "::1");
        assert_eq!(host_without_port("a.example"), "a.example");
    }

    #[test]
    fn lineage_and_challenge_names() {
        assert_eq!(lineage_name(&["*.example.org".into()]), "example.org");
        assert_eq!(
            challenge_name("*.example.org"),
            "_acme-challenge.example.org"
        );
    }
}
