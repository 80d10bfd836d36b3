//! The client's TCP socket under TLS, written with `send` where `writev` buys
//! nothing.
//!
//! rustls hands its queued records to the socket as a vectored write, and
//! tokio turns every vectored write into `writev`, even of one buffer. Almost
//! every answer is one TLS record, so one buffer, and the kernel's `writev`
//! path costs more than `send` for the same bytes: it copies in and checks
//! the iovec array and goes through the VFS write path (file-position lock,
//! `fsnotify`) on the way to the same `sock_sendmsg`. Several buffers still
//! go out in one `writev`.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub struct ClientSock(pub TcpStream);

impl AsyncRead for ClientSock {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientSock {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let inner = &mut self.get_mut().0;
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        match (filled.next(), filled.next()) {
            (Some(one), None) => Pin::new(inner).poll_write(cx, one),
            (None, _) => Poll::Ready(Ok(0)),
            _ => Pin::new(inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// One buffer, several, and empty ones among them all arrive whole and in order.
    #[tokio::test]
    async fn vectored_writes_arrive_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = ClientSock(TcpStream::connect(addr).await.unwrap());
            let parts: [&[u8]; 4] = [b"", b"one ", b"", b"two "];
            let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
            let mut left = &mut slices[..];
            while !left.is_empty() {
                let n = s.write_vectored(left).await.unwrap();
                IoSlice::advance_slices(&mut left, n);
            }
            let n = s.write_vectored(&[IoSlice::new(b"three")]).await.unwrap();
            assert_eq!(n, 5);
            assert_eq!(s.write_vectored(&[IoSlice::new(b"")]).await.unwrap(), 0);
            s.shutdown().await.unwrap();
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        client.await.unwrap();
        assert_eq!(got, b"one two three");
    }
}
