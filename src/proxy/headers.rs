//! Header rewriting on the way to the upstream and back.
//!
//! Order matters: hop-by-hop headers, including every name a client lists in
//! `Connection`, are removed first and the forwarding headers are set after, so
//! `Connection: X-Forwarded-For` cannot be used to strip what edge adds.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
/// Standard names compare as an enum tag, not as bytes.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// `HTTP/1.1 <code> <reason>`, for the answers edge writes itself (the
/// plain-HTTP listener, the HTTP/1 server).
pub fn write_status_line(out: &mut Vec<u8>, status: http::StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// One `name: value` field line of an HTTP/1.1 head. The caller vouches for
/// both: checked names and values, as `HeaderName`/`HeaderValue` or httparse
/// hold them.
#[inline]
pub fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The `Date` text and the (monotonic) instant it goes stale: the wall
/// clock's next second.
struct CachedDate {
    until: Option<Instant>,
    text: String,
}

thread_local! {
    /// Made once a second, as hyper caches it; checked against an instant the
    /// caller has already read, so most answers read no clock for it at all.
    static DATE: std::cell::RefCell<CachedDate> =
        const { std::cell::RefCell::new(CachedDate { until: None, text: String::new() }) };
}

/// The `date` field of such an answer; `now` is a recent reading of the
/// monotonic clock (the caller's own, to save another).
pub fn write_date(out: &mut Vec<u8>, now: Instant) {
    DATE.with_borrow_mut(|c| {
        if c.until.is_none_or(|u| now >= u) {
            let wall = std::time::SystemTime::now();
            let into_second = wall
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            c.text = httpdate::fmt_http_date(wall);
            // The wall clock is read after `now`, so this is at or before its
            // next second: the text is never stale, at worst made again early.
            c.until = Some(now + Duration::from_nanos(u64::from(1_000_000_000 - into_second)));
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(c.text.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// Removes hop-by-hop headers and the ones `Connection` names.
///
/// One scan of the names notes which hop-by-hop ones are present, and only
/// those are removed: every response from an HTTP/1.1 upstream carries
/// `Connection: keep-alive`, and removing all nine names costs nine hash
/// probes. Names listed in `Connection` are removed by `&str`, which `http`
/// parses on the stack (a `HeaderName` per listed name would be an allocation).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u16;
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // HOP_BY_HOP[0] is Connection. Its values are cheap clones (shared bytes),
    // taken so the map can change while they are read; the Vec stays
    // unallocated for the usual single field.
    if present & 1 != 0 {
        let mut fields = headers.get_all(header::CONNECTION).iter();
        let first = fields.next().cloned();
        let rest: Vec<HeaderValue> = fields.cloned().collect();
        for v in first.iter().chain(&rest) {
            for name in v.to_str().unwrap_or("").split(',') {
                let name = name.trim();
                // Host is the request's, never the connection's; a client
                // that lists it would leave the upstream request without one.
                if !name.is_empty() && !name.eq_ignore_ascii_case("host") {
                    // Not a valid header name: nothing by that name to remove.
                    headers.remove(name);
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Drops header names with `_`: WSGI servers fold `X_Forwarded_For` into the
/// same variable as `X-Forwarded-For`, so such a header could smuggle a
/// forwarding header past edge (nginx drops them too).
pub fn drop_underscored(headers: &mut HeaderMap) {
    if headers.keys().any(|k| k.as_str().contains('_')) {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().contains('_'))
            .cloned()
            .collect();
        for n in names {
            headers.remove(n);
        }
    }
}

fn trusted(ip: IpAddr, nets: &[IpNet]) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

static FORWARDING: [&HeaderName; 4] = [
    &X_FORWARDED_FOR,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &X_REAL_IP,
];

/// The peer address as a header value; computed once per connection.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Header lines for the upstream request, written after the client's own.
pub type Lines<'a> = [(&'static str, &'a [u8]); 4];

/// X-Forwarded-*, X-Real-IP. A client's own are replaced unless the peer is a
/// trusted proxy, in which case the peer is appended to X-Forwarded-For and the
/// real client is the right-most address that is not itself trusted.
///
/// The usual case (untrusted peer) returns edge's four lines, to be written
/// straight to the wire by `Outgoing::encode`, after the client's are removed
/// with one scan of the names (nothing hashed when there are none): no map
/// insert and no allocation, since `peer_hv` is made once per connection and
/// `host` was checked by the caller. A trusted peer's chain is rewritten in the
/// map, and nothing is returned.
pub fn forwarding<'a>(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_hv: &'a HeaderValue,
    host: &'a str,
    trusted_proxies: &[IpNet],
) -> Option<Lines<'a>> {
    if trusted_proxies.is_empty() || !trusted(peer, trusted_proxies) {
        let mut present = 0u8;
        for k in headers.keys() {
            if let Some(i) = FORWARDING.iter().position(|h| *h == k) {
                present |= 1 << i;
            }
        }
        for (i, name) in FORWARDING.iter().enumerate() {
            if present & (1 << i) != 0 {
                headers.remove(*name);
            }
        }
        return Some([
            ("x-forwarded-proto", b"https"),
            ("x-forwarded-host", host.as_bytes()),
            ("x-forwarded-for", peer_hv.as_bytes()),
            ("x-real-ip", peer_hv.as_bytes()),
        ]);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
    set(headers, &X_FORWARDED_HOST, host);
    let peer_str = peer.to_string();
    let mut real_ip = peer;
    let xff = {
        let prior: Vec<String> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for hop in prior.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if trusted(ip, trusted_proxies) => continue,
                Ok(ip) => {
                    real_ip = ip;
                    break;
                }
                Err(_) => break,
            }
        }
        if prior.is_empty() {
            peer_str.clone()
        } else {
            format!("{}, {peer_str}", prior.join(", "))
        }
    };
    set(headers, &X_FORWARDED_FOR, &xff);
    set(headers, &X_REAL_IP, &real_ip.to_string());
    None
}

fn set(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name.clone(), v);
    } else {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the upstream gets from `forwarding`: the map, with the lines it
    /// returns appended as `Outgoing::encode` writes them after the map.
    fn set_forwarding(h: &mut HeaderMap, peer: IpAddr, host: &str, nets: &[IpNet]) {
        let hv = peer_value(peer);
        for (k, v) in forwarding(h, peer, &hv, host, nets).into_iter().flatten() {
            h.append(k, HeaderValue::from_bytes(v).unwrap());
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn connection_listed_names_go_before_forwarding_is_set() {
        let mut h = map(&[
            ("connection", "close, X-Forwarded-For"),
            ("x-forwarded-for", "6.6.6.6"),
            ("keep-alive", "5"),
        ]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-forwarded-for").is_none());
        assert!(h.get("keep-alive").is_none());
        set_forwarding(&mut h, "10.1.1.1".parse().unwrap(), "a.example", &[]);
        assert_eq!(h["x-forwarded-for"], "10.1.1.1");
    }

    #[test]
    fn spoofed_xff_is_replaced_unless_peer_trusted() {
        let mut h = map(&[("x-forwarded-for", "6.6.6.6"), ("x-real-ip", "6.6.6.6")]);
        set_forwarding(&mut h, "192.0.2.1".parse().unwrap(), "a.example", &[]);
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-real-ip"], "192.0.2.1");
        let nets = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = map(&[("x-forwarded-for", "203.0.113.9, 10.0.0.7")]);
        set_forwarding(&mut h, "10.0.0.2".parse().unwrap(), "a.example", &nets);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.0.0.7, 10.0.0.2");
        assert_eq!(h["x-real-ip"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn names_in_every_connection_field_are_stripped() {
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("connection", " X-Secret ,, not a name, Upgrade"),
            ("x-secret", "1"),
            ("upgrade", "websocket"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-keep"]);
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_stripped() {
        // The quick scan must know every name the slow path removes.
        for name in HOP_BY_HOP.iter().map(HeaderName::as_str) {
            let mut h = map(&[(name, "x"), ("x-keep", "1")]);
            strip_hop_by_hop(&mut h);
            assert!(h.get(name).is_none(), "{name} was forwarded");
            assert!(h.get("x-keep").is_some());
        }
    }

    #[test]
    fn underscores_dropped() {
        let mut h = map(&[("x_forwarded_for", "1.2.3.4"), ("x-ok", "1")]);
        drop_underscored(&mut h);
        assert!(h.get("x_forwarded_for").is_none());
        assert!(h.get("x-ok").is_some());
    }
}
