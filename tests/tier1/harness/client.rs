//! Clients: TLS (which certificate edge served, no verification: the test
//! reads what it got), HTTP/1.1 requests as raw bytes with a strict response
//! reader, HTTP/2 through hyper's client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::within;

/// Accepts any certificate: the tests read what was served instead.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub fn client_config(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    client_config_with(rustls::crypto::aws_lc_rs::default_provider(), alpn)
}

/// The same client on another crypto provider (other key-exchange groups).
pub fn client_config_with(
    provider: rustls::crypto::CryptoProvider,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(provider);
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

pub type Tls = TlsStream<TcpStream>;

/// A TCP connection with Nagle's algorithm off. Under paused time a test
/// covers minutes in milliseconds, so the kernel's own real-time delays (a
/// small segment held for the peer's delayed ACK, up to 40 ms) would look
/// like a client that stopped sending.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A TLS connection to edge with this SNI, offering `alpn`.
pub async fn tls_alpn(addr: SocketAddr, sni: &str, alpn: &[&[u8]]) -> Tls {
    let tcp = connect(addr).await;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    within(
        super::secs(30),
        "TLS handshake",
        TlsConnector::from(client_config(alpn)).connect(name, tcp),
    )
    .await
    .unwrap_or_else(|e| panic!("TLS handshake with {addr} as {sni}: {e}"))
}

/// TLS (ALPN http/1.1) over a connection that has already sent `first`
/// (a PROXY protocol header); `Err` when edge closes it instead.
pub async fn tls_after(addr: SocketAddr, sni: &str, first: &[u8]) -> std::io::Result<Tls> {
    use tokio::io::AsyncWriteExt;
    let mut tcp = connect(addr).await;
    tcp.write_all(first).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    within(
        super::secs(30),
        "TLS handshake",
        TlsConnector::from(client_config(&[b"http/1.1"])).connect(name, tcp),
    )
    .await
}

/// An HTTP/1.1 connection (ALPN http/1.1).
pub async fn tls(addr: SocketAddr, sni: &str) -> Tls {
    tls_alpn(addr, sni, &[b"http/1.1"]).await
}

/// The serial of the leaf edge served to this SNI (upper-case hex).
pub fn served_serial(conn: &Tls) -> String {
    let (_, session) = conn.get_ref();
    let leaf = &session.peer_certificates().expect("no certificate")[0];
    edge::certinfo::inspect(leaf).unwrap().serial
}

/// The names on the leaf edge served.
pub fn served_names(conn: &Tls) -> Vec<String> {
    let (_, session) = conn.get_ref();
    let leaf = &session.peer_certificates().expect("no certificate")[0];
    edge::certinfo::inspect(leaf).unwrap().names
}

/// One HTTP/1.1 answer as read off the wire.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one answer from `io`, strictly: a head (httparse), then the body by
/// its `Content-Length`, chunks, or until the connection closes. `head`: the
/// request was HEAD (no body). `None` when the connection closed before any
/// byte of an answer.
pub async fn read_answer<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    head: bool,
) -> Option<Answer> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 128];
        let mut resp = httparse::Response::new(&mut fields);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap();
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                buf.drain(..n);
                if (100..200).contains(&status) && status != 101 {
                    continue;
                }
                let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                let body = if head || status == 204 || status == 304 || status == 101 {
                    Vec::new()
                } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                    read_chunked(io, buf).await
                } else if let Some(n) = get("content-length") {
                    let n: usize = n.trim().parse().expect("bad content-length");
                    while buf.len() < n {
                        if !fill(io, buf).await {
                            panic!("connection closed {} bytes into a {n}-byte body", buf.len());
                        }
                    }
                    buf.drain(..n).collect()
                } else {
                    while fill(io, buf).await {}
                    std::mem::take(buf)
                };
                return Some(Answer {
                    status,
                    headers,
                    body,
                });
            }
            Ok(httparse::Status::Partial) => {
                if !fill(io, buf).await {
                    assert!(
                        buf.is_empty(),
                        "closed mid-head: {:?}",
                        String::from_utf8_lossy(buf)
                    );
                    return None;
                }
            }
            Err(e) => panic!(
                "unparseable answer ({e}): {:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }
}

/// Reads more; false at end of stream (or a reset: the connection is gone).
pub async fn fill<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16384];
    match io.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

async fn read_chunked<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            assert!(fill(io, buf).await, "closed in a chunk size line");
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {line:?}"));
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    let empty = i == 0;
                    buf.drain(..i + 2);
                    if empty {
                        return body;
                    }
                } else {
                    assert!(fill(io, buf).await, "closed in the trailers");
                }
            }
        }
        while buf.len() < size + 2 {
            assert!(fill(io, buf).await, "closed mid-chunk");
        }
        body.extend_from_slice(&buf[..size]);
        assert_eq!(&buf[size..size + 2], b"\r\n", "chunk not followed by CRLF");
        buf.drain(..size + 2);
    }
}

/// Sends raw request bytes and reads one answer (`None`: closed without one).
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    request: &[u8],
) -> Option<Answer> {
    io.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    within(
        super::secs(300),
        "an answer",
        read_answer(io, &mut buf, false),
    )
    .await
}

/// `GET path` for `host` with `Connection: close`, on a new connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Answer {
    let mut c = tls(addr, host).await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    exchange(&mut c, req.as_bytes())
        .await
        .unwrap_or_else(|| panic!("no answer to GET {path}"))
}

/// Whether the peer has closed the connection (reads to end, dropping bytes).
pub async fn closed<S: AsyncRead + Unpin>(io: &mut S) -> bool {
    let mut b = [0u8; 4096];
    loop {
        match io.read(&mut b).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

/// Reads until the peer closes; what it sent.
pub async fn read_to_close<S: AsyncRead + Unpin>(io: &mut S) -> Vec<u8> {
    let mut all = Vec::new();
    while fill(io, &mut all).await {}
    all
}

/// An HTTP/2 client connection (ALPN h2) through hyper.
pub async fn h2(
    addr: SocketAddr,
    sni: &str,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tls = tls_alpn(addr, sni, &[b"h2"]).await;
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send
}

/// One HTTP/2 request; status, headers and the whole body.
pub async fn h2_request(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> (http::StatusCode, http::HeaderMap, Vec<u8>) {
    send.ready().await.unwrap();
    let resp = within(super::secs(300), "an HTTP/2 answer", send.send_request(req))
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status, parts.headers, body)
}

/// How long `f` took on the test's clock.
pub async fn timed<F: std::future::Future>(f: F) -> (F::Output, Duration) {
    let start = tokio::time::Instant::now();
    let out = f.await;
    (out, start.elapsed())
}
