//! Scripted upstreams on loopback: each request is read strictly (httparse,
//! then the body by length or chunks), recorded whole, and answered as the
//! test's handler says, including answers no real backend would give.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A request as the upstream read it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The request's bytes, head and body, as they came.
    pub raw: Vec<u8>,
    /// Which connection (0, 1, ...) of this upstream it came on.
    pub conn: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What the upstream does with a request.
pub enum Reply {
    /// A whole answer: status, headers, body (`Content-Length` added).
    Answer(u16, Vec<(&'static str, String)>, Vec<u8>),
    /// These bytes as they are (answers that break the rules on purpose).
    Raw(Vec<u8>),
    /// Waits this long first.
    After(Duration, Box<Reply>),
    /// These pieces with these waits before each, then closes if `close`.
    Pieces(Vec<(Duration, Vec<u8>)>, bool),
    /// Closes the connection without answering.
    Close,
    /// Never answers; keeps the connection open.
    Hang,
    /// `101 Switching Protocols`, then echoes every byte back.
    Upgrade,
}

/// `200` with this body.
pub fn ok(body: &str) -> Reply {
    Reply::Answer(200, vec![], body.as_bytes().to_vec())
}

pub fn status(code: u16) -> Reply {
    Reply::Answer(code, vec![], Vec::new())
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    conns: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// An upstream that answers every request with `handler`.
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Upstream::on(l, handler)
    }

    /// The same, on a listener the test made (to know the port first).
    pub fn on(
        l: TcpListener,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let handler: Handler = Arc::new(handler);
        let (s2, c2) = (seen.clone(), conns.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = l.accept().await else {
                    continue;
                };
                // No real-time kernel delays under paused time (see `connect`).
                let _ = sock.set_nodelay(true);
                let n = c2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(sock, n, handler.clone(), s2.clone()));
            }
        });
        Upstream {
            addr,
            seen,
            conns,
            task,
        }
    }

    /// `200` with body `name`, for telling upstreams apart.
    pub async fn named(name: &'static str) -> Upstream {
        Upstream::start(move |_| ok(name)).await
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Every request read so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

/// A port nothing listens on.
pub async fn refusing() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a.to_string()
}

async fn serve(mut s: TcpStream, conn: usize, handler: Handler, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(&mut s, &mut buf, conn).await else {
            return;
        };
        seen.lock().unwrap().push(req.clone());
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let reply = handler(&req);
        if !play(&mut s, reply, &req).await || close {
            return;
        }
    }
}

/// Plays one reply; false when the connection is done.
fn play<'a>(
    s: &'a mut TcpStream,
    reply: Reply,
    req: &'a Seen,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
    Box::pin(async move {
        match reply {
            Reply::Answer(code, headers, body) => {
                let mut out = format!("HTTP/1.1 {code} X\r\n");
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                if code != 204 && code != 304 && !(100..200).contains(&code) {
                    out.push_str(&format!("content-length: {}\r\n", body.len()));
                }
                out.push_str("\r\n");
                let mut bytes = out.into_bytes();
                if req.method != "HEAD" {
                    bytes.extend_from_slice(&body);
                }
                s.write_all(&bytes).await.is_ok()
            }
            Reply::Raw(bytes) => s.write_all(&bytes).await.is_ok(),
            Reply::After(d, r) => {
                tokio::time::sleep(d).await;
                play(s, *r, req).await
            }
            Reply::Pieces(pieces, close) => {
                for (d, p) in pieces {
                    tokio::time::sleep(d).await;
                    if s.write_all(&p).await.is_err() {
                        return false;
                    }
                }
                !close
            }
            Reply::Close => false,
            Reply::Hang => {
                std::future::pending::<()>().await;
                false
            }
            Reply::Upgrade => {
                let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
                if s.write_all(head).await.is_err() {
                    return false;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                false
            }
        }
    })
}

/// Reads one request; `None` at end of stream or on bytes that are no request.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>, conn: usize) -> Option<Seen> {
    let (head_len, method, target, headers) = loop {
        let mut fields = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut fields);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let headers: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (
                    n,
                    req.method.unwrap().to_string(),
                    req.path.unwrap().to_string(),
                    headers,
                );
            }
            Ok(httparse::Status::Partial) => {
                if !more(s, buf).await {
                    return None;
                }
            }
            Err(_) => return None,
        }
    };
    let get = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    let mut raw: Vec<u8> = buf.drain(..head_len).collect();
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                if !more(s, buf).await {
                    return None;
                }
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            raw.extend(buf.drain(..line_end + 2));
            if size == 0 {
                loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        raw.extend(buf.drain(..i + 2));
                        if i == 0 {
                            break;
                        }
                    } else if !more(s, buf).await {
                        return None;
                    }
                }
                break;
            }
            while buf.len() < size + 2 {
                if !more(s, buf).await {
                    return None;
                }
            }
            body.extend_from_slice(&buf[..size]);
            raw.extend(buf.drain(..size + 2));
        }
    } else if let Some(n) = get("content-length") {
        let n: usize = n.trim().parse().ok()?;
        while buf.len() < n {
            if !more(s, buf).await {
                return None;
            }
        }
        body = buf.drain(..n).collect();
        raw.extend_from_slice(&body);
    }
    Some(Seen {
        method,
        target,
        headers,
        body,
        raw,
        conn,
    })
}

async fn more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16384];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}
