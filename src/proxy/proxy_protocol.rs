//! PROXY protocol v1 and v2 (HAProxy's), on both TCP listeners when
//! `[listen] proxy_protocol = true`: a layer-4 balancer in front says whose
//! connection it is passing on, and that address is the client's from then
//! on (access log, X-Forwarded-For, ip_hash, the per-address limit).
//!
//! Only peers in `proxy_protocol_from` may send it; a connection from
//! elsewhere, or one whose header is missing, malformed or late, is closed:
//! served as if it had none, anyone could pass for the balancer. The header
//! is parsed by the `ppp` crate and consumed exactly (peeked first), so the
//! TLS handshake or the HTTP request after it is untouched. A `LOCAL` (v2)
//! or `UNKNOWN` (v1) header, a balancer's own health check, keeps the
//! balancer's address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest header read: v1's is at most 107 bytes; v2's 16 plus its
/// addresses (216 for UNIX sockets) and TLVs, which balancers keep short.
const MAX_HEADER: usize = 1024;
/// How long to wait before looking again at a header that came in parts.
const PART_WAIT: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
pub struct ProxyProtocol {
    pub from: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PpError {
    #[error("PROXY protocol header from {0}, which is not in listen.proxy_protocol_from")]
    NotAllowed(IpAddr),
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("no PROXY protocol header within {0:?}")]
    Late(Duration),
    #[error("PROXY protocol header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("the connection closed before its PROXY protocol header")]
    Closed,
}

impl ProxyProtocol {
    /// The client address `stream` stands for, its header consumed; the
    /// error says why the connection must be closed.
    pub async fn client(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Result<SocketAddr, PpError> {
        if !self.from.iter().any(|n| n.contains(&peer.ip())) {
            return Err(PpError::NotAllowed(peer.ip()));
        }
        match tokio::time::timeout(timeout, read_header(stream)).await {
            Ok(Ok(carried)) => Ok(carried.unwrap_or(peer)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PpError::Late(timeout)),
        }
    }
}

/// The carried source address (`None` for LOCAL / UNKNOWN), with the
/// header read off the stream and nothing after it.
async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, PpError> {
    let mut buf = vec![0u8; MAX_HEADER];
    loop {
        let n = stream.peek(&mut buf).await.map_err(|_| PpError::Closed)?;
        if n == 0 {
            return Err(PpError::Closed);
        }
        let (len, addr) = match parse(&buf[..n])? {
            Some(found) => found,
            None if n == buf.len() => return Err(PpError::TooLong),
            None => {
                // Balancers send it in one segment; one that came in parts
                // is looked at again shortly (bounded by the caller's
                // timeout).
                tokio::time::sleep(PART_WAIT).await;
                continue;
            }
        };
        stream
            .read_exact(&mut buf[..len])
            .await
            .map_err(|_| PpError::Closed)?;
        return Ok(addr);
    }
}

/// A whole header at the start of `bytes`: its length and the source it
/// carries; `None` while it is incomplete.
pub fn parse(bytes: &[u8]) -> Result<Option<(usize, Option<SocketAddr>)>, PpError> {
    let h = HeaderResult::parse(bytes);
    if h.is_incomplete() {
        return Ok(None);
    }
    match h {
        HeaderResult::V1(Ok(h)) => {
            let addr = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            Ok(Some((h.header.len(), addr)))
        }
        HeaderResult::V2(Ok(h)) => {
            let addr = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            };
            Ok(Some((h.header.len(), addr)))
        }
        HeaderResult::V1(Err(e)) => Err(PpError::Malformed(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(PpError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_carry_the_client_and_leave_what_follows() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n\x16\x03\x01";
        assert_eq!(
            parse(v1).unwrap(),
            Some((v1.len() - 3, Some("203.0.113.7:51000".parse().unwrap())))
        );
        let v1_6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n";
        assert_eq!(
            parse(v1_6).unwrap().unwrap().1,
            Some("[2001:db8::7]:51000".parse().unwrap())
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\nGET").unwrap(), Some((15, None)));
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        v2.extend([198, 51, 100, 9, 10, 0, 0, 1]);
        v2.extend(40000u16.to_be_bytes());
        v2.extend(443u16.to_be_bytes());
        let len = v2.len();
        v2.extend(b"\x16\x03\x01");
        assert_eq!(
            parse(&v2).unwrap(),
            Some((len, Some("198.51.100.9:40000".parse().unwrap())))
        );
        // LOCAL: the balancer's own check.
        let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
        assert_eq!(parse(local).unwrap(), Some((16, None)));
    }

    #[test]
    fn partial_headers_wait_and_malformed_ones_are_refused() {
        assert_eq!(parse(b"PROXY TCP4 203.0.113.7").unwrap(), None);
        assert_eq!(parse(b"\r\n\r\n\0\r\nQU").unwrap(), None);
        assert!(parse(b"GET / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse(b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n").is_err());
        assert!(parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 ClientHello....").is_err());
    }
}
