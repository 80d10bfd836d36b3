//! Upstream servers: their keep-alive connections and the balancing between them.
//!
//! edge keeps its own small pool instead of hyper-util's client so that the proxy
//! decides which upstream a request goes to, sees a refused connection before the
//! request is spent, and gets a request back from a stale pooled connection
//! (`try_send_request`) to send it again on a fresh one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config;

/// Idle connections kept per upstream; more are closed when returned.
const MAX_IDLE_PER_UPSTREAM: usize = 128;

pub type Sender = SendRequest<super::body::Guarded>;

#[derive(Debug)]
pub enum ConnectError {
    /// Refused, unreachable or the name did not resolve: try the next upstream.
    Io(std::io::Error),
    Timeout(Duration),
    Handshake(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "connect failed: {e}"),
            ConnectError::Timeout(d) => write!(
                f,
                "connect timed out after {}",
                humantime::format_duration(*d)
            ),
            ConnectError::Handshake(e) => write!(f, "HTTP handshake failed: {e}"),
        }
    }
}

pub struct Upstream {
    pub addr: String,
    /// Parsed once when the address is an IP, so the hot path skips name resolution.
    socket: Option<SocketAddr>,
    pub weight: u32,
    idle: Mutex<Vec<Sender>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("weight", &self.weight)
            .finish()
    }
}

impl Upstream {
    pub fn new(cfg: &config::Upstream) -> Upstream {
        Upstream {
            addr: cfg.addr.clone(),
            socket: cfg.addr.parse().ok(),
            weight: cfg.weight,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A pooled connection that is open and idle, if any.
    pub fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = idle.pop() {
            if !s.is_closed() && s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    /// Returns a connection to the pool once its current response is finished.
    pub fn recycle(self: &Arc<Self>, mut sender: Sender) {
        let this = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                let mut idle = this.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < MAX_IDLE_PER_UPSTREAM {
                    idle.push(sender);
                }
            }
        });
    }

    pub async fn connect(&self, timeout: Duration) -> Result<Sender, ConnectError> {
        let connect = async {
            match self.socket {
                Some(sa) => TcpStream::connect(sa).await,
                None => TcpStream::connect(self.addr.as_str()).await,
            }
        };
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout(timeout))?
            .map_err(ConnectError::Io)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        let addr = self.addr.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %addr, "upstream connection ended: {e}");
            }
        });
        Ok(sender)
    }
}

/// A site's upstreams and nginx's smooth weighted round robin over them.
#[derive(Debug)]
pub struct Pool {
    pub upstreams: Vec<Arc<Upstream>>,
    current: Mutex<Vec<i64>>,
}

impl Pool {
    pub fn new(cfg: &[config::Upstream]) -> Pool {
        Pool {
            upstreams: cfg.iter().map(|u| Arc::new(Upstream::new(u))).collect(),
            current: Mutex::new(vec![0; cfg.len()]),
        }
    }

    pub fn len(&self) -> usize {
        self.upstreams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }

    /// Picks the next upstream not yet tried for this request. With weights 5,1,1
    /// this gives a a b a c a a rather than a a a a a b c: heavy servers are
    /// spread out, as nginx does it.
    pub fn pick(&self, tried: u64) -> Option<usize> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, up) in self.upstreams.iter().enumerate() {
            if i < 64 && tried & (1 << i) != 0 {
                continue;
            }
            let w = up.weight as i64;
            cur[i] += w;
            total += w;
            if best.is_none_or(|b| cur[i] > cur[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            cur[b] -= total;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(weights: &[u32]) -> Pool {
        let cfg: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| config::Upstream {
                addr: format!("127.0.0.1:{}", 5000 + i),
                weight: *w,
            })
            .collect();
        Pool::new(&cfg)
    }

    #[test]
    fn equal_weights_rotate() {
        let p = pool(&[1, 1, 1]);
        let seq: Vec<_> = (0..6).map(|_| p.pick(0).unwrap()).collect();
        assert_eq!(seq, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn smooth_weighted_matches_nginx() {
        let p = pool(&[5, 1, 1]);
        let seq: Vec<_> = (0..7).map(|_| p.pick(0).unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        let p = pool(&[3, 1]);
        let mut counts = [0; 2];
        for _ in 0..1000 {
            counts[p.pick(0).unwrap()] += 1;
        }
        assert_eq!(counts, [750, 250]);
    }

    #[test]
    fn skips_tried() {
        let p = pool(&[1, 1, 1]);
        assert_eq!(p.pick(0b011), Some(2));
        assert_eq!(p.pick(0b111), None);
    }
}
