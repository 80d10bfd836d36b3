//! A request body read from an HTTP/3 stream's DATA frames, as the proxy
//! asks for it. Trailers from the client are dropped, as on HTTP/1 and 2.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame};

use crate::proxy::body::ClientBody;

type Recv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// The client's stream failed mid-body.
#[derive(Debug, thiserror::Error)]
#[error("client: {0}")]
pub struct BodyError(#[from] h3::error::StreamError);

pub struct H3Body {
    recv: Recv,
    /// Data read while deciding whether there is a body at all.
    first: Option<Bytes>,
    done: bool,
}

/// The request's body, or `None` when its stream already ended with the
/// head (a GET as clients send it): a bodiless request goes upstream
/// without one, not as an empty chunked body. An error: the client has
/// already reset the stream, and the request goes nowhere.
pub async fn request_body(mut recv: Recv) -> Result<Option<H3Body>, BodyError> {
    let first = std::future::poll_fn(|cx| {
        Poll::Ready(
            recv.poll_recv_data(cx)
                .map(|r| r.map(|o| o.map(|mut b| b.copy_to_bytes(b.remaining())))),
        )
    })
    .await;
    match first {
        Poll::Ready(Ok(None)) => Ok(None),
        Poll::Ready(Ok(Some(b))) => Ok(Some(H3Body {
            recv,
            first: Some(b),
            done: false,
        })),
        Poll::Ready(Err(e)) => Err(e.into()),
        // Not there yet: read as the proxy asks for it.
        Poll::Pending => Ok(Some(H3Body {
            recv,
            first: None,
            done: false,
        })),
    }
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(b) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.recv.poll_recv_data(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(mut b))) => {
                Poll::Ready(Some(Ok(Frame::data(b.copy_to_bytes(b.remaining())))))
            }
            Poll::Ready(Ok(None)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                self.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.first.is_none()
    }
}

impl ClientBody for H3Body {}
