//! A WebSocket (or other upgraded) connection: once the upstream answers
//! `101`, the client's and the upstream's connections are one tunnel, bytes
//! copied both ways as they come.
//!
//! A tunnel is bounded twice. Its upstream has at most `max_tunnels` open
//! (a slot taken before the handshake is sent, so the 257th gets 503 and the
//! upstream never sees it), and a tunnel in which neither side sends
//! anything for the site's `response_timeout` is closed, as nginx closes one
//! at `proxy_read_timeout`: an idle tunnel would otherwise hold two sockets
//! and a slot for ever.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::http1::client::Conn;

/// What a `101` hands the HTTP/1 server: the upstream connection and what
/// bounds the tunnel.
#[derive(Debug)]
pub struct Tunnel {
    pub upstream: Conn,
    /// Longest time with no byte in either direction.
    pub idle: Duration,
    pub addr: String,
    /// The upstream's `max_tunnels` slot, held for the tunnel's life.
    pub _slot: OwnedSemaphorePermit,
}

const BUF: usize = 16 * 1024;

/// Copies both ways until either side closes, an error, or `idle` with no
/// byte either way. `early`: what the client sent after its request head,
/// which belongs to the tunnel.
pub async fn run<C: AsyncRead + AsyncWrite + Unpin>(
    mut client: C,
    early: BytesMut,
    t: Tunnel,
    peer: SocketAddr,
) {
    let Tunnel {
        upstream,
        idle,
        addr,
        _slot,
    } = t;
    let (mut up, up_early): (TcpStream, BytesMut) = upstream.into_parts();
    let go = async {
        // What each side sent before the tunnel began.
        if !early.is_empty() {
            up.write_all(&early).await?;
        }
        if !up_early.is_empty() {
            client.write_all(&up_early).await?;
            client.flush().await?;
        }
        let (mut cb, mut ub) = (vec![0u8; BUF], vec![0u8; BUF]);
        let (mut up_bytes, mut down_bytes) = (0u64, 0u64);
        let (mut client_open, mut up_open) = (true, true);
        while client_open || up_open {
            tokio::select! {
                r = client.read(&mut cb), if client_open => match r? {
                    0 => {
                        client_open = false;
                        up.shutdown().await?;
                    }
                    n => {
                        up.write_all(&cb[..n]).await?;
                        up_bytes += n as u64;
                    }
                },
                r = up.read(&mut ub), if up_open => match r? {
                    0 => {
                        up_open = false;
                        client.shutdown().await?;
                    }
                    n => {
                        client.write_all(&ub[..n]).await?;
                        client.flush().await?;
                        down_bytes += n as u64;
                    }
                },
                _ = tokio::time::sleep(idle) => {
                    tracing::debug!(client = %peer, upstream = %addr, "closing an idle tunnel (response_timeout)");
                    return Ok::<_, std::io::Error>((up_bytes, down_bytes));
                }
            }
        }
        Ok((up_bytes, down_bytes))
    };
    match go.await {
        Ok((up_bytes, down_bytes)) => {
            tracing::debug!(upstream = %addr, up = up_bytes, down = down_bytes, "tunnel closed")
        }
        Err(e) => tracing::debug!(upstream = %addr, "tunnel ended: {e}"),
    }
    let _ = client.shutdown().await;
}
