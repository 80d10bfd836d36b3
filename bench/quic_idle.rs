//! bench/run's idle HTTP/3 client: opens N QUIC connections to a proxy on
//! 127.0.0.1:PORT (ALPN h3, any certificate), makes one request on each and
//! holds them all open, then prints the proxy's resident memory (summed over
//! PIDS, KiB) before and after, and how many connections it held:
//! `quic_idle PORT N HOST PIDS` -> `before after held`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;

fn rss(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|p| {
            let s = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

#[path = "any_cert.rs"]
mod any_cert;
use any_cert::AnyCert;

type Held = (
    quinn::Connection,
    h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>,
    tokio::task::JoinHandle<()>,
);

async fn one(ep: &quinn::Endpoint, port: u16, host: &str) -> Result<Held, String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let conn = ep
        .connect(addr, host)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let req = http::Request::get(format!("https://{host}/"))
        .body(())
        .map_err(|e| e.to_string())?;
    let mut stream = send.send_request(req).await.map_err(|e| e.to_string())?;
    stream.finish().await.map_err(|e| e.to_string())?;
    stream.recv_response().await.map_err(|e| e.to_string())?;
    while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
        chunk.advance(chunk.remaining());
    }
    Ok((conn, send, driver))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: quic_idle PORT N HOST PIDS");
        std::process::exit(2);
    }
    let port: u16 = args[1].parse().expect("PORT");
    let n: usize = args[2].parse().expect("N");
    let host = args[3].clone();
    let pids: Vec<u32> = args[4]
        .split(',')
        .map(|p| p.parse().expect("PIDS"))
        .collect();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCert))
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("QUIC");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Held open past the proxy's idle timeout, as a browser does.
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    config.transport_config(Arc::new(transport));
    // A few endpoints (UDP sockets), as several clients behind one address.
    let mut eps = Vec::new();
    for _ in 0..8 {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("UDP");
        ep.set_default_client_config(config.clone());
        eps.push(ep);
    }
    for _ in 0..5 {
        let _ = one(&eps[0], port, &host).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss(&pids);
    let mut held = Vec::new();
    let mut failed = 0;
    let mut i = 0;
    while i < n {
        let batch = (n - i).min(100);
        let got = futures_util::future::join_all(
            (0..batch).map(|k| one(&eps[(i + k) % eps.len()], port, &host)),
        )
        .await;
        for g in got {
            match g {
                Ok(h) => held.push(h),
                Err(e) => {
                    failed += 1;
                    if failed == 1 {
                        eprintln!("a connection failed: {e}");
                    }
                }
            }
        }
        i += batch;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("{before} {} {}", rss(&pids), held.len());
}
