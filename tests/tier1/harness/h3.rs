//! An HTTP/3 client for the tests: quinn and h3, the stack edge serves
//! with, trusting any certificate (the tests read what was served).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};

use super::client::client_config;

/// One answer over HTTP/3.
#[derive(Debug)]
pub struct H3Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl H3Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/3 connection to edge.
pub struct H3 {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for H3 {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl H3 {
    /// Connects to `addr` (UDP) with `sni`; `None` when the handshake fails.
    pub async fn try_connect(addr: SocketAddr, sni: &str) -> Result<H3, String> {
        let tls = client_config(&[b"h3"]);
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = endpoint
            .connect(addr, sni)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(H3 {
            send,
            conn,
            _endpoint: endpoint,
            driver,
        })
    }

    pub async fn connect(addr: SocketAddr, sni: &str) -> H3 {
        H3::try_connect(addr, sni)
            .await
            .unwrap_or_else(|e| panic!("HTTP/3 connection to {addr} ({sni}): {e}"))
    }

    /// The serial of the certificate edge served on this connection.
    pub fn served_serial(&self) -> String {
        let certs = self
            .conn
            .peer_identity()
            .and_then(|i| {
                i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .expect("a certificate");
        edge::certinfo::inspect(&certs[0]).unwrap().serial
    }

    /// Sends `req` with `body` (none: the stream ends with the head).
    pub async fn request(&mut self, req: http::Request<()>, body: Option<Vec<u8>>) -> H3Answer {
        self.try_request(req, body)
            .await
            .unwrap_or_else(|e| panic!("HTTP/3 request: {e}"))
    }

    pub async fn try_request(
        &mut self,
        req: http::Request<()>,
        body: Option<Vec<u8>>,
    ) -> Result<H3Answer, String> {
        let mut stream = self
            .send
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(b) = body {
            // In pieces, as a client streams an upload.
            for piece in b.chunks(64 * 1024) {
                stream
                    .send_data(Bytes::copy_from_slice(piece))
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        stream.finish().await.map_err(|e| e.to_string())?;
        let resp = stream.recv_response().await.map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
            while chunk.has_remaining() {
                let c = chunk.chunk();
                body.extend_from_slice(c);
                let n = c.len();
                chunk.advance(n);
            }
        }
        Ok(H3Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body,
        })
    }

    /// `GET https://host/path`.
    pub async fn get(&mut self, host: &str, path: &str) -> H3Answer {
        let req = http::Request::get(format!("https://{host}{path}"))
            .body(())
            .unwrap();
        self.request(req, None).await
    }
}

impl H3 {
    /// Sends a request's head and resets the stream at once.
    pub async fn send_and_reset(&mut self, req: http::Request<()>) -> Result<(), String> {
        let mut stream = self
            .send
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
        stream.stop_sending(h3::error::Code::H3_REQUEST_CANCELLED);
        Ok(())
    }
}
